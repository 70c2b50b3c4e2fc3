/** The Parquet sink's manifest codec and replay index: what decides which replayed events are skipped. */
import assert from 'node:assert/strict';
import { describe, test } from 'vitest';
import {
  decodePositions,
  type EventPosition,
  encodePositions,
  parseManifest,
  ReplayIndex,
} from '../../src/sinks/s3-parquet/manifest.js';

const p = (sequenceNumber: string, subSequenceNumber = 0, index = 0): EventPosition => ({
  sequenceNumber,
  subSequenceNumber,
  index,
});

describe('positions', () => {
  test('encode and decode round-trip: big sequence numbers, KPL sub-records, index ranges', () => {
    const big = '49680515853589717742284684823867824539755868171486101506';
    const positions = [
      p(big),
      p(big, 3),
      p(big, 3, 1),
      p(big, 3, 2),
      p(big, 3, 5),
      p((BigInt(big) + 1n).toString(), 0, 0),
      p((BigInt(big) + 9n).toString(), 0, 4),
    ];
    const text = encodePositions(positions);
    const back: EventPosition[] = [];
    decodePositions(text, (sequenceNumber, subSequenceNumber, ranges) => {
      for (const [a, b] of ranges)
        for (let i = a; i <= b; i++) back.push(p(sequenceNumber, subSequenceNumber, i));
    });
    assert.deepEqual(back, positions);
  });
});

describe('ReplayIndex', () => {
  test('takes each listed event once, and nothing else', () => {
    const index = new ReplayIndex();
    index.add(encodePositions([p('100'), p('101', 0, 0), p('101', 0, 1), p('105', 2)]));
    assert.equal(index.size, 4);
    assert.equal(index.take('101', 0, 1), true);
    assert.equal(index.take('101', 0, 1), false, 'at most once per run');
    assert.equal(index.take('102', 0, 0), false);
    assert.equal(index.take('105', 0, 0), false, 'sub-sequence numbers are part of the position');
    assert.equal(index.take('105', 2, 0), true);
  });

  test('a malformed list adds nothing, not even the entries before the bad one', () => {
    const index = new ReplayIndex();
    assert.throws(
      () => index.add(`${encodePositions([p('100'), p('101')])};x`),
      /malformed position entry "x"/,
    );
    assert.throws(() => index.add('100:5-2'), /malformed index range 5-2/);
    assert.equal(index.size, 0);
    assert.equal(index.take('100', 0, 0), false);
  });
});

describe('parseManifest', () => {
  const good = { version: 1, fileId: 'f', dataKey: 'k.parquet', positions: '100', bucket: 'b' };

  test('accepts a manifest of ours', () => {
    const parsed = parseManifest(JSON.stringify(good));
    assert.ok('manifest' in parsed);
    assert.equal(parsed.manifest.dataKey, 'k.parquet');
  });

  test('names what is wrong with anything else', () => {
    const text = JSON.stringify(good);
    const problem = (t: string) => {
      const parsed = parseManifest(t);
      return 'problem' in parsed ? parsed.problem : undefined;
    };
    assert.match(problem(text.slice(0, 20)) ?? '', /^not JSON/);
    assert.equal(problem('[1]'), 'not an object');
    assert.equal(problem('null'), 'not an object');
    assert.equal(problem(JSON.stringify({ ...good, version: 2 })), 'unknown version 2');
    assert.equal(problem(JSON.stringify({ ...good, fileId: 7 })), 'field fileId is missing or not a string');
    const { positions: _, ...noPositions } = good;
    assert.equal(problem(JSON.stringify(noPositions)), 'field positions is missing or not a string');
  });
});
