/**
 * File consumer: reads records from a local file or stdin instead of a Kinesis stream, so a pipeline runs
 * (and is tested, `ksw test`) with no Kinesis and no lease table. Every line is one record (NDJSON, or
 * any text: the decoder decides what a record is); its position is its line number (1-based, as the
 * sequence number), its partition key the value of `partitionKeyField` when given. Acks and the DLQ work
 * as for a shard: the run ends when the input is consumed and every record is acked (written, dropped on
 * purpose or dead-lettered), so `ksw run` exits 0 then.
 */
import { createReadStream } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import type { ShardChain } from '../core/component.js';
import type { SourceRecord } from '../core/records.js';
import { ShardTenure, TenureTokens } from '../core/tenure.js';
import { ShardWatermark } from '../core/watermark.js';
import { counter } from '../metrics/registry.js';
import { type FieldPath, getPath, parseFieldPath } from '../processors/conditions.js';

/** A field path as routes write it (`a.b`, `attributes["k.with.dots"]`), checked when the config loads. */
export const fieldPathSchema = z.string().superRefine((text, ctx) => {
  try {
    parseFieldPath(text);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
  }
});

export const fileConsumerConfigSchema = z
  .object({
    type: z
      .literal('file')
      .describe(
        'File consumer: one record per line of a local file or stdin, for running and testing a pipeline without Kinesis.',
      ),
    path: z.string().min(1).describe('The file to read; `-` reads stdin.'),
    stream: z
      .string()
      .min(1)
      .default('file')
      .describe(
        'Stream name given to the records (the `_stream` column, DLQ keys, metrics labels). Two file consumers need two names.',
      ),
    shardId: z
      .string()
      .min(1)
      .default('shardId-000000000000')
      .describe('Shard id given to the records; positions (sequence numbers) are line numbers.'),
    partitionKeyField: fieldPathSchema
      .optional()
      .describe(
        'Field of each JSON line used as its partition key (e.g. `traceId`, `resource.attributes["service.name"]`); default, and for lines without it: the line number.',
      ),
    batchRecords: z
      .number()
      .int()
      .min(1)
      .max(10_000)
      .default(500)
      .describe('Lines handed to the chain at a time.'),
    maxInFlightBytes: z
      .number()
      .int()
      .min(1024)
      .default(64 * 1024 * 1024)
      .describe('Reading pauses while this many bytes are read but not yet acked (backpressure).'),
  })
  .strict();

export type FileConsumerConfig = z.infer<typeof fileConsumerConfigSchema>;

export interface FileRunResult {
  readonly stream: string;
  /** Lines read, empty ones included (they are skipped, not records). */
  readonly lines: number;
  readonly records: number;
  /** True when every record was acked. */
  readonly drained: boolean;
  /** Set when the chain failed on the records (the run stopped there). */
  readonly error?: unknown;
}

/** Splits a byte stream into lines (without `\n` or `\r\n`), keeping bytes as they are (no decoding). */
export async function* byteLines(input: Readable): AsyncGenerator<Buffer> {
  let rest: Buffer = Buffer.alloc(0);
  for await (const chunk of input) {
    let buf = rest.length > 0 ? Buffer.concat([rest, chunk as Buffer]) : (chunk as Buffer);
    let nl = buf.indexOf(0x0a);
    while (nl !== -1) {
      const end = nl > 0 && buf[nl - 1] === 0x0d ? nl - 1 : nl;
      yield buf.subarray(0, end);
      buf = buf.subarray(nl + 1);
      nl = buf.indexOf(0x0a);
    }
    rest = Buffer.from(buf);
  }
  if (rest.length > 0) yield rest[rest.length - 1] === 0x0d ? rest.subarray(0, -1) : rest;
}

export interface FileSourceDeps {
  readonly chain: ShardChain;
  readonly logger: Logger;
  readonly metrics: Registry;
  /** Where relative paths are resolved (the config file's directory is not used: like `ksw produce --file`). */
  readonly cwd?: string;
  /** Instead of `config.path` (tests, `ksw test`). */
  readonly input?: Readable;
  /** Give up waiting for the last acks after this long (`ksw test`); default: wait until stopped. */
  readonly drainTimeoutMs?: number;
}

/** One file consumer's run: open the "shard", feed the chain, flush, wait for the acks, close. */
export class FileSource {
  private readonly controller = new AbortController();
  private readonly tenure: ShardTenure;
  private readonly watermark: ShardWatermark;
  private readonly keyPath: FieldPath | undefined;

