/**
 * Chunked records (the article's "split one large record into multiple records" strategy).
 *
 * Wire format of one chunk record (binary, so payloads are not inflated by base64):
 *
 *   "KSC1" | uint16 big-endian header length | header (UTF-8 JSON) | payload bytes
 *   header: {"id":"<message id>","i":<chunk index from 0>}            on every chunk but the last
 *           {"id":..,"i":..,"last":true,"n":<chunks>,"size":<message bytes>,"sha256":"<hex>"}  on the last
 *
 * All chunks of a message are put with the same partition key, so they land in one shard in order.
 * The assembler holds chunks (and their acks: the watermark cannot pass a held chunk, so a crash replays
 * the whole message) until the last one arrives, then emits one record whose ack completes every
 * chunk's ack. A chunk out of order, a missing chunk, a size or checksum mismatch, a message that does
 * not complete within `timeoutMs`, or one evicted to keep buffered chunks under `maxBufferedBytes`
 * goes to the DLQ chunk by chunk with the reason — replayable, never silently dropped.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Counter, Gauge, Registry } from 'prom-client';
import { z } from 'zod';
import { Ack } from '../core/ack.js';
import type { DeadLetterQueue } from '../core/component.js';
import type { SourceRecord } from '../core/records.js';
import { sha256Hex } from '../core/s3-pointer.js';
import { type Tenure, tenureKey } from '../core/tenure.js';
import { counter, gauge } from '../metrics/registry.js';

export const chunkConfigSchema = z
  .object({
    enabled: z.boolean().default(true).describe('Reassemble chunked records (those starting with "KSC1").'),
    timeoutMs: z
      .number()
      .int()
      .min(100)
      .default(60_000)
      .describe(
        'A message whose last chunk has not arrived this long after its first goes to the DLQ. It also bounds how long held chunks delay the checkpoint.',
      ),
    maxBufferedBytes: z
      .number()
      .int()
      .min(1024)
      .default(128 * 1024 * 1024)
      .describe(
        'Bytes of incomplete messages held at most (all shards); past it the oldest incomplete messages go to the DLQ.',
      ),
    maxMessageBytes: z
      .number()
      .int()
      .min(1024)
      .default(64 * 1024 * 1024)
      .describe('Largest reassembled message; a message growing past it goes to the DLQ.'),
  })
  .strict()
  .describe('Chunked records: large messages split by the producer into several records.');

export type ChunkConfig = z.infer<typeof chunkConfigSchema>;

const MAGIC = Buffer.from('KSC1', 'latin1');

export interface ChunkHeader {
  readonly id: string;
  readonly i: number;
  readonly last?: true;
  readonly n?: number;
  readonly size?: number;
  readonly sha256?: string;
}

export function isChunk(data: Uint8Array): boolean {
  return (
    data.byteLength >= 6 &&
    data[0] === MAGIC[0] &&
    data[1] === MAGIC[1] &&
    data[2] === MAGIC[2] &&
    data[3] === MAGIC[3]
  );
}

/** Splits a message into chunk records of at most `chunkBytes` payload each (producer side). */
export function encodeChunks(message: Uint8Array, chunkBytes: number, id: string = randomUUID()): Buffer[] {
  if (chunkBytes < 1) throw new RangeError('chunkBytes must be positive');
  const n = Math.max(1, Math.ceil(message.byteLength / chunkBytes));
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const header: ChunkHeader =
      i === n - 1
        ? { id, i, last: true, n, size: message.byteLength, sha256: sha256Hex(message) }
        : { id, i };
    const headerBytes = Buffer.from(JSON.stringify(header), 'utf8');
    const len = Buffer.alloc(2);
    len.writeUInt16BE(headerBytes.byteLength);
    out.push(
      Buffer.concat([
        MAGIC,
        len,
        headerBytes,
        message.subarray(i * chunkBytes, Math.min(message.byteLength, (i + 1) * chunkBytes)),
      ]),
    );
  }
  return out;
}

export class ChunkFormatError extends Error {}

