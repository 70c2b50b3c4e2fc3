/**
 * `ksw inspect -c config.yaml [--json] [--no-lag]`: the lease table as the fleet sees it — per shard its
 * owner, lease counter, checkpoint (with sub-sequence number), parents/children, and lag; then per worker its
 * lease count against the fair share.
 *
 * Lag is measured at the checkpoint, not at a reader: one GetShardIterator (AFTER_SEQUENCE_NUMBER of the
 * checkpoint, or the sentinel's position) and one GetRecords (Limit 1) per open shard. `lagMs` is that call's
 * MillisBehindLatest (how far the checkpoint is behind the tip of the shard; 0 = nothing left to checkpoint),
 * and `oldestUncheckpointedAgeMs` the age of the first record after the checkpoint. It costs one of the
 * shard's 5 GetRecords calls per second; `--no-lag` skips it.
 */
import {
  GetRecordsCommand,
  GetShardIteratorCommand,
  type GetShardIteratorCommandInput,
  type KinesisClient,
} from '@aws-sdk/client-kinesis';

import { isSequenceCheckpoint, type Lease, LeaseTable, SHARD_END } from '../consumers/lease-table.js';
import { createAwsClients } from '../core/aws.js';
import { parseCommandArgs, required } from './args.js';

export interface LeaseReport {
  readonly leaseKey: string;
  readonly stream: string;
  readonly shardId: string;
  readonly owner: string | null;
  readonly handoffFrom: string | null;
  readonly leaseCounter: number;
  readonly checkpoint: string;
  readonly checkpointSubSequenceNumber: number;
  readonly pendingCheckpoint: string | null;
  readonly parents: readonly string[];
  readonly children: readonly string[];
  readonly lagMs: number | null;
  readonly oldestUncheckpointedAgeMs: number | null;
  readonly lagError?: string;
}

async function lagAt(
  kinesis: KinesisClient,
  stream: string,
  lease: Lease,
): Promise<{ lagMs: number | null; oldestUncheckpointedAgeMs: number | null; lagError?: string }> {
  if (lease.checkpoint === SHARD_END || lease.checkpoint === 'LATEST')
    return { lagMs: lease.checkpoint === 'LATEST' ? 0 : null, oldestUncheckpointedAgeMs: null };
  const input: GetShardIteratorCommandInput = isSequenceCheckpoint(lease.checkpoint)
    ? {
        StreamName: stream,
        ShardId: lease.leaseKey.slice(lease.leaseKey.lastIndexOf(':') + 1),
        ShardIteratorType: 'AFTER_SEQUENCE_NUMBER',
        StartingSequenceNumber: lease.checkpoint,
      }
    : {
        StreamName: stream,
        ShardId: lease.leaseKey.slice(lease.leaseKey.lastIndexOf(':') + 1),
        ShardIteratorType: 'TRIM_HORIZON',
      };
  try {
    const it = await kinesis.send(new GetShardIteratorCommand(input));
    const out = await kinesis.send(new GetRecordsCommand({ ShardIterator: it.ShardIterator, Limit: 1 }));
    const first = out.Records?.[0]?.ApproximateArrivalTimestamp;
    return {
      lagMs: out.MillisBehindLatest ?? null,
      oldestUncheckpointedAgeMs: first ? Math.max(0, Date.now() - first.getTime()) : 0,
    };
  } catch (err) {
    return { lagMs: null, oldestUncheckpointedAgeMs: null, lagError: (err as Error).name };
  }
}

