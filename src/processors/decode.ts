/**
 * Turns a record's bytes into events. In order:
 *   1. chunked records are reassembled (chunks.ts),
 *   2. gzip and zlib are inflated, raw deflate when configured (gzip.ts),
 *   3. S3 pointer records are replaced by the object they point to (s3-pointer-resolver.ts), which
 *      is inflated in turn when it is gzip,
 *   4. the bytes are parsed: one JSON document, or one per line of NDJSON, or (auto-detected) one OTLP
 *      protobuf ExportTraceServiceRequest, read into its OTLP/JSON shape (otlp-proto.ts) so
 *      `otel_spans` flattens it like OTLP/JSON.
 * What fails at any step goes to the dead-letter queue with the reason, and its ack is completed there:
 * the worker keeps running and the record is kept, never dropped. The order of records in a batch is
 * kept through every step (pointer fetches run concurrently but are reassembled in order), so events
 * of one partition key leave in the order their records arrived.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { parse as parseLossless } from 'lossless-json';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import type { DeadLetterQueue, Tenure } from '../core/component.js';
import type { PipelineEvent, SourceRecord } from '../core/records.js';
import { mayBePointer } from '../core/s3-pointer.js';
import { counter } from '../metrics/registry.js';
import { ChunkAssembler, chunkConfigSchema, isChunk } from './chunks.js';
import {
  type Compression,
  GzipError,
  gzipConfigSchema,
  inflateLimited,
  isGzip,
  isZlib,
  mayBeRawDeflate,
} from './gzip.js';
import { decodeOtlpTraces, looksLikeOtlpProto, OtlpProtoError } from './otlp-proto.js';
import { PointerError, S3PointerResolver, s3PointerConfigSchema } from './s3-pointer-resolver.js';

export const decodeConfigSchema = z
  .object({
    format: z
      .enum(['auto', 'json', 'ndjson'])
      .default('auto')
      .describe(
        'json: each record is one JSON object. ndjson: each non-empty line is one JSON object. auto: ndjson when the record holds more than one line, else json.',
      ),
    maxRecordBytes: z
      .number()
      .int()
      .min(1)
      .default(10 * 1024 * 1024)
      .describe(
        'Records larger than this go to the DLQ undecoded (Kinesis caps records at 1 MiB; S3 pointers and chunks resolve larger ones).',
      ),
    otlpProtobuf: z
      .boolean()
      .default(true)
      .describe(
        'Read records that are OTLP protobuf ExportTraceServiceRequests (the Collector awskinesisexporter default, otlp_proto): first byte 0x0a and not JSON text. A record starting with 0x0a that fails as JSON is tried as protobuf too. Malformed ones go to the DLQ (reason invalid_protobuf).',
      ),
    gzip: gzipConfigSchema.default(gzipConfigSchema.parse({})),
    chunks: chunkConfigSchema.default(chunkConfigSchema.parse({})),
    s3Pointers: s3PointerConfigSchema.default(s3PointerConfigSchema.parse({})),
  })
  .strict()
  .describe('How record bytes become JSON documents.');

export type DecodeConfig = z.infer<typeof decodeConfigSchema>;

const utf8 = new TextDecoder('utf-8', { fatal: true });
/**
 * What a parsed value holds that JSON.parse could not keep exactly: an integer beyond 2^53 ('unsafe', kept
 * exact by re-parsing) or a number beyond the double range such as 1e400 ('overflow', which JSON.parse
 * turns into Infinity and JSON.stringify then into null: the record is dead-lettered instead). Checking
 * the parsed value is cheaper than scanning the text for long digit runs (OTLP/JSON quotes its int64s, so
 * most long digit runs are strings), and it is exact. Iterative, so 10,000-deep documents cannot overflow
 * the stack.
 */
function inexactNumbers(root: unknown): 'overflow' | 'unsafe' | undefined {
  const stack: unknown[] = [root];
  let found: 'unsafe' | undefined;
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) return 'overflow';
      if (Number.isInteger(v) && !Number.isSafeInteger(v)) found = 'unsafe';
    } else if (v !== null && typeof v === 'object') {
      if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++) stack.push(v[i]);
      } else {
        for (const k in v) stack.push((v as Record<string, unknown>)[k]);
      }
    }
  }
  return found;
}

