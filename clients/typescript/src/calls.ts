/**
 * Calls on top of a connection: 1:1 calls that ring (invite, accept, decline, end), group rooms,
 * and the WebRTC signalling between the participants, relayed by the server's `call.signal`.
 *
 * Each remote participant gets one peer connection, made by the application's factory (a real
 * `RTCPeerConnection` in a browser; anything with the same methods in a test). Who sends the
 * offer is fixed so that two peers never offer to each other at once: the caller in a 1:1 call,
 * and in a room the participant with the smaller user id. Offers and answers travel as their SDP
 * text, ICE candidates as the JSON of `RTCIceCandidateInit`.
 *
 * The server hands each participant the ICE servers (STUN, and TURN with credentials of their
 * own) in the answer to the op that made it one; the factory gets them for the connection's
 * `iceServers`, and signals that arrive before that answer wait for it.
 *
 * Several devices of the callee ring; the first accept wins. The others hear `call.accepted`
 * naming another session and emit `answered-elsewhere`; an accept that lost the race rejects
 * with `call_not_ringing`.
 */
import { Emitter } from "./emitter.js";
import type {
  Call,
  CallMedia,
  EventFrame,
  EventType,
  Events,
  IceServer,
  Id,
  Ops,
  OpName,
  SignalKind,
} from "./types.js";

export interface SessionDescription {
  type: "offer" | "answer" | "pranswer" | "rollback";
  sdp?: string;
}

export interface IceCandidate {
  candidate?: string;
  sdpMid?: string | null;
  sdpMLineIndex?: number | null;
  usernameFragment?: string | null;
}

/** The part of `RTCPeerConnection` signalling uses. */
export interface PeerConnectionLike {
  createOffer(): Promise<SessionDescription>;
  createAnswer(): Promise<SessionDescription>;
  setLocalDescription(description: SessionDescription): Promise<void>;
  setRemoteDescription(description: SessionDescription): Promise<void>;
  addIceCandidate(candidate: IceCandidate): Promise<void>;
  onicecandidate: ((event: { candidate: { toJSON(): IceCandidate } | null }) => void) | null;
  close(): void;
}

/** What calls need of a connection. */
export interface CallTransport {
  readonly userId: Id | undefined;
  readonly sessionId: string | undefined;
  request<K extends OpName>(op: K, fields: Ops[K]["fields"]): Promise<Ops[K]["ack"]>;
  on<K extends EventType>(name: K, listener: (frame: EventFrame<K>) => void): () => void;
}

export interface CallsOptions {
  /**
   * Makes the peer connection to `userId` in call `callId`, e.g.
   * `({ iceServers }) => new RTCPeerConnection({ iceServers })`.
   */
  createPeerConnection: (peer: { callId: Id; userId: Id; iceServers: IceServer[] }) => PeerConnectionLike;
}

/** A call rings on this device. */
export interface IncomingCall {
  callId: Id;
  caller: Id;
  media: CallMedia;
  conversationId: Id;
  accept(): Promise<void>;
  decline(): Promise<void>;
}

export type CallsEvents = {
  incoming: IncomingCall;
  /** The callee answered on another device: stop ringing here. */
  "answered-elsewhere": { callId: Id };
  /** A peer connection was made: add tracks to it, show its streams. */
  peer: { callId: Id; userId: Id; connection: PeerConnectionLike };
  /** A peer left a room (its connection is closed). */
  "peer-left": { callId: Id; userId: Id };
  /** A call this device was in or rang for is over (declined, missed, busy, ended, left). */
  ended: { callId: Id; reason: string };
  /** Signalling failed: a peer connection refused a description or candidate, say. */
  error: unknown;
};

/** One remote participant: its connection and the candidates that came before its description. */
class PeerLink {
  private remoteDescribed = false;
  private early: IceCandidate[] = [];

  constructor(
    readonly connection: PeerConnectionLike,
    private readonly signal: (kind: SignalKind, payload: string) => void,
  ) {
    connection.onicecandidate = (event) => {
      if (event.candidate) signal("ice_candidate", JSON.stringify(event.candidate.toJSON()));
    };
  }

