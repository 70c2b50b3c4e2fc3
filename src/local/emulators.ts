/**
 * Local AWS emulators from npm, started as child processes on 127.0.0.1 (tests, `demo`, benchmarks).
 * Every process started here is stopped by PID by `stop()`, and killed at the latest when this process exits.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
/** Forces every server of the emulator onto 127.0.0.1 (kinesalite has no host option). */
const LOOPBACK_PRELOAD = path.join(here, 'loopback-preload.cjs');
/** Makes s3rver's PutObject atomic, as S3's is (see the file for what s3rver does without it). */
const S3RVER_ATOMIC_PRELOAD = path.join(here, 's3rver-atomic-preload.cjs');

export interface Emulator {
  readonly name: string;
  readonly endpoint: string;
  readonly port: number;
  readonly pid: number;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Asks the kernel for a free loopback port. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

async function waitForPort(
  port: number,
  child: ChildProcess,
  name: string,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null)
      throw new Error(`${name} exited with code ${child.exitCode} before listening`);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${name} did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`);
}

async function startNodeEmulator(
  name: string,
  script: string,
  args: (port: number) => string[],
  opts: {
    nodeFlags?: string[];
    logDir?: string;
    port?: number;
    env?: (port: number) => Record<string, string>;
    /** Outlives this process (`ksw local up`): not killed at exit, stopped later by PID (./state.ts). */
    persistent?: boolean;
  } = {},
): Promise<Emulator> {
  const port = opts.port ?? (await freePort());
  let stdio: 'ignore' | ['ignore', number, number] = 'ignore';
  if (opts.logDir) {
    mkdirSync(opts.logDir, { recursive: true });
    const fd = openSync(path.join(opts.logDir, `${name}.log`), 'a');
    stdio = ['ignore', fd, fd];
  }
  const child = spawn(
    process.execPath,
    [...(opts.nodeFlags ?? []), '--require', LOOPBACK_PRELOAD, script, ...args(port)],
    // detached: a Ctrl-C in the terminal reaches our process only, so the worker can still flush to the
    // emulators before they are stopped (by PID, below and at exit).
    { stdio, env: { ...process.env, NODE_OPTIONS: '', ...opts.env?.(port) }, detached: true },
  );
  running.add(child);
  child.once('exit', () => running.delete(child));
  try {
    await waitForPort(port, child, name, 20_000);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  if (opts.persistent) {
    running.delete(child);
    child.unref();
  }
  return {
    name,
    port,
    pid: child.pid!,
    endpoint: `http://127.0.0.1:${port}`,
    stop: () => stopChild(child),
  };
}

