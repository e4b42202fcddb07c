/**
 * The access token a client presents, and the hook that renews it. The protocol has no refresh
 * route (a client logs in again), so renewal is the application's: `refreshToken` is called
 * before a token runs out and when the server says it has.
 */

export interface TokenOptions {
  /** The access token, or a function giving the current one. */
  token: string | (() => string | Promise<string>);
  /** Gives a new access token (by logging in again, say); called when the current one expires. */
  refreshToken?: () => Promise<string>;
  /** How long before its expiry a token is renewed, ms (default 30 000). */
  refreshMarginMs?: number;
}

/** Seconds since the epoch at which a JWT expires, from its `exp` claim; undefined if unreadable. */
export function jwtExpiry(token: string): number | undefined {
  const payload = token.split(".")[1];
  if (!payload) return undefined;
  try {
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

export class Tokens {
  private refreshing: Promise<string> | undefined;
  private renewed: string | undefined;

  constructor(private readonly options: TokenOptions) {}

  /** A token to present now: renewed first when it is about to expire and a hook is given. */
  async current(): Promise<string> {
    const token = this.renewed ?? (await this.given());
    const exp = jwtExpiry(token);
    const margin = this.options.refreshMarginMs ?? 30_000;
    if (this.options.refreshToken && exp !== undefined && exp * 1000 - margin <= Date.now()) {
      return this.refresh();
    }
    return token;
  }

  /** Whether a refused token can be replaced. */
  get refreshable(): boolean {
    return this.options.refreshToken !== undefined;
  }

  /** Asks the hook for a new token; concurrent callers share one renewal. */
  refresh(): Promise<string> {
    const hook = this.options.refreshToken;
    if (!hook) return this.given();
    this.refreshing ??= hook()
      .then((token) => (this.renewed = token))
      .finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  private async given(): Promise<string> {
    const { token } = this.options;
    return typeof token === "string" ? token : token();
  }
}
