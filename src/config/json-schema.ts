/**
 * The JSON Schema of the worker config (`ksw config-schema`, committed as docs/schema/ksw-config.schema.json)
 * for editor completion and checking: the examples carry the yaml-language-server modeline
 * `# yaml-language-server: $schema=...`. Built from the same zod schemas as validation and docs/config.md;
 * the `type:`-dispatched lists (consumers, processors, sinks, dlq) become `oneOf` their registered
 * components, and a number, boolean or enum field also accepts a whole `${VAR}` reference (interpolated at
 * load time). Validation stays `ksw validate`'s job: the schema helps typing, it does not replace it.
 */
import { z } from 'zod';
import { consumerRegistry } from '../consumers/registry.js';
import { processorRegistry } from '../processors/registry.js';
import { pipelineTestFileSchema } from '../runtime/pipeline-test.js';
import { dlqRegistry, sinkRegistry } from '../sinks/registry.js';
import { workerConfigSchema } from './schema.js';

type Json = Record<string, unknown>;

const VAR_REF = { type: 'string', pattern: '^\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\\}$' };

function toJson(schema: z.ZodType): Json {
  const json = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any', target: 'draft-7' }) as Json;
  delete json.$schema;
  return json;
}

/** Lets number, integer, boolean and enum fields take a `${VAR}` reference too. */
function allowVarRefs(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(allowVarRefs);
  if (!node || typeof node !== 'object') return node;
  const out: Json = {};
  for (const [k, v] of Object.entries(node as Json)) {
    out[k] =
      k === 'properties' && v && typeof v === 'object'
        ? Object.fromEntries(Object.entries(v as Json).map(([p, s]) => [p, allowVarRefs(s)]))
        : allowVarRefs(v);
  }
  const t = out.type;
  const scalar =
    t === 'number' || t === 'integer' || t === 'boolean' || (out.enum !== undefined && t !== 'object');
  if (!scalar) return out;
  const { description, default: def, ...rest } = out;
  return {
    ...(description !== undefined ? { description } : {}),
    ...(def !== undefined ? { default: def } : {}),
    anyOf: [rest, VAR_REF],
  };
}

/** Renames `#/definitions/X` refs of an embedded schema to `#/definitions/<prefix>X`. */
function renameRefs(node: unknown, prefix: string): unknown {
  if (Array.isArray(node)) return node.map((n) => renameRefs(n, prefix));
  if (!node || typeof node !== 'object') return node;
  return Object.fromEntries(
    Object.entries(node as Json).map(([k, v]) => [
      k,
      k === '$ref' && typeof v === 'string'
        ? v.replace('#/definitions/', `#/definitions/${prefix}`)
        : renameRefs(v, prefix),
    ]),
  );
}

/** A component's schema, with its own definitions (recursive policies) hoisted into `defs`. */
function embed(schema: z.ZodType, prefix: string, defs: Json): Json {
  const { definitions, ...json } = renameRefs(toJson(schema), prefix) as Json;
  for (const [k, v] of Object.entries((definitions as Json | undefined) ?? {})) defs[`${prefix}${k}`] = v;
  return json;
}

function oneOf(
  kind: string,
  registry: Readonly<Record<string, { schema: z.ZodType; description: string }>>,
  defs: Json,
): Json {
  return {
    oneOf: Object.entries(registry).map(([type, def]) => ({
      ...embed(def.schema, `${kind}_${type}_`, defs),
      description: def.description,
    })),
  };
}

/** The worker config's JSON Schema (draft-07, as yaml-language-server reads it). */
export function configJsonSchema(): Json {
  const defs: Json = {};
  const root = embed(workerConfigSchema, 'config_', defs);
  const props = root.properties as Record<string, Json>;
  const reg = <T>(r: T) => r as unknown as Record<string, { schema: z.ZodType; description: string }>;
  props.consumers = { ...props.consumers, items: oneOf('consumer', reg(consumerRegistry), defs) };
  props.processors = { ...props.processors, items: oneOf('processor', reg(processorRegistry), defs) };
  props.sinks = { ...props.sinks, additionalProperties: oneOf('sink', reg(sinkRegistry), defs) };
  props.dlq = { description: (props.dlq as Json).description, ...oneOf('dlq', reg(dlqRegistry), defs) };
  if (Object.keys(defs).length > 0) root.definitions = defs;
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title: 'ksw worker configuration',
    ...(allowVarRefs(root) as Json),
  };
}

/** The JSON Schema of `ksw test` files. */
export function testFileJsonSchema(): Json {
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title: 'ksw pipeline tests',
    ...toJson(pipelineTestFileSchema),
  };
}
