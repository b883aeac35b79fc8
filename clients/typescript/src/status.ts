/**
 * A bounded queue behind `client.status()`, free of I/O: the client pushes
 * each status event into every open queue; the application takes them with
 * `for await`. A consumer that falls behind does not make it grow: past
 * `max` events the oldest is dropped, and the next one taken is a
 * `{ type: "dropped", count }` that says how many were lost. After `end()`
 * the queue hands over what it still holds, then finishes.
 */

/** Told in place of events a slow consumer lost. */
export interface DroppedStatus {
  type: "dropped";
  /** How many events were dropped (the oldest ones) since the last one taken. */
  count: number;
}

export class StatusQueue<S> implements AsyncIterableIterator<S | DroppedStatus> {
  private readonly max: number;
  private readonly detach: () => void;
  private items: S[] = [];
  private dropped = 0;
  private ended = false;
  /** Calls of `next` waiting for an event (one, unless the consumer calls `next` without awaiting). */
  private readonly waiters: Array<(r: IteratorResult<S | DroppedStatus>) => void> = [];

  /** `max`: events kept at most (at least 1); `detach`: called once when the consumer stops (`return`). */
  constructor(max: number, detach: () => void) {
    this.max = Math.max(1, Math.floor(max));
    this.detach = detach;
  }

  /** Events waiting to be taken (never more than `max`). */
  get size(): number {
    return this.items.length;
  }

  /** Adds an event; hands it straight over if the consumer waits. */
  push(item: S): void {
    if (this.ended) return;
    const w = this.waiters.shift();
    if (w) {
      w({ done: false, value: item });
      return;
    }
    this.items.push(item);
    if (this.items.length > this.max) {
      this.items.shift();
      this.dropped++;
    }
  }

  /** No more events: the consumer gets what is held, then the end. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    for (const w of this.waiters.splice(0)) w({ done: true, value: undefined });
  }

  next(): Promise<IteratorResult<S | DroppedStatus>> {
    if (this.dropped > 0) {
      const count = this.dropped;
      this.dropped = 0;
      return Promise.resolve({ done: false, value: { type: "dropped", count } });
    }
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve({ done: false, value: item });
    if (this.ended) return Promise.resolve({ done: true, value: undefined });
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** The consumer stopped (`break` out of `for await`): no more events are kept. */
  return(): Promise<IteratorResult<S | DroppedStatus>> {
    this.items = [];
    this.dropped = 0;
    if (!this.ended) {
      this.end();
      this.detach();
    }
    return Promise.resolve({ done: true, value: undefined });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
