//! Acknowledged events survive `kill -9`; a graceful stop closes sockets properly and loses
//! nothing; the read models rebuilt from the log equal the live ones.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use common::{Server, Ws};
use serde_json::{Value, json};

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &["--rate-messages", "off"]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ws = Ws::connect(&server, &ada).await;

    // Pipeline many sends, then kill the server while acks are still coming in.
    const SENT: usize = 400;
    for i in 0..SENT {
        let frame = json!({ "op": "send", "ref": i, "conversation_id": conversation, "client_msg_id": format!("k{i}"), "body": format!("durable {i}") });
        ws.send_json(frame).await;
    }
    let mut acked: HashMap<String, String> = HashMap::new();
    while acked.len() < SENT / 4 {
        let ack = ws.next_where(|f| f["op"] == "ack").await;
        acked.insert(format!("k{}", ack["ref"]), ack["message_id"].as_str().unwrap().to_owned());
    }
    server.kill();
    // Acks that were already on the wire when the process died count too.
    for frame in ws.drain(Duration::from_millis(200)).await {
        if frame["op"] == "ack" {
            acked.insert(
                format!("k{}", frame["ref"]),
                frame["message_id"].as_str().unwrap().to_owned(),
            );
        }
    }

    let server = Server::start_in(dir.path(), &["--rate-messages", "off"]);
    let api = server.api();
    let history = api.history(&bob, &conversation, None).await;
    let stored: Vec<&str> = history.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "a message was stored twice");
    for (client_msg_id, id) in &acked {
        assert!(unique.contains(id.as_str()), "acknowledged {client_msg_id} ({id}) was lost");
    }
    assert!(stored.len() <= SENT);

    // Retrying every send after the restart stores nothing twice and answers acknowledged ones
    // with their original ids. The retry of a send that was in flight at the kill waits, by
    // design, until that send's claim has gone unrenewed for a while, then for the read models:
    // the bound is no speed target, only there to catch a hang.
    let mut ws = Ws::connect(&server, &ada).await;
    for i in 0..SENT {
        let client_msg_id = format!("k{i}");
        let send = json!({ "op": "send", "conversation_id": conversation, "client_msg_id": client_msg_id, "body": format!("durable {i}") });
        let ack = ws.request_within(Duration::from_secs(120), send).await;
        assert_eq!(ack["op"], "ack", "{ack}");
        if let Some(id) = acked.get(&client_msg_id) {
            assert_eq!(ack["message_id"], json!(id), "{client_msg_id}");
            assert_eq!(ack["duplicate"], true);
        }
    }
    let last = ws.send_message(&conversation, "final", "the end").await;
    let history = api.history(&bob, &conversation, last["token"].as_str()).await;
    assert_eq!(history.len(), SENT + 1, "every send stored once");
}

#[tokio::test]
async fn a_graceful_stop_closes_sockets_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ws = Ws::connect(&server, &ada).await;
    let ack = ws.send_message(&conversation, "last-words", "goodnight").await;
    assert_eq!(ack["op"], "ack");

    assert!(server.terminate(), "switchboard exits cleanly on SIGTERM:\n{}", server.log());
    let closed = ws.next_where(|f| f["op"] == "closed").await;
    assert_eq!(closed["code"], 1001, "sockets get a going-away close frame");

    let server = Server::start_in(dir.path(), &[]);
    let history = server.api().history(&bob, &conversation, None).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["id"], ack["message_id"]);
}

#[tokio::test]
async fn read_models_rebuilt_from_the_log_equal_the_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &["--rate-messages", "off"]);
    let api = server.api();
    let users = [api.register("r0").await, api.register("r1").await, api.register("r2").await];
    let group = api.group(&users[0], "rebuild", &[&users[1], &users[2]]).await;
    let direct = api.direct(&users[1], &users[2]).await;
    let mut ws = Ws::connect(&server, &users[1]).await;
    let mut acks: Vec<Value> = Vec::new();
    for i in 0..40 {
        let conversation = if i % 3 == 0 { &direct } else { &group };
        acks.push(ws.send_message(conversation, &format!("b{i}"), &format!("body {i}")).await);
    }
    let edit = json!({ "op": "edit", "conversation_id": group, "message_id": acks[1]["message_id"], "body": "edited" });
    assert_eq!(ws.request(edit).await["op"], "ack");
    let delete =
        json!({ "op": "delete", "conversation_id": group, "message_id": acks[2]["message_id"] });
    assert_eq!(ws.request(delete).await["op"], "ack");
    let read =
        json!({ "op": "read", "conversation_id": group, "message_id": acks[10]["message_id"] });
    assert_eq!(ws.request(read).await["op"], "ack");
    let share = |conversation: &str, latitude: f64| {
        json!({ "op": "location.share", "conversation_id": conversation, "latitude": latitude,
                "longitude": 13.405, "duration_s": 3600 })
    };
    assert_eq!(ws.request(share(&group, 52.52)).await["op"], "ack");
    let stop = json!({ "op": "location.stop", "conversation_id": direct });
    assert_eq!(ws.request(stop).await["op"], "ack");
    assert_eq!(ws.request(share(&direct, 48.14)).await["op"], "ack");
    let (status, uploaded) =
        api.upload(&users[1], &group, Some("image/png"), "?name=cat.png", vec![7; 1000]).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{uploaded}");
    let attached = json!({ "op": "send", "conversation_id": group, "client_msg_id": "file", "body": "a file", "attachments": [uploaded["media"]["id"]] });
    assert_eq!(ws.request(attached).await["op"], "ack");
    ws.close().await;
    assert!(server.terminate(), "{}", server.log());

    let (log, store) = common::backend_urls(dir.path());
    let rebuilt = common::rebuilt_store_url(dir.path());
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["rebuild", "--log", &log, "--into", &rebuilt])
        .output()
        .unwrap();
    assert!(output.status.success(), "rebuild failed: {}", String::from_utf8_lossy(&output.stderr));
    let live = common::dump(&store);
    assert!(
        live.contains("edited")
            && live.contains("52.52")
            && live.contains("cat.png")
            && live.lines().count() > 40,
        "the live dump holds the data:\n{live}"
    );
    assert_eq!(live, common::dump(&rebuilt));
}
