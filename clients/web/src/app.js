/**
 * The signed-in app: the conversation list (unread counts, presence dots, new chats and groups),
 * the open chat ({@link ChatView}) and calls ({@link CallView}). One connection carries every
 * live change and comes back by itself after a network failure, resuming where it stopped; the
 * open chat merges what it replays by message id, so a message shows once however often it comes.
 */
import { Calls, Connection, HttpClient } from "../../typescript/src/index.ts";
import { CallView } from "./call-view.js";
import { ChatView } from "./chat.js";
import { fill, h } from "./dom.js";
import { readAnnounced } from "./reads.js";

const STATE_LABELS = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Signed out",
};

export class App {
  constructor(baseUrl, session, logout) {
    this.me = session.user;
    this.logout = logout;
    this.http = new HttpClient({ baseUrl, token: session.token });
    this.socket = new Connection({ baseUrl, token: session.token, device: "web app" });
    this.calls = new Calls(this.socket, {
      createPeerConnection: ({ iceServers }) => new RTCPeerConnection({ iceServers }),
    });
    /** User id → promise of the user. */
    this.users = new Map([[this.me.id, Promise.resolve(this.me)]]);
    /** User id → whether online. */
    this.presence = new Map();
    /** Conversation id → { conversation, unread }. */
    this.conversations = new Map();
    /**
     * Conversation id → the messages pushed to this page, by id. A chat opened later shows them
     * with its history, which a node's store may answer before it holds the newest of them.
     */
    this.pushed = new Map();
    /** Conversation id → the group room live in it. */
    this.rooms = new Map();
    /** The open chat. */
    this.chat = null;

    this.status = h("span", { id: "connection", class: "connecting" }, STATE_LABELS.connecting);
    this.list = h("ul", { id: "conversations" });
    this.notice = h("p", { id: "notice", class: "notice", role: "status" });
    this.main = h("section", { id: "chat-pane", class: "chat-pane" }, nothingOpen());
    this.callView = new CallView(this);
    this.element = h(
      "div",
      { class: "app" },
      h(
        "aside",
        { class: "sidebar" },
        h(
          "header",
          { class: "me" },
          h("strong", { id: "me" }, this.me.display_name),
          h("span", { class: "muted" }, ` @${this.me.handle}`),
          this.status,
          h("button", { id: "logout", class: "link", onclick: () => this.logout() }, "Log out"),
        ),
        this.newDirectForm(),
        this.newGroupForm(),
        this.list,
        this.notice,
      ),
      this.main,
      this.callView.element,
    );
    // A browser that knows its network is gone says so at once: drop the socket then, rather
    // than when heartbeats go unanswered, so that the indicator tells the truth.
    this.dropSocket = () => this.socket.reconnect();
    window.addEventListener("offline", this.dropSocket);
    this.listen();
    void this.load();
  }

  close() {
    window.removeEventListener("offline", this.dropSocket);
    this.callView.hangUp();
    this.socket.close();
  }

  /** A user, fetched once. */
  user(id) {
    if (!this.users.has(id)) {
      const fetched = this.http.user(id);
      fetched.catch(() => this.users.delete(id));
      this.users.set(id, fetched);
    }
    return this.users.get(id);
  }

  async name(id) {
    try {
      return (await this.user(id)).display_name;
    } catch {
      return "someone";
    }
  }

  /** The other member of a direct conversation. */
  peerOf(conversation) {
    return conversation.kind === "direct" ? conversation.members.find((id) => id !== this.me.id) : undefined;
  }

  async title(conversation) {
    return conversation.kind === "group" ? conversation.title : this.name(this.peerOf(conversation));
  }

  say(text) {
    this.notice.textContent = text;
  }

  /** Everything from scratch: at start, and after a sync the server asked for. */
  async load() {
    try {
      const [inbox, active] = await Promise.all([this.http.inbox(), this.http.activeCalls()]);
      this.conversations.clear();
      for (const entry of inbox) this.conversations.set(entry.conversation.id, entry);
      this.rooms.clear();
      for (const room of active.rooms) this.rooms.set(room.conversation_id, room);
      await this.refreshPresence();
      this.renderList();
      this.chat?.reload();
    } catch (error) {
      this.failed(error);
    }
  }