  async offer(): Promise<void> {
    const offer = await this.connection.createOffer();
    await this.connection.setLocalDescription(offer);
    this.signal("offer", offer.sdp ?? "");
  }

  async receive(kind: SignalKind, payload: string): Promise<void> {
    if (kind === "ice_candidate") {
      const candidate = JSON.parse(payload) as IceCandidate;
      if (this.remoteDescribed) await this.connection.addIceCandidate(candidate);
      else this.early.push(candidate);
      return;
    }
    await this.connection.setRemoteDescription({ type: kind, sdp: payload });
    this.remoteDescribed = true;
    for (const candidate of this.early.splice(0)) await this.connection.addIceCandidate(candidate);
    if (kind === "offer") {
      const answer = await this.connection.createAnswer();
      await this.connection.setLocalDescription(answer);
      this.signal("answer", answer.sdp ?? "");
    }
  }
}

/** A call this device takes part in, and the ICE servers it was given on entering it. */
class LiveCall {
  readonly peers = new Map<Id, PeerLink>();
  constructor(
    readonly callId: Id,
    readonly iceServers: Promise<IceServer[]>,
  ) {}
}

export class Calls extends Emitter<CallsEvents> {
  private readonly live = new Map<Id, LiveCall>();
  private readonly ringing = new Set<Id>();

  constructor(
    private readonly transport: CallTransport,
    private readonly options: CallsOptions,
  ) {
    super();
    transport.on("call.invited", (frame) => this.onInvited(frame.data));
    transport.on("call.accepted", (frame) => this.onAccepted(frame.data));
    transport.on("signal", (frame) => this.guard(this.onSignal(frame.data)));
    transport.on("room.started", (frame) => this.onRoomChanged(frame.data.call));
    transport.on("room.joined", (frame) => this.onRoomChanged(frame.data.call));
    transport.on("room.left", (frame) => {
      if (frame.data.user_id === transport.userId) this.finish(frame.data.call_id, "left");
      else this.onRoomChanged(frame.data.call);
    });
    transport.on("call.declined", (frame) => this.finish(frame.data.call_id, "declined"));
    transport.on("call.missed", (frame) => this.finish(frame.data.call_id, "missed"));
    transport.on("call.busy", (frame) => this.finish(frame.data.call_id, "busy"));
    transport.on("call.ended", (frame) => this.finish(frame.data.call_id, frame.data.reason));
  }

  /** The peer connections of a call this device is in. */
  peers(callId: Id): Map<Id, PeerConnectionLike> {
    const call = this.live.get(callId);
    return new Map([...(call?.peers ?? [])].map(([user, link]) => [user, link.connection]));
  }

  /** Rings `callee`; resolves with the call id. The offer goes out once the callee accepts. */
  async invite(callee: Id, media: CallMedia, conversationId?: Id): Promise<Id> {
    const ack = await this.transport.request("call.invite", {
      callee,
      media,
      ...(conversationId === undefined ? {} : { conversation_id: conversationId }),
    });
    this.live.set(ack.call_id, new LiveCall(ack.call_id, Promise.resolve(ack.ice_servers)));
    return ack.call_id;
  }

  /** Answers a ringing call on this device; rejects with `call_not_ringing` if another won. */
  async accept(callId: Id): Promise<void> {
    this.ringing.delete(callId);
    await this.enter(callId, "call.accept");
  }

  async decline(callId: Id): Promise<void> {
    this.ringing.delete(callId);
    await this.transport.request("call.decline", { call_id: callId });
  }

  /** Hangs up (or cancels a call still ringing); leaves a room. `ended` follows. */
  async end(callId: Id): Promise<void> {
    await this.transport.request("call.end", { call_id: callId });
  }

  /** Opens a group room in a conversation and joins it; resolves with its call id. */
  async startRoom(conversationId: Id, media: CallMedia): Promise<Id> {
    const ack = await this.transport.request("room.start", { conversation_id: conversationId, media });
    this.live.set(ack.call_id, new LiveCall(ack.call_id, Promise.resolve(ack.ice_servers)));
    return ack.call_id;
  }

