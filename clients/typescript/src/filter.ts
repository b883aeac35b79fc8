/**
 * The per-subscription delivery filter: a state machine with no I/O that
 * decides, for each delivery the broker pushes, whether the application
 * sees it. Same semantics as the Rust SDK's `filter.rs`.
 *
 * - **ordered** (default for durable memberships): messages in seq order;
 *   never one already acknowledged (the SDK acks such a redelivery again,
 *   silently); never a second copy of one the application still holds; a
 *   redelivery only of what the application gave back (nack) or held past
 *   the hold limit.
 * - **unordered**: everything except what was already acknowledged.
 * - **shared** (a group's consumer): the group splits the seqs between its
 *   consumers and hands over a leaving consumer's messages to the others,
 *   so lower seqs can follow higher ones; only copies of what is held or
 *   acknowledged are dropped.
 *
 * Volatile deliveries (seq 0) never pass through a filter.
 */

/** What to do with one delivery. */
export type Verdict = "hand" | "reack" | "drop";

export type FilterMode = "ordered" | "unordered" | "shared";

/** In shared mode, how many acknowledged seqs above the floor are remembered. */
export const SHARED_ACKED_CAP = 65_536;

export class Filter {
  readonly mode: FilterMode;
  /** Every seq below this is acknowledged. */
  private floor = 1;
  /** Acknowledged seqs at or above the floor. */
  private readonly acked = new Set<number>();
  /** Seqs handed to the application and not yet acked or nacked, with when. */
  private readonly heldAt = new Map<number, number>();
  /**
   * The seq handed out last and its time, before it goes into `heldAt` (0 =
   * none): a delivery acknowledged as soon as it is handed out (auto-ack)
   * then never touches the map, whose churn costs more than the rest of the
   * filter. Every other method first moves it into the map. It is never a
   * key of the map at the same time.
   */
  private lastSeq = 0;
  private lastAt = 0;
  /** Highest seq handed out (ordered mode). */
  private lastHanded = 0;
  /** Seqs given back (nack, hold expired): their redelivery passes once. */
  private readonly released = new Set<number>();

  constructor(mode: FilterMode) {
    this.mode = mode;
  }

  /** Decides about a delivery of `seq` arriving at `now` (ms). */
  offer(seq: number, now: number): Verdict {
    this.spill();
    if (seq < this.floor || this.acked.has(seq)) return "reack";
    if (this.mode === "ordered") {
      if (this.heldAt.has(seq)) return "drop";
      if (seq <= this.lastHanded && !this.released.delete(seq)) return "drop";
    } else if (this.mode === "shared") {
      if (this.heldAt.has(seq)) return "drop";
      this.released.delete(seq);
    } else {
      this.released.delete(seq);
    }
    if (this.heldAt.has(seq)) {
      this.heldAt.set(seq, now); // handed again while held (unordered mode): never in both places
    } else {
      this.lastSeq = seq;
      this.lastAt = now;
    }
    if (seq > this.lastHanded) this.lastHanded = seq;
    return "hand";
  }

  /** The application acknowledged `seq`. */
  ack(seq: number): void {
    if (seq === this.lastSeq) this.lastSeq = 0;
    else {
      this.spill();
      this.heldAt.delete(seq);
    }
    if (this.released.size > 0) this.released.delete(seq);
    if (seq === this.floor) {
      // In order (the common case): the floor moves without the set.
      this.floor++;
      if (this.acked.size > 0) this.compact();
    } else if (seq > this.floor) {
      this.acked.add(seq);
    }
    if (this.mode === "shared" && this.acked.size > SHARED_ACKED_CAP) {
      // Forget the oldest remembered ack; a redelivery of it would be handed
      // again, which at-least-once allows.
      const first = this.acked.values().next();
      if (!first.done) this.acked.delete(first.value);
    }
  }

  /** The broker reported that every seq below `nextSeq` is acknowledged. */
  advanceFloor(nextSeq: number): void {
    this.spill();
    if (nextSeq > this.floor) {
      this.floor = nextSeq;
      for (const s of this.acked) if (s < nextSeq) this.acked.delete(s);
    }
    this.compact();
  }

  /**
   * The broker moved the cursor past `fromSeq..=toSeq` (deleted by
   * retention, a purge or a redrive): stop holding any of them and treat
   * everything up to `toSeq` as done.
   */
  skipped(fromSeq: number, toSeq: number): void {
    this.spill();
    for (const s of [...this.heldAt.keys()]) if (s >= fromSeq && s <= toSeq) this.heldAt.delete(s);
    for (const s of [...this.released]) if (s >= fromSeq && s <= toSeq) this.released.delete(s);
    this.advanceFloor(toSeq + 1);
  }

  /** The application gave `seq` back: its redelivery will be let through. */
  release(seq: number): void {
    this.spill();
    if (this.heldAt.delete(seq)) this.released.add(seq);
  }

  /** Seqs held since before `cutoff` are released (held too long); returns them. */
  expireHeld(cutoff: number): number[] {
    this.spill();
    const old: number[] = [];
    for (const [s, t] of this.heldAt) if (t < cutoff) old.push(s);
    for (const s of old) {
      this.heldAt.delete(s);
      this.released.add(s);
    }
    return old.sort((a, b) => a - b);
  }

  /** Seqs the application holds now, ascending. */
  held(): number[] {
    this.spill();
    return [...this.heldAt.keys()].sort((a, b) => a - b);
  }

  /** Whether the application holds `seq`. */
  holds(seq: number): boolean {
    this.spill();
    return this.heldAt.has(seq);
  }

  /** Every seq below this is acknowledged. */
  ackedFloor(): number {
    return this.floor;
  }

  /**
   * The lowest seq a cumulative ack must not cover: one the application
   * holds, or gave back and the broker will redeliver. `Infinity` if none.
   */
  lowestOutstanding(): number {
    this.spill();
    let low = Number.POSITIVE_INFINITY;
    for (const s of this.heldAt.keys()) if (s < low) low = s;
    for (const s of this.released) if (s < low) low = s;
    return low;
  }

  /** Moves the seq handed out last into `heldAt`. */
  private spill(): void {
    if (this.lastSeq === 0) return;
    this.heldAt.set(this.lastSeq, this.lastAt);
    this.lastSeq = 0;
  }

  private compact(): void {
    while (this.acked.delete(this.floor)) this.floor++;
  }
}
