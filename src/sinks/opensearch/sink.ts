/**
 * Batching, retries and acks of the OpenSearch sink.
 *
 * Each event becomes one bulk item (action line + source line) with a deterministic `_id` and index. Items
 * are cut into bulk requests by count and bytes (or after `flushIntervalMs`) and sent with bounded,
 * adaptive concurrency. Per item of the response: written (2xx, or 409 on `create` = already there from an
 * earlier attempt or run) -> ack; retryable (429, 5xx, es_rejected_execution, network) -> scheduled again
 * after an exponential backoff with full jitter, unless its retry budget (time since its first attempt) is
 * spent -> DLQ; anything else (mapping conflicts, 400s) -> DLQ at once with the server's reason. An event's
 * ack completes exactly once: when its document is written or its letter is durable in the DLQ.
 *
 * Items belong to the lease tenure of their event: an item whose tenure is no longer active is dropped
 * (never acked) before any request that would carry it, and `closeShard` drops a tenure's queued items and
 * waits for the bulk requests already carrying some of them.
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { backoffDelay, settlesWithin, sleep } from '../../core/backoff.js';
import type { ComponentContext, Sink, Tenure } from '../../core/component.js';
import type { PipelineEvent } from '../../core/records.js';
import { withTenure } from '../../core/tenure.js';
import { counter, gauge, histogram } from '../../metrics/registry.js';
import { stringifyJson } from '../s3-parquet/index.js';
import { AdaptiveLimit, classifyItem, classifyRequestFailure, planBatches, statusClass } from './bulk.js';
import type { OpenSearchSinkConfig } from './config.js';
import {
  checkIndexPattern,
  compileDocumentId,
  DocumentError,
  type DocumentTime,
  indexName,
  lookup,
  parseTime,
  templatePattern,
} from './naming.js';
import { FieldOffloader } from './offload.js';
import { type AwsIdentity, OpenSearchService } from './service.js';
import { indexTemplateBody } from './templates.js';

interface Item {
  readonly event: PipelineEvent;
  readonly index: string;
  readonly id: string;
  readonly body: string;
  readonly bytes: number;
  attempts: number;
  firstAttemptAt: number;
  lastError: string;
  /** Set once the ack (or the letter) is handed over; guards against completing twice. */
  settled: boolean;
}

