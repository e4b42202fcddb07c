/**
 * The WebSocket side of the protocol, kept alive: ops as promises settled by their replies,
 * pushed events as typed listeners, and the reconnect rules of docs/protocol.md built in.
 *
 * - Every frame processed moves the resume token; a reconnect (exponential backoff with jitter)
 *   resumes from it, so a resumed socket replays exactly what was missed. When the server can no
 *   longer resume from it (`sync_required`), the connection syncs from it and emits `sync`.
 * - `send` puts the message in an outbox with its `client_msg_id`; it is sent again, with the
 *   same id, after a reconnect or a transient refusal, until its `ack` settles the promise: the
 *   server stores it once whatever the number of tries.
 * - A `ping` op goes out every heartbeat; a socket that answers nothing for two heartbeats is
 *   dropped and replaced (a half-open TCP connection would otherwise look alive for minutes).
 */
import { Tokens, type TokenOptions } from "./auth.js";
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { SwitchboardError } from "./errors.js";
import type {
  ErrorBody,
  EventFrame,
  EventType,
  Id,
  Ops,
  OpName,
  ReadyFrame,
  ResumeToken,
  SendResult,
  SyncResult,
} from "./types.js";

/** What a WebSocket implementation must offer: the browser's, Node's global one, or `ws`. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type WebSocketFactory = new (url: string) => WebSocketLike;

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface ConnectionOptions extends TokenOptions {
  /** The server, as `http(s)://host:port`. */
  baseUrl: string;
  /** A label recorded with the session. */
  device?: string;
  /** The resume token of the last frame processed by an earlier run of this device. */
  resumeToken?: ResumeToken;
  /** The WebSocket implementation (default: the global `WebSocket`). */
  WebSocket?: WebSocketFactory;
  backoff?: BackoffOptions;
  /** How often to ping, ms (default: the server's `heartbeat_ms`). */
  heartbeatMs?: number;
}

export type ConnectionEvents = { [K in EventType]: EventFrame<K> } & {
  /** Every pushed event. */
  event: EventFrame;
  ready: ReadyFrame;
  state: ConnectionState;
  /** What was missed when a resume was refused: merge it (or replace, when `full`). */
  sync: SyncResult;
  /** Errors that answer no op of this client (a `sync_required` frame, a sync that failed). */
  error: SwitchboardError;
  closed: { code: number; reason: string };
};

/** A message waiting for its `ack`. */
interface Outgoing {
  fields: Ops["send"]["fields"];
  resolve: (result: SendResult & { client_msg_id: string }) => void;
  reject: (error: SwitchboardError) => void;
  /** Set while a transient refusal's wait runs. */
  retry?: ReturnType<typeof setTimeout>;
}

/** An op sent on the current socket, waiting for its reply. */
interface Pending {
  resolve: (ack: Record<string, unknown>) => void;
  reject: (error: SwitchboardError) => void;
  outgoing?: Outgoing;
}

/** A non-send op waiting for the socket to open. */
interface Queued {
  frame: Record<string, unknown>;
  pending: Pending;
}

const OPEN = 1;

export class Connection extends Emitter<ConnectionEvents> {
  private readonly tokens: Tokens;
  private readonly WebSocketImpl: WebSocketFactory;
  private socket: WebSocketLike | undefined;
  private currentState: ConnectionState = "connecting";
  private lastToken: ResumeToken | undefined;
  private ready: ReadyFrame | undefined;
  private attempt = 0;
  private nextRef = 0;
  private readonly pending = new Map<string, Pending>();
  private readonly outbox: Outgoing[] = [];
  private queued: Queued[] = [];
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private lastFrameAt = 0;

