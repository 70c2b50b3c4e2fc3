/**
 * Fleet simulator (npm run bench:fleet): N real ShardCoordinators (real lease-table, taker, renewer,
 * handoff and shard-sync code) against dynalite, with fake Kinesis readers. What it measures:
 *
 *  - lease-table traffic through a counting middleware on the one DynamoDB client the fleet shares:
 *    items read and written per operation, and capacity units computed as DynamoDB does (item size = names
 *    + values; a consistent Scan page costs ceil(page bytes / 4 KB) read units, a GetItem ceil(item / 4 KB),
 *    a write ceil(item / 1 KB) write units, failed conditional writes included);
 *  - ListShards calls of a fake stream whose shard count changes under the fleet (splits and merges with
 *    real lineage: at most two parents, as Kinesis);
 *  - time to full balance after start, a join and a kill; time until a killed worker's shards are read
 *    again; steals per minute at steady state; leases held by two workers at any sampled instant;
 *  - a child shard read before all its parents were read to their end (never expected).
 *
 * A "killed" worker's lease and Kinesis calls never answer again (as a process that died). Time is not
 * scaled: failoverMs is short (--failover, default 3000) so a run fits in minutes; rates scale with
 * 1 / failoverMs, the report states them per second at the failoverMs used and at the default 10 s.
 *
 *   node --import tsx bench/fleet-sim.ts [--sizes 10x3,100x10] [--failover 3000] [--steady 20]
 *        [--mode adaptive|fixed] [--reshard] [--workers-reshard 6]
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { KinesisClient } from '@aws-sdk/client-kinesis';
import pino from 'pino';
import { checkpointConfigSchema, ShardCoordinator } from '../src/consumers/coordinator.js';
import { LeaseTable } from '../src/consumers/lease-table.js';
import { pollingConsumerConfigSchema } from '../src/consumers/polling.js';
import { startDynalite } from '../src/local/emulators.js';
import { createRegistry } from '../src/metrics/registry.js';

const args = process.argv.slice(2);
const arg = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
};
const SIZES = arg('sizes', '10x3,100x10')
  .split(',')
  .map((s) => s.split('x').map(Number) as [number, number]);
const FAILOVER = Number(arg('failover', '3000'));
const STEADY_S = Number(arg('steady', '20'));
const MODE = arg('mode', 'adaptive');
const RESHARD = args.includes('--reshard');
const RESHARD_WORKERS = Number(arg('workers-reshard', '6'));
const RATE = Number(arg('rate', '2')); // records per shard per second

/** On-demand list prices, us-east-1 (since Nov 2024): per million request units. */
const PRICE_READ = 0.125;
const PRICE_WRITE = 0.625;

// --- counting: item sizes and capacity units --------------------------------------------------------

type Attr = { S?: string; N?: string; SS?: string[]; NS?: string[]; BOOL?: boolean; NULL?: boolean };
function attrSize(v: Attr): number {
  if (v.S !== undefined) return Buffer.byteLength(v.S);
  if (v.N !== undefined) return Math.ceil(v.N.replace(/^-|\./g, '').length / 2) + 1;
  if (v.SS) return v.SS.reduce((n, s) => n + Buffer.byteLength(s), 0);
  if (v.NS) return v.NS.reduce((n, s) => n + Math.ceil(s.length / 2) + 1, 0);
  return 1;
}
function itemSize(item: Record<string, Attr>): number {
  let n = 0;
  for (const [k, v] of Object.entries(item)) n += Buffer.byteLength(k) + attrSize(v);
  return n;
}

class Counter {
  ops = new Map<string, number>();
  itemsRead = 0;
  itemsWritten = 0;
  rcu = 0;
  wcu = 0;
  scans = 0;
  sizes = new Map<string, number>();
  snapshot() {
    return {
      itemsRead: this.itemsRead,
      itemsWritten: this.itemsWritten,
      rcu: this.rcu,
      wcu: this.wcu,
      scans: this.scans,
    };
  }
  avgItem(): number {
    if (this.sizes.size === 0) return 300;
    let t = 0;
    for (const s of this.sizes.values()) t += s;
    return t / this.sizes.size;
  }
}