function createMetrics(ctx: ComponentContext) {
  const labelNames = ['sink'] as const;
  return {
    bulkSeconds: histogram(ctx.metrics, {
      name: 'ksw_opensearch_bulk_seconds',
      help: 'Latency of bulk requests, by outcome (ok, partial: some items failed, failed: no item results).',
      labelNames: ['sink', 'outcome'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    }),
    bulkBytes: histogram(ctx.metrics, {
      name: 'ksw_opensearch_bulk_bytes',
      help: 'Body size of bulk requests.',
      labelNames,
      buckets: [1, 4, 16, 64, 256, 1024, 4096, 16_384].map((k) => k * 1024),
    }),
    documents: counter(ctx.metrics, {
      name: 'ksw_opensearch_documents_total',
      help:
        'Bulk item results per attempt: result indexed|exists (409 on create)|retried|rejected, by status class ' +
        '(2xx, 409, 429, 4xx, 5xx, network).',
      labelNames: ['sink', 'result', 'status_class'],
    }),
    firstAttempt: counter(ctx.metrics, {
      name: 'ksw_opensearch_documents_first_attempt_total',
      help: 'Documents written by their first bulk attempt.',
      labelNames,
    }),
    retries: counter(ctx.metrics, {
      name: 'ksw_opensearch_retries_total',
      help: 'Documents scheduled for another attempt, by status class of the failure.',
      labelNames: ['sink', 'status_class'],
    }),
    deadLetters: counter(ctx.metrics, {
      name: 'ksw_opensearch_dead_letters_total',
      help: 'Documents sent to the DLQ: rejected (non-retryable), retry_budget (spent), invalid (no id/time).',
      labelNames: ['sink', 'reason'],
    }),
    inFlightBytes: gauge(ctx.metrics, {
      name: 'ksw_opensearch_in_flight_bytes',
      help: 'Bytes of documents accepted and not yet written or dead-lettered (buffered, sending, awaiting retry).',
      labelNames,
    }),
    inFlightDocuments: gauge(ctx.metrics, {
      name: 'ksw_opensearch_in_flight_documents',
      help: 'Documents accepted and not yet written or dead-lettered.',
      labelNames,
    }),
    concurrency: gauge(ctx.metrics, {
      name: 'ksw_opensearch_concurrency_limit',
      help: 'Current adaptive limit of concurrent bulk requests (halved on 429, grown back on success).',
      labelNames,
    }),
    offloaded: counter(ctx.metrics, {
      name: 'ksw_opensearch_offloaded_fields_total',
      help: 'Fields moved to S3 before indexing (field offload).',
      labelNames,
    }),
    offloadErrors: counter(ctx.metrics, {
      name: 'ksw_opensearch_offload_errors_total',
      help: 'Failed attempts to write an offloaded field to S3 (each is retried).',
      labelNames,
    }),
  };
}

export interface OpenSearchSinkOptions {
  /** The randomness of the backoff jitter (tests). */
  readonly random?: () => number;
  /** How long start-up may wait for a cluster that is not reachable yet. */
  readonly bootstrapTimeoutMs?: number;
  /** Endpoint override for the DescribeDomain lookup (tests). */
  readonly domainLookupEndpoint?: string;
}

export class OpenSearchSink implements Sink {
  private readonly logger: Logger;
  private readonly component: string;
  private readonly labels: { sink: string };
  private readonly metrics: ReturnType<typeof createMetrics>;
  private readonly documentId: (event: PipelineEvent) => string;
  private readonly limit: AdaptiveLimit;
  private readonly abort = new AbortController();
  private readonly ready: Promise<OpenSearchService>;
  private offloader: FieldOffloader | undefined;
  private service: OpenSearchService | undefined;

  /** Items waiting for the next bulk request. */
  private pending: Item[] = [];
  private pendingBytes = 0;
  private flushTimer: NodeJS.Timeout | undefined;
  /** Items waiting for their backoff to pass, by due time. */
  private readonly retrying = new Map<Item, number>();
  private retryTimer: NodeJS.Timeout | undefined;
  private retryTimerAt = Number.POSITIVE_INFINITY;
  private inFlightRequests = 0;
  private readonly slotWaiters: Array<() => void> = [];
  private readonly requests = new Set<Promise<void>>();

  private outstandingBytes = 0;
  private outstandingDocs = 0;
  private capacityWaiters: Array<() => void> = [];
  private readonly flushWaiters = new Set<{ items: Set<Item>; resolve: () => void }>();
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(
    readonly name: string,
    private readonly config: OpenSearchSinkConfig,
    private readonly ctx: ComponentContext,
    private readonly options: OpenSearchSinkOptions = {},
  ) {
    this.component = `sink:${name}`;
    this.logger = ctx.logger.child({ component: this.component });
    this.labels = { sink: name };
    this.metrics = createMetrics(ctx);
    checkIndexPattern(config.index);
    this.documentId = compileDocumentId(config.documentId);
    this.limit = new AdaptiveLimit(config.bulk.concurrency);
    this.metrics.concurrency.set(this.labels, this.limit.limit);
    this.metrics.inFlightBytes.set(this.labels, 0);
    this.metrics.inFlightDocuments.set(this.labels, 0);
    for (const reason of ['rejected', 'retry_budget', 'invalid'])
      this.metrics.deadLetters.inc({ ...this.labels, reason }, 0);
    this.metrics.offloadErrors.inc(this.labels, 0);
    if (config.offload) {
      this.offloader = new FieldOffloader(
        config.offload,
        ctx.aws.s3,
        this.abort.signal,
        this.logger,
        { offloaded: this.metrics.offloaded, errors: this.metrics.offloadErrors },
        this.labels,
      );
    }
    this.ready = this.start();
    // Failures surface through openShard/write; never as an unhandled rejection.
    this.ready.catch(() => undefined);
  }

  private async start(): Promise<OpenSearchService> {
    const s3 = this.ctx.aws.s3;
    const identity: AwsIdentity = {
      region: () => s3.config.region(),
      credentials: () => s3.config.credentials(),
    };
    const service = await OpenSearchService.connect(this.config, identity, this.logger, {
      ...(this.options.domainLookupEndpoint
        ? { domainLookupEndpoint: this.options.domainLookupEndpoint }
        : {}),
    });
    this.service = service;
    const template = this.config.template;
    if (template) {
      const patterns = template.indexPatterns ?? [templatePattern(this.config.index)];
      const serverless = this.config.auth.type === 'aws_sigv4' && this.config.auth.service === 'aoss';
      await service.bootstrap(
        template.name ?? `ksw-${this.name}`,
        indexTemplateBody({
          kind: template.kind,
          indexPatterns: patterns,
          shards: template.shards,
          replicas: template.replicas,
          refreshInterval: template.refreshInterval,
          dataStream: this.config.dataStream,
          serverless,
        }),
        patterns,
        this.abort.signal,
        this.options.bootstrapTimeoutMs ?? 120_000,
      );
    }
    return service;
  }

  /** Start-up: the template and ISM bootstrap must have succeeded before a shard is read. */
  async openShard(_tenure: Tenure): Promise<void> {
    await this.ready;
  }

  async write(events: PipelineEvent[]): Promise<void> {
    if (this.closed) throw new Error(`sink ${this.name} is closed`);
    await this.ready;
    for (const event of events) {
      // An ended tenure's events are not written (the next tenure reads them again).
      if (!event.ack.tenure.active) continue;
      await this.waitForCapacity();
      const item = await this.prepare(event);
      if (!item) continue;
      this.outstandingBytes += item.bytes;
      this.outstandingDocs += 1;
      this.updateGauges();
      this.enqueue(item);
    }
  }

  async flush(): Promise<void> {
    await this.flushItems(() => true);
  }

  /** Sends the tenure's queued documents now (graceful end of its lease) and waits until each is settled. */
  async flushShard(tenure: Tenure): Promise<void> {
    await this.flushItems((item) => item.event.ack.tenure === tenure);
  }

  /**
   * The tenure ended: its queued and retrying documents are dropped unacked, and this resolves once no
   * bulk request in flight carries any of its documents.
   */
  async closeShard(tenure: Tenure): Promise<void> {
    const ofTenure = (item: Item) => item.event.ack.tenure === tenure;
    const dropped = this.pending.filter(ofTenure);
    if (dropped.length > 0) {
      this.pending = this.pending.filter((item) => !ofTenure(item));
      this.pendingBytes = this.pending.reduce((n, item) => n + item.bytes, 0);
    }
    for (const item of this.retrying.keys()) if (ofTenure(item)) dropped.push(item);
    for (const item of dropped) this.drop(item);
    const requests: Promise<void>[] = [];
    for (const [batch, request] of this.requestsByBatch) if (batch.some(ofTenure)) requests.push(request);
    await Promise.allSettled(requests);
  }

  private async flushItems(which: (item: Item) => boolean): Promise<void> {
    const items = new Set<Item>([...this.pending, ...this.retrying.keys()].filter(which));
    for (const request of this.requestItems) for (const item of request) if (which(item)) items.add(item);
    this.dispatch();
    if (items.size === 0) return;
    await new Promise<void>((resolve) => {
      const waiter = { items, resolve };
      this.flushWaiters.add(waiter);
    });
  }

  /** An item whose tenure ended: settled without an ack or a letter (the next tenure writes it). */
  private drop(item: Item): void {
    if (!item.settled) this.settle(item);
  }

  close(): Promise<void> {
    this.closing ??= this.closeNow();
    return this.closing;
  }

  private async closeNow(): Promise<void> {
    this.closed = true;
    const drained = (async () => {
      // Documents are queued only once start-up succeeded (write waits for it), so a start-up still
      // retrying against an unreachable cluster has nothing to drain: it is aborted at once below instead
      // of holding the worker's shutdown for closeTimeoutMs.
      if (this.outstandingDocs === 0) return;
      while (this.outstandingDocs > 0 && !this.abort.signal.aborted) {
        await this.flush();
        await sleep(10);
      }
    })();
    if (!(await settlesWithin(drained, this.config.closeTimeoutMs))) {
      this.logger.warn(
        { documents: this.outstandingDocs, closeTimeoutMs: this.config.closeTimeoutMs },
        'close: giving up on documents still failing; they stay unacked and will be read again',
      );
    }
    this.abort.abort();
    clearTimeout(this.flushTimer);
    clearTimeout(this.retryTimer);
    this.wakeCapacityWaiters();
    for (const wake of this.slotWaiters.splice(0)) wake();
    for (const waiter of this.flushWaiters) waiter.resolve();
    this.flushWaiters.clear();
    await Promise.allSettled([...this.requests]);
    await this.service?.close().catch(() => undefined);
  }

  /** The bulk item of an event, or undefined when the event went to the DLQ (or the sink closed). */
  private async prepare(event: PipelineEvent): Promise<Item | undefined> {
    let index: string;
    let id: string;
    let doc: Record<string, unknown> | undefined = event.value;
    try {
      const time = this.documentTime(event);
      index = indexName(this.config.index, time.ms);
      id = this.documentId(event);
      if (this.config.timestampTarget !== false) doc = { ...doc, [this.config.timestampTarget]: time.iso };
    } catch (err) {
      if (!(err instanceof DocumentError)) throw err;
      this.deadLetter(event, err.message, 'invalid');
      return undefined;
    }
    if (this.offloader) {
      const tenure = event.ack.tenure;
      doc = await this.offloader.apply(
        doc,
        index,
        id,
        withTenure(this.abort.signal, tenure),
        () => tenure.writable,
      );
      if (!doc) return undefined; // closed (or the tenure ended) while offloading: the event stays unacked
    }
    const action = this.config.dataStream ? 'create' : this.config.action;
    const body = `${JSON.stringify({ [action]: { _index: index, _id: id } })}\n${stringifyJson(doc)}\n`;
    return {
      event,
      index,
      id,
      body,
      bytes: Buffer.byteLength(body),
      attempts: 0,
      firstAttemptAt: 0,
      lastError: '',
      settled: false,
    };
  }

  private documentTime(event: PipelineEvent): DocumentTime {
    const field = this.config.timestampField;
    if (field === undefined) {
      const ms = event.origin.arrivalTime.getTime();
      return { ms, iso: new Date(ms).toISOString() };
    }
    return parseTime(lookup(event.value, field), this.config.timestampUnit, `timestamp field "${field}"`);
  }

  private enqueue(item: Item): void {
    this.pending.push(item);
    this.pendingBytes += item.bytes;
    const { maxDocuments, maxBytes, flushIntervalMs } = this.config.bulk;
    if (this.pending.length >= maxDocuments || this.pendingBytes >= maxBytes) {
      this.dispatch();
    } else if (!this.flushTimer) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        this.dispatch();
      }, flushIntervalMs);
      this.flushTimer.unref();
    }
  }

  /** Items of requests in flight, for flush snapshots. */
  private readonly requestItems = new Set<Item[]>();

  /** Sends everything pending, cut into bulk requests. */
  private dispatch(): void {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.pending.length === 0 || this.abort.signal.aborted) return;
    const items = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    for (const batch of planBatches(items, this.config.bulk.maxDocuments, this.config.bulk.maxBytes)) {
      this.send(batch);
    }
  }

  private send(batch: Item[]): void {
    this.requestItems.add(batch);
    let request: Promise<void> | undefined;
    request = this.sendNow(batch)
      .catch((err: unknown) => {
        // Not expected: every failure is classified. Requeue so nothing is lost or acked by mistake.
        this.logger.error({ error: (err as Error)?.message }, 'bulk handling failed; requeueing');
        for (const item of batch) if (!item.settled) this.scheduleRetry(item, 'internal error', undefined);
      })
      .finally(() => {
        this.requestItems.delete(batch);
        this.requests.delete(request!);
        this.requestsByBatch.delete(batch);
      });
    this.requests.add(request);
    this.requestsByBatch.set(batch, request);
  }

  /** Bulk requests by the items they carry (closeShard waits for those with items of its tenure). */
  private readonly requestsByBatch = new Map<Item[], Promise<void>>();

  private async sendNow(input: Item[]): Promise<void> {
    await this.acquireSlot();
    if (this.abort.signal.aborted) {
      this.releaseSlot();
      return;
    }
    // Checked right before the request: a tenure that ended (or passed its fencing deadline) while its
    // items waited for a slot or a backoff gets nothing more written.
    let batch = input;
    if (!batch.every((item) => item.event.ack.tenure.writable)) {
      batch = [];
      for (const item of input) {
        if (item.event.ack.tenure.writable) batch.push(item);
        else this.drop(item);
      }
      if (batch.length === 0) {
        this.releaseSlot();
        return;
      }
    }
    const now = Date.now();
    for (const item of batch) {
      if (item.attempts === 0) item.firstAttemptAt = now;
      item.attempts += 1;
    }
    const body = batch.map((i) => i.body).join('');
    this.metrics.bulkBytes.observe(this.labels, Buffer.byteLength(body));
    const started = performance.now();
    let result: Awaited<ReturnType<OpenSearchService['bulk']>>;
    try {
      result = await this.service!.bulk(body, this.abort.signal);
    } finally {
      this.releaseSlot();
    }
    const seconds = (performance.now() - started) / 1000;
    if (this.abort.signal.aborted) return;

    if (result.kind === 'failed') {
      this.metrics.bulkSeconds.observe({ ...this.labels, outcome: 'failed' }, seconds);
      const outcome = classifyRequestFailure(result.status);
      if (outcome.kind === 'split' && batch.length > 1) {
        // 413 or a request-level 400: halve to isolate the document (or size) that causes it.
        for (const item of batch) item.attempts -= 1;
        const half = Math.ceil(batch.length / 2);
        this.send(batch.slice(0, half));
        this.send(batch.slice(half));
        return;
      }
      const cls = statusClass(result.status);
      if (outcome.kind === 'split') {
        this.metrics.documents.inc({ ...this.labels, result: 'rejected', status_class: cls });
        this.reject(batch[0]!, `bulk request failed: ${result.reason}`);
        return;
      }
      if (outcome.throttled) this.throttled();
      for (const item of batch) {
        this.metrics.documents.inc({ ...this.labels, result: 'retried', status_class: cls });
        this.scheduleRetry(item, `bulk request failed: ${result.reason}`, result.status);
      }
      return;
    }

    if (result.items.length !== batch.length) {
      // A response that does not answer item by item cannot be trusted for any of them.
      for (const item of batch)
        this.scheduleRetry(item, `bulk response had ${result.items.length} items for ${batch.length}`, 500);
      return;
    }
    let throttled = false;
    const action = this.config.dataStream ? 'create' : this.config.action;
    for (let i = 0; i < batch.length; i++) {
      const item = batch[i]!;
      const answer = result.items[i]!;
      const outcome = classifyItem(answer, action);
      const cls = statusClass(answer.status);
      switch (outcome.kind) {
        case 'indexed':
        case 'exists':
          this.metrics.documents.inc({ ...this.labels, result: outcome.kind, status_class: cls });
          if (item.attempts === 1) this.metrics.firstAttempt.inc(this.labels);
          this.settle(item);
          item.event.ack.done();
          break;
        case 'retry':
          throttled ||= outcome.throttled;
          this.metrics.documents.inc({ ...this.labels, result: 'retried', status_class: cls });
          this.scheduleRetry(item, outcome.reason, answer.status);
          break;
        case 'reject':
          this.metrics.documents.inc({ ...this.labels, result: 'rejected', status_class: cls });
          this.reject(item, outcome.reason);
          break;
      }
    }
    this.metrics.bulkSeconds.observe({ ...this.labels, outcome: result.errors ? 'partial' : 'ok' }, seconds);
    if (throttled) this.throttled();
    else this.limit.onSuccess();
    this.metrics.concurrency.set(this.labels, this.limit.limit);
  }

  private throttled(): void {
    this.limit.onThrottled();
    this.metrics.concurrency.set(this.labels, this.limit.limit);
  }

  private scheduleRetry(item: Item, reason: string, status: number | undefined): void {
    item.lastError = reason;
    const delay = backoffDelay(
      item.attempts - 1,
      this.config.retry.initialBackoffMs,
      this.config.retry.maxBackoffMs,
      this.options.random,
    );
    const due = Date.now() + delay;
    if (due - item.firstAttemptAt > this.config.retry.budgetMs) {
      this.deadLetter(
        item.event,
        `retry budget of ${this.config.retry.budgetMs} ms spent after ${item.attempts} attempts; last error: ${reason}`,
        'retry_budget',
        item,
      );
      return;
    }
    this.metrics.retries.inc({ ...this.labels, status_class: statusClass(status) });
    this.retrying.set(item, due);
    this.armRetryTimer(due);
  }

  private armRetryTimer(due: number): void {
    if (due >= this.retryTimerAt) return;
    clearTimeout(this.retryTimer);
    this.retryTimerAt = due;
    this.retryTimer = setTimeout(() => this.releaseDueRetries(), Math.max(0, due - Date.now()));
    this.retryTimer.unref();
  }

  private releaseDueRetries(): void {
    this.retryTimer = undefined;
    this.retryTimerAt = Number.POSITIVE_INFINITY;
    if (this.abort.signal.aborted) return;
    // Items due within a few ms of each other (the failures of one bulk answer) go out in one request.
    const horizon = Date.now() + Math.min(50, this.config.retry.initialBackoffMs);
    let next = Number.POSITIVE_INFINITY;
    for (const [item, due] of this.retrying) {
      if (due <= horizon) {
        this.retrying.delete(item);
        this.pending.push(item);
        this.pendingBytes += item.bytes;
      } else if (due < next) {
        next = due;
      }
    }
    this.dispatch();
    if (next < Number.POSITIVE_INFINITY) this.armRetryTimer(next);
  }

  private reject(item: Item, reason: string): void {
    this.deadLetter(item.event, reason, 'rejected', item);
  }

  private deadLetter(event: PipelineEvent, reason: string, why: string, item?: Item): void {
    if (item) this.settle(item);
    this.metrics.deadLetters.inc({ ...this.labels, reason: why });
    this.logger.warn(
      {
        stream: event.origin.stream,
        shardId: event.origin.shardId,
        sequenceNumber: event.origin.sequenceNumber,
        reason,
      },
      'document dead-lettered',
    );
    // Derived events (e.g. RED windows) were not decoded from their origin's bytes: store the document.
    const data = event.derived ? Buffer.from(stringifyJson(event.value), 'utf8') : event.raw;
    this.ctx.dlq.put(
      { origin: event.origin, index: event.index, data, reason, component: this.component },
      event.ack,
    );
  }

  /** Marks an item finished (its ack is about to be completed or dead-lettered). */
  private settle(item: Item): void {
    if (item.settled) throw new Error('bulk item settled twice');
    item.settled = true;
    this.retrying.delete(item);
    this.outstandingBytes -= item.bytes;
    this.outstandingDocs -= 1;
    this.updateGauges();
    this.wakeCapacityWaiters();
    for (const waiter of this.flushWaiters) {
      if (waiter.items.delete(item) && waiter.items.size === 0) {
        this.flushWaiters.delete(waiter);
        waiter.resolve();
      }
    }
  }

  private updateGauges(): void {
    this.metrics.inFlightBytes.set(this.labels, this.outstandingBytes);
    this.metrics.inFlightDocuments.set(this.labels, this.outstandingDocs);
  }

  private async acquireSlot(): Promise<void> {
    while (this.inFlightRequests >= this.limit.limit && !this.abort.signal.aborted) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    }
    this.inFlightRequests += 1;
  }

  private releaseSlot(): void {
    this.inFlightRequests -= 1;
    // Wake as many as the (possibly grown) limit allows; each re-checks.
    for (const wake of this.slotWaiters.splice(0, Math.max(1, this.limit.limit - this.inFlightRequests)))
      wake();
  }

  private async waitForCapacity(): Promise<void> {
    while (this.outstandingBytes >= this.config.bulk.maxBufferedBytes && !this.abort.signal.aborted) {
      await new Promise<void>((resolve) => this.capacityWaiters.push(resolve));
    }
    if (this.abort.signal.aborted) throw new Error(`sink ${this.name} was closed during write`);
  }

  private wakeCapacityWaiters(): void {
    const waiters = this.capacityWaiters;
    this.capacityWaiters = [];
    for (const wake of waiters) wake();
  }
}
