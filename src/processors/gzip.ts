/**
 * Gzip-compressed records (the article's "compress your large records" strategy): detected by the gzip
 * magic bytes, so compressed and plain records can share a stream, and inflated with a hard limit on
 * the output size. A small record that inflates past the limit is a gzip bomb: it goes to the DLQ
 * instead of exhausting memory.
 */
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { z } from 'zod';

export const gzipConfigSchema = z
  .object({
    enabled: z
      .boolean()
      .default(true)
      .describe('Inflate records (and fetched S3 payloads) that start with the gzip magic bytes 1f 8b.'),
    maxDecompressedBytes: z
      .number()
      .int()
      .min(1)
      .default(64 * 1024 * 1024)
      .describe(
        'Largest inflated size accepted; a record inflating past it (a gzip bomb) goes to the DLQ undecoded.',
      ),
  })
  .strict()
  .describe('Gzip-compressed records.');

export type GzipConfig = z.infer<typeof gzipConfigSchema>;

export function isGzip(data: Uint8Array): boolean {
  return data.byteLength >= 3 && data[0] === 0x1f && data[1] === 0x8b && data[2] === 0x08;
}

export class GzipError extends Error {
  constructor(
    message: string,
    readonly kind: 'gzip_too_large' | 'gzip_invalid',
  ) {
    super(message);
  }
}

const gunzipAsync = promisify(gunzip);

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
