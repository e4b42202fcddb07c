//! A test harness that runs real `switchboard` processes on loopback and talks to them the way
//! clients do: HTTP with reqwest, WebSocket with tokio-tungstenite.
//!
//! Backends come from `SWITCHBOARD_TEST_BACKEND_ARGS` (extra `serve` flags, e.g. the URLs of a
//! Kafka, Cassandra and Redis started by `ops/engines/start.sh`); by default the embedded ones.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub const JWT_SECRET: &str = "test-secret-not-for-production-0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// One running node.
pub struct Server {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// Whether this node alone uses its topics, keyspace and keys, so they go when it does.
    owns_backend: bool,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    /// A node on a fresh data directory, with generous auth limits so tests can register users.
    pub fn start(extra: &[&str]) -> Server {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut server = Server::start_in(temp.path(), extra);
        server._temp = Some(temp);
        server.owns_backend = true;
        server
    }

    /// A node of a cluster: its own data directory, but the topics, keyspace and keys of
    /// `backend_id` on the shared engines, which other nodes of the cluster use too.
    pub fn start_in_cluster(backend_id: &str, extra: &[&str]) -> Server {
        let temp = tempfile::tempdir().expect("temp dir");
        std::fs::write(temp.path().join("backend-id"), backend_id).expect("backend id");
        let mut server = Server::start_in(temp.path(), extra);
        server._temp = Some(temp);
        server
    }

    /// A node on `data_dir`, which may hold a previous node's data.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Server {
        let mut child = Server::spawn_in(data_dir, extra);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
            panic!("switchboard did not start:\n{log}")
        });
        Server { child, url, data_dir: data_dir.to_owned(), owns_backend: false, _temp: None }
    }

    /// Starts a node of the cluster `backend_id` that must refuse to start; its log, once it has
    /// exited with an error.
    pub fn refused_in_cluster(backend_id: &str, extra: &[&str]) -> String {
        let temp = tempfile::tempdir().expect("temp dir");
        std::fs::write(temp.path().join("backend-id"), backend_id).expect("backend id");
        let mut child = Server::spawn_in(temp.path(), extra);
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("switchboard was expected to refuse to start, but kept running");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let log = std::fs::read_to_string(temp.path().join("server.log")).unwrap_or_default();
        assert!(!status.success(), "switchboard exited successfully:\n{log}");
        log
    }

    /// Runs `switchboard serve` on `data_dir`, its log in `server.log` there.
    fn spawn_in(data_dir: &Path, extra: &[&str]) -> Child {
        // Tests register many users and open many sockets from one address, and reconnect the
        // same users often; these limits get tests of their own.
        let defaults =
            [("--rate-auth", "1000/1m"), ("--rate-sockets", "off"), ("--rate-sockets-ip", "off")];
        let backend_args = std::env::var("SWITCHBOARD_TEST_BACKEND_ARGS")
            .unwrap_or_default()
            .replace("{unique}", &backend_id(data_dir));
        // The suite's flags come as flag and value; one the test gives itself wins (a
        // consistency timeout, say).
        let backend_args: Vec<&str> = backend_args.split_whitespace().collect();
        let backend_args = backend_args
            .chunks(2)
            .filter(|flag_and_value| !extra.contains(&flag_and_value[0]))
            .flatten();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))
            .expect("server log file");
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--jwt-secret", JWT_SECRET])
            .args(
                defaults.iter().filter(|(flag, _)| !extra.contains(flag)).flat_map(|(f, v)| [f, v]),
            )
            .arg("--data-dir")
            .arg(data_dir)
            .args(backend_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting switchboard")
    }

    /// The server's process id, for looking at it from outside (`/proc/<pid>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address it listens on, as `host:port`.
    pub fn address(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    pub fn api(&self) -> Api {
        Api { url: self.url.clone(), http: reqwest::Client::new() }
    }

    /// `kill -9`: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        self.child.wait().expect("wait").success()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }
}

