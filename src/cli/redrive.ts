/**
 * ksw redrive: replays dead letters (S3 DLQ objects) into a named sink of a worker config, then removes
 * what succeeded. For each object: every letter (optionally only those of one component) is decoded
 * from its original bytes and written to the sink with its original origin, so the sink derives the same
 * document id and index as the worker would (re-running never duplicates). Letters the sink wrote are
 * removed; letters it dead-lettered again stay, with the new reason and time; others stay untouched.
 * An object left with no letters is deleted, otherwise rewritten in place. Safe to re-run.
 */

import { gunzipSync } from 'node:zlib';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';

import pino, { type Logger } from 'pino';
import type { WorkerConfig } from '../config/schema.js';
import { Ack } from '../core/ack.js';
import { createAwsClients } from '../core/aws.js';
import type { DeadLetter, DeadLetterQueue } from '../core/component.js';
import type { PipelineEvent } from '../core/records.js';
import { unsafeKeyReason } from '../core/s3-pointer.js';
import { createRegistry } from '../metrics/registry.js';
import { parseJsonDocument } from '../processors/decode.js';
import { createLogger } from '../runtime/logger.js';
import { createSink } from '../sinks/registry.js';
import {
  type DeadLetterLine,
  deadLetterFromLine,
  formatDeadLetter,
  parseDeadLetterLine,
} from '../sinks/s3-dead-letter.js';
import { parseCommandArgs } from './args.js';

const HELP = `usage: ksw redrive -c FILE --sink NAME [--bucket B] [--prefix P] [--component C] [--dry-run]

Replays dead letters from the S3 DLQ into the sink NAME of the config FILE and removes those the sink
wrote. Letters the sink rejects again stay in their object with the new reason. Safe to re-run.

  --bucket, --prefix   where the DLQ objects are (default: the config's dlq section)
  --component C        only letters dead-lettered by component C (e.g. sink:search); others stay
  --dry-run            list what would be replayed, change nothing
`;

