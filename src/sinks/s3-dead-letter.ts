/**
 * Dead-letter queue on S3: letters are batched per shard and written as one JSON-lines object per batch
 * at `<prefix><stream>/<shardId>/<first>_<last>_<letters hash>.jsonl`. A letter's ack completes only once
 * its object is written, so a record whose letter was not stored yet holds the checkpoint back and is read
 * again after a crash. Each line carries the original bytes (base64) and the record's origin, which is all
 * a redrive needs to replay it into a sink.
 *
 * The key ends with a hash of the batch's letters (origin, index, component, reason, bytes; not the time
 * they failed): a batch written again after a replay overwrites itself with the same letters, and two
 * different batches never share a key, whenever and in whichever process they are written. (A key made of
 * the range alone, kept apart by remembering the keys written, overwrote acked letters once the memory was
 * full or after a restart.)
 */
import { createHash } from 'node:crypto';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { Ack } from '../core/ack.js';
import { backoffDelay, settlesWithin, sleep } from '../core/backoff.js';
import type {
  ComponentContext,
  ComponentDefinition,
  DeadLetter,
  DeadLetterQueue,
  Tenure,
} from '../core/component.js';
import { compareSequence } from '../core/records.js';
import { sendOnlyWhile, tenureKey, withTenure } from '../core/tenure.js';
import type { ShardPosition } from '../core/watermark.js';
import { counter, gauge } from '../metrics/registry.js';

const MiB = 1024 * 1024;

export const s3DeadLetterConfigSchema = z
  .object({
    type: z.literal('s3'),
    bucket: z.string().min(3).describe('Bucket for dead letters.'),
    prefix: z
      .string()
      .default('dlq/')
      .describe(
        'Key prefix; batches are written at `<prefix><stream>/<shardId>/<first>_<last>_<hash>.jsonl`, first/last being ' +
          'the lowest and highest record position in the batch (`sequence` or `sequence.sub`) and hash 16 hex digits of ' +
          'the SHA-256 of its letters (a batch written again after a replay overwrites itself; different batches never share a key).',
      ),
    maxBatchRecords: z.number().int().min(1).default(500).describe('Letters per object at most.'),
    maxBatchBytes: z
      .number()
      .int()
      .min(1)
      .default(5 * MiB)
      .describe('Bytes of JSON lines per object at most (a single larger letter gets an object of its own).'),
    maxBatchAgeMs: z
      .number()
      .int()
      .min(1)
      .default(5_000)
      .describe('Write a shard batch this long after its first letter, however small it is.'),
    closeTimeoutMs: z
      .number()
      .int()
      .min(0)
      .default(30_000)
      .describe(
        'On close, how long to keep retrying failed writes. Letters given up stay unacked, so their records are read ' +
          'again after restart.',
      ),
  })
  .describe('Stores what the chain could not process as JSON lines in S3, batched per shard.');

export type S3DeadLetterConfig = z.infer<typeof s3DeadLetterConfigSchema>;

/** One line of a dead-letter object. */
export const deadLetterLineSchema = z.object({
  stream: z.string().min(1),
  shardId: z.string().min(1),
  sequenceNumber: z.string().regex(/^\d+$/),
  subSequenceNumber: z.number().int().min(0),
  partitionKey: z.string(),
  arrivalTime: z.iso.datetime(),
  index: z.number().int().min(0).nullable(),
  component: z.string(),
  reason: z.string(),
  failedAt: z.iso.datetime(),
  data: z.base64().describe('The original bytes, base64.'),
});

export type DeadLetterLine = z.infer<typeof deadLetterLineSchema>;