/** Parses a chunk record; throws ChunkFormatError when the header is unreadable. */
export function decodeChunk(data: Uint8Array): { header: ChunkHeader; payload: Uint8Array } {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const len = buf.readUInt16BE(4);
  if (6 + len > buf.byteLength) throw new ChunkFormatError('chunk header runs past the end of the record');
  let header: ChunkHeader;
  try {
    header = JSON.parse(buf.toString('utf8', 6, 6 + len)) as ChunkHeader;
  } catch {
    throw new ChunkFormatError('chunk header is not JSON');
  }
  if (typeof header.id !== 'string' || header.id === '' || !Number.isSafeInteger(header.i) || header.i < 0) {
    throw new ChunkFormatError('chunk header needs a string id and a non-negative integer i');
  }
  if (header.last && (!Number.isSafeInteger(header.n) || header.n !== header.i + 1)) {
    throw new ChunkFormatError('the last chunk must carry n = i + 1');
  }
  return { header, payload: buf.subarray(6 + len) };
}

interface PartialMessage {
  readonly key: string;
  /** The lease tenure its chunks were read in: a message never spans two tenures. */
  readonly tenure: Tenure;
  readonly chunks: SourceRecord[];
  readonly payloads: Uint8Array[];
  bytes: number;
  readonly startedAt: number;
}

export class ChunkAssembler {
  private readonly partial = new Map<string, PartialMessage>();
  private bufferedBytes = 0;
  private readonly timer: NodeJS.Timeout;
  private readonly failures: Counter<'reason'>;
  private readonly assembled: Counter;
  private readonly pendingGauge: Gauge;

  constructor(
    private readonly config: ChunkConfig,
    private readonly dlq: DeadLetterQueue,
    metrics: Registry,
    private readonly logger?: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.failures = counter(metrics, {
      name: 'ksw_chunk_failures_total',
      help: 'Chunked messages sent to the DLQ, by reason',
      labelNames: ['reason'],
    });
    this.assembled = counter(metrics, {
      name: 'ksw_chunk_messages_total',
      help: 'Chunked messages reassembled',
    });
    this.pendingGauge = gauge(metrics, {
      name: 'ksw_chunk_pending_messages',
      help: 'Incomplete chunked messages held (their chunks hold the checkpoint back)',
    });
    this.timer = setInterval(() => this.expire(), Math.min(1_000, config.timeoutMs / 2));
    this.timer.unref();
  }

  get pendingMessages(): number {
    return this.partial.size;
  }

  get heldBytes(): number {
    return this.bufferedBytes;
  }

  /**
   * Takes one chunk record. Returns the reassembled record when this chunk completes its message;
   * otherwise undefined (the chunk is held, or it went to the DLQ).
   */
  add(record: SourceRecord): SourceRecord | undefined {
    let decoded: { header: ChunkHeader; payload: Uint8Array };
    try {
      decoded = decodeChunk(record.data);
    } catch (err) {
      this.reject([record], `unreadable chunk: ${(err as Error).message}`, 'chunk_invalid');
      return undefined;
    }
    const { header, payload } = decoded;
    // Chunks of one message share the partition key and so the shard; the key scopes ids per shard and
    // per tenure: a shard read again by a later tenure starts its messages afresh from chunk 0.
    const tenure = record.ack.tenure;
    const key = `${tenureKey(record.origin, tenure)}\u0000${header.id}`;
    let message = this.partial.get(key);
    if (!message) {
      if (header.i !== 0) {
        this.reject(
          [record],
          `chunk ${header.i} of message ${header.id} arrived without chunk 0 (missing or out of order)`,
          'chunk_missing',
        );
        return undefined;
      }
      message = { key, tenure, chunks: [], payloads: [], bytes: 0, startedAt: this.now() };
      this.partial.set(key, message);
    } else if (header.i === message.chunks.length - 1 && sameBytes(payload, message.payloads[header.i]!)) {
      // A producer retry put the same chunk twice: the copy carries nothing new.
      record.ack.done();
      return undefined;
    } else if (header.i !== message.chunks.length) {
      this.drop(message);
      this.reject(
        [...message.chunks, record],
        `chunk ${header.i} of message ${header.id} arrived after chunk ${message.chunks.length - 1} (missing or out of order)`,
        'chunk_missing',
      );
      return undefined;
    }
    message.chunks.push(record);
    message.payloads.push(payload);
    message.bytes += payload.byteLength;
    this.bufferedBytes += payload.byteLength;
    if (message.bytes > this.config.maxMessageBytes) {
      this.drop(message);
      this.reject(
        message.chunks,
        `chunked message ${header.id} exceeds decode.chunks.maxMessageBytes`,
        'chunk_too_large',
      );
      return undefined;
    }
    if (header.last) {
      this.drop(message);
      return this.complete(message, header);
    }
    this.enforceMemory();
    this.pendingGauge.set(this.partial.size);
    return undefined;
  }

