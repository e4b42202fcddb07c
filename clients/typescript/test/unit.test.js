// The client's rules without a server: a scripted WebSocket plays the server's part.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Calls, Connection, HttpClient, Tokens, backoffDelay, jwtExpiry } from "../dist/index.js";

/** A WebSocket whose server side the test plays: it records frames and answers as told. */
class ScriptedSocket {
  static opened = [];
  constructor(url) {
    this.url = new URL(url);
    this.readyState = 1;
    this.sent = [];
    this.onmessage = this.onclose = this.onopen = this.onerror = null;
    ScriptedSocket.opened.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
  }
  push(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  ready(token, extra = {}) {
    this.push({ op: "ready", session_id: "s", user_id: "1", heartbeat_ms: 60_000, token, ...extra });
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
  last(op) {
    return this.sent.filter((frame) => frame.op === op).at(-1);
  }
}

/** A connection on scripted sockets; resolves with it and its first socket once that is ready. */
async function scripted(options = {}) {
  ScriptedSocket.opened = [];
  const connection = new Connection({
    baseUrl: "http://server.test",
    token: "t",
    WebSocket: ScriptedSocket,
    backoff: { initialMs: 1 },
    ...options,
  });
  const socket = await nextSocket(0);
  socket.ready("e.1.1");
  return { connection, socket };
}

async function nextSocket(index) {
  while (ScriptedSocket.opened.length <= index) await new Promise((resolve) => setTimeout(resolve, 1));
  return ScriptedSocket.opened[index];
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

describe("connection", () => {
  test("send resolves with its ack; a transient refusal is retried with the same client_msg_id", async () => {
    const { connection, socket } = await scripted();
    const sent = connection.send("10", "hello");
    const first = socket.last("send");
    socket.push({ op: "error", ref: first.ref, error: { code: "rate_limited", message: "slow", retry_after_ms: 5 } });
    while (socket.sent.filter((f) => f.op === "send").length < 2) await tick();
    const retry = socket.last("send");
    assert.equal(retry.client_msg_id, first.client_msg_id);
    assert.notEqual(retry.ref, first.ref);
    socket.push({ op: "ack", ref: retry.ref, message_id: "99", token: "messages/0/1", duplicate: false });
    assert.deepEqual(await sent, {
      message_id: "99",
      token: "messages/0/1",
      duplicate: false,
      client_msg_id: first.client_msg_id,
    });
    connection.close();
  });

  test("a final refusal rejects the send and empties the outbox", async () => {
    const { connection, socket } = await scripted();
    const sent = connection.send("10", "x");
    socket.push({ op: "error", ref: socket.last("send").ref, error: { code: "forbidden", message: "no" } });
    await assert.rejects(sent, { code: "forbidden" });
    assert.deepEqual(connection.unsent, []);
    connection.close();
  });

  test("a reconnect resumes from the last event processed and resends the outbox in order", async () => {
    const { connection, socket } = await scripted();
    socket.push({ op: "event", type: "typing", at: 1, data: {}, token: "e.1.1" });
    socket.push({ op: "event", type: "message.read", at: 2, data: {}, token: "e.2.2" });
    const first = connection.send("10", "one");
    const second = connection.send("10", "two");
    const ids = socket.sent.filter((f) => f.op === "send").map((f) => f.client_msg_id);
    const ping = connection.request("ping", {});
    socket.drop();
    await assert.rejects(ping, { code: "disconnected" });
    const again = await nextSocket(1);
    assert.equal(again.url.searchParams.get("resume"), "e.2.2");
    again.ready("e.2.2", { resumed: true });
    const resent = again.sent.filter((f) => f.op === "send");
    assert.deepEqual(resent.map((f) => f.client_msg_id), ids);
    for (const frame of resent) again.push({ op: "ack", ref: frame.ref, message_id: frame.body, token: "t", duplicate: true });
    assert.deepEqual([(await first).message_id, (await second).message_id], ["one", "two"]);
    connection.close();
  });

  test("ops made while disconnected wait for the socket", async () => {
    const { connection, socket } = await scripted();
    socket.drop();
    const typing = connection.request("typing", { conversation_id: "10" });
    const again = await nextSocket(1);
    assert.equal(again.sent.length, 0);
    again.ready("e.1.1", { resumed: true });
    const frame = again.last("typing");
    again.push({ op: "ack", ref: frame.ref, token: "presence/0/1" });
    assert.deepEqual(await typing, { token: "presence/0/1" });
    connection.close();
  });

  test("a refused resume syncs from the token the client held", async () => {
    const { connection, socket } = await scripted();
    socket.push({ op: "event", type: "message.sent", at: 1, data: {}, token: "e.5.5" });
    socket.drop();
    const again = await nextSocket(1);
    const synced = connection.next("sync");
    again.ready("e.9.9", { resumed: false, sync_required: true });
    const sync = again.last("sync");
    assert.equal(sync.since, "e.5.5");
    again.push({ op: "ack", ref: sync.ref, token: "e.9.9", full: true, conversations: [], left: [], calls: [] });
    assert.equal((await synced).full, true);
    assert.equal(connection.resumeToken, "e.9.9", "later resumes start from the new stream");
    connection.close();
  });

  test("a socket that answers no ping is replaced", async () => {
    const { connection, socket } = await scripted({ heartbeatMs: 5 });
    const again = await nextSocket(1);
    assert.ok(socket.sent.some((f) => f.op === "ping"), "pings went out");
    assert.equal(again.url.searchParams.get("resume"), "e.1.1");
    connection.close();
  });

  test("close rejects what waits and stops reconnecting", async () => {
    const { connection, socket } = await scripted();
    const sent = connection.send("10", "x");
    connection.close();
    await assert.rejects(sent, { code: "closed" });
    socket.drop();
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(ScriptedSocket.opened.length, 1);
    assert.equal(connection.state, "closed");
  });
});

describe("backoff and tokens", () => {
  test("delays grow exponentially up to the ceiling, drawn below it", () => {
    assert.equal(backoffDelay(0, {}, () => 0.999), 499);
    assert.equal(backoffDelay(3, {}, () => 0.999), 3996);
    assert.equal(backoffDelay(30, {}, () => 0.999), 29_970);
    assert.equal(backoffDelay(5, {}, () => 0), 0);
  });

  const jwt = (exp) => `h.${Buffer.from(JSON.stringify({ exp })).toString("base64url")}.s`;

  test("a token about to expire is renewed by the hook, once for concurrent callers", async () => {
    assert.equal(jwtExpiry(jwt(1234)), 1234);
    let renewals = 0;
    const tokens = new Tokens({
      token: jwt(Math.floor(Date.now() / 1000) + 5),
      refreshToken: async () => {
        renewals++;
        return jwt(Math.floor(Date.now() / 1000) + 3600);
      },
    });
    const [a, b] = await Promise.all([tokens.current(), tokens.current()]);
    assert.equal(a, b);
    assert.equal(renewals, 1);
    assert.equal(await tokens.current(), a, "a fresh token is kept");
  });

  test("a request refused for an expired token is sent again with a renewed one", async (t) => {
    const seen = [];
    t.mock.method(globalThis, "fetch", async (url, init) => {
      seen.push(init.headers.authorization);
      return seen.length === 1
        ? new Response('{"error":{"code":"token_expired","message":"the token has expired; log in again"}}', { status: 401 })
        : new Response('{"id":"1","handle":"ada","display_name":"Ada","created_at":0}', { status: 200 });
    });
    const http = new HttpClient({ baseUrl: "http://server.test", token: "old", refreshToken: async () => "new" });
    assert.equal((await http.me()).handle, "ada");
    assert.deepEqual(seen, ["Bearer old", "Bearer new"]);
  });

  test("an error body becomes a typed error", async (t) => {
    t.mock.method(globalThis, "fetch", async () =>
      new Response('{"error":{"code":"rate_limited","message":"slow down","retry_after_ms":1500}}', { status: 429 }),
    );
    const http = new HttpClient({ baseUrl: "http://server.test", token: "t" });
    await assert.rejects(http.inbox(), (error) => {
      assert.equal(error.code, "rate_limited");
      assert.equal(error.status, 429);
      assert.equal(error.retryAfterMs, 1500);
      assert.equal(error.retryable, true);
      return true;
    });
  });

  test("the socket connects with the renewed token", async () => {
    const fresh = jwt(Math.floor(Date.now() / 1000) + 3600);
    const { connection, socket } = await scripted({ token: jwt(1), refreshToken: async () => fresh });
    assert.equal(socket.url.searchParams.get("token"), fresh);
    connection.close();
  });
});

/** A transport the test plays: records ops, answers each with `answer`, pushes events on demand. */
function fakeTransport(userId, sessionId) {
  const listeners = {};
  const requests = [];
  return {
    userId,
    sessionId,
    requests,
    answer: async () => ({ token: "t" }),
    request(op, fields) {
      requests.push({ op, ...fields });
      return this.answer(op, fields);
    },
    on(name, listener) {
      (listeners[name] ??= []).push(listener);
      return () => {};
    },
    push(type, data) {
      for (const listener of listeners[type] ?? []) listener({ op: "event", type, at: 0, data, token: "x" });
    },
  };
}

class RecordingPeer {
  constructor() {
    this.log = [];
    this.onicecandidate = null;
  }
  async createOffer() {
    return { type: "offer", sdp: "o" };
  }
  async createAnswer() {
    return { type: "answer", sdp: "a" };
  }
  async setLocalDescription(d) {
    this.log.push(`local ${d.type}`);
  }
  async setRemoteDescription(d) {
    this.log.push(`remote ${d.type}`);
  }
  async addIceCandidate(c) {
    this.log.push(`candidate ${c.candidate}`);
  }
  close() {
    this.log.push("closed");
  }
}

describe("calls", () => {
  test("signals before the accept's ack wait for its ICE servers; early candidates wait for the offer", async () => {
    const transport = fakeTransport("2", "phone");
    let answerAccept;
    transport.answer = () => new Promise((resolve) => (answerAccept = resolve));
    const iceServers = [{ urls: ["turn:turn.test:3478"], username: "9:2", credential: "c" }];
    const made = [];
    const peer = new RecordingPeer();
    const calls = new Calls(transport, {
      createPeerConnection: (options) => {
        made.push(options);
        return peer;
      },
    });
    const accepted = calls.accept("7");
    transport.push("signal", { call_id: "7", from_user: "1", to_user: "2", kind: "ice_candidate", payload: '{"candidate":"c1"}' });
    transport.push("signal", { call_id: "7", from_user: "1", to_user: "2", kind: "offer", payload: "sdp" });
    await tick();
    assert.deepEqual(made, [], "no peer connection before the ICE servers are known");
    answerAccept({ token: "t", ice_servers: iceServers });
    await accepted;
    transport.answer = async () => ({ token: "t" });
    while (!transport.requests.some((r) => r.op === "call.signal")) await tick();
    assert.deepEqual(made, [{ callId: "7", userId: "1", iceServers }]);
    assert.deepEqual(peer.log, ["remote offer", "candidate c1", "local answer"]);
    assert.deepEqual(transport.requests.at(-1), { op: "call.signal", call_id: "7", to_user: "1", kind: "answer", payload: "a" });
  });

  test("another device's answer stops the ringing here", async () => {
    const transport = fakeTransport("2", "laptop");
    const calls = new Calls(transport, { createPeerConnection: () => new RecordingPeer() });
    const incoming = calls.next("incoming");
    transport.push("call.invited", { call_id: "7", caller: "1", callee: "2", media: "audio", conversation_id: "3", call: {} });
    await incoming;
    const elsewhere = calls.next("answered-elsewhere");
    transport.push("call.accepted", { call_id: "7", user_id: "2", session_id: "phone", call: { initiator: "1", callee: "2" } });
    assert.deepEqual(await elsewhere, { callId: "7" });
  });

  test("in a room the smaller user id offers, and a peer that leaves is closed", async () => {
    const transport = fakeTransport("5", "s");
    transport.answer = async () => ({ call_id: "9", token: "t", ice_servers: [] });
    const peers = {};
    const calls = new Calls(transport, { createPeerConnection: ({ userId }) => (peers[userId] = new RecordingPeer()) });
    await calls.startRoom("3", "audio");
    transport.push("room.joined", { call_id: "9", user_id: "12", session_id: "x", call: { id: "9", participants: ["5", "12", "3"] } });
    await tick();
    assert.deepEqual(Object.keys(peers), ["12"], "5 offers to 12 and waits for 3's offer");
    assert.deepEqual(peers["12"].log, ["local offer"]);
    transport.push("room.left", { call_id: "9", user_id: "12", call: { id: "9", participants: ["5", "3"] } });
    assert.deepEqual(peers["12"].log, ["local offer", "closed"]);
  });
});
