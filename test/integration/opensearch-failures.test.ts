/**
 * The OpenSearch sink's failure handling, against a scripted HTTP peer on 127.0.0.1 that answers status
 * codes only: per bulk item just `status` (all the sink asks for with `filter_path`), or a refusal of the
 * whole request. No OpenSearch behaviour is claimed here (the sink against a real node, with faults
 * injected into its real answers, is test/services/opensearch-sink.test.ts); what is tested is what the
 * sink does with each kind of failure: an oversized request is halved until the document that causes it
 * goes alone and only that one is dead-lettered; an answer that does not answer item by item is trusted
 * for none of them; a permanent refusal at start-up fails start-up at once, naming the endpoint and the
 * server's reason; an unreachable endpoint fails it at the bootstrap deadline; and close gives up on
 * documents that keep failing without acking or dead-lettering them (they are read again), also with a
 * request in flight (which once crashed the process with an uncaught RequestAbortedError). Field offload
 * against an S3 that fails: the document is indexed only once its object is written, and a close or an
 * ended tenure while S3 keeps failing leaves the record unacked.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import { type AwsClients, awsConfigSchema, createAwsClients } from '../../src/core/aws.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { detachedTenure, ShardTenure } from '../../src/core/tenure.js';
import { freePort } from '../../src/local/emulators.js';
import { openSearchSinkConfigSchema } from '../../src/sinks/opensearch/config.js';
import { OpenSearchSink } from '../../src/sinks/opensearch/sink.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';
import { silentLogger } from '../helpers/stack.js';

interface BulkRequest {
  /** The documents of the request, parsed (every second NDJSON line). */
  readonly docs: Array<Record<string, unknown>>;
}
type Answer = { status: number; body: unknown };
type Script = (req: IncomingMessage, bulk: BulkRequest | undefined) => Answer | Promise<Answer>;

/** A peer that answers each request as `script` says, and records the bulk requests it saw. */
class ScriptedPeer {
  readonly bulks: BulkRequest[] = [];
  readonly requests: string[] = [];
  script: Script = () => ({ status: 200, body: {} });
  private constructor(private readonly server: Server) {}

