/**
 * Turns a record's bytes into events: one JSON document, or one per line of NDJSON.
 * What does not decode goes to the dead-letter queue with the reason, and its ack is completed there:
 * the worker keeps running and the record is kept, never dropped.
 */
import { parse as parseLossless } from 'lossless-json';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import type { DeadLetterQueue } from '../core/component.js';
import type { PipelineEvent, SourceRecord } from '../core/records.js';
import { counter } from '../metrics/registry.js';

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
        'Records larger than this go to the DLQ undecoded (Kinesis caps records at 1 MiB; S3 pointers resolve larger ones).',
      ),
  })
  .strict()
  .describe('How record bytes become JSON documents.');

export type DecodeConfig = z.infer<typeof decodeConfigSchema>;

const utf8 = new TextDecoder('utf-8', { fatal: true });
/**
 * An unquoted integer literal of 16+ digits may not survive JSON.parse (2^53 has 16 digits). Quoted
 * ones (OTLP/JSON writes int64 as strings) are safe, so only a number right after `:` `[` or `,` counts;
 * a false positive inside a string merely takes the slower exact parser.
 */
const LONG_INTEGER = /[:[,]\s*-?\d{16,}/;

/** Large integers become bigint instead of silently losing precision (nanosecond timestamps, ids). */
function parseNumber(text: string): number | bigint {
  const n = Number(text);
  if (Number.isSafeInteger(n) || !/^-?\d+$/.test(text)) return n;
  return BigInt(text);
}

/** Parses one JSON document; exact for integers beyond 2^53. Throws with a readable message. */
export function parseJsonDocument(text: string): Record<string, unknown> {
  const value: unknown = LONG_INTEGER.test(text) ? parseLossless(text, null, parseNumber) : JSON.parse(text);
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    const kind = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    throw new Error(`expected a JSON object, got ${kind}`);
  }
  return value as Record<string, unknown>;
}

export class RecordDecoder {
  private readonly decoded;
  private readonly failed;

  constructor(
    private readonly config: DecodeConfig,
    private readonly dlq: DeadLetterQueue,
    metrics: Registry,
  ) {
    this.decoded = counter(metrics, { name: 'ksw_decode_events_total', help: 'Events decoded from records' });
    this.failed = counter(metrics, {
      name: 'ksw_decode_failures_total',
      help: 'Records (or NDJSON lines) that failed to decode and went to the DLQ',
      labelNames: ['reason'],
    });
  }

  decode(records: readonly SourceRecord[]): PipelineEvent[] {
    const events: PipelineEvent[] = [];
    for (const record of records) this.decodeRecord(record, events);
    this.decoded.inc(events.length);
    return events;
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
    let text: string;
    try {
      text = utf8.decode(record.data);
    } catch {
      this.deadLetter(record, 'record is not valid UTF-8', 'invalid_utf8');
      return;
    }
    const lines = this.splitDocuments(text);
    if (lines.length === 0) {
      this.deadLetter(record, 'record is empty (no JSON document)', 'empty');
      return;
    }
    // Parse every line first so the record's ack can be split once, into exactly the parts needed.
    const values: Array<{ index: number; value?: Record<string, unknown>; error?: string; line: string }> =
      [];
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      try {
        values.push({ index: i, value: parseJsonDocument(line), line });
      } catch (err) {
        values.push({ index: i, error: (err as Error).message, line });
      }
    }
    if (values.length === 1 && values[0]!.error) {
      this.deadLetter(record, `invalid JSON: ${values[0]!.error}`, 'invalid_json');
      return;
    }
    const parts = record.ack.split(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      const ack = parts[i]!;
      if (v.error !== undefined) {
        this.failed.inc({ reason: 'invalid_json' });
        this.dlq.put(
          {
            origin: record.origin,
            index: v.index,
            data: Buffer.from(v.line, 'utf8'),
            reason: `invalid JSON on line ${v.index + 1}: ${v.error}`,
            component: 'decode',
          },
          ack,
        );
        continue;
      }
      out.push({
        origin: record.origin,
        index: v.index,
        value: v.value!,
        raw: values.length === 1 ? record.data : Buffer.from(v.line, 'utf8'),
        ack,
      });
    }
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
