/**
 * The claim-check pointer: a small JSON document standing in for bytes stored in S3.
 *
 * Our envelope, used for a whole record (producer side: `ksw produce`, consumer side: the S3 pointer
 * resolver) and for a single large field of a document (sink side: field offload before indexing):
 *
 *   {"$s3pointer":{"v":1,"bucket":"b","key":"k","size":1234,"sha256":"<hex>","contentType":"application/json","partitionKey":"pk"}}
 *
 * `size` and `sha256` let the reader verify what it fetched; `partitionKey` (records only) is the key the
 * producer used, kept for lineage. The AWS payload-offloading format of the Java/Python extended clients
 * (`["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":..,"s3Key":..}]`) is read too.
 */
import { createHash } from 'node:crypto';

export const POINTER_FIELD = '$s3pointer';
export const AWS_POINTER_CLASS = 'software.amazon.payloadoffloading.PayloadS3Pointer';

export interface S3Pointer {
  readonly bucket: string;
  readonly key: string;
  /** Object size in bytes, when the writer recorded it. */
  readonly size?: number;
  /** Lowercase hex SHA-256 of the object's bytes, when the writer recorded it. */
  readonly sha256?: string;
  readonly contentType?: string;
  readonly partitionKey?: string;
  /** Which format the pointer came in. */
  readonly format: 'ksw' | 'aws-extended-client';
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The pointer document our producers and sinks write. */
export function pointerDocument(p: Omit<S3Pointer, 'format'>): { [POINTER_FIELD]: Record<string, unknown> } {
  const body: Record<string, unknown> = { v: 1, bucket: p.bucket, key: p.key };
  if (p.size !== undefined) body.size = p.size;
  if (p.sha256 !== undefined) body.sha256 = p.sha256;
  if (p.contentType !== undefined) body.contentType = p.contentType;
  if (p.partitionKey !== undefined) body.partitionKey = p.partitionKey;
  return { [POINTER_FIELD]: body };
}

/** Cheap pre-check on raw record bytes, so ordinary records skip pointer parsing entirely. */
export function mayBePointer(data: Uint8Array): boolean {
  // Both formats are small JSON documents; skip leading whitespace and look at the first character.
  if (data.byteLength > 8192) return false;
  let i = 0;
  while (
    i < data.byteLength &&
    (data[i] === 0x20 || data[i] === 0x0a || data[i] === 0x0d || data[i] === 0x09)
  ) {
    i++;
  }
  if (data[i] !== 0x7b /* { */ && data[i] !== 0x5b /* [ */) return false;
  const head = Buffer.from(data.buffer, data.byteOffset, Math.min(data.byteLength, 256)).toString('latin1');
  return head.includes(POINTER_FIELD) || head.includes(AWS_POINTER_CLASS);
}

export class PointerFormatError extends Error {}

/** S3's bucket naming rules (general purpose buckets): 3-63 of a-z 0-9 . -, starting and ending alphanumeric. */
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/** Why a bucket name cannot be used, or undefined when it is a valid S3 bucket name. */
export function unsafeBucketReason(bucket: string): string | undefined {
  if (!BUCKET_NAME.test(bucket) || bucket.includes('..')) {
    return `bucket ${JSON.stringify(bucket.slice(0, 80))} is not a valid S3 bucket name`;
  }
  return undefined;
}

/**
 * Why an object key must not be fetched, or undefined when it is safe. A key is sent in the request path;
 * with path-style addressing (custom endpoints) `/allowed/../other/k` is resolved to another bucket by
 * any S3 implementation or proxy that normalises dot segments, so keys holding `.` or `..` segments,
 * empty segments (a leading `/`, `//`, a trailing `/`), backslashes (read as `/` by some proxies),
 * percent-encoded `.`, `/` or `\`, or control characters are refused before any request. So are keys
 * longer than S3's 1,024 bytes.
 */
export function unsafeKeyReason(key: string): string | undefined {
  if (key === '') return 'the key is empty';
  if (Buffer.byteLength(key, 'utf8') > 1024) return 'the key is longer than 1,024 bytes';
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it looks for
  if (/[\u0000-\u001f\u007f]/.test(key)) return 'the key holds a control character';
  if (key.includes('\\')) return 'the key holds a backslash';
  if (/%(2e|2f|5c)/i.test(key)) return 'the key holds a percent-encoded ".", "/" or "\\"';
  const segments = key.split('/');
  for (const segment of segments) {
    if (segment === '.' || segment === '..') return `the key holds a "${segment}" path segment`;
    if (segment === '') return 'the key holds an empty path segment (a leading, trailing or double "/")';
  }
  return undefined;
}

function checkLocation(_bucket: string, key: string, what: string): void {
  const reason = unsafeKeyReason(key);
  if (reason !== undefined) throw new PointerFormatError(`${what}: ${reason}; not fetched`);
}

/**
 * Reads a pointer from parsed JSON. Returns undefined when the value is not a pointer at all; throws
 * PointerFormatError when it claims to be one but is malformed (that record goes to the DLQ).
 */
export function readPointer(value: unknown): S3Pointer | undefined {
  if (Array.isArray(value)) {
    if (value.length !== 2 || value[0] !== AWS_POINTER_CLASS) return undefined;
    const body = value[1] as Record<string, unknown> | null;
    if (body === null || typeof body !== 'object')
      throw new PointerFormatError('PayloadS3Pointer without a body');
    const bucket = body.s3BucketName;
    const key = body.s3Key;
    if (typeof bucket !== 'string' || bucket === '' || typeof key !== 'string' || key === '') {
      throw new PointerFormatError('PayloadS3Pointer needs non-empty s3BucketName and s3Key');
    }
    checkLocation(bucket, key, 'PayloadS3Pointer');
    return { bucket, key, format: 'aws-extended-client' };
  }
  if (value === null || typeof value !== 'object') return undefined;
  const obj = value as Record<string, unknown>;
  if (!(POINTER_FIELD in obj)) return undefined;
  if (Object.keys(obj).length !== 1) {
    throw new PointerFormatError(`a ${POINTER_FIELD} envelope must have no other fields`);
  }
  const body = obj[POINTER_FIELD] as Record<string, unknown> | null;
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new PointerFormatError(`${POINTER_FIELD} must be an object`);
  }
  if (body.v !== 1) throw new PointerFormatError(`unsupported ${POINTER_FIELD} version ${String(body.v)}`);
  const { bucket, key, size, sha256, contentType, partitionKey } = body;
  if (typeof bucket !== 'string' || bucket === '' || typeof key !== 'string' || key === '') {
    throw new PointerFormatError(`${POINTER_FIELD} needs non-empty bucket and key`);
  }
  checkLocation(bucket, key, POINTER_FIELD);
  if (size !== undefined && (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)) {
    throw new PointerFormatError(`${POINTER_FIELD}.size must be a non-negative integer`);
  }
  if (sha256 !== undefined && (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256))) {
    throw new PointerFormatError(`${POINTER_FIELD}.sha256 must be 64 lowercase hex digits`);
  }
  if (contentType !== undefined && typeof contentType !== 'string') {
    throw new PointerFormatError(`${POINTER_FIELD}.contentType must be a string`);
  }
  if (partitionKey !== undefined && typeof partitionKey !== 'string') {
    throw new PointerFormatError(`${POINTER_FIELD}.partitionKey must be a string`);
  }
  return {
    bucket,
    key,
    format: 'ksw',
    ...(size === undefined ? {} : { size: size as number }),
    ...(sha256 === undefined ? {} : { sha256: sha256 as string }),
    ...(contentType === undefined ? {} : { contentType: contentType as string }),
    ...(partitionKey === undefined ? {} : { partitionKey: partitionKey as string }),
  };
}
