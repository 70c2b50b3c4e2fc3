/**
 * The crash scenario shared by the chaos tests: 3 worker processes (`ksw run`) share an 8-shard stream on
 * kinesalite while records with known ids (0, 1, 2, ...) are produced; a random worker is SIGKILLed at a
 * random moment and restarted, `rounds` times; one shard is split and later one child of that split is
 * merged with its neighbour, each while records are being produced and a worker is dead. The caller adds
 * sinks beside the Parquet lake (e.g. OpenSearch) and checks what it needs.
 *
 * What it observes, without trusting the workers alone:
 *  - GetRecords answers, through a transparent proxy in front of Kinesis: every record served, by sequence
 *    number. Records served more than once are the duplicate deliveries (re-reads after a SIGKILL, from the
 *    last checkpoint). Exact: a record served to a worker that died before using it still counts.
 *  - S3 uploads of Parquet objects, through a transparent proxy in front of s3rver: when each object's
 *    PUT started and when it was answered, and how often each key was written (a replayed file is
 *    rewritten under the same key). Gives the parent -> child check: no object of a child shard may start
 *    uploading before every object of its parents was durably written (the child is read only after the
 *    parents reached SHARD_END, which needs every parent record acked).
 *  - Each worker's /metrics, scraped every second and right before it is killed; at a graceful stop the
 *    `worker stopped` log line gives its final `recordsFetched`. Summed over incarnations these are lower
 *    bounds (what a killed worker did after its last scrape is missed).
 *  - The final Parquet object set (DuckDB): lost ids, duplicate rows, and per partition key the order of ids
 *    along the shard lineage (parent before child, sequence order within a shard).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  DescribeStreamSummaryCommand,
  ListShardsCommand,
  MergeShardsCommand,
  type Shard,
  SplitShardCommand,
} from '@aws-sdk/client-kinesis';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { stringify } from 'yaml';
import { LeaseTable, SHARD_END } from '../../src/consumers/lease-table.js';
import { freePort } from '../../src/local/emulators.js';
import { seededRandom } from '../../src/producer/synthetic-spans.js';
import { parseObjectName } from '../../src/sinks/s3-parquet/sink.js';
import { amzTarget, FaultProxy } from './fault-proxy.js';
import { download, duck, listKeys } from './parquet.js';
import { createStream, putRecords, type TestStack, waitFor } from './stack.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'src/cli/main.ts');
export const WORKERS = 3;
export const SHARDS = 8;
/** The producer puts BATCH records every PRODUCE_EVERY_MS for the whole run (~300 records/s). */
const BATCH = 50;
const PRODUCE_EVERY_MS = 150;
const KEYS = 211;

export interface CrashOptions {
  readonly t: TestStack;
  /** Names the stream, bucket and lease table. */
  readonly name: string;
  readonly rounds: number;
  readonly seed: number;
  /** One split and one merge during the run. */
  readonly reshard: boolean;
  /** Sinks beside the Parquet lake, in every worker's config. */
  readonly extraSinks?: Record<string, unknown>;
  /** Called after the last round, before waiting for every checkpoint (e.g. to stop injecting faults). */
  readonly beforeQuiescence?: () => void | Promise<void>;
}

export interface MetricSample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

export interface CrashResult {
  readonly produced: number;
  readonly kills: string[];
  readonly reshards: string[];
  readonly lake: { rows: number; distinct: number; lost: number; duplicateRows: number; outOfRange: number };
  readonly deadLetters: number;
  readonly order: {
    keys: number;
    keysAcrossShards: number;
    violations: string[];
    parentChildPairs: number;
    parentsFirstViolations: string[];
  };
  readonly deliveries: {
    /** Records in GetRecords answers, all workers, all incarnations. */
    served: number;
    servedDistinct: number;
    /** Distinct records served more than once, not counting re-serves of resume points. */
    readMoreThanOnce: number;
    /** Extra servings beyond the first, not counting resume points: an upper bound of duplicate deliveries. */
    extraReads: number;
    /** Servings of checkpointed records at resume points (AT_SEQUENCE_NUMBER), skipped by the reader. */
    resumePoints: number;
    /** Parquet data objects uploaded more than once under the same key (replayed files). */
    rewrittenObjects: number;
    uploads: number;
  };
  /** A metric summed over every worker incarnation (last scrape; final `recordsFetched` at a graceful stop). */
  metric(name: string, labels?: Record<string, string>): number;
  readonly fetchedByWorkers: number;
  /** Exit code (or signal) of each worker after the final SIGTERM. */
  readonly exits: Array<number | string | null>;
  /** Workers that exited without being signalled by the test, with their stderr. */
  readonly crashes: string[];
  readonly incarnations: number;
}

