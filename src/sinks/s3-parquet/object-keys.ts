/**
 * Names of the Parquet sink's data objects: `<dir><stream>_<shardId>_<first>_<last>[_d<hash>].parquet`, the
 * positions of the file's first and last event (so a replay that rolls at the same events writes the same
 * key), and for files of derived events a hash of their content.
 */
import { compareSequence } from '../../core/records.js';
import type { ShardPosition } from '../../core/watermark.js';
import { type EventPosition, formatEventPosition, parseEventPosition } from './manifest.js';

export function comparePosition(a: ShardPosition, b: ShardPosition): number {
  return compareSequence(a.sequenceNumber, b.sequenceNumber) || a.subSequenceNumber - b.subSequenceNumber;
}

/** `sequence`, or `sequence.sub` for a KPL sub-record. */
export function formatPosition(position: ShardPosition): string {
  return position.subSequenceNumber > 0
    ? `${position.sequenceNumber}.${position.subSequenceNumber}`
    : position.sequenceNumber;
}

const OBJECT_NAME = /^(.+)_(shardId-[^_]+)_([\d.-]+)_([\d.-]+?)(?:_d[0-9a-f]+)?\.parquet$/;

/** Stream, shard and first/last event positions of a data object's file name, or undefined for foreign names. */
export function parseObjectName(
  name: string,
): { stream: string; shardId: string; first: EventPosition; last: EventPosition } | undefined {
  const match = OBJECT_NAME.exec(name);
  if (!match) return undefined;
  const first = parseEventPosition(match[3]!);
  const last = parseEventPosition(match[4]!);
  if (!first || !last) return undefined;
  return { stream: match[1]!, shardId: match[2]!, first, last };
}

/** Data key: `<prefix>[<partition>/ | <quarantine prefix>]<stream>_<shardId>_<first>_<last>[_d<hash>].parquet`. */
export function objectKey(
  dir: string,
  stream: string,
  shardId: string,
  first: EventPosition,
  last: EventPosition,
  contentHash?: string,
): string {
  return `${dir}${stream}_${shardId}_${formatEventPosition(first)}_${formatEventPosition(last)}${contentHash ? `_d${contentHash}` : ''}.parquet`;
}
