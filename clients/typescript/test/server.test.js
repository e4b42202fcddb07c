// The client against a real switchboard process: chat between two users, acks, resumes,
// the outbox across reconnects, uploads with progress, and calls signalled through the server.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Calls, Connection, HttpClient, register } from "../dist/index.js";
import { eventually, startServer } from "./server.js";

let server;
const STUN = "stun:stun.test:3478";
before(async () => {
  server = await startServer(["--stun-urls", STUN]);
});
after(async () => {
  await server?.stop();
});

let users = 0;
/** A new user, with an HTTP client. */
async function newUser(name) {
  const session = await register(server.url, { handle: `${name}${++users}`, password: "correct horse" });
  return { ...session, http: new HttpClient({ baseUrl: server.url, token: session.token }) };
}

/** An open connection of `user`, recording the message bodies it receives. */
async function connect(user, options = {}) {
  const connection = new Connection({ baseUrl: server.url, token: user.token, backoff: { initialMs: 50 }, ...options });
  connection.bodies = [];
  connection.on("message.sent", (frame) => connection.bodies.push(frame.data.body));
  await connection.opened();
  return connection;
}

async function pair() {
  const alice = await newUser("alice");
  const bob = await newUser("bob");
  const { conversation } = await alice.http.directConversation(bob.user.id);
  return { alice, bob, conversation };
}

describe("chat", () => {
  test("two users chat; the ack settles the send and the other side gets it", async () => {
    const { alice, bob, conversation } = await pair();
    const a = await connect(alice);
    const b = await connect(bob);
    const sent = await a.send(conversation.id, "hi bob");
    assert.equal(sent.duplicate, false);
    assert.match(sent.message_id, /^\d+$/);
    await eventually(() => b.bodies.includes("hi bob"), "bob to get the message");
    const reply = await b.send(conversation.id, "hi alice", { reply_to: sent.message_id });
    await eventually(() => a.bodies.includes("hi alice"), "alice to get the reply");
    const page = await alice.http.history(conversation.id, { after: reply.token });
    assert.deepEqual(page.messages.map((m) => m.body), ["hi alice", "hi bob"]);
    assert.equal(page.messages[0].reply_to, sent.message_id);
    a.close();
    b.close();
  });

  test("a retried send with the same client_msg_id is stored once", async () => {
    const { alice, conversation } = await pair();
    const a = await connect(alice);
    const first = await a.send(conversation.id, "once", { client_msg_id: "same-1" });
    const again = await a.send(conversation.id, "once", { client_msg_id: "same-1" });
    assert.equal(again.duplicate, true);
    assert.equal(again.message_id, first.message_id);
    a.close();
  });

  test("a refused op rejects with the server's code", async () => {
    const { alice, conversation } = await pair();
    const a = await connect(alice);
    await assert.rejects(a.send(conversation.id, "   "), { code: "invalid" });
    await assert.rejects(a.request("read", { conversation_id: "1", message_id: "1" }), { code: "not_found" });
    assert.deepEqual(a.unsent, [], "a message refused for good leaves the outbox");
    a.close();
  });
});

