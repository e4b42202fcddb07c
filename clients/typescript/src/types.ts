/**
 * The shapes switchboard sends and takes, as docs/protocol.md describes them. Ids are decimal
 * strings (64-bit integers lose precision as JavaScript numbers); timestamps are milliseconds
 * since the Unix epoch.
 */

export type Id = string;
/** A consistency token, `topic/partition/offset`: pass it as `after` to read your own write. */
export type ConsistencyToken = string;
/** A resume token, `EPOCH.SEQ.TIME`: opaque; names an entry of the user's feed. */
export type ResumeToken = string;

export interface User {
  id: Id;
  handle: string;
  display_name: string;
  created_at: number;
}

export interface Session {
  user: User;
  token: string;
  expires_at: number;
}

export interface Message {
  id: Id;
  conversation_id: Id;
  sender: Id;
  client_msg_id: string;
  body: string;
  reply_to: Id | null;
  sent_at: number;
  edited_at: number | null;
  deleted: boolean;
  seq: number;
  attachments: Id[];
}

export interface Conversation {
  id: Id;
  kind: "direct" | "group";
  title: string | null;
  created_by: Id;
  created_at: number;
  members: Id[];
  message_count: number;
  last_message: Message | null;
}

export interface ConversationWrite {
  conversation: Conversation;
  token: ConsistencyToken;
}

export interface InboxEntry {
  conversation: Conversation;
  unread: number;
}

export interface HistoryPage {
  messages: Message[];
  next_before?: Id;
}

export interface SendResult {
  message_id: Id;
  token: ConsistencyToken;
  duplicate: boolean;
}

export interface WriteResult {
  token: ConsistencyToken;
}

export interface ReadMarker {
  user_id: Id;
  message_id: Id;
  at: number;
}

export interface Media {
  id: Id;
  conversation_id: Id;
  uploader: Id;
  content_type: string;
  size: number;
  name: string | null;
  created_at: number;
}

export interface UploadResult {
  media: Media;
  token: ConsistencyToken;
}

export interface PresenceEntry {
  user_id: Id;
  online: boolean | null;
  last_seen: number | null;
}

export interface PresenceAnswer {
  presence: PresenceEntry[];
  degraded: boolean;
}

export type CallMedia = "audio" | "video";

/** An entry of `RTCConfiguration.iceServers`: TURN servers come with credentials that run out. */
export interface IceServer {
  urls: string[];
  username?: string;
  credential?: string;
}

/** The ack of an op that makes you a call's participant. */
export interface Entered extends WriteResult {
  ice_servers: IceServer[];
}

export interface Call {
  id: Id;
  kind: "direct" | "room";
  media: CallMedia;
  conversation_id: Id;
  initiator: Id;
  callee: Id | null;
  state: "ringing" | "active" | "ended";
  outcome: "answered" | "declined" | "missed" | "busy" | "cancelled" | null;
  participants: Id[];
  involved: Id[];
  answered_session: string | null;
  started_at: number;
  answered_at: number | null;
  ended_at: number | null;
  end_reason: "hangup" | "declined" | "missed" | "busy" | "cancelled" | "disconnected" | "empty" | null;
  duration_ms: number | null;
}

export interface CallHistoryPage {
  calls: Call[];
  next_before?: Id;
}

export interface ActiveCalls {
  calls: Call[];
  rooms: Call[];
}

export interface LastLocation {
  user_id: Id;
  latitude: number;
  longitude: number;
  accuracy_m: number | null;
  updated_at: number;
  expires_at: number;
  live: boolean;
}

export interface SyncConversation {
  conversation: Conversation;
  unread: number;
  messages: Message[];
  more: boolean;
  read_markers: ReadMarker[];
  rooms: Call[];
}

export interface SyncResult {
  token: ResumeToken;
  full: boolean;
  conversations: SyncConversation[];
  left: Id[];
  calls: Call[];
}

/** The body of every error, over HTTP and WebSocket alike. */
export interface ErrorBody {
  code: string;
  message: string;
  retry_after_ms?: number;
}

/** The first frame of every connection. */
export interface ReadyFrame {
  op: "ready";
  session_id: string;
  user_id: Id;
  heartbeat_ms: number;
  token: ResumeToken;
  resumed?: boolean;
  sync_required?: boolean;
}

