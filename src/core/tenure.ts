/**
 * A lease tenure: one continuous holding of a shard's lease by one worker process, from the lease take to
 * the moment the worker lets go of it (lost, fenced, handed off, released, shard end, failure).
 *
 * Everything the chain does for a shard belongs to a tenure: the shard's watermark, and through it every
 * record's ack (`Ack.tenure`), the events made from those records, and whatever processors and sinks
 * buffer of them. When a tenure ends, nothing of it may be written any more: sinks drop what they hold of
 * it and abort its requests (`signal`), processors forget its held state, and no checkpoint is written for
 * it. A later tenure of the same shard (on this worker or another) reads the records again from the
 * checkpoint, so what the ended tenure did not make durable is not lost.
 *
 * `active` also turns false once the tenure's fencing deadline passes, even before the timer that ends the
 * tenure has run (a process that was paused runs its pending code before its timers). `writable` turns
 * false a little earlier (the write lead): a write checked just before it is on the wire by the deadline
 * even when the event loop lags (a stream body is read, a socket chosen, in between). Check `writable`
 * right before every write made on the tenure's behalf (`sendOnlyWhile` does it for SDK commands), and
 * `active` for anything else (taking records in, buffering).
 */
import { randomBytes } from 'node:crypto';
import { type Clock, systemClock } from './clock.js';
import type { ShardRef } from './component.js';

/** Why a tenure ended. */
export type TenureEnd =
  /** Another worker took the lease, or the lease row was deleted. */
  | 'lost'
  /** The fencing deadline passed without a successful lease write: others may take the lease now. */
  | 'fenced'
  /** A graceful handoff to another worker (balancing) finished or was overruled. */
  | 'handed-off'
  /** Released on purpose (graceful shutdown). */
  | 'released'
  /** The shard was read to its end and SHARD_END was checkpointed. */
  | 'shard-end'
  /** The chain failed on the tenure's events (a processor or sink error): released to be read again. */
  | 'failed';

export interface Tenure extends ShardRef {
  /** Unique to the worker process and the lease take (`<process instance>.<take number>`). */
  readonly token: string;
  /** Aborted when the tenure ends: pass it (combined with the component's own) to requests made for it. */
  readonly signal: AbortSignal;
  /** True until the tenure ends or its fencing deadline passes (read against the clock on every access). */
  readonly active: boolean;
  /** True while writes may still be started for it: `active`, and not within the write lead of the deadline. */
  readonly writable: boolean;
  /** Why it ended, once it has. */
  readonly ended: TenureEnd | undefined;
  /**
   * Reports that the chain could not process this tenure's events (a processor threw, a sink write failed,
   * an upload failed for good). The worker then ends the tenure and releases the shard, which is read again
   * from its checkpoint; the failure is counted in `ksw_shard_failures_total{stage}`. Ignored once ended.
   */
  fail(stage: string, err: unknown): void;
}

/** The error a tenure's signal aborts with. */
export class TenureEndedError extends Error {
  constructor(
    readonly tenure: Pick<Tenure, 'stream' | 'shardId' | 'token'>,
    readonly reason: TenureEnd,
  ) {
    super(`tenure ${tenure.token} of ${tenure.stream}/${tenure.shardId} ended (${reason})`);
    this.name = 'TenureEndedError';
  }
}

/** Makes tenure tokens: one random instance id per worker process (coordinator), then a counter. */
export class TenureTokens {
  private taken = 0;
  readonly instance: string;

  constructor(instance: string = randomBytes(6).toString('hex')) {
    this.instance = instance;
  }

  next(): string {
    this.taken += 1;
    return `${this.instance}.${this.taken}`;
  }
}

/** The process instance part of a tenure token, or undefined when the text is not a token. */
export function tokenInstance(token: string | undefined): string | undefined {
  if (!token) return undefined;
  const dot = token.lastIndexOf('.');
  return dot > 0 ? token.slice(0, dot) : undefined;
}

/** The tenure the coordinator runs: it ends it, moves its fencing deadline and hears its failures. */
export class ShardTenure implements Tenure {
  private readonly controller = new AbortController();
  private endReason: TenureEnd | undefined;
  private deadlineAt = Number.POSITIVE_INFINITY;
  private fenceTimer: unknown;
  private onFence: (() => void) | undefined;
  private onFail: ((stage: string, err: unknown) => void) | undefined;

  constructor(
    readonly stream: string,
    readonly shardId: string,
    readonly token: string,
    private readonly clock: Clock = systemClock,
    /** How long before the deadline writes stop being started (see `writable`). */
    private readonly writeLeadMs = 0,
  ) {}

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get active(): boolean {
    return this.endReason === undefined && this.clock.now() < this.deadlineAt;
  }

