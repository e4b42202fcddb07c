//! Chatting end to end over real sockets: delivery, multi-device, paging, unread counts, read
//! receipts, retried sends and resuming after a disconnect.

mod common;

use std::time::Duration;

use common::{Server, Ws};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn two_users_chat_over_two_sockets() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;

    let ack = ada_ws.send_message(&conversation, "m1", "hello bob").await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(ack["duplicate"], false);
    let message_id = ack["message_id"].as_str().unwrap();

    let received = bob_ws.next_event("message.sent").await;
    assert_eq!(received["data"]["message_id"], message_id);
    assert_eq!(received["data"]["body"], "hello bob");
    assert_eq!(received["data"]["sender"], ada.id.as_str());
    assert_eq!(received["data"]["conversation_id"], conversation.as_str());
    // The sender's own socket sees it too: every socket of every member does.
    let echo = ada_ws.next_event("message.sent").await;
    assert_eq!(echo["data"]["message_id"], message_id);

    let reply = bob_ws.send_message(&conversation, "r1", "hi ada").await;
    let got = ada_ws.next_event("message.sent").await;
    assert_eq!(got["data"]["message_id"], reply["message_id"]);
    assert_eq!(got["data"]["body"], "hi ada");

    // The direct conversation is found again rather than created twice.
    assert_eq!(api.direct(&bob, &ada).await, conversation);
}

#[tokio::test]
async fn a_group_of_five_gets_each_message_once_per_device() {
    let server = Server::start(&[]);
    let api = server.api();
    let mut users = Vec::new();
    for i in 0..5 {
        users.push(api.register(&format!("g{i}")).await);
    }
    let others: Vec<_> = users[1..].iter().collect();
    let group = api.group(&users[0], "five", &others).await;

    // users[1] is on two devices; everyone else on one.
    let mut sockets = Vec::new();
    for (i, user) in users.iter().enumerate() {
        sockets.push((i, Ws::connect(&server, user).await));
        if i == 1 {
            sockets.push((i, Ws::connect(&server, user).await));
        }
    }
    let mut sent = Vec::new();
    for (round, sender) in [0usize, 2, 4, 1].into_iter().enumerate() {
        let socket = sockets.iter_mut().find(|(i, _)| *i == sender).map(|(_, s)| s).unwrap();
        let ack =
            socket.send_message(&group, &format!("c{round}"), &format!("round {round}")).await;
        assert_eq!(ack["op"], "ack", "{ack}");
        sent.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    for (user, socket) in &mut sockets {
        for id in &sent {
            socket
                .next_where(|f| f["type"] == "message.sent" && f["data"]["message_id"] == json!(id))
                .await;
        }
        let extra = socket.drain_events("message.sent", Duration::from_millis(300)).await;
        assert!(extra.is_empty(), "user {user} got messages twice: {extra:?}");
    }
}

#[tokio::test]
async fn history_pages_have_no_gaps_or_repeats_at_the_boundaries() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ids = Vec::new();
    let mut last_token = String::new();
    for i in 0..25 {
        let body = json!({ "client_msg_id": format!("p{i}"), "body": format!("message {i}") });
        let (status, sent) =
            api.post(&format!("/v1/conversations/{conversation}/messages"), &ada, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
        ids.push(sent["message_id"].as_str().unwrap().to_owned());
        last_token = sent["token"].as_str().unwrap().to_owned();
    }
    let mut pages = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path =
            format!("/v1/conversations/{conversation}/messages?limit=10&after={last_token}");
        if let Some(before) = &before {
            path += &format!("&before={before}");
        }
        let (status, page) = api.get(&path, &bob).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page_ids: Vec<String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        pages.push(page_ids.len());
        ids.retain(|id| !page_ids.contains(id));
        // Newest first within the page, and strictly older than the previous page.
        let numbers: Vec<u64> = page_ids.iter().map(|id| id.parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[0] > w[1]), "{numbers:?}");
        if let Some(before) = &before {
            assert!(numbers[0] < before.parse::<u64>().unwrap());
        }
        match page["next_before"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, vec![10, 10, 5]);
    assert!(ids.is_empty(), "messages never paged: {ids:?}");
}