  constructor(
    readonly config: FileConsumerConfig,
    private readonly deps: FileSourceDeps,
  ) {
    this.tenure = new ShardTenure(config.stream, config.shardId, new TenureTokens().next());
    this.watermark = new ShardWatermark(config.maxInFlightBytes, undefined, Date.now, this.tenure);
    this.keyPath = config.partitionKeyField ? parseFieldPath(config.partitionKeyField) : undefined;
  }

  /** Stops reading (SIGTERM): what was read is still flushed and acked by `run`. */
  stop(): void {
    this.controller.abort();
  }

  get inFlightRecords(): number {
    return this.watermark.inFlightRecords;
  }

  get oldestUnackedAgeMs(): number {
    return this.watermark.oldestUnackedAgeMs;
  }

  private partitionKey(data: Buffer, line: number): string {
    if (!this.keyPath) return String(line);
    try {
      const key = getPath(JSON.parse(data.toString('utf8')), this.keyPath);
      if ((typeof key === 'string' && key !== '') || typeof key === 'number') return String(key);
    } catch {
      // not JSON: the decoder dead-letters it; the line number keys it meanwhile
    }
    return String(line);
  }

  async run(): Promise<FileRunResult> {
    const { config, deps } = this;
    const { chain } = deps;
    const read = counter(deps.metrics, {
      name: 'ksw_file_records_read_total',
      help: 'Records read by file consumers',
      labelNames: ['stream'],
    });
    let failure: unknown;
    this.tenure.whenFailed((_stage, err) => {
      failure ??= err;
      this.tenure.end('failed');
      this.watermark.close();
    });
    const input =
      deps.input ??
      (config.path === '-' ? process.stdin : createReadStream(path.resolve(deps.cwd ?? '.', config.path)));
    let lines = 0;
    let records = 0;
    let batch: SourceRecord[] = [];
    const deliver = async () => {
      const records = batch;
      batch = [];
      while (!this.watermark.hasCapacity && this.tenure.active) {
        chain.relievePressure(this.tenure);
        await Promise.race([this.watermark.waitForCapacity(), new Promise((r) => setTimeout(r, 500))]);
      }
      if (this.tenure.active) await chain.deliver(records);
    };
    try {
      await chain.openShard(this.tenure, undefined);
      for await (const data of byteLines(input)) {
        lines += 1;
        if (data.length === 0) continue;
        const origin = {
          stream: config.stream,
          shardId: config.shardId,
          sequenceNumber: String(lines),
          subSequenceNumber: 0,
          partitionKey: this.partitionKey(data, lines),
          arrivalTime: new Date(),
        };
        batch.push({
          origin,
          data,
          ack: this.watermark.register(
            { sequenceNumber: origin.sequenceNumber, subSequenceNumber: 0 },
            data.length,
          ),
        });
        records += 1;
        read.inc({ stream: config.stream });
        if (batch.length >= config.batchRecords) await deliver();
        if (this.controller.signal.aborted || !this.tenure.active) break;
      }
      if (batch.length > 0) await deliver();
      if (this.tenure.active) await chain.flushShard(this.tenure);
      // Sinks that roll on age are asked to flush while the last records wait (as under backpressure).
      const drainedBy = Date.now() + (deps.drainTimeoutMs ?? Number.POSITIVE_INFINITY);
      while (this.tenure.active && this.watermark.inFlightRecords > 0 && !this.controller.signal.aborted) {
        if (Date.now() >= drainedBy) break;
        chain.relievePressure(this.tenure);
        await Promise.race([this.watermark.drained(), new Promise((r) => setTimeout(r, 200))]);
      }
    } catch (err) {
      failure ??= err;
    } finally {
      if (input !== process.stdin) input.destroy();
    }
    const drained = failure === undefined && this.watermark.inFlightRecords === 0;
    this.tenure.end(failure === undefined ? 'released' : 'failed');
    this.watermark.close();
    await chain.closeShard(this.tenure);
    if (failure !== undefined)
      deps.logger.error(
        { stream: config.stream, line: this.watermark.watermark?.sequenceNumber, err: failure },
        'file consumer failed',
      );
    else deps.logger.info({ stream: config.stream, lines, records, drained }, 'input consumed');
    return {
      stream: config.stream,
      lines,
      records,
      drained,
      ...(failure !== undefined ? { error: failure } : {}),
    };
  }
}