  async joinRoom(callId: Id): Promise<void> {
    await this.enter(callId, "room.join");
  }

  /** Leaves a room; `ended` follows. */
  async leaveRoom(callId: Id): Promise<void> {
    await this.transport.request("room.leave", { call_id: callId });
  }

  /** Takes part in a call by `op`; in place before the op, since the first offer may beat its ack. */
  private async enter(callId: Id, op: "call.accept" | "room.join"): Promise<void> {
    const entered = this.transport.request(op, { call_id: callId });
    const iceServers = entered.then((ack) => ack.ice_servers);
    // A refusal is the caller's to handle, through `entered`; signals waiting on it are dropped.
    iceServers.catch(() => {});
    this.live.set(callId, new LiveCall(callId, iceServers));
    try {
      await entered;
    } catch (error) {
      this.live.delete(callId);
      throw error;
    }
  }

  private onInvited(data: Events["call.invited"]): void {
    if (data.callee !== this.transport.userId) return;
    this.ringing.add(data.call_id);
    this.emit("incoming", {
      callId: data.call_id,
      caller: data.caller,
      media: data.media,
      conversationId: data.conversation_id,
      accept: () => this.accept(data.call_id),
      decline: () => this.decline(data.call_id),
    });
  }

  private onAccepted(data: Events["call.accepted"]): void {
    const me = this.transport.userId;
    if (data.call.callee === me && data.session_id !== this.transport.sessionId) {
      if (this.ringing.delete(data.call_id)) this.emit("answered-elsewhere", { callId: data.call_id });
      return;
    }
    const call = this.live.get(data.call_id);
    if (call && data.call.initiator === me && data.call.callee) this.guard(this.offer(call, data.call.callee));
  }

  /** Brings a room's peer connections in line with its participants. */
  private onRoomChanged(room: Call): void {
    const call = this.live.get(room.id);
    const me = this.transport.userId;
    if (!call || !me) return;
    const others = new Set(room.participants.filter((user) => user !== me));
    for (const user of others) {
      if (BigInt(me) < BigInt(user)) this.guard(this.offer(call, user));
    }
    for (const [user, link] of call.peers) {
      if (others.has(user)) continue;
      link.connection.close();
      call.peers.delete(user);
      this.emit("peer-left", { callId: call.callId, userId: user });
    }
  }

  private async onSignal(data: Events["signal"]): Promise<void> {
    const call = this.live.get(data.call_id);
    if (!call || data.to_user !== this.transport.userId) return;
    const { link } = await this.link(call, data.from_user);
    await link.receive(data.kind, data.payload);
  }

  /** Offers to `user`, unless a connection to it is already there. */
  private async offer(call: LiveCall, user: Id): Promise<void> {
    const { link, made } = await this.link(call, user);
    if (made) await link.offer();
  }

  /** The connection to `user`, made now unless there was one. */
  private async link(call: LiveCall, user: Id): Promise<{ link: PeerLink; made: boolean }> {
    const iceServers = await call.iceServers;
    const existing = call.peers.get(user);
    if (existing) return { link: existing, made: false };
    const connection = this.options.createPeerConnection({ callId: call.callId, userId: user, iceServers });
    const link = new PeerLink(connection, (kind, payload) => {
      this.transport
        .request("call.signal", { call_id: call.callId, to_user: user, kind, payload })
        .catch(() => {
          // A signal for a call that just ended is refused; the end event tells the rest.
        });
    });
    call.peers.set(user, link);
    this.emit("peer", { callId: call.callId, userId: user, connection });
    return { link, made: true };
  }

  /** Reports what goes wrong in work no caller waits for. */
  private guard(work: Promise<void>): void {
    work.catch((error: unknown) => this.emit("error", error));
  }

  private finish(callId: Id, reason: string): void {
    const wasHere = this.live.has(callId) || this.ringing.delete(callId);
    this.close(callId);
    if (wasHere) this.emit("ended", { callId, reason });
  }

  private close(callId: Id): void {
    const call = this.live.get(callId);
    if (!call) return;
    for (const link of call.peers.values()) link.connection.close();
    this.live.delete(callId);
  }
}
