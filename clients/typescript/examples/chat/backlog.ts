/**
 * Which stored lines of a room this page missed. The SDK flags a delivery
 * `catchUp` when it was stored before the room was joined, or joined again
 * after a reconnect (published while the page was closed or the
 * connection was down): such a line is "missed" and shown with "(while you
 * were away)". A line at or below the highest seq already shown
 * (remembered across visits) is a second copy and is not shown again. No
 * DOM here.
 */

export type Verdict = "live" | "missed" | "shown";

export class Backlog {
  private shown: number;

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
  }

  /** The verdict on a stored line of seq `seq` (deliveries come in seq order); `catchUp` as the SDK flagged it. */
  classify(seq: number, catchUp: boolean): Verdict {
    if (seq <= this.shown) return "shown";
    this.shown = seq;
    return catchUp ? "missed" : "live";
  }
}
