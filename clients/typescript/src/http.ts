/**
 * Typed calls of every `/v1` HTTP route. Errors come back as {@link SwitchboardError}; a
 * request refused for an expired token is sent once more with a token from the refresh hook.
 */
import { Tokens, type TokenOptions } from "./auth.js";
import { SwitchboardError, responseError } from "./errors.js";
import { ROUTES, type RouteName } from "./protocol.js";
import { upload, type UploadOptions } from "./upload.js";
import type {
  ActiveCalls,
  Call,
  CallHistoryPage,
  Conversation,
  ConversationWrite,
  HistoryPage,
  Id,
  InboxEntry,
  LastLocation,
  Media,
  PresenceAnswer,
  ReadMarker,
  SendResult,
  Session,
  SyncResult,
  UploadResult,
  User,
  WriteResult,
} from "./types.js";

type Query = Record<string, string | number | undefined>;

interface Request {
  params?: Record<string, Id>;
  query?: Query;
  body?: unknown;
}

/** The URL of a route, its parameters filled in. */
export function routeUrl(baseUrl: string, route: RouteName, params: Record<string, Id> = {}, query: Query = {}): URL {
  const path = ROUTES[route].split(" ")[1]!.replace(/\{(\w+)\}/g, (_, name: string) => {
    const value = params[name];
    if (value === undefined) throw new TypeError(`${route} needs ${name}`);
    return encodeURIComponent(value);
  });
  const url = new URL(path, baseUrl);
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined) url.searchParams.set(key, String(value));
  }
  return url;
}

/** Registration and login: the routes that need no token. */
export async function register(
  baseUrl: string,
  body: { handle: string; password: string; display_name?: string },
): Promise<Session> {
  return anonymous(baseUrl, "register", body);
}

export async function login(baseUrl: string, body: { handle: string; password: string }): Promise<Session> {
  return anonymous(baseUrl, "login", body);
}

