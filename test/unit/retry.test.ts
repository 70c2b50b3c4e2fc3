import { describe, expect, it } from 'vitest';
import { Backoff, classifyError, describeError, RetryGaveUpError, retry } from '../../src/core/retry.js';

const awsError = (name: string, status?: number, extra: Record<string, unknown> = {}) =>
  Object.assign(new Error(`${name} message`), { name, $metadata: { httpStatusCode: status }, ...extra });
const netError = (code: string) => Object.assign(new Error(`connect ${code}`), { code });

describe('classifyError', () => {
  it('throttling by name, by 429 and by the SDK flag', () => {
    expect(classifyError(awsError('ProvisionedThroughputExceededException', 400))).toBe('throttled');
    expect(classifyError(awsError('SlowDown', 503))).toBe('throttled');
    expect(classifyError(awsError('Whatever', 429))).toBe('throttled');
    expect(classifyError(awsError('X', 400, { $retryable: { throttling: true } }))).toBe('throttled');
  });

  it('5xx, timeouts and network errors are transient', () => {
    expect(classifyError(awsError('InternalError', 500))).toBe('transient');
    expect(classifyError(awsError('Unknown', 502))).toBe('transient');
    expect(classifyError(netError('ECONNRESET'))).toBe('transient');
    expect(classifyError(netError('ETIMEDOUT'))).toBe('transient');
    expect(classifyError(awsError('TimeoutError'))).toBe('transient');
  });

  it('access, missing resources, validation, KMS and plain bugs are permanent', () => {
    for (const name of ['AccessDenied', 'NoSuchBucket', 'ValidationException', 'ResourceNotFoundException']) {
      expect(classifyError(awsError(name, name === 'AccessDenied' ? 403 : 400))).toBe('permanent');
    }
    expect(classifyError(awsError('KMS.DisabledException', 400))).toBe('permanent');
    expect(classifyError(new TypeError('x is undefined'))).toBe('permanent');
  });

  it('names the error with its status in one line', () => {
    expect(describeError(awsError('AccessDenied', 403))).toBe('AccessDenied (403): AccessDenied message');
    expect(describeError(netError('ECONNRESET'))).toBe('ECONNRESET: connect ECONNRESET');
  });
});

describe('retry', () => {
  const fast = { baseMs: 1, maxMs: 2, budgetMs: 0 };

  it('retries transient errors until success and reports each retry', async () => {
    const seen: string[] = [];
    let calls = 0;
    const result = await retry(
      async () => {
        calls += 1;
        if (calls < 3) throw awsError(calls === 1 ? 'SlowDown' : 'InternalError', calls === 1 ? 503 : 500);
        return 'ok';
      },
      {
        policy: fast,
        what: 'PutObject k',
        onRetry: (_e, info) => seen.push(`${info.attempt}:${info.class}`),
      },
    );
    expect(result).toBe('ok');
    expect(calls).toBe(3);
    expect(seen).toEqual(['1:throttled', '2:transient']);
  });

  it('stops at once on a permanent error, naming what and why', async () => {
    let calls = 0;
    const err = await retry(
      async () => {
        calls += 1;
        throw awsError('NoSuchBucket', 404);
      },
      { policy: fast, what: 'PutObject lake/x' },
    ).catch((e) => e);
    expect(err).toBeInstanceOf(RetryGaveUpError);
    expect(err.reason).toBe('permanent');
    expect(calls).toBe(1);
    expect(err.message).toMatch(
      /PutObject lake\/x: gave up after 1 attempt\(s\) \(permanent\): NoSuchBucket \(404\)/,
    );
  });

  it('gives up when the budget would be exceeded, and after maxAttempts', async () => {
    let clock = 0;
    const budget = await retry(
      async () => {
        clock += 40;
        throw awsError('InternalError', 500);
      },
      { policy: { baseMs: 100, maxMs: 100, budgetMs: 100 }, what: 'x', now: () => clock, random: () => 0.99 },
    ).catch((e) => e);
    expect(budget.reason).toBe('budget');
    const attempts = await retry(
      async () => {
        throw netError('ECONNRESET');
      },
      { policy: { ...fast, maxAttempts: 4 }, what: 'x' },
    ).catch((e) => e);
    expect(attempts.reason).toBe('attempts');
    expect(attempts.attempts).toBe(4);
  });

  it('an abort ends the wait at once', async () => {
    const controller = new AbortController();
    const started = Date.now();
    const pending = retry(
      async () => {
        throw awsError('InternalError', 500);
      },
      {
        policy: { baseMs: 60_000, maxMs: 60_000, budgetMs: 0 },
        what: 'x',
        signal: controller.signal,
        random: () => 1,
      },
    ).catch((e) => e);
    setTimeout(() => controller.abort(), 20);
    const err = await pending;
    expect(err.reason).toBe('aborted');
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});

describe('Backoff', () => {
  it('grows with consecutive failures and resets after a success', () => {
    const b = new Backoff({ baseMs: 10, maxMs: 1_000 }, () => 0.999);
    expect([b.next(), b.next(), b.next()]).toEqual([9, 19, 39]);
    expect(b.consecutiveFailures).toBe(3);
    b.reset();
    expect(b.next()).toBe(9);
  });
});