/** SIGTERM, then SIGKILL after 3 s: some emulators ignore SIGTERM after load. */
export function stopChild(child: ChildProcess, graceMs = 3_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** kinesalite: fast (about 12k puts/s), supports split/merge; no ChildShards, no EFO, never throttles. */
export function startKinesalite(
  opts: { logDir?: string; port?: number; persistent?: boolean } = {},
): Promise<Emulator> {
  return startNodeEmulator(
    'kinesalite',
    require.resolve('kinesalite/cli.js'),
    (port) => [
      '--port',
      String(port),
      '--shardLimit',
      '100',
      '--createStreamMs',
      '50',
      '--updateStreamMs',
      '50',
    ],
    opts,
  );
}

/**
 * kinesis-local (a Scala.js build of kinesis-mock): slower than kinesalite and slows as data grows, but it
 * has what kinesalite lacks: ChildShards on the last GetRecords of a closed shard, UpdateShardCount and
 * enhanced fan-out (RegisterStreamConsumer, SubscribeToShard; over HTTP/1.1 only). It hard-codes 0.0.0.0
 * (the loopback preload rebinds it) and needs its certificate path even for plain HTTP; its TLS port gets
 * a free port too so that two instances never collide. It may ignore SIGTERM after load: `stop()` follows
 * with SIGKILL after 3 s.
 */
export async function startKinesisLocal(
  opts: { logDir?: string; port?: number; operationMs?: number; persistent?: boolean } = {},
): Promise<Emulator> {
  const main = require.resolve('kinesis-local/main.js');
  const duration = `${opts.operationMs ?? 200}ms`;
  const tlsPort = await freePort();
  return startNodeEmulator('kinesis-local', main, () => [], {
    ...opts,
    env: (port) => ({
      KINESIS_MOCK_PLAIN_PORT: String(port),
      KINESIS_MOCK_TLS_PORT: String(tlsPort),
      KINESIS_MOCK_CERT_PATH: path.join(path.dirname(main), 'server.json'),
      LOG_LEVEL: 'WARN',
      ROOT_LOG_LEVEL: 'ERROR',
      SHARD_LIMIT: '200',
      SHOULD_PERSIST_DATA: 'false',
      CREATE_STREAM_DURATION: duration,
      DELETE_STREAM_DURATION: duration,
      REGISTER_STREAM_CONSUMER_DURATION: duration,
      DEREGISTER_STREAM_CONSUMER_DURATION: duration,
      MERGE_SHARDS_DURATION: duration,
      SPLIT_SHARD_DURATION: duration,
      UPDATE_SHARD_COUNT_DURATION: duration,
    }),
  });
}

/** dynalite: DynamoDB with working conditional writes; no transactions, no TTL. */
export function startDynalite(
  opts: { logDir?: string; port?: number; persistent?: boolean } = {},
): Promise<Emulator> {
  return startNodeEmulator(
    'dynalite',
    require.resolve('dynalite/cli.js'),
    (port) => ['--host', '127.0.0.1', '--port', String(port), '--createTableMs', '50'],
    opts,
  );
}

/**
 * s3rver: S3 on disk. Needs --openssl-legacy-provider (its continuation tokens use DES), credentials
 * S3RVER/S3RVER, path-style addressing and WHEN_REQUIRED checksums (see AwsConfig.s3ChecksumMode).
 * Its PutObject is made atomic by a preload; the staging files sit in `<dir>.staging`.
 */
export function startS3rver(opts: {
  dir: string;
  logDir?: string;
  port?: number;
  persistent?: boolean;
}): Promise<Emulator> {
  mkdirSync(opts.dir, { recursive: true });
  return startNodeEmulator(
    's3rver',
    require.resolve('s3rver/bin/s3rver.js'),
    (port) => ['-d', opts.dir, '-a', '127.0.0.1', '-p', String(port), '--silent'],
    { ...opts, nodeFlags: ['--openssl-legacy-provider', '--require', S3RVER_ATOMIC_PRELOAD] },
  );
}

export interface LocalStack {
  readonly kinesis: Emulator;
  readonly dynamodb: Emulator;
  readonly s3: Emulator;
  /** The `aws:` section of a worker config that points at this stack. */
  readonly awsConfig: {
    region: string;
    endpoints: { kinesis: string; s3: string; dynamodb: string };
    credentials: { accessKeyId: string; secretAccessKey: string };
    s3ChecksumMode: 'when_required';
    /** kinesis-local serves SubscribeToShard over HTTP/1.1 only. */
    subscribeProtocol: 'http2' | 'http1.1';
  };
  stop(): Promise<void>;
}

/**
 * Starts Kinesis, DynamoDB and S3 emulators; `dataDir` holds the S3 objects and the logs. Kinesis is
 * kinesalite (fast) unless `kinesis: 'kinesis-local'` (ChildShards, UpdateShardCount, enhanced fan-out).
 */
export async function startLocalStack(opts: {
  dataDir: string;
  kinesis?: 'kinesalite' | 'kinesis-local';
  /** The emulators outlive this process (`ksw local up`); stop them by PID. */
  persistent?: boolean;
}): Promise<LocalStack> {
  const logDir = path.join(opts.dataDir, 'logs');
  const kinesisLocal = opts.kinesis === 'kinesis-local';
  const common = { logDir, ...(opts.persistent ? { persistent: true } : {}) };
  const started = await Promise.allSettled([
    kinesisLocal ? startKinesisLocal(common) : startKinesalite(common),
    startDynalite(common),
    startS3rver({ dir: path.join(opts.dataDir, 's3'), ...common }),
  ]);
  const failed = started.find((r) => r.status === 'rejected');
  if (failed) {
    await Promise.all(started.map((r) => (r.status === 'fulfilled' ? r.value.stop() : undefined)));
    throw failed.reason;
  }
  const [kinesis, dynamodb, s3] = started.map((r) => (r as PromiseFulfilledResult<Emulator>).value) as [
    Emulator,
    Emulator,
    Emulator,
  ];
  return {
    kinesis,
    dynamodb,
    s3,
    awsConfig: {
      region: 'us-east-1',
      endpoints: { kinesis: kinesis.endpoint, s3: s3.endpoint, dynamodb: dynamodb.endpoint },
      // s3rver accepts only these; kinesalite and dynalite accept anything.
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      s3ChecksumMode: 'when_required',
      subscribeProtocol: kinesisLocal ? 'http1.1' : 'http2',
    },
    async stop() {
      await Promise.all([kinesis.stop(), dynamodb.stop(), s3.stop()]);
    },
  };
}