describe("reconnects", () => {
  test("a resume delivers exactly the messages missed, once", async () => {
    const { alice, bob, conversation } = await pair();
    const b = await connect(bob);
    await alice.http.send(conversation.id, { client_msg_id: "before", body: "before" });
    await eventually(() => b.bodies.includes("before"), "bob to get the first message");
    const token = b.resumeToken;
    b.close();
    for (const body of ["one", "two", "three"]) {
      await alice.http.send(conversation.id, { client_msg_id: body, body });
    }
    const resumed = await connect(bob, { resumeToken: token });
    const ready = await resumed.opened();
    assert.equal(ready.resumed, true);
    await alice.http.send(conversation.id, { client_msg_id: "after", body: "after" });
    await eventually(() => resumed.bodies.includes("after"), "bob to get the live message");
    assert.deepEqual(resumed.bodies, ["one", "two", "three", "after"]);
    resumed.close();
  });

  test("a dropped socket reconnects by itself and resumes", async () => {
    const { alice, bob, conversation } = await pair();
    const b = await connect(bob);
    const reopened = b.next("ready");
    b.reconnect();
    await alice.http.send(conversation.id, { client_msg_id: "while-away", body: "while away" });
    const ready = await reopened;
    assert.equal(ready.resumed, true);
    await alice.http.send(conversation.id, { client_msg_id: "back", body: "back" });
    await eventually(() => b.bodies.includes("back"), "bob to get the live message");
    assert.deepEqual(b.bodies, ["while away", "back"]);
    b.close();
  });

  test("the outbox keeps messages across a reconnect and sends each once", async () => {
    const { alice, bob, conversation } = await pair();
    const a = await connect(alice);
    const b = await connect(bob);
    // One send under way when the socket drops, one made while it is down.
    const inFlight = a.send(conversation.id, "in flight");
    a.reconnect();
    assert.equal(a.state, "reconnecting");
    const whileDown = a.send(conversation.id, "while down");
    assert.deepEqual(a.unsent.map((m) => m.body), ["in flight", "while down"]);
    const [first, second] = await Promise.all([inFlight, whileDown]);
    assert.notEqual(first.message_id, second.message_id);
    assert.deepEqual(a.unsent, []);
    await b.send(conversation.id, "marker");
    await eventually(() => b.bodies.includes("marker"), "the marker");
    assert.deepEqual(b.bodies, ["in flight", "while down", "marker"]);
    a.close();
    b.close();
  });

  test("a refused resume syncs what was missed", async () => {
    const own = await startServer(["--resume-window", "1s", "--resume-min-events", "1"]);
    try {
      const alice = await register(own.url, { handle: "alice", password: "correct horse" });
      const bob = await register(own.url, { handle: "bob", password: "correct horse" });
      const http = new HttpClient({ baseUrl: own.url, token: alice.token });
      const { conversation } = await http.directConversation(bob.user.id);
      const first = new Connection({ baseUrl: own.url, token: bob.token });
      const ready = await first.opened();
      first.close();
      // Another device of bob's sees when the messages are in his feed.
      const watcher = new Connection({ baseUrl: own.url, token: bob.token });
      const arrived = watcher.next("message.sent", (frame) => frame.data.body === "three");
      for (const body of ["one", "two", "three"]) {
        await http.send(conversation.id, { client_msg_id: body, body });
      }
      await arrived;
      watcher.close();
      // Past the window, with more events than the feed keeps beyond it: the feed is trimmed
      // as the next event is appended.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      await http.send(conversation.id, { client_msg_id: "four", body: "four" });
      const second = new Connection({ baseUrl: own.url, token: bob.token, resumeToken: ready.token });
      const synced = second.next("sync");
      const reopened = await second.next("ready");
      assert.equal(reopened.sync_required, true);
      const sync = await synced;
      assert.equal(sync.full, true);
      const missed = sync.conversations.find((c) => c.conversation.id === conversation.id);
      assert.deepEqual(missed.messages.map((m) => m.body), ["four", "three", "two", "one"]);
      second.close();
    } finally {
      await own.stop();
    }
  });
});

describe("uploads", () => {
  test("an upload reports its progress and can be attached and downloaded", async () => {
    const { alice, bob, conversation } = await pair();
    const file = new Uint8Array(300_000).map((_, i) => i % 251);
    const progress = [];
    const { media } = await alice.http.upload(conversation.id, file, {
      contentType: "application/octet-stream",
      name: "bytes.bin",
      onProgress: (p) => progress.push(p),
    });
    assert.equal(media.size, file.length);
    assert.equal(media.name, "bytes.bin");
    assert.ok(progress.length > 1, "progress in steps");
    assert.deepEqual(progress.at(-1), { loaded: file.length, total: file.length });
    assert.ok(progress.every((p, i) => i === 0 || p.loaded > progress[i - 1].loaded));
    const sent = await alice.http.send(conversation.id, { client_msg_id: "file", body: "a file", attachments: [media.id] });
    const page = await bob.http.history(conversation.id, { after: sent.token });
    assert.deepEqual(page.messages[0].attachments, [media.id]);
    const download = await bob.http.download(media.id, "bytes=0-9");
    assert.equal(download.status, 206);
    assert.deepEqual(new Uint8Array(await download.arrayBuffer()), file.subarray(0, 10));
    const whole = await fetch(await bob.http.mediaUrl(media.id));
    assert.deepEqual(new Uint8Array(await whole.arrayBuffer()), file);
  });
});