/** The JSON line (without newline) stored for a letter. */
export function formatDeadLetter(letter: DeadLetter, failedAt: Date): string {
  const { origin } = letter;
  const line: DeadLetterLine = {
    stream: origin.stream,
    shardId: origin.shardId,
    sequenceNumber: origin.sequenceNumber,
    subSequenceNumber: origin.subSequenceNumber,
    partitionKey: origin.partitionKey,
    arrivalTime: origin.arrivalTime.toISOString(),
    index: letter.index ?? null,
    component: letter.component,
    reason: letter.reason,
    failedAt: failedAt.toISOString(),
    data: Buffer.from(letter.data.buffer, letter.data.byteOffset, letter.data.byteLength).toString('base64'),
  };
  return JSON.stringify(line);
}

/** Parses and validates one line of a dead-letter object; throws a ZodError or SyntaxError when invalid. */
export function parseDeadLetterLine(line: string): DeadLetterLine {
  return deadLetterLineSchema.parse(JSON.parse(line));
}

/** The letter a line stands for, with its original bytes decoded (for redrive). */
export function deadLetterFromLine(line: DeadLetterLine): DeadLetter {
  return {
    origin: {
      stream: line.stream,
      shardId: line.shardId,
      sequenceNumber: line.sequenceNumber,
      subSequenceNumber: line.subSequenceNumber,
      partitionKey: line.partitionKey,
      arrivalTime: new Date(line.arrivalTime),
    },
    ...(line.index === null ? {} : { index: line.index }),
    data: new Uint8Array(Buffer.from(line.data, 'base64')),
    reason: line.reason,
    component: line.component,
  };
}

function comparePosition(a: ShardPosition, b: ShardPosition): number {
  return compareSequence(a.sequenceNumber, b.sequenceNumber) || a.subSequenceNumber - b.subSequenceNumber;
}

function formatPosition(p: ShardPosition): string {
  return p.subSequenceNumber > 0 ? `${p.sequenceNumber}.${p.subSequenceNumber}` : p.sequenceNumber;
}

/** The object key of a batch: its shard, its record range and the hash of its letters. */
export function deadLetterKey(
  prefix: string,
  stream: string,
  shardId: string,
  first: ShardPosition,
  last: ShardPosition,
  lettersHash: string,
): string {
  return `${prefix}${stream}/${shardId}/${formatPosition(first)}_${formatPosition(last)}_${lettersHash}.jsonl`;
}

/** Folds what identifies a letter (not when it failed) into a batch's hash, length-prefixed. */
function updateLetterHash(hash: ReturnType<typeof createHash>, letter: DeadLetter): void {
  const o = letter.origin;
  const head = JSON.stringify([
    o.stream,
    o.shardId,
    o.sequenceNumber,
    o.subSequenceNumber,
    letter.index ?? null,
    letter.component,
    letter.reason,
  ]);
  hash.update(`${head.length}:${head}${letter.data.byteLength}:`);
  hash.update(letter.data);
}

interface Batch {
  readonly id: string;
  readonly stream: string;
  readonly shardId: string;
  /** Letters of one lease tenure per batch: an ended tenure's letters are dropped, not written late. */
  readonly tenure: Tenure;
  lines: string[];
  acks: Ack[];
  bytes: number;
  /** SHA-256 of the letters' identities so far (see the key). */
  hash: ReturnType<typeof createHash>;
  min: ShardPosition | undefined;
  max: ShardPosition | undefined;
  timer: NodeJS.Timeout | undefined;
}