/// Names this data directory's topics, keyspace and keys on shared engines, so that tests stay
/// apart and a restarted node finds its own data again.
fn backend_id(data_dir: &Path) -> String {
    let path = data_dir.join("backend-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return id;
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let id = format!("t{}_{}", std::process::id(), nanos % 1_000_000_000_000);
    std::fs::write(&path, &id).expect("backend id");
    id
}

/// The log and store URLs of the node on `data_dir`, as `--log` and `--store` (or their
/// embedded defaults) give them.
pub fn backend_urls(data_dir: &Path) -> (String, String) {
    let args = std::env::var("SWITCHBOARD_TEST_BACKEND_ARGS").unwrap_or_default();
    let args: Vec<String> = args
        .replace("{unique}", &backend_id(data_dir))
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let flag = |name: &str, default: &str| {
        let value = args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
        value.cloned().unwrap_or_else(|| format!("file://{}", data_dir.join(default).display()))
    };
    (flag("--log", "log"), flag("--store", "store"))
}

/// A store beside the live one of `data_dir`'s node, for a rebuild: another directory, or
/// another keyspace.
pub fn rebuilt_store_url(data_dir: &Path) -> String {
    let (_, store) = backend_urls(data_dir);
    match store.strip_prefix("file://") {
        Some(_) => format!("file://{}", data_dir.join("rebuilt").display()),
        None => format!("{}_rebuilt", store.split('?').next().unwrap()),
    }
}

/// What `switchboard dump` prints of `store`.
pub fn dump(store: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["dump", "--store", store])
        .output()
        .expect("switchboard dump");
    assert!(output.status.success(), "dump failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("a UTF-8 dump")
}

/// Whether the suite runs on shared engines, where several nodes can share a cluster. When not,
/// tests that need them say so and pass — unless `SWITCHBOARD_REQUIRE_ENGINES=1` (as the test
/// script sets), which makes their absence a failure.
pub fn on_shared_engines(test: &str) -> bool {
    let shared =
        std::env::var("SWITCHBOARD_TEST_BACKEND_ARGS").is_ok_and(|args| !args.trim().is_empty());
    let required = std::env::var("SWITCHBOARD_REQUIRE_ENGINES").is_ok_and(|v| v == "1");
    assert!(
        shared || !required,
        "{test} needs the engines: run ops/engines/start.sh and set SWITCHBOARD_TEST_BACKEND_ARGS"
    );
    if !shared {
        eprintln!("{test}: skipped on the embedded backends (one process only)");
    }
    shared
}

/// A backend id for a new cluster of nodes.
pub fn new_cluster_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!(
        "c{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    )
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_backend {
            drop_keyspace(&self.data_dir);
        }
    }
}

/// Drops the keyspace of a node that ran on shared engines. Cassandra keeps every table it has
/// in its heap, and a suite's worth of test keyspaces would run the engine's small heap out.
fn drop_keyspace(data_dir: &Path) {
    let (_, store) = backend_urls(data_dir);
    let Ok(config) = switchboard_projector::store::cql::CqlConfig::from_url(&store) else {
        return;
    };
    // Drop may run on a test's runtime, which must not be blocked: this gets a thread of its own.
    let dropping = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        runtime.block_on(async {
            let session = switchboard_projector::store::cql::open_session(&config).await.ok()?;
            let drop = format!("DROP KEYSPACE IF EXISTS {}", config.keyspace);
            session.query_unpaged(drop, ()).await.ok()
        })
    });
    let _ = dropping.join();
}

/// A registered user with an access token.
#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub handle: String,
    pub token: String,
}

/// HTTP calls against one node.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    http: reqwest::Client,
}

