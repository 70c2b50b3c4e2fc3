/**
 * The configuration reference, generated from the zod schemas: each field's description and default live
 * next to the field in its component's module, and this renders them as Markdown (`ksw config-docs`,
 * committed as docs/config.md; a unit test fails when the committed file is stale).
 */
import { z } from 'zod';
import { consumerRegistry } from '../consumers/registry.js';
import { processorRegistry } from '../processors/registry.js';
import { dlqRegistry, sinkRegistry } from '../sinks/registry.js';
import { workerConfigSchema } from './schema.js';

interface JsonSchema {
  type?: string | string[];
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  additionalProperties?: JsonSchema | boolean;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  minItems?: number;
  minLength?: number;
  pattern?: string;
}

function toJson(schema: z.ZodType): JsonSchema {
  return z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
}

function typeOf(s: JsonSchema): string {
  if (s.const !== undefined) return `\`${JSON.stringify(s.const)}\``;
  if (s.enum) return s.enum.map((v) => `\`${String(v)}\``).join(' | ');
  const alts = s.anyOf ?? s.oneOf;
  const tags = alts && variantTags(alts);
  if (tags) return `object by \`type\`: ${tags.map((t) => `\`${t}\``).join(' | ')}`;
  if (alts) return alts.map(typeOf).join(' or ');
  if (s.type === 'array') return `list of ${s.items ? typeOf(s.items) : 'any'}`;
  if (s.type === 'object' && !s.properties && typeof s.additionalProperties === 'object') {
    return `map of ${typeOf(s.additionalProperties)}`;
  }
  const t = Array.isArray(s.type) ? s.type.join(' or ') : (s.type ?? 'any');
  const bounds: string[] = [];
  const min = s.minimum ?? s.exclusiveMinimum;
  if (min !== undefined && min !== Number.MIN_SAFE_INTEGER)
    bounds.push(`${s.exclusiveMinimum !== undefined ? '>' : '≥'} ${min}`);
  if (s.maximum !== undefined && s.maximum !== Number.MAX_SAFE_INTEGER) bounds.push(`≤ ${s.maximum}`);
  return bounds.length > 0 ? `${t} (${bounds.join(', ')})` : t;
}

function defaultOf(s: JsonSchema, required: boolean): string {
  if (s.default !== undefined) {
    const text = JSON.stringify(s.default);
    return text.length > 60 ? '(see fields)' : `\`${text}\``;
  }
  return required ? '**required**' : '';
}

function escapeCell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function rows(s: JsonSchema, prefix: string, out: string[]): void {
  const props = s.properties ?? {};
  const required = new Set(s.required ?? []);
  for (const [name, prop] of Object.entries(props)) {
    const path = prefix ? `${prefix}.${name}` : name;
    out.push(
      `| \`${path}\` | ${escapeCell(typeOf(prop))} | ${escapeCell(defaultOf(prop, required.has(name)))} | ${escapeCell(prop.description ?? '')} |`,
    );
    const inner = prop.type === 'array' ? prop.items : prop;
    const alts = inner?.anyOf ?? inner?.oneOf;
    const childPath = prop.type === 'array' ? `${path}[]` : path;
    // A union discriminated by `type:` (e.g. sampling policies): one block of rows per variant.
    if (alts && variantTags(alts)) {
      for (const alt of alts) {
        const tag = `[type=${String(alt.properties!.type!.const)}]`;
        rows(alt, `${path}${tag}`, out);
      }
      continue;
    }
    const objectAlt = alts?.find((a) => a.properties);
    const target = inner?.properties ? inner : objectAlt;
    if (target?.properties) rows(target, childPath, out);
  }
}

/** The `type` constants of a union whose members are all objects tagged by `type`, else undefined. */
function variantTags(alts: JsonSchema[]): string[] | undefined {
  if (alts.length < 2) return undefined;
  const tags = alts.map((a) => a.properties?.type?.const);
  return tags.every((t) => typeof t === 'string') ? (tags as string[]) : undefined;
}

function table(s: JsonSchema, prefix = ''): string {
  const out = ['| Field | Type | Default | Description |', '|---|---|---|---|'];
  rows(s, prefix, out);
  return out.join('\n');
}

function registrySection(
  title: string,
  where: string,
  registry: Readonly<Record<string, { description: string; schema: z.ZodType }>>,
): string {
  const parts = [`## ${title}\n\n${where}`];
  for (const [type, def] of Object.entries(registry)) {
    parts.push(`### \`type: ${type}\`\n\n${def.description}\n\n${table(toJson(def.schema))}`);
  }
  if (Object.keys(registry).length === 0) parts.push('_No types registered yet._');
  return parts.join('\n\n');
}

/** The whole reference as Markdown. */
export function configReference(): string {
  const shape = workerConfigSchema.shape as Record<string, z.ZodType>;
  const componentKeys = new Set(['consumers', 'processors', 'sinks', 'dlq']);
  const sections: string[] = [
    '# Configuration reference',
    'Generated from the zod schemas by `ksw config-docs` (`npm run worker -- config-docs > docs/config.md`); do not edit by hand. ' +
      `One YAML file configures the worker; \`\${VAR}\` and \`\${VAR:-default}\` are replaced from the environment. ` +
      'Unknown fields are errors. `ksw validate -c FILE` lists every problem with its field path.',
  ];
  for (const [key, schema] of Object.entries(shape)) {
    if (componentKeys.has(key)) continue;
    const json = toJson(schema);
    const lead = json.description ? `${json.description}\n\n` : '';
    sections.push(`## \`${key}\`\n\n${lead}${json.properties ? table(json, key) : `Type: ${typeOf(json)}`}`);
  }
  sections.push(
    registrySection(
      'Consumers',
      '`consumers:` is a list; each entry reads one stream, chosen by `type:`.',
      consumerRegistry as unknown as Record<string, { description: string; schema: z.ZodType }>,
    ),
    registrySection(
      'Processors',
      '`processors:` is a list run in order between decoding and routing; each entry is chosen by `type:`.',
      processorRegistry as unknown as Record<string, { description: string; schema: z.ZodType }>,
    ),
    registrySection(
      'Sinks',
      '`sinks:` maps a sink name (used by routing) to its config, chosen by `type:`.',
      sinkRegistry as unknown as Record<string, { description: string; schema: z.ZodType }>,
    ),
    registrySection(
      'Dead-letter queue',
      '`dlq:` is one dead-letter queue, chosen by `type:`.',
      dlqRegistry as unknown as Record<string, { description: string; schema: z.ZodType }>,
    ),
  );
  return `${sections.join('\n\n')}\n`;
}
