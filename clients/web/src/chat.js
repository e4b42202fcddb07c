/**
 * One open conversation: its history (paged, oldest at the top), live messages, typing, read
 * receipts, uploads with their progress and inline images and videos, live locations, and the
 * buttons that start calls and rooms. Messages are kept by id (and, while unsent, by the
 * `client_msg_id` this device gave them), so a replayed or echoed message replaces itself.
 */
import { clock, compareIds, fill, h } from "./dom.js";
import { readAnnounced } from "./reads.js";

const PAGE = 30;
/** How long a typing indicator lasts with no news from the typist. */
const TYPING_SHOWN_MS = 8000;
/** How often this device repeats that its user is typing, and when it says they stopped. */
const TYPING_REPEAT_MS = 3000;
const TYPING_IDLE_MS = 5000;
const LOCATION_SHARE_S = 15 * 60;

export class ChatView {
  constructor(app, id) {
    this.app = app;
    this.id = id;
    /** Message id (or `client_msg_id` while unsent) → message, with its `node`. */
    this.messages = new Map();
    this.nextBefore = undefined;
    /** User id → the last message id they read. */
    this.readers = new Map();
    /** User id → the timer that hides their typing indicator. */
    this.typists = new Map();
    /** User id → their live location. */
    this.locations = new Map();
    this.lastRead = undefined;
    this.typingSentAt = 0;
    this.typingIdle = undefined;
    this.locationWatch = undefined;

    this.header = h("header", { class: "chat-header" });
    this.older = h("button", { id: "older", class: "link", hidden: true, onclick: () => void this.loadOlder() }, "Load older messages");
    this.list = h("ol", { id: "messages", class: "messages" });
    this.typing = h("p", { id: "typing", class: "typing muted" });
    this.locationList = h("ul", { id: "locations", class: "locations" });
    this.progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true });
    this.element = h(
      "div",
      { class: "chat", "data-id": id },
      this.header,
      this.locationList,
      h("div", { class: "scroller" }, this.older, this.list),
      this.typing,
      this.progress,
      this.composer(),
    );
    this.renderHeader();
    for (const message of app.pushed.get(id)?.values() ?? []) this.put({ ...message });
    this.renderMessages();
    void this.reload();
  }

  get entry() {
    return this.app.conversations.get(this.id);
  }

  close() {
    this.stopSharing();
    for (const timer of this.typists.values()) clearTimeout(timer);
    clearTimeout(this.typingIdle);
  }

  /** The newest page of history, read markers and locations, from scratch. */
  async reload() {
    try {
      const [page, markers, locations] = await Promise.all([
        this.app.http.history(this.id, { limit: PAGE }),
        this.app.http.readMarkers(this.id),
        this.app.http.locations(this.id),
      ]);
      this.addPage(page);
      for (const marker of markers) this.onRead(marker);
      for (const location of locations) if (location.live) this.locations.set(location.user_id, location);
      this.renderLocations();
      this.markRead();
    } catch (error) {
      this.app.failed(error);
    }
  }

  async loadOlder() {
    try {
      this.addPage(await this.app.http.history(this.id, { limit: PAGE, before: this.nextBefore }));
    } catch (error) {
      this.app.failed(error);
    }
  }

  addPage(page) {
    for (const message of page.messages) {
      if (!message.deleted) this.put({ ...message, sentAt: message.sent_at });
    }
    this.nextBefore = page.next_before;
    this.older.hidden = page.next_before === undefined;
    this.renderMessages();
  }

  /** Adds or replaces a message: by id, and an unsent one of this device by its `client_msg_id`. */
  put(message) {
    const pending = this.messages.get(message.client_msg_id);
    if (pending && message.id && pending.sender === message.sender) {
      this.messages.delete(message.client_msg_id);
      message.node = pending.node;
    }
    const known = this.messages.get(message.id ?? message.client_msg_id);
    this.messages.set(message.id ?? message.client_msg_id, { ...known, ...message, node: known?.node ?? message.node });
  }

  onMessage(message) {
    this.put({ ...message });
    this.renderMessages();
    if (message.sender !== this.app.me.id) {
      this.onTyping({ user_id: message.sender, active: false });
      this.markRead();
    }
  }

  onEdited(data) {
    const message = this.messages.get(data.message_id);
    if (!message) return;
    this.put({ ...message, body: data.body, edited: true });
    this.renderMessages();
  }

  onDeleted(data) {
    this.messages.get(data.message_id)?.node?.remove();
    this.messages.delete(data.message_id);
  }

  onRead(marker) {
    const known = this.readers.get(marker.user_id);
    if (known && compareIds(known, marker.message_id) >= 0) return;
    this.readers.set(marker.user_id, marker.message_id);
    if (marker.user_id === this.app.me.id) this.lastRead = marker.message_id;
    this.renderMessages();
  }

  onTyping(data) {
    clearTimeout(this.typists.get(data.user_id));
    this.typists.delete(data.user_id);
    if (data.active) this.typists.set(data.user_id, setTimeout(() => this.onTyping({ ...data, active: false }), TYPING_SHOWN_MS));
    void Promise.all([...this.typists.keys()].map((id) => this.app.name(id))).then((names) => {
      this.typing.textContent =
        names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
    });
  }

  onLocation(data) {
    this.locations.set(data.user_id, data);
    this.renderLocations();
  }

  onLocationStopped(data) {
    this.locations.delete(data.user_id);
    this.renderLocations();
  }

  /** Tells the server the newest message others sent here is read, once. */
  markRead() {
    const newest = this.sorted().findLast((message) => message.id && message.sender !== this.app.me.id);
    if (!newest || (this.lastRead && compareIds(this.lastRead, newest.id) >= 0)) return;
    this.lastRead = newest.id;
    this.app.socket.request("read", { conversation_id: this.id, message_id: newest.id }).catch((error) => this.app.failed(error));
  }

  sorted() {
    const sent = [...this.messages.values()].filter((message) => message.id).sort((a, b) => compareIds(a.id, b.id));
    return [...sent, ...[...this.messages.values()].filter((message) => !message.id)];
  }

  renderMessages() {
    const atBottom = this.list.parentElement
      ? this.list.parentElement.scrollHeight - this.list.parentElement.scrollTop - this.list.parentElement.clientHeight < 40
      : true;
    const seen = this.seenUpTo();
    for (const message of this.sorted()) {
      message.node ??= h("li");
      this.renderMessage(message, seen);
      this.list.append(message.node);
    }
    if (atBottom) this.list.parentElement?.scrollTo({ top: this.list.parentElement.scrollHeight });
  }

  /** The newest message id some other member has read. */
  seenUpTo() {
    let newest;
    for (const [user, id] of this.readers) {
      if (user !== this.app.me.id && (!newest || compareIds(id, newest) > 0)) newest = id;
    }
    return newest;
  }

  renderMessage(message, seen) {
    const own = message.sender === this.app.me.id;
    const node = message.node;
    node.className = `message${own ? " own" : ""}${message.id ? "" : " pending"}`;
    if (message.id) node.dataset.id = message.id;
    node.dataset.clientMsgId = message.client_msg_id;
    const sender = h("span", { class: "sender" }, own ? "You" : "…");
    if (!own) void this.app.name(message.sender).then((name) => (sender.textContent = name));
    const receipt = own
      ? h("span", { class: "receipt" }, !message.id ? "sending…" : seen && compareIds(seen, message.id) >= 0 ? "seen" : "sent")
      : null;
    fill(
      node,
      sender,
      h("span", { class: "body" }, message.body),
      message.attachments?.length ? h("div", { class: "attachments" }, message.attachments.map((id) => this.attachment(id))) : null,
      h("span", { class: "meta muted" }, message.sentAt ? clock(message.sentAt) : "", message.edited ? " · edited" : "", receipt ? " · " : "", receipt),
    );
  }

  /** An upload shown inline: an image, a video, or a link; made once per upload. */
  attachment(mediaId) {
    const made = attachments.get(mediaId);
    if (made) return made;
    const holder = h("span", { class: "attachment", "data-media": mediaId }, "attachment…");
    attachments.set(mediaId, holder);
    void this.fillAttachment(holder, mediaId);
    return holder;
  }

  async fillAttachment(holder, mediaId) {
    try {
      const info = await readAnnounced(() => this.app.http.mediaInfo(mediaId));
      const src = await this.app.http.mediaUrl(mediaId);
      const type = info.content_type;
      const shown = type.startsWith("image/")
        ? h("img", { src, alt: info.name ?? "image" })
        : type.startsWith("video/")
          ? h("video", { src, controls: true, preload: "metadata" })
          : h("a", { href: src, download: info.name ?? "file" }, info.name ?? "file");
      fill(holder, shown);
    } catch (error) {
      holder.textContent = `attachment unavailable (${error.message})`;
    }
  }

  renderLocations() {
    fill(
      this.locationList,
      [...this.locations.values()].map((location) => {
        const name = h("strong", {}, "…");
        void this.app.name(location.user_id).then((text) => (name.textContent = text));
        const where = `${location.latitude.toFixed(5)}, ${location.longitude.toFixed(5)}`;
        return h(
          "li",
          { "data-user": location.user_id },
          name,
          ` at ${where}${location.accuracy_m ? ` (±${Math.round(location.accuracy_m)} m)` : ""}, live until ${clock(location.expires_at)}`,
        );
      }),
    );
    this.renderHeader();
  }

  renderHeader() {
    const entry = this.entry;
    if (!entry) return;
    const { conversation } = entry;
    const name = h("span", {}, conversation.title ?? "…");
    void this.app.title(conversation).then((text) => (name.textContent = text));
    const title = h("h2", { id: "chat-title" }, name);
    const peer = this.app.peerOf(conversation);
    const actions = h("div", { class: "actions" });
    if (peer) {
      const online = this.app.presence.get(peer);
      title.append(h("span", { id: "chat-presence", class: `presence ${online ? "online" : "offline"}`, title: online ? "online" : "offline" }));
      actions.append(
        h("button", { id: "call-button", onclick: () => void this.app.callView.call(peer, "video", this.id) }, "Video call"),
        h("button", { id: "audio-call-button", class: "secondary", onclick: () => void this.app.callView.call(peer, "audio", this.id) }, "Audio call"),
      );
    } else {
      const room = this.app.rooms.get(this.id);
      actions.append(
        room
          ? h("button", { id: "room-button", onclick: () => void this.app.callView.joinRoom(room.id) }, `Join room (${room.participants.length})`)
          : h("button", { id: "room-button", onclick: () => void this.app.callView.startRoom(this.id) }, "Start room"),
      );
    }
    const sharing = this.locationWatch !== undefined;
    actions.append(
      h(
        "button",
        { id: "location-button", class: "secondary", onclick: () => (sharing ? this.stopSharing() : this.share()) },
        sharing ? "Stop sharing location" : "Share location",
      ),
    );
    fill(this.header, h("div", { class: "row" }, title, actions), peer ? null : this.members(conversation));
  }

  members(conversation) {
    const names = h("span", { id: "members", class: "muted" });
    void Promise.all(conversation.members.map((id) => this.app.name(id))).then((list) => (names.textContent = list.join(", ")));
    const handle = h("input", { id: "add-member", placeholder: "add by handle", required: true });
    const add = async (event) => {
      event.preventDefault();
      try {
        const user = await this.app.http.userByHandle(handle.value.trim().replace(/^@/, ""));
        await this.app.http.addMember(this.id, user.id);
        handle.value = "";
      } catch (error) {
        this.app.failed(error);
      }
    };
    const leave = async () => {
      try {
        await this.app.http.removeMember(this.id, this.app.me.id);
      } catch (error) {
        this.app.failed(error);
      }
    };
    return h(
      "div",
      { class: "row members" },
      `${conversation.members.length} members: `,
      names,
      h("form", { class: "row", onsubmit: add }, handle, h("button", { type: "submit", class: "secondary" }, "Add")),
      h("button", { id: "leave-group", class: "link", onclick: leave }, "Leave group"),
    );
  }

  composer() {
    const input = h("input", { id: "message-input", placeholder: "Write a message", autocomplete: "off" });
    const file = h("input", { id: "file-input", type: "file", accept: "image/*,video/*,*/*", hidden: true });
    input.addEventListener("input", () => this.typed(input.value !== ""));
    file.addEventListener("change", () => {
      for (const chosen of file.files ?? []) void this.upload(chosen);
      file.value = "";
    });
    return h(
      "form",
      {
        id: "composer",
        class: "composer row",
        onsubmit: (event) => {
          event.preventDefault();
          const body = input.value.trim();
          if (!body) return;
          input.value = "";
          this.typed(false);
          this.send(body);
        },
      },
      h("button", { id: "attach-button", type: "button", class: "secondary", title: "Send an image, a video or a file", onclick: () => file.click() }, "Attach"),
      file,
      input,
      h("button", { id: "send-button", type: "submit" }, "Send"),
    );
  }

  /** Tells the others that this user types (repeated while they do), or stopped. */
  typed(active) {
    clearTimeout(this.typingIdle);
    const now = Date.now();
    if (active && now - this.typingSentAt < TYPING_REPEAT_MS) {
      this.typingIdle = setTimeout(() => this.typed(false), TYPING_IDLE_MS);
      return;
    }
    if (!active && this.typingSentAt === 0) return;
    this.typingSentAt = active ? now : 0;
    if (active) this.typingIdle = setTimeout(() => this.typed(false), TYPING_IDLE_MS);
    this.app.socket.request("typing", { conversation_id: this.id, active }).catch(() => {
      // Typing is worth nothing late: a refused or lost one is not repeated.
    });
  }

  /** Shows the message at once as sending; the connection keeps it until the server has it. */
  send(body, attachments) {
    const clientMsgId = crypto.randomUUID();
    this.put({ client_msg_id: clientMsgId, sender: this.app.me.id, body, attachments, sentAt: Date.now() });
    this.renderMessages();
    this.app.socket.send(this.id, body, { client_msg_id: clientMsgId, ...(attachments ? { attachments } : {}) }).then(
      (ack) => {
        this.put({ client_msg_id: clientMsgId, sender: this.app.me.id, id: ack.message_id });
        this.renderMessages();
      },
      (error) => this.app.failed(error),
    );
  }

  async upload(file) {
    this.progress.hidden = false;
    this.progress.value = 0;
    try {
      const { media } = await this.app.http.upload(this.id, file, {
        contentType: file.type || "application/octet-stream",
        name: file.name,
        onProgress: ({ loaded, total }) => (this.progress.value = total ? loaded / total : 1),
      });
      this.send(file.name || "a file", [media.id]);
    } catch (error) {
      this.app.failed(error);
    } finally {
      this.progress.hidden = true;
    }
  }

  /** Shares this device's position, live, for a quarter of an hour. */
  share() {
    if (!navigator.geolocation) {
      this.app.say("This browser cannot tell where it is.");
      return;
    }
    let shared = false;
    this.locationWatch = navigator.geolocation.watchPosition(
      ({ coords }) => {
        const fields = {
          conversation_id: this.id,
          latitude: coords.latitude,
          longitude: coords.longitude,
          ...(coords.accuracy ? { accuracy_m: coords.accuracy } : {}),
        };
        const op = shared ? "location.update" : "location.share";
        shared = true;
        const request = op === "location.share" ? { ...fields, duration_s: LOCATION_SHARE_S } : fields;
        this.app.socket.request(op, request).catch((error) => this.app.failed(error));
      },
      (error) => {
        this.app.say(`No location: ${error.message}`);
        this.stopSharing();
      },
    );
    this.renderHeader();
  }

  stopSharing() {
    if (this.locationWatch === undefined) return;
    navigator.geolocation.clearWatch(this.locationWatch);
    this.locationWatch = undefined;
    this.app.socket.request("location.stop", { conversation_id: this.id }).catch(() => {});
    this.renderHeader();
  }
}

/** Media id → its element: an upload is fetched and shown once, however often it is redrawn. */
const attachments = new Map();
