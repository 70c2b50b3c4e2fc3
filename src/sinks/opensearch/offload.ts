/**
 * Sink-side field offload (claim check on the way out): a field whose JSON is larger than a limit is
 * written to S3 and replaced, in the indexed document, by the shared pointer envelope of
 * src/core/s3-pointer.ts under `<pointerField>.<path>`. Keys derive from the index, the document id and the
 * field path, so a replay (same id, same index) overwrites its object instead of adding one. The object is
 * durable before the document that points to it is indexed.
 */

import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { Logger } from 'pino';
import type { Counter } from 'prom-client';
import { backoffDelay, sleep } from '../../core/backoff.js';
import { pointerDocument, sha256Hex } from '../../core/s3-pointer.js';
import { sendOnlyWhile } from '../../core/tenure.js';
import { stringifyJson } from '../s3-parquet/index.js';
import type { OpenSearchSinkConfig } from './config.js';

type OffloadConfig = NonNullable<OpenSearchSinkConfig['offload']>;

/** A field location as path segments (a member of `attributes.*` may itself contain dots). */
type FieldPath = readonly string[];

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function get(doc: Record<string, unknown>, path: FieldPath): unknown {
  let current: unknown = doc;
  for (const segment of path) {
    if (!isObject(current) || !Object.hasOwn(current, segment)) return undefined;
    current = current[segment];
  }
  return current;
}

/** Removes `path` from a copy-on-write clone of `doc` (the event's own value is never changed). */
function without(doc: Record<string, unknown>, path: FieldPath): Record<string, unknown> {
  const [head, ...rest] = path;
  const copy = { ...doc };
  if (rest.length === 0) delete copy[head!];
  else copy[head!] = without(copy[head!] as Record<string, unknown>, rest);
  return copy;
}

/** The candidate fields of a document for the configured paths. */
export function candidateFields(
  doc: Record<string, unknown>,
  fields: readonly string[],
  pointerField: string,
): FieldPath[] {
  if (fields.length === 0)
    return Object.keys(doc)
      .filter((k) => k !== pointerField)
      .map((k) => [k]);
  const out: FieldPath[] = [];
  for (const field of fields) {
    if (field.endsWith('.*')) {
      const parentPath = field.slice(0, -2).split('.');
      const parent = get(doc, parentPath);
      if (isObject(parent)) for (const key of Object.keys(parent)) out.push([...parentPath, key]);
    } else if (get(doc, field.split('.')) !== undefined) {
      out.push(field.split('.'));
    }
  }
  return out;
}

export class FieldOffloader {
  constructor(
    private readonly config: OffloadConfig,
    private readonly s3: S3Client,
    private readonly signal: AbortSignal,
    private readonly logger: Logger,
    private readonly metrics: { offloaded: Counter<string>; errors: Counter<string> },
    private readonly labels: Record<string, string>,
  ) {}

  /**
   * The document to index: `doc` itself when nothing is too large, else a copy with the large fields
   * replaced by pointers. Resolves undefined when the sink was closed (or `signal`, e.g. the event's tenure
   * signal combined with the sink's, aborted) before an object was written.
   */
  async apply(
    doc: Record<string, unknown>,
    index: string,
    id: string,
    signal: AbortSignal = this.signal,
    /** Checked right before each write goes on the wire (the event's tenure still active). */
    proceed: () => boolean = () => true,
  ): Promise<Record<string, unknown> | undefined> {
    let out = doc;
    let pointers: Record<string, unknown> | undefined;
    for (const path of candidateFields(doc, this.config.fields, this.config.pointerField)) {
      const value = get(doc, path);
      if (value === undefined) continue;
      const json = Buffer.from(stringifyJson(value), 'utf8');
      if (json.byteLength <= this.config.maxFieldBytes) continue;
      const dotted = path.join('.');
      const key = `${this.config.prefix}${index}/${id}/${dotted}.json`;
      const sha256 = sha256Hex(json);
      if (!(await this.put(key, json, sha256, signal, proceed))) return undefined;
      out = without(out, path);
      pointers ??= isObject(doc[this.config.pointerField])
        ? { ...(doc[this.config.pointerField] as object) }
        : {};
      pointers[dotted] = pointerDocument({
        bucket: this.config.bucket,
        key,
        size: json.byteLength,
        sha256,
        contentType: 'application/json',
      });
      this.metrics.offloaded.inc(this.labels);
    }
    if (pointers) out = { ...out, [this.config.pointerField]: pointers };
    return out;
  }

  private async put(
    key: string,
    body: Buffer,
    sha256: string,
    signal: AbortSignal,
    proceed: () => boolean,
  ): Promise<boolean> {
    for (let failures = 0; !signal.aborted && proceed(); failures++) {
      try {
        await this.s3.send(
          sendOnlyWhile(
            new PutObjectCommand({
              Bucket: this.config.bucket,
              Key: key,
              Body: body,
              ContentType: 'application/json',
              Metadata: { sha256 },
            }),
            proceed,
            'PutObject (offloaded field)',
          ),
          { abortSignal: signal },
        );
        return true;
      } catch (err) {
        if (signal.aborted || !proceed()) break;
        this.metrics.errors.inc(this.labels);
        const retryInMs = backoffDelay(failures, 200, 30_000);
        this.logger.warn(
          { key, error: (err as Error)?.name, message: (err as Error)?.message, retryInMs },
          'field offload to S3 failed; retrying',
        );
        await sleep(retryInMs, signal);
      }
    }
    return false;
  }
}
