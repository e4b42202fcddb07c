//! `sync`: from a token the user's feed still covers, exactly what changed since, over HTTP and
//! as a WebSocket op alike; from an older token, or none, the whole state, marked `full`.

mod common;

use std::time::Duration;

use common::{Server, User, Ws};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn sync_http(server: &Server, user: &User, since: Option<&str>) -> Value {
    let query = since.map_or(String::new(), |token| format!("?since={token}"));
    let (status, delta) = server.api().get(&format!("/v1/sync{query}"), user).await;
    assert_eq!(status, StatusCode::OK, "{delta}");
    delta
}

fn ids(values: &Value, field: &str) -> Vec<String> {
    values
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v[field].as_str().unwrap().to_owned())
        .collect()
}

fn conversation<'a>(delta: &'a Value, id: &str) -> Option<&'a Value> {
    delta["conversations"].as_array().unwrap().iter().find(|c| c["conversation"]["id"] == id)
}

#[tokio::test]
async fn sync_from_a_token_the_feed_covers_returns_exactly_what_changed_since() {
    let server = Server::start(&["--rate-messages", "off", "--rate-strict", "off"]);
    let api = server.api();
    let (ada, bob, quiet) = api.pair().await;
    let carol = api.register("carol").await;
    let group = api.group(&ada, "tea", &[&bob]).await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let old = ada_ws.send_message(&group, "old", "before the token").await;

    // bob's last token: everything up to here he has.
    let mut bob_ws = Ws::connect(&server, &bob).await;
    let frames = bob_ws.drain(Duration::from_millis(300)).await;
    let since = frames
        .iter()
        .rev()
        .find_map(|f| f["token"].as_str())
        .or(bob_ws.ready["token"].as_str())
        .unwrap()
        .to_owned();
    bob_ws.close().await;
    // bob's laptop stays: when it has the last change, delivery has put every change in his feed.
    let mut laptop = Ws::connect(&server, &bob).await;

    let first = ada_ws.send_message(&group, "new1", "after the token").await;
    let second = ada_ws.send_message(&group, "new2", "and another").await;
    let edit = json!({ "op": "edit", "conversation_id": group, "message_id": old["message_id"], "body": "edited" });
    assert_eq!(ada_ws.request(edit).await["op"], "ack");
    let (status, added) = api
        .post(&format!("/v1/conversations/{group}/members"), &ada, json!({ "user_id": carol.id }))
        .await;
    assert!(status.is_success(), "{added}");
    let read =
        json!({ "op": "read", "conversation_id": group, "message_id": second["message_id"] });
    assert_eq!(ada_ws.request(read).await["op"], "ack");
    laptop.next_where(|f| f["type"] == "message.read").await;

    let delta = sync_http(&server, &bob, Some(&since)).await;
    assert_eq!(delta["full"], false, "{delta}");
    assert_eq!(delta["left"], json!([]));
    assert!(conversation(&delta, &quiet).is_none(), "nothing changed there: {delta}");
    let changed = conversation(&delta, &group).expect("the group changed");
    let messages = &changed["messages"];
    assert_eq!(
        ids(messages, "id"),
        [&second["message_id"], &first["message_id"], &old["message_id"]]
            .map(|v| v.as_str().unwrap().to_owned()),
        "new and edited, newest first"
    );
    assert_eq!(messages[2]["body"], "edited", "as it stands now");
    assert_eq!(changed["more"], false);
    assert!(changed["conversation"]["members"].as_array().unwrap().contains(&json!(carol.id)));
    assert!(ids(&changed["read_markers"], "user_id").contains(&ada.id));
    assert_eq!(changed["unread"], 3, "{changed}");

    // The fresh token continues: nothing changed since, and a socket resumes from it.
    let token = delta["token"].as_str().unwrap().to_owned();
    let again = sync_http(&server, &bob, Some(&token)).await;
    assert_eq!(again["conversations"], json!([]), "{again}");
    let mut resumed = Ws::resume(&server, &bob, &token).await;
    assert_eq!(resumed.ready["resumed"], true);
    let replayed = resumed.drain_events("message.sent", Duration::from_millis(300)).await;
    assert!(replayed.is_empty(), "{replayed:?}");

    // The same over the socket, as an op.
    let reply = resumed.request(json!({ "op": "sync", "since": since, "limit": 1 })).await;
    assert_eq!(reply["op"], "ack", "{reply}");
    let group_delta = conversation(&reply, &group).expect("the group changed");
    assert_eq!(ids(&group_delta["messages"], "id"), [second["message_id"].as_str().unwrap()]);
    assert_eq!(group_delta["more"], true, "older changed messages are paged");
}

#[tokio::test]
async fn a_member_removed_since_the_token_is_told_they_left() {
    let server = Server::start(&["--rate-strict", "off"]);
    let api = server.api();
    let (ada, bob, _) = api.pair().await;
    let group = api.group(&ada, "club", &[&bob]).await;
    let since = sync_http(&server, &bob, None).await["token"].as_str().unwrap().to_owned();
    let mut phone = Ws::connect(&server, &bob).await;
    let (status, body) = api
        .call(
            Method::DELETE,
            &format!("/v1/conversations/{group}/members/{}", bob.id),
            Some(&ada.token),
            None,
        )
        .await;
    assert!(status.is_success(), "{body}");
    phone.next_where(|f| f["type"] == "conversation.member_removed").await;

    let delta = sync_http(&server, &bob, Some(&since)).await;
    assert_eq!(delta["left"], json!([group]), "{delta}");
    assert!(conversation(&delta, &group).is_none());
}

#[tokio::test]
async fn sync_past_the_feed_window_or_without_a_token_returns_the_whole_state() {
    let server = Server::start(&[
        "--rate-messages",
        "off",
        "--resume-window",
        "1s",
        "--resume-min-events",
        "2",
    ]);
    let api = server.api();
    let (ada, bob, direct) = api.pair().await;
    let since = sync_http(&server, &bob, None).await["token"].as_str().unwrap().to_owned();
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut sent = Vec::new();
    for i in 0..4 {
        sent.push(
            ada_ws.send_message(&direct, &format!("m{i}"), "hello").await["message_id"].clone(),
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = ada_ws.send_message(&direct, "m4", "hello").await;
    sent.push(last["message_id"].clone());

    // The feed has let the entries after the token go: the whole state, to replace.
    let delta = sync_http(&server, &bob, Some(&since)).await;
    assert_eq!(delta["full"], true, "{delta}");
    let direct_delta = conversation(&delta, &direct).expect("every conversation");
    let newest: Vec<Value> = sent.iter().rev().cloned().collect();
    let got: Vec<Value> =
        direct_delta["messages"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
    assert_eq!(got, newest);
    assert_eq!(direct_delta["unread"], 5);

    let fresh = sync_http(&server, &bob, None).await;
    assert_eq!(fresh["full"], true);
    assert_eq!(fresh["conversations"], delta["conversations"]);

    let (status, refused) = server.api().get("/v1/sync?since=garbage", &bob).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, refused) = server.api().get("/v1/sync?limit=0", &bob).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
}
