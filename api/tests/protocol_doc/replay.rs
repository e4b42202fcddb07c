//! Plays the story against real servers and compares what they answer with the document.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::common::{Server, User, Ws};
use crate::compare::{Names, compare, parse_captured, token_topic};
use crate::descriptions::Described;
use crate::examples::{self, Example, Frame, Transcript};
use crate::notes::{
    Actor, actor, expired_token, note_header, note_size, repetitions, server_flags,
};
use crate::story::{Prelude, Step, not_replayed};
use crate::{DOCUMENT, Document};

/// The servers of one story. One a note asks for (`--rate-messages 2/1m`) is started on first
/// use, and gets the cast once an exchange needs one of them.
pub struct World {
    servers: HashMap<Vec<String>, Replica>,
    http: reqwest::Client,
    described: Arc<Described>,
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
    /// What every request, response and frame is held to besides the document's captures.
    described: Arc<Described>,
}

impl World {
    pub fn new(described: Arc<Described>) -> World {
        World { servers: HashMap::new(), http: reqwest::Client::new(), described }
    }

    fn replica(&mut self, flags: Vec<String>) -> &mut Replica {
        let described = &self.described;
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
                described: described.clone(),
            }
        })
    }

    pub async fn run(&mut self, steps: &'static [Step], document: &Document, done: &mut Done) {
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
pub struct Done {
    pub replayed: HashSet<usize>,
    pub failures: Vec<String>,
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

    /// Holds the exchange to the OpenAPI document: the JSON body sent (when the route took
    /// it) and the one answered, against the schemas of the route's operation.
    fn hold_to_description(
        &self,
        example: &Example,
        status: u16,
        headers: &HeaderMap,
        text: &str,
    ) -> Result<(), String> {
        let target = self.names.substitute(&example.target);
        let path = target.split('?').next().unwrap_or_default();
        let request = example.body.as_ref().filter(|_| note_size(&example.note).is_none());
        let request =
            request.and_then(|body| serde_json::from_str(&self.names.substitute(body)).ok());
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
        let response = serde_json::from_str(text).ok();
        self.described.http(
            &example.method,
            path,
            request.as_ref().filter(|_| !path.contains("/media")),
            status,
            content_type,
            response.as_ref(),
        )
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
        // The frames sent, by user and `ref`: one the server takes is held to its op's schema.
        let mut sent: HashMap<(String, String), Value> = HashMap::new();
        for frame in &transcript.frames {
            let ws = sockets.get_mut(&user_of(frame)).expect("connected above");
            match frame.sent {
                true => {
                    send(ws, frame, &self.names).await;
                    if let Ok(op) =
                        serde_json::from_str::<Value>(&self.names.substitute(&frame.text))
                    {
                        sent.insert((user_of(frame), op["ref"].to_string()), op);
                    }
                }
                false => {
                    let (captured, real) = received(ws, frame).await?;
                    let bind = real["op"] == "ack";
                    compare(&captured, &real, &mut self.names, bind, "$")
                        .map_err(|why| format!("{}: {why}", frame.text))?;
                    if real.is_null() {
                        continue;
                    }
                    let request = sent.get(&(user_of(frame), real["ref"].to_string()));
                    let taken = matches!(real["op"].as_str(), Some("ack" | "pong"));
                    if let (Some(request), true) = (request, taken) {
                        self.described.sent(request)?;
                    }
                    let op = request.and_then(|request| request["op"].as_str());
                    self.described.received(&real, op).map_err(|why| format!("{real}: {why}"))?;
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
        for got in &candidates {
            self.described.received(got, None).map_err(|why| format!("{got}: {why}"))?;
        }
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
        // Held to the descriptions, but played on: what the exchange made is needed further on.
        let described = self.hold_to_description(example, status, &headers, &text);
        let Some(captured) = &example.response else { return described };
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
        described
    }
}
