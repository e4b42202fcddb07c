/**
 * The one error type of the client: the server's typed error (`code`, `message`,
 * `retry_after_ms`), or one of the client's own codes (`disconnected`, `closed`, `network`).
 */
import type { ErrorBody } from "./types.js";

/** Codes after which the same request may succeed if sent again later. */
const RETRYABLE = new Set(["rate_limited", "unavailable", "not_caught_up", "timeout", "too_many_connections"]);

export class SwitchboardError extends Error {
  readonly code: string;
  /** The HTTP status, for errors of HTTP requests. */
  readonly status: number | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(body: ErrorBody, status?: number) {
    super(body.message);
    this.name = "SwitchboardError";
    this.code = body.code;
    this.status = status;
    this.retryAfterMs = body.retry_after_ms;
  }

  /** Whether sending the same request again later may succeed. */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }
}

/** The error a response carries, as a {@link SwitchboardError}. */
export async function responseError(response: Response): Promise<SwitchboardError> {
  const text = await response.text();
  try {
    return new SwitchboardError(JSON.parse(text).error, response.status);
  } catch {
    return new SwitchboardError({ code: "internal", message: text || response.statusText }, response.status);
  }
}
