/**
 * The harness of the "alive" chaos scenarios (test/chaos/alive.test.ts): worker processes that stay alive
 * while their leases go wrong (lease writes cut, a pause, one workerId in two processes, a sink that throws,
 * handoffs under tail sampling and RED, a lease lost mid-upload), each with the verification the crash
 * scenarios use, and without trusting the workers:
 *
 *  - every worker slot has its own fault proxies in front of DynamoDB, S3 and OpenSearch. The DynamoDB
 *    proxies record every lease write DynamoDB accepted (lease-log.ts): per lease one chain of counters, the
 *    checkpoint never moving back, nothing accepted over SHARD_END;
 *  - from that record, each slot's tenures per shard: from its take to the earliest of its deadline (send
 *    time of its last accepted lease write + failoverMs - fencingMarginMs), its release or finished
 *    handoff, and the next take by anyone else. Every write request (S3 PUT/POST/DELETE, OpenSearch bulk
 *    items) the slot's proxies received for a shard outside its tenures of that shard is a write after the
 *    deadline; the scenarios require none;
 *  - the final state: Parquet rows by record id (DuckDB) and OpenSearch documents by record id (composite
 *    aggregation), each id exactly once.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { stringify } from 'yaml';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { freePort } from '../../src/local/emulators.js';
import { parsePrometheusText } from './crash-run.js';
import { type Arrival, FaultProxy } from './fault-proxy.js';
import { LeaseWriteLog } from './lease-log.js';
import { documentIds, type OpenSearchNode } from './opensearch.js';
import { download, duck, listKeys } from './parquet.js';
import { createStream, putRecords, type TestStack, waitFor } from './stack.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const ENTRY = path.join(ROOT, 'test/helpers/alive-worker.ts');

export const FAILOVER_MS = 3_000;
export const MARGIN_MS = FAILOVER_MS / 5;

export interface AliveOptions {
  readonly t: TestStack;
  /** Names the stream, bucket, lease table and index. */
  readonly name: string;
  readonly shards: number;
  readonly slots: number;
  /** A real OpenSearch node: each slot then also writes to `<name>` through its own proxy. */
  readonly opensearch?: OpenSearchNode;
  /** Config of the workers beyond the defaults (processors, routing, extra sinks...), merged in. */
  readonly worker?: Record<string, unknown>;
  /** Overrides of the Parquet `lake` sink. */
  readonly lake?: Record<string, unknown>;
  /** Lease failover of the workers (default FAILOVER_MS); the fencing margin is a fifth of it. */
  readonly failoverMs?: number;
  /** The record of id n (default `{ id: n }`, partition key `k-<n mod 97>`). */
  readonly record?: (id: number) => { partitionKey: string; data: Record<string, unknown> };
}

export interface SlotOptions {
  readonly workerId?: string;
  readonly env?: Record<string, string>;
}

interface Incarnation {
  readonly slot: number;
  readonly child: ChildProcess;
  readonly port: number;
  samples: ReturnType<typeof parsePrometheusText>;
  exited: boolean;
  signalled: boolean;
  stdout: string;
  stderr: string;
}

interface Slot {
  readonly n: number;
  readonly ddb: FaultProxy;
  readonly s3: FaultProxy;
  readonly os: FaultProxy | undefined;
  /** Write requests that arrived at the slot's S3 and OpenSearch proxies, with the shards they concern. */
  readonly writes: Array<{ at: number; shards: string[]; body?: Buffer; what: string }>;
}

export interface Verification {
  readonly produced: number;
  readonly lake: { rows: number; distinct: number; lost: number; duplicateRows: number };
  readonly search?: { documents: number; distinct: number; lost: number; duplicates: number };
  readonly leaseViolations: string[];
  /** Writes a slot sent for a shard outside its tenures of it (after its deadline, or before its take). */
  readonly lateWrites: string[];
  readonly tenures: number;
  readonly leaseWrites: number;
  readonly deadLetters: number;
}

/** The shards an S3 write request concerns (data objects, manifests, dead letters), from its key. */
function shardsOfS3Write(url: string): string[] {
  const key = decodeURIComponent(new URL(url, 'http://x').pathname);
  return [...new Set(key.match(/shardId-\d+/g) ?? [])];
}

