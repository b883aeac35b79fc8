/**
 * Reconnect delays: exponential backoff with full jitter. Attempt n waits a
 * uniformly random time in [0, min(maxDelayMs, initialDelayMs · 2ⁿ)), so
 * clients that lost the broker together do not come back together.
 */

/** How the client reconnects after losing its connection. */
export interface ReconnectOptions {
  /** Upper bound of the first delay (ms). Default 100. */
  initialDelayMs?: number;
  /** Largest upper bound of any delay (ms). Default 10,000. */
  maxDelayMs?: number;
  /** Give up (and close the client) after this many failed attempts in a row. Default: never. */
  maxAttempts?: number;
}

export interface ReconnectPolicy {
  initialDelayMs: number;
  maxDelayMs: number;
  maxAttempts: number;
}

export function reconnectPolicy(options: ReconnectOptions = {}): ReconnectPolicy {
  return {
    initialDelayMs: Math.max(0, options.initialDelayMs ?? 100),
    maxDelayMs: Math.max(0, options.maxDelayMs ?? 10_000),
    maxAttempts: options.maxAttempts ?? Number.POSITIVE_INFINITY,
  };
}

/** The cap of attempt `attempt` (0-based): min(max, initial · 2^attempt). */
export function backoffCap(policy: ReconnectPolicy, attempt: number): number {
  const exp = Math.min(Math.max(0, attempt), 30);
  return Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** exp);
}

/**
 * The delay before attempt `attempt` (0-based), full jitter: `unit` is a
 * number in [0, 1) (Math.random() in the client; fixed in tests).
 */
export function backoffDelay(policy: ReconnectPolicy, attempt: number, unit: number): number {
  const u = Math.min(Math.max(unit, 0), 1);
  return Math.floor(backoffCap(policy, attempt) * u);
}