/** A number JSON (an IEEE double) cannot hold: the record goes to the DLQ, never written changed. */
export class NumberRangeError extends Error {}

/** Large integers become bigint instead of silently losing precision (nanosecond timestamps, ids). */
function parseNumber(text: string): number | bigint {
  const n = Number(text);
  if (Number.isSafeInteger(n) || !/^-?\d+$/.test(text)) return n;
  return BigInt(text);
}

/**
 * Parses one JSON document; exact for integers beyond 2^53. Throws with a readable message, and
 * NumberRangeError for a number beyond the double range (1e400, -1e400).
 *
 * Duplicate keys, one rule: the last one wins (as JSON.parse, and most JSON parsers; RFC 8259 leaves it
 * open), whichever parser path the document takes.
 */
export function parseJsonDocument(text: string): Record<string, unknown> {
  let value: unknown = JSON.parse(text);
  const inexact = inexactNumbers(value);
  if (inexact === 'overflow') {
    throw new NumberRangeError(
      'a number is beyond the range of a double (about ±1.8e308); it would be stored as null or "Infinity"',
    );
  }
  // Rare: re-parse exactly, keeping large integers as bigint.
  if (inexact === 'unsafe') {
    value = parseLossless(text, null, {
      parseNumber,
      onDuplicateKey: ({ newValue }) => newValue,
    });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    const kind = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    throw new Error(`expected a JSON object, got ${kind}`);
  }
  return value as Record<string, unknown>;
}

export interface DecoderDeps {
  /** Needed when `s3Pointers.enabled`. */
  readonly s3?: Pick<S3Client, 'send'>;
  readonly logger?: Logger;
  /** Aborted at shutdown: pointer fetches and their retry waits stop at once (the records are read again). */
  readonly signal?: AbortSignal;
}

export class RecordDecoder {
  private readonly decoded;
  private readonly failed;
  private readonly chunks: ChunkAssembler | undefined;
  private readonly pointers: S3PointerResolver | undefined;

  constructor(
    private readonly config: DecodeConfig,
    private readonly dlq: DeadLetterQueue,
    metrics: Registry,
    deps: DecoderDeps = {},
  ) {
    this.chunks = config.chunks.enabled
      ? new ChunkAssembler(config.chunks, dlq, metrics, deps.logger)
      : undefined;
    if (config.s3Pointers.enabled) {
      if (!deps.s3) throw new Error('decode.s3Pointers.enabled needs an S3 client');
      this.pointers = new S3PointerResolver(
        config.s3Pointers,
        deps.s3,
        metrics,
        deps.logger,
        Math.random,
        deps.signal,
      );
    }
    this.decoded = counter(metrics, { name: 'ksw_decode_events_total', help: 'Events decoded from records' });
    this.failed = counter(metrics, {
      name: 'ksw_decode_failures_total',
      help: 'Records (or NDJSON lines) that failed to decode and went to the DLQ',
      labelNames: ['reason'],
    });
  }

  /** Steps 1-4 for a batch; the events come out in record order. */
  async decode(records: readonly SourceRecord[]): Promise<PipelineEvent[]> {
    if (!records.some((r) => this.needsPreparation(r.data))) return this.parse(records);
    const ready = await Promise.all(records.map((r) => this.prepare(r)));
    return this.parse(ready);
  }

  /** Step 4 alone, for records whose bytes are already plain JSON. */
  parse(records: ReadonlyArray<SourceRecord | undefined>): PipelineEvent[] {
    const events: PipelineEvent[] = [];
    for (const record of records) if (record) this.decodeRecord(record, events);
    this.decoded.inc(events.length);
    return events;
  }

  private needsPreparation(data: Uint8Array): boolean {
    return (
      (this.chunks !== undefined && isChunk(data)) ||
      this.compressionOf(data) !== undefined ||
      (this.pointers !== undefined && mayBePointer(data))
    );
  }

  /** The tenure ended: incomplete chunked messages of it are dropped (read again by the next tenure). */
  closeShard(tenure: Tenure): void {
    this.chunks?.closeShard(tenure);
  }

  /** Stops the chunk assembler's timeout clock. */
  close(): void {
    this.chunks?.close();
  }

