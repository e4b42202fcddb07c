//! The story the document tells, as the replay plays it: in which order its exchanges happened,
//! what it takes for granted before some of them, and what the replay leaves out.

/// Exchanges and transcripts the replay does not reproduce, and why.
pub const NOT_REPLAYED: &[(&str, &str)] = &[
    (
        "POST /v1/conversations/252932369328111616/media (Content-Length: 600000000; answered before any of the body)",
        "a Content-Length without the body it announces is not a request the HTTP client sends; media.rs sends it over a raw socket",
    ),
    (
        "POST /v1/conversations/252932369328111616/media (chunked, 3,000,000 bytes; server run with --max-upload-bytes 1048576)",
        "a streamed body; media.rs sends it over a raw socket",
    ),
    (
        "POST /v1/conversations/252932369328111616/media (chunked, 3 bytes, then nothing; --upload-idle-timeout 2s)",
        "a body that stalls; media.rs sends it over a raw socket",
    ),
    (
        "GET /v1/ws?token=eyJ0eXAi… (the node is at max_connections; run with --max-connections 1)",
        "needs a socket held open on a server of its own; bad_input.rs plays it",
    ),
    (
        "POST /v1/conversations/254925923659284480/messages",
        "a step of the resume transcript, on a server of its own",
    ),
    (
        "Resuming after a reconnect: {\"heartbeat_ms\":25000,\"op\":\"ready\",\"session_id\":",
        "reconnects between frames, with an HTTP send between; messaging.rs plays the same resume",
    ),
    (
        "Resuming after a reconnect: {\"heartbeat_ms\":1000,\"op\":\"ready\",\"resumed\":fals",
        "a reconnect with a stale token on a server of its own; messaging.rs plays the same refusal",
    ),
    (
        "GET /v1/sync (as bob)",
        "a sync on a server of its own, before a change the next one shows; sync.rs plays the same",
    ),
    (
        "GET /v1/sync?since=1796470253356520.3.1796470253361 (as bob)",
        "a sync from the token of the one before, on a server of its own; sync.rs plays the same",
    ),
    (
        "`GET /v1/sync?since=TOKEN&limit=N`: {\"op\":\"sync\",\"ref\":\"s1\",\"since\":\"179647025335652",
        "the same sync over a socket; sync.rs plays the same op",
    ),
    (
        "Call ops: {\"op\":\"call.invite\",\"ref\":1,\"callee\":\"2529291501",
        "frames of two users on three devices; calls.rs plays the same call",
    ),
    (
        "Call ops: {\"op\":\"call.signal\",\"ref\":4,\"call_id\":\"252929151",
        "frames of two users; calls.rs plays the same signals",
    ),
    (
        "Call ops: {\"op\":\"room.start\",\"ref\":5,\"conversation_id\":\"25",
        "frames of three users in a room capped at two participants; calls.rs plays the same room",
    ),
    (
        "Call ops: {\"op\":\"call.invite\",\"ref\":1,\"callee\":\"2551629991",
        "a server with ICE settings; calls.rs checks the same credentials against the secret",
    ),
    (
        "Heartbeat: {\"heartbeat_ms\":1000,\"op\":\"ready\",…}",
        "needs a client that stops reading, on a server of its own; bad_input.rs plays it",
    ),
    (
        "Close codes: {\"op\":\"event\",\"type\":\"typing\",\"at\":1795982606318",
        "needs some 165,000 events queued for a client that does not read; not played anywhere yet",
    ),
    (
        "Close codes: close 1001 \"server shutting down\"",
        "needs the server stopped; durability.rs plays it",
    ),
];

pub fn not_replayed(name: &str) -> bool {
    NOT_REPLAYED.iter().any(|(listed, _)| *listed == name)
}