function countingClient(endpoint: string, c: Counter): DynamoDBClient {
  const client = new DynamoDBClient({
    endpoint,
    region: 'us-east-1',
    credentials: { accessKeyId: 'x', secretAccessKey: 'x' },
    maxAttempts: 3,
  });
  client.middlewareStack.add(
    (next, context) => async (a) => {
      const op = context.commandName ?? '?';
      const input = a.input as { Key?: Record<string, Attr>; Item?: Record<string, Attr> };
      c.ops.set(op, (c.ops.get(op) ?? 0) + 1);
      const write = (key: string | undefined) => {
        const size = (key && c.sizes.get(key)) || c.avgItem();
        c.itemsWritten += 1;
        c.wcu += Math.ceil(size / 1024);
      };
      const key = input.Key?.leaseKey?.S ?? input.Item?.leaseKey?.S;
      try {
        const out = await next(a);
        const o = out.output as { Items?: Record<string, Attr>[]; Item?: Record<string, Attr> };
        if (op === 'ScanCommand') {
          c.scans += 1;
          let bytes = 0;
          for (const item of o.Items ?? []) {
            const s = itemSize(item);
            bytes += s;
            c.sizes.set(item.leaseKey?.S ?? '', s);
          }
          c.itemsRead += o.Items?.length ?? 0;
          c.rcu += Math.max(1, Math.ceil(bytes / 4096));
        } else if (op === 'GetItemCommand') {
          c.itemsRead += 1;
          c.rcu += Math.max(1, Math.ceil((o.Item ? itemSize(o.Item) : 1) / 4096));
        } else if (/Put|Update|Delete/.test(op) && op !== 'DescribeTableCommand') write(key);
        return out;
      } catch (err) {
        if (/Put|Update|Delete/.test(op)) write(key); // a failed conditional write costs its units too
        throw err;
      }
    },
    { step: 'initialize', name: 'leaseCounting' },
  );
  return client;
}

// --- the fake stream ---------------------------------------------------------------------------------

const MAX_HASH = (1n << 128n) - 1n;
interface SimShard {
  id: string;
  parents: string[];
  start: bigint;
  end: bigint;
  createdAt: number;
  /** Records in the shard when it was closed (undefined: open). */
  closedAt?: number;
  finalCount?: number;
  /** When some reader got its SHARD_END (the last records and no next iterator). */
  endReadAt?: number;
  lastReadAt?: number;
  firstIteratorAt?: number;
}

