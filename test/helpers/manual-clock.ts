/** A virtual clock for lease logic tests: time moves only when the test advances it. */
import type { Clock } from '../../src/core/clock.js';

interface Timer {
  at: number;
  fn: () => void;
  seq: number;
}

export class ManualClock implements Clock {
  private t: number;
  private seq = 0;
  private readonly timers = new Map<number, Timer>();

  constructor(start = 1_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn, seq: id });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Moves time forward by `ms`, running due timers in time order (and letting promises settle between). */
  async advance(ms: number): Promise<void> {
    const until = this.t + ms;
    for (;;) {
      const due = [...this.timers.values()]
        .filter((x) => x.at <= until)
        .sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (!due) break;
      this.timers.delete(due.seq);
      this.t = Math.max(this.t, due.at);
      due.fn();
      await settle();
    }
    this.t = until;
    await settle();
  }

  get pendingTimers(): number {
    return this.timers.size;
  }
}

/** Lets pending promise callbacks run. */
export async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}
