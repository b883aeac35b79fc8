/**
 * Which stored lines of a room this page missed. A line is "missed" (shown
 * with "(while you were away)") when it was stored before the page joined
 * the room — the room's last seq in the join's answer marks that end — or
 * while the connection was down (from the loss until the rooms were joined
 * again). A line at or below the highest seq already shown (remembered
 * across visits) is a second copy and is not shown again. No DOM here.
 */

export type Verdict = "live" | "missed" | "shown";

export class Backlog {
  private shown: number;
  private missedUpTo = 0;
  private away = false;

  /** `shown`: the highest seq shown on an earlier visit (0 for none). */
  constructor(shown: number) {
    this.shown = shown;
  }

  /** The highest seq shown so far. */
  get shownSeq(): number {
    return this.shown;
  }

  /** The room was joined (or joined again after a reconnect); `lastSeq` is its last stored seq then. */
  joined(lastSeq: number): void {
    // A last seq below what was shown: the room was deleted and made again.
    if (lastSeq < this.shown) this.shown = 0;
    this.missedUpTo = Math.max(this.missedUpTo, lastSeq);
    this.away = false;
  }

  /** The connection was lost: what arrives until `joined` was published while away. */
  lost(): void {
    this.away = true;
  }

  /** The verdict on a stored line of seq `seq` (deliveries come in seq order). */
  classify(seq: number): Verdict {
    if (seq <= this.shown) return "shown";
    this.shown = seq;
    return this.away || seq <= this.missedUpTo ? "missed" : "live";
  }
}
