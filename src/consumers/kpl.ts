/**
 * KPL record de-aggregation (the Kinesis Producer Library's aggregation format), written out here rather
 * than taken from a protobuf library: the format is small and fixed, and a reader we control can say
 * exactly what is wrong with a bad aggregate.
 *
 *   record data = magic 0xF3 0x89 0x9A 0xC2 · protobuf AggregatedRecord · MD5(protobuf bytes) (16 bytes)
 *
 *   message AggregatedRecord { repeated string partition_key_table = 1; repeated string explicit_hash_key_table = 2;
 *                              repeated Record records = 3; }
 *   message Record { required uint64 partition_key_index = 1; optional uint64 explicit_hash_key_index = 2;
 *                    required bytes data = 3; repeated Tag tags = 4; }
 *
 * Each user record i of the aggregate gets the aggregate's sequence number and sub-sequence number i, its own
 * partition key and, when the producer gave one, its own explicit hash key.
 */
import { createHash } from 'node:crypto';

export const KPL_MAGIC = Uint8Array.of(0xf3, 0x89, 0x9a, 0xc2);
const MD5_BYTES = 16;

export interface UserRecord {
  readonly subSequenceNumber: number;
  readonly partitionKey: string;
  readonly explicitHashKey: string | undefined;
  readonly data: Uint8Array;
}

/** Why an aggregate could not be read; the record goes to the DLQ with this reason. */
export class KplAggregateError extends Error {
  constructor(
    readonly reason: 'md5-mismatch' | 'malformed' | 'empty',
    detail: string,
  ) {
    super(`KPL aggregated record ${detail}`);
    this.name = 'KplAggregateError';
  }
}

/** True when the data starts with the KPL magic number (it may still be a malformed aggregate). */
export function isAggregated(data: Uint8Array): boolean {
  if (data.byteLength < KPL_MAGIC.byteLength) return false;
  for (let i = 0; i < KPL_MAGIC.byteLength; i++) if (data[i] !== KPL_MAGIC[i]) return false;
  return true;
}

/** A minimal protobuf reader: varints, length-delimited fields, and skipping of every other wire type. */
class ProtoReader {
  pos: number;
  constructor(
    private readonly buf: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  /** Reads a varint of up to 64 bits as a bigint-free number; values above 2^53 are refused. */
  varint(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new KplAggregateError('malformed', 'is truncated inside a varint');
      const byte = this.buf[this.pos++]!;
      result += (byte & 0x7f) * scale;
      if ((byte & 0x80) === 0) {
        if (!Number.isSafeInteger(result))
          throw new KplAggregateError('malformed', 'holds a varint beyond 2^53');
        return result;
      }
      scale *= 128;
    }
    throw new KplAggregateError('malformed', 'holds a varint longer than 10 bytes');
  }