class FakeStream {
  shards = new Map<string, SimShard>();
  private next = 0;
  listShardsCalls = 0;
  childBeforeParent = 0;
  constructor(
    readonly name: string,
    count: number,
  ) {
    const now = Date.now();
    for (let i = 0; i < count; i++) {
      const start = (MAX_HASH * BigInt(i)) / BigInt(count) + (i === 0 ? 0n : 1n);
      const end = (MAX_HASH * BigInt(i + 1)) / BigInt(count);
      this.add([], start, end, now);
    }
  }
  private add(parents: string[], start: bigint, end: bigint, now: number): SimShard {
    const id = `shardId-${String(this.next++).padStart(12, '0')}`;
    const s: SimShard = { id, parents, start, end, createdAt: now };
    this.shards.set(id, s);
    return s;
  }
  open(): SimShard[] {
    return [...this.shards.values()]
      .filter((s) => s.closedAt === undefined)
      .sort((a, b) => (a.start < b.start ? -1 : 1));
  }
  private close(s: SimShard, now: number): void {
    s.finalCount = this.available(s, now);
    s.closedAt = now;
  }
  /** Splits `n` open shards in two (the widest first). */
  split(n: number): void {
    const now = Date.now();
    const open = this.open().sort((a, b) => (b.end - b.start > a.end - a.start ? 1 : -1));
    for (const s of open.slice(0, n)) {
      this.close(s, now);
      const mid = s.start + (s.end - s.start) / 2n;
      this.add([s.id], s.start, mid, now);
      this.add([s.id], mid + 1n, s.end, now);
    }
  }
  /** Merges `n` pairs of adjacent open shards. */
  merge(n: number): void {
    const now = Date.now();
    const open = this.open();
    for (let i = 0; i + 1 < open.length && n > 0; i += 2, n--) {
      const a = open[i]!;
      const b = open[i + 1]!;
      this.close(a, now);
      this.close(b, now);
      this.add([a.id, b.id], a.start, b.end, now);
    }
  }
  /** Scales to `target` open shards by rounds of splits or merges (as UpdateShardCount does). */
  scaleTo(target: number): void {
    while (this.open().length < target) this.split(Math.min(this.open().length, target - this.open().length));
    while (this.open().length > target)
      this.merge(Math.min(Math.floor(this.open().length / 2), this.open().length - target));
  }
  available(s: SimShard, now: number): number {
    if (s.finalCount !== undefined) return s.finalCount;
    return Math.floor(((now - s.createdAt) / 1000) * RATE);
  }
  parentsRead(s: SimShard): number | undefined {
    let at = s.createdAt;
    for (const p of s.parents) {
      const parent = this.shards.get(p);
      if (!parent) continue;
      if (parent.endReadAt === undefined) return undefined;
      at = Math.max(at, parent.endReadAt);
    }
    return at;
  }
  seq(i: number): string {
    return String(10n ** 20n + BigInt(i));
  }
  /** A Kinesis client of one worker (calls never answer once `killed()`). */
  client(killed: () => boolean): KinesisClient {
    const never = new Promise<never>(() => {});
    const send = async (cmd: { constructor: { name: string }; input: Record<string, unknown> }) => {
      if (killed()) return never;
      const now = Date.now();
      const input = cmd.input;
      switch (cmd.constructor.name) {
        case 'ListShardsCommand': {
          this.listShardsCalls += 1;
          return {
            Shards: [...this.shards.values()].map((s) => ({
              ShardId: s.id,
              ...(s.parents[0] ? { ParentShardId: s.parents[0] } : {}),
              ...(s.parents[1] ? { AdjacentParentShardId: s.parents[1] } : {}),
              HashKeyRange: { StartingHashKey: String(s.start), EndingHashKey: String(s.end) },
              SequenceNumberRange: {
                StartingSequenceNumber: this.seq(0),
                ...(s.finalCount !== undefined ? { EndingSequenceNumber: this.seq(s.finalCount) } : {}),
              },
            })),
          };
        }
        case 'GetShardIteratorCommand': {
          const s = this.shards.get(input.ShardId as string);
          if (!s) throw Object.assign(new Error('no shard'), { name: 'ResourceNotFoundException' });
          if (s.firstIteratorAt === undefined) {
            s.firstIteratorAt = now;
            if (s.parents.length > 0 && this.parentsRead(s) === undefined) this.childBeforeParent += 1;
          }
          const type = input.ShardIteratorType as string;
          const at = input.StartingSequenceNumber
            ? Number(BigInt(input.StartingSequenceNumber as string) - 10n ** 20n)
            : 0;
          const pos =
            type === 'AFTER_SEQUENCE_NUMBER'
              ? at + 1
              : type === 'AT_SEQUENCE_NUMBER'
                ? at
                : type === 'LATEST'
                  ? this.available(s, now)
                  : 0;
          return { ShardIterator: `${s.id}|${pos}` };
        }
        case 'GetRecordsCommand': {
          const [id, p] = (input.ShardIterator as string).split('|');
          const s = this.shards.get(id!)!;
          const pos = Number(p);
          const avail = this.available(s, now);
          const upto = Math.min(avail, pos + ((input.Limit as number) ?? 10_000));
          s.lastReadAt = now;
          const Records = [];
          for (let i = pos; i < upto; i++)
            Records.push({
              SequenceNumber: this.seq(i),
              PartitionKey: `k${i}`,
              Data: Buffer.from(`{"n":${i}}`),
              ApproximateArrivalTimestamp: new Date(now),
            });
          if (s.finalCount !== undefined && upto >= s.finalCount) {
            if (s.endReadAt === undefined) s.endReadAt = now;
            const children = [...this.shards.values()].filter((c) => c.parents.includes(s.id));
            return {
              Records,
              MillisBehindLatest: 0,
              ChildShards: children.map((c) => ({
                ShardId: c.id,
                ParentShards: c.parents,
                HashKeyRange: { StartingHashKey: String(c.start), EndingHashKey: String(c.end) },
              })),
            };
          }
          return { Records, NextShardIterator: `${s.id}|${upto}`, MillisBehindLatest: 0 };
        }
        default:
          throw new Error(`fake Kinesis: ${cmd.constructor.name} not simulated`);
      }
    };
    return { send, destroy() {} } as unknown as KinesisClient;
  }
}

// --- the fleet ---------------------------------------------------------------------------------------

interface Member {
  id: string;
  coordinator: ShardCoordinator;
  metrics: ReturnType<typeof createRegistry>;
  killed: boolean;
}

