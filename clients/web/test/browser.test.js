// The web app in a real browser, against a real switchboard: users in browser contexts of
// their own chat, go offline and come back, share an image, and call each other over WebRTC
// with Chromium's fake camera and microphone. One browser and one server serve every scenario;
// each scenario registers users of its own. A screenshot of each is kept (see browser.js).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { startServer } from "../../typescript/test/server.js";
import { bodies, chatWith, clickButton, launch, openConversation, screenshot, send, signUp, until } from "./browser.js";

let server;
let browser;

before(async () => {
  [server, browser] = await Promise.all([startServer(), launch()]);
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const user = (name) => signUp(browser, server.url, name);

/** Closes the scenario's users; fails if a page threw. */
async function done(...users) {
  for (const { context, errors, name } of users) {
    await context.close();
    assert.deepEqual(errors.map(String), [], `${name}'s page threw`);
  }
}

/** Alice and Bob, each in their direct chat, where Alice has said `opening` and Bob has seen it. */
async function talking(opening) {
  const alice = await user("alice");
  const bob = await user("bob");
  await chatWith(alice, bob);
  await send(alice, opening);
  await openConversation(bob, "Alice");
  await until(bob, `"${opening}"`, (opening) => document.querySelector("#messages .message .body")?.textContent === opening, opening);
  return { alice, bob };
}

test("two users chat: presence, unread counts, typing, read receipts and a live location", async () => {
  const alice = await user("alice");
  const bob = await user("bob");
  await chatWith(alice, bob);
  // Bob's list gains the conversation, with Alice online.
  await until(bob, "the conversation with Alice, her dot green", () =>
    document.querySelector("#conversations .conversation .presence.online"),
  );
  await until(alice, "Bob's dot green in the chat's header", () => document.querySelector("#chat-presence.online"));

  await send(alice, "Hello Bob");
  await until(bob, "an unread count of 1", () => document.querySelector("#conversations .unread:not([hidden])")?.textContent === "1");
  await until(alice, "her message sent, not yet seen", () => document.querySelector("#messages .own .receipt")?.textContent === "sent");

  await openConversation(bob, "Alice");
  await until(bob, "Alice's message", () => document.querySelector("#messages .message .body")?.textContent === "Hello Bob");
  await until(bob, "the unread count gone", () => document.querySelector("#conversations .unread")?.hidden);
  await until(alice, "her message seen", () => document.querySelector("#messages .own .receipt")?.textContent === "seen");

  await bob.page.type("#message-input", "Hi Al");
  await until(alice, "Bob typing", () => document.querySelector("#typing")?.textContent === "Bob is typing…");
  await bob.page.type("#message-input", "ice!");
  await bob.page.click("#send-button");
  await until(alice, "Bob's answer", () => document.querySelectorAll("#messages .message .body")[1]?.textContent === "Hi Alice!");
  await until(alice, "the typing line cleared", () => document.querySelector("#typing")?.textContent === "");
  assert.deepEqual(await bodies(alice), ["Hello Bob", "Hi Alice!"]);
  await until(bob, "his answer seen", () => document.querySelector("#messages .own .receipt")?.textContent === "seen");

  await alice.context.overridePermissions(server.url, ["geolocation"]);
  await alice.page.setGeolocation({ latitude: 48.8584, longitude: 2.2945, accuracy: 10 });
  await clickButton(alice, "Share location");
  await until(bob, "Alice's live location", () => document.querySelector("#locations li")?.textContent.includes("48.85840, 2.29450"));
  await screenshot(bob, "chat");

  await alice.context.close();
  await until(bob, "Alice's dot grey once she left", () => document.querySelector("#chat-presence.offline"));
  await done(bob);
});

test("a user offline while messages come in sees each of them once on coming back", async () => {
  const { alice, bob } = await talking("before");

  await bob.page.setOfflineMode(true);
  await until(bob, "the reconnecting indicator", () => document.querySelector("#connection.reconnecting"));
  const missed = ["one", "two", "three"];
  for (const text of missed) await send(alice, text);
  await until(alice, "her messages stored", () =>
    [...document.querySelectorAll("#messages .own .receipt")].every((receipt) => receipt.textContent !== "sending…"),
  );
  assert.deepEqual(await bodies(bob), ["before"], "nothing reaches Bob while he is offline");

  await bob.page.setOfflineMode(false);
  await until(bob, "the connection back", () => document.querySelector("#connection.open"));
  await send(alice, "after");
  // "after" came after the others: once it shows, whatever the resume replays has been shown.
  await until(bob, "the message sent after his return", () =>
    [...document.querySelectorAll("#messages .message .body")].some((body) => body.textContent === "after"),
  );
  assert.deepEqual(await bodies(bob), ["before", ...missed, "after"], "each missed message once, in order");
  await screenshot(bob, "offline");
  await done(alice, bob);
});

test("an uploaded image shows in both chats", async () => {
  const { alice, bob } = await talking("look");
  // A real PNG, drawn by the browser, chosen in the file input as a person would.
  await alice.page.evaluate(async () => {
    const canvas = Object.assign(document.createElement("canvas"), { width: 160, height: 90 });
    const paint = canvas.getContext("2d");
    paint.fillStyle = "#2f6fde";
    paint.fillRect(0, 0, 160, 90);
    paint.fillStyle = "#ffffff";
    paint.fillRect(40, 20, 80, 50);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    const transfer = new DataTransfer();
    transfer.items.add(new File([blob], "square.png", { type: "image/png" }));
    const input = document.querySelector("#file-input");
    input.files = transfer.files;
    input.dispatchEvent(new Event("change"));
  });
  for (const person of [alice, bob]) {
    await until(person, "the image, loaded at its size", () => {
      const image = document.querySelector("#messages .attachments img");
      return image?.complete && image.naturalWidth === 160 && image.naturalHeight === 90;
    });
  }
  assert.deepEqual(await bodies(bob), ["look", "square.png"]);
  await screenshot(bob, "upload");
  await done(alice, bob);
});

/**
 * What flows into this page's peer connections, per remote user: ICE state and the inbound
 * audio bytes and decoded video frames of `getStats`.
 */
async function flows(person) {
  return person.page.evaluate(async () => {
    const app = window.switchboard;
    const callId = app.callView.current?.callId;
    const result = {};
    for (const [userId, connection] of callId ? app.calls.peers(callId) : []) {
      const stats = { ice: connection.iceConnectionState, audioBytes: 0, videoFrames: 0 };
      for (const report of (await connection.getStats()).values()) {
        if (report.type !== "inbound-rtp") continue;
        if (report.kind === "audio") stats.audioBytes += report.bytesReceived ?? 0;
        if (report.kind === "video") stats.videoFrames += report.framesDecoded ?? 0;
      }
      result[userId] = stats;
    }
    return result;
  });
}

/** Waits until `person` has `peers` connections, each connected, with audio and video arriving. */
async function mediaFlowing(person, peers) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const seen = await flows(person);
    const links = Object.values(seen);
    const flowing = links.filter(
      (link) => ["connected", "completed"].includes(link.ice) && link.audioBytes > 0 && link.videoFrames > 0,
    );
    if (links.length === peers && flowing.length === peers) return seen;
    if (Date.now() > deadline) throw new Error(`${person.name}: no media from ${peers} peers: ${JSON.stringify(seen)}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

test("a 1:1 video call connects through the server's signalling, carries media, and hangs up on both", async () => {
  const { alice, bob } = await talking("call?");

  await clickButton(alice, "Video call");
  await until(bob, "the ringing", () => document.querySelector("#call-status")?.textContent === "Alice is calling (video)");
  await clickButton(bob, "Accept");
  for (const person of [alice, bob]) {
    await until(person, "the tile connected", () =>
      ["connected", "completed"].includes(document.querySelector("#remote-videos .tile")?.dataset.ice),
    );
    await mediaFlowing(person, 1);
  }
  await screenshot(alice, "call");

  await alice.page.click("#hangup");
  for (const person of [alice, bob]) {
    await until(person, "the call closed", () => document.querySelector("#call").hidden);
    await until(person, "the peer connections gone", () => window.switchboard.callView.current === null);
  }
  await done(alice, bob);
});

test("three users in a group room each receive the other two", async () => {
  const people = [await user("alice"), await user("bob"), await user("carol")];
  const [alice, bob, carol] = people;
  await alice.page.type("#group-title", "Standup");
  await alice.page.type("#group-members", `${bob.handle}, ${carol.handle}`);
  await alice.page.click("#new-group button[type=submit]");
  await until(alice, "the group open", () => document.querySelector("#chat-title")?.textContent === "Standup");
  await clickButton(alice, "Start room");
  for (const person of [bob, carol]) {
    await openConversation(person, "Standup");
    await clickButton(person, "Join room");
  }
  for (const person of people) {
    await until(person, "two connected tiles", () =>
      [...document.querySelectorAll("#remote-videos .tile")].filter((tile) => ["connected", "completed"].includes(tile.dataset.ice))
        .length === 2,
    );
    await mediaFlowing(person, 2);
  }
  await screenshot(carol, "room");

  await carol.page.click("#hangup");
  await until(carol, "her call closed", () => document.querySelector("#call").hidden);
  for (const person of [alice, bob]) {
    await until(person, "one tile left", () => document.querySelectorAll("#remote-videos .tile").length === 1);
  }
  await done(...people);
});
