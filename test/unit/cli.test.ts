import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { COMMANDS, main } from '../../src/cli/commands.js';
import { reportError, userError } from '../../src/cli/errors.js';

/** Runs `ksw ...args` in-process and returns what it printed. */
async function ksw(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
    out += String(chunk);
    return true;
  });
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => {
    err += String(chunk);
    return true;
  });
  try {
    const code = await main(args);
    return { code, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

afterEach(() => vi.restoreAllMocks());

describe('ksw --help', () => {
  it('lists every command', async () => {
    const r = await ksw('--help');
    expect(r.code).toBe(0);
    for (const name of Object.keys(COMMANDS)) expect(r.out).toMatch(new RegExp(`^  ${name} `, 'm'));
  });

  it.each(Object.keys(COMMANDS))('%s --help prints its short usage and exits 0', async (name) => {
    for (const flag of ['--help', '-h']) {
      const r = await ksw(name, flag);
      expect(r.code, `${name} ${flag}: ${r.err}`).toBe(0);
      expect(r.err).toBe('');
      expect(r.out.startsWith(`usage: ksw ${name}`)).toBe(true);
      // the usage, not the whole reference (config-docs --help used to print docs/config.md)
      expect(r.out.split('\n').length).toBeLessThan(40);
    }
  });

  it('an unknown command is one line with where to look', async () => {
    const r = await ksw('frobnicate');
    expect(r.code).toBe(2);
    expect(r.err).toBe('ksw: unknown command "frobnicate"; see ksw --help\n');
  });
});

describe('user errors are one line without a stack', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ksw-cli-'));
  const oneLine = (text: string) => {
    expect(text.trimEnd().split('\n')).toHaveLength(1);
    expect(text).not.toMatch(/\n\s+at /);
  };

  it.each(Object.keys(COMMANDS))('%s with an unknown option names the option and the help', async (name) => {
    const r = await ksw(name, '--no-such-option');
    expect(r.code).toBe(2);
    oneLine(r.err);
    expect(r.err).toBe(`${name}: unknown option --no-such-option; see ksw ${name} --help\n`);
  });

  it('a missing option value and a missing required option', async () => {
    let r = await ksw('inspect', '-c');
    expect(r.err).toBe('inspect: option --config needs a value; see ksw inspect --help\n');
    r = await ksw('validate');
    expect(r.code).toBe(2);
    expect(r.err).toBe('validate: missing -c/--config FILE; see ksw validate --help\n');
    r = await ksw('validate', '-c', 'a.yaml', 'stray');
    expect(r.err).toMatch(/^validate: unexpected argument "stray"/);
    r = await ksw('run', '-c', 'x.yaml', '--log-format', 'fancy');
    expect(r.err).toMatch(/^run: --log-format is json, pretty or auto/);
  });

  it('a missing config file', async () => {
    const r = await ksw('validate', '-c', path.join(dir, 'nope.yaml'));
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /nope\.yaml: invalid configuration\n {2}- \(root\): cannot read the config file: no such file; check the path\n$/,
    );
  });

  it('validate prints OK with the warnings count and --strict fails on warnings', async () => {
    const file = path.join(dir, 'unrouted.yaml');
    writeFileSync(
      file,
      `consumers: [{ type: polling, stream: s1 }]
sinks:
  a: { type: s3_parquet, bucket: bkt-a }
  b: { type: s3_parquet, bucket: bkt-b }
routing: { default: { sinks: [a] } }
dlq: { type: s3, bucket: bkt-d }
`,
    );
    let r = await ksw('validate', '-c', file);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/OK \(1 warning\)/);
    expect(r.err).toMatch(/warning: sinks\.b: /);
    r = await ksw('validate', '-c', file, '--strict');
    expect(r.code).toBe(1);
  });

  it('errors from AWS and the OS map to one line with the fix', () => {
    const cases: Array<[unknown, RegExp]> = [
      [
        Object.assign(new Error('Could not load credentials from any providers'), {
          name: 'CredentialsProviderError',
        }),
        /^run: no AWS credentials found; set aws\.credentials/,
      ],
      [
        Object.assign(new Error('Stream s1 under account 0 not found.'), {
          name: 'ResourceNotFoundException',
          $metadata: {},
        }),
        /^run: Stream s1 under account 0 not found; create it \(for the local stack: `ksw local up --stream NAME`\)/,
      ],
      [
        Object.assign(
          new AggregateError([
            Object.assign(new Error('x'), { code: 'ECONNREFUSED', address: '127.0.0.1', port: 9 }),
          ]),
          {},
        ),
        /^run: nothing listens at 127\.0\.0\.1:9 \(connection refused\)/,
      ],
      [
        Object.assign(new Error("ENOENT: no such file or directory, open 'in.ndjson'"), {
          code: 'ENOENT',
          path: 'in.ndjson',
        }),
        /^run: no such file: in\.ndjson; check the path$/,
      ],
      [
        Object.assign(new Error('The security token included in the request is invalid.'), {
          name: 'UnrecognizedClientException',
          $metadata: {},
        }),
        /^run: AWS refused the request \(UnrecognizedClientException\)/,
      ],
    ];
    for (const [err, expected] of cases) {
      const report = reportError('run', err, false);
      expect(report.text).toMatch(expected);
      oneLine(report.text);
      expect(report.exitCode).toBe(1);
    }
  });

  it('an unexpected error is its message and a --debug hint; --debug adds the stack', () => {
    const err = new Error('boom\nsecond line');
    expect(userError('run', err)).toBeUndefined();
    expect(reportError('run', err, false).text).toBe('run: boom (run with --debug for the stack trace)');
    expect(reportError('run', err, true).text).toMatch(/^run: Error: boom\nsecond line\n\s+at /);
  });
});