export class S3DeadLetterQueue implements DeadLetterQueue {
  private readonly logger: Logger;
  private readonly batches = new Map<string, Batch>();
  private readonly inflight = new Set<Promise<void>>();
  /** Writes in flight per tenure, so closeShard can wait until none of them can land any more. */
  private readonly inflightByTenure = new Map<Tenure, Set<Promise<void>>>();
  private readonly abort = new AbortController();
  private readonly records;
  private readonly writeErrors;
  private readonly buffered;
  private pendingLetters = 0;
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(
    readonly name: string,
    private readonly config: S3DeadLetterConfig,
    private readonly ctx: Pick<ComponentContext, 'logger' | 'metrics' | 'aws'>,
    private readonly backoff: { baseMs: number; maxMs: number } = { baseMs: 200, maxMs: 30_000 },
  ) {
    this.logger = ctx.logger.child({ component: 'dlq' });
    this.records = counter(ctx.metrics, {
      name: 'ksw_dlq_records_total',
      help: 'Letters put into the dead-letter queue, by the component that gave up.',
      labelNames: ['component'],
    });
    this.writeErrors = counter(ctx.metrics, {
      name: 'ksw_dlq_write_errors_total',
      help: 'Failed attempts to write a dead-letter object (each is retried).',
    });
    this.buffered = gauge(ctx.metrics, {
      name: 'ksw_dlq_buffered_records',
      help: 'Letters accepted but not yet durable in S3.',
    });
    this.buffered.set(0);
  }

  put(letter: DeadLetter, ack: Ack): void {
    if (this.closed) {
      // The ack stays incomplete, so the record is read again after restart: delayed, not lost.
      this.logger.error(
        { component: letter.component, shardId: letter.origin.shardId },
        'put after close; not stored',
      );
      return;
    }
    // The tenure ended: the next one reads the record again and sends its letter again.
    if (!ack.tenure.active) return;
    this.records.inc({ component: letter.component });
    const line = formatDeadLetter(letter, new Date());
    const lineBytes = Buffer.byteLength(line) + 1;
    const batch = this.batchFor(letter.origin.stream, letter.origin.shardId, ack.tenure);
    if (batch.lines.length > 0 && batch.bytes + lineBytes > this.config.maxBatchBytes) this.roll(batch);
    if (batch.lines.length === 0) {
      batch.timer = setTimeout(() => this.roll(batch), this.config.maxBatchAgeMs);
      batch.timer.unref();
    }
    const position = {
      sequenceNumber: letter.origin.sequenceNumber,
      subSequenceNumber: letter.origin.subSequenceNumber,
    };
    if (!batch.min || comparePosition(position, batch.min) < 0) batch.min = position;
    if (!batch.max || comparePosition(position, batch.max) > 0) batch.max = position;
    batch.lines.push(line);
    batch.acks.push(ack);
    batch.bytes += lineBytes;
    updateLetterHash(batch.hash, letter);
    this.pendingLetters += 1;
    this.buffered.set(this.pendingLetters);
    if (batch.lines.length >= this.config.maxBatchRecords || batch.bytes >= this.config.maxBatchBytes)
      this.roll(batch);
  }

  async flush(): Promise<void> {
    for (const batch of this.batches.values()) this.roll(batch);
    await Promise.all([...this.inflight]);
  }

  /** Writes the tenure's letters now (graceful end of its lease). */
  async flushShard(tenure: Tenure): Promise<void> {
    for (const batch of this.batches.values()) if (batch.tenure === tenure) this.roll(batch);
    await Promise.all([...(this.inflightByTenure.get(tenure) ?? [])]);
  }

  /** The tenure ended: its buffered letters are dropped and its writes aborted (signal). */
  async closeShard(tenure: Tenure): Promise<void> {
    for (const [id, batch] of [...this.batches]) {
      if (batch.tenure !== tenure) continue;
      clearTimeout(batch.timer);
      this.pendingLetters -= batch.lines.length;
      this.batches.delete(id);
    }
    this.buffered.set(this.pendingLetters);
    await Promise.allSettled([...(this.inflightByTenure.get(tenure) ?? [])]);
  }

  close(): Promise<void> {
    this.closing ??= this.closeNow();
    return this.closing;
  }

  private async closeNow(): Promise<void> {
    this.closed = true;
    const flushed = this.flush();
    if (!(await settlesWithin(flushed, this.config.closeTimeoutMs))) {
      this.logger.warn(
        { pendingLetters: this.pendingLetters },
        'close: giving up on dead-letter writes still failing; their records stay unacked and will be read again',
      );
    }
    this.abort.abort();
    await flushed;
    for (const batch of this.batches.values()) clearTimeout(batch.timer);
  }