async function anonymous<T>(baseUrl: string, route: RouteName, body: unknown): Promise<T> {
  const response = await fetch(routeUrl(baseUrl, route), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await responseError(response);
  return response.json() as Promise<T>;
}

export interface HttpOptions extends TokenOptions {
  /** The server, as `http(s)://host:port`. */
  baseUrl: string;
}

export class HttpClient {
  readonly baseUrl: string;
  readonly tokens: Tokens;

  constructor(options: HttpOptions) {
    this.baseUrl = options.baseUrl;
    this.tokens = new Tokens(options);
  }

  me(): Promise<User> {
    return this.call("me");
  }
  user(id: Id): Promise<User> {
    return this.call("userById", { params: { id } });
  }
  userByHandle(handle: string): Promise<User> {
    return this.call("userByHandle", { params: { handle } });
  }

  /** The direct conversation with `userId` (created, or the existing one). */
  directConversation(userId: Id): Promise<ConversationWrite> {
    return this.call("createConversation", { body: { kind: "direct", user_id: userId } });
  }
  createGroup(title: string, members: Id[]): Promise<ConversationWrite> {
    return this.call("createConversation", { body: { kind: "group", title, members } });
  }
  async inbox(after?: string): Promise<InboxEntry[]> {
    const answer = await this.call<{ conversations: InboxEntry[] }>("inbox", { query: { after } });
    return answer.conversations;
  }
  conversation(id: Id, after?: string): Promise<Conversation> {
    return this.call("conversation", { params: { id }, query: { after } });
  }
  rename(id: Id, title: string): Promise<ConversationWrite> {
    return this.call("renameConversation", { params: { id }, body: { title } });
  }
  addMember(id: Id, userId: Id): Promise<ConversationWrite> {
    return this.call("addMember", { params: { id }, body: { user_id: userId } });
  }
  /** Removes a member; removing yourself leaves the conversation. */
  removeMember(id: Id, userId: Id): Promise<WriteResult> {
    return this.call("removeMember", { params: { id, user_id: userId } });
  }

  /** A page of history, newest first; pass the page's `next_before` as `before` for the next. */
  history(id: Id, page: { limit?: number; before?: Id; after?: string } = {}): Promise<HistoryPage> {
    return this.call("history", { params: { id }, query: page });
  }
  send(
    id: Id,
    message: { client_msg_id: string; body: string; reply_to?: Id; attachments?: Id[] },
  ): Promise<SendResult> {
    return this.call("send", { params: { id }, body: message });
  }
  edit(id: Id, messageId: Id, body: string): Promise<WriteResult> {
    return this.call("edit", { params: { id, message_id: messageId }, body: { body } });
  }
  deleteMessage(id: Id, messageId: Id): Promise<WriteResult> {
    return this.call("deleteMessage", { params: { id, message_id: messageId } });
  }
  markRead(id: Id, messageId: Id): Promise<WriteResult> {
    return this.call("markRead", { params: { id }, body: { message_id: messageId } });
  }
  async readMarkers(id: Id, after?: string): Promise<ReadMarker[]> {
    const answer = await this.call<{ markers: ReadMarker[] }>("readMarkers", { params: { id }, query: { after } });
    return answer.markers;
  }
  async locations(id: Id, after?: string): Promise<LastLocation[]> {
    const answer = await this.call<{ locations: LastLocation[] }>("locations", { params: { id }, query: { after } });
    return answer.locations;
  }

  /** Uploads a file into a conversation, reporting progress as its bytes go out. */
  async upload(id: Id, file: Blob | Uint8Array, options: UploadOptions): Promise<UploadResult> {
    const url = routeUrl(this.baseUrl, "upload", { id }, { name: options.name });
    return this.retryingExpired(async (token) => upload(url, token, file, options));
  }
  /** Downloads a file; `range` is a `Range` header value such as `bytes=0-1023`. */
  async download(mediaId: Id, range?: string): Promise<Response> {
    const url = routeUrl(this.baseUrl, "download", { id: mediaId });
    return this.retryingExpired(async (token) => {
      const headers: Record<string, string> = { authorization: `Bearer ${token}` };
      if (range) headers.range = range;
      const response = await fetch(url, { headers });
      if (!response.ok) throw await responseError(response);
      return response;
    });
  }
  /** A URL for `<img src>` or `<video src>`: the token travels as a query parameter. */
  async mediaUrl(mediaId: Id): Promise<string> {
    // The server reads this parameter as-is, which a JWT's characters allow.
    return `${routeUrl(this.baseUrl, "download", { id: mediaId })}?token=${await this.tokens.current()}`;
  }
  mediaInfo(mediaId: Id, after?: string): Promise<Media> {
    return this.call("mediaInfo", { params: { id: mediaId }, query: { after } });
  }

  presence(userIds: Id[]): Promise<PresenceAnswer> {
    return this.call("presence", { query: { users: userIds.join(",") } });
  }

  callHistory(page: { limit?: number; before?: Id; after?: string } = {}): Promise<CallHistoryPage> {
    return this.call("callHistory", { query: page });
  }
  activeCalls(): Promise<ActiveCalls> {
    return this.call("activeCalls");
  }
  callById(id: Id): Promise<Call> {
    return this.call("call", { params: { id } });
  }

  /** What changed since a resume token (all of it without one). */
  sync(since?: string, limit?: number): Promise<SyncResult> {
    return this.call("sync", { query: { since, limit } });
  }

  /** Calls a JSON route. */
  async call<T>(route: RouteName, request: Request = {}): Promise<T> {
    const method = ROUTES[route].split(" ")[0]!;
    const url = routeUrl(this.baseUrl, route, request.params, request.query);
    return this.retryingExpired(async (token) => {
      const headers: Record<string, string> = { authorization: `Bearer ${token}` };
      if (request.body !== undefined) headers["content-type"] = "application/json";
      const response = await fetch(url, {
        method,
        headers,
        body: request.body === undefined ? null : JSON.stringify(request.body),
      });
      if (!response.ok) throw await responseError(response);
      return (await response.json()) as T;
    });
  }

  /** Runs `attempt` with the current token, and once more with a renewed one if it had expired. */
  private async retryingExpired<T>(attempt: (token: string) => Promise<T>): Promise<T> {
    try {
      return await attempt(await this.tokens.current());
    } catch (error) {
      if (!(error instanceof SwitchboardError) || error.code !== "token_expired" || !this.tokens.refreshable) {
        throw error;
      }
      return attempt(await this.tokens.refresh());
    }
  }
}
