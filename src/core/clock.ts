/**
 * Time as the lease logic sees it: injectable so the coordinator's modules (renewal, fencing, taking,
 * handoffs) can run under a virtual clock in a model check, and a real one in the worker.
 */
export interface Clock {
  /** Milliseconds; only differences matter (no clock is ever compared across workers). */
  now(): number;
  /** Runs `fn` after `ms`; the returned handle goes to `clearTimeout`. Never keeps the process alive. */
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const timer = setTimeout(fn, Math.max(0, ms));
    timer.unref();
    return timer;
  },
  clearTimeout(handle) {
    clearTimeout(handle as NodeJS.Timeout);
  },
};

/** Resolves after `ms` on `clock`, or at once when `signal` aborts. */
export function sleepOn(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0 || signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clock.clearTimeout(handle);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const handle = clock.setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** An AbortSignal that aborts after `ms` on `clock` (AbortSignal.timeout always uses real time). */
export function timeoutSignal(clock: Clock, ms: number): AbortSignal {
  const controller = new AbortController();
  clock.setTimeout(
    () => controller.abort(Object.assign(new Error(`timed out after ${ms} ms`), { name: 'TimeoutError' })),
    ms,
  );
  return controller.signal;
}

/** A call that did not answer within its timeout (retryable: the next interval tries again). */
export class CallTimeoutError extends Error {
  constructor(
    readonly what: string,
    readonly ms: number,
  ) {
    super(`${what}: no answer within ${ms} ms`);
    this.name = 'TimeoutError';
  }
}

/**
 * Runs `call` with a signal that aborts after `ms` on `clock`; when it fails because of that abort, the
 * error is a CallTimeoutError (named TimeoutError, retryable) rather than the SDK's AbortError.
 */
export async function withTimeout<T>(
  clock: Clock,
  ms: number,
  what: string,
  call: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const signal = timeoutSignal(clock, ms);
  try {
    return await call(signal);
  } catch (err) {
    if (signal.aborted) throw new CallTimeoutError(what, ms);
    throw err;
  }
}