  private batchFor(stream: string, shardId: string, tenure: Tenure): Batch {
    const id = tenureKey({ stream, shardId }, tenure);
    let batch = this.batches.get(id);
    if (!batch) {
      batch = {
        id,
        stream,
        shardId,
        tenure,
        lines: [],
        acks: [],
        bytes: 0,
        hash: createHash('sha256'),
        min: undefined,
        max: undefined,
        timer: undefined,
      };
      this.batches.set(id, batch);
    }
    return batch;
  }

  private roll(batch: Batch): void {
    clearTimeout(batch.timer);
    batch.timer = undefined;
    if (batch.lines.length === 0 || !batch.min || !batch.max) return;
    const key = deadLetterKey(
      this.config.prefix,
      batch.stream,
      batch.shardId,
      batch.min,
      batch.max,
      batch.hash.digest('hex').slice(0, 16),
    );
    const body = `${batch.lines.join('\n')}\n`;
    const acks = batch.acks;
    batch.lines = [];
    batch.acks = [];
    batch.bytes = 0;
    batch.hash = createHash('sha256');
    batch.min = undefined;
    batch.max = undefined;
    const tenure = batch.tenure;
    let mine = this.inflightByTenure.get(tenure);
    if (!mine) {
      mine = new Set();
      this.inflightByTenure.set(tenure, mine);
    }
    const written = this.write(key, body, acks, tenure).finally(() => {
      this.inflight.delete(written);
      mine.delete(written);
      if (mine.size === 0) this.inflightByTenure.delete(tenure);
    });
    this.inflight.add(written);
    mine.add(written);
  }

  private async write(key: string, body: string, acks: Ack[], tenure: Tenure): Promise<void> {
    const signal = withTenure(this.abort.signal, tenure);
    for (let failures = 0; !signal.aborted; failures++) {
      if (!tenure.writable) break; // its letters are sent again by the next tenure
      try {
        await this.ctx.aws.s3.send(
          sendOnlyWhile(
            new PutObjectCommand({
              Bucket: this.config.bucket,
              Key: key,
              Body: body,
              ContentType: 'application/x-ndjson',
              Metadata: { letters: String(acks.length) },
            }),
            () => tenure.writable,
            'PutObject (dead letters)',
          ),
          { abortSignal: signal },
        );
      } catch (err) {
        if (signal.aborted) break;
        this.writeErrors.inc();
        const retryInMs = backoffDelay(failures, this.backoff.baseMs, this.backoff.maxMs);
        const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
        this.logger.warn(
          {
            key,
            error: { name: e?.name, message: e?.message, statusCode: e?.$metadata?.httpStatusCode },
            attempt: failures + 1,
            retryInMs,
          },
          'dead-letter write failed; retrying',
        );
        await sleep(retryInMs, signal);
        continue;
      }
      this.pendingLetters -= acks.length;
      this.buffered.set(this.pendingLetters);
      for (const ack of acks) {
        try {
          ack.done();
        } catch (err) {
          this.logger.error({ key, error: (err as Error).message }, 'ack failed');
        }
      }
      return;
    }
    // Given up: the sink closed (the letters stay unacked and are read again after restart) or the tenure
    // ended (the next tenure sends them again).
    if (!tenure.writable) {
      this.pendingLetters -= acks.length;
      this.buffered.set(this.pendingLetters);
    }
  }
}

export const s3DeadLetterDefinition: ComponentDefinition<S3DeadLetterConfig, DeadLetterQueue> = {
  description:
    'Dead-letter queue on S3: JSON lines with the original bytes (base64), origin and reason, batched per shard; ' +
    'letters are acked once their object is written.',
  schema: s3DeadLetterConfigSchema,
  create: (name, config, ctx) => new S3DeadLetterQueue(name, config, ctx),
};
