/**
 * Calls on screen: a ringing call to accept or decline, and the call itself, 1:1 or a group
 * room, with this device's camera and microphone and a tile per other participant. Each tile
 * shows its peer connection's ICE state (`data-ice`), so a stalled connection is visible.
 */
import { fill, h } from "./dom.js";

export class CallView {
  constructor(app) {
    this.app = app;
    /** The call on screen: { callId, kind (direct or room), stream, tiles: Map<user id, tile>, ringing }, or null. */
    this.current = null;
    this.status = h("p", { id: "call-status" });
    this.localVideo = h("video", { id: "local-video", autoplay: true, muted: true, playsInline: true });
    this.tiles = h("div", { id: "remote-videos", class: "tiles" });
    this.buttons = h("div", { class: "row" });
    this.element = h(
      "div",
      { id: "call", class: "call", hidden: true },
      this.status,
      h("div", { class: "videos" }, this.tiles, this.localVideo),
      this.buttons,
    );
    const calls = app.calls;
    calls.on("incoming", (incoming) => this.ring(incoming));
    calls.on("answered-elsewhere", ({ callId }) => this.ended(callId, "answered on another device"));
    calls.on("peer", ({ callId, userId, connection }) => this.connect(callId, userId, connection));
    calls.on("peer-left", ({ userId }) => this.dropTile(userId));
    calls.on("ended", ({ callId, reason }) => this.ended(callId, reason));
    calls.on("error", (error) => app.say(`Call: ${error?.message ?? error}`));
  }

  get busy() {
    return this.current !== null;
  }

  /** Rings `userId`. */
  async call(userId, media, conversationId) {
    if (!(await this.begin(media, "direct", `Calling ${await this.app.name(userId)}…`))) return;
    try {
      this.current.callId = await this.app.calls.invite(userId, media, conversationId);
    } catch (error) {
      this.failed(error);
    }
  }

  async startRoom(conversationId) {
    if (!(await this.begin("video", "room", "In the room"))) return;
    try {
      this.current.callId = await this.app.calls.startRoom(conversationId, "video");
    } catch (error) {
      this.failed(error);
    }
  }

  async joinRoom(callId) {
    if (!(await this.begin("video", "room", "In the room"))) return;
    this.current.callId = callId;
    try {
      await this.app.calls.joinRoom(callId);
    } catch (error) {
      this.failed(error);
    }
  }

  ring(incoming) {
    if (this.busy) return;
    this.current = { callId: incoming.callId, kind: "direct", stream: null, tiles: new Map(), ringing: true };
    this.element.hidden = false;
    void this.app.name(incoming.caller).then((name) => {
      if (this.current?.ringing) this.status.textContent = `${name} is calling (${incoming.media})`;
    });
    fill(
      this.buttons,
      h("button", { id: "accept-call", onclick: () => void this.accept(incoming) }, "Accept"),
      h("button", { id: "decline-call", class: "danger", onclick: () => void this.decline(incoming) }, "Decline"),
    );
  }

  async accept(incoming) {
    this.current = null;
    if (!(await this.begin(incoming.media, "direct", "In call"))) return;
    this.current.callId = incoming.callId;
    try {
      await incoming.accept();
    } catch (error) {
      this.failed(error);
    }
  }

  async decline(incoming) {
    this.close();
    await incoming.decline().catch((error) => this.app.say(error.message));
  }

  /** Takes the camera and microphone and shows the call; false if they cannot be had. */
  async begin(media, kind, status) {
    if (this.busy && !this.current.ringing) {
      this.app.say("Already in a call.");
      return false;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: media === "video" });
    } catch (error) {
      this.app.say(`No camera or microphone: ${error.message}`);
      return false;
    }
    this.current = { callId: null, kind, stream, tiles: new Map() };
    this.localVideo.srcObject = stream;
    this.status.textContent = status;
    fill(this.buttons, h("button", { id: "hangup", class: "danger", onclick: () => this.hangUp() }, "Hang up"));
    fill(this.tiles);
    this.element.hidden = false;
    return true;
  }

  /** Sends this device's tracks to a peer and shows what it sends back. */
  connect(callId, userId, connection) {
    const current = this.current;
    if (!current || (current.callId && current.callId !== callId)) return;
    current.callId ??= callId;
    for (const track of current.stream.getTracks()) connection.addTrack(track, current.stream);
    const video = h("video", { autoplay: true, playsInline: true });
    const state = h("span", { class: "ice" }, "connecting");
    const tile = h("figure", { class: "tile", "data-user": userId, "data-ice": "new" }, video, h("figcaption", {}, h("span", { class: "name" }), " · ", state));
    void this.app.name(userId).then((name) => (tile.querySelector(".name").textContent = name));
    connection.ontrack = ({ streams }) => {
      if (streams[0] && video.srcObject !== streams[0]) video.srcObject = streams[0];
    };
    connection.oniceconnectionstatechange = () => {
      tile.dataset.ice = connection.iceConnectionState;
      state.textContent = connection.iceConnectionState;
    };
    this.dropTile(userId);
    current.tiles.set(userId, tile);
    this.tiles.append(tile);
    if (current.kind === "direct") this.status.textContent = "In call";
  }

  dropTile(userId) {
    this.current?.tiles.get(userId)?.remove();
    this.current?.tiles.delete(userId);
  }

  /** Ends the call (or leaves the room) on the server; the `ended` event closes it here. */
  hangUp() {
    const callId = this.current?.callId;
    if (!callId) {
      this.close();
      return;
    }
    (this.current.kind === "room" ? this.app.calls.leaveRoom(callId) : this.app.calls.end(callId)).catch((error) => this.failed(error));
  }

  ended(callId, reason) {
    if (this.current?.callId !== callId) return;
    this.close();
    this.app.say(`Call ended (${reason}).`);
  }

  failed(error) {
    this.close();
    this.app.say(`Call: ${error.message}`);
  }

  close() {
    for (const track of this.current?.stream?.getTracks() ?? []) track.stop();
    this.current = null;
    this.localVideo.srcObject = null;
    fill(this.tiles);
    fill(this.buttons);
    this.element.hidden = true;
  }
}