  get writable(): boolean {
    return this.endReason === undefined && this.clock.now() < this.deadlineAt - this.writeLeadMs;
  }

  get ended(): TenureEnd | undefined {
    return this.endReason;
  }

  /** When the tenure fences itself unless a lease write moves the deadline again (clock ms). */
  get deadline(): number {
    return this.deadlineAt;
  }

  /** Called when the fencing timer fires (the coordinator then ends the tenure as 'fenced'). */
  whenFenced(handler: () => void): void {
    this.onFence = handler;
  }

  /** Called by `fail` while the tenure is active. */
  whenFailed(handler: (stage: string, err: unknown) => void): void {
    this.onFail = handler;
  }

  /** Sets the fencing deadline (never later than one already passed) and arms the timer for it. */
  setDeadline(at: number): void {
    if (this.endReason !== undefined) return;
    this.deadlineAt = at;
    this.clock.clearTimeout(this.fenceTimer);
    this.fenceTimer = this.clock.setTimeout(
      () => {
        this.fenceTimer = undefined;
        if (this.endReason === undefined) this.onFence?.();
      },
      Math.max(0, at - this.clock.now()),
    );
  }

  fail(stage: string, err: unknown): void {
    if (!this.active) return;
    this.onFail?.(stage, err);
  }

  /** Ends the tenure (first reason wins) and aborts its signal. True when this call ended it. */
  end(reason: TenureEnd): boolean {
    if (this.endReason !== undefined) return false;
    this.endReason = reason;
    this.clock.clearTimeout(this.fenceTimer);
    this.fenceTimer = undefined;
    this.controller.abort(new TenureEndedError(this, reason));
    return true;
  }
}

/**
 * The tenure of acks made outside any lease (a DLQ redrive, tools, tests): it never ends and `fail` does
 * nothing (the error reaches the caller anyway). Its stream and shard are empty: state keyed by tenure must
 * also key by the event's own shard.
 */
export const DETACHED_TENURE: Tenure = Object.freeze({
  stream: '',
  shardId: '',
  token: 'detached',
  signal: new AbortController().signal,
  active: true,
  writable: true,
  ended: undefined,
  fail: () => undefined,
});

/**
 * The detached tenure as a given shard's (for `openShard` outside any lease: tools, benchmarks, tests).
 * Its token is the detached one, so state a sink keys by (shard, token) at `openShard` is the state the
 * shard's detached acks find.
 */
export function detachedTenure(shard: ShardRef): Tenure {
  return Object.freeze({ ...DETACHED_TENURE, stream: shard.stream, shardId: shard.shardId });
}

/** A key for per-shard state of one tenure: the event's shard plus the tenure's token. */
export function tenureKey(shard: ShardRef, tenure: Tenure): string {
  return `${shard.stream}\n${shard.shardId}\n${tenure.token}`;
}

/** What `sendOnlyWhile` needs of an AWS SDK command: its own middleware stack (typed loosely: its `add` is
 * overloaded per step, and only the deserialize step is used). */
interface WithMiddleware {
  readonly middlewareStack: {
    // biome-ignore lint/suspicious/noExplicitAny: the SDK's overloaded add(); one overload is used below
    add(middleware: any, options: any): void;
  };
}

/** A write refused at the last moment because its tenure is over (or past its fencing deadline). */
export class WriteRefusedError extends Error {
  constructor(what: string) {
    super(`${what}: not sent, the lease tenure it belongs to is over`);
    this.name = 'WriteRefusedError';
  }
}

/**
 * Makes an AWS SDK command check `proceed()` right before each attempt goes on the wire (after signing,
 * after the SDK's own retry delay), and fail with WriteRefusedError instead of being sent when it is
 * false. A check before `send()` alone leaves the SDK's asynchronous steps in between, which a busy event
 * loop stretches to a hundred milliseconds and more: long enough for a write to leave after the deadline.
 */
export function sendOnlyWhile<C extends WithMiddleware>(command: C, proceed: () => boolean, what: string): C {
  command.middlewareStack.add(
    (next: (args: unknown) => Promise<unknown>) => async (args: unknown) => {
      if (!proceed()) throw new WriteRefusedError(what);
      return next(args);
    },
    { step: 'deserialize', priority: 'low', name: 'kswTenureGuard' },
  );
  return command;
}

/** `signal` and the tenure's signal in one (for a request made on the tenure's behalf). */
export function withTenure(signal: AbortSignal, tenure: Tenure): AbortSignal {
  return tenure === DETACHED_TENURE ? signal : AbortSignal.any([signal, tenure.signal]);
}