/** Collects the letters the sink gives up on during a redrive instead of storing them. */
class RedriveDeadLetters implements DeadLetterQueue {
  readonly failed = new Map<string, DeadLetter>();
  put(letter: DeadLetter, ack: Ack): void {
    this.failed.set(letterKey(letter.origin, letter.index), letter);
    ack.done();
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

function letterKey(origin: DeadLetter['origin'], index: number | undefined): string {
  return `${origin.stream}\n${origin.shardId}\n${origin.sequenceNumber}\n${origin.subSequenceNumber}\n${index ?? 0}`;
}

/** The document a letter's original bytes hold (gzip-compressed records are inflated, within a limit). */
export function decodeLetterData(data: Uint8Array): Record<string, unknown> {
  let bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (bytes[0] === 0x1f && bytes[1] === 0x8b)
    bytes = gunzipSync(bytes, { maxOutputLength: 64 * 1024 * 1024 });
  return parseJsonDocument(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
}

export interface RedriveOptions {
  readonly sink: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly component?: string;
  readonly dryRun?: boolean;
}

export interface RedriveSummary {
  objects: number;
  letters: number;
  replayed: number;
  written: number;
  failedAgain: number;
  skipped: number;
  deletedObjects: number;
  rewrittenObjects: number;
}

/**
 * The DLQ objects to redrive. Keys come from a listing, so they were written by whoever can write the
 * bucket, not necessarily by us: keys outside the prefix, or that the pointer rules refuse (dot or empty
 * segments, which a path-style request may resolve into another bucket), are skipped with a warning.
 */
export async function listKeys(
  s3: Pick<S3Client, 'send'>,
  bucket: string,
  prefix: string,
  logger?: Logger,
): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of page.Contents ?? []) {
      const key = o.Key;
      if (!key?.endsWith('.jsonl')) continue;
      const unsafe = key.startsWith(prefix) ? unsafeKeyReason(key) : 'outside the prefix';
      if (unsafe !== undefined) {
        logger?.warn({ key: key.slice(0, 200), reason: unsafe }, 'DLQ object skipped: unsafe key');
        continue;
      }
      keys.push(key);
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return keys.sort();
}

/** Runs a redrive with an already built worker config (the CLI and tests use it). */
export async function redrive(
  config: WorkerConfig,
  options: RedriveOptions,
  logger: Logger,
): Promise<RedriveSummary> {
  const sinkConfig = config.sinks[options.sink];
  if (!sinkConfig) {
    throw new Error(
      `no sink named "${options.sink}"; configured sinks: ${Object.keys(config.sinks).join(', ')}`,
    );
  }
  const aws = createAwsClients(config.aws);
  const dlq = new RedriveDeadLetters();
  const sink = createSink(options.sink, sinkConfig, {
    logger: logger.child({ sink: options.sink }),
    metrics: createRegistry(false),
    aws,
    dlq,
  });
  const summary: RedriveSummary = {
    objects: 0,
    letters: 0,
    replayed: 0,
    written: 0,
    failedAgain: 0,
    skipped: 0,
    deletedObjects: 0,
    rewrittenObjects: 0,
  };
  try {
    for (const key of await listKeys(aws.s3, options.bucket, options.prefix, logger)) {
      summary.objects += 1;
      const object = await aws.s3.send(new GetObjectCommand({ Bucket: options.bucket, Key: key }));
      const text = (await object.Body?.transformToString('utf-8')) ?? '';
      const kept: string[] = [];
      const replays: Array<{
        line: DeadLetterLine;
        raw: string;
        event: PipelineEvent;
        acked: () => boolean;
      }> = [];
      for (const raw of text.split('\n')) {
        if (raw.trim() === '') continue;
        summary.letters += 1;
        let line: DeadLetterLine;
        try {
          line = parseDeadLetterLine(raw);
        } catch {
          kept.push(raw); // not ours to judge: never dropped
          summary.skipped += 1;
          continue;
        }
        if (options.component && line.component !== options.component) {
          kept.push(raw);
          summary.skipped += 1;
          continue;
        }
        const letter = deadLetterFromLine(line);
        let value: Record<string, unknown>;
        try {
          value = decodeLetterData(letter.data);
        } catch {
          kept.push(raw); // e.g. a decode letter with malformed JSON: replaying cannot fix it
          summary.skipped += 1;
          continue;
        }
        let acked = false;
        const event: PipelineEvent = {
          origin: letter.origin,
          index: letter.index ?? 0,
          value,
          raw: letter.data,
          ack: new Ack(() => {
            acked = true;
          }),
        };
        replays.push({ line, raw, event, acked: () => acked });
      }
      if (options.dryRun) {
        summary.replayed += replays.length;
        logger.info({ key, replay: replays.length, keep: kept.length }, 'dry run');
        continue;
      }
      if (replays.length > 0) {
        // No openShard: a sink's replay detection (Parquet acks positions covered by committed objects)
        // must not mistake a letter that never made it into an object for one that did.
        await sink.write(replays.map((r) => r.event));
        await sink.flush();
      }
      summary.replayed += replays.length;
      let changed = false;
      for (const r of replays) {
        const again = dlq.failed.get(letterKey(r.event.origin, r.event.index));
        if (again) {
          summary.failedAgain += 1;
          kept.push(formatDeadLetter({ ...again, data: r.event.raw }, new Date()));
          changed = true;
        } else if (r.acked()) {
          summary.written += 1;
          changed = true;
        } else {
          kept.push(r.raw); // not confirmed (sink closed?): keep it for the next run
        }
      }
      dlq.failed.clear();
      if (!changed) continue;
      if (kept.length === 0) {
        await aws.s3.send(new DeleteObjectCommand({ Bucket: options.bucket, Key: key }));
        summary.deletedObjects += 1;
      } else {
        await aws.s3.send(
          new PutObjectCommand({
            Bucket: options.bucket,
            Key: key,
            Body: `${kept.join('\n')}\n`,
            ContentType: 'application/x-ndjson',
            Metadata: { letters: String(kept.length) },
          }),
        );
        summary.rewrittenObjects += 1;
      }
      logger.info({ key, replayed: replays.length, kept: kept.length }, 'object redriven');
    }
  } finally {
    await sink.close();
    aws.destroy();
  }
  return summary;
}

export async function redriveCommand(args: string[]): Promise<number> {
  const parsed = parseCommandArgs('redrive', HELP, args, {
    config: { type: 'string', short: 'c' },
    sink: { type: 'string' },
    bucket: { type: 'string' },
    prefix: { type: 'string' },
    component: { type: 'string' },
    'dry-run': { type: 'boolean', default: false },
  });
  if (!parsed) return 0;
  const { values } = parsed;
  if (!values.config || !values.sink) {
    process.stderr.write(`redrive: -c FILE and --sink NAME are required\n\n${HELP}`);
    return 2;
  }
  const { loadConfig } = await import('../config/load.js');
  const config = loadConfig(values.config);
  const bucket = values.bucket ?? config.dlq.bucket;
  const prefix = values.prefix ?? config.dlq.prefix;
  // Logs go to stderr: stdout carries only the JSON summary, for scripts.
  const logger = createLogger(config.log.level, `${config.app.name}-redrive`, pino.destination(2));
  const summary = await redrive(
    config,
    {
      sink: values.sink,
      bucket,
      prefix,
      ...(values.component ? { component: values.component } : {}),
      dryRun: values['dry-run'],
    },
    logger,
  );
  process.stdout.write(`${JSON.stringify({ bucket, prefix, sink: values.sink, ...summary })}\n`);
  return summary.failedAgain > 0 ? 3 : 0;
}
