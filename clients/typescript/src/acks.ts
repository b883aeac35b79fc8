/**
 * Coalescing of acknowledgements, free of I/O. `delivery.ack()` does not
 * send a frame at once: the subscription collects the seqs acked within a
 * short bound (a few ms) and sends them in one `Ack`. Where the acked seqs
 * are contiguous with nothing outstanding below them, the frame uses the
 * cumulative `up_to` instead of listing them.
 *
 * `up_to` acknowledges *every delivered seq* at or below it, including one
 * the application still holds or gave back with a nack; so it is used only
 * below the lowest such seq, and never for a group's consumer (whose
 * `up_to` would also cover seqs delivered to other consumers; see
 * docs/protocol.md, "Ack").
 */

/** The broker's limit of seqs in one `Ack`. */
export const MAX_SEQS_PER_ACK = 10_000;

export interface AckPlan {
  /** Cumulative: every delivered seq ≤ upTo (0 = none). */
  upTo: number;
  /** Individual seqs (ascending). */
  seqs: number[];
}

/** The distinct positive seqs of `pending`, ascending (without sorting when they already are, as auto-acks are). */
function ascendingPositive(pending: Iterable<number>): number[] {
  if (Array.isArray(pending)) {
    const a = pending as number[];
    let ok = true;
    for (let i = 0; i < a.length; i++) {
      const s = a[i] ?? 0;
      if (!(s > 0) || (i > 0 && s <= (a[i - 1] ?? 0))) {
        ok = false;
        break;
      }
    }
    if (ok) return a;
  }
  return [...new Set(pending)].filter((s) => s > 0).sort((a, b) => a - b);
}

/**
 * The `Ack` frames for `pending` seqs. `lowestOutstanding` is the lowest
 * seq held or given back (Infinity if none); `cumulative` is false for a
 * group's consumer.
 */
export function planAcks(pending: Iterable<number>, lowestOutstanding: number, cumulative: boolean, maxSeqs = MAX_SEQS_PER_ACK): AckPlan[] {
  const seqs = ascendingPositive(pending);
  if (seqs.length === 0) return [];
  let upTo = 0;
  let rest = seqs;
  if (cumulative) {
    let i = 0;
    while (i < seqs.length && (seqs[i] ?? 0) < lowestOutstanding) i++;
    // Worth it only when it replaces more than one seq.
    if (i > 1) {
      upTo = seqs[i - 1] ?? 0;
      rest = seqs.slice(i);
    }
  }
  const plans: AckPlan[] = [];
  for (let at = 0; at < rest.length || (plans.length === 0 && upTo > 0); at += maxSeqs) {
    plans.push({ upTo: plans.length === 0 ? upTo : 0, seqs: rest.slice(at, at + maxSeqs) });
    if (rest.length === 0) break;
  }
  return plans;
}