/** The shards of the documents in an OpenSearch bulk body (origin ids; derived docs by sourceShardId). */
function shardsOfBulk(body: Buffer): string[] {
  const lines = body.toString('utf8').split('\n').filter(Boolean);
  const out = new Set<string>();
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const action = JSON.parse(lines[i]!) as Record<string, { _id?: string }>;
    const id = Object.values(action)[0]?._id ?? '';
    const shard =
      /shardId-\d+/.exec(id)?.[0] ?? (JSON.parse(lines[i + 1]!) as { sourceShardId?: string }).sourceShardId;
    if (shard) out.add(shard);
  }
  return [...out];
}

export class AliveFleet {
  readonly log = new LeaseWriteLog();
  readonly stream: string;
  readonly bucket: string;
  readonly table: string;
  readonly index: string;
  private readonly slots: Slot[] = [];
  private readonly live = new Map<number, Incarnation>();
  private readonly incarnations: Incarnation[] = [];
  private readonly crashes: string[] = [];
  private readonly lastPerShard = new Map<string, string>();
  private readonly dir: string;
  private scraper: NodeJS.Timeout | undefined;
  private producer: Promise<void> | undefined;
  private producing = false;
  produced = 0;
  readonly failoverMs: number;
  readonly marginMs: number;

  private constructor(private readonly opts: AliveOptions) {
    this.stream = opts.name;
    this.bucket = `${opts.name}-lake`;
    this.table = `${opts.name}-leases`;
    this.index = opts.name;
    this.failoverMs = opts.failoverMs ?? FAILOVER_MS;
    this.marginMs = this.failoverMs / 5;
    this.dir = path.join(opts.t.dir, opts.name);
    mkdirSync(this.dir, { recursive: true });
  }