/// Handles unique within a test binary run, so tests can share nothing but the server.
pub fn unique_handle(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status();
        let text = response.text().await.expect("HTTP body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str, user: &User) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&user.token), None).await
    }

    pub async fn post(&self, path: &str, user: &User, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&user.token), Some(body)).await
    }

    /// Uploads `bytes` into a conversation; `query` is appended to the path as it is.
    pub async fn upload(
        &self,
        user: &User,
        conversation: &str,
        content_type: Option<&str>,
        query: &str,
        bytes: Vec<u8>,
    ) -> (StatusCode, Value) {
        let url = format!("{}/v1/conversations/{conversation}/media{query}", self.url);
        let mut request = self.http.post(url).bearer_auth(&user.token).body(bytes);
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        let response = request.send().await.expect("upload request");
        let status = response.status();
        let text = response.text().await.expect("upload response");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn register(&self, prefix: &str) -> User {
        let handle = unique_handle(prefix);
        let body = json!({ "handle": handle, "password": "correct horse battery" });
        let (status, value) = self.call(Method::POST, "/v1/auth/register", None, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "register {handle}: {value}");
        User {
            id: value["user"]["id"].as_str().expect("user id").to_owned(),
            handle,
            token: value["token"].as_str().expect("token").to_owned(),
        }
    }

    /// Two new users and the direct conversation between them.
    pub async fn pair(&self) -> (User, User, String) {
        let (ada, bob) = (self.register("ada").await, self.register("bob").await);
        let conversation = self.direct(&ada, &bob).await;
        (ada, bob, conversation)
    }

    pub async fn direct(&self, a: &User, b: &User) -> String {
        let (status, value) =
            self.post("/v1/conversations", a, json!({ "kind": "direct", "user_id": b.id })).await;
        assert!(status.is_success(), "direct conversation: {value}");
        value["conversation"]["id"].as_str().expect("conversation id").to_owned()
    }

    pub async fn group(&self, owner: &User, title: &str, members: &[&User]) -> String {
        let members: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        let body = json!({ "kind": "group", "title": title, "members": members });
        let (status, value) = self.post("/v1/conversations", owner, body).await;
        assert_eq!(status, StatusCode::CREATED, "group conversation: {value}");
        value["conversation"]["id"].as_str().expect("conversation id").to_owned()
    }

    /// Every message of a conversation, newest first, following the paging cursor.
    pub async fn history(
        &self,
        user: &User,
        conversation: &str,
        after: Option<&str>,
    ) -> Vec<Value> {
        let mut messages = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut path = format!("/v1/conversations/{conversation}/messages?limit=100");
            if let Some(before) = &before {
                path.push_str(&format!("&before={before}"));
            }
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            let (status, page) = self.get(&path, user).await;
            assert_eq!(status, StatusCode::OK, "history: {page}");
            messages.extend(page["messages"].as_array().expect("messages").iter().cloned());
            match page["next_before"].as_str() {
                Some(next) => before = Some(next.to_owned()),
                None => return messages,
            }
        }
    }
}

/// One WebSocket connection; frames not yet asked for wait in a backlog.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    backlog: VecDeque<Value>,
    next_ref: u64,
    pub ready: Value,
}

/// How a WebSocket connection attempt ended.
#[derive(Debug)]
pub enum Refused {
    Http(StatusCode, Value),
    Other(String),
}

impl Ws {
    pub async fn connect(server: &Server, user: &User) -> Ws {
        Ws::connect_with(server, &format!("token={}", user.token)).await.expect("WebSocket connect")
    }

    pub async fn resume(server: &Server, user: &User, token: &str) -> Ws {
        Ws::connect_with(server, &format!("token={}&resume={token}", user.token))
            .await
            .expect("resume")
    }

