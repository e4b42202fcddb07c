//! `docs/protocol.md` is the contract outside clients are written from. Every HTTP exchange
//! captured in it is replayed here against real servers, in the order that rebuilds the story
//! the document tells (alice, bob, carol and dave at a tea party), and the server must answer
//! as the document says: status, the headers shown, error codes and messages, and bodies with
//! the same fields of the same types (see `compare` for what may differ between two runs).
//!
//! An exchange the replay cannot reproduce is listed in [`NOT_REPLAYED`] with the reason; one
//! that is neither replayed nor listed fails the test, so a new example cannot slip by.

#[path = "../common/mod.rs"]
mod common;
mod compare;
mod examples;

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};

use common::{JWT_SECRET, Server, User, Ws};
use compare::{Names, compare, parse_captured, token_topic};
use examples::{Example, Frame, Transcript};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

const DOCUMENT: &str = include_str!("../../../docs/protocol.md");

/// Exchanges and transcripts the replay does not reproduce, and why.
const NOT_REPLAYED: &[(&str, &str)] = &[
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
        "POST /v1/conversations/254881081684131840/messages",
        "a step of the resume transcript, on a server of its own",
    ),
    (
        "Resuming after a reconnect: {\"heartbeat_ms\":25000,\"op\":\"ready\",\"session_id\":",
        "reconnects between frames, with an HTTP send between; messaging.rs plays the same resume",
    ),
    (
        "Resuming after a reconnect: {\"heartbeat_ms\":1000,\"op\":\"ready\",\"session_id\":\"",
        "a reconnect with a stale token on a server of its own; messaging.rs plays the same refusal",
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
        "Heartbeat: {\"heartbeat_ms\":1000,\"op\":\"ready\",…}",
        "needs a client that never answers pings, which the test client does by itself; not played anywhere yet",
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

fn not_replayed(name: &str) -> bool {
    NOT_REPLAYED.iter().any(|(listed, _)| *listed == name)
}

/// What the document holds.
struct Document {
    examples: Vec<Example>,
    transcripts: Vec<Transcript>,
}

/// What the replay does before an exchange, in order.
enum Step {
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

enum Prelude {
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
const TEA_PARTY: &[Step] = &[
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
    Step::Heading("`GET /metrics`"),
    Step::Heading("Schema registry: `/registry/…`"),
];

/// The media section's server.
const MEDIA: &[Step] = &[
    Step::Prelude(Prelude::MediaPeople),
    Step::Heading("`POST /v1/conversations/{id}/media` — upload"),
    Step::Heading("`GET /v1/media/{media_id}` — download"),
    Step::Heading("`GET /v1/media/{media_id}/info` — the record"),
    Step::Heading("Attaching uploads to a message"),
    Step::Transcripts("Attaching uploads to a message"),
];

/// The servers of one story. One a note asks for (`--rate-messages 2/1m`) is started on first
/// use, and gets the cast once an exchange needs one of them.
struct World {
    servers: HashMap<Vec<String>, Replica>,
    http: reqwest::Client,
}

/// One server and what the replay knows of it.
struct Replica {
    server: Server,
    names: Names,
    users: HashMap<String, User>,
    /// The newest real token of each topic, for a doc token the replay never saw made.
    latest: HashMap<String, String>,
    /// Sockets the document's state needs open (a room's participant).
    held: Vec<Ws>,
    /// bob's socket, open since [`Prelude::BobListens`].
    listener: Option<Ws>,
    /// Whether the story is told on this server, or only single exchanges a note asks for.
    telling: bool,
}

/// Who a request is made as.
enum Actor {
    Nobody,
    User(String),
    /// A token of this user's, past its expiry.
    Expired(String),
    Header(String),
}

/// The flags a note asks the server to run with: every `--name value` in it.
fn server_flags(note: &str) -> Vec<String> {
    let words: Vec<&str> = note.split([' ', ';', ',', ')']).filter(|w| !w.is_empty()).collect();
    words
        .windows(2)
        .filter(|pair| pair[0].starts_with("--"))
        .flat_map(|pair| [pair[0].to_owned(), pair[1].to_owned()])
        .collect()
}

fn actor(example: &Example) -> Actor {
    const PEOPLE: [&str; 4] = ["alice", "bob", "carol", "dave"];
    let note = example.note.as_str();
    if note == "no token" || example.target.starts_with("/v1/auth/") {
        return Actor::Nobody;
    }
    if let Some(token) = note.strip_prefix("Authorization: Bearer ") {
        return Actor::Header(token.to_owned());
    }
    if note.contains("past its expires_at") {
        return Actor::Expired("alice".to_owned());
    }
    let words: Vec<&str> = note.split([' ', ',', ';']).filter(|w| !w.is_empty()).collect();
    let named = match words.as_slice() {
        ["as", name, ..] => Some(*name),
        [name, ..] if PEOPLE.contains(name) => Some(*name),
        _ => None,
    };
    Actor::User(named.filter(|n| PEOPLE.contains(n)).unwrap_or("alice").to_owned())
}

/// How many times the exchange is made: a note's "third send" is the third of three.
fn repetitions(note: &str) -> usize {
    let ordinals = ["second", "third", "fourth"];
    let first_word = note.split(' ').next().unwrap_or_default();
    ordinals.iter().position(|o| *o == first_word).map_or(1, |i| i + 2)
}

/// A note's `Name: value` header, up to the next `,` or `;`.
fn note_header(note: &str, name: &str) -> Option<String> {
    let start = note.find(&format!("{name}: "))? + name.len() + 2;
    let value = note[start..].split([',', ';']).next()?;
    Some(value.trim().to_owned())
}

/// A note's `a N-byte …`: the size, with the word after it.
fn note_size(note: &str) -> Option<(usize, &str)> {
    let at = note.find("-byte ")?;
    let digits = note[..at].rsplit(' ').next()?.replace(',', "");
    Some((digits.parse().ok()?, note[at + 6..].split([',', ';', ' ']).next()?))
}

fn expired_token(user: &User) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let (iat, exp) = (now.as_secs() as i64 - 7200, now.as_secs() as i64 - 3600);
    let claims = json!({ "sub": user.id, "iat": iat, "exp": exp });
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("signing")
}

impl World {
    fn new() -> World {
        World { servers: HashMap::new(), http: reqwest::Client::new() }
    }

    fn replica(&mut self, flags: Vec<String>) -> &mut Replica {
        self.servers.entry(flags).or_insert_with_key(|flags| {
            let args: Vec<&str> = flags.iter().map(String::as_str).collect();
            Replica {
                server: Server::start(&args),
                names: Names::default(),
                users: HashMap::new(),
                latest: HashMap::new(),
                held: Vec::new(),
                listener: None,
                telling: flags.is_empty(),
            }
        })
    }

    async fn run(&mut self, steps: &'static [Step], document: &Document, done: &mut Done) {
        for step in steps {
            match step {
                Step::Prelude(prelude) => self.replica(Vec::new()).prelude(prelude).await,
                Step::Transcripts(heading) => {
                    let under = document.transcripts.iter().filter(|t| t.heading == *heading);
                    let under: Vec<&Transcript> = under.collect();
                    assert!(!under.is_empty(), "no transcripts under {heading}");
                    for transcript in under.into_iter().filter(|t| !not_replayed(&t.name())) {
                        let result = self.replica(Vec::new()).transcript(transcript).await;
                        done.record(transcript.line, &transcript.name(), result);
                    }
                }
                Step::Captured(heading) => {
                    let frames = examples::captured_frames(DOCUMENT, heading);
                    assert!(!frames.is_empty(), "no captured frames under {heading}");
                    let replica = self.replica(Vec::new());
                    for (line, frame) in frames {
                        let result = replica.captured(&frame).await;
                        done.record(line, &format!("{heading}: {frame}"), result);
                    }
                }
                Step::Heading(heading) => self.exchanges(document, heading, None, done).await,
                Step::Block(heading, n) => self.exchanges(document, heading, Some(*n), done).await,
            }
        }
    }

    /// Replays the exchanges under `heading`, or those of its `block`th block only.
    async fn exchanges(
        &mut self,
        document: &Document,
        heading: &str,
        block: Option<usize>,
        done: &mut Done,
    ) {
        let under: Vec<&Example> =
            document.examples.iter().filter(|e| e.heading == heading).collect();
        let blocks: BTreeSet<usize> = under.iter().map(|e| e.block).collect();
        let chosen = block.map(|n| blocks.into_iter().nth(n));
        let under: Vec<&Example> =
            under.into_iter().filter(|e| chosen.is_none_or(|c| c == Some(e.block))).collect();
        assert!(!under.is_empty(), "no exchanges under {heading} (block {block:?})");
        for example in under.into_iter().filter(|e| !not_replayed(&e.name())) {
            let http = self.http.clone();
            let replica = self.replica(server_flags(&example.note));
            let needs_people = matches!(actor(example), Actor::User(_) | Actor::Expired(_));
            if !replica.telling && replica.users.is_empty() && needs_people {
                replica.prelude(&Prelude::Cast).await;
            }
            let result = replica.replay(&http, example).await;
            done.record(example.line, &example.name(), result);
        }
    }
}

/// Sends a transcript's frame as written, with this replay's ids; a note may say it is larger
/// than the document shows (`a 70,000-byte text frame`, `a 5 MiB text frame`).
async fn send(ws: &mut Ws, frame: &Frame, names: &Names) {
    if frame.text.starts_with("<binary frame") {
        return ws.send_binary(vec![1, 2, 3]).await;
    }
    let size = note_size(&frame.note).map(|(size, _)| size).or_else(|| {
        let mib = frame.note.split(" MiB").next()?.rsplit(' ').next()?.parse::<usize>().ok()?;
        Some(mib << 20)
    });
    match size {
        Some(size) => ws.send_oversized_text("x".repeat(size)).await,
        None => ws.send_text(names.substitute(&frame.text)).await,
    }
}

/// The frame a transcript's received frame stands for, with it as the document shows it.
async fn received(ws: &mut Ws, frame: &Frame) -> Result<(Value, Value), String> {
    if let Some(close) = frame.text.strip_prefix("close ") {
        let code: u16 = close.split(' ').next().and_then(|c| c.parse().ok()).expect("close code");
        let closed = ws.next_where(|f| f["op"] == "closed").await;
        // A close carries its code alone: nothing is left to compare once it agrees.
        return match closed["code"] == code {
            true => Ok((Value::Null, Value::Null)),
            false => Err(format!("closed with {} instead of {code}", closed["code"])),
        };
    }
    let captured = parse_captured(&frame.text)
        .map_err(|e| format!("the document's frame is not JSON ({e}): {}", frame.text))?;
    let real = match (captured["op"].as_str(), captured.get("ref")) {
        (Some("ready"), _) => ws.ready.clone(),
        (Some("event"), _) => {
            let kind = captured["type"].clone();
            ws.next_where(|f| f["op"] == "event" && f["type"] == kind).await
        }
        (_, Some(reference)) => {
            let reference = reference.clone();
            ws.next_where(|f| f.get("ref") == Some(&reference) && f["op"] != "event").await
        }
        _ => return Err(format!("a frame the replay cannot match: {}", frame.text)),
    };
    Ok((captured, real))
}

#[derive(Default)]
struct Done {
    replayed: HashSet<usize>,
    failures: Vec<String>,
}

impl Done {
    fn record(&mut self, line: usize, name: &str, result: Result<(), String>) {
        self.replayed.insert(line);
        if let Err(why) = result {
            self.failures.push(format!("line {line}: {name}\n    {why}"));
        }
    }
}

impl Replica {
    fn user(&self, name: &str) -> &User {
        self.users.get(name).unwrap_or_else(|| panic!("{name} is not registered in the replay"))
    }

    /// Registers `handle` the way the document's people are, and binds the doc's id for them.
    async fn register(&mut self, handle: &str, doc_id: &str) {
        let body = json!({ "handle": handle, "password": "correct horse" });
        let (status, value) = self
            .server
            .api()
            .call(reqwest::Method::POST, "/v1/auth/register", None, Some(body))
            .await;
        assert!(status.is_success(), "registering {handle}: {value}");
        let user = User {
            id: value["user"]["id"].as_str().unwrap().to_owned(),
            handle: handle.to_owned(),
            token: value["token"].as_str().unwrap().to_owned(),
        };
        self.names.bind_id(doc_id, &user.id).unwrap();
        self.users.insert(handle.to_owned(), user);
    }

    fn note_latest(&mut self, token: &str) {
        if let Some(topic) = token_topic(token) {
            self.latest.insert(topic.to_owned(), token.to_owned());
        }
    }

    async fn acked(&mut self, ws: &mut Ws, op: Value) -> Value {
        let reply = ws.request(op.clone()).await;
        assert_eq!(reply["op"], "ack", "prelude op {op}: {reply}");
        if let Some(token) = reply["token"].as_str() {
            self.note_latest(token);
        }
        reply
    }

    async fn prelude(&mut self, prelude: &Prelude) {
        let group = self.names.substitute("252886320320348160");
        match prelude {
            Prelude::CarolAndDave => {
                self.register("carol", "252886213533368320").await;
                self.register("dave", "252886213696946176").await;
            }
            Prelude::Cast => {
                self.register("alice", "252886213193629696").await;
                self.register("bob", "252886213357207552").await;
                Box::pin(self.prelude(&Prelude::CarolAndDave)).await;
                let api = self.server.api();
                let (alice, bob, carol) =
                    (self.user("alice"), self.user("bob"), self.user("carol"));
                let direct = api.direct(alice, bob).await;
                let group = api.group(alice, "Mad tea party", &[bob, carol]).await;
                self.names.bind_id("252886320165158912", &direct).unwrap();
                self.names.bind_id("252886320320348160", &group).unwrap();
            }
            Prelude::BobListens => {
                self.listener = Some(Ws::connect(&self.server, self.user("bob")).await);
            }
            Prelude::AliceSharesHerLocation => {
                let mut alice = Ws::connect(&self.server, self.user("alice")).await;
                let share = json!({ "op": "location.share", "conversation_id": group, "latitude": 51.7524, "longitude": -1.2583, "duration_s": 3600 });
                self.acked(&mut alice, share).await;
            }
            Prelude::CallsAndARoom => {
                let api = self.server.api();
                api.direct(self.user("carol"), self.user("bob")).await;
                let mut alice = Ws::connect(&self.server, self.user("alice")).await;
                let mut bob = Ws::connect(&self.server, self.user("bob")).await;
                let mut carol = Ws::connect(&self.server, self.user("carol")).await;
                let call = |callee: &User| json!({ "op": "call.invite", "callee": callee.id, "media": "video" });
                let (to_bob, carol_to_bob) = (call(self.user("bob")), call(self.user("bob")));
                // Declined, busy (bob is on a call with carol), answered: newest first, the
                // history the document shows.
                let declined = self.acked(&mut alice, to_bob.clone()).await["call_id"].clone();
                self.acked(&mut bob, json!({ "op": "call.decline", "call_id": declined })).await;
                let with_carol = self.acked(&mut carol, carol_to_bob).await["call_id"].clone();
                self.acked(&mut bob, json!({ "op": "call.accept", "call_id": with_carol })).await;
                let busy = alice.request(to_bob.clone()).await;
                assert_eq!(busy["error"]["code"], "busy", "{busy}");
                self.acked(&mut carol, json!({ "op": "call.end", "call_id": with_carol })).await;
                let answered = self.acked(&mut alice, to_bob).await["call_id"].clone();
                self.acked(&mut bob, json!({ "op": "call.accept", "call_id": answered })).await;
                self.acked(&mut alice, json!({ "op": "call.end", "call_id": answered })).await;
                let room =
                    json!({ "op": "room.start", "conversation_id": group, "media": "audio" });
                self.acked(&mut carol, room).await;
                self.held.push(carol);
            }
            Prelude::MediaPeople => {
                self.register("alice", "252932367855910912").await;
                self.register("bob", "252932368204038144").await;
                self.register("dave", "252932368376004608").await;
                let (alice, bob) = (self.user("alice"), self.user("bob"));
                let direct = self.server.api().direct(alice, bob).await;
                self.names.bind_id("252932369328111616", &direct).unwrap();
            }
        }
    }

    /// The request the example makes, as this replay's people and ids.
    fn request(
        &self,
        http: &reqwest::Client,
        example: &Example,
    ) -> Result<reqwest::RequestBuilder, String> {
        let actor = actor(example);
        let token = match &actor {
            Actor::Nobody => None,
            Actor::User(name) => Some(self.user(name).token.clone()),
            Actor::Expired(name) => Some(expired_token(self.user(name))),
            Actor::Header(token) => Some(token.clone()),
        };
        let mut target = self.names.substitute(&example.target);
        if let Some(token) = &token {
            target = target.replace("token=eyJ0eXAi…", &format!("token={token}"));
        }
        target = self.consistency_token(&target, example.status);
        let method = reqwest::Method::from_bytes(example.method.as_bytes()).expect("method");
        let mut request = http.request(method, format!("{}{target}", self.server.url));
        let mut headers = HeaderMap::new();
        let in_query = target.contains("token=");
        if let (Some(token), false) = (&token, in_query) {
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        if target.starts_with("/v1/ws") {
            for (name, value) in [
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ] {
                headers.insert(name, HeaderValue::from_static(value));
            }
        }
        if let Some(range) = note_header(&example.note, "Range") {
            headers.insert("range", HeaderValue::from_str(&range).unwrap());
        }
        let content_type = note_header(&example.note, "Content-Type");
        let body: Option<Vec<u8>> = match (note_size(&example.note), &example.body) {
            (Some((size, _)), _) if target.contains("/media") => Some(vec![b'.'; size]),
            (Some((size, "body")), _) => Some(
                json!({ "client_msg_id": "big", "body": "x".repeat(size) })
                    .to_string()
                    .into_bytes(),
            ),
            (Some((size, _)), _) => {
                let padding = "x".repeat(size.saturating_sub(40));
                Some(json!({ "client_msg_id": "big", "body": padding }).to_string().into_bytes())
            }
            (None, Some(body)) => Some(self.names.substitute(body).into_bytes()),
            (None, None) => None,
        };
        match content_type {
            Some(content_type) => {
                headers.insert("content-type", HeaderValue::from_str(&content_type).unwrap());
            }
            None if body.is_some() && !target.contains("/media") => {
                headers.insert("content-type", HeaderValue::from_static("application/json"));
            }
            None => {}
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        Ok(request.headers(headers))
    }

    /// `after=TOKEN` as this replay knows it.
    fn consistency_token(&self, target: &str, status: u16) -> String {
        let Some((path, query)) = target.split_once('?') else { return target.to_owned() };
        let params: Vec<String> = query
            .split('&')
            .filter_map(|param| match param.strip_prefix("after=") {
                None => Some(param.to_owned()),
                Some(doc) => self.real_token(doc, status).map(|real| format!("after={real}")),
            })
            .collect();
        match params.is_empty() {
            true => path.to_owned(),
            false => format!("{path}?{}", params.join("&")),
        }
    }

    /// The real token of the write the document shows making `doc`. For one it never shows
    /// made, the newest write of its topic (none: the parameter is left out), unless the
    /// exchange is about a token that fails (one not reached, or not well-formed), which stays
    /// as written.
    fn real_token(&self, doc: &str, status: u16) -> Option<String> {
        if let Some(real) = self.names.token(doc) {
            return Some(real.to_owned());
        }
        match token_topic(doc) {
            Some(_) if status >= 400 => Some(doc.to_owned()),
            Some(topic) => self.latest.get(topic).cloned(),
            None => Some(doc.to_owned()),
        }
    }

    /// Plays a transcript: one socket per user it names (alice where it names none), each
    /// connected before the first frame, frames sent as written and the frames received
    /// matched by `ref`, or by event type in order.
    async fn transcript(&mut self, transcript: &Transcript) -> Result<(), String> {
        if transcript.other_lines > 0 {
            return Err("a transcript with lines that are not frames cannot be played".to_owned());
        }
        let user_of = |frame: &Frame| frame.user.clone().unwrap_or_else(|| "alice".to_owned());
        let mut sockets: HashMap<String, Ws> = HashMap::new();
        for frame in &transcript.frames {
            if let Entry::Vacant(socket) = sockets.entry(user_of(frame)) {
                let ws = Ws::connect(&self.server, self.user(socket.key())).await;
                socket.insert(ws);
            }
        }
        for frame in &transcript.frames {
            let ws = sockets.get_mut(&user_of(frame)).expect("connected above");
            match frame.sent {
                true => send(ws, frame, &self.names).await,
                false => {
                    let (captured, real) = received(ws, frame).await?;
                    let bind = real["op"] == "ack";
                    compare(&captured, &real, &mut self.names, bind, "$")
                        .map_err(|why| format!("{}: {why}", frame.text))?;
                }
            }
        }
        Ok(())
    }

    /// Whether the listener got a frame like `text`, a frame the document shows as captured.
    async fn captured(&mut self, text: &str) -> Result<(), String> {
        let captured = parse_captured(text).expect("captured frames are JSON");
        let listener = self.listener.as_mut().expect("bob listens");
        let candidates = match captured["op"].as_str() {
            Some("ready") => vec![listener.ready.clone()],
            _ => listener.drain(std::time::Duration::from_millis(300)).await,
        };
        let matching = |got: &Value| compare(&captured, got, &mut Names::default(), false, "$");
        let kind = &captured["type"];
        let mut of_kind = candidates.iter().filter(|got| got["type"] == *kind).peekable();
        let found = of_kind.clone().any(|got| matching(got).is_ok());
        // What was drained stays for the next frame to look at.
        listener.keep(candidates.clone());
        match (found, of_kind.peek()) {
            (true, _) => Ok(()),
            (false, Some(nearest)) => Err(matching(nearest).unwrap_err()),
            (false, None) => Err(format!("bob got no {kind} frame")),
        }
    }

    /// Waits until the read models hold every write made so far: the document shows reads
    /// made once they did.
    async fn settle(&self, http: &reqwest::Client) {
        let url = format!("{}/readyz", self.server.url);
        // Ten minutes is no target, only a bound that tells a hang from a slow machine.
        for _ in 0..12_000 {
            let ready: Value =
                http.get(&url).send().await.expect("readyz").json().await.expect("readyz body");
            if ready["projector_lag_events"] == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the read models did not catch up with the log:\n{}", self.server.log());
    }

    async fn replay(&mut self, http: &reqwest::Client, example: &Example) -> Result<(), String> {
        if example.method == "GET" {
            self.settle(http).await;
        }
        for _ in 1..repetitions(&example.note) {
            self.request(http, example)?.send().await.map_err(|e| e.to_string())?;
        }
        let response = self.request(http, example)?.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if status != example.status {
            return Err(format!("status {status} instead of {}: {text}", example.status));
        }
        for (name, value) in &example.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
            let Some(got) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
                return Err(format!("no {name} header"));
            };
            let loose = name == "retry-after" || value.contains('…');
            if !loose && got != self.names.substitute(value) {
                return Err(format!("{name}: {got} instead of {value}"));
            }
        }
        let Some(captured) = &example.response else { return Ok(()) };
        let captured = parse_captured(captured)
            .map_err(|e| format!("the document's body is not JSON ({e}): {captured}"))?;
        let real: Value = serde_json::from_str(&text)
            .map_err(|_| format!("the server's body is not JSON: {text}"))?;
        compare(&captured, &real, &mut self.names, example.method != "GET", "$")?;
        if let Some(token) = real["token"].as_str() {
            self.note_latest(token);
        }
        // Register and login answer with a person's token: later exchanges act as them.
        if let (Some(handle), Some(token), Some(id)) =
            (real["user"]["handle"].as_str(), real["token"].as_str(), real["user"]["id"].as_str())
            && example.target.starts_with("/v1/auth/")
        {
            let user =
                User { id: id.to_owned(), handle: handle.to_owned(), token: token.to_owned() };
            self.users.insert(handle.to_owned(), user);
        }
        Ok(())
    }
}

#[tokio::test]
async fn every_captured_exchange_of_the_protocol_document_holds() {
    let document = Document {
        examples: examples::parse(DOCUMENT),
        transcripts: examples::transcripts(DOCUMENT),
    };
    assert!(document.examples.len() > 50, "the document's exchanges were not found");
    assert!(document.transcripts.len() > 5, "the document's transcripts were not found");
    let mut done = Done::default();
    World::new().run(TEA_PARTY, &document, &mut done).await;
    World::new().run(MEDIA, &document, &mut done).await;

    let exchanges = document.examples.iter().map(|e| (e.line, e.name()));
    let transcripts = document.transcripts.iter().map(|t| (t.line, t.name()));
    let unaccounted: Vec<String> = exchanges
        .chain(transcripts)
        .filter(|(line, name)| !done.replayed.contains(line) && !not_replayed(name))
        .map(|(line, name)| format!("line {line}: {name}"))
        .collect();
    assert!(
        unaccounted.is_empty(),
        "exchanges the replay does not reach (give them a step, or a reason in NOT_REPLAYED):\n{}",
        unaccounted.join("\n")
    );
    assert!(
        done.failures.is_empty(),
        "{} of {} exchanges differ from the document:\n{}",
        done.failures.len(),
        done.replayed.len(),
        done.failures.join("\n")
    );
}