  private complete(message: PartialMessage, last: ChunkHeader): SourceRecord | undefined {
    const data = Buffer.concat(message.payloads);
    if (last.size !== undefined && last.size !== data.byteLength) {
      this.reject(
        message.chunks,
        `chunked message ${last.id}: ${data.byteLength} bytes received, the last chunk says ${last.size}`,
        'chunk_size_mismatch',
      );
      return undefined;
    }
    if (last.sha256 !== undefined && last.sha256 !== sha256Hex(data)) {
      this.reject(
        message.chunks,
        `chunked message ${last.id}: SHA-256 of the reassembled bytes does not match the last chunk's`,
        'chunk_checksum_mismatch',
      );
      return undefined;
    }
    this.assembled.inc();
    const acks = message.chunks.map((c) => c.ack);
    const lastChunk = message.chunks[message.chunks.length - 1]!;
    // The message takes the position of its last chunk: where it became complete in the shard.
    return {
      origin: lastChunk.origin,
      data,
      ack: new Ack(() => {
        for (const a of acks) a.done();
      }, message.tenure),
    };
  }

  /**
   * The tenure ended: its incomplete messages are forgotten without a letter (their chunks are read
   * again by the next tenure, which reassembles them from chunk 0).
   */
  closeShard(tenure: Tenure): void {
    for (const message of [...this.partial.values()]) if (message.tenure === tenure) this.drop(message);
  }

  private drop(message: PartialMessage): void {
    if (this.partial.delete(message.key)) this.bufferedBytes -= message.bytes;
    this.pendingGauge.set(this.partial.size);
  }

  private reject(chunks: readonly SourceRecord[], reason: string, kind: string): void {
    this.failures.inc({ reason: kind });
    this.logger?.warn({ reason, chunks: chunks.length }, 'chunked message sent to the DLQ');
    for (const c of chunks) {
      this.dlq.put({ origin: c.origin, data: c.data, reason, component: 'decode.chunks' }, c.ack);
    }
  }

  /** Evicts the oldest incomplete messages while over the memory budget. */
  private enforceMemory(): void {
    for (const message of this.partial.values()) {
      if (this.bufferedBytes <= this.config.maxBufferedBytes) break;
      this.drop(message);
      this.reject(
        message.chunks,
        `incomplete chunked message evicted: chunks held exceed decode.chunks.maxBufferedBytes (${this.config.maxBufferedBytes})`,
        'chunk_evicted',
      );
    }
  }

  /** Sends messages older than the timeout to the DLQ (Map order is insertion order: oldest first). */
  expire(): void {
    const cutoff = this.now() - this.config.timeoutMs;
    for (const message of this.partial.values()) {
      if (message.startedAt > cutoff) break;
      this.drop(message);
      this.reject(
        message.chunks,
        `incomplete chunked message: ${message.chunks.length} chunks received, the last one did not arrive within ${this.config.timeoutMs} ms`,
        'chunk_timeout',
      );
    }
  }

  /** At shutdown: held chunks are not acked, so they are read again by the next owner. Nothing to do but stop. */
  close(): void {
    clearInterval(this.timer);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b);
}
