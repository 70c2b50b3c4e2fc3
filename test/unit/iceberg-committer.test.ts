import assert from 'node:assert/strict';
import pino from 'pino';
import { describe, it } from 'vitest';
import { ShardTenure } from '../../src/core/tenure.js';
import { TableCommitter } from '../../src/sinks/s3-parquet/iceberg/committer.js';
import type { CommitFile, CommitResult, IcebergTable } from '../../src/sinks/s3-parquet/iceberg/table.js';
import { ManualClock } from '../helpers/manual-clock.js';

/** A table that records each commit's file names; `failNext` makes the next commits throw. */
function fakeTable() {
  const commits: string[][] = [];
  const state = { failNext: 0, conflicts: 0 };
  const table = {
    async commit(files: readonly CommitFile[]): Promise<CommitResult> {
      if (state.failNext > 0) {
        state.failNext -= 1;
        throw new Error('catalog unavailable');
      }
      commits.push(files.map((f) => f.name));
      return {
        snapshotId: commits.length,
        added: files.length,
        skipped: 0,
        conflicts: state.conflicts,
        metadataLocation: undefined,
      };
    },
  } as unknown as IcebergTable;
  return { table, commits, state };
}

function file(name: string): CommitFile {
  return { path: `s3://b/${name}`, name, shard: 's/shardId-0', sizeBytes: 1, records: 1, partition: [] };
}

function acks() {
  const a = {
    acked: 0,
    done: () => {
      a.acked += 1;
    },
  };
  return a;
}

function committer(table: IcebergTable, opts: Partial<ConstructorParameters<typeof TableCommitter>[0]> = {}) {
  return new TableCommitter({
    table,
    commitIntervalMs: 50,
    maxFilesPerCommit: 100,
    logger: pino({ level: 'silent' }),
    signal: new AbortController().signal,
    backoff: { baseMs: 1, maxMs: 5 },
    ...opts,
  });
}

describe('TableCommitter', () => {
  const tenure = () => new ShardTenure('s', 'shardId-0', 'p1', new ManualClock());

  it('commits the files of an interval together, then acks them; not before', async () => {
    const { table, commits } = fakeTable();
    const seen: number[] = [];
    const c = committer(table, { onCommit: (r) => seen.push(r.files), onWaiting: () => undefined });
    const t = tenure();
    const a = acks();
    const b = acks();
    const pa = c.add(file('a'), t, [a]);
    const pb = c.add(file('b'), t, [b, b]);
    assert.equal(c.pending, 2);
    await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual([commits.length, a.acked], [0, 0], 'waits for the interval');
    await Promise.all([pa, pb]);
    assert.deepEqual(commits, [['a', 'b']]);
    assert.deepEqual([a.acked, b.acked], [1, 2]);
    assert.deepEqual(seen, [2]);
  });

  it('commits at once when maxFilesPerCommit wait, and while hurried', async () => {
    const { table, commits } = fakeTable();
    const c = committer(table, { commitIntervalMs: 600_000, maxFilesPerCommit: 2 });
    const t = tenure();
    await Promise.all([c.add(file('a'), t, []), c.add(file('b'), t, [])]);
    assert.deepEqual(commits, [['a', 'b']]);
    c.hurry(1);
    await c.add(file('c'), t, []);
    c.hurry(-1);
    assert.deepEqual(commits, [['a', 'b'], ['c']]);
    const late = c.add(file('d'), t, []);
    await c.drain();
    await late;
    assert.deepEqual(commits.at(-1), ['d']);
  });

  it('retries a failed commit; an ended tenure drops its waiting files unacked', async () => {
    const { table, commits, state } = fakeTable();
    let errors = 0;
    const c = committer(table, {
      onError: () => {
        errors += 1;
      },
    });
    const live = tenure();
    const ended = new ShardTenure('s', 'shardId-1', 'p2', new ManualClock());
    const a = acks();
    const b = acks();
    state.failNext = 2;
    const pa = c.add(file('a'), live, [a]);
    const pb = c.add(file('b'), ended, [b]);
    ended.end('lost');
    c.closeShard(ended);
    await Promise.all([pa, pb]);
    assert.equal(errors, 2);
    assert.deepEqual(commits, [['a']]);
    assert.deepEqual([a.acked, b.acked], [1, 0]);
  });

  it('close drops what waits, unacked', async () => {
    const { table, commits } = fakeTable();
    const c = committer(table, { commitIntervalMs: 600_000 });
    const a = acks();
    const p = c.add(file('a'), tenure(), [a]);
    c.close();
    await p;
    assert.deepEqual([commits.length, a.acked], [0, 0]);
  });
});