#[tokio::test]
async fn unread_counts_and_read_receipts_are_right_and_pushed() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut acks = Vec::new();
    for i in 0..3 {
        acks.push(
            ada_ws.send_message(&conversation, &format!("u{i}"), &format!("unread {i}")).await,
        );
    }
    let token = acks[2]["token"].as_str().unwrap();
    let unread = |inbox: &Value| {
        inbox["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["conversation"]["id"] == json!(conversation))
            .unwrap()["unread"]
            .clone()
    };
    let (_, inbox) = api.get(&format!("/v1/conversations?after={token}"), &bob).await;
    assert_eq!(unread(&inbox), 3);
    let (_, inbox) = api.get(&format!("/v1/conversations?after={token}"), &ada).await;
    assert_eq!(unread(&inbox), 0, "one's own messages are not unread");
    assert_eq!(inbox["conversations"][0]["conversation"]["last_message"]["body"], "unread 2");

    let mut bob_ws = Ws::connect(&server, &bob).await;
    let second = acks[1]["message_id"].as_str().unwrap();
    let read = bob_ws
        .request(json!({ "op": "read", "conversation_id": conversation, "message_id": second }))
        .await;
    assert_eq!(read["op"], "ack", "{read}");
    let receipt = ada_ws.next_event("message.read").await;
    assert_eq!(receipt["data"]["user_id"], bob.id.as_str());
    assert_eq!(receipt["data"]["message_id"], second);

    let after = read["token"].as_str().unwrap();
    let (_, inbox) = api.get(&format!("/v1/conversations?after={after}"), &bob).await;
    assert_eq!(unread(&inbox), 1);
    let (_, markers) =
        api.get(&format!("/v1/conversations/{conversation}/read?after={after}"), &ada).await;
    let bobs = markers["markers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == json!(bob.id))
        .cloned();
    assert_eq!(bobs.unwrap()["message_id"], second);

    // Reading an older message does not move the marker back.
    let first = acks[0]["message_id"].as_str().unwrap();
    let older = bob_ws
        .request(json!({ "op": "read", "conversation_id": conversation, "message_id": first }))
        .await;
    let (_, inbox) = api
        .get(&format!("/v1/conversations?after={}", older["token"].as_str().unwrap()), &bob)
        .await;
    assert_eq!(unread(&inbox), 1);
}

#[tokio::test]
async fn a_retried_send_returns_the_same_message_and_stores_one() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ws = Ws::connect(&server, &ada).await;
    let first = ws.send_message(&conversation, "same-id", "only once").await;
    let retry = ws.send_message(&conversation, "same-id", "only once").await;
    assert_eq!(first["message_id"], retry["message_id"]);
    assert_eq!(retry["duplicate"], true);
    // A retry over HTTP, as a client falling back from a dropped socket would, agrees.
    let body = json!({ "client_msg_id": "same-id", "body": "only once" });
    let (status, http_retry) =
        api.post(&format!("/v1/conversations/{conversation}/messages"), &ada, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(http_retry["message_id"], first["message_id"]);

    let history = api.history(&bob, &conversation, first["token"].as_str()).await;
    assert_eq!(history.len(), 1, "{history:?}");

    // Once the read models hold the message, its claim is let go; a retry then is answered
    // from the read models, still with the first message.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = ws.send_message(&conversation, "same-id", "only once").await;
    assert_eq!((&late["message_id"], &late["duplicate"]), (&first["message_id"], &json!(true)));
    let history = api.history(&bob, &conversation, late["token"].as_str()).await;
    assert_eq!(history.len(), 1, "{history:?}");
}

#[tokio::test]
async fn sends_made_without_waiting_for_their_acks_are_answered_and_kept_in_order() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;

    // Twenty sends in one go, a retry of the fifth among them while it may still be in flight,
    // another op, and a ping: every reply comes, in the order of the frames.
    let send = |i: usize| {
        json!({ "op": "send", "ref": format!("s{i}"), "conversation_id": conversation,
                "client_msg_id": format!("p{i}"), "body": format!("burst {i}") })
    };
    let mut frames: Vec<Value> = (0..20).map(send).collect();
    let mut retry = send(4);
    retry["ref"] = json!("retry");
    frames.insert(7, retry);
    frames.push(json!({ "op": "typing", "ref": "typing", "conversation_id": conversation }));
    frames.push(json!({ "op": "ping", "ref": "ping" }));
    for frame in &frames {
        ada_ws.send_json(frame.clone()).await;
    }
    let mut replies = Vec::new();
    while replies.len() < frames.len() {
        replies.push(ada_ws.next_where(|f| !f["ref"].is_null()).await);
    }
    let order: Vec<&Value> = replies.iter().map(|reply| &reply["ref"]).collect();
    let sent: Vec<&Value> = frames.iter().map(|frame| &frame["ref"]).collect();
    assert_eq!(order, sent);
    assert!(replies[..replies.len() - 1].iter().all(|r| r["op"] == "ack"), "{replies:?}");
    assert_eq!(replies.last().unwrap()["op"], "pong");
    let by_ref = |reference: &str| replies.iter().find(|r| r["ref"] == reference).unwrap();
    assert_eq!(by_ref("retry")["message_id"], by_ref("s4")["message_id"]);
    assert_eq!(by_ref("retry")["duplicate"], true);

    // Logged in the order sent: pushed so, and kept so.
    let bodies: Vec<String> = (0..20).map(|i| format!("burst {i}")).collect();
    let mut pushed = Vec::new();
    while pushed.len() < bodies.len() {
        let event = bob_ws.next_event("message.sent").await;
        pushed.push(event["data"]["body"].as_str().unwrap().to_owned());
    }
    assert_eq!(pushed, bodies);
    let last = by_ref("s19")["token"].as_str().unwrap();
    let mut history: Vec<String> = api
        .history(&bob, &conversation, Some(last))
        .await
        .iter()
        .map(|message| message["body"].as_str().unwrap().to_owned())
        .collect();
    history.reverse();
    assert_eq!(history, bodies);
}

