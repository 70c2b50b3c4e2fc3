/**
 * The OpenSearch sink and lease tenures, against a small fake bulk endpoint: documents of a tenure that
 * ended are never sent again (queued, or waiting for a retry after a 429), closeShard waits for the bulk
 * requests already carrying some, and flushShard sends one tenure's documents now.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import { awsConfigSchema, createAwsClients } from '../../src/core/aws.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { ShardTenure } from '../../src/core/tenure.js';
import { openSearchSinkConfigSchema } from '../../src/sinks/opensearch/config.js';
import { OpenSearchSink } from '../../src/sinks/opensearch/sink.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';
import { silentLogger } from '../helpers/stack.js';

describe('OpenSearch sink and lease tenures (fake bulk endpoint)', () => {
  let server: Server;
  let endpoint: string;
  /** Document ids per bulk request received. */
  const requests: string[][] = [];
  /** Ids answered with a 429 (retry later) on their first attempt. */
  const throttleOnce = new Set<string>();

  beforeAll(async () => {
    server = createServer(async (req, res) => {
      const parts: Buffer[] = [];
      for await (const p of req) parts.push(p as Buffer);
      const lines = Buffer.concat(parts).toString('utf8').split('\n').filter(Boolean);
      const ids: string[] = [];
      for (let i = 0; i < lines.length; i += 2) {
        ids.push((JSON.parse(lines[i]!) as { create: { _id: string } }).create._id);
      }
      requests.push(ids);
      const items = ids.map((id) => {
        if (throttleOnce.delete(id))
          return {
            create: {
              _id: id,
              status: 429,
              error: { type: 'es_rejected_execution_exception', reason: 'busy' },
            },
          };
        return { create: { _id: id, status: 201 } };
      });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: items.some((i) => i.create.status !== 201), items }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  function sink() {
    const aws = createAwsClients(
      awsConfigSchema.parse({ credentials: { accessKeyId: 'a', secretAccessKey: 'b' } }),
    );
    const s = new OpenSearchSink(
      'search',
      openSearchSinkConfigSchema.parse({
        type: 'opensearch',
        endpoint,
        index: 'docs',
        documentId: { field: 'id' },
        bulk: { flushIntervalMs: 60_000, maxDocuments: 1_000 },
        retry: { initialBackoffMs: 300, maxBackoffMs: 300 },
      }),
      { logger: silentLogger, metrics: new Registry(), aws, dlq: new MemoryDeadLetterQueue() },
      // No jitter: a retry waits the whole 300 ms backoff, long enough for the test to end the tenure first.
      { random: () => 0.999 },
    );
    return { s, aws };
  }

  function doc(
    tenure: ShardTenure,
    id: string,
    shardId = tenure.shardId,
  ): PipelineEvent & { acked: () => boolean } {
    let acked = false;
    return {
      origin: origin('1', { shardId }),
      index: 0,
      value: { id },
      raw: Buffer.from('{}'),
      ack: new Ack(() => {
        acked = true;
      }, tenure),
      acked: () => acked,
    };
  }

  it('documents of an ended tenure are dropped from the queue and from the retries, and never sent again', async () => {
    requests.length = 0;
    const { s, aws } = sink();
    const lost = new ShardTenure('s', 'shardId-000000000000', 'p.1');
    const kept = new ShardTenure('s', 'shardId-000000000001', 'p.2');
    throttleOnce.add('lost-retry');
    const retried = doc(lost, 'lost-retry');
    const first = doc(kept, 'kept-1');
    await s.write([retried, first]);
    // One bulk request carries both; kept-1 is written, lost-retry waits for its backoff.
    await s.flushShard(kept);
    assert.ok(first.acked());
    const queued = doc(lost, 'lost-queued');
    const other = doc(kept, 'kept-2');
    await s.write([queued, other]);
    lost.end('lost');
    await s.closeShard(lost);
    await s.write([doc(lost, 'lost-after-end')]);
    await s.flushShard(kept);
    await new Promise((r) => setTimeout(r, 600)); // past the retry backoff
    await s.close();
    aws.destroy();
    const sent = requests.flat();
    assert.deepEqual(
      sent.filter((id) => id.startsWith('lost')),
      ['lost-retry'],
      'only its first attempt, before the end',
    );
    assert.ok(other.acked());
    assert.equal(retried.acked(), false);
    assert.equal(queued.acked(), false);
  });

  it("flushShard sends the tenure's documents now and waits for them; others stay queued", async () => {
    requests.length = 0;
    const { s, aws } = sink();
    const a = new ShardTenure('s', 'shardId-000000000000', 'q.1');
    const b = new ShardTenure('s', 'shardId-000000000001', 'q.2');
    const ofA = doc(a, 'a-1');
    const ofB = doc(b, 'b-1');
    await s.write([ofA, ofB]);
    await s.flushShard(a);
    assert.ok(ofA.acked());
    await s.close();
    aws.destroy();
    assert.ok(ofB.acked());
  });
});
