/**
 * Pure bulk logic of the OpenSearch sink: how one item's outcome is classified, and the adaptive
 * concurrency limit (AIMD) that backs off on 429s. No I/O here, so every rule has a unit test.
 */

/** An item's result in a bulk response (`items[i].create` / `items[i].index`). */
export interface BulkItemResult {
  readonly status: number;
  readonly error?:
    | { type?: string; reason?: string; caused_by?: { type?: string; reason?: string } }
    | string;
}

export type ItemOutcome =
  /** Written now. */
  | { readonly kind: 'indexed' }
  /** `create` of an id that exists: written before (a replay), so done. */
  | { readonly kind: 'exists' }
  | { readonly kind: 'retry'; readonly reason: string; readonly throttled: boolean }
  | { readonly kind: 'reject'; readonly reason: string };

/** The error types OpenSearch uses for back-pressure regardless of the status it puts on the item. */
const REJECTED = new Set(['es_rejected_execution_exception', 'rejected_execution_exception']);

/** Transient cluster states worth retrying even when reported with a 4xx-looking status. */
const TRANSIENT_TYPES = new Set([
  'cluster_block_exception', // e.g. index read-only while the disk watermark is exceeded, or during a restore
  'unavailable_shards_exception',
  'no_shard_available_action_exception',
  'node_not_connected_exception',
  'process_cluster_event_timeout_exception',
]);

/** "type: reason (caused by: type: reason)" of a bulk item error, as the server said it. */
export function describeError(error: BulkItemResult['error'], status: number): string {
  if (error === undefined) return `status ${status}`;
  if (typeof error === 'string') return `status ${status}: ${error}`;
  const cause = error.caused_by ? ` (caused by: ${error.caused_by.type}: ${error.caused_by.reason})` : '';
  return `status ${status}: ${error.type ?? 'error'}: ${error.reason ?? ''}${cause}`;
}

export function classifyItem(result: BulkItemResult, action: 'create' | 'index'): ItemOutcome {
  const { status } = result;
  if (status >= 200 && status < 300) return { kind: 'indexed' };
  const type = typeof result.error === 'object' ? result.error?.type : undefined;
  if (status === 409 && action === 'create' && type === 'version_conflict_engine_exception') {
    return { kind: 'exists' };
  }
  const reason = describeError(result.error, status);
  if (status === 429 || (type !== undefined && REJECTED.has(type))) {
    return { kind: 'retry', reason, throttled: true };
  }
  if (status >= 500 || (type !== undefined && TRANSIENT_TYPES.has(type))) {
    return { kind: 'retry', reason, throttled: false };
  }
  // 400 mapper_parsing_exception, strict_dynamic_mapping_exception, illegal_argument_exception, 404
  // index_not_found (auto-create off), 409 on `index`...: retrying sends the same bytes and fails the same way.
  return { kind: 'reject', reason };
}

/** How a whole bulk request that did not return per-item results is handled. */
export type RequestOutcome =
  | { readonly kind: 'retry'; readonly throttled: boolean }
  /** 413 or a 400 on the request as a whole: split the batch to isolate the culprit. */
  | { readonly kind: 'split' };

export function classifyRequestFailure(status: number | undefined): RequestOutcome {
  if (status === 413 || status === 400) return { kind: 'split' };
  // 429 and 5xx are the cluster's; network errors and timeouts have no status; 401/403 are retried too
  // (credentials rotate, fine-grained access control gets fixed) until the retry budget dead-letters them.
  return { kind: 'retry', throttled: status === 429 };
}

export function statusClass(status: number | undefined): string {
  if (status === undefined) return 'network';
  if (status === 429 || status === 409) return String(status);
  return `${Math.floor(status / 100)}xx`;
}

/**
 * Additive-increase / multiplicative-decrease concurrency limit: halve on a throttled request (at most
 * once per `cooldownMs`, so one storm of 429s from requests already in flight counts once), add one
 * after `limit` consecutive throttle-free requests, between 1 and `max`.
 */
export class AdaptiveLimit {
  private current: number;
  private successes = 0;
  private lastDecrease = Number.NEGATIVE_INFINITY;

  constructor(
    readonly max: number,
    private readonly cooldownMs = 1_000,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.current = max;
  }

  get limit(): number {
    return this.current;
  }

  onThrottled(): void {
    this.successes = 0;
    const now = this.now();
    if (now - this.lastDecrease < this.cooldownMs) return;
    this.lastDecrease = now;
    this.current = Math.max(1, Math.floor(this.current / 2));
  }

  onSuccess(): void {
    if (this.current >= this.max) return;
    this.successes += 1;
    if (this.successes >= this.current) {
      this.successes = 0;
      this.current += 1;
    }
  }
}

/**
 * Cuts items (in order) into bulk bodies of at most `maxDocs` items and `maxBytes` bytes; an item larger
 * than `maxBytes` goes alone.
 */
export function planBatches<T extends { readonly bytes: number }>(
  items: readonly T[],
  maxDocs: number,
  maxBytes: number,
): T[][] {
  const batches: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const item of items) {
    if (current.length > 0 && (current.length >= maxDocs || bytes + item.bytes > maxBytes)) {
      batches.push(current);
      current = [];
      bytes = 0;
    }
    current.push(item);
    bytes += item.bytes;
  }
  if (current.length > 0) batches.push(current);
  return batches;
}