  async refreshPresence() {
    const ids = [...new Set([...this.conversations.values()].flatMap((entry) => entry.conversation.members))].filter(
      (id) => id !== this.me.id,
    );
    if (ids.length === 0) return;
    const answer = await this.http.presence(ids.slice(0, 200));
    for (const entry of answer.presence) this.presence.set(entry.user_id, entry.online === true);
  }

  failed(error) {
    if (error?.code === "unauthorized" || error?.code === "token_expired") this.logout();
    else this.say(error?.message ?? String(error));
  }

  listen() {
    const socket = this.socket;
    socket.on("state", (state) => {
      this.status.className = state;
      this.status.textContent = STATE_LABELS[state];
    });
    socket.on("sync", () => void this.load());
    socket.on("error", (error) => this.failed(error));
    socket.on("message.sent", (frame) => this.onMessage(frame));
    socket.on("message.edited", (frame) => this.forChat(frame, (chat) => chat.onEdited(frame.data)));
    socket.on("message.deleted", (frame) => {
      this.pushed.get(frame.data.conversation_id)?.delete(frame.data.message_id);
      this.forChat(frame, (chat) => chat.onDeleted(frame.data));
    });
    socket.on("message.read", (frame) => this.forChat(frame, (chat) => chat.onRead(frame.data)));
    socket.on("typing", (frame) => this.forChat(frame, (chat) => chat.onTyping(frame.data)));
    socket.on("location.shared", (frame) => this.forChat(frame, (chat) => chat.onLocation(frame.data)));
    socket.on("location.stopped", (frame) => this.forChat(frame, (chat) => chat.onLocationStopped(frame.data)));
    socket.on("conversation.created", (frame) => void this.fetchConversation(frame.data.conversation_id));
    socket.on("conversation.member_added", (frame) => void this.fetchConversation(frame.data.conversation_id));
    socket.on("conversation.renamed", (frame) => void this.fetchConversation(frame.data.conversation_id));
    socket.on("conversation.member_removed", (frame) => {
      const { conversation_id: id, user_id: user } = frame.data;
      if (user !== this.me.id) return void this.fetchConversation(id);
      this.conversations.delete(id);
      if (this.chat?.id === id) this.closeChat();
      this.renderList();
    });
    socket.on("presence.changed", (frame) => {
      this.presence.set(frame.data.user_id, frame.data.online);
      this.renderList();
      this.chat?.renderHeader();
    });
    for (const type of ["room.started", "room.joined", "room.left", "call.ended"]) {
      socket.on(type, (frame) => this.onRoom(frame.data.call));
    }
  }

  forChat(frame, apply) {
    if (this.chat?.id === frame.data.conversation_id) apply(this.chat);
  }

  onMessage(frame) {
    const data = frame.data;
    const message = {
      id: data.message_id,
      sender: data.sender,
      client_msg_id: data.client_msg_id,
      body: data.body,
      attachments: data.attachments,
      sentAt: frame.at,
    };
    if (!this.pushed.has(data.conversation_id)) this.pushed.set(data.conversation_id, new Map());
    this.pushed.get(data.conversation_id).set(message.id, message);
    const entry = this.conversations.get(data.conversation_id);
    if (!entry) {
      void this.fetchConversation(data.conversation_id);
      return;
    }
    const known = entry.conversation.last_message;
    if (!known || known.id !== data.message_id) {
      entry.conversation.last_message = { id: data.message_id, sender: data.sender, body: data.body, sent_at: frame.at };
      const open = this.chat?.id === data.conversation_id;
      if (!open && data.sender !== this.me.id) entry.unread += 1;
    }
    if (this.chat?.id === data.conversation_id) this.chat.onMessage(message);
    this.renderList();
  }