export async function inspectLeases(opts: {
  configFile: string;
  lag: boolean;
}): Promise<{ leases: LeaseReport[]; workers: Record<string, number>; fairShare: number }> {
  const { loadConfig } = await import('../config/load.js');
  const config = loadConfig(opts.configFile);
  const aws = createAwsClients(config.aws);
  try {
    const rows = await new LeaseTable(aws.dynamodb, config.checkpoints.table).list();
    const single = config.consumers.length === 1 ? config.consumers[0]!.stream : undefined;
    const reports = await Promise.all(
      rows
        .sort((a, b) => a.leaseKey.localeCompare(b.leaseKey))
        .map(async (lease): Promise<LeaseReport> => {
          const at = lease.leaseKey.indexOf(':');
          const stream = single ?? (at > 0 ? lease.leaseKey.slice(0, at) : '?');
          const shardId = single ? lease.leaseKey : lease.leaseKey.slice(at + 1);
          const lag = opts.lag
            ? await lagAt(aws.kinesis, stream, lease)
            : { lagMs: null, oldestUncheckpointedAgeMs: null };
          return {
            leaseKey: lease.leaseKey,
            stream,
            shardId,
            owner: lease.leaseOwner ?? null,
            handoffFrom: lease.checkpointOwner ?? null,
            leaseCounter: lease.leaseCounter,
            checkpoint: lease.checkpoint,
            checkpointSubSequenceNumber: lease.checkpointSubSequenceNumber,
            pendingCheckpoint: lease.pendingCheckpoint?.sequenceNumber ?? null,
            parents: lease.parentShardIds,
            children: lease.childShardIds,
            ...lag,
          };
        }),
    );
    const workers: Record<string, number> = {};
    const active = reports.filter((r) => r.checkpoint !== SHARD_END);
    for (const r of active) if (r.owner) workers[r.owner] = (workers[r.owner] ?? 0) + 1;
    const live = Object.keys(workers).length;
    return { leases: reports, workers, fairShare: live === 0 ? 0 : Math.ceil(active.length / live) };
  } finally {
    aws.destroy();
  }
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

const INSPECT_USAGE = `usage: ksw inspect -c FILE [--json] [--no-lag]

Prints the lease table of a config's application: owner, lease counter, checkpoint, lag per shard (one
GetRecords per shard at its checkpoint), parents and children, leases per worker and the fair share.

  -c, --config FILE   the worker config (its aws: and checkpoints: sections are used)
  --json              print the report as JSON
  --no-lag            skip the GetRecords calls (no lag column)
`;

export async function inspectCommand(args: string[]): Promise<number> {
  const parsed = parseCommandArgs('inspect', INSPECT_USAGE, args, {
    config: { type: 'string', short: 'c' },
    json: { type: 'boolean', default: false },
    'no-lag': { type: 'boolean', default: false },
  });
  if (!parsed) return 0;
  const { values } = parsed;
  const configFile = required('inspect', values.config, '-c/--config FILE');
  const report = await inspectLeases({ configFile, lag: !values['no-lag'] });
  if (values.json) {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return 0;
  }
  const ms = (v: number | null) => (v === null ? '-' : String(v));
  const rows = [
    [
      'LEASE',
      'OWNER',
      'COUNTER',
      'CHECKPOINT',
      'SUB',
      'LAG_MS',
      'OLDEST_UNCHECKPOINTED_MS',
      'PARENTS',
      'CHILDREN',
    ],
    ...report.leases.map((l) => [
      l.leaseKey,
      (l.owner ?? '-') + (l.handoffFrom ? ` (from ${l.handoffFrom})` : ''),
      String(l.leaseCounter),
      l.checkpoint + (l.pendingCheckpoint ? ` (pending ${l.pendingCheckpoint})` : ''),
      String(l.checkpointSubSequenceNumber),
      l.lagError ? `error: ${l.lagError}` : ms(l.lagMs),
      ms(l.oldestUncheckpointedAgeMs),
      l.parents.join(',') || '-',
      l.children.join(',') || '-',
    ]),
  ];
  process.stdout.write(`${table(rows)}\n\n`);
  const owners = Object.entries(report.workers)
    .map(([w, n]) => `${w}: ${n}`)
    .join(', ');
  process.stdout.write(
    `workers owning leases: ${Object.keys(report.workers).length} (${owners || 'none'}); fair share ${report.fairShare}; ` +
      `${report.leases.filter((l) => l.checkpoint === SHARD_END).length} finished (SHARD_END)\n`,
  );
  return 0;
}