    pub async fn connect_with(server: &Server, query: &str) -> Result<Ws, Refused> {
        let url = format!("{}/v1/ws?{query}", server.url.replacen("http", "ws", 1));
        let (stream, _) = connect_async(url).await.map_err(|error| match error {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null));
                Refused::Http(status, body.unwrap_or(Value::Null))
            }
            other => Refused::Other(other.to_string()),
        })?;
        let mut ws = Ws { stream, backlog: VecDeque::new(), next_ref: 0, ready: Value::Null };
        ws.ready = ws.next_where(|f| f["op"] == "ready").await;
        Ok(ws)
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    /// Like [`Ws::send_json`], but returns `false` rather than panicking when the socket is
    /// gone (its server was killed, say): for a client that learns how the connection ended
    /// from its next read.
    pub async fn try_send_json(&mut self, frame: Value) -> bool {
        self.stream.send(Message::Text(frame.to_string().into())).await.is_ok()
    }

    pub async fn send_text(&mut self, text: String) {
        self.stream.send(Message::Text(text.into())).await.expect("WebSocket send");
    }

    /// Sends a text frame the server may refuse by closing the socket while it is still being
    /// written (one past the hard cap): how that ends is for the next read to tell.
    pub async fn send_oversized_text(&mut self, text: String) {
        let _ = self.stream.send(Message::Text(text.into())).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.stream.send(Message::Binary(bytes.into())).await.expect("WebSocket send");
    }

    /// The next frame from the server (not from the backlog), or `None` if the socket closed.
    async fn read(&mut self, within: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(within, self.stream.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Some(serde_json::from_str(&text).expect("JSON frame"));
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let code = frame.as_ref().map(|f| u16::from(f.code));
                    return Some(json!({ "op": "closed", "code": code }));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return Some(json!({ "op": "closed", "code": null })),
            }
        }
    }

    /// The first frame (backlog first) that matches; others stay in the backlog.
    pub async fn next_where(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
        self.next_within(WAIT, matches).await
    }

    /// Like [`Ws::next_where`], waiting up to `wait`.
    pub async fn next_within(&mut self, wait: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&matches) {
            return self.backlog.remove(i).expect("index");
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.read(left).await else {
                panic!("no matching frame within {wait:?}; backlog: {:?}", self.backlog)
            };
            if matches(&frame) {
                return frame;
            }
            assert_ne!(
                frame["op"], "closed",
                "socket closed while waiting; backlog: {:?}",
                self.backlog
            );
            self.backlog.push_back(frame);
        }
    }

    /// The next frame whatever it is (backlog first), or `None` if none arrives within `wait`:
    /// for a client that reads what comes while it does other things in between, such as
    /// sending at a steady rate. A closed socket gives `{"op":"closed"}` as [`Ws::drain`] does.
    pub async fn next_frame_within(&mut self, wait: Duration) -> Option<Value> {
        match self.backlog.pop_front() {
            Some(frame) => Some(frame),
            None => self.read(wait).await,
        }
    }

    pub async fn next_event(&mut self, kind: &str) -> Value {
        self.next_where(|f| f["op"] == "event" && f["type"] == kind).await
    }

    /// Every frame that arrives within `quiet` of the previous one, backlog included.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut frames: Vec<Value> = self.backlog.drain(..).collect();
        while let Some(frame) = self.read(quiet).await {
            let closed = frame["op"] == "closed";
            frames.push(frame);
            if closed {
                break;
            }
        }
        frames
    }

    /// Puts frames back, for [`Ws::next_where`] and [`Ws::drain`] to find again.
    pub fn keep(&mut self, frames: Vec<Value>) {
        self.backlog.extend(frames);
    }

    /// The pushed events of one type among the frames [`Ws::drain`] collects.
    pub async fn drain_events(&mut self, kind: &str, quiet: Duration) -> Vec<Value> {
        let frames = self.drain(quiet).await;
        frames.into_iter().filter(|f| f["op"] == "event" && f["type"] == kind).collect()
    }

    /// Sends an op with a fresh `ref` and returns the reply (`ack`, `error` or `pong`).
    pub async fn request(&mut self, frame: Value) -> Value {
        self.request_within(WAIT, frame).await
    }

    /// Like [`Ws::request`], for a reply that may take up to `wait` by design.
    pub async fn request_within(&mut self, wait: Duration, mut frame: Value) -> Value {
        self.next_ref += 1;
        let reference = format!("r{}", self.next_ref);
        frame["ref"] = json!(reference);
        self.send_json(frame).await;
        self.next_within(wait, |f| f["ref"] == json!(reference)).await
    }

    pub async fn send_message(
        &mut self,
        conversation: &str,
        client_msg_id: &str,
        body: &str,
    ) -> Value {
        self.request(json!({
            "op": "send",
            "conversation_id": conversation,
            "client_msg_id": client_msg_id,
            "body": body,
        }))
        .await
    }

    /// Proves the connection still works: a ping gets its pong.
    pub async fn assert_usable(&mut self) {
        let pong = self.request(json!({ "op": "ping" })).await;
        assert_eq!(pong["op"], "pong", "{pong}");
    }

    /// Closes with code 1000 and returns the code of the server's answering close frame.
    pub async fn close_handshake(mut self) -> Option<u16> {
        let normal = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
        self.stream.close(Some(normal)).await.expect("sending close");
        while let Ok(Some(message)) = tokio::time::timeout(WAIT, self.stream.next()).await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
