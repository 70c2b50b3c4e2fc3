import assert from 'node:assert/strict';
import { describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import { compareSequence } from '../../src/core/records.js';
import { ShardWatermark } from '../../src/core/watermark.js';

const pos = (n: number) => ({ sequenceNumber: String(n), subSequenceNumber: 0 });

describe('Ack', () => {
  it('completes the parent only after every part completed', () => {
    let done = 0;
    const ack = new Ack(() => done++);
    const [a, b, c] = ack.split(3);
    a!.done();
    b!.done();
    assert.equal(done, 0);
    c!.done();
    assert.equal(done, 1);
    assert.ok(ack.completed);
  });

  it('split(0) completes at once (deliberate drop) and a double done throws', () => {
    let done = 0;
    const ack = new Ack(() => done++);
    assert.deepEqual(ack.split(0), []);
    assert.equal(done, 1);
    assert.throws(() => ack.done(), /twice/);
  });

  it('nested splits: record -> events -> sinks', () => {
    let done = 0;
    const root = new Ack(() => done++);
    const events = root.split(2);
    const sinksA = events[0]!.split(2);
    const sinksB = events[1]!.split(2);
    for (const p of [...sinksA, sinksB[0]!]) p.done();
    assert.equal(done, 0);
    sinksB[1]!.done();
    assert.equal(done, 1);
  });
});

describe('ShardWatermark', () => {
  it('advances only over a contiguous acked prefix', () => {
    const wm = new ShardWatermark(1_000_000);
    const acks = [1, 2, 3, 4].map((n) => wm.register(pos(n), 10));
    acks[1]!.done();
    acks[2]!.done();
    assert.equal(wm.watermark, undefined, 'record 1 is not acked, nothing may be checkpointed');
    acks[0]!.done();
    assert.deepEqual(wm.watermark, pos(3));
    assert.equal(wm.inFlightRecords, 1);
    acks[3]!.done();
    assert.deepEqual(wm.watermark, pos(4));
  });

  it('starts from the checkpoint it resumes from', () => {
    const wm = new ShardWatermark(100, pos(41));
    assert.deepEqual(wm.watermark, pos(41));
    wm.register(pos(42), 1).done();
    assert.deepEqual(wm.watermark, pos(42));
  });

  it('applies backpressure on in-flight bytes and releases it when the watermark moves', async () => {
    const wm = new ShardWatermark(100);
    const a = wm.register(pos(1), 60);
    const b = wm.register(pos(2), 60);
    assert.equal(wm.hasCapacity, false);
    let released = false;
    const waiting = wm.waitForCapacity().then(() => {
      released = true;
    });
    b.done(); // acked but behind an unacked record: still in flight
    await new Promise((r) => setImmediate(r));
    assert.equal(released, false);
    a.done();
    await waiting;
    assert.equal(released, true);
    assert.equal(wm.inFlightBytes, 0);
  });

  it('drained() resolves when everything is acked', async () => {
    const wm = new ShardWatermark(100);
    const a = wm.register(pos(1), 1);
    let drained = false;
    const p = wm.drained().then(() => {
      drained = true;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(drained, false);
    a.done();
    await p;
    assert.ok(drained);
  });

  it('reports the age of the oldest unacked record', () => {
    let now = 1_000;
    const wm = new ShardWatermark(100, undefined, () => now);
    wm.register(pos(1), 1);
    now = 4_500;
    assert.equal(wm.oldestUnackedAgeMs, 3_500);
  });

  it('keeps a long-lived shard compact', () => {
    const wm = new ShardWatermark(1e12);
    for (let i = 1; i <= 20_000; i++) wm.register(pos(i), 1).done();
    assert.deepEqual(wm.watermark, pos(20_000));
    assert.equal(wm.inFlightRecords, 0);
  });
});

describe('compareSequence', () => {
  it('orders decimal sequence numbers of any length numerically', () => {
    assert.equal(compareSequence('9', '10'), -1);
    assert.equal(
      compareSequence(
        '49590338271490256608559692538361571095921575989136588898',
        '49590338271490256608559692538361571095921575989136588899',
      ),
      -1,
    );
    assert.equal(compareSequence('123', '123'), 0);
    assert.equal(compareSequence('200', '199'), 1);
  });
});
