/**
 * Per-file manifests and the replay index built from them.
 *
 * An event's position is (sequence number, sub-sequence number, event index): unique in a shard and the same
 * on every replay for events decoded from records. A manifest lists the exact positions of its file's
 * events (compressed: sequence deltas, index ranges), so after a crash an event is skipped iff a committed
 * file holds that very event. Exact positions rather than position ranges per partition: a range [first,
 * last] claims every event of the partition between its ends, which stops being true when a processor
 * holds events back and releases them later (a tail sampler's decision wait delivers a shard's spans out of
 * order), and a skip that trusts such a claim loses the late event.
 */
import { createHash } from 'node:crypto';
import { compareSequence } from '../../core/records.js';
import type { ShardPosition } from '../../core/watermark.js';

export interface EventPosition {
  readonly sequenceNumber: string;
  readonly subSequenceNumber: number;
  readonly index: number;
}

export function compareEventPosition(a: EventPosition, b: EventPosition): number {
  return (
    compareSequence(a.sequenceNumber, b.sequenceNumber) ||
    a.subSequenceNumber - b.subSequenceNumber ||
    a.index - b.index
  );
}

/** `sequence`, `.sub` for a KPL sub-record, `-index` for the n-th event of a record (both only when > 0). */
export function formatEventPosition(p: EventPosition): string {
  return `${p.sequenceNumber}${p.subSequenceNumber > 0 ? `.${p.subSequenceNumber}` : ''}${p.index > 0 ? `-${p.index}` : ''}`;
}

const KEY_POSITION = /^(\d+)(?:\.(\d+))?(?:-(\d+))?$/;

export function parseEventPosition(text: string): EventPosition | undefined {
  const m = KEY_POSITION.exec(text);
  if (!m) return undefined;
  return { sequenceNumber: m[1]!, subSequenceNumber: Number(m[2] ?? 0), index: Number(m[3] ?? 0) };
}

/**
 * Encodes sorted positions as `;`-separated records: `<sequence delta>[.<sub>][:<index ranges>]`, where the
 * first delta is the absolute sequence number, `:` is left out when the record's only index is 0, and index
 * ranges are `a-b` or `a`, comma-separated. Positions must be sorted and distinct.
 */
export function encodePositions(positions: readonly EventPosition[]): string {
  const out: string[] = [];
  let previous = 0n;
  let i = 0;
  while (i < positions.length) {
    const { sequenceNumber, subSequenceNumber } = positions[i]!;
    const indexes: number[] = [];
    while (
      i < positions.length &&
      positions[i]!.sequenceNumber === sequenceNumber &&
      positions[i]!.subSequenceNumber === subSequenceNumber
    ) {
      indexes.push(positions[i]!.index);
      i++;
    }
    const sequence = BigInt(sequenceNumber);
    let entry = (sequence - previous).toString();
    previous = sequence;
    if (subSequenceNumber > 0) entry += `.${subSequenceNumber}`;
    if (!(indexes.length === 1 && indexes[0] === 0)) entry += `:${encodeRanges(indexes)}`;
    out.push(entry);
  }
  return out.join(';');
}

function encodeRanges(sorted: readonly number[]): string {
  const parts: string[] = [];
  let start = sorted[0]!;
  let end = start;
  for (let i = 1; i <= sorted.length; i++) {
    const n = sorted[i];
    if (n === end + 1) {
      end = n;
      continue;
    }
    parts.push(start === end ? String(start) : `${start}-${end}`);
    if (n !== undefined) start = end = n;
  }
  return parts.join(',');
}

/** Calls `visit` for each record of an encoded position list with its index ranges. */
export function decodePositions(
  text: string,
  visit: (sequenceNumber: string, subSequenceNumber: number, ranges: Array<[number, number]>) => void,
): void {
  if (text === '') return;
  let previous = 0n;
  for (const entry of text.split(';')) {
    const m = /^(\d+)(?:\.(\d+))?(?::([\d,-]+))?$/.exec(entry);
    if (!m) throw new Error(`malformed position entry "${entry.slice(0, 40)}"`);
    previous += BigInt(m[1]!);
    const ranges: Array<[number, number]> = m[3]
      ? m[3].split(',').map((r) => {
          const [a, b = a] = r.split('-');
          return [Number(a), Number(b)];
        })
      : [[0, 0]];
    visit(previous.toString(), Number(m[2] ?? 0), ranges);
  }
}

