/**
 * `ksw test`: the project's own example pipelines are tested with it, and it fails (exit 1, one line per
 * difference) when the chain does not produce what a test expects.
 */
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/commands.js';
import { matches, plain } from '../../src/runtime/pipeline-test.js';

const ROOT = path.resolve(import.meta.dirname, '../..');

async function ksw(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((c) => {
    out += String(c);
    return true;
  });
  vi.spyOn(process.stderr, 'write').mockImplementation((c) => {
    err += String(c);
    return true;
  });
  try {
    return { code: await main(args), out, err };
  } finally {
    vi.restoreAllMocks();
  }
}

afterEach(() => vi.restoreAllMocks());

describe('ksw test', () => {
  it('passes on every shipped example pipeline (examples/*.test.yaml)', async () => {
    const files = readdirSync(path.join(ROOT, 'examples'))
      .filter((f) => f.endsWith('.test.yaml'))
      .map((f) => path.join(ROOT, 'examples', f));
    // every example config has its tests
    const configs = readdirSync(path.join(ROOT, 'examples')).filter(
      (f) => f.endsWith('.yaml') && !f.endsWith('.test.yaml'),
    );
    expect(files.map((f) => path.basename(f, '.test.yaml')).sort()).toEqual(
      configs.map((f) => path.basename(f, '.yaml')).sort(),
    );
    const r = await ksw('test', ...files);
    expect(r.err).toBe('');
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/^\d+ passed, 0 failed\n$/m);
    expect(Number(/^(\d+) passed/m.exec(r.out)![1])).toBeGreaterThanOrEqual(6);
  });

  it('fails with one line per difference, and --show prints what the sinks received', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'ksw-test-'));
    const tests = path.join(dir, 'wrong.test.yaml');
    writeFileSync(
      tests,
      `config: ${path.join(ROOT, 'examples/worker.yaml')}
env: { STREAM_NAME: s, LAKE_BUCKET: lake }
tests:
  - name: wrong expectations
    input: [{ a: 1 }, "not json"]
    expect:
      sinks:
        lake: { events: [{ a: 2 }] }
        nope: { count: 1 }
      deadLetters: { count: 0, reasons: ["timeout"] }
  - name: right
    input: [{ a: 1 }]
    expect: { sinks: { lake: { events: [{ a: 1 }] } } }
`,
    );
    let r = await ksw('test', tests);
    expect(r.code).toBe(1);
    expect(r.out).toContain('  FAIL  wrong expectations (lake 1; dead letters 1)\n');
    expect(r.out).toContain('- expect.sinks.nope: the config has no sink "nope" (sinks: lake)');
    expect(r.out).toContain('- sink lake: no event matches {"a":2}');
    expect(r.out).toMatch(/- dead letters: 1, expected 0 \(reasons: "invalid JSON/);
    expect(r.out).toContain('- dead letters: no reason contains "timeout"');
    expect(r.out).toContain('  ok    right (lake 1; dead letters 0)');
    expect(r.out).toMatch(/1 passed, 1 failed\n$/);
    r = await ksw('test', tests, '--only', 'right', '--show');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/sinks:\n\s+lake:\n\s+- a: 1\n\s+deadLetters: \[\]/);
  });

  it('reports a bad tests file with its field, and usage errors in one line', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'ksw-test-'));
    const bad = path.join(dir, 'bad.test.yaml');
    writeFileSync(bad, 'config: x.yaml\ntests: [{ name: t, input: [] }]\n');
    let r = await ksw('test', bad);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/bad\.test\.yaml: invalid configuration\n {2}- tests\.0\.input: /);
    r = await ksw('test');
    expect(r.err).toBe(
      'test: name a tests file, e.g. ksw test examples/traces.test.yaml; see ksw test --help\n',
    );
    r = await ksw('test', path.join(dir, 'missing.yaml'));
    expect(r.err).toMatch(/cannot read the tests file: no such file/);
  });

  it('compares partially, bigints as strings, arrays element-wise', () => {
    expect(matches({ a: 1, b: { c: 'x', d: 2 } }, { b: { c: 'x' } })).toBe(true);
    expect(matches({ a: 1 }, { a: 2 })).toBe(false);
    expect(matches({ a: [1, 2] }, { a: [1] })).toBe(false);
    expect(matches({ a: [{ x: 1, y: 2 }] }, { a: [{ x: 1 }] })).toBe(true);
    expect(matches(plain({ n: 1700000000123456789n }), { n: '1700000000123456789' })).toBe(true);
    expect(matches({ n: '5' }, { n: 5 })).toBe(true);
    expect(matches({ a: null }, { a: {} })).toBe(false);
    expect(plain({ d: new Date(0), u: new Uint8Array([104, 105]) })).toEqual({
      d: '1970-01-01T00:00:00.000Z',
      u: 'hi',
    });
  });
});