const silent = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

class Fleet {
  members = new Map<string, Member>();
  private n = 0;
  constructor(
    private readonly stream: FakeStream,
    private readonly dynamodb: DynamoDBClient,
    private readonly table: string,
    private readonly checkpoints: Record<string, unknown>,
  ) {}
  async join(): Promise<Member> {
    const id = `w${String(this.n++).padStart(3, '0')}`;
    const metrics = createRegistry(false);
    const member: Member = {
      id,
      coordinator: undefined as unknown as ShardCoordinator,
      metrics,
      killed: false,
    };
    const real = new LeaseTable(this.dynamodb, this.table);
    const never = new Promise<never>(() => {});
    const leases = new Proxy(real, {
      get(t, p) {
        const v = (t as unknown as Record<string | symbol, unknown>)[p];
        if (typeof v !== 'function') return v;
        return (...a: unknown[]) => (member.killed ? never : (v as (...x: unknown[]) => unknown).apply(t, a));
      },
    });
    member.coordinator = new ShardCoordinator(
      [
        pollingConsumerConfigSchema.parse({
          type: 'polling',
          stream: this.stream.name,
          idleIntervalMs: 1_000,
          busyIntervalMs: 100,
        }),
      ],
      checkpointConfigSchema.parse({ table: this.table, ...this.checkpoints }),
      {
        kinesis: this.stream.client(() => member.killed),
        leases,
        logger: silent,
        metrics,
        workerId: id,
        appName: 'fleet-sim',
        chain: {
          deliver: async (records) => {
            for (const r of records) r.ack.done();
          },
          openShard: async () => {},
          flushShard: async () => {},
          closeShard: async () => {},
          relievePressure: () => {},
        },
      },
    );
    this.members.set(id, member);
    await member.coordinator.start();
    return member;
  }
  live(): Member[] {
    return [...this.members.values()].filter((m) => !m.killed);
  }
  kill(m: Member): void {
    m.killed = true;
    void m.coordinator.stopReading().catch(() => undefined);
  }
  async leave(m: Member): Promise<void> {
    await m.coordinator.stopReading();
    await m.coordinator.checkpointAndRelease();
    this.members.delete(m.id);
  }
  /** key -> workers reading it now (live workers only). */
  holders(): Map<string, string[]> {
    const h = new Map<string, string[]>();
    for (const m of this.live())
      for (const k of m.coordinator.heldKeys()) h.set(k, [...(h.get(k) ?? []), m.id]);
    return h;
  }
  readable(): string[] {
    return [...this.stream.shards.values()]
      .filter(
        (s) =>
          s.endReadAt === undefined && (s.parents.length === 0 || this.stream.parentsRead(s) !== undefined),
      )
      .map((s) => s.id);
  }
  balanced(): boolean {
    const live = this.live();
    const want = this.readable();
    const h = this.holders();
    if (want.some((k) => (h.get(k)?.length ?? 0) !== 1)) return false;
    const lo = Math.floor(want.length / live.length);
    const hi = Math.ceil(want.length / live.length);
    return live.every((m) => {
      const n = m.coordinator.heldCount;
      return n >= lo && n <= hi;
    });
  }
  async steals(): Promise<number> {
    let n = 0;
    for (const m of this.members.values())
      n += (await m.metrics.getSingleMetric('ksw_lease_steals_total')?.get())?.values[0]?.value ?? 0;
    return n;
  }
  async stopAll(): Promise<void> {
    for (const m of this.live()) await m.coordinator.stopReading().catch(() => undefined);
    for (const m of this.live()) await m.coordinator.checkpointAndRelease().catch(() => undefined);
  }
}

async function until(cond: () => boolean, timeoutMs: number): Promise<number | undefined> {
  const start = Date.now();
  while (Date.now() - start < timeoutMs) {
    if (cond()) return Date.now() - start;
    await sleep(50);
  }
  return undefined;
}

/** Samples double ownership and unread gaps every 100 ms while running. */
function sampler(fleet: Fleet, stream: FakeStream) {
  const s = { doubleOwned: 0, samples: 0, maxUnreadMs: 0, stop: false };
  void (async () => {
    while (!s.stop) {
      s.samples += 1;
      for (const owners of fleet.holders().values()) if (owners.length > 1) s.doubleOwned += 1;
      const now = Date.now();
      for (const sh of stream.shards.values()) {
        if (sh.endReadAt !== undefined) continue;
        const since = sh.parents.length === 0 ? sh.createdAt : stream.parentsRead(sh);
        if (since === undefined) continue;
        const gap = now - Math.max(since, sh.lastReadAt ?? 0);
        if (gap > s.maxUnreadMs) s.maxUnreadMs = gap;
      }
      await sleep(100);
    }
  })();
  return s;
}

