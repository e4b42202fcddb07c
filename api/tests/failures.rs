//! What a node does when an engine goes away: Kafka down means sends fail with a retryable
//! error and nothing unlogged is acknowledged; Redis down means sends are acknowledged (a retry
//! with the first send's id) while presence says it is degraded and pushes wait for the feeds;
//! Cassandra down means queries fail clearly, presence waits, the projector pauses and a rebuild
//! waits, then everything catches up without loss.
//!
//! These stop and start the shared engines (`ops/engines`), one test at a time; on the embedded
//! backends they skip.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, Ws, on_shared_engines};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Only one engine is down at a time.
static ENGINES: Mutex<()> = Mutex::const_new(());

/// Longer than any backend timeout: how long a request may take to fail while an engine is down.
const OUTAGE_WAIT: Duration = Duration::from_secs(45);

fn engines(script: &str, engine: &str) {
    let path = format!("{}/../ops/engines/{script}.sh", env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(path).arg(engine).env("KEEP", "1").status().expect("engine script");
    assert!(status.success(), "{script} {engine} failed");
}

/// Brings the engine back even when the test fails half way.
struct Outage(&'static str);

impl Outage {
    fn begin(engine: &'static str) -> Outage {
        engines("stop", engine);
        Outage(engine)
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        engines("start", self.0);
    }
}

fn send_frame(conversation: &str, client_msg_id: &str) -> Value {
    json!({ "op": "send", "ref": client_msg_id, "conversation_id": conversation, "client_msg_id": client_msg_id, "body": client_msg_id })
}

/// Sends `frame` until it is acknowledged, a second apart, as a client retries what was refused
/// as unavailable while an engine comes back; insists on the acknowledgement in the end.
async fn acked_after_retries(ws: &mut Ws, frame: Value) -> Value {
    let mut reply = ws.request(frame.clone()).await;
    for _ in 0..30 {
        if reply["op"] == "ack" {
            break;
        }
        assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        reply = ws.request(frame.clone()).await;
    }
    assert_eq!(reply["op"], "ack", "{reply}");
    reply
}

#[tokio::test]
async fn with_kafka_down_sends_fail_retryably_and_nothing_unlogged_is_acknowledged() {
    if !on_shared_engines(
        "with_kafka_down_sends_fail_retryably_and_nothing_unlogged_is_acknowledged",
    ) {
        return;
    }
    let _one_at_a_time = ENGINES.lock().await;
    let server = Server::start(&[]);
    let (ada, bob, conversation) = server.api().pair().await;
    let mut ws = Ws::connect(&server, &ada).await;
    let before = ws.send_message(&conversation, "before", "before").await;
    assert_eq!(before["op"], "ack");

    let outage = Outage::begin("kafka");
    ws.send_json(send_frame(&conversation, "during")).await;
    let failed = ws.next_within(OUTAGE_WAIT, |f| f["ref"] == "during").await;
    assert_eq!(failed["error"]["code"], "unavailable", "{failed}");
    assert!(failed["error"]["retry_after_ms"].as_u64().unwrap() > 0);
    drop(outage);

    // The retry goes through once Kafka is back, and the conversation holds each send once.
    ws.send_json(send_frame(&conversation, "during")).await;
    let retried = ws.next_within(OUTAGE_WAIT, |f| f["ref"] == "during").await;
    assert_eq!(retried["op"], "ack", "{retried}");
    // The projector's group has to find the restarted broker again before the read models move
    // on, which on a busy machine can take longer than one request may wait.
    ready_when(&server, |ready| ready["projector_lag_events"] == 0).await;
    let history = server.api().history(&bob, &conversation, retried["token"].as_str()).await;
    let ids: Vec<&Value> = history.iter().map(|m| &m["client_msg_id"]).collect();
    assert_eq!(ids, [&json!("during"), &json!("before")]);
}

#[tokio::test]
async fn with_redis_down_sends_are_acknowledged_once_and_pushed_once_redis_is_back() {
    if !on_shared_engines(
        "with_redis_down_sends_are_acknowledged_once_and_pushed_once_redis_is_back",
    ) {
        return;
    }
    let _one_at_a_time = ENGINES.lock().await;
    let server = Server::start(&[]);
    let (ada, bob, conversation) = server.api().pair().await;
    let api = server.api();
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    bob_ws.drain(Duration::from_millis(300)).await;

    let outage = Outage::begin("redis");
    let sent = ada_ws.send_message(&conversation, "no-redis", "still here").await;
    assert_eq!(sent["op"], "ack", "{sent}");
    // A retry, with no claim to find: answered with the message the store kept.
    let retried = ada_ws.send_message(&conversation, "no-redis", "still here").await;
    assert_eq!(retried["message_id"], sent["message_id"], "{retried}");
    assert_eq!(retried["duplicate"], true, "{retried}");
    let (status, report) = api.get(&format!("/v1/presence?users={}", bob.id), &ada).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["degraded"], true);
    assert_eq!(report["presence"][0]["online"], Value::Null);
    // Pushes wait for the feeds, and the node says so.
    let waiting = ready_when(&server, |ready| {
        ready["delivery"]["delivery"]
            .as_str()
            .is_some_and(|lane| lane.starts_with("failed, retrying: feeds"))
    })
    .await;
    assert_eq!(waiting["ready"], false, "{waiting}");
    // A socket opened now cannot follow its user's feed: it is told so, and to come back.
    let carol = api.register("carol").await;
    let (code, frames) = turned_away(&server, &carol.token).await;
    assert_eq!(code, Some(1013), "try again later: {frames:?}");
    assert_eq!(
        frames.first().map(|f| &f["error"]["code"]),
        Some(&json!("unavailable")),
        "{frames:?}"
    );
    drop(outage);

    let got = bob_ws.next_within(OUTAGE_WAIT, |f| f["type"] == "message.sent").await;
    assert_eq!(got["data"]["message_id"], sent["message_id"]);
    let again = bob_ws.drain(Duration::from_secs(2)).await;
    assert!(again.iter().all(|f| f["type"] != "message.sent"), "pushed once: {again:?}");
    let (_, report) = api.get(&format!("/v1/presence?users={}", bob.id), &ada).await;
    assert_eq!(report["degraded"], false, "{report}");
}

#[tokio::test]
async fn with_redis_down_rate_limits_are_counted_on_each_node() {
    if !on_shared_engines("with_redis_down_rate_limits_are_counted_on_each_node") {
        return;
    }
    let _one_at_a_time = ENGINES.lock().await;
    let server = Server::start(&["--rate-messages", "2/1m"]);
    let (ada, _bob, conversation) = server.api().pair().await;
    let mut ada_ws = Ws::connect(&server, &ada).await;

    let outage = Outage::begin("redis");
    for id in ["first", "second"] {
        let sent = ada_ws.send_message(&conversation, id, id).await;
        assert_eq!(sent["op"], "ack", "{sent}");
    }
    let third = ada_ws.send_message(&conversation, "third", "third").await;
    assert_eq!(third["error"]["code"], "rate_limited", "{third}");
    drop(outage);
}

/// Opens a socket for `token` and reads it until it closes: the close code and the frames.
async fn turned_away(server: &Server, token: &str) -> (Option<u16>, Vec<Value>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let url = format!("{}/v1/ws?token={token}", server.url.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
    let mut frames = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout(OUTAGE_WAIT, socket.next()).await {
        match message {
            Message::Text(text) => frames.push(serde_json::from_str(&text).expect("JSON frame")),
            Message::Close(frame) => return (frame.map(|f| u16::from(f.code)), frames),
            _ => {}
        }
    }
    (None, frames)
}

/// Polls `/readyz` until `check` holds, for as long as an engine may take to fail a request.
async fn ready_when(server: &Server, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + OUTAGE_WAIT;
    loop {
        let (_, ready) = server.api().call(reqwest::Method::GET, "/readyz", None, None).await;
        if check(&ready) {
            return ready;
        }
        assert!(tokio::time::Instant::now() < deadline, "readiness never said so: {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn with_cassandra_down_queries_fail_clearly_and_the_projector_catches_up_after() {
    if !on_shared_engines(
        "with_cassandra_down_queries_fail_clearly_and_the_projector_catches_up_after",
    ) {
        return;
    }
    let _one_at_a_time = ENGINES.lock().await;
    let server = Server::start(&["--rate-messages", "off"]);
    let (ada, bob, conversation) = server.api().pair().await;
    let api = server.api();
    let mut ws = Ws::connect(&server, &ada).await;

    // Stop the store while the projector still has acknowledged messages to apply.
    const SENT: usize = 300;
    for i in 0..SENT {
        ws.send_json(send_frame(&conversation, &format!("c{i}"))).await;
    }
    let mut acked = HashSet::new();
    let mut outage = None;
    while acked.len() < SENT {
        let reply = ws.next_within(OUTAGE_WAIT, |f| f["op"] == "ack" || f["op"] == "error").await;
        if reply["op"] == "ack" {
            acked.insert(reply["message_id"].as_str().unwrap().to_owned());
        }
        if acked.len() == SENT / 3 && outage.is_none() {
            outage = Some(Outage::begin("cassandra"));
        }
        if reply["op"] == "error" {
            // Sends check membership in the store: refused, clearly, while it is down.
            assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
            break;
        }
    }
    let (status, body) = api.get(&format!("/v1/conversations/{conversation}/messages"), &bob).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    drop(outage);

    // The driver reconnects in the background: a client retries what was refused as unavailable.
    let final_ack = acked_after_retries(&mut ws, send_frame(&conversation, "after")).await;
    acked.insert(final_ack["message_id"].as_str().unwrap().to_owned());
    let history = api.history(&bob, &conversation, final_ack["token"].as_str()).await;
    let stored: HashSet<String> =
        history.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(stored.len(), history.len(), "nothing projected twice");
    assert!(acked.is_subset(&stored), "every acknowledged message was projected after the outage");
}

#[tokio::test]
async fn a_store_outage_holds_up_presence_only_and_every_event_is_pushed_once_in_order() {
    if !on_shared_engines(
        "a_store_outage_holds_up_presence_only_and_every_event_is_pushed_once_in_order",
    ) {
        return;
    }
    let _one_at_a_time = ENGINES.lock().await;
    let server = Server::start(&["--rate-messages", "off"]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let carol = api.register("carol").await;
    api.group(&carol, "holdup", &[&ada, &bob]).await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    bob_ws.drain(Duration::from_millis(300)).await;

    let outage = Outage::begin("cassandra");
    // carol coming online is news to her contacts, whom delivery reads from the store: it cannot
    // route that now. Messages, in a lane of their own, do not wait for it.
    let _carol_ws = Ws::connect(&server, &carol).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let reply = ada_ws.request(send_frame(&conversation, &format!("held{i}"))).await;
        if reply["op"] == "ack" {
            acked.push(reply["message_id"].clone());
        }
    }
    let held = ready_when(&server, |ready| {
        ready["delivery"]["delivery-presence"]
            .as_str()
            .is_some_and(|lane| lane.starts_with("failed, retrying: store"))
    })
    .await;
    assert_eq!(held["delivery"]["delivery"], "ok", "messages are not held up: {held}");
    let mut pushed = Vec::new();
    for id in &acked {
        let frame = bob_ws.next_within(OUTAGE_WAIT, |f| f["type"] == "message.sent").await;
        assert_eq!(&frame["data"]["message_id"], id, "pushed during the outage, in order");
        pushed.push(frame["data"]["message_id"].clone());
    }
    drop(outage);

    // Sends refused while the store was down are retried, as clients do.
    for i in acked.len()..5 {
        let frame = send_frame(&conversation, &format!("held{i}"));
        acked.push(acked_after_retries(&mut ada_ws, frame).await["message_id"].clone());
    }
    let carol_online = bob_ws
        .next_within(OUTAGE_WAIT, |f| {
            f["type"] == "presence.changed" && f["data"]["user_id"] == carol.id.as_str()
        })
        .await;
    assert_eq!(carol_online["data"]["online"], true);
    let frames = bob_ws.drain(Duration::from_secs(2)).await;
    assert!(frames.iter().all(|f| f["op"] != "closed"), "bob's socket was closed: {frames:?}");
    pushed.extend(
        frames
            .iter()
            .filter(|f| f["type"] == "message.sent")
            .map(|f| f["data"]["message_id"].clone()),
    );
    assert_eq!(pushed, acked, "every acknowledged message pushed once, in order");
}

/// A rebuild started while Cassandra is down waits for it, says so, and once it is back rebuilds
/// the same read models as the live ones.
#[tokio::test]
async fn a_rebuild_waits_out_a_store_outage() {
    if !on_shared_engines("a_rebuild_waits_out_a_store_outage") {
        return;
    }
    let _one_at_a_time = ENGINES.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &["--rate-messages", "off"]);
    let (ada, _bob, conversation) = server.api().pair().await;
    let mut ws = Ws::connect(&server, &ada).await;
    for i in 0..20 {
        ws.send_message(&conversation, &format!("r{i}"), &format!("body {i}")).await;
    }
    ws.close().await;
    assert!(server.terminate(), "{}", server.log());

    let (log, store) = common::backend_urls(dir.path());
    let rebuilt = common::rebuilt_store_url(dir.path());
    let outage = Outage::begin("cassandra");
    let rebuild = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["rebuild", "--log", &log, "--into", &rebuilt])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("switchboard rebuild");
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(outage);
    let output = tokio::task::spawn_blocking(move || rebuild.wait_with_output()).await.unwrap();
    let output = output.expect("the rebuild's output");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rebuild failed: {said}");
    assert!(said.contains("trying again in"), "the wait is logged: {said}");
    assert_eq!(common::dump(&store), common::dump(&rebuilt));
}
