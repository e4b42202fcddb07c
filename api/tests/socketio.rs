//! `/socket.io/` as the official clients see it: `socket.io-client` (Node) over WebSocket, over
//! long-polling, and upgrading from one to the other; a 2.x client on Engine.IO 3; and
//! `python-socketio`. Each is a driver script in `api/tests/clients/` that this suite talks to
//! over its standard streams (see `driver.cjs`).
//!
//! The clients come from `SWITCHBOARD_SOCKETIO_CLIENTS`: a directory holding the `node_modules`
//! of `api/tests/clients/package.json` and, in `venv/`, a Python environment with its
//! `requirements.txt` (`ops/test.sh` installs both, at their pinned versions). Without it, the
//! suite says so and passes.

mod common;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{Api, Server, User, Ws, new_cluster_id, on_shared_engines};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
/// How long a report the test waits for may take, on a busy machine.
const WAIT: Duration = Duration::from_secs(20);

/// Which client library a driver runs.
#[derive(Clone, Copy, Debug)]
enum Library {
    /// `socket.io-client` 4: Socket.IO v5 on Engine.IO 4.
    Node,
    /// `socket.io-client` 2: Socket.IO v4 on Engine.IO 3.
    NodeV2,
    Python,
}

/// The directory the clients are installed in, or `None` (with a note) when they are not.
fn installed(test: &str) -> Option<PathBuf> {
    match std::env::var("SWITCHBOARD_SOCKETIO_CLIENTS") {
        Ok(dir) => Some(PathBuf::from(dir)),
        Err(_) => {
            eprintln!("{test}: skipped without SWITCHBOARD_SOCKETIO_CLIENTS (see ops/test.sh)");
            None
        }
    }
}

/// One client, driven by its driver script.
struct Client {
    _child: Child,
    stdin: ChildStdin,
    reports: Lines<BufReader<ChildStdout>>,
    /// Reports read while waiting for another.
    backlog: VecDeque<Value>,
    next_id: u64,
    /// The `ready` event's frame.
    ready: Value,
}