const fmt = (n: number | undefined, d = 1) => (n === undefined ? 'n/a' : n.toFixed(d));

function checkpointsFor(mode: string): Record<string, unknown> {
  const base = {
    failoverMs: FAILOVER,
    intervalMs: 1_000,
    shardSyncIntervalMs: Math.max(500, FAILOVER * 2),
    createTable: true,
  };
  // fixed: every worker scans every takeIntervalMs (the default).
  // adaptive: the other workers scan every 2 x failoverMs while the fleet is stable (2 watchers).
  return mode === 'fixed' ? base : { ...base, stableTakeIntervalMs: FAILOVER * 2 };
}

async function runSize(endpoint: string, shards: number, workers: number, mode: string) {
  const counter = new Counter();
  const dynamodb = countingClient(endpoint, counter);
  const stream = new FakeStream(`sim-${shards}-${workers}`, shards);
  const table = `sim-${shards}-${workers}-${mode}-${Date.now()}`;
  const fleet = new Fleet(stream, dynamodb, table, checkpointsFor(mode));
  const t0 = Date.now();
  for (let i = 0; i < workers; i++) await fleet.join();
  const balanceStart = await until(() => fleet.balanced(), 300_000);
  const startMs = balanceStart === undefined ? undefined : Date.now() - t0;
  // Settle, then steady state.
  await sleep(Math.min(10_000, FAILOVER * 2));
  const samp = sampler(fleet, stream);
  const c0 = counter.snapshot();
  const l0 = stream.listShardsCalls;
  const s0 = await fleet.steals();
  const m0 = Date.now();
  global.gc?.();
  await sleep(STEADY_S * 1000);
  const secs = (Date.now() - m0) / 1000;
  const c1 = counter.snapshot();
  const steadyListShards = (stream.listShardsCalls - l0) / secs;
  const stealsPerMin = ((await fleet.steals()) - s0) / (secs / 60);
  const mem = process.memoryUsage();
  // Kill one worker: time until its shards are read again, and to full balance.
  const victim = fleet.live()[0]!;
  const victimKeys = victim.coordinator.heldKeys();
  const killAt = Date.now();
  fleet.kill(victim);
  const readAgain = await until(
    () =>
      victimKeys.every(
        (k) =>
          (stream.shards.get(k)?.lastReadAt ?? 0) > killAt || stream.shards.get(k)?.endReadAt !== undefined,
      ),
    FAILOVER * 10,
  );
  const killBalance = await until(() => fleet.balanced(), 120_000);
  const killBalanceMs = killBalance === undefined ? undefined : Date.now() - killAt;
  // Join one worker: time to full balance.
  const joinAt = Date.now();
  await fleet.join();
  const joinBalance = await until(() => fleet.balanced(), 180_000);
  const joinBalanceMs = joinBalance === undefined ? undefined : Date.now() - joinAt;
  samp.stop = true;
  const r = {
    shards,
    workers,
    mode,
    failoverMs: FAILOVER,
    startBalanceMs: startMs,
    readsItemsPerS: (c1.itemsRead - c0.itemsRead) / secs,
    rcuPerS: (c1.rcu - c0.rcu) / secs,
    writesItemsPerS: (c1.itemsWritten - c0.itemsWritten) / secs,
    wcuPerS: (c1.wcu - c0.wcu) / secs,
    scansPerS: (c1.scans - c0.scans) / secs,
    avgItemBytes: counter.avgItem(),
    listShardsPerS: steadyListShards,
    stealsPerMin,
    deadReadAgainMs: readAgain,
    killBalanceMs,
    joinBalanceMs,
    doubleOwnedSamples: samp.doubleOwned,
    samples: samp.samples,
    heapMBPerWorker: mem.heapUsed / 1e6 / workers,
    rssMB: mem.rss / 1e6,
  };
  await fleet.stopAll();
  dynamodb.destroy();
  return r;
}

