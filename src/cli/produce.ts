/**
 * `ksw produce`: puts records to a stream from a file or stdin, with the claim check for large ones.
 *
 *   ksw produce --stream S --file events.ndjson --partition-key-field traceId --offload-bucket B
 *   ksw produce --stream S --file big.json --format whole --partition-key order-42 --offload-bucket B
 *
 * AWS settings come from the `aws:` section of a worker config (-c), or the default chain; endpoint
 * flags override both (for the local emulators).
 */

import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { interpolate } from '../config/load.js';
import { awsConfigSchema, createAwsClients } from '../core/aws.js';
import { sleep } from '../core/backoff.js';
import { getPath, parseFieldPath } from '../processors/conditions.js';
import { ClaimCheckProducer, claimCheckConfigSchema } from '../producer/claim-check.js';
import { KinesisProducer, type ProducerRecord } from '../producer/kinesis-producer.js';
import { generateSpans, spanRecord } from '../producer/synthetic-spans.js';
import { parseCommandArgs } from './args.js';

export const PRODUCE_USAGE = `usage: ksw produce --stream NAME [options]

input:
  --file PATH               records to put (default: stdin)
  --synthetic-spans N       instead of input, N synthetic OpenTelemetry-like spans (traceId as partition key)
  --every-ms MS             with --synthetic-spans: repeat every MS milliseconds until SIGTERM/SIGINT (load generator)
  --format lines|whole      lines: every non-empty line is a record (default); whole: the input is one record
  --partition-key KEY       partition key for every record
  --partition-key-field P   take the key from this field of each JSON record (e.g. traceId, attributes["k"])
                            (default without either: a random UUID per record)
large records (claim check):
  --offload-bucket B        upload records over --threshold to this bucket and put an S3 pointer instead
  --offload-prefix P        key prefix for offloaded payloads (default claim-check/)
  --threshold BYTES         size (data + partition key) above which a record is offloaded (default 921600)
  --large s3|chunk          s3 (default when --offload-bucket is given) or chunk: split into chunk records
  --chunk-bytes BYTES       payload bytes per chunk record (default 921600)
  --gzip                    gzip every record before the size check
AWS:
  -c, --config FILE         take region, credentials and endpoints from this worker config's aws: section
  --region R  --kinesis-endpoint URL  --s3-endpoint URL
  --concurrency N           PutRecords calls in flight (default 4)
`;

