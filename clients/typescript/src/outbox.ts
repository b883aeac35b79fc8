/**
 * The publish state machine, free of I/O: which publishes go out now,
 * which wait for a window slot or for a connection, which are sent again
 * after a reconnect, and which are refused because the offline queue is
 * full. The client performs the sends it returns and reports replies and
 * connection changes back.
 *
 * - A stored publish keeps its dedup id for its whole life, so sending it
 *   again on a new connection stores it once: the broker answers a retry
 *   with the original seq.
 * - A volatile publish is never sent twice: one in flight when the
 *   connection is lost fails; one made while disconnected is refused.
 * - At most `window` publishes await a reply at once; the others wait in
 *   submission order.
 * - While disconnected, at most `offlineMax` publishes wait to be sent for
 *   the first time. Past that, `overflow` decides: "reject-new" refuses the
 *   new publish, "drop-oldest" refuses the oldest waiting one to make room.
 */

export type OverflowPolicy = "reject-new" | "drop-oldest";

export interface OutboxOptions {
  window: number;
  offlineMax: number;
  overflow: OverflowPolicy;
}

/** Where a publish is in its life. */
export type EntryState =
  /** Waiting to be sent for the first time (no window slot, or no connection). */
  | "queued"
  /** Sent on the current connection, awaiting its reply. */
  | "sent"
  /** Sent on a connection that was lost before the reply: to be sent again. */
  | "unconfirmed";

export interface Entry<P> {
  readonly id: number;
  readonly payload: P;
  /** Safe to send again (it carries a dedup id). */
  readonly retryable: boolean;
  state: EntryState;
  /** How many times it has been sent. */
  sends: number;
}

/** What the client must do after a call. */
export interface Effects<P> {
  /** Send these now, in this order. */
  send: Entry<P>[];
  /** Fail these, with the reason. */
  fail: Array<{ entry: Entry<P>; reason: FailReason }>;
}

export type FailReason = "offline-queue-full" | "not-connected" | "connection-lost";

export class Outbox<P> {
  private readonly options: OutboxOptions;
  private readonly entries = new Map<number, Entry<P>>();
  /**
   * Queued entries in submission order, from `head` on (stale ones are
   * skipped). Slots before `head` are cleared, so that a publish's objects
   * are not kept alive by this array once it was sent.
   */
  private waiting: Array<Entry<P> | undefined> = [];
  private head = 0;
  /** Entries in state "queued". */
  private queuedCount = 0;
  /** Entries in state "sent" or "unconfirmed": they hold window slots. */
  private inFlight = 0;
  private nextId = 1;
  private connected = false;

  constructor(options: OutboxOptions) {
    this.options = { ...options, window: Math.max(1, options.window), offlineMax: Math.max(0, options.offlineMax) };
  }

  /** Publishes not yet answered (sent, unconfirmed or queued). */
  get size(): number {
    return this.entries.size;
  }

  /** Publishes waiting to be sent for the first time. */
  get queued(): number {
    return this.queuedCount;
  }

  get isConnected(): boolean {
    return this.connected;
  }

  /** The entry of `id`, if it is still tracked. */
  get(id: number): Entry<P> | undefined {
    return this.entries.get(id);
  }

  /** Entries in submission order, for inspection. */
  list(): Entry<P>[] {
    return [...this.entries.values()];
  }

  /** A new publish. */
  submit(payload: P, retryable: boolean): { entry: Entry<P>; effects: Effects<P> } {
    const entry: Entry<P> = { id: this.nextId++, payload, retryable, state: "queued", sends: 0 };
    const effects: Effects<P> = { send: [], fail: [] };
    if (!this.connected) {
      if (!retryable) {
        effects.fail.push({ entry, reason: "not-connected" });
        return { entry, effects };
      }
      if (this.queuedCount >= this.options.offlineMax) {
        const oldest = this.options.overflow === "drop-oldest" ? this.oldestQueued() : undefined;
        if (oldest) {
          this.remove(oldest);
          effects.fail.push({ entry: oldest, reason: "offline-queue-full" });
        } else {
          effects.fail.push({ entry, reason: "offline-queue-full" });
          return { entry, effects };
        }
      }
      this.enqueue(entry);
      return { entry, effects };
    }
    this.enqueue(entry);
    effects.send.push(...this.fill());
    return { entry, effects };
  }

  /** The reply (success or refusal) for `id` arrived; the entry is done. */
  settled(id: number): Effects<P> {
    const entry = this.entries.get(id);
    if (!entry) return { send: [], fail: [] };
    this.remove(entry);
    return { send: this.connected ? this.fill() : [], fail: [] };
  }

  /** The application gave up on `id` (a timeout): forget it. */
  cancel(id: number): Effects<P> {
    return this.settled(id);
  }

  /** The connection was lost. */
  disconnected(): Effects<P> {
    this.connected = false;
    const fail: Effects<P>["fail"] = [];
    for (const entry of [...this.entries.values()]) {
      if (entry.state !== "sent") continue;
      if (entry.retryable) {
        entry.state = "unconfirmed";
      } else {
        this.remove(entry);
        fail.push({ entry, reason: "connection-lost" });
      }
    }
    return { send: [], fail };
  }

  /**
   * A connection is ready for publishes (after memberships were resumed):
   * first the unconfirmed ones again, with their dedup ids, then queued
   * ones, within the window.
   */
  connectedReady(): Effects<P> {
    this.connected = true;
    const send: Entry<P>[] = [];
    for (const entry of this.entries.values()) {
      if (entry.state === "unconfirmed") {
        entry.state = "sent";
        entry.sends++;
        send.push(entry);
      }
    }
    send.push(...this.fill());
    return { send, fail: [] };
  }

  /** The client is closing: every entry is returned, to be failed. */
  drain(): Entry<P>[] {
    const all = [...this.entries.values()];
    this.entries.clear();
    this.waiting = [];
    this.head = 0;
    this.queuedCount = 0;
    this.inFlight = 0;
    this.connected = false;
    return all;
  }

  private enqueue(entry: Entry<P>): void {
    this.entries.set(entry.id, entry);
    this.waiting.push(entry);
    this.queuedCount++;
  }

  private remove(entry: Entry<P>): void {
    if (!this.entries.delete(entry.id)) return;
    if (entry.state === "queued") this.queuedCount--;
    else this.inFlight--;
  }

  private oldestQueued(): Entry<P> | undefined {
    for (let i = this.head; i < this.waiting.length; i++) {
      const e = this.waiting[i];
      if (e && e.state === "queued" && this.entries.has(e.id)) return e;
    }
    return undefined;
  }

  /** Moves queued entries to "sent", oldest first, while the window has room. */
  private fill(): Entry<P>[] {
    const out: Entry<P>[] = [];
    while (this.inFlight < this.options.window && this.head < this.waiting.length) {
      const e = this.waiting[this.head];
      this.waiting[this.head++] = undefined;
      if (!e || e.state !== "queued" || !this.entries.has(e.id)) continue;
      e.state = "sent";
      e.sends++;
      this.queuedCount--;
      this.inFlight++;
      out.push(e);
    }
    if (this.head > 1024 && this.head * 2 > this.waiting.length) {
      this.waiting = this.waiting.slice(this.head);
      this.head = 0;
    }
    return out;
  }
}