  /**
   * Steps 1-3 for one record: the record with plain bytes, or undefined when it is held (an incomplete
   * chunked message) or went to the DLQ. Synchronous unless a pointer is fetched or gzip inflated, so
   * ordinary records cost nothing here.
   */
  private async prepare(input: SourceRecord): Promise<SourceRecord | undefined> {
    let record = input;
    if (this.chunks && isChunk(record.data)) {
      const whole = this.chunks.add(record);
      if (!whole) return undefined;
      record = whole;
    }
    const compression = this.compressionOf(record.data);
    if (compression !== undefined) {
      const inflated = await this.inflate(record, compression);
      if (!inflated) return undefined;
      record = inflated;
    }
    if (this.pointers) {
      let pointer: ReturnType<S3PointerResolver['pointerOf']>;
      try {
        pointer = this.pointers.pointerOf(record.data);
      } catch (err) {
        const e = err as PointerError;
        this.pointers.countFailure(e.kind);
        this.deadLetter(record, e.message, e.kind);
        return undefined;
      }
      if (pointer) {
        let data: Uint8Array;
        try {
          data = await this.pointers.fetch(pointer);
        } catch (err) {
          if (!(err instanceof PointerError)) throw err;
          this.deadLetter(record, err.message, err.kind);
          return undefined;
        }
        record = { origin: record.origin, data, ack: record.ack };
        const fetched = this.compressionOf(record.data);
        if (fetched !== undefined) {
          const inflated = await this.inflate(record, fetched, input);
          if (!inflated) return undefined;
          record = inflated;
        }
      }
    }
    return record;
  }

  /** How a record is compressed, as far as its first bytes tell and the config allows. */
  private compressionOf(data: Uint8Array): Compression | undefined {
    const c = this.config.gzip;
    if (c.enabled && isGzip(data)) return 'gzip';
    if (c.zlib && isZlib(data)) return 'zlib';
    if (c.rawDeflate === 'try' && mayBeRawDeflate(data)) return 'deflate';
    return undefined;
  }

  /**
   * `original` is what the DLQ keeps when inflating fails (the pointer record, not the fetched object).
   * A raw deflate trial that fails passes the record on unchanged (it was not deflate); one that
   * inflates past the limit is a bomb like any other.
   */
  private async inflate(
    record: SourceRecord,
    kind: Compression,
    original: SourceRecord = record,
  ): Promise<SourceRecord | undefined> {
    try {
      const data = await inflateLimited(record.data, kind, this.config.gzip.maxDecompressedBytes);
      return { origin: record.origin, data, ack: record.ack };
    } catch (err) {
      if (!(err instanceof GzipError)) throw err;
      if (err.kind === 'deflate_invalid') return record;
      this.deadLetter(original, err.message, err.kind, undefined, original.data);
      return undefined;
    }
  }

  private deadLetter(
    record: SourceRecord,
    reason: string,
    kind: string,
    index?: number,
    data?: Uint8Array,
  ): void {
    this.failed.inc({ reason: kind });
    this.dlq.put(
      {
        origin: record.origin,
        data: data ?? record.data,
        reason,
        component: 'decode',
        ...(index === undefined ? {} : { index }),
      },
      record.ack,
    );
  }