#[tokio::test]
async fn a_message_deleted_on_one_device_cannot_be_edited_from_another_right_after() {
    // Forty edits and deletes in a row: more than the default rate allows.
    let server = Server::start(&["--rate-edits", "off"]);
    let (ada, _bob, conversation) = server.api().pair().await;
    let mut phone = Ws::connect(&server, &ada).await;
    let mut laptop = Ws::connect(&server, &ada).await;
    for i in 0..20 {
        let sent = phone.send_message(&conversation, &format!("gone-{i}"), "oops").await;
        let id = &sent["message_id"];
        let delete = json!({ "op": "delete", "conversation_id": conversation, "message_id": id });
        assert_eq!(phone.request(delete).await["op"], "ack");
        let edit = json!({ "op": "edit", "conversation_id": conversation, "message_id": id, "body": "back" });
        let refused = laptop.request(edit).await;
        assert_eq!(refused["error"]["code"], "not_found", "edit {i} after its delete: {refused}");
    }
}

#[tokio::test]
async fn resume_delivers_exactly_what_was_missed_in_order() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    assert_eq!(bob_ws.ready.get("resumed"), None, "a fresh connection resumes nothing");

    let seen = ada_ws.send_message(&conversation, "before", "seen live").await;
    let live = bob_ws
        .next_where(|f| {
            f["type"] == "message.sent" && f["data"]["message_id"] == seen["message_id"]
        })
        .await;
    let token = live["token"].as_str().unwrap().to_owned();
    bob_ws.close().await;

    let mut missed = Vec::new();
    for i in 0..5 {
        missed.push(ada_ws.send_message(&conversation, &format!("gap{i}"), &format!("missed {i}")).await["message_id"].clone());
    }
    let mut bob_ws = Ws::resume(&server, &bob, &token).await;
    assert_eq!(bob_ws.ready["resumed"], true);
    let after = ada_ws.send_message(&conversation, "after", "live again").await;

    let frames = bob_ws.drain_events("message.sent", Duration::from_millis(500)).await;
    let ids: Vec<Value> = frames.iter().map(|f| f["data"]["message_id"].clone()).collect();
    let mut expected = missed.clone();
    expected.push(after["message_id"].clone());
    assert_eq!(ids, expected, "exactly the missed messages, in order, then live ones");

    // Resuming from the newest token replays nothing already seen.
    let newest = frames.last().unwrap()["token"].as_str().unwrap().to_owned();
    let mut again = Ws::resume(&server, &bob, &newest).await;
    let replayed = again.drain_events("message.sent", Duration::from_millis(300)).await;
    assert!(replayed.is_empty(), "{replayed:?}");
}

