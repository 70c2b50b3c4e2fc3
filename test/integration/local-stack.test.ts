/**
 * `ksw local up|env|status|down`: the emulators outlive `up`, the printed environment points the shipped
 * example config at them unchanged (validate, run, produce, output in the bucket), and `down` stops every
 * process by PID.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, it, vi } from 'vitest';
import { main } from '../../src/cli/commands.js';
import { isAlive, readState } from '../../src/local/state.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'src/cli/main.ts');

async function ksw(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((c) => {
    out += String(c);
    return true;
  });
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((c) => {
    err += String(c);
    return true;
  });
  try {
    return { code: await main(args), out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

/** The environment of a shell that ran `eval "$(ksw local env)"`, without this machine's AWS settings. */
function envFrom(lines: string, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = Object.fromEntries(
    Object.entries(base).filter(([k]) => !k.startsWith('AWS_')),
  );
  for (const m of lines.matchAll(/^export ([A-Z0-9_]+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  return env;
}

describe('ksw local', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ksw-local-'));
  let pids: number[] = [];
  afterAll(() => {
    for (const pid of pids) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
  });

  it('up, env, validate and run the example config against it, down', async () => {
    const up = await ksw(
      'local',
      'up',
      '--dir',
      dir,
      '--stream',
      'it-spans:2',
      '--bucket',
      'it-lake',
      '--table',
      'it-leases',
    );
    assert.equal(up.code, 0, up.err);
    assert.match(up.out, /^local stack up \(state, data and logs in /);
    assert.match(up.out, /kinesalite http:\/\/127\.0\.0\.1:\d+ {2}pid \d+ {2}streams it-spans \(2 shards\)/);
    assert.match(
      up.out,
      /^aws:\n {2}region: us-east-1\n {2}endpoints:\n {4}kinesis: http:\/\/127\.0\.0\.1:\d+/m,
    );
    assert.match(up.out, /accessKeyId: S3RVER/);
    const state = readState(dir)!;
    pids = state.processes.map((p) => p.pid);
    assert.equal(pids.length, 3);
    assert.ok(pids.every(isAlive));
    // The emulators listen on loopback only.
    for (const p of state.processes) assert.match(p.endpoint, /^http:\/\/127\.0\.0\.1:\d+$/);

    const again = await ksw('local', 'up', '--dir', dir);
    assert.equal(again.code, 1);
    assert.match(again.err, /a stack is already up/);
    const status = await ksw('local', 'status', '--dir', dir);
    assert.equal(status.code, 0);
    assert.match(status.out, /^local stack up since /);

    const envOut = await ksw('local', 'env', '--dir', dir);
    assert.equal(envOut.code, 0);
    assert.equal(envOut.out, `${up.out.match(/^export .*$/gm)!.join('\n')}\n`);
    const env = envFrom(envOut.out);
    assert.equal(env.STREAM_NAME, 'it-spans');
    assert.equal(env.LAKE_BUCKET, 'it-lake');

    const validate = spawnSync(
      process.execPath,
      ['--import', 'tsx', CLI, 'validate', '-c', 'examples/worker.yaml'],
      {
        cwd: ROOT,
        env,
        encoding: 'utf8',
      },
    );
    assert.equal(validate.status, 0, validate.stderr);
    assert.match(validate.stdout, /^examples\/worker\.yaml: OK/);
    // One line about the Node version at most, not the SDK's nine.
    assert.ok(!validate.stderr.includes('NodeVersionSupportWarning'), validate.stderr);

    const worker = spawn(process.execPath, ['--import', 'tsx', CLI, 'run', '-c', 'examples/worker.yaml'], {
      cwd: ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let log = '';
    worker.stdout.on('data', (c) => {
      log += String(c);
    });
    worker.stderr.on('data', (c) => {
      log += String(c);
    });
    const exited = new Promise<number | null>((resolve) => worker.once('exit', (code) => resolve(code)));
    try {
      for (let i = 0; i < 600 && !log.includes('"worker started"'); i++)
        await new Promise((r) => setTimeout(r, 100));
      assert.match(log, /"worker started"/);
      const produce = spawnSync(
        process.execPath,
        ['--import', 'tsx', CLI, 'produce', '--stream', 'it-spans', '--synthetic-spans', '50'],
        { cwd: ROOT, env, encoding: 'utf8' },
      );
      assert.equal(produce.status, 0, produce.stderr);
      for (let i = 0; i < 300 && !/"recordsFetched"|records_fetched/.test(log); i++) {
        const metrics = await fetch(
          `http://127.0.0.1:${JSON.parse(log.split('\n').find((l) => l.includes('"worker started"'))!).ops.port}/metrics`,
        )
          .then((r) => r.text())
          .catch(() => '');
        const fetched =
          metrics
            .match(/^ksw_kinesis_records_fetched_total\{[^}]*\} (\d+)/gm)
            ?.reduce((s, l) => s + Number(l.split(' ').at(-1)), 0) ?? 0;
        if (fetched >= 50) break;
        await new Promise((r) => setTimeout(r, 200));
      }
    } finally {
      worker.kill('SIGTERM');
    }
    assert.equal(await exited, 0, log);
    assert.match(log, /"drained":true,"recordsFetched":50,"msg":"worker stopped"/);
    const objects = (function list(d: string): string[] {
      return readdirSync(d, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? list(path.join(d, e.name)) : [path.join(d, e.name)],
      );
    })(path.join(dir, 's3', 'it-lake'));
    assert.ok(
      objects.some((f) => /\.parquet\._S3rver_object$/.test(f)),
      objects.join('\n'),
    );

    // A file consumer against the same stack: no stream involved, exits 0 once the input is consumed and
    // acked, with the bad line in the DLQ.
    const input = path.join(dir, 'in.ndjson');
    writeFileSync(input, '{"traceId":"t1","n":1}\nnot json\n{"traceId":"t2","n":2}\n');
    const fileConfig = path.join(dir, 'file.yaml');
    writeFileSync(
      fileConfig,
      `consumers: [{ type: file, path: ${input}, stream: from-file, partitionKeyField: traceId }]
sinks: { lake: { type: s3_parquet, bucket: it-lake, prefix: from-file/ } }
dlq: { type: s3, bucket: it-lake, prefix: file-dlq/ }
server: { port: 0 }
`,
    );
    const fileRun = spawnSync(process.execPath, ['--import', 'tsx', CLI, 'run', '-c', fileConfig], {
      cwd: ROOT,
      env,
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(fileRun.status, 0, fileRun.stdout + fileRun.stderr);
    assert.match(fileRun.stdout, /"lines":3,"records":3,"drained":true,"msg":"input consumed"/);
    const lake = path.join(dir, 's3', 'it-lake');
    assert.ok(
      existsSync(path.join(lake, 'from-file', 'from-file_shardId-000000000000_1_3.parquet._S3rver_object')),
    );
    assert.equal(
      readdirSync(path.join(lake, 'file-dlq', 'from-file', 'shardId-000000000000')).filter((f) =>
        f.endsWith('.jsonl._S3rver_object'),
      ).length,
      1,
    );

    const down = await ksw('local', 'down', '--dir', dir);
    assert.equal(down.code, 0);
    assert.match(
      down.out,
      /^local stack stopped \(kinesalite \d+, s3rver \d+, dynalite \d+\); data kept in /,
    );
    assert.ok(
      pids.every((pid) => !isAlive(pid)),
      'every emulator process is gone',
    );
    assert.equal(existsSync(path.join(dir, 'state.json')), false);
    const after = await ksw('local', 'status', '--dir', dir);
    assert.equal(after.code, 3);
    assert.equal((await ksw('local', 'env', '--dir', dir)).code, 1);
    assert.match((await ksw('local', 'down', '--dir', dir)).out, /^no local stack in /);
  });

  it('usage errors', async () => {
    assert.match(
      (await ksw('local')).err,
      /^local: name an action: up, down, status or env; see ksw local --help/,
    );
    assert.match((await ksw('local', 'sideways')).err, /^local: unknown action "sideways"/);
    assert.match(
      (await ksw('local', 'up', '--dir', dir, '--stream', 'x:0')).err,
      /--stream is NAME or NAME:SHARDS/,
    );
    assert.match(
      (await ksw('local', 'up', '--dir', dir, '--kinesis', 'x')).err,
      /--kinesis is kinesalite or kinesis-local/,
    );
  });
});