export async function produceCommand(args: string[]): Promise<number> {
  const parsed = parseCommandArgs('produce', PRODUCE_USAGE, args, {
    stream: { type: 'string' },
    file: { type: 'string' },
    'synthetic-spans': { type: 'string' },
    'every-ms': { type: 'string' },
    format: { type: 'string', default: 'lines' },
    'partition-key': { type: 'string' },
    'partition-key-field': { type: 'string' },
    'offload-bucket': { type: 'string' },
    'offload-prefix': { type: 'string' },
    threshold: { type: 'string' },
    large: { type: 'string' },
    'chunk-bytes': { type: 'string' },
    gzip: { type: 'boolean', default: false },
    config: { type: 'string', short: 'c' },
    region: { type: 'string' },
    'kinesis-endpoint': { type: 'string' },
    's3-endpoint': { type: 'string' },
    concurrency: { type: 'string' },
  });
  if (!parsed) return 0;
  const values: Record<string, string | boolean | undefined> = parsed.values;
  const fail = (message: string) => {
    process.stderr.write(`produce: ${message}\n`);
    return 2;
  };
  const stream = values.stream as string | undefined;
  if (!stream) return fail('missing --stream NAME');
  const format = values.format as string;
  if (format !== 'lines' && format !== 'whole') return fail('--format is lines or whole');
  if (values['partition-key'] !== undefined && values['partition-key-field'] !== undefined) {
    return fail('give --partition-key or --partition-key-field, not both');
  }
  const int = (name: string): number | undefined => {
    const v = values[name] as string | undefined;
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got "${v}"`);
    return n;
  };

  let awsSection: unknown = {};
  if (values.config) {
    const doc = parseDocument(readFileSync(values.config as string, 'utf8'));
    if (doc.errors.length > 0) return fail(`${values.config}: ${doc.errors[0]!.message}`);
    const problems: Array<{ path: string; message: string }> = [];
    awsSection = interpolate((doc.toJS() as { aws?: unknown })?.aws ?? {}, process.env, problems);
    if (problems.length > 0) return fail(`${values.config}: ${problems.map((p) => p.message).join('; ')}`);
  }
  const aws = awsConfigSchema.safeParse(awsSection);
  if (!aws.success)
    return fail(
      `aws section: ${aws.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  const awsConfig = aws.data;
  if (values.region) awsConfig.region = values.region as string;
  if (values['kinesis-endpoint']) awsConfig.endpoints.kinesis = values['kinesis-endpoint'] as string;
  if (values['s3-endpoint']) awsConfig.endpoints.s3 = values['s3-endpoint'] as string;

  let claimCheck: ReturnType<typeof claimCheckConfigSchema.parse>;
  let concurrency: number | undefined;
  try {
    concurrency = int('concurrency');
    const parsed = claimCheckConfigSchema.safeParse({
      large: values.large ?? (values['offload-bucket'] ? 's3' : 'chunk'),
      ...(values['offload-bucket'] ? { bucket: values['offload-bucket'] } : {}),
      ...(values['offload-prefix'] !== undefined ? { prefix: values['offload-prefix'] } : {}),
      ...(int('threshold') !== undefined ? { thresholdBytes: int('threshold') } : {}),
      ...(int('chunk-bytes') !== undefined ? { chunkBytes: int('chunk-bytes') } : {}),
      gzip: values.gzip === true,
    });
    if (!parsed.success) {
      return fail(
        parsed.error.issues
          .map(
            (i) => `${i.path.join('.') === 'bucket' ? '--offload-bucket' : i.path.join('.')}: ${i.message}`,
          )
          .join('; '),
      );
    }
    claimCheck = parsed.data;
  } catch (err) {
    return fail((err as Error).message);
  }

  let synthetic: number | undefined;
  let everyMs: number | undefined;
  try {
    synthetic = int('synthetic-spans');
    everyMs = int('every-ms');
  } catch (err) {
    return fail((err as Error).message);
  }
  if (everyMs !== undefined && synthetic === undefined) return fail('--every-ms needs --synthetic-spans');
  if (synthetic !== undefined && values.file) return fail('give --file or --synthetic-spans, not both');
  const records: ProducerRecord[] = [];
  if (synthetic === undefined) {
    const read = readRecords(values, format);
    if (typeof read === 'string') return fail(read);
    records.push(...read);
  }
  if (synthetic === undefined && records.length === 0) return fail('no records in the input');

  const clients = createAwsClients(awsConfig);
  try {
    const kinesis = new KinesisProducer(clients.kinesis, stream, concurrency ? { concurrency } : {});
    const producer = new ClaimCheckProducer(kinesis, clients.s3, claimCheck);
    if (synthetic !== undefined) return await produceSynthetic(producer, stream, synthetic, everyMs);
    const results = await producer.put(records);
    const shards: Record<string, number> = {};
    for (const r of results) shards[r.shardId] = (shards[r.shardId] ?? 0) + 1;
    process.stdout.write(
      `${JSON.stringify({
        stream,
        records: results.length,
        inline: results.filter((r) => r.carried === 'inline').length,
        offloaded: results.filter((r) => r.carried === 's3').length,
        chunked: results.filter((r) => r.carried === 'chunks').length,
        putCalls: kinesis.stats.calls,
        retriedEntries: kinesis.stats.retriedEntries,
        shards,
        results: results.length <= 20 ? results : undefined,
      })}\n`,
    );
    return 0;
  } finally {
    clients.destroy();
  }
}

function splitLines(input: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= input.byteLength; i++) {
    if (i === input.byteLength || input[i] === 0x0a) {
      let end = i;
      if (end > start && input[end - 1] === 0x0d) end -= 1;
      const line = input.subarray(start, end);
      if (line.toString('utf8').trim() !== '') out.push(line);
      start = i + 1;
    }
  }
  return out;
}

/** Reads records from --file or stdin; a string is the error message. */
function readRecords(
  values: Record<string, string | boolean | undefined>,
  format: string,
): ProducerRecord[] | string {
  const input = values.file ? readFileSync(values.file as string) : readFileSync(0);
  const keyPath = values['partition-key-field']
    ? parseFieldPath(values['partition-key-field'] as string)
    : undefined;
  const records: ProducerRecord[] = [];
  const payloads = format === 'whole' ? [input] : splitLines(input);
  for (const [n, data] of payloads.entries()) {
    let partitionKey = (values['partition-key'] as string | undefined) ?? randomUUID();
    if (keyPath) {
      let key: unknown;
      try {
        key = getPath(JSON.parse(data.toString('utf8')), keyPath);
      } catch (err) {
        return `record ${n + 1}: not JSON, so --partition-key-field cannot apply (${(err as Error).message})`;
      }
      if (typeof key !== 'string' && typeof key !== 'number') {
        return `record ${n + 1}: field ${values['partition-key-field']} is missing or not a string`;
      }
      partitionKey = String(key);
    }
    records.push({ partitionKey, data });
  }
  return records;
}

/** Puts `count` synthetic spans, once or every `everyMs` until SIGTERM/SIGINT; prints a line per round. */
async function produceSynthetic(
  producer: ClaimCheckProducer,
  stream: string,
  count: number,
  everyMs: number | undefined,
): Promise<number> {
  let stop = false;
  const onSignal = () => {
    stop = true;
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  let round = 0;
  let total = 0;
  try {
    do {
      const started = Date.now();
      // A new seed per round: fresh trace ids, same shape.
      const records = [
        ...generateSpans(count, { seed: 42 + round, startNanos: BigInt(Date.now()) * 1_000_000n }),
      ].map(spanRecord);
      await producer.put(records);
      total += records.length;
      round += 1;
      process.stdout.write(`${JSON.stringify({ stream, round, records: records.length, total })}\n`);
      if (everyMs === undefined) break;
      await sleep(Math.max(0, everyMs - (Date.now() - started)));
    } while (!stop);
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
  return 0;
}