  /** The [start, end) byte range of a length-delimited field. */
  delimited(): [number, number] {
    const length = this.varint();
    const start = this.pos;
    if (length > this.end - start)
      throw new KplAggregateError('malformed', `declares a field of ${length} bytes past its end`);
    this.pos = start + length;
    return [start, start + length];
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        this.advance(8);
        return;
      case 2:
        this.delimited();
        return;
      case 5:
        this.advance(4);
        return;
      default:
        // Groups (3, 4) were never used by the KPL; anything else is not protobuf.
        throw new KplAggregateError('malformed', `uses protobuf wire type ${wireType}`);
    }
  }

  private advance(n: number): void {
    if (n > this.end - this.pos) throw new KplAggregateError('malformed', 'is truncated inside a field');
    this.pos += n;
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function text(buf: Uint8Array, [start, end]: [number, number], what: string): string {
  try {
    return utf8.decode(buf.subarray(start, end));
  } catch {
    throw new KplAggregateError('malformed', `has a ${what} that is not valid UTF-8`);
  }
}

/**
 * Splits a KPL aggregated record into its user records. Throws `KplAggregateError` when the MD5 trailer does
 * not match, the protobuf is malformed, an index points outside its table, or the aggregate is empty.
 * Call only when `isAggregated(data)`.
 */
export function deaggregate(data: Uint8Array): UserRecord[] {
  const bodyStart = KPL_MAGIC.byteLength;
  const bodyEnd = data.byteLength - MD5_BYTES;
  if (bodyEnd < bodyStart) throw new KplAggregateError('malformed', 'is shorter than magic + MD5');
  const body = data.subarray(bodyStart, bodyEnd);
  const digest = createHash('md5').update(body).digest();
  if (!digest.equals(data.subarray(bodyEnd))) {
    throw new KplAggregateError('md5-mismatch', 'has an MD5 trailer that does not match its content');
  }
  const partitionKeys: string[] = [];
  const hashKeys: string[] = [];
  const raw: Array<{ pk: number; ehk: number | undefined; data: [number, number] }> = [];
  const top = new ProtoReader(data, bodyStart, bodyEnd);
  while (!top.done) {
    const tag = top.varint();
    const field = Math.floor(tag / 8);
    const wireType = tag & 7;
    if (field === 1 && wireType === 2) partitionKeys.push(text(data, top.delimited(), 'partition key'));
    else if (field === 2 && wireType === 2) hashKeys.push(text(data, top.delimited(), 'explicit hash key'));
    else if (field === 3 && wireType === 2) {
      const [start, end] = top.delimited();
      const rec = new ProtoReader(data, start, end);
      let pk: number | undefined;
      let ehk: number | undefined;
      let payload: [number, number] | undefined;
      while (!rec.done) {
        const t = rec.varint();
        const f = Math.floor(t / 8);
        const w = t & 7;
        if (f === 1 && w === 0) pk = rec.varint();
        else if (f === 2 && w === 0) ehk = rec.varint();
        else if (f === 3 && w === 2) payload = rec.delimited();
        else rec.skip(w); // tags (4) and unknown fields
      }
      if (pk === undefined || payload === undefined) {
        throw new KplAggregateError(
          'malformed',
          `user record ${raw.length} lacks its ${pk === undefined ? 'partition_key_index' : 'data'}`,
        );
      }
      raw.push({ pk, ehk, data: payload });
    } else top.skip(wireType);
  }
  if (raw.length === 0) throw new KplAggregateError('empty', 'holds no user records');
  return raw.map((r, i) => {
    const partitionKey = partitionKeys[r.pk];
    if (partitionKey === undefined) {
      throw new KplAggregateError(
        'malformed',
        `user record ${i} points at partition key ${r.pk} of a table of ${partitionKeys.length}`,
      );
    }
    let explicitHashKey: string | undefined;
    if (r.ehk !== undefined) {
      explicitHashKey = hashKeys[r.ehk];
      if (explicitHashKey === undefined) {
        throw new KplAggregateError(
          'malformed',
          `user record ${i} points at explicit hash key ${r.ehk} of a table of ${hashKeys.length}`,
        );
      }
    }
    return {
      subSequenceNumber: i,
      partitionKey,
      explicitHashKey,
      data: data.subarray(r.data[0], r.data[1]),
    };
  });
}

// --- Encoder: for tests and tools (ksw produce could aggregate later); the KPL itself is the reference. ---

function pushVarint(out: number[], value: number): void {
  let v = value;
  while (v >= 0x80) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
}

function pushBytes(out: number[], field: number, bytes: Uint8Array): void {
  pushVarint(out, field * 8 + 2);
  pushVarint(out, bytes.byteLength);
  for (const b of bytes) out.push(b);
}

/** Builds a KPL aggregated record (magic + protobuf + MD5) from user records. */
export function aggregate(
  records: ReadonlyArray<{ partitionKey: string; explicitHashKey?: string; data: Uint8Array | string }>,
): Uint8Array {
  const pkIndex = new Map<string, number>();
  const ehkIndex = new Map<string, number>();
  for (const r of records) {
    if (!pkIndex.has(r.partitionKey)) pkIndex.set(r.partitionKey, pkIndex.size);
    if (r.explicitHashKey !== undefined && !ehkIndex.has(r.explicitHashKey))
      ehkIndex.set(r.explicitHashKey, ehkIndex.size);
  }
  const body: number[] = [];
  const enc = new TextEncoder();
  for (const pk of pkIndex.keys()) pushBytes(body, 1, enc.encode(pk));
  for (const ehk of ehkIndex.keys()) pushBytes(body, 2, enc.encode(ehk));
  for (const r of records) {
    const rec: number[] = [];
    pushVarint(rec, 1 * 8);
    pushVarint(rec, pkIndex.get(r.partitionKey)!);
    if (r.explicitHashKey !== undefined) {
      pushVarint(rec, 2 * 8);
      pushVarint(rec, ehkIndex.get(r.explicitHashKey)!);
    }
    pushBytes(rec, 3, typeof r.data === 'string' ? enc.encode(r.data) : r.data);
    pushBytes(body, 3, Uint8Array.from(rec));
  }
  const protobuf = Uint8Array.from(body);
  const md5 = createHash('md5').update(protobuf).digest();
  return Buffer.concat([KPL_MAGIC, protobuf, md5]);
}
