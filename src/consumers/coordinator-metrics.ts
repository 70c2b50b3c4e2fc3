/** The lease and shard metrics of the coordinator's modules (one place, so names and help stay one). */
import type { Registry } from 'prom-client';
import { counter, gauge, histogram, zeroSeries } from '../metrics/registry.js';

/** Per-shard series this worker exports; removed when the shard leaves it so stale values do not linger. */
export const PER_SHARD_METRICS = [
  'ksw_kinesis_millis_behind_latest',
  'ksw_shard_in_flight_bytes',
  'ksw_shard_in_flight_records',
  'ksw_shard_oldest_unacked_age_seconds',
  'ksw_lease_fencing_slack_seconds',
  'ksw_kinesis_last_answer_timestamp_seconds',
];

/** Stages of `ksw_shard_failures_total`. */
export const SHARD_FAILURE_STAGES = ['sink_open', 'deliver', 'sink', 'reader'] as const;
/** Reasons of `ksw_lease_losses_total`. */
export const LEASE_LOSS_REASONS = ['taken', 'deleted', 'fenced'] as const;

export function coordinatorMetrics(r: Registry, streams: readonly string[] = []) {
  const m = createCoordinatorMetrics(r);
  // Every series an alert takes increase() of exists from the start (see zeroSeries).
  zeroSeries(
    m.leaseLosses,
    LEASE_LOSS_REASONS.map((reason) => ({ reason })),
  );
  zeroSeries(m.leaseWriteErrors, [{ error: 'LeaseLost' }, { error: 'TimeoutError' }]);
  zeroSeries(
    m.shardFailures,
    streams.flatMap((stream) => SHARD_FAILURE_STAGES.map((stage) => ({ stream, stage }))),
  );
  return m;
}

function createCoordinatorMetrics(r: Registry) {
  const shardLabels = ['stream', 'shard'] as const;
  return {
    leasesHeld: gauge(r, { name: 'ksw_leases_held', help: 'Leases held by this worker' }),
    fairShare: gauge(r, {
      name: 'ksw_lease_fair_share',
      help: 'Leases this worker aims to hold: ceil(active leases / live workers)',
    }),
    scanIntervalSeconds: gauge(r, {
      name: 'ksw_lease_scan_interval_seconds',
      help: 'Delay before the next periodic lease-table scan: takeIntervalMs for a watcher or while leases move, stableTakeIntervalMs while the fleet is stable',
    }),
    workers: gauge(r, {
      name: 'ksw_fleet_workers',
      help: 'Live workers seen in the lease table (owners of unexpired leases, this one included)',
    }),
    leaseTakes: counter(r, {
      name: 'ksw_lease_takes_total',
      help: 'Leases taken, by reason: unowned, expired, own (a tenure of this process that ended while the row stayed its own, e.g. after fencing), handoff (received), forced (handoff not finished within failoverMs)',
      labelNames: ['reason'],
    }),
    leaseSteals: counter(r, {
      name: 'ksw_lease_steals_total',
      help: 'Graceful handoffs this worker started to move a lease from the most loaded worker (balancing)',
    }),
    handoffsGiven: counter(r, {
      name: 'ksw_lease_handoffs_given_total',
      help: 'Leases this worker handed to another after draining and checkpointing, by outcome: drained, partial (handoffTimeoutMs passed first), overruled (the new owner took it first)',
      labelNames: ['outcome'],
    }),
    leaseLosses: counter(r, {
      name: 'ksw_lease_losses_total',
      help: 'Leases lost without a handoff, by reason: taken (another worker or process owns it), deleted, fenced (no successful lease write within failoverMs - fencingMarginMs: this worker stopped the shard before anyone else may take it)',
      labelNames: ['reason'],
    }),
    idConflicts: counter(r, {
      name: 'ksw_worker_id_conflicts_total',
      help: 'Leases owned by this worker id but written by another live process (two processes started with one app.workerId). This process does not read them (it waits for them to expire); give every replica its own id.',
    }),
    shardEnds: counter(r, {
      name: 'ksw_shard_ends_total',
      help: 'Shards read to their end and checkpointed SHARD_END (after a split, merge or UpdateShardCount)',
      labelNames: ['stream'],
    }),
    shardFailures: counter(r, {
      name: 'ksw_shard_failures_total',
      help: 'Shards taken but not read on: a sink could not open the shard (stage sink_open), the chain failed on its records (stage deliver: a processor threw or a sink write failed), a sink cannot write them (stage sink: a permanent error such as access denied) or its reader crashed (stage reader). The lease is released and the shard read again from its checkpoint; a count that keeps rising means a shard nobody reads.',
      labelNames: ['stream', 'stage'],
    }),
    leasesCreated: counter(r, { name: 'ksw_leases_created_total', help: 'Leases created for new shards' }),
    leasesDeleted: counter(r, {
      name: 'ksw_leases_deleted_total',
      help: 'SHARD_END leases deleted because their shard left the stream',
    }),
    checkpoints: counter(r, {
      name: 'ksw_checkpoints_total',
      help: 'Checkpoints written',
      labelNames: shardLabels,
    }),
    checkpointErrors: counter(r, {
      name: 'ksw_checkpoint_errors_total',
      help: 'Failed checkpoint writes',
      labelNames: shardLabels,
    }),
    leaseWriteErrors: counter(r, {
      name: 'ksw_lease_write_errors_total',
      help: 'Failed lease table writes (take, renew, checkpoint, handoff, SHARD_END, release) after the SDK retries, by error: LeaseLost (a conditional check failed), TimeoutError (no answer before the call timeout, which stays below the fencing deadline) or the AWS error name (throttling, 5xx, network). A lost race to take a lease is not counted.',
      labelNames: ['error'],
    }),
    leaseWriteSeconds: histogram(r, {
      name: 'ksw_lease_write_seconds',
      help: 'Duration of successful lease writes, by operation (renew, checkpoint, take, ...): how much of the fencing period a write uses',
      labelNames: ['operation'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    }),
    fencingSlack: gauge(r, {
      name: 'ksw_lease_fencing_slack_seconds',
      help: 'Time left before the shard fences itself unless a lease write succeeds (deadline = send time of the last successful lease write + failoverMs - fencingMarginMs)',
      labelNames: shardLabels,
    }),
    inFlightBytes: gauge(r, {
      name: 'ksw_shard_in_flight_bytes',
      help: 'Record bytes fetched but not yet covered by the watermark',
      labelNames: shardLabels,
    }),
    inFlightRecords: gauge(r, {
      name: 'ksw_shard_in_flight_records',
      help: 'Records fetched but not yet covered by the watermark',
      labelNames: shardLabels,
    }),
    oldestUnacked: gauge(r, {
      name: 'ksw_shard_oldest_unacked_age_seconds',
      help: 'Age of the oldest record not yet covered by the watermark',
      labelNames: shardLabels,
    }),
  };
}

export type CoordinatorMetrics = ReturnType<typeof createCoordinatorMetrics>;
