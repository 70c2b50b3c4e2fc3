/**
 * Compressed records (the article's "compress your large records" strategy, and the OpenTelemetry
 * Collector awskinesisexporter's `encoding.compression`: gzip, zlib, flate):
 * - gzip: detected by its magic bytes 1f 8b 08;
 * - zlib (RFC 1950): detected by its two-byte header, CM = 8 (deflate), CINFO <= 7 and a valid FCHECK
 *   ((b0 * 256 + b1) % 31 == 0), so `78 9c`, `78 01`, `78 da`, ... JSON (`{`, `[`, white space) and OTLP
 *   protobuf (0a) never start that way;
 * - raw deflate (RFC 1951, the exporter's `flate`) has no header to detect. With `rawDeflate: try`,
 *   a record that is neither gzip, zlib nor JSON text (first byte other than `{`, `[` or white space)
 *   is inflated on trial: when it inflates to the end of a final block it is used inflated, when it
 *   does not (a plain protobuf record is almost never a complete deflate stream) the record goes on
 *   unchanged. Off by default: turn it on for streams fed with `compression: flate`.
 * All three are inflated with one hard limit on the output size: a small record that inflates past it
 * is a bomb and goes to the DLQ instead of exhausting memory.
 */
import { promisify } from 'node:util';
import { gunzip, inflate, inflateRaw } from 'node:zlib';
import { z } from 'zod';

export const gzipConfigSchema = z
  .object({
    enabled: z
      .boolean()
      .default(true)
      .describe('Inflate records (and fetched S3 payloads) that start with the gzip magic bytes 1f 8b.'),
    zlib: z
      .boolean()
      .default(true)
      .describe(
        'Inflate records that start with a zlib header (78 01, 78 9c, 78 da, ...: deflate with a valid FCHECK), e.g. the Collector exporter compression zlib.',
      ),
    rawDeflate: z
      .enum(['off', 'try'])
      .default('off')
      .describe(
        'Raw deflate (the Collector exporter compression flate) has no header. try: a record that is not gzip, zlib or JSON text is inflated on trial and used inflated when it is a complete deflate stream, else passed on unchanged. off: never.',
      ),
    maxDecompressedBytes: z
      .number()
      .int()
      .min(1)
      .default(64 * 1024 * 1024)
      .describe(
        'Largest inflated size accepted (gzip, zlib and raw deflate alike); a record inflating past it (a bomb) goes to the DLQ undecoded.',
      ),
  })
  .strict()
  .describe('Compressed records: gzip, zlib, raw deflate.');

export type GzipConfig = z.infer<typeof gzipConfigSchema>;

export function isGzip(data: Uint8Array): boolean {
  return data.byteLength >= 3 && data[0] === 0x1f && data[1] === 0x8b && data[2] === 0x08;
}

/** A zlib (RFC 1950) header: deflate, window <= 32 KiB, no preset dictionary, valid check bits. */
export function isZlib(data: Uint8Array): boolean {
  if (data.byteLength < 3) return false;
  const cmf = data[0]!;
  const flg = data[1]!;
  return (cmf & 0x0f) === 8 && cmf >> 4 <= 7 && (flg & 0x20) === 0 && (cmf * 256 + flg) % 31 === 0;
}

/** Whether a record may be raw deflate worth a trial inflate: not JSON text (nor gzip/zlib). */
export function mayBeRawDeflate(data: Uint8Array): boolean {
  if (data.byteLength < 2) return false;
  const c = data[0]!;
  return c !== 0x7b && c !== 0x5b && c !== 0x20 && c !== 0x09 && c !== 0x0d && !isGzip(data) && !isZlib(data);
}

export class GzipError extends Error {
  constructor(
    message: string,
    readonly kind:
      | 'gzip_too_large'
      | 'gzip_invalid'
      | 'zlib_too_large'
      | 'zlib_invalid'
      | 'deflate_too_large'
      | 'deflate_invalid',
  ) {
    super(message);
  }
}

const gunzipAsync = promisify(gunzip);
const inflateAsync = promisify(inflate);
const inflateRawAsync = promisify(inflateRaw);

export type Compression = 'gzip' | 'zlib' | 'deflate';

/** Inflates gzip, zlib or raw deflate data within `maxBytes`; rejects with GzipError. */
export async function inflateLimited(data: Uint8Array, kind: Compression, maxBytes: number): Promise<Buffer> {
  if (kind === 'gzip') return gunzipLimited(data, maxBytes);
  try {
    const run = kind === 'zlib' ? inflateAsync : inflateRawAsync;
    return await run(data, { maxOutputLength: maxBytes });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ERR_BUFFER_TOO_LARGE' || err instanceof RangeError) {
      throw new GzipError(
        `${kind} data inflates past decode.gzip.maxDecompressedBytes (${maxBytes} bytes) from ${data.byteLength} bytes`,
        `${kind}_too_large`,
      );
    }
    throw new GzipError(`corrupt ${kind} data: ${e.message}`, `${kind}_invalid`);
  }
}

/**
 * Inflates gzip data on the libuv thread pool (a 64 MiB inflate would otherwise block every shard);
 * rejects with GzipError when it is corrupt or inflates past `maxBytes`.
 */
export async function gunzipLimited(data: Uint8Array, maxBytes: number): Promise<Buffer> {
  try {
    // maxOutputLength makes zlib stop (RangeError) as soon as the output would pass the limit, so a
    // bomb costs at most `maxBytes` of memory, never its full inflated size.
    return await gunzipAsync(data, { maxOutputLength: maxBytes });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ERR_BUFFER_TOO_LARGE' || err instanceof RangeError) {
      throw new GzipError(
        `gzip data inflates past decode.gzip.maxDecompressedBytes (${maxBytes} bytes) from ${data.byteLength} bytes`,
        'gzip_too_large',
      );
    }
    throw new GzipError(`corrupt gzip data: ${e.message}`, 'gzip_invalid');
  }
}