interface Incarnation {
  readonly slot: number;
  readonly child: ChildProcess;
  readonly port: number;
  samples: MetricSample[];
  finalFetched?: number;
  exited: boolean;
  /** Set just before the test sends a signal: an exit without it is a crash of the worker. */
  signalled?: NodeJS.Signals;
  stderr: string;
}

/** Prometheus text format -> samples (comments and exemplars skipped). */
export function parsePrometheusText(text: string): MetricSample[] {
  const out: MetricSample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*?)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

function sum(samples: readonly MetricSample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

async function listShards(t: TestStack, stream: string): Promise<Shard[]> {
  const shards: Shard[] = [];
  let token: string | undefined;
  do {
    const out = await t.aws.kinesis.send(
      new ListShardsCommand(token ? { NextToken: token } : { StreamName: stream }),
    );
    shards.push(...(out.Shards ?? []));
    token = out.NextToken;
  } while (token);
  return shards;
}

const isOpen = (s: Shard) => !s.SequenceNumberRange?.EndingSequenceNumber;
const startHash = (s: Shard) => BigInt(s.HashKeyRange!.StartingHashKey!);
const endHash = (s: Shard) => BigInt(s.HashKeyRange!.EndingHashKey!);

export async function runCrashScenario(opts: CrashOptions): Promise<CrashResult> {
  const { t } = opts;
  const stream = opts.name;
  const bucket = `${opts.name}-lake`;
  const table = `${opts.name}-leases`;
  await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
  await createStream(t.aws.kinesis, stream, SHARDS);

  // Transparent proxies: they change nothing, they watch.
  const kinesis = await FaultProxy.start(t.stack.awsConfig.endpoints.kinesis);
  const s3 = await FaultProxy.start(t.stack.awsConfig.endpoints.s3);
  const served = new Map<string, number>();
  kinesis.observe({
    matches: amzTarget('GetRecords'),
    response(_req, status, body) {
      if (status !== 200) return;
      const answer = JSON.parse(body.toString('utf8')) as { Records?: Array<{ SequenceNumber: string }> };
      for (const r of answer.Records ?? [])
        served.set(r.SequenceNumber, (served.get(r.SequenceNumber) ?? 0) + 1);
    },
  });
  // A reader resuming from a checkpoint asks for an iterator AT the checkpointed record (and skips it):
  // that record is served again without being delivered again.
  const resumes = new Map<string, number>();
  kinesis.observe({
    matches: amzTarget('GetShardIterator'),
    request(req) {
      const ask = JSON.parse(req.body.toString('utf8')) as {
        ShardIteratorType?: string;
        StartingSequenceNumber?: string;
      };
      if (ask.ShardIteratorType === 'AT_SEQUENCE_NUMBER' && ask.StartingSequenceNumber)
        resumes.set(ask.StartingSequenceNumber, (resumes.get(ask.StartingSequenceNumber) ?? 0) + 1);
    },
  });
  const uploads = new Map<string, { firstStart: number; lastEnd: number; writes: number }>();
  const objectName = (url: string) => {
    const p = decodeURIComponent(new URL(url, 'http://x').pathname);
    return p.includes(`/${bucket}/lake/`) && p.endsWith('.parquet')
      ? p.slice(p.lastIndexOf('/') + 1)
      : undefined;
  };
  s3.observe({
    matches: (req) => req.method === 'PUT' && objectName(req.url) !== undefined,
    request(req) {
      const name = objectName(req.url)!;
      const u = uploads.get(name) ?? { firstStart: Number.POSITIVE_INFINITY, lastEnd: 0, writes: 0 };
      u.firstStart = Math.min(u.firstStart, performance.now());
      uploads.set(name, u);
    },
    response(req, status) {
      if (status !== 200) return;
      const u = uploads.get(objectName(req.url)!)!;
      u.lastEnd = Math.max(u.lastEnd, performance.now());
      u.writes += 1;
    },
  });

  const dir = path.join(t.dir, opts.name);
  mkdirSync(dir, { recursive: true });
  const ports = await Promise.all(Array.from({ length: WORKERS }, () => freePort()));
  const configFile = (n: number) => {
    const file = path.join(dir, `worker-${n}.yaml`);
    writeFileSync(
      file,
      stringify({
        app: { name: opts.name, workerId: `${opts.name}-worker-${n}` },
        aws: {
          ...t.stack.awsConfig,
          endpoints: { ...t.stack.awsConfig.endpoints, kinesis: kinesis.endpoint, s3: s3.endpoint },
        },
        consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
        checkpoints: { table, intervalMs: 300, shardSyncIntervalMs: 1_000, failoverMs: 3_000 },
        sinks: {
          lake: {
            type: 's3_parquet',
            bucket,
            prefix: 'lake/',
            roll: { maxFileRows: 200, maxFileAgeMs: 700 },
            columns: [{ name: 'id', type: 'int64' }],
          },
          ...opts.extraSinks,
        },
        dlq: { type: 's3', bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
        server: { host: '127.0.0.1', port: ports[n] },
        // info: the `worker stopped` line carries the lifetime recordsFetched.
        log: { level: 'info' },
        shutdown: { deadlineMs: 15_000 },
      }),
    );
    return file;
  };

  const incarnations: Incarnation[] = [];
  const crashes: string[] = [];
  const live = new Map<number, Incarnation>();
  let stderr = '';
  const start = (n: number) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'run', '-c', configFile(n)], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const inc: Incarnation = { slot: n, child, port: ports[n]!, samples: [], exited: false, stderr: '' };
    let pending = '';
    child.stdout!.on('data', (d) => {
      pending += String(d);
      const lines = pending.split('\n');
      pending = lines.pop()!;
      for (const line of lines) {
        if (!line.includes('"worker stopped"')) continue;
        const fetched = (JSON.parse(line) as { recordsFetched?: number }).recordsFetched;
        if (typeof fetched === 'number') inc.finalFetched = fetched;
      }
    });
    child.stderr!.on('data', (d) => {
      stderr = (stderr + String(d)).slice(-8000);
      inc.stderr = (inc.stderr + String(d)).slice(-4000);
    });
    child.once('exit', (code, signal) => {
      inc.exited = true;
      if (!inc.signalled)
        crashes.push(
          `worker ${n} (pid ${child.pid}) exited on its own: code ${code}, signal ${signal}; stderr: ${inc.stderr.slice(-1500)}`,
        );
    });
    incarnations.push(inc);
    live.set(n, inc);
  };
  const scrape = async (inc: Incarnation) => {
    try {
      const res = await fetch(`http://127.0.0.1:${inc.port}/metrics`, { signal: AbortSignal.timeout(3_000) });
      if (res.ok && !inc.exited) inc.samples = parsePrometheusText(await res.text());
    } catch {
      // starting, or gone: keep the previous scrape
    }
  };
  const scraper = setInterval(() => {
    for (const inc of live.values()) void scrape(inc);
  }, 1_000);

  const random = seededRandom(opts.seed);
  let produced = 0;
  const lastPerShard = new Map<string, string>();
  let producing = true;
  let producer: Promise<void> = Promise.resolve();
  // Runs for the whole run, so every kill and every reshard happens with records in flight.
  const runProducer = async () => {
    while (producing) {
      const started = Date.now();
      await produce();
      await new Promise((r) => setTimeout(r, Math.max(0, PRODUCE_EVERY_MS - (Date.now() - started))));
    }
  };
  const produce = async () => {
    const out = await putRecords(
      t.aws.kinesis,
      stream,
      Array.from({ length: BATCH }, (_, i) => ({
        partitionKey: `k-${(produced + i) % KEYS}`,
        data: JSON.stringify({ id: produced + i }),
      })),
    );
    for (const p of out) lastPerShard.set(p.shardId, p.sequenceNumber);
    produced += BATCH;
  };
  const waitActive = () =>
    waitFor(
      async () =>
        (await t.aws.kinesis.send(new DescribeStreamSummaryCommand({ StreamName: stream })))
          .StreamDescriptionSummary?.StreamStatus === 'ACTIVE',
      30_000,
      `${stream} ACTIVE`,
    );
  let splitParent: string | undefined;
  const leaseTable = new LeaseTable(t.aws.dynamodb, table);
  const reshards: string[] = [];
  const split = async (victim: number) => {
    const open = (await listShards(t, stream))
      .filter(isOpen)
      .sort((a, b) => (startHash(a) < startHash(b) ? -1 : 1));
    // Not the highest range: the merge below needs a right-hand neighbour of the upper child. Preferably a
    // shard of the dead worker: its records wait for failover while the children are ready at once, so
    // reading a child before its parent is done would show (the parents-first check below).
    const candidates = open.slice(0, -1);
    const owners = new Map((await leaseTable.list()).map((l) => [l.leaseKey, l.leaseOwner]));
    const orphaned = candidates.filter((s) => owners.get(s.ShardId!) === `${opts.name}-worker-${victim}`);
    const pool = orphaned.length > 0 ? orphaned : candidates;
    const target = pool[Math.floor(random() * pool.length)]!;
    splitParent = target.ShardId!;
    await t.aws.kinesis.send(
      new SplitShardCommand({
        StreamName: stream,
        ShardToSplit: splitParent,
        NewStartingHashKey: ((startHash(target) + endHash(target)) / 2n).toString(),
      }),
    );
    await waitActive();
    reshards.push(`split ${splitParent}${orphaned.length > 0 ? ' (held by the killed worker)' : ''}`);
  };
  const merge = async () => {
    // The upper child of the split with its right-hand neighbour: a three-level lineage for some keys.
    const open = (await listShards(t, stream)).filter(isOpen);
    const child = open
      .filter((s) => s.ParentShardId === splitParent && !s.AdjacentParentShardId)
      .sort((a, b) => (startHash(a) < startHash(b) ? 1 : -1))[0]!;
    const neighbour = open.find((s) => startHash(s) === endHash(child) + 1n)!;
    await t.aws.kinesis.send(
      new MergeShardsCommand({
        StreamName: stream,
        ShardToMerge: child.ShardId!,
        AdjacentShardToMerge: neighbour.ShardId!,
      }),
    );
    await waitActive();
    reshards.push(`merge ${child.ShardId} + ${neighbour.ShardId}`);
  };

  const kills: string[] = [];
  const exits: Array<number | string | null> = [];
  const splitRound = opts.reshard ? Math.floor(opts.rounds / 3) : -1;
  const mergeRound = opts.reshard ? Math.max(splitRound + 1, Math.floor((2 * opts.rounds) / 3)) : -1;
  try {
    for (let n = 0; n < WORKERS; n++) start(n);
    producer = runProducer();
    // A failing put ends the run at once instead of after every round.
    let producerError: unknown;
    producer.catch((err) => {
      producerError = err;
    });
    for (let round = 0; round < opts.rounds; round++) {
      // While the producer runs: kill a random worker at a random moment, restart it a little later.
      const wait = 500 + Math.floor(random() * 2_500);
      await new Promise((r) => setTimeout(r, wait));
      if (producerError) throw producerError;
      const victim = Math.floor(random() * WORKERS);
      const inc = live.get(victim)!;
      await scrape(inc);
      inc.signalled = 'SIGKILL';
      inc.child.kill('SIGKILL');
      if (!inc.exited) await new Promise((r) => inc.child.once('exit', r));
      live.delete(victim);
      kills.push(`round ${round + 1}: SIGKILL worker ${victim} after ${wait} ms`);
      // Reshard while producing, with the victim still dead.
      if (round === splitRound) await split(victim);
      else if (round === mergeRound) await merge();
      await new Promise((r) => setTimeout(r, Math.floor(random() * 1_500)));
      start(victim);
    }
    producing = false;
    await producer;
    await opts.beforeQuiescence?.();

    // Quiescence: every closed shard at SHARD_END, every open one checkpointed at its last record.
    const leases = leaseTable;
    const shards = await listShards(t, stream);
    await waitFor(
      async () => {
        for (const s of shards) {
          const checkpoint = (await leases.get(s.ShardId!))?.checkpoint;
          const want = isOpen(s) ? lastPerShard.get(s.ShardId!) : SHARD_END;
          if (want !== undefined && checkpoint !== want) return false;
        }
        return true;
      },
      240_000,
      `every shard checkpointed at its last record or SHARD_END (stderr: ${stderr.slice(-2000)})`,
    );
    clearInterval(scraper);
    // A worker restarted in the last round may still be loading its modules (its SIGTERM handler is not
    // installed yet, so a SIGTERM would kill it outright): wait until each answers on its ops port.
    const answers = async (inc: Incarnation) =>
      fetch(`http://127.0.0.1:${inc.port}/metrics`, { signal: AbortSignal.timeout(3_000) })
        .then((r) => r.ok)
        .catch(() => false);
    for (const inc of live.values())
      await waitFor(() => answers(inc), 60_000, `worker ${inc.slot} serving /metrics`);
    await Promise.all([...live.values()].map(scrape));
    const stopping = [...live.values()];
    for (const inc of stopping) {
      inc.signalled = 'SIGTERM';
      inc.child.kill('SIGTERM');
    }
    exits.push(
      ...(await Promise.all(
        stopping.map((inc) =>
          inc.exited
            ? Promise.resolve(inc.child.exitCode ?? inc.child.signalCode)
            : new Promise<number | string | null>((r) =>
                inc.child.once('exit', (code, signal) => r(code ?? signal)),
              ),
        ),
      )),
    );
    live.clear();

    // The final object set.
    const out = path.join(t.dir, `${opts.name}-parquet`);
    await download(t.aws.s3, bucket, 'lake/', out);
    const glob = `read_parquet('${out}/**/*.parquet')`;
    const [stats] = await duck(
      `SELECT count(*)::INT AS total, count(DISTINCT id)::INT AS ids,
              count(*) FILTER (WHERE id < 0 OR id >= ${produced})::INT AS outside FROM ${glob}`,
    );
    const rows = await duck(
      `SELECT id::INT AS id, _partition_key AS k, _shard_id AS s, _sequence_number AS q FROM ${glob}`,
    );
    const deadLetters = (await listKeys(t.aws.s3, bucket, 'dlq/')).length;

    // Per-key order along the lineage, and parents written before children.
    const parents = new Map(
      shards.map((s) => [
        s.ShardId!,
        [s.ParentShardId, s.AdjacentParentShardId].filter((p): p is string => !!p),
      ]),
    );
    const ancestors = (id: string): Set<string> => {
      const out = new Set<string>();
      const todo = [...(parents.get(id) ?? [])];
      while (todo.length) {
        const p = todo.pop()!;
        if (out.has(p)) continue;
        out.add(p);
        todo.push(...(parents.get(p) ?? []));
      }
      return out;
    };
    const order = keyOrder(rows, ancestors);
    const uploadsByShard = new Map<string, Array<{ firstStart: number; lastEnd: number }>>();
    for (const [name, u] of uploads) {
      const shardId = parseObjectName(name)?.shardId;
      if (!shardId) continue;
      const list = uploadsByShard.get(shardId) ?? [];
      list.push(u);
      uploadsByShard.set(shardId, list);
    }
    let parentChildPairs = 0;
    const parentsFirstViolations: string[] = [];
    for (const [child, ps] of parents) {
      const c = uploadsByShard.get(child);
      if (!c?.length) continue;
      const childStart = Math.min(...c.map((u) => u.firstStart));
      for (const p of ps) {
        const pu = uploadsByShard.get(p);
        if (!pu?.length) continue;
        parentChildPairs += 1;
        const parentEnd = Math.max(...pu.map((u) => u.lastEnd));
        if (childStart < parentEnd)
          parentsFirstViolations.push(
            `${child} started uploading ${(parentEnd - childStart).toFixed(0)} ms before its parent ${p}'s last object was written`,
          );
      }
    }

    const servedTotal = [...served.values()].reduce((a, b) => a + b, 0);
    let readMoreThanOnce = 0;
    let extraReads = 0;
    let resumePoints = 0;
    for (const [seq, n] of served) {
      const resumed = Math.min(n - 1, resumes.get(seq) ?? 0);
      resumePoints += resumed;
      if (n - resumed > 1) {
        readMoreThanOnce += 1;
        extraReads += n - resumed - 1;
      }
    }
    const allSamples = () => incarnations.map((i) => i.samples);
    const metric = (name: string, labels: Record<string, string> = {}) =>
      allSamples().reduce((a, s) => a + sum(s, name, labels), 0);
    const fetchedByWorkers = incarnations.reduce(
      (a, i) => a + (i.finalFetched ?? sum(i.samples, 'ksw_kinesis_records_fetched_total')),
      0,
    );
    return {
      produced,
      kills,
      reshards,
      lake: {
        rows: stats!.total as number,
        distinct: stats!.ids as number,
        lost: produced - (stats!.ids as number) + (stats!.outside as number),
        duplicateRows: (stats!.total as number) - (stats!.ids as number),
        outOfRange: stats!.outside as number,
      },
      deadLetters,
      order: { ...order, parentChildPairs, parentsFirstViolations },
      deliveries: {
        served: servedTotal,
        servedDistinct: served.size,
        readMoreThanOnce,
        extraReads,
        resumePoints,
        rewrittenObjects: [...uploads.values()].filter((u) => u.writes > 1).length,
        uploads: [...uploads.values()].reduce((a, u) => a + u.writes, 0),
      },
      metric,
      fetchedByWorkers,
      exits,
      crashes,
      incarnations: incarnations.length,
    };
  } finally {
    producing = false;
    await producer.catch(() => undefined);
    clearInterval(scraper);
    for (const inc of live.values()) inc.child.kill('SIGKILL');
    await Promise.all([kinesis.stop(), s3.stop()]);
  }
}

