import assert from 'node:assert/strict';
import { describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { SourceRecord } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { type HotKey, HotKeyDetector, hotKeyConfigSchema } from '../../src/processors/hot-keys.js';
import { origin } from '../helpers/fakes.js';

function records(
  key: string,
  count: number,
  bytes: number,
  atMs: number,
  shardId = 'shardId-000000000000',
): SourceRecord[] {
  return Array.from({ length: count }, (_, i) => ({
    origin: origin(String(atMs * 1000 + i), {
      partitionKey: key,
      arrivalTime: new Date(atMs + (i % 900)),
      shardId,
    }),
    data: new Uint8Array(bytes),
    ack: new Ack(() => {}),
  }));
}

describe('HotKeyDetector', () => {
  it('flags a key over the record-rate share when its window closes, not a spread of keys', async () => {
    const metrics = createRegistry(false);
    const found: HotKey[] = [];
    const d = new HotKeyDetector(hotKeyConfigSchema.parse({ share: 0.5 }), metrics, undefined, (h) =>
      found.push(h),
    );
    // Window [0,1000): "hot" has 600 of a 1,000 records/s budget; 300 other keys have 1 each.
    d.observe(records('hot', 600, 10, 0));
    for (let i = 0; i < 300; i++) d.observe(records(`k${i}`, 1, 10, 0));
    assert.equal(found.length, 0, 'judged only when the window closes');
    d.observe(records('late', 1, 10, 1_000));
    assert.deepEqual(
      found.map((h) => [h.partitionKey, h.records, Math.round(h.share * 100)]),
      [['hot', 600, 60]],
    );
    const text = await metrics.metrics();
    assert.match(text, /ksw_hot_partition_keys_total\{stream="s",shard="shardId-000000000000"\} 1/);
    assert.match(text, /ksw_partition_key_top_share\{stream="s",shard="shardId-000000000000"\} 0\.6/);
  });

  it('uses the byte budget when that is what the key uses more of, per shard', () => {
    const found: HotKey[] = [];
    const d = new HotKeyDetector(
      hotKeyConfigSchema.parse({ share: 0.5 }),
      createRegistry(false),
      undefined,
      (h) => found.push(h),
    );
    // 20 records of 40 KiB = 800 KiB: 78% of 1 MiB, only 2% of the record budget.
    d.observe(records('fat', 20, 40 * 1024, 5_000, 'shardId-000000000001'));
    d.observe(records('thin', 400, 10, 5_000, 'shardId-000000000002'));
    d.observe(records('x', 1, 1, 6_000, 'shardId-000000000001'));
    d.observe(records('x', 1, 1, 6_000, 'shardId-000000000002'));
    assert.deepEqual(
      found.map((h) => [h.shardId, h.partitionKey]),
      [['shardId-000000000001', 'fat']],
    );
  });

  it('measures by arrival time, so reading a backlog fast does not look hot', () => {
    const found: HotKey[] = [];
    const d = new HotKeyDetector(hotKeyConfigSchema.parse({}), createRegistry(false), undefined, (h) =>
      found.push(h),
    );
    // 3,000 records of one key written over 10 s (300/s, 30%), read in one go.
    for (let s = 0; s < 10; s++) d.observe(records('steady', 300, 10, s * 1000));
    d.observe(records('steady', 1, 10, 10_000));
    assert.equal(found.length, 0);
  });

  it('rejects a share outside (0, 1] at start-up', () => {
    assert.throws(() => hotKeyConfigSchema.parse({ share: 0 }));
    assert.throws(() => hotKeyConfigSchema.parse({ share: 1.5 }));
  });
});