/** A peer connection that only exchanges descriptions and candidates: enough for signalling. */
class FakePeerConnection {
  constructor(name) {
    this.name = name;
    this.remote = [];
    this.candidates = [];
    this.onicecandidate = null;
  }
  async createOffer() {
    return { type: "offer", sdp: `offer from ${this.name}` };
  }
  async createAnswer() {
    return { type: "answer", sdp: `answer from ${this.name}` };
  }
  async setLocalDescription(description) {
    this.local = description;
    this.onicecandidate?.({ candidate: { toJSON: () => ({ candidate: `candidate of ${this.name}`, sdpMid: "0" }) } });
  }
  async setRemoteDescription(description) {
    this.remote.push(description);
  }
  async addIceCandidate(candidate) {
    this.candidates.push(candidate.candidate);
  }
  close() {
    this.closed = true;
  }
}

function callsOf(connection, name) {
  const peers = [];
  const calls = new Calls(connection, {
    createPeerConnection: ({ userId, iceServers }) => {
      const pc = new FakePeerConnection(`${name}→${userId}`);
      pc.iceServers = iceServers;
      peers.push(pc);
      return pc;
    },
  });
  return { calls, peers };
}

describe("calls", () => {
  test("the first device to accept wins; offer, answer and candidates cross the server", async () => {
    const { alice, bob } = await pair();
    const caller = callsOf(await connect(alice), "alice");
    const phone = callsOf(await connect(bob, { device: "phone" }), "phone");
    const laptop = callsOf(await connect(bob, { device: "laptop" }), "laptop");
    const ringsPhone = phone.calls.next("incoming");
    const ringsLaptop = laptop.calls.next("incoming");
    const elsewhere = laptop.calls.next("answered-elsewhere");
    const callId = await caller.calls.invite(bob.user.id, "video");
    const incoming = await ringsPhone;
    assert.equal((await ringsLaptop).callId, callId);
    assert.equal(incoming.caller, alice.user.id);
    await incoming.accept();
    assert.equal((await elsewhere).callId, callId);
    await assert.rejects(laptop.calls.accept(callId), { code: "call_not_ringing" });

    const [alicePc] = await eventually(() => caller.peers.length && caller.peers, "alice's peer connection");
    const [phonePc] = await eventually(() => phone.peers.length && phone.peers, "the phone's peer connection");
    await eventually(() => alicePc.remote.length && alicePc.candidates.length, "alice to get the answer and a candidate");
    await eventually(() => phonePc.candidates.length, "the phone to get a candidate");
    assert.deepEqual(phonePc.remote, [{ type: "offer", sdp: `offer from alice→${bob.user.id}` }]);
    assert.deepEqual(alicePc.remote, [{ type: "answer", sdp: `answer from phone→${alice.user.id}` }]);
    assert.deepEqual(phonePc.candidates, [`candidate of alice→${bob.user.id}`]);
    assert.equal(laptop.peers.length, 0, "the laptop takes no part");
    for (const pc of [alicePc, phonePc]) assert.deepEqual(pc.iceServers, [{ urls: [STUN] }], "the server's ICE servers");

    const endedForPhone = phone.calls.next("ended");
    const endedForAlice = caller.calls.next("ended");
    await caller.calls.end(callId);
    assert.equal((await endedForPhone).reason, "hangup");
    assert.equal((await endedForAlice).reason, "hangup");
    assert.ok(alicePc.closed && phonePc.closed);
  });

  test("a declined call ends for the caller", async () => {
    const { alice, bob } = await pair();
    const caller = callsOf(await connect(alice), "alice");
    const callee = callsOf(await connect(bob), "bob");
    const rings = callee.calls.next("incoming");
    const ended = caller.calls.next("ended");
    await caller.calls.invite(bob.user.id, "audio");
    await (await rings).decline();
    assert.equal((await ended).reason, "declined");
  });

  test("three members of a group room each get a peer connection to the other two", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const carol = await newUser("carol");
    const { conversation } = await alice.http.createGroup("room", [bob.user.id, carol.user.id]);
    const members = [
      { user: alice, ...callsOf(await connect(alice), "alice") },
      { user: bob, ...callsOf(await connect(bob), "bob") },
      { user: carol, ...callsOf(await connect(carol), "carol") },
    ];
    const callId = await members[0].calls.startRoom(conversation.id, "audio");
    await members[1].calls.joinRoom(callId);
    await members[2].calls.joinRoom(callId);
    for (const member of members) {
      await eventually(() => {
        const peers = member.calls.peers(callId);
        return peers.size === 2 && [...peers.values()].every((pc) => pc.remote.length === 1);
      }, `${member.user.user.handle} to be connected to both others`);
    }
    const left = members[0].calls.next("peer-left");
    await members[2].calls.leaveRoom(callId);
    assert.equal((await left).userId, carol.user.id);
  });
});