/** The ops a client sends, each with its fields and the fields of its `ack`. */
export interface Ops {
  send: {
    fields: { conversation_id: Id; client_msg_id: string; body: string; reply_to?: Id; attachments?: Id[] };
    ack: SendResult;
  };
  edit: { fields: { conversation_id: Id; message_id: Id; body: string }; ack: WriteResult };
  delete: { fields: { conversation_id: Id; message_id: Id }; ack: WriteResult };
  read: { fields: { conversation_id: Id; message_id: Id }; ack: WriteResult };
  typing: { fields: { conversation_id: Id; active?: boolean }; ack: WriteResult };
  "location.share": {
    fields: {
      conversation_id: Id;
      latitude: number;
      longitude: number;
      accuracy_m?: number;
      duration_s: number;
    };
    ack: WriteResult & { expires_at: number };
  };
  "location.update": {
    fields: { conversation_id: Id; latitude: number; longitude: number; accuracy_m?: number };
    ack: WriteResult & { expires_at: number };
  };
  "location.stop": { fields: { conversation_id: Id }; ack: WriteResult };
  ping: { fields: Record<string, never>; ack: Record<string, never> };
  "call.invite": {
    fields: { callee: Id; media: CallMedia; conversation_id?: Id };
    ack: Entered & { call_id: Id };
  };
  "call.accept": { fields: { call_id: Id }; ack: Entered };
  "call.decline": { fields: { call_id: Id }; ack: WriteResult };
  "call.end": { fields: { call_id: Id }; ack: WriteResult };
  "call.signal": {
    fields: { call_id: Id; to_user: Id; kind: SignalKind; payload: string };
    ack: WriteResult;
  };
  "room.start": { fields: { conversation_id: Id; media: CallMedia }; ack: Entered & { call_id: Id } };
  "room.join": { fields: { call_id: Id }; ack: Entered };
  "room.leave": { fields: { call_id: Id }; ack: WriteResult };
  sync: { fields: { since?: ResumeToken; limit?: number }; ack: SyncResult };
}

export type OpName = keyof Ops;
export type SignalKind = "offer" | "answer" | "ice_candidate";

interface CallEventData {
  call_id: Id;
  call: Call;
}

/** The events the server pushes, each with its `data`. */
export interface Events {
  "message.sent": {
    conversation_id: Id;
    message_id: Id;
    sender: Id;
    client_msg_id: string;
    body: string;
    reply_to: Id | null;
    attachments: Id[];
  };
  "message.edited": { conversation_id: Id; message_id: Id; body: string };
  "message.deleted": { conversation_id: Id; message_id: Id };
  "message.read": { conversation_id: Id; user_id: Id; message_id: Id };
  "conversation.created": { conversation_id: Id; kind: "direct" | "group"; title: string | null; members: Id[] };
  "conversation.member_added": { conversation_id: Id; user_id: Id };
  "conversation.member_removed": { conversation_id: Id; user_id: Id };
  "conversation.renamed": { conversation_id: Id; title: string };
  typing: { user_id: Id; conversation_id: Id; active: boolean };
  "location.shared": {
    user_id: Id;
    conversation_id: Id;
    latitude: number;
    longitude: number;
    accuracy_m: number | null;
    expires_at: number;
  };
  "location.stopped": { user_id: Id; conversation_id: Id };
  "presence.changed": { user_id: Id; online: boolean; last_seen?: number };
  "call.invited": CallEventData & { caller: Id; callee: Id; media: CallMedia; conversation_id: Id };
  "call.accepted": CallEventData & { user_id: Id; session_id: string };
  "call.declined": CallEventData & { user_id?: Id };
  "call.missed": CallEventData;
  "call.ended": CallEventData & { reason: string };
  "call.busy": CallEventData & { user_id: Id; caller: Id; media: CallMedia };
  "room.started": CallEventData & { conversation_id: Id; media?: CallMedia };
  "room.joined": CallEventData & { user_id: Id; session_id: string };
  "room.left": CallEventData & { user_id: Id };
  signal: { call_id: Id; from_user: Id; to_user: Id; kind: SignalKind; payload: string };
}

export type EventType = keyof Events;

/** A pushed event frame. */
export interface EventFrame<T extends EventType = EventType> {
  op: "event";
  type: T;
  at: number;
  data: Events[T];
  token: ResumeToken;
}