/// What the replay does before an exchange, in order.
pub enum Step {
    /// The exchanges under a heading, all of them.
    Heading(&'static str),
    /// Only the `n`th block (from 0) of exchanges under a heading.
    Block(&'static str, usize),
    /// The WebSocket transcripts under a heading.
    Transcripts(&'static str),
    /// The frames shown under a heading as captured: each must be like one the listener got.
    Captured(&'static str),
    /// State the document takes for granted.
    Prelude(Prelude),
}

pub enum Prelude {
    /// carol and dave, as the table at the top of the document names them.
    CarolAndDave,
    /// bob keeps a socket open from here on: the pushed events the document shows are his.
    BobListens,
    /// The whole cast of the table at the top, with its two conversations, on a server a note
    /// asks for (`--rate-messages 2/1m`).
    Cast,
    /// alice shares her location with the group, as the live-locations section has it.
    AliceSharesHerLocation,
    /// Three calls in alice's history and a room open in her group.
    CallsAndARoom,
    /// The people of the media section, on a server of their own.
    MediaPeople,
}

/// The tea party: in the order its events happened.
pub const TEA_PARTY: &[Step] = &[
    Step::Heading("`POST /v1/auth/register`"),
    Step::Heading("`POST /v1/auth/login`"),
    Step::Heading("Using the token"),
    Step::Heading("Users"),
    Step::Prelude(Prelude::CarolAndDave),
    Step::Prelude(Prelude::BobListens),
    Step::Heading("`POST /v1/conversations`"),
    Step::Heading("`PATCH /v1/conversations/{id}` — rename a group"),
    Step::Heading("`POST /v1/conversations/{id}/members` — add a member"),
    Step::Heading("`POST /v1/conversations/{id}/messages` — send"),
    Step::Block("`GET /v1/conversations/{id}/messages` — history", 0),
    Step::Heading("`DELETE /v1/conversations/{id}/messages/{message_id}` — delete"),
    Step::Heading("`PATCH /v1/conversations/{id}/messages/{message_id}` — edit"),
    Step::Block("`GET /v1/conversations/{id}/messages` — history", 1),
    Step::Heading("`POST /v1/conversations/{id}/read` — read receipt"),
    Step::Heading("`GET /v1/conversations/{id}/read` — read markers"),
    Step::Heading("`GET /v1/conversations`"),
    Step::Heading("`GET /v1/conversations/{id}`"),
    Step::Transcripts("Ops"),
    Step::Transcripts("Replies: `ack`, `error`, `pong`"),
    Step::Transcripts("Oversized and binary frames"),
    Step::Heading("`GET /v1/presence?users=ID,ID,…`"),
    Step::Prelude(Prelude::AliceSharesHerLocation),
    Step::Heading("`GET /v1/conversations/{id}/locations` — last known locations"),
    Step::Prelude(Prelude::CallsAndARoom),
    Step::Heading("`GET /v1/calls` — call history"),
    Step::Heading("`GET /v1/calls/active` — the calls live now"),
    Step::Heading("Errors"),
    Step::Heading("Rate limits"),
    Step::Heading("`DELETE /v1/conversations/{id}/members/{user_id}` — remove a member or leave"),
    Step::Heading("Connecting"),
    Step::Captured("The `ready` frame"),
    Step::Captured("Pushed events"),
    Step::Heading("`GET /healthz`"),
    Step::Heading("`GET /readyz`"),
    Step::Heading("`GET /groups`"),
    Step::Heading("`GET /metrics`"),
    Step::Heading("Schema registry: `/registry/…`"),
];

/// The media section's server.
pub const MEDIA: &[Step] = &[
    Step::Prelude(Prelude::MediaPeople),
    Step::Heading("`POST /v1/conversations/{id}/media` — upload"),
    Step::Heading("`GET /v1/media/{media_id}` — download"),
    Step::Heading("`GET /v1/media/{media_id}/info` — the record"),
    Step::Heading("Attaching uploads to a message"),
    Step::Transcripts("Attaching uploads to a message"),
];
