/**
 * The JSON Schema for editors: committed copies are current, the shipped examples validate against it as
 * written (with their `${VAR}` references), a typo or a wrong type does not, and every example names it.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { configJsonSchema, testFileJsonSchema } from '../../src/config/json-schema.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const read = (p: string) => readFileSync(path.join(ROOT, p), 'utf8');
const examples = readdirSync(path.join(ROOT, 'examples')).filter((f) => f.endsWith('.yaml'));

describe('config JSON Schema', () => {
  it('docs/schema/*.schema.json are generated from the current schemas', () => {
    expect(read('docs/schema/ksw-config.schema.json'), 'run npm run docs:config').toBe(
      `${JSON.stringify(configJsonSchema(), null, 2)}\n`,
    );
    expect(read('docs/schema/ksw-test.schema.json')).toBe(
      `${JSON.stringify(testFileJsonSchema(), null, 2)}\n`,
    );
  });

  const ajv = new Ajv({ strict: false, allErrors: true });
  const config = ajv.compile(configJsonSchema());
  const tests = ajv.compile(testFileJsonSchema());

  it.each(examples)('examples/%s carries the modeline and validates', (file) => {
    const text = read(`examples/${file}`);
    const isTest = file.endsWith('.test.yaml');
    expect(text.split('\n')[0]).toBe(
      `# yaml-language-server: $schema=../docs/schema/${isTest ? 'ksw-test' : 'ksw-config'}.schema.json`,
    );
    const validate = isTest ? tests : config;
    expect(validate(parse(text)), JSON.stringify(validate.errors)).toBe(true);
  });

  it('flags an unknown field, a wrong type and an unknown component type; accepts ${VAR} for numbers', () => {
    const base = {
      consumers: [{ type: 'polling', stream: 's' }],
      sinks: { lake: { type: 's3_parquet', bucket: 'bkt' } },
      dlq: { type: 's3', bucket: 'bkt' },
    };
    expect(config(base)).toBe(true);
    expect(config({ ...base, server: { port: '${PORT}' } })).toBe(true);
    expect(config({ ...base, server: { port: 'ninety' } })).toBe(false);
    expect(config({ ...base, servr: {} })).toBe(false);
    expect(config({ ...base, consumers: [{ type: 'polling', stream: 's', startPositon: 'LATEST' }] })).toBe(
      false,
    );
    expect(config({ ...base, consumers: [{ type: 'kafka', stream: 's' }] })).toBe(false);
    expect(config({ ...base, consumers: [{ type: 'file', path: 'in.ndjson' }] })).toBe(true);
    expect(
      config({ ...base, sinks: { lake: { type: 's3_parquet', bucket: 'bkt', compression: 'lz5' } } }),
    ).toBe(false);
  });
});