impl Client {
    fn spawn(clients: &Path, library: Library) -> Client {
        let mut command = match library {
            Library::Node | Library::NodeV2 => {
                let mut command = Command::new("node");
                command
                    .arg(format!("{CLIENTS}/driver.cjs"))
                    .env("NODE_PATH", clients.join("node_modules"));
                command.arg(match library {
                    Library::NodeV2 => "socket.io-client-v2",
                    _ => "socket.io-client",
                });
                command
            }
            Library::Python => {
                let mut command = Command::new(clients.join("venv/bin/python"));
                command.arg(format!("{CLIENTS}/driver.py"));
                command
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {library:?} client: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let reports = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Client {
            _child: child,
            stdin,
            reports,
            backlog: VecDeque::new(),
            next_id: 0,
            ready: Value::Null,
        }
    }

    /// Connects with `options` (`transports`, `upgrade`, `auth`, `query`) and waits for `ready`.
    async fn connect(clients: &Path, library: Library, server: &Server, options: Value) -> Client {
        let (mut client, outcome) = Client::attempt(clients, library, server, options).await;
        assert!(outcome.get("connected").is_some(), "{library:?} did not connect: {outcome}");
        client.ready = client.event("ready").await;
        client
    }

    /// Connects with `options`, which the server must refuse: the refusal's error body.
    async fn refused(clients: &Path, library: Library, server: &Server, options: Value) -> Value {
        let (_, outcome) = Client::attempt(clients, library, server, options).await;
        let message =
            outcome["connect_error"].as_str().unwrap_or_else(|| panic!("not refused: {outcome}"));
        serde_json::from_str(message).unwrap_or_else(|_| panic!("not an error body: {message}"))
    }

    /// A client trying to connect, and how that went: `connected` or `connect_error`.
    async fn attempt(
        clients: &Path,
        library: Library,
        server: &Server,
        mut options: Value,
    ) -> (Client, Value) {
        let mut client = Client::spawn(clients, library);
        options["url"] = json!(server.url);
        client.command(json!({ "connect": options })).await;
        let outcome = client
            .next_where(|r| r.get("connected").is_some() || r.get("connect_error").is_some())
            .await;
        (client, outcome)
    }

    async fn command(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.expect("driver stdin");
    }

    async fn next_where(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(at) = self.backlog.iter().position(&matches) {
            return self.backlog.remove(at).expect("found");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.reports.next_line())
                .await
                .unwrap_or_else(|_| {
                    panic!("nothing matching within {WAIT:?}; saw {:?}", self.backlog)
                })
                .expect("driver stdout")
                .unwrap_or_else(|| panic!("the driver exited; saw {:?}", self.backlog));
            let report: Value = serde_json::from_str(&line).expect("a JSON report");
            if matches(&report) {
                return report;
            }
            self.backlog.push_back(report);
        }
    }

    /// The argument of the next event `name`.
    async fn event(&mut self, name: &str) -> Value {
        let report = self.next_where(|r| r["event"] == name).await;
        report["args"][0].clone()
    }

    /// The next pushed event `kind` whose data has `field` equal to `value`.
    async fn event_where(&mut self, kind: &str, field: &str, value: &Value) -> Value {
        let report =
            self.next_where(|r| r["event"] == kind && r["args"][0]["data"][field] == *value).await;
        report["args"][0].clone()
    }

    /// Emits op `name` with `fields` and returns what its acknowledgement got.
    async fn request(&mut self, name: &str, fields: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.command(json!({ "emit": name, "args": [fields], "id": id })).await;
        let report = self.next_where(|r| r["ack"] == id).await;
        report["args"][0].clone()
    }

    async fn send(&mut self, conversation: &str, client_msg_id: &str, body: &str) -> Value {
        let fields = json!({ "conversation_id": conversation, "client_msg_id": client_msg_id, "body": body });
        self.request("send", fields).await
    }

    async fn disconnect(&mut self) {
        self.command(json!({ "disconnect": true })).await;
        self.next_where(|r| r.get("disconnected").is_some()).await;
    }
}

fn with_token(user: &User, options: Value) -> Value {
    let mut options = options;
    options["auth"] = json!({ "token": user.token });
    options
}

/// A Socket.IO client and a `/v1/ws` client chat in both directions; the server and the
/// Socket.IO client, still connected.
async fn chat_with_ws(clients: &Path, library: Library, options: Value) -> (Server, Client) {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ada_io = Client::connect(clients, library, &server, with_token(&ada, options)).await;
    assert_eq!(ada_io.ready["op"], "ready", "{}", ada_io.ready);
    assert_eq!(ada_io.ready["user_id"], json!(ada.id));
    let mut bob_ws = Ws::connect(&server, &bob).await;

    let sent = ada_io.send(&conversation, "io-1", "from Socket.IO").await;
    assert_eq!(sent["op"], "ack", "{sent}");
    let got = bob_ws.next_event("message.sent").await;
    assert_eq!(got["data"]["message_id"], sent["message_id"]);
    assert_eq!(got["data"]["body"], "from Socket.IO");
    let own = ada_io.event_where("message.sent", "message_id", &sent["message_id"]).await;
    assert_eq!(own["op"], "event");
    assert!(own["token"].is_string(), "pushes carry their resume token: {own}");

    let reply = bob_ws.send_message(&conversation, "ws-1", "from /v1/ws").await;
    let pushed = ada_io.event_where("message.sent", "message_id", &reply["message_id"]).await;
    assert_eq!(pushed["data"]["body"], "from /v1/ws");
    assert_eq!(pushed["data"]["sender"], json!(bob.id));
    (server, ada_io)
}

#[tokio::test]
async fn socketio_clients_chat_with_ws_clients_over_websocket() {
    let Some(clients) = installed("over websocket") else { return };
    let options = json!({ "transports": ["websocket"] });
    let (mut server, mut client) = chat_with_ws(&clients, Library::Node, options).await;
    // A node that stops says why before it disconnects: the close code of `/v1/ws`.
    assert!(server.terminate(), "the node stops cleanly with a Socket.IO client connected");
    let close = client.event("close").await;
    assert_eq!(close, json!({ "op": "close", "code": 1001, "reason": "server shutting down" }));
    client.next_where(|r| r.get("disconnected").is_some()).await;
}

#[tokio::test]
async fn socketio_clients_chat_with_ws_clients_over_long_polling_alone() {
    let Some(clients) = installed("over long-polling") else { return };
    let options = json!({ "transports": ["polling"], "upgrade": false });
    let (_server, client) = chat_with_ws(&clients, Library::Node, options).await;
    assert!(client.backlog.iter().all(|r| r.get("upgraded").is_none()), "{:?}", client.backlog);
}

#[tokio::test]
async fn socketio_clients_upgrade_from_long_polling_to_websocket() {
    let Some(clients) = installed("upgrade") else { return };
    let options = json!({ "transports": ["polling", "websocket"] });
    let (_server, mut client) = chat_with_ws(&clients, Library::Node, options).await;
    let upgraded = client.next_where(|r| r.get("upgraded").is_some()).await;
    assert_eq!(upgraded["upgraded"], "websocket");
    assert_eq!(client.request("ping", json!({})).await["op"], "pong");
}

#[tokio::test]
async fn python_socketio_chats_with_ws_clients() {
    let Some(clients) = installed("python-socketio") else { return };
    chat_with_ws(&clients, Library::Python, json!({ "transports": ["websocket"] })).await;
}

#[tokio::test]
async fn an_engine_io_3_client_connects_and_takes_ops() {
    let Some(clients) = installed("Engine.IO 3") else { return };
    let server = Server::start(&[]);
    let ada = server.api().register("ada").await;
    for transports in [json!(["websocket"]), json!(["polling"])] {
        let options = json!({ "transports": transports, "query": { "token": ada.token } });
        let mut client = Client::connect(&clients, Library::NodeV2, &server, options).await;
        assert_eq!(client.ready["user_id"], json!(ada.id), "{transports}");
        // `ping` is a reserved event name in 2.x clients, which they never send.
        let synced = client.request("sync", json!({ "ref": "v2" })).await;
        assert_eq!(synced["op"], "ack", "{synced}");
        assert_eq!(synced["ref"], "v2");
        assert_eq!(synced["full"], true, "{synced}");
    }
}

#[tokio::test]
async fn acks_carry_errors_limits_and_refusals_like_ws() {
    let Some(clients) = installed("errors") else { return };
    let server = Server::start(&["--rate-messages", "3/1m", "--rate-sockets", "1/1m"]);
    let api = server.api();
    let (ada, _bob, conversation) = api.pair().await;

    let refusal = Client::refused(&clients, Library::Node, &server, json!({})).await;
    assert_eq!(refusal["code"], "unauthorized", "{refusal}");
    let options = json!({ "auth": { "token": "not-a-token" } });
    let refusal = Client::refused(&clients, Library::Node, &server, options).await;
    assert_eq!(refusal["code"], "unauthorized", "{refusal}");
    let options = json!({ "auth": { "token": ada.token, "resume": "chats:1" } });
    let refusal = Client::refused(&clients, Library::Node, &server, options).await;
    assert_eq!(refusal["code"], "bad_request", "{refusal}");

    let options = with_token(&ada, json!({ "transports": ["websocket"] }));
    let mut client = Client::connect(&clients, Library::Node, &server, options.clone()).await;
    // Opening sockets counts against `rate_sockets`, as on `/v1/ws`.
    let refusal = Client::refused(&clients, Library::Node, &server, options).await;
    assert_eq!(refusal["code"], "rate_limited", "{refusal}");
    assert!(refusal["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{refusal}");
    let unknown = client.request("dance", json!({ "ref": 1 })).await;
    assert_eq!(unknown["op"], "error");
    assert_eq!(unknown["ref"], 1);
    assert_eq!(unknown["error"]["code"], "unknown_op", "{unknown}");
    let missing = client.request("read", json!({ "conversation_id": conversation })).await;
    assert_eq!(missing["error"]["code"], "bad_request", "{missing}");
    let not_found = client.send("1", "x", "to nowhere").await;
    assert_eq!(not_found["error"]["code"], "not_found", "{not_found}");

    // A 2 MB event is past max_frame_bytes: refused, and the socket stays usable.
    let big = client.send(&conversation, "big", &"x".repeat(2 << 20)).await;
    assert_eq!(big["error"]["code"], "frame_too_large", "{big}");
    assert_eq!(client.request("ping", json!({})).await["op"], "pong");

    let mut codes = Vec::new();
    for n in 0..4 {
        let reply = client.send(&conversation, &format!("r{n}"), "again").await;
        codes.push(reply["error"]["code"].as_str().unwrap_or("ack").to_owned());
    }
    assert_eq!(codes.last().map(String::as_str), Some("rate_limited"), "{codes:?}");
    assert!(codes.iter().any(|code| code == "ack"), "{codes:?}");
}

#[tokio::test]
async fn socketio_clients_resume_from_the_handshake() {
    let Some(clients) = installed("resume") else { return };
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let options = with_token(&ada, json!({ "transports": ["websocket"] }));
    let mut first = Client::connect(&clients, Library::Node, &server, options).await;
    let token = first.ready["token"].as_str().expect("ready token").to_owned();
    first.disconnect().await;

    let body = json!({ "client_msg_id": "while-away", "body": "missed you" });
    let path = format!("/v1/conversations/{conversation}/messages");
    let (status, sent) = api.call(Method::POST, &path, Some(&bob.token), Some(body)).await;
    assert!(status.is_success(), "{sent}");

    let options =
        json!({ "transports": ["websocket"], "auth": { "token": ada.token, "resume": token } });
    let mut again = Client::connect(&clients, Library::Node, &server, options).await;
    assert_eq!(again.ready["resumed"], true, "{}", again.ready);
    assert_eq!(again.ready["token"], json!(token));
    let missed = again.event_where("message.sent", "message_id", &sent["message_id"]).await;
    assert_eq!(missed["data"]["body"], "missed you");
}

#[tokio::test]
async fn pushes_reach_socketio_clients_on_another_node() {
    if !on_shared_engines("pushes_reach_socketio_clients_on_another_node") {
        return;
    }
    let Some(clients) = installed("across nodes") else { return };
    let id = new_cluster_id();
    let node = |role: &str, node_id: &str| {
        Server::start_in_cluster(&id, &["--role", role, "--node-id", node_id])
    };
    let _projector = node("projector", "100");
    let (a, b) = (node("api", "1"), node("api", "2"));
    let (api_a, api_b): (Api, Api) = (a.api(), b.api());
    let ada = api_a.register("ada").await;
    let bob = api_b.register("bob").await;
    let conversation = api_a.direct(&ada, &bob).await;
    let mut ada_ws = Ws::connect(&a, &ada).await;
    let options = with_token(&bob, json!({ "transports": ["polling", "websocket"] }));
    let mut bob_io = Client::connect(&clients, Library::Node, &b, options).await;

    let sent = ada_ws.send_message(&conversation, "n1", "across nodes").await;
    assert_eq!(sent["op"], "ack", "{sent}");
    let got = bob_io.event_where("message.sent", "message_id", &sent["message_id"]).await;
    assert_eq!(got["data"]["body"], "across nodes");
    let reply = bob_io.send(&conversation, "n2", "and back").await;
    let back = ada_ws
        .next_where(|f| {
            f["type"] == "message.sent" && f["data"]["message_id"] == reply["message_id"]
        })
        .await;
    assert_eq!(back["data"]["body"], "and back");
}

const DOCUMENT: &str = include_str!("../../docs/protocol.md");

/// The fenced blocks in `language` of the document's Socket.IO section, in order.
fn documented(language: &str) -> Vec<String> {
    let section = DOCUMENT.split("\n## Socket.IO\n").nth(1).expect("a Socket.IO section");
    let section = section.split("\n## ").next().expect("the section");
    let fence = format!("```{language}\n");
    section
        .split(&fence)
        .skip(1)
        .map(|block| block.split("```").next().expect("a closed block").to_owned())
        .collect()
}

#[tokio::test]
async fn the_documented_socketio_client_example_prints_what_the_document_says() {
    let Some(clients) = installed("the documented example") else { return };
    let script = documented("js").into_iter().next().expect("a js example");
    let printed = documented("text");
    assert_eq!(printed.len(), 2, "what the example prints, and prints when refused");
    let server = Server::start(&[]);
    let (ada, _bob, conversation) = server.api().pair().await;
    for (token, expected) in [(ada.token.as_str(), &printed[0]), ("not-a-token", &printed[1])] {
        let script = script
            .replace("\"http://localhost:8080\"", &json!(server.url).to_string())
            .replace("ACCESS_TOKEN", &json!(token).to_string())
            .replace("CONVERSATION_ID", &json!(conversation).to_string());
        let mut node = Command::new("node")
            .arg("-e")
            .arg(script)
            .env("NODE_PATH", clients.join("node_modules"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
        let mut expected: Vec<&str> = expected.lines().collect();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let line = tokio::time::timeout(WAIT, lines.next_line()).await;
            let line = line.unwrap_or_else(|_| panic!("printed only {got:?} within {WAIT:?}"));
            got.push(line.expect("node stdout").unwrap_or_else(|| panic!("exited after {got:?}")));
        }
        // The pushed event and the acknowledgement come in either order.
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
    }
}