  onRoom(call) {
    if (call.kind !== "room") return;
    if (call.state === "ended") this.rooms.delete(call.conversation_id);
    else this.rooms.set(call.conversation_id, call);
    if (this.chat?.id === call.conversation_id) this.chat.renderHeader();
  }

  async fetchConversation(id) {
    try {
      const conversation = await readAnnounced(() => this.http.conversation(id));
      const entry = this.conversations.get(id);
      if (entry) entry.conversation = conversation;
      else this.conversations.set(id, { conversation, unread: conversation.last_message ? 1 : 0 });
      await this.refreshPresence();
      this.renderList();
      if (this.chat?.id === id) this.chat.renderHeader();
    } catch (error) {
      this.failed(error);
    }
  }

  /** Adds a conversation this user made, and opens it. */
  async opened(write) {
    const { conversation } = write;
    if (!this.conversations.has(conversation.id)) this.conversations.set(conversation.id, { conversation, unread: 0 });
    await this.refreshPresence();
    this.open(conversation.id);
  }

  open(id) {
    if (this.chat?.id === id) return;
    this.chat?.close();
    this.chat = new ChatView(this, id);
    fill(this.main, this.chat.element);
    const entry = this.conversations.get(id);
    if (entry) entry.unread = 0;
    this.renderList();
  }

  closeChat() {
    this.chat?.close();
    this.chat = null;
    fill(this.main, nothingOpen());
  }

  renderList() {
    const entries = [...this.conversations.values()].sort((a, b) => activity(b.conversation) - activity(a.conversation));
    const items = entries.map(({ conversation, unread }) => {
      const peer = this.peerOf(conversation);
      const dot = peer
        ? h("span", { class: `presence ${this.presence.get(peer) ? "online" : "offline"}`, title: this.presence.get(peer) ? "online" : "offline" })
        : h("span", { class: "presence group", title: "group" });
      const title = h("span", { class: "title" }, conversation.title ?? "…");
      void this.title(conversation).then((text) => (title.textContent = text));
      return h(
        "li",
        {
          class: `conversation${this.chat?.id === conversation.id ? " selected" : ""}`,
          "data-id": conversation.id,
          onclick: () => this.open(conversation.id),
        },
        dot,
        h("span", { class: "summary" }, title, h("span", { class: "preview" }, conversation.last_message?.body ?? "")),
        h("span", { class: "unread", hidden: unread === 0 }, String(unread)),
      );
    });
    fill(this.list, items);
  }

  newDirectForm() {
    const handle = h("input", { id: "direct-handle", placeholder: "handle", required: true });
    return h(
      "form",
      {
        id: "new-direct",
        class: "row",
        onsubmit: async (event) => {
          event.preventDefault();
          try {
            const user = await this.http.userByHandle(handle.value.trim().replace(/^@/, ""));
            await this.opened(await this.http.directConversation(user.id));
            handle.value = "";
          } catch (error) {
            this.failed(error);
          }
        },
      },
      handle,
      h("button", { type: "submit" }, "Chat"),
    );
  }

  newGroupForm() {
    const title = h("input", { id: "group-title", placeholder: "group name", required: true });
    const members = h("input", { id: "group-members", placeholder: "handles, comma-separated" });
    return h(
      "form",
      {
        id: "new-group",
        onsubmit: async (event) => {
          event.preventDefault();
          try {
            const handles = members.value.split(/[\s,]+/).map((handle) => handle.replace(/^@/, "")).filter(Boolean);
            const users = await Promise.all(handles.map((handle) => this.http.userByHandle(handle)));
            await this.opened(await this.http.createGroup(title.value.trim(), users.map((user) => user.id)));
            title.value = members.value = "";
          } catch (error) {
            this.failed(error);
          }
        },
      },
      title,
      members,
      h("button", { type: "submit" }, "Create group"),
    );
  }
}

/** What the chat pane shows with no conversation open. */
function nothingOpen() {
  return h("p", { class: "muted empty" }, "Pick a conversation, or start one.");
}

/** When a conversation last changed, for the list's order. */
function activity(conversation) {
  return conversation.last_message?.sent_at ?? conversation.created_at;
}