  static async create(opts: AliveOptions): Promise<AliveFleet> {
    const fleet = new AliveFleet(opts);
    const { t } = opts;
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: fleet.bucket }));
    await createStream(t.aws.kinesis, fleet.stream, opts.shards);
    for (let n = 0; n < opts.slots; n++) {
      const ddb = await FaultProxy.start(t.stack.awsConfig.endpoints.dynamodb);
      const s3 = await FaultProxy.start(t.stack.awsConfig.endpoints.s3);
      const os = opts.opensearch ? await FaultProxy.start(opts.opensearch.endpoint) : undefined;
      const slot: Slot = { n, ddb, s3, os, writes: [] };
      fleet.log.watch(ddb, `slot-${n}`);
      s3.onArrival((a: Arrival) => {
        if (a.method === 'GET' || a.method === 'HEAD') return;
        const shards = shardsOfS3Write(a.url);
        if (shards.length > 0)
          slot.writes.push({ at: a.startedAt, shards, what: `S3 ${a.method} ${a.url.split('?')[0]}` });
      });
      // Bodies are parsed at the end: parsing here would slow this process's event loop, which is what
      // timestamps the arrivals of every proxy.
      os?.onArrival((a: Arrival) => {
        if (a.method !== 'POST' || !/_bulk/.test(a.url)) return;
        slot.writes.push({ at: a.startedAt, shards: [], body: a.body, what: 'OpenSearch bulk' });
      });
      fleet.slots.push(slot);
    }
    fleet.scraper = setInterval(() => {
      for (const inc of fleet.live.values()) void fleet.scrape(inc);
    }, 1_000);
    return fleet;
  }

  slot(n: number): Slot {
    return this.slots[n]!;
  }

  private config(n: number, port: number, workerId: string): string {
    const { t, opensearch } = this.opts;
    const slot = this.slots[n]!;
    const file = path.join(this.dir, `slot-${n}-${this.incarnations.length}.yaml`);
    const worker = (this.opts.worker ?? {}) as { sinks?: Record<string, unknown> };
    writeFileSync(
      file,
      stringify({
        app: { name: this.opts.name, workerId },
        aws: {
          ...t.stack.awsConfig,
          endpoints: { ...t.stack.awsConfig.endpoints, s3: slot.s3.endpoint, dynamodb: slot.ddb.endpoint },
        },
        consumers: [{ type: 'polling', stream: this.stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
        checkpoints: {
          table: this.table,
          intervalMs: 300,
          shardSyncIntervalMs: 1_000,
          failoverMs: this.failoverMs,
        },
        dlq: { type: 's3', bucket: this.bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
        server: { host: '127.0.0.1', port },
        log: { level: 'info' },
        shutdown: { deadlineMs: 15_000 },
        ...worker,
        sinks: {
          lake: {
            type: 's3_parquet',
            bucket: this.bucket,
            prefix: 'lake/',
            roll: { maxFileRows: 200, maxFileAgeMs: 700 },
            columns: [{ name: 'id', type: 'int64' }],
            ...this.opts.lake,
          },
          ...(opensearch && slot.os
            ? {
                search: {
                  type: 'opensearch',
                  endpoint: slot.os.endpoint,
                  index: this.index,
                  bulk: { maxDocuments: 200, flushIntervalMs: 200, requestTimeoutMs: 5_000 },
                  retry: { initialBackoffMs: 100, maxBackoffMs: 1_000 },
                },
              }
            : {}),
          ...worker.sinks,
        },
      }),
    );
    return file;
  }

  /** Starts a worker process in the slot (default id `<name>-slot-<n>`). */
  async start(n: number, opts: SlotOptions = {}): Promise<void> {
    const port = await freePort();
    const file = this.config(n, port, opts.workerId ?? `${this.opts.name}-slot-${n}`);
    const child = spawn(process.execPath, ['--import', 'tsx', ENTRY, file], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...opts.env },
    });
    const inc: Incarnation = {
      slot: n,
      child,
      port,
      samples: [],
      exited: false,
      signalled: false,
      stdout: '',
      stderr: '',
    };
    // Every line also goes to a file beside the config (ALIVE_LOG_DIR keeps them after the run).
    const logFile = path.join(
      process.env.ALIVE_LOG_DIR ?? this.dir,
      `${this.opts.name}-slot-${n}-${this.incarnations.length}.log`,
    );
    child.stdout!.on('data', (d) => {
      inc.stdout = (inc.stdout + String(d)).slice(-200_000);
      appendFileSync(logFile, d);
    });
    child.stderr!.on('data', (d) => {
      inc.stderr = (inc.stderr + String(d)).slice(-8_000);
    });
    child.once('exit', (code, signal) => {
      inc.exited = true;
      if (!inc.signalled)
        this.crashes.push(
          `slot ${n} exited on its own (code ${code}, signal ${signal}): ${inc.stderr.slice(-1500)}`,
        );
    });
    this.incarnations.push(inc);
    this.live.set(n, inc);
    await waitFor(
      async () => inc.exited || (await this.scrape(inc)),
      60_000,
      `slot ${n} serving /metrics (stderr: ${inc.stderr.slice(-500)})`,
    );
  }

  /** Graceful stop (SIGTERM): resolves with the exit code. */
  async stop(n: number): Promise<number | string | null> {
    const inc = this.live.get(n);
    if (!inc) return null;
    await this.scrape(inc);
    inc.signalled = true;
    inc.child.kill('SIGTERM');
    const code = inc.exited
      ? (inc.child.exitCode ?? inc.child.signalCode)
      : await new Promise<number | string | null>((r) => inc.child.once('exit', (c, s) => r(c ?? s)));
    this.live.delete(n);
    return code;
  }

  /** Freezes the slot's process (SIGSTOP: a pause as long as a GC pause or a stalled VM), then thaws it. */
  async pause(n: number, ms: number): Promise<void> {
    const inc = this.live.get(n)!;
    inc.child.kill('SIGSTOP');
    await new Promise((r) => setTimeout(r, ms));
    inc.child.kill('SIGCONT');
  }

  private async scrape(inc: Incarnation): Promise<boolean> {
    try {
      const res = await fetch(`http://127.0.0.1:${inc.port}/metrics`, { signal: AbortSignal.timeout(3_000) });
      if (!res.ok || inc.exited) return false;
      inc.samples = parsePrometheusText(await res.text());
      return true;
    } catch {
      return false;
    }
  }

  /** A metric of the slot's current process (last scrape). */
  metric(n: number, name: string, labels: Record<string, string> = {}): number {
    const inc = this.live.get(n) ?? [...this.incarnations].reverse().find((i) => i.slot === n);
    return (inc?.samples ?? [])
      .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
      .reduce((a, s) => a + s.value, 0);
  }

  /** A metric summed over every process that ran (last scrape of each). */
  total(name: string, labels: Record<string, string> = {}): number {
    return this.incarnations.reduce(
      (a, inc) =>
        a +
        inc.samples
          .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
          .reduce((b, s) => b + s.value, 0),
      0,
    );
  }

  /** The worker's log lines (JSON) of a slot's processes that match. */
  logLines(n: number, match: RegExp): string[] {
    return this.incarnations
      .filter((i) => i.slot === n)
      .flatMap((i) => i.stdout.split('\n'))
      .filter((l) => match.test(l));
  }

  async rescrape(): Promise<void> {
    await Promise.all([...this.live.values()].map((inc) => this.scrape(inc)));
  }

  /** Leases held per slot (ksw_leases_held of each live process). */
  held(): Record<number, number> {
    const out: Record<number, number> = {};
    for (const n of this.live.keys()) out[n] = this.metric(n, 'ksw_leases_held');
    return out;
  }

  async produce(n: number): Promise<void> {
    const record = this.opts.record ?? ((id: number) => ({ partitionKey: `k-${id % 97}`, data: { id } }));
    const batch = Array.from({ length: n }, (_, i) => record(this.produced + i));
    // Kinesis takes at most 5 MiB per PutRecords: large records go in smaller calls.
    for (let i = 0; i < batch.length; ) {
      let bytes = 0;
      let j = i;
      while (
        j < batch.length &&
        (j === i || bytes + JSON.stringify(batch[j]!.data).length < 4 * 1024 * 1024)
      ) {
        bytes += JSON.stringify(batch[j]!.data).length;
        j++;
      }
      const out = await putRecords(
        this.opts.t.aws.kinesis,
        this.stream,
        batch.slice(i, j).map((r) => ({ partitionKey: r.partitionKey, data: JSON.stringify(r.data) })),
      );
      for (const p of out) this.lastPerShard.set(p.shardId, p.sequenceNumber);
      i = j;
    }
    this.produced += n;
  }

  /** Produces `batch` records every `everyMs` until stopProducing(). */
  startProducing(batch: number, everyMs: number): void {
    this.producing = true;
    this.producer = (async () => {
      while (this.producing) {
        const started = Date.now();
        await this.produce(batch);
        await new Promise((r) => setTimeout(r, Math.max(0, everyMs - (Date.now() - started))));
      }
    })();
  }

  async stopProducing(): Promise<void> {
    this.producing = false;
    await this.producer;
  }

  /** Waits until every shard is checkpointed at its last produced record. */
  async quiesce(timeoutMs = 120_000): Promise<void> {
    const leases = new LeaseTable(this.opts.t.aws.dynamodb, this.table);
    await waitFor(
      async () => {
        for (const [shard, seq] of this.lastPerShard)
          if ((await leases.get(shard))?.checkpoint !== seq) return false;
        return true;
      },
      timeoutMs,
      `every shard checkpointed at its last record (${this.crashes.join('; ')})`,
    ).catch(async (err) => {
      const rows = await leases.list();
      await this.rescrape();
      const watched = [
        'ksw_leases_held',
        'ksw_shard_in_flight_records',
        'ksw_shard_oldest_unacked_age_seconds',
        'ksw_lease_fencing_slack_seconds',
        'ksw_kinesis_records_fetched_total',
        'ksw_parquet_buffered_bytes',
        'ksw_parquet_open_files',
        'ksw_opensearch_in_flight_documents',
        'ksw_dlq_buffered_records',
      ];
      const tails = [...this.live.values()].map(
        (inc) =>
          `slot ${inc.slot}: ${inc.samples
            .filter((x) => watched.includes(x.name))
            .map((x) => `${x.name}${JSON.stringify(x.labels)}=${x.value}`)
            .join(' ')}\n${inc.stdout
            .split('\n')
            .filter((l) => /"level":"(warn|error|fatal)"/.test(l))
            .slice(-8)
            .map((l) => l.slice(0, 400))
            .join('\n')}`,
      );
      throw new Error(
        `${(err as Error).message}\nleases: ${JSON.stringify(rows.map((r) => [r.leaseKey, r.leaseOwner, r.checkpoint, this.lastPerShard.get(r.leaseKey)]))}\n${tails.join('\n')}`,
      );
    });
  }

  /**
   * Each slot's tenures of each shard, as windows in which it may write: from its take to the earliest of
   * its fencing deadline, its release or finished handoff, and the next take by another tenure.
   */
  windows(): Map<string, Array<{ start: number; end: number; tenure: string; end_: string }>> {
    const out = new Map<string, Array<{ start: number; end: number; tenure: string; end_: string }>>();
    for (const key of this.log.keys()) {
      const chain = this.log.chain(key);
      let current:
        | { via: string; tenure: string; start: number; last: number; end?: number; why?: string }
        | undefined;
      const close = (at: number | undefined, reason: string) => {
        if (!current) return;
        const deadline = current.last + this.failoverMs - this.marginMs;
        const given = current.end ?? Number.POSITIVE_INFINITY;
        const next = at ?? Number.POSITIVE_INFINITY;
        const end = Math.min(deadline, given, next);
        const why = end === deadline ? 'its deadline' : end === given ? (current.why ?? reason) : reason;
        const id = `${current.via}\n${key}`;
        const list = out.get(id) ?? [];
        list.push({ start: current.start, end, tenure: current.tenure, end_: why });
        out.set(id, list);
        current = undefined;
      };
      for (const w of chain) {
        if (w.operation === 'take' && w.tenure) {
          close(w.sentAt, 'taken by the next tenure');
          current = { via: w.via, tenure: w.tenure, start: w.sentAt, last: w.sentAt };
          continue;
        }
        if (!current || w.via !== current.via) continue;
        if (w.tenure === current.tenure || w.operation === 'release') {
          // A write answered after the worker stopped waiting for it (its call timeout, renewIntervalMs)
          // did not move the worker's deadline, even though DynamoDB took it.
          if (w.answeredAt - w.sentAt <= this.failoverMs / 3) current.last = Math.max(current.last, w.sentAt);
          if (w.operation === 'release' || w.operation === 'finishHandoff') {
            current.end = w.sentAt;
            current.why = w.operation;
          }
        }
      }
      close(undefined, 'deadline');
    }
    return out;
  }

  /** Writes a slot sent for a shard outside all its tenures of that shard. */
  lateWrites(): string[] {
    const windows = this.windows();
    const late: string[] = [];
    for (const slot of this.slots) {
      for (const w of slot.writes) {
        for (const shard of w.body ? shardsOfBulk(w.body) : w.shards) {
          const mine = windows.get(`slot-${slot.n}\n${shard}`) ?? [];
          if (mine.some((x) => w.at >= x.start && w.at <= x.end)) continue;
          const after = mine.filter((x) => x.end < w.at).at(-1);
          late.push(
            `slot ${slot.n}: ${w.what} for ${shard} at ${after ? `+${w.at - after.end} ms after its tenure ${after.tenure} ended (${after.end_})` : 'before any tenure of it'}`,
          );
        }
      }
    }
    return late;
  }

  /** Stops every worker gracefully and checks the final state. */
  async verify(): Promise<Verification> {
    await this.rescrape();
    for (const n of [...this.live.keys()]) await this.stop(n);
    const { t, opensearch } = this.opts;
    const out = path.join(this.dir, 'final');
    await download(t.aws.s3, this.bucket, 'lake/', out);
    const [stats] = await duck(
      `SELECT count(*)::INT AS rows, count(DISTINCT id)::INT AS ids FROM read_parquet('${out}/lake/**/*.parquet')`,
    );
    const rows = stats!.rows as number;
    const distinct = stats!.ids as number;
    let search: Verification['search'];
    if (opensearch) {
      const docs = await documentIds(opensearch, this.index);
      const seen = new Map<number, number>();
      for (const id of docs.ids) seen.set(id, (seen.get(id) ?? 0) + 1);
      search = {
        documents: docs.count,
        distinct: seen.size,
        lost: this.produced - [...seen.keys()].filter((id) => id >= 0 && id < this.produced).length,
        duplicates: [...seen.values()].reduce((a, n) => a + n - 1, 0),
      };
    }
    return {
      produced: this.produced,
      lake: { rows, distinct, lost: this.produced - distinct, duplicateRows: rows - distinct },
      ...(search ? { search } : {}),
      leaseViolations: this.log.violations(),
      lateWrites: this.lateWrites(),
      tenures: [...this.windows().values()].reduce((a, l) => a + l.length, 0),
      leaseWrites: this.log.writes.length,
      deadLetters: (await listKeys(t.aws.s3, this.bucket, 'dlq/')).length,
    };
  }

  /** Workers that exited without being told to. */
  get unexpectedExits(): string[] {
    return this.crashes;
  }

  async close(): Promise<void> {
    this.producing = false;
    await this.producer?.catch(() => undefined);
    clearInterval(this.scraper);
    for (const inc of this.live.values()) {
      inc.signalled = true;
      inc.child.kill('SIGKILL');
    }
    for (const slot of this.slots) {
      await slot.ddb.stop();
      await slot.s3.stop();
      await slot.os?.stop();
    }
  }
}