/**
 * Per partition key: the shards holding its rows must form one line of descent (each an ancestor of the
 * next), and its ids, read parent before child and in sequence order within a shard, must rise strictly
 * (the producer wrote them in rising order).
 */
function keyOrder(
  rows: ReadonlyArray<Record<string, unknown>>,
  ancestors: (shardId: string) => Set<string>,
): { keys: number; keysAcrossShards: number; violations: string[] } {
  const byKey = new Map<string, Array<{ id: number; s: string; q: bigint }>>();
  for (const r of rows) {
    const list = byKey.get(r.k as string) ?? [];
    list.push({ id: r.id as number, s: r.s as string, q: BigInt(r.q as string) });
    byKey.set(r.k as string, list);
  }
  const violations: string[] = [];
  let across = 0;
  for (const [key, list] of byKey) {
    const shardsOfKey = [...new Set(list.map((r) => r.s))].sort(
      (a, b) => ancestors(a).size - ancestors(b).size,
    );
    if (shardsOfKey.length > 1) across += 1;
    for (let i = 1; i < shardsOfKey.length; i++) {
      if (!ancestors(shardsOfKey[i]!).has(shardsOfKey[i - 1]!))
        violations.push(
          `${key}: in ${shardsOfKey[i - 1]} and ${shardsOfKey[i]}, which are not parent and child`,
        );
    }
    const rank = new Map(shardsOfKey.map((s, i) => [s, i]));
    list.sort((a, b) => rank.get(a.s)! - rank.get(b.s)! || (a.q < b.q ? -1 : a.q > b.q ? 1 : 0));
    for (let i = 1; i < list.length; i++) {
      if (list[i]!.id <= list[i - 1]!.id) {
        violations.push(
          `${key}: id ${list[i]!.id} (${list[i]!.s}) after ${list[i - 1]!.id} (${list[i - 1]!.s})`,
        );
        break;
      }
    }
  }
  return { keys: byKey.size, keysAcrossShards: across, violations };
}
