/**
 * Shared pieces of the benchmarks: a null S3 client, a counting DLQ, the machine description (with the load
 * average at the time of the run, since the machines are shared), timing helpers and the result table.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import type { DeadLetterQueue } from '../src/core/component.js';
import type { SourceRecord } from '../src/core/records.js';
import type { ShardWatermark } from '../src/core/watermark.js';

export const ROOT = path.resolve(import.meta.dirname, '..');
export const RESULTS = path.join(ROOT, 'bench/results');

/** Consumes bodies and answers listings empty: the benches measure the worker, not S3. */
export class NullS3 {
  objects = 0;
  bytes = 0;
  send = (async (command: { constructor: { name: string }; input: { Body?: unknown } }) => {
    if (command.constructor.name === 'ListObjectsV2Command') return { Contents: [], IsTruncated: false };
    const body = command.input.Body;
    if (body && typeof (body as AsyncIterable<Uint8Array>)[Symbol.asyncIterator] === 'function') {
      for await (const chunk of body as AsyncIterable<Uint8Array>) this.bytes += chunk.byteLength;
    } else if (body instanceof Uint8Array) {
      this.bytes += body.byteLength;
    } else if (typeof body === 'string') {
      this.bytes += Buffer.byteLength(body);
    }
    this.objects += 1;
    return { ETag: '"x"', UploadId: 'u' };
  }) as unknown as S3Client['send'];
}

export class CountingDeadLetters implements DeadLetterQueue {
  letters = 0;
  reasons: string[] = [];
  put(letter: { reason: string }, ack: { done(): void }): void {
    this.letters += 1;
    if (this.reasons.length < 5) this.reasons.push(letter.reason);
    ack.done();
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

/** The 9 flat span columns of the chain and sink benches (the `generic` schema). */
export const FLAT_COLUMNS = [
  { name: 'traceId', type: 'string' },
  { name: 'spanId', type: 'string' },
  { name: 'parentSpanId', type: 'string' },
  { name: 'name', type: 'string' },
  { name: 'serviceName', type: 'string' },
  { name: 'startTimeUnixNano', type: 'int64' },
  { name: 'endTimeUnixNano', type: 'int64' },
  { name: 'durationNano', type: 'int64' },
  { name: 'startTime', type: 'timestamp_us', path: 'startTimeUnixNano', timeUnit: 'ns' },
];

/** The article's tail-sampling split: every error trace, 80 % of slow ones (>= 1 s), 20 % of the rest. */
export const ARTICLE_TAIL_POLICIES = [
  { name: 'errors', type: 'status_code' },
  { name: 'slow', type: 'latency', thresholdMs: 1000, probability: 0.8 },
  { name: 'rest', type: 'probabilistic', probability: 0.2 },
];

export const SEQUENCE_BASE = 49_600_000_000_000_000_000_000_000_000_000_000_000_000_000n;

/** Source records as a consumer makes them, each with its root ack from `watermark`. */
export function makeRecords(
  data: ReadonlyArray<{ partitionKey: string; data: Uint8Array }>,
  watermark: ShardWatermark,
  shardId = 'shardId-000000000000',
): SourceRecord[] {
  const arrivalTime = new Date();
  return data.map((d, i) => {
    const sequenceNumber = (SEQUENCE_BASE + BigInt(i)).toString();
    return {
      origin: {
        stream: 'bench',
        shardId,
        sequenceNumber,
        subSequenceNumber: 0,
        partitionKey: d.partitionKey,
        arrivalTime,
      },
      data: d.data,
      ack: watermark.register({ sequenceNumber, subSequenceNumber: 0 }, d.data.byteLength),
    };
  });
}

export function seconds(startedNs: bigint): number {
  return Number(process.hrtime.bigint() - startedNs) / 1e9;
}

/** CPU seconds (user + system) of the whole process, all threads. */
export function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/**
 * CPU seconds of the main thread alone (the event loop), from /proc/self/task/<pid>/stat (utime + stime, in
 * clock ticks of 1/100 s on Linux); undefined where /proc is missing. Node 20 has no per-thread CPU API.
 */
export function mainThreadCpuSeconds(): number | undefined {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return undefined;
  }
}

export function loadAverage(): string {
  try {
    return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  } catch {
    return os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' ');
  }
}

export function machine() {
  return {
    model: os.cpus()[0]?.model ?? 'unknown',
    cpus: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    platform: `${os.platform()} ${os.arch()}`,
    loadAverage: loadAverage(),
  };
}

export const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export const fmt = (n: number, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
    : String(n);

export interface TableRow {
  figure: string;
  /** The value as printed (unit included). */
  value: string;
  /** Ratio to the floor of the same run, when the figure is a rate. */
  ratio?: number;
  /** Anything else worth printing after the ratio. */
  note?: string;
}

export function printTable(title: string, rows: readonly TableRow[]): void {
  const w0 = Math.max(44, ...rows.map((r) => r.figure.length + 2));
  const w1 = Math.max(14, ...rows.map((r) => r.value.length + 2));
  process.stdout.write(`\n${title}\n\n`);
  process.stdout.write(
    `${'figure'.padEnd(w0)}${'value'.padStart(w1)}${'ratio to floor'.padStart(16)}  note\n`,
  );
  for (const r of rows) {
    const ratio = r.ratio === undefined ? '' : r.ratio.toFixed(2);
    const line = `${r.figure.padEnd(w0)}${r.value.padStart(w1)}${ratio.padStart(16)}  ${r.note ?? ''}`;
    process.stdout.write(`${line.trimEnd()}\n`);
  }
}

export function writeResults(name: string, data: unknown): string {
  mkdirSync(RESULTS, { recursive: true });
  const file = path.join(RESULTS, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(data, (_k, v) => (typeof v === 'bigint' ? String(v) : v), 2)}\n`);
  return path.relative(ROOT, file);
}