  private decodeRecord(record: SourceRecord, out: PipelineEvent[]): void {
    if (record.data.byteLength > this.config.maxRecordBytes) {
      this.deadLetter(
        record,
        `record of ${record.data.byteLength} bytes exceeds decode.maxRecordBytes`,
        'too_large',
      );
      return;
    }
    const proto = this.config.otlpProtobuf;
    if (proto && looksLikeOtlpProto(record.data)) {
      this.decodeProto(record, out);
      return;
    }
    let text: string;
    try {
      text = utf8.decode(record.data);
    } catch {
      if (proto && record.data[0] === 0x0a && this.tryProto(record, out)) return;
      this.deadLetter(record, 'record is not valid UTF-8', 'invalid_utf8');
      return;
    }
    const single = this.singleDocument(text);
    if (single !== undefined) {
      // The usual record: one JSON document, no arrays of lines and parts to build.
      let value: Record<string, unknown>;
      try {
        value = parseJsonDocument(single);
      } catch (err) {
        // "\n{" also starts a protobuf request whose first ResourceSpans is 123 bytes long.
        if (proto && record.data[0] === 0x0a && this.tryProto(record, out)) return;
        if (err instanceof NumberRangeError) this.deadLetter(record, err.message, 'number_out_of_range');
        else this.deadLetter(record, `invalid JSON: ${(err as Error).message}`, 'invalid_json');
        return;
      }
      out.push({
        origin: record.origin,
        sinks: undefined,
        index: 0,
        value,
        raw: record.data,
        ack: record.ack,
      });
      return;
    }
    const lines = this.splitDocuments(text);
    if (lines.length === 0) {
      this.deadLetter(record, 'record is empty (no JSON document)', 'empty');
      return;
    }
    // Parse every line first so the record's ack can be split once, into exactly the parts needed.
    const values: Array<{
      index: number;
      value?: Record<string, unknown>;
      error?: string;
      range?: boolean;
      line: string;
    }> = [];
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      try {
        values.push({ index: i, value: parseJsonDocument(line), line });
      } catch (err) {
        values.push({
          index: i,
          error: (err as Error).message,
          range: err instanceof NumberRangeError,
          line,
        });
      }
    }
    if (proto && record.data[0] === 0x0a && values.some((v) => v.error !== undefined)) {
      if (this.tryProto(record, out)) return;
    }
    if (values.length === 1 && values[0]!.error) {
      if (values[0]!.range) this.deadLetter(record, values[0]!.error, 'number_out_of_range');
      else this.deadLetter(record, `invalid JSON: ${values[0]!.error}`, 'invalid_json');
      return;
    }
    const parts = record.ack.split(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      const ack = parts[i]!;
      if (v.error !== undefined) {
        this.failed.inc({ reason: v.range ? 'number_out_of_range' : 'invalid_json' });
        this.dlq.put(
          {
            origin: record.origin,
            index: v.index,
            data: Buffer.from(v.line, 'utf8'),
            reason: v.range
              ? `line ${v.index + 1}: ${v.error}`
              : `invalid JSON on line ${v.index + 1}: ${v.error}`,
            component: 'decode',
          },
          ack,
        );
        continue;
      }
      out.push({
        origin: record.origin,
        sinks: undefined,
        index: v.index,
        value: v.value!,
        raw: values.length === 1 ? record.data : Buffer.from(v.line, 'utf8'),
        ack,
      });
    }
  }

  /** One protobuf request: its OTLP/JSON-shaped event, or the DLQ with the reason. */
  private decodeProto(record: SourceRecord, out: PipelineEvent[]): void {
    let value: Record<string, unknown>;
    try {
      value = decodeOtlpTraces(record.data);
    } catch (err) {
      if (!(err instanceof OtlpProtoError)) throw err;
      this.deadLetter(
        record,
        `invalid OTLP protobuf ExportTraceServiceRequest (${err.kind}): ${err.message}`,
        'invalid_protobuf',
      );
      return;
    }
    out.push({ origin: record.origin, sinks: undefined, index: 0, value, raw: record.data, ack: record.ack });
  }

  /** A record that failed as JSON but starts like protobuf: true when it is a protobuf request. */
  private tryProto(record: SourceRecord, out: PipelineEvent[]): boolean {
    let value: Record<string, unknown>;
    try {
      value = decodeOtlpTraces(record.data);
    } catch (err) {
      if (!(err instanceof OtlpProtoError)) throw err;
      return false;
    }
    out.push({ origin: record.origin, sinks: undefined, index: 0, value, raw: record.data, ack: record.ack });
    return true;
  }

  /** The record's one document, when it is plainly one (json format, or auto without a newline). */
  private singleDocument(text: string): string | undefined {
    const format = this.config.format;
    if (format === 'json') return text.trim() === '' ? undefined : text;
    if (format === 'auto') {
      const trimmed = text.trim();
      if (trimmed !== '' && !trimmed.includes('\n')) return trimmed;
    }
    return undefined;
  }

  private splitDocuments(text: string): string[] {
    const format = this.config.format;
    if (format === 'json') return text.trim() === '' ? [] : [text];
    const trimmed = text.trim();
    if (format === 'auto' && !trimmed.includes('\n')) return trimmed === '' ? [] : [trimmed];
    if (format === 'auto') {
      // A pretty-printed single document also spans lines: take it whole when it parses whole.
      try {
        JSON.parse(trimmed);
        return [trimmed];
      } catch {
        // not one document: fall through to NDJSON
      }
    }
    return trimmed
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.length > 0);
  }
}