  static async start(): Promise<ScriptedPeer> {
    const server = createServer();
    const peer = new ScriptedPeer(server);
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', async () => {
        peer.requests.push(`${req.method} ${req.url?.split('?')[0]}`);
        let bulk: BulkRequest | undefined;
        if (req.url?.startsWith('/_bulk')) {
          const lines = Buffer.concat(chunks).toString().split('\n').filter(Boolean);
          bulk = { docs: lines.filter((_, i) => i % 2 === 1).map((l) => JSON.parse(l)) };
          peer.bulks.push(bulk);
        }
        let answer: Answer;
        try {
          answer = await peer.script(req, bulk);
        } catch (err) {
          answer = { status: 599, body: `scripted peer: ${(err as Error).stack}` }; // a broken script fails loudly
        }
        if (res.destroyed) return;
        const text = typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body);
        res.writeHead(answer.status, {
          'content-type': typeof answer.body === 'string' ? 'text/html' : 'application/json',
        });
        res.end(req.method === 'HEAD' ? undefined : text);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return peer;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

/** Every item indexed: `{"create": {"status": 201}}` per document. */
const created = (bulk: BulkRequest): Answer => ({
  status: 200,
  body: { errors: false, items: bulk.docs.map(() => ({ create: { status: 201 } })) },
});

const aws = createAwsClients(
  awsConfigSchema.parse({ credentials: { accessKeyId: 'x', secretAccessKey: 'y' }, region: 'us-east-1' }),
);

function harness(
  config: Record<string, unknown>,
  bootstrapTimeoutMs = 5_000,
  clients: AwsClients = aws,
  tenure = detachedTenure({ stream: 's', shardId: 'shardId-000000000000' }),
) {
  const dlq = new MemoryDeadLetterQueue();
  const metrics = new Registry();
  const sink = new OpenSearchSink(
    'os',
    openSearchSinkConfigSchema.parse({ type: 'opensearch', index: 'docs', ...config }),
    { logger: silentLogger, metrics, aws: clients, dlq },
    { random: () => 0.5, bootstrapTimeoutMs },
  );
  const acked: string[] = [];
  return {
    sink,
    dlq,
    acked,
    async write(values: Array<Record<string, unknown>>) {
      const events: PipelineEvent[] = values.map((value, i) => ({
        origin: origin(String(100 + i)),
        index: 0,
        value,
        raw: Buffer.from(JSON.stringify(value)),
        ack: new Ack(() => acked.push(String(value.n)), tenure),
      }));
      await sink.write(events);
    },
    async metric(name: string, labels: Record<string, string> = {}) {
      const m = await metrics.getSingleMetric(name)?.get();
      return (m?.values ?? [])
        .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
        .reduce((sum, v) => sum + v.value, 0);
    },
  };
}

describe('OpenSearch sink: failure handling against a scripted peer', () => {
  let peer: ScriptedPeer;
  beforeAll(async () => {
    peer = await ScriptedPeer.start();
  });
  afterAll(async () => {
    await peer.stop();
    aws.destroy();
  });

  it('a 413 halves the request until the oversized document goes alone; only it is dead-lettered', async () => {
    peer.bulks.length = 0;
    // Like a node behind a proxy with a body limit: any request carrying the big document is refused whole.
    peer.script = (_req, bulk) =>
      bulk?.docs.some((d) => typeof d.blob === 'string')
        ? { status: 413, body: '<html><body>413 Request Entity Too Large</body></html>' }
        : created(bulk!);
    const h = harness({
      endpoint: peer.endpoint,
      bulk: { maxDocuments: 8, flushIntervalMs: 20 },
      retry: { initialBackoffMs: 10 },
    });
    const values = Array.from({ length: 8 }, (_, n) => (n === 5 ? { n, blob: 'x'.repeat(1000) } : { n }));
    await h.write(values);
    await h.sink.flush();
    await h.sink.close();
    assert.deepEqual(
      h.acked.map(Number).sort((a, b) => a - b),
      [0, 1, 2, 3, 4, 5, 6, 7],
      'every document acked once (the big one once dead-lettered)',
    );
    assert.equal(h.dlq.letters.length, 1);
    assert.deepEqual(JSON.parse(Buffer.from(h.dlq.letters[0]!.data).toString()), values[5]);
    assert.match(h.dlq.letters[0]!.reason, /^bulk request failed: ResponseError 413: <html>/);
    // 8 -> 4+4 -> (2+2) -> (1+1): the document is isolated in log2(8) = 3 halvings.
    assert.deepEqual(
      peer.bulks.map((b) => b.docs.length),
      [8, 4, 4, 2, 2, 1, 1],
    );
    const indexed = peer.bulks
      .filter((b) => !b.docs.some((d) => typeof d.blob === 'string'))
      .flatMap((b) => b.docs.map((d) => d.n));
    assert.deepEqual(indexed.sort(), [0, 1, 2, 3, 4, 6, 7], 'each of the others sent exactly once');
    assert.equal(await h.metric('ksw_opensearch_retries_total'), 0, 'halving is not a retry');
    assert.equal(await h.metric('ksw_opensearch_dead_letters_total', { reason: 'rejected' }), 1);
  });

  it('an answer that does not answer item by item is trusted for none: the request is retried whole', async () => {
    peer.bulks.length = 0;
    // The first answer holds fewer items than documents sent (a truncating proxy, a buggy gateway).
    peer.script = (_req, bulk) =>
      peer.bulks.length === 1
        ? { status: 200, body: { errors: false, items: [{ create: { status: 201 } }] } }
        : created(bulk!);
    const h = harness({
      endpoint: peer.endpoint,
      bulk: { maxDocuments: 3, flushIntervalMs: 20 },
      retry: { initialBackoffMs: 10 },
    });
    await h.write([{ n: 1 }, { n: 2 }, { n: 3 }]);
    await h.sink.flush();
    await h.sink.close();
    assert.deepEqual(
      peer.bulks.map((b) => b.docs.length),
      [3, 3],
    );
    assert.deepEqual(h.acked.sort(), ['1', '2', '3'], 'acked once each, after the trustworthy answer');
    assert.equal(await h.metric('ksw_opensearch_retries_total', { status_class: '5xx' }), 3);
    assert.equal(h.dlq.letters.length, 0);
  });

  it('a permanent refusal at start-up fails it at once, naming the endpoint and the reason', async () => {
    peer.requests.length = 0;
    peer.script = () => ({
      status: 403,
      body: {
        error: {
          type: 'security_exception',
          reason: 'no permissions for [indices:admin/index_template/put] and User [name=ksw]',
        },
        status: 403,
      },
    });
    const h = harness({ endpoint: peer.endpoint, template: { kind: 'spans', replicas: 0 } });
    const started = Date.now();
    const expected = new RegExp(
      `OpenSearch bootstrap failed at ${peer.endpoint}/?: ResponseError 403: security_exception: no permissions for \\[indices:admin/index_template/put\\]`,
    );
    await assert.rejects(h.sink.openShard(detachedTenure({ stream: 's', shardId: 'x' })), expected);
    assert.ok(Date.now() - started < 3_000, 'not retried until the bootstrap deadline');
    assert.equal(peer.requests.length, 1, `one request, not retried: ${peer.requests.join(', ')}`);
    await assert.rejects(h.write([{ n: 1 }]), expected);
    assert.equal(h.acked.length, 0, 'nothing acked while the sink cannot start');
    await h.sink.close();
  });

  it('start-up retries while the cluster answers 503 (still starting), then puts the template', async () => {
    peer.requests.length = 0;
    let unavailable = 2;
    peer.script = () => {
      if (unavailable > 0) {
        unavailable -= 1;
        return {
          status: 503,
          body: { error: { type: 'master_not_discovered_exception', reason: 'no master' } },
        };
      }
      return { status: 200, body: { acknowledged: true } };
    };
    const h = harness({ endpoint: peer.endpoint, template: { kind: 'spans', replicas: 0 } });
    await h.sink.openShard(detachedTenure({ stream: 's', shardId: 'x' }));
    await h.sink.close();
    // template.overwrite (the default) puts the template without looking first: two refused, one accepted.
    assert.deepEqual(peer.requests, [
      'PUT /_index_template/ksw-os',
      'PUT /_index_template/ksw-os',
      'PUT /_index_template/ksw-os',
    ]);
  });

  it('an unreachable endpoint fails start-up at the bootstrap deadline; close does not wait for it', async () => {
    const port = await freePort(); // nothing listens there
    const h = harness(
      { endpoint: `http://127.0.0.1:${port}`, template: { kind: 'spans', replicas: 0 } },
      1_500,
    );
    const started = Date.now();
    await assert.rejects(
      h.sink.openShard(detachedTenure({ stream: 's', shardId: 'x' })),
      new RegExp(`OpenSearch bootstrap failed at http://127\\.0\\.0\\.1:${port}/?: ConnectionError`),
    );
    const waited = Date.now() - started;
    assert.ok(waited >= 1_400 && waited < 10_000, `retried until the 1.5 s deadline (${waited} ms)`);

    // While start-up is still retrying, close ends it instead of waiting out the deadline.
    const again = harness(
      { endpoint: `http://127.0.0.1:${port}`, template: { kind: 'spans', replicas: 0 } },
      60_000,
    );
    await new Promise((r) => setTimeout(r, 300));
    const closing = Date.now();
    await again.sink.close();
    assert.ok(Date.now() - closing < 5_000, `close returned in ${Date.now() - closing} ms`);
    await assert.rejects(again.sink.openShard(detachedTenure({ stream: 's', shardId: 'x' })));
  });

  it('close gives up on documents that keep failing: neither acked nor dead-lettered (read again)', async () => {
    peer.bulks.length = 0;
    peer.script = () => ({
      status: 503,
      body: {
        error: { type: 'cluster_block_exception', reason: 'blocked by: [SERVICE_UNAVAILABLE/2/no master]' },
      },
    });
    const h = harness({
      endpoint: peer.endpoint,
      bulk: { flushIntervalMs: 20 },
      retry: { initialBackoffMs: 20, maxBackoffMs: 100, budgetMs: 60_000 },
      closeTimeoutMs: 500,
    });
    await h.write([{ n: 1 }, { n: 2 }]);
    const started = Date.now();
    await h.sink.close();
    const took = Date.now() - started;
    assert.ok(took >= 450 && took < 5_000, `close waited closeTimeoutMs (500 ms), took ${took} ms`);
    assert.ok(peer.bulks.length >= 2, `kept retrying until then (${peer.bulks.length} requests)`);
    assert.deepEqual(h.acked, [], 'no ack: the records stay unacknowledged and are read again');
    assert.equal(h.dlq.letters.length, 0, 'and not dead-lettered: the retry budget was not spent');
    await assert.rejects(h.write([{ n: 3 }]), /sink os is closed/);
  });

  it('close with a bulk request in flight abandons it without crashing the process; nothing acked', async () => {
    peer.bulks.length = 0;
    // The node never answers in time (a long GC pause, a partition): the request is in flight at close.
    peer.script = (_req, bulk) =>
      new Promise((resolve) => setTimeout(() => resolve(created(bulk!)), 3_000).unref());
    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown) => uncaught.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      const h = harness({ endpoint: peer.endpoint, bulk: { flushIntervalMs: 10 }, closeTimeoutMs: 200 });
      await h.write([{ n: 1 }, { n: 2 }]);
      while (peer.bulks.length === 0) await new Promise((r) => setTimeout(r, 10));
      const started = Date.now();
      await h.sink.close();
      assert.ok(
        Date.now() - started < 2_000,
        `close did not wait for the answer (${Date.now() - started} ms)`,
      );
      await new Promise((r) => setTimeout(r, 100)); // the abort's callbacks run on later ticks
      assert.deepEqual(uncaught.map(String), [], 'no uncaught exception from the aborted request');
      assert.deepEqual(h.acked, [], 'the abandoned documents are not acked (read again after restart)');
      assert.equal(h.dlq.letters.length, 0);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
  });

  /** The worker's clients with an S3 whose PutObject fails while `failing()` says so; puts are logged. */
  function flakyS3(log: string[], failing: () => boolean): AwsClients {
    const s3 = Object.create(aws.s3) as AwsClients['s3'];
    s3.send = (async (command: { input: { Key?: string } }) => {
      if (failing()) {
        log.push('s3 put failed');
        throw Object.assign(new Error('We encountered an internal error. Please try again.'), {
          name: 'InternalError',
          $metadata: { httpStatusCode: 500 },
        });
      }
      log.push(`s3 put ${command.input.Key}`);
      return { $metadata: {} };
    }) as never;
    return { ...aws, s3 };
  }

  const offload = { bucket: 'offload-bucket', maxFieldBytes: 100, fields: ['statement'] };

  it('field offload: the document is indexed only after its object is written; failed puts are retried', async () => {
    const log: string[] = [];
    let failures = 2;
    peer.bulks.length = 0;
    peer.script = (_req, bulk) => {
      log.push('bulk');
      return created(bulk!);
    };
    const h = harness(
      { endpoint: peer.endpoint, bulk: { flushIntervalMs: 10 }, offload },
      5_000,
      flakyS3(log, () => failures-- > 0),
    );
    const value = { n: 1, statement: `SELECT ${'x, '.repeat(100)}1` };
    await h.write([value]);
    await h.sink.flush();
    await h.sink.close();
    assert.deepEqual(log, [
      's3 put failed',
      's3 put failed',
      's3 put offload/docs/s/shardId-000000000000/100/0/0/statement.json',
      'bulk',
    ]);
    assert.deepEqual(h.acked, ['1']);
    const doc = peer.bulks[0]!.docs[0]!;
    assert.equal(doc.statement, undefined, 'the large field is not indexed');
    assert.ok((doc.offloaded as Record<string, unknown>).statement, 'a pointer stands in its place');
    assert.equal(typeof value.statement, 'string', "the event's own value is left alone");
    assert.equal(await h.metric('ksw_opensearch_offload_errors_total'), 2);
    assert.equal(await h.metric('ksw_opensearch_offloaded_fields_total'), 1);
  });

  it('field offload: while S3 keeps failing, a close or an ended tenure leaves the record unacked and unindexed', async () => {
    peer.bulks.length = 0;
    peer.script = (_req, bulk) => created(bulk!);
    const value = { n: 1, statement: 'y'.repeat(500) };

    const h = harness(
      { endpoint: peer.endpoint, offload },
      5_000,
      flakyS3([], () => true),
    );
    const writing = h.write([value]);
    await new Promise((r) => setTimeout(r, 300));
    await h.sink.close();
    await writing; // the write returns once the retrying offload is abandoned
    assert.deepEqual(h.acked, []);
    assert.equal(h.dlq.letters.length, 0);

    const tenure = new ShardTenure('s', 'shardId-000000000000', 'w1.1');
    const t = harness(
      { endpoint: peer.endpoint, offload },
      5_000,
      flakyS3([], () => true),
      tenure,
    );
    const writingTenure = t.write([value]);
    await new Promise((r) => setTimeout(r, 300));
    tenure.end('lost');
    await writingTenure;
    assert.deepEqual(
      t.acked,
      [],
      "an ended tenure's record is read again by the next tenure, not acked here",
    );
    await t.sink.close();
    assert.equal(peer.bulks.length, 0, 'nothing indexed without its object');
    assert.equal(t.dlq.letters.length, 0);
  });
});