/** KCL 2.x defaults, computed the same way: every worker scans the table every ~20 s (consistent). */
function kclReads(shards: number, workers: number, itemBytes: number) {
  const scansPerS = workers / 20;
  return { itemsPerS: scansPerS * shards, rcuPerS: scansPerS * Math.ceil((shards * itemBytes) / 4096) };
}

async function reshardStorm(endpoint: string, mode: string) {
  const counter = new Counter();
  const dynamodb = countingClient(endpoint, counter);
  const stream = new FakeStream('sim-reshard', 4);
  const table = `sim-reshard-${mode}-${Date.now()}`;
  const fleet = new Fleet(stream, dynamodb, table, checkpointsFor(mode));
  for (let i = 0; i < RESHARD_WORKERS; i++) await fleet.join();
  await until(() => fleet.balanced(), 120_000);
  const samp = sampler(fleet, stream);
  const l0 = stream.listShardsCalls;
  const t0 = Date.now();
  const steps: Array<[number, number]> = [];
  for (const target of [120, 500, 120, 4]) {
    stream.scaleTo(target);
    const took = await until(() => fleet.balanced(), 240_000);
    steps.push([target, took ?? -1]);
    await sleep(FAILOVER);
  }
  const secs = (Date.now() - t0) / 1000;
  samp.stop = true;
  const r = {
    workers: RESHARD_WORKERS,
    mode,
    steps,
    childBeforeParent: stream.childBeforeParent,
    maxUnreadMs: samp.maxUnreadMs,
    listShardsPerS: (stream.listShardsCalls - l0) / secs,
    doubleOwnedSamples: samp.doubleOwned,
    shardsTotal: stream.shards.size,
  };
  await fleet.stopAll();
  dynamodb.destroy();
  return r;
}

async function main() {
  const dynalite = await startDynalite();
  console.log(
    `fleet simulator: failoverMs ${FAILOVER}, steady window ${STEADY_S} s, mode ${MODE}, ${RATE} records/s per shard`,
  );
  console.log(`prices (on-demand, us-east-1): $${PRICE_READ}/M read units, $${PRICE_WRITE}/M write units`);
  try {
    const modes = MODE === 'both' ? ['fixed', 'adaptive'] : [MODE];
    for (const [shards, workers] of SIZES) {
      for (const mode of modes) {
        const r = await runSize(dynalite.endpoint, shards, workers, mode);
        const kcl = kclReads(shards, workers, r.avgItemBytes);
        // Rates at the default failoverMs (10 s): every lease interval scales with failoverMs.
        const at10 = FAILOVER / 10_000;
        const cost = ((r.rcuPerS * PRICE_READ + r.wcuPerS * PRICE_WRITE) * 3600) / 1e6;
        const cost10 = cost * at10;
        console.log(JSON.stringify({ ...r, kclReadsItemsPerS: kcl.itemsPerS, kclRcuPerS: kcl.rcuPerS }));
        console.log(
          `${shards} shards x ${workers} workers [${mode}]: reads ${fmt(r.readsItemsPerS, 0)} items/s ${fmt(r.rcuPerS)} RCU/s (${fmt(r.scansPerS, 2)} scans/s); writes ${fmt(r.writesItemsPerS, 0)} items/s ${fmt(r.wcuPerS)} WCU/s; ` +
            `$${fmt(cost, 3)}/h at failover ${FAILOVER} ms ($${fmt(cost10, 3)}/h at 10 s); reads vs KCL 2.x at 10 s: ${fmt((r.rcuPerS * at10) / kcl.rcuPerS, 2)}x RCU; ` +
            `ListShards ${fmt(r.listShardsPerS, 2)}/s (limit 100); balance: start ${fmt(r.startBalanceMs, 0)} ms, after kill ${fmt(r.killBalanceMs, 0)} ms, after join ${fmt(r.joinBalanceMs, 0)} ms; ` +
            `killed worker's shards read again after ${fmt(r.deadReadAgainMs, 0)} ms; steals ${fmt(r.stealsPerMin, 1)}/min; double-owned ${r.doubleOwnedSamples}/${r.samples} samples; heap ${fmt(r.heapMBPerWorker, 2)} MB/worker`,
        );
      }
    }
    if (RESHARD) {
      for (const mode of modes) {
        const r = await reshardStorm(dynalite.endpoint, mode);
        console.log(JSON.stringify(r));
      }
    }
  } finally {
    await dynalite.stop();
  }
}

await main();
process.exit(0);
