/**
 * switchboard's client: typed HTTP calls ({@link HttpClient}), a self-healing WebSocket
 * ({@link Connection}: acks, outbox, resume, sync, heartbeats), calls with WebRTC signalling
 * ({@link Calls}) and uploads with progress.
 */
export { jwtExpiry, Tokens, type TokenOptions } from "./auth.js";
export { backoffDelay, type BackoffOptions } from "./backoff.js";
export {
  Calls,
  type CallTransport,
  type CallsEvents,
  type CallsOptions,
  type IceCandidate,
  type IncomingCall,
  type PeerConnectionLike,
  type SessionDescription,
} from "./calls.js";
export {
  Connection,
  type ConnectionEvents,
  type ConnectionOptions,
  type ConnectionState,
  type WebSocketFactory,
  type WebSocketLike,
} from "./connection.js";
export { Emitter, type Listener } from "./emitter.js";
export { SwitchboardError, responseError } from "./errors.js";
export { HttpClient, login, register, routeUrl, type HttpOptions } from "./http.js";
export { EVENT_TYPES, OPS, ROUTES, type RouteName } from "./protocol.js";
export type { UploadOptions, UploadProgress } from "./upload.js";
export type * from "./types.js";
