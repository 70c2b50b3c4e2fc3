/**
 * Claim check, producer side: puts records to a stream, and a record too large for Kinesis (over
 * `thresholdBytes`, default 900 KiB: the 1 MiB limit counts data plus partition key) is either
 *   - offloaded to S3, with our `$s3pointer` envelope put in its place (large: s3), or
 *   - split into chunk records that the consumer reassembles (large: chunk).
 * The partition key stays inline, so the pointer or chunks reach the shard the payload would have.
 *
 * Offloaded objects are content-addressed (`<prefix><sha256>`): putting the same payload again, for
 * example when a caller retries after a failure, overwrites the same object instead of leaving orphans.
 * Consumers never delete them (fan-out consumers may still need them); expire the prefix with an S3
 * lifecycle rule instead (see README).
 */
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import pLimit from 'p-limit';
import { z } from 'zod';
import { pointerDocument, sha256Hex } from '../core/s3-pointer.js';
import { encodeChunks } from '../processors/chunks.js';
import {
  type KinesisProducer,
  MAX_RECORD_BYTES,
  type ProducerRecord,
  type PutResult,
} from './kinesis-producer.js';

export const claimCheckConfigSchema = z
  .object({
    thresholdBytes: z
      .number()
      .int()
      .min(1)
      .max(MAX_RECORD_BYTES)
      .default(900 * 1024)
      .describe('Records whose data plus partition key exceed this are offloaded (or chunked).'),
    large: z
      .enum(['s3', 'chunk'])
      .default('s3')
      .describe('s3: upload the payload and put a pointer. chunk: split it into records of chunkBytes.'),
    bucket: z.string().min(3).optional().describe('Bucket for offloaded payloads (needed with large: s3).'),
    prefix: z
      .string()
      .default('claim-check/')
      .describe('Key prefix for offloaded payloads; expire it with a lifecycle rule.'),
    contentType: z.string().default('application/json').describe('Content-Type of offloaded objects.'),
    chunkBytes: z
      .number()
      .int()
      .min(1024)
      .max(MAX_RECORD_BYTES - 1024)
      .default(900 * 1024)
      .describe('Payload bytes per chunk record (large: chunk); leaves room for the chunk header and key.'),
    gzip: z
      .boolean()
      .default(false)
      .describe('Gzip every record before the size check (the consumer inflates by magic bytes).'),
    uploadConcurrency: z.number().int().min(1).max(64).default(8).describe('S3 uploads in flight at most.'),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.large === 's3' && !c.bucket) {
      ctx.addIssue({
        code: 'custom',
        path: ['bucket'],
        message: 'large: s3 needs a bucket for offloaded payloads',
      });
    }
  });

export type ClaimCheckConfig = z.infer<typeof claimCheckConfigSchema>;

export interface ClaimCheckResult extends PutResult {
  /** How the record travelled. */
  readonly carried: 'inline' | 's3' | 'chunks';
  /** For s3: the object key; for chunks: how many chunk records. */
  readonly key?: string;
  readonly chunks?: number;
}

export class ClaimCheckProducer {
  readonly config: ClaimCheckConfig;
  readonly stats = { inline: 0, offloaded: 0, offloadedBytes: 0, chunked: 0, chunkRecords: 0 };

  constructor(
    private readonly producer: KinesisProducer,
    private readonly s3: Pick<S3Client, 'send'> | undefined,
    config: z.input<typeof claimCheckConfigSchema>,
  ) {
    this.config = claimCheckConfigSchema.parse(config);
    if (this.config.large === 's3' && !s3) throw new Error('large: s3 needs an S3 client');
  }

  /** Puts all records; resolves with one result per input record, in input order. */
  async put(records: readonly ProducerRecord[]): Promise<ClaimCheckResult[]> {
    const { gzipSync } = await import('node:zlib');
    const prepared = records.map((r) => (this.config.gzip ? { ...r, data: gzipSync(r.data) } : r));
    const large = (r: ProducerRecord) =>
      r.data.byteLength + Buffer.byteLength(r.partitionKey) > this.config.thresholdBytes;
    const results: ClaimCheckResult[] = new Array(records.length);

    if (this.config.large === 'chunk') {
      const inline = prepared.map((r, i) => ({ r, i })).filter(({ r }) => !large(r));
      const chunked = prepared.map((r, i) => ({ r, i })).filter(({ r }) => large(r));
      const put = await this.producer.put(inline.map(({ r }) => r));
      inline.forEach(({ i }, j) => {
        results[i] = { ...put[j]!, carried: 'inline' };
      });
      this.stats.inline += inline.length;
      // Chunks of one message are put one after another: PutRecords does not keep the order of retried
      // entries, and the consumer needs them in order.
      const limit = pLimit(4);
      await Promise.all(
        chunked.map(({ r, i }) =>
          limit(async () => {
            const chunks = encodeChunks(r.data, this.config.chunkBytes);
            let last: PutResult | undefined;
            for (const chunk of chunks) {
              [last] = await this.producer.put([
                {
                  partitionKey: r.partitionKey,
                  data: chunk,
                  ...(r.explicitHashKey ? { explicitHashKey: r.explicitHashKey } : {}),
                },
              ]);
            }
            this.stats.chunked += 1;
            this.stats.chunkRecords += chunks.length;
            results[i] = { ...last!, carried: 'chunks', chunks: chunks.length };
          }),
        ),
      );
      return results;
    }

    const limit = pLimit(this.config.uploadConcurrency);
    const keys: Array<string | undefined> = new Array(records.length);
    const toPut = await Promise.all(
      prepared.map((r, i) =>
        large(r)
          ? limit(async () => {
              const { record, key } = await this.offload(r);
              keys[i] = key;
              return record;
            })
          : r,
      ),
    );
    const put = await this.producer.put(toPut);
    put.forEach((p, i) => {
      const key = keys[i];
      results[i] = key === undefined ? { ...p, carried: 'inline' } : { ...p, carried: 's3', key };
      if (key === undefined) this.stats.inline += 1;
    });
    return results;
  }

  private async offload(r: ProducerRecord): Promise<{ record: ProducerRecord; key: string }> {
    const sha256 = sha256Hex(r.data);
    const key = `${this.config.prefix}${sha256}`;
    await this.s3!.send(
      new PutObjectCommand({
        Bucket: this.config.bucket!,
        Key: key,
        Body: r.data,
        ContentType: this.config.contentType,
        ...(this.config.gzip ? { ContentEncoding: 'gzip' } : {}),
      }),
    );
    this.stats.offloaded += 1;
    this.stats.offloadedBytes += r.data.byteLength;
    const pointer = pointerDocument({
      bucket: this.config.bucket!,
      key,
      size: r.data.byteLength,
      sha256,
      contentType: this.config.contentType,
      partitionKey: r.partitionKey,
    });
    return {
      key,
      record: {
        partitionKey: r.partitionKey,
        data: Buffer.from(JSON.stringify(pointer), 'utf8'),
        ...(r.explicitHashKey ? { explicitHashKey: r.explicitHashKey } : {}),
      },
    };
  }
}
