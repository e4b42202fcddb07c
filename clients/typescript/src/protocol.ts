/**
 * The protocol's surface as lists: every route, op and event type this client speaks. The HTTP
 * client calls routes only through {@link ROUTES}, and the lists of ops and events are checked
 * against their types here, so these lists are what the client does; a test compares them with
 * docs/protocol.md and the server's sources, so that neither can gain something the client lacks.
 */
import type { EventType, OpName } from "./types.js";

/** Every `/v1` route, by what it does, as `METHOD /path` with `{name}` for path parameters. */
export const ROUTES = {
  register: "POST /v1/auth/register",
  login: "POST /v1/auth/login",
  me: "GET /v1/users/me",
  userById: "GET /v1/users/{id}",
  userByHandle: "GET /v1/users/by-handle/{handle}",
  createConversation: "POST /v1/conversations",
  inbox: "GET /v1/conversations",
  conversation: "GET /v1/conversations/{id}",
  renameConversation: "PATCH /v1/conversations/{id}",
  addMember: "POST /v1/conversations/{id}/members",
  removeMember: "DELETE /v1/conversations/{id}/members/{user_id}",
  history: "GET /v1/conversations/{id}/messages",
  send: "POST /v1/conversations/{id}/messages",
  edit: "PATCH /v1/conversations/{id}/messages/{message_id}",
  deleteMessage: "DELETE /v1/conversations/{id}/messages/{message_id}",
  markRead: "POST /v1/conversations/{id}/read",
  readMarkers: "GET /v1/conversations/{id}/read",
  locations: "GET /v1/conversations/{id}/locations",
  upload: "POST /v1/conversations/{id}/media",
  download: "GET /v1/media/{id}",
  mediaInfo: "GET /v1/media/{id}/info",
  presence: "GET /v1/presence",
  callHistory: "GET /v1/calls",
  activeCalls: "GET /v1/calls/active",
  call: "GET /v1/calls/{id}",
  sync: "GET /v1/sync",
  socket: "GET /v1/ws",
} as const;

export type RouteName = keyof typeof ROUTES;

// Objects keyed by the types: the compiler refuses one that misses or invents a name.
const opNames: Record<OpName, true> = {
  send: true,
  edit: true,
  delete: true,
  read: true,
  typing: true,
  "location.share": true,
  "location.update": true,
  "location.stop": true,
  ping: true,
  "call.invite": true,
  "call.accept": true,
  "call.decline": true,
  "call.end": true,
  "call.signal": true,
  "room.start": true,
  "room.join": true,
  "room.leave": true,
  sync: true,
};

const eventTypes: Record<EventType, true> = {
  "message.sent": true,
  "message.edited": true,
  "message.deleted": true,
  "message.read": true,
  "conversation.created": true,
  "conversation.member_added": true,
  "conversation.member_removed": true,
  "conversation.renamed": true,
  typing: true,
  "location.shared": true,
  "location.stopped": true,
  "presence.changed": true,
  "call.invited": true,
  "call.accepted": true,
  "call.declined": true,
  "call.missed": true,
  "call.ended": true,
  "call.busy": true,
  "room.started": true,
  "room.joined": true,
  "room.left": true,
  signal: true,
};

/** Every op a client may send. */
export const OPS = Object.keys(opNames) as OpName[];
/** Every event type the server pushes. */
export const EVENT_TYPES = Object.keys(eventTypes) as EventType[];
