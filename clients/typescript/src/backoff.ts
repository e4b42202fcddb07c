/**
 * Reconnect delays: exponential backoff with full jitter, so that the clients of a node that
 * went away do not all come back in the same instant.
 */

export interface BackoffOptions {
  /** The first delay's ceiling, ms (default 500). */
  initialMs?: number;
  /** The largest delay, ms (default 30 000). */
  maxMs?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
}

/** The delay before reconnect attempt `attempt` (0 for the first), drawn with `random` in [0, 1). */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const { initialMs = 500, maxMs = 30_000, factor = 2 } = options;
  const ceiling = Math.min(maxMs, initialMs * factor ** attempt);
  return Math.floor(random() * ceiling);
}