export interface Manifest {
  readonly version: 1;
  /** Random per file; the data object carries it in its metadata, which is how a commit is recognised. */
  readonly fileId: string;
  readonly bucket: string;
  readonly dataKey: string;
  readonly stream: string;
  readonly shardId: string;
  /** The partition path, or null without partitioning; for a quarantine file, the quarantine prefix. */
  readonly partition: string | null;
  readonly quarantine: boolean;
  /** Partitions of the rows (one for a natural file; every one a quarantine file holds). */
  readonly partitions: readonly string[];
  readonly rows: number;
  readonly firstPosition: string;
  readonly lastPosition: string;
  readonly minEventTime: string | null;
  readonly maxEventTime: string | null;
  /** encodePositions() of the file's events. */
  readonly positions: string;
}

/**
 * The manifest in a stored object's text, or a reason it is not one we can trust (not JSON, another
 * version, a missing field). S3 never stores half an object, but anything can be written under the prefix.
 */
export function parseManifest(text: string): { manifest: Manifest } | { problem: string } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { problem: `not JSON (${(err as Error).message})` };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return { problem: 'not an object' };
  const m = value as Record<string, unknown>;
  if (m.version !== 1) return { problem: `unknown version ${JSON.stringify(m.version)}` };
  for (const field of ['fileId', 'dataKey', 'positions'] as const)
    if (typeof m[field] !== 'string') return { problem: `field ${field} is missing or not a string` };
  return { manifest: value as Manifest };
}

const SEQUENCE_WIDTH = 128; // Kinesis sequence numbers have up to 128 digits
const SUB_WIDTH = 10;

const padded = (p: ShardPosition) =>
  `${p.sequenceNumber.padStart(SEQUENCE_WIDTH, '0')}.${String(p.subSequenceNumber).padStart(SUB_WIDTH, '0')}`;

export function manifestDir(manifestPrefix: string, stream: string, shardId: string): string {
  return `${manifestPrefix}${stream}/${shardId}/`;
}

/**
 * `<dir><last record position, zero-padded>_<hash of the data key>.json`: listing is in last-position order,
 * so the manifests that matter after a checkpoint are those listed after `startAfterCheckpoint`. One manifest
 * key per data key: a rewrite of the same object replaces its manifest.
 */
export function manifestKey(dir: string, last: ShardPosition, dataKey: string): string {
  const hash = createHash('sha256').update(dataKey).digest('hex').slice(0, 16);
  return `${dir}${padded(last)}_${hash}.json`;
}

/** ListObjectsV2 StartAfter that skips manifests of files ending at or before the checkpoint. */
export function startAfterCheckpoint(dir: string, checkpoint: ShardPosition): string {
  // "~" sorts after "_", so keys of files ending exactly at the checkpoint are skipped too.
  return `${dir}${padded(checkpoint)}~`;
}

/**
 * Positions of events already in committed files, for one shard. Looked up once per replayed event;
 * a match is removed (an event is replayed at most once per run).
 */
export class ReplayIndex {
  private readonly records = new Map<string, Array<[number, number]>>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** Adds a manifest's positions, all or none: a malformed list throws before anything is added. */
  add(encoded: string): void {
    const decoded: Array<[string, Array<[number, number]>]> = [];
    decodePositions(encoded, (sequence, sub, ranges) => {
      for (const [a, b] of ranges)
        if (!Number.isSafeInteger(a) || !Number.isSafeInteger(b) || a < 0 || b < a)
          throw new Error(`malformed index range ${a}-${b} at ${sequence}.${sub}`);
      decoded.push([`${sequence}.${sub}`, ranges]);
    });
    for (const [key, ranges] of decoded) {
      const existing = this.records.get(key);
      if (existing) existing.push(...ranges);
      else this.records.set(key, ranges);
      for (const [a, b] of ranges) this.count += b - a + 1;
    }
  }

  /** True (and forgets it) when the event at this position is in a committed file. */
  take(sequenceNumber: string, subSequenceNumber: number, index: number): boolean {
    if (this.count === 0) return false;
    const key = `${sequenceNumber}.${subSequenceNumber}`;
    const ranges = this.records.get(key);
    if (!ranges) return false;
    const i = ranges.findIndex(([a, b]) => a <= index && index <= b);
    if (i < 0) return false;
    const [a, b] = ranges[i]!;
    const rest: Array<[number, number]> = [];
    if (a < index) rest.push([a, index - 1]);
    if (index < b) rest.push([index + 1, b]);
    ranges.splice(i, 1, ...rest);
    if (ranges.length === 0) this.records.delete(key);
    this.count -= 1;
    return true;
  }
}