#[tokio::test]
async fn a_resume_past_the_feeds_window_says_sync_is_required_and_the_socket_goes_on_live() {
    let server = Server::start(&["--resume-window", "1s", "--resume-min-events", "3"]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let first = Ws::connect(&server, &bob).await;
    let stale = first.ready["token"].as_str().unwrap().to_owned();
    first.close().await;
    let mut laptop = Ws::connect(&server, &bob).await;
    for i in 0..5 {
        ada_ws.send_message(&conversation, &format!("far{i}"), "while away").await;
    }
    // Older than the window now, and more than the newest three: the next append lets them go.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = ada_ws.send_message(&conversation, "far5", "while away").await;
    laptop.next_where(|f| f["data"]["message_id"] == last["message_id"]).await;

    let mut bob_ws = Ws::resume(&server, &bob, &stale).await;
    assert_eq!(bob_ws.ready["resumed"], false, "the connection itself says it did not resume");
    assert_eq!(bob_ws.ready["sync_required"], true, "{}", bob_ws.ready);
    let refused = bob_ws.next_where(|f| f["op"] == "error").await;
    assert_eq!(refused["error"]["code"], "sync_required", "{refused}");
    assert_eq!(refused["ref"], Value::Null);
    // The ready token is where the live stream starts, not the stale token passed.
    assert_ne!(bob_ws.ready["token"], json!(stale));
    let live = ada_ws.send_message(&conversation, "now", "live again").await;
    bob_ws
        .next_where(|f| {
            f["type"] == "message.sent" && f["data"]["message_id"] == live["message_id"]
        })
        .await;
    bob_ws.assert_usable().await;
}

#[tokio::test]
async fn typing_reaches_the_other_members_only() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    let ack = ada_ws.request(json!({ "op": "typing", "conversation_id": conversation })).await;
    assert_eq!(ack["op"], "ack", "{ack}");
    let typing = bob_ws.next_event("typing").await;
    assert_eq!(typing["data"]["user_id"], ada.id.as_str());
    assert_eq!(typing["data"]["active"], true);
    let own = ada_ws.drain_events("typing", Duration::from_millis(300)).await;
    assert!(own.is_empty(), "the typist is not told about their own typing: {own:?}");
}

#[tokio::test]
async fn presence_changes_are_pushed_and_queried() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob) = (api.register("ada").await, api.register("bob").await);
    api.direct(&ada, &bob).await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let bob_ws = Ws::connect(&server, &bob).await;
    let online = ada_ws
        .next_where(|f| f["type"] == "presence.changed" && f["data"]["user_id"] == json!(bob.id))
        .await;
    assert_eq!(online["data"]["online"], true);
    let (_, report) = api.get(&format!("/v1/presence?users={}", bob.id), &ada).await;
    assert_eq!(report["presence"][0]["online"], true, "{report}");

    bob_ws.close().await;
    let offline = ada_ws
        .next_where(|f| f["type"] == "presence.changed" && f["data"]["user_id"] == json!(bob.id))
        .await;
    assert_eq!(offline["data"]["online"], false);
    assert!(offline["data"]["last_seen"].is_i64());

    // Strangers' presence is not visible.
    let stranger = api.register("eve").await;
    let (_, report) = api.get(&format!("/v1/presence?users={}", stranger.id), &ada).await;
    assert_eq!(report["presence"], json!([]));
}