  constructor(private readonly options: ConnectionOptions) {
    super();
    this.tokens = new Tokens(options);
    this.lastToken = options.resumeToken;
    const impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketFactory }).WebSocket;
    if (!impl) throw new TypeError("no WebSocket implementation: pass one as the WebSocket option");
    this.WebSocketImpl = impl;
    void this.open();
  }

  get state(): ConnectionState {
    return this.currentState;
  }
  /** The token of the last frame processed: keep it to resume in a later run. */
  get resumeToken(): ResumeToken | undefined {
    return this.lastToken;
  }
  /** This user's id, once connected. */
  get userId(): Id | undefined {
    return this.ready?.user_id;
  }
  /** This connection's session id, which names this device in `call.accepted`. */
  get sessionId(): string | undefined {
    return this.ready?.session_id;
  }
  /** Messages sent and not yet acknowledged, oldest first. */
  get unsent(): ReadonlyArray<Ops["send"]["fields"]> {
    return this.outbox.map((outgoing) => outgoing.fields);
  }

  /** Resolves once the connection is open (at once if it is). */
  async opened(): Promise<ReadyFrame> {
    if (this.currentState === "open" && this.ready) return this.ready;
    return this.next("ready");
  }

  /**
   * Sends a message; resolves with its `ack`. Until then it stays in the outbox and is sent
   * again with the same `client_msg_id` after a reconnect or a transient refusal.
   */
  send(
    conversationId: Id,
    body: string,
    options: { reply_to?: Id; attachments?: Id[]; client_msg_id?: string } = {},
  ): Promise<SendResult & { client_msg_id: string }> {
    const fields: Ops["send"]["fields"] = {
      conversation_id: conversationId,
      client_msg_id: options.client_msg_id ?? crypto.randomUUID(),
      body,
      ...(options.reply_to === undefined ? {} : { reply_to: options.reply_to }),
      ...(options.attachments === undefined ? {} : { attachments: options.attachments }),
    };
    return new Promise((resolve, reject) => {
      if (this.currentState === "closed") {
        reject(closedError());
        return;
      }
      const outgoing: Outgoing = { fields, resolve, reject };
      this.outbox.push(outgoing);
      if (this.currentState === "open") this.transmit(outgoing);
    });
  }

  /**
   * Sends any other op; resolves with its `ack` (or `pong`), rejects with its error. Waits for
   * the socket when it is not open; rejects with `disconnected` if the socket drops before the
   * reply, since whether the op took effect is then unknown.
   */
  request<K extends OpName>(op: K, fields: Ops[K]["fields"]): Promise<Ops[K]["ack"]> {
    return new Promise((resolve, reject) => {
      if (this.currentState === "closed") {
        reject(closedError());
        return;
      }
      const pending: Pending = { resolve: resolve as Pending["resolve"], reject };
      const frame = { op, ...fields };
      if (this.currentState === "open") this.write(frame, pending);
      else this.queued.push({ frame, pending });
    });
  }

  /** What changed since a resume token, over this socket. */
  sync(since?: ResumeToken, limit?: number): Promise<SyncResult> {
    return this.request("sync", {
      ...(since === undefined ? {} : { since }),
      ...(limit === undefined ? {} : { limit }),
    });
  }

  /** Whether an event is the echo of a message this user sent (from this device or another). */
  isOwn(frame: EventFrame): boolean {
    return frame.type === "message.sent" && (frame as EventFrame<"message.sent">).data.sender === this.userId;
  }

  /** Closes for good: rejects what waits, and stops reconnecting. */
  close(): void {
    if (this.currentState === "closed") return;
    this.setState("closed");
    clearTimeout(this.reconnectTimer);
    this.stopHeartbeat();
    const socket = this.socket;
    this.socket = undefined;
    socket?.close(1000, "closed by the client");
    this.failPending(closedError());
    for (const outgoing of this.outbox.splice(0)) {
      clearTimeout(outgoing.retry);
      outgoing.reject(closedError());
    }
  }

  /** Drops the socket as a network failure would, and reconnects (for tests and "retry now" buttons). */
  reconnect(): void {
    if (this.currentState !== "open" && this.currentState !== "connecting") return;
    this.lost(4000, "dropped by the client");
  }

  private async open(): Promise<void> {
    let token: string;
    try {
      token = await this.tokens.current();
    } catch (error) {
      this.emit("error", asError(error));
      this.scheduleReconnect();
      return;
    }
    if (this.currentState === "closed") return;
    const url = new URL("/v1/ws", this.options.baseUrl);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    // The server reads the token as-is; a JWT needs no escaping.
    let query = `token=${token}`;
    if (this.lastToken) query += `&resume=${encodeURIComponent(this.lastToken)}`;
    if (this.options.device) query += `&device=${encodeURIComponent(this.options.device)}`;
    const socket = new this.WebSocketImpl(`${url.origin}${url.pathname}?${query}`);
    this.socket = socket;
    socket.onmessage = (event) => {
      if (this.socket === socket) this.receive(String(event.data));
    };
    socket.onclose = (event) => {
      if (this.socket === socket) this.lost(event.code, event.reason);
    };
    socket.onerror = () => {
      // A close follows every error; reconnecting is decided there.
    };
  }

  private receive(text: string): void {
    this.lastFrameAt = Date.now();
    let frame: Record<string, unknown>;
    try {
      frame = JSON.parse(text);
    } catch {
      this.emit("error", new SwitchboardError({ code: "bad_frame", message: `not JSON: ${text.slice(0, 100)}` }));
      return;
    }
    switch (frame.op) {
      case "ready":
        this.onReady(frame as unknown as ReadyFrame);
        break;
      case "event":
        this.onEvent(frame as unknown as EventFrame);
        break;
      case "ack":
      case "pong":
        this.settle(frame.ref, (pending) => pending.resolve(withoutEnvelope(frame)));
        break;
      case "error":
        this.onError(frame.ref, new SwitchboardError(frame.error as ErrorBody));
        break;
    }
  }

  private onReady(ready: ReadyFrame): void {
    const missedSince = this.lastToken;
    this.ready = ready;
    this.lastToken = ready.token;
    this.attempt = 0;
    this.setState("open");
    this.startHeartbeat(this.options.heartbeatMs ?? ready.heartbeat_ms);
    this.emit("ready", ready);
    if (ready.sync_required) {
      this.sync(missedSince).then(
        (result) => this.emit("sync", result),
        (error) => this.emit("error", asError(error)),
      );
    }
    for (const outgoing of this.outbox) {
      if (outgoing.retry === undefined) this.transmit(outgoing);
    }
    const queued = this.queued;
    this.queued = [];
    for (const { frame, pending } of queued) this.write(frame, pending);
  }

  private onEvent(frame: EventFrame): void {
    this.emit(frame.type, frame as never);
    this.emit("event", frame);
    // Listeners have run: the frame is processed, and a resume starts after it.
    this.lastToken = frame.token;
  }

  private onError(ref: unknown, error: SwitchboardError): void {
    const pending = typeof ref === "string" ? this.pending.get(ref) : undefined;
    if (!pending) {
      this.emit("error", error);
      return;
    }
    this.pending.delete(ref as string);
    const outgoing = pending.outgoing;
    // A send refused for now (rate limit, a backend away, the same id still in flight) is
    // tried again with the same id; anything else is final.
    if (outgoing && (error.retryable || error.code === "conflict")) {
      const wait = error.retryAfterMs ?? backoffDelay(1, this.options.backoff);
      outgoing.retry = setTimeout(() => {
        outgoing.retry = undefined;
        if (this.currentState === "open") this.transmit(outgoing);
      }, wait);
      return;
    }
    if (outgoing) this.outbox.splice(this.outbox.indexOf(outgoing), 1);
    pending.reject(error);
  }

  private transmit(outgoing: Outgoing): void {
    this.write(
      { op: "send", ...outgoing.fields },
      {
        outgoing,
        resolve: (ack) => {
          this.outbox.splice(this.outbox.indexOf(outgoing), 1);
          outgoing.resolve({ ...(ack as unknown as SendResult), client_msg_id: outgoing.fields.client_msg_id });
        },
        reject: outgoing.reject,
      },
    );
  }

  private write(frame: Record<string, unknown>, pending: Pending): void {
    const ref = `r${++this.nextRef}`;
    this.pending.set(ref, pending);
    try {
      this.socket!.send(JSON.stringify({ ...frame, ref }));
    } catch {
      // The socket is going away; its close handler settles or keeps what was pending.
    }
  }

  private settle(ref: unknown, settle: (pending: Pending) => void): void {
    if (typeof ref !== "string") return;
    const pending = this.pending.get(ref);
    if (!pending) return;
    this.pending.delete(ref);
    settle(pending);
  }

  /** The socket is gone: keep the outbox, fail what else was under way, and come back. */
  private lost(code: number, reason: string): void {
    const socket = this.socket;
    this.socket = undefined;
    if (socket && socket.readyState <= OPEN) socket.close(1000, reason.slice(0, 100));
    this.stopHeartbeat();
    this.emit("closed", { code, reason });
    if (this.currentState === "closed") return;
    for (const [ref, pending] of this.pending) {
      if (!pending.outgoing) pending.reject(new SwitchboardError({ code: "disconnected", message: "the socket closed before the reply" }));
      this.pending.delete(ref);
    }
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    this.setState("reconnecting");
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.open(), backoffDelay(this.attempt++, this.options.backoff));
  }

  private startHeartbeat(intervalMs: number): void {
    this.stopHeartbeat();
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastFrameAt > 2 * intervalMs) {
        this.lost(4000, "no answer to pings");
        return;
      }
      this.request("ping", {}).catch(() => {});
    }, intervalMs);
  }

  private stopHeartbeat(): void {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }

  private failPending(error: SwitchboardError): void {
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
    for (const { pending } of this.queued.splice(0)) pending.reject(error);
  }

  private setState(state: ConnectionState): void {
    if (this.currentState === state) return;
    this.currentState = state;
    this.emit("state", state);
  }
}

function withoutEnvelope(frame: Record<string, unknown>): Record<string, unknown> {
  const { op: _op, ref: _ref, ...rest } = frame;
  return rest;
}

function closedError(): SwitchboardError {
  return new SwitchboardError({ code: "closed", message: "the connection was closed" });
}

function asError(error: unknown): SwitchboardError {
  return error instanceof SwitchboardError
    ? error
    : new SwitchboardError({ code: "network", message: error instanceof Error ? error.message : String(error) });
}
