//! The life of a deployment: a node restarted, or a new node joining a cluster, after every kind
//! of event has been logged still delivers at once. Whatever the log holds before a node starts,
//! its fan-out must go live and push a fresh message within the usual wait, and `/readyz` must
//! say so.

mod common;

use common::{Server, User, Ws, new_cluster_id, on_shared_engines, unique_handle};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// One kind of history a node may find in the log when it starts.
#[derive(Clone, Copy, Debug)]
enum History {
    /// A call answered, with WebRTC signals relayed both ways; still going.
    Signals,
    /// A call declined, and one answered and hung up.
    Calls,
    /// A group call room started, joined, left and emptied.
    Rooms,
    /// A live location shared, moved and stopped.
    Locations,
    /// A file uploaded and sent.
    Media,
    /// Typing notices.
    Typing,
    /// Messages sent, edited, deleted and read; a group renamed, a member added and removed.
    Chat,
}

/// Every kind, the call still going with its signals last: its callers are busy from then on.
const EVERY_KIND: [History; 7] = [
    History::Calls,
    History::Rooms,
    History::Locations,
    History::Media,
    History::Typing,
    History::Chat,
    History::Signals,
];

/// How a node goes down before it starts again.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Terminate,
}

/// Three users: ada and bob in a direct conversation, the three of them in a group.
struct People {
    ada: User,
    bob: User,
    cat: User,
    direct: String,
    group: String,
}

async fn people(server: &Server) -> People {
    let api = server.api();
    let (ada, bob, direct) = api.pair().await;
    let cat = api.register("cat").await;
    let group = api.group(&ada, "restarts", &[&bob, &cat]).await;
    People { ada, bob, cat, direct, group }
}

/// Sends `op` and insists it is acknowledged.
async fn acked(ws: &mut Ws, op: Value) -> Value {
    let reply = ws.request(op.clone()).await;
    assert_eq!(reply["op"], "ack", "{op} was refused: {reply}");
    reply
}

/// Logs events of one kind through `server`, the way clients cause them.
async fn log_history(server: &Server, people: &People, history: History) {
    let mut ada = Ws::connect(server, &people.ada).await;
    let mut bob = Ws::connect(server, &people.bob).await;
    let (direct, group) = (people.direct.as_str(), people.group.as_str());
    match history {
        History::Signals => {
            let invite = json!({ "op": "call.invite", "callee": people.bob.id, "media": "video" });
            let call = acked(&mut ada, invite).await["call_id"].clone();
            bob.next_event("call.invited").await;
            acked(&mut bob, json!({ "op": "call.accept", "call_id": call })).await;
            for (from, to, kind) in
                [(&mut ada, &people.bob, "offer"), (&mut bob, &people.ada, "answer")]
            {
                let signal = json!({ "op": "call.signal", "call_id": call, "to_user": to.id, "kind": kind, "payload": "v=0" });
                acked(from, signal).await;
            }
            let relayed = bob.next_event("signal").await;
            assert_eq!(relayed["data"]["kind"], "offer", "{relayed}");
        }
        History::Calls => {
            let invite = json!({ "op": "call.invite", "callee": people.bob.id, "media": "audio" });
            let declined = acked(&mut ada, invite.clone()).await["call_id"].clone();
            bob.next_event("call.invited").await;
            acked(&mut bob, json!({ "op": "call.decline", "call_id": declined })).await;
            let answered = acked(&mut ada, invite).await["call_id"].clone();
            bob.next_where(|f| f["type"] == "call.invited" && f["data"]["call_id"] == answered)
                .await;
            acked(&mut bob, json!({ "op": "call.accept", "call_id": answered })).await;
            acked(&mut ada, json!({ "op": "call.end", "call_id": answered })).await;
        }
        History::Rooms => {
            let start = json!({ "op": "room.start", "conversation_id": group, "media": "audio" });
            let room = acked(&mut ada, start).await["call_id"].clone();
            acked(&mut bob, json!({ "op": "room.join", "call_id": room })).await;
            acked(&mut bob, json!({ "op": "room.leave", "call_id": room })).await;
            acked(&mut ada, json!({ "op": "room.leave", "call_id": room })).await;
        }
        History::Locations => {
            let share = json!({ "op": "location.share", "conversation_id": group, "latitude": 51.75, "longitude": -1.25, "duration_s": 600 });
            acked(&mut ada, share).await;
            let update = json!({ "op": "location.update", "conversation_id": group, "latitude": 51.76, "longitude": -1.26 });
            acked(&mut ada, update).await;
            acked(&mut ada, json!({ "op": "location.stop", "conversation_id": group })).await;
        }
        History::Media => {
            let (status, uploaded) = server
                .api()
                .upload(&people.ada, direct, Some("image/png"), "?name=tea.png", vec![7; 4096])
                .await;
            assert_eq!(status, StatusCode::CREATED, "{uploaded}");
            let send = json!({ "op": "send", "conversation_id": direct, "client_msg_id": "file", "body": "a file", "attachments": [uploaded["media"]["id"]] });
            acked(&mut ada, send).await;
        }
        History::Typing => {
            for active in [true, false] {
                let typing = json!({ "op": "typing", "conversation_id": direct, "active": active });
                acked(&mut ada, typing).await;
            }
        }
        History::Chat => {
            let sent = ada.send_message(group, "chat-1", "hello").await;
            let message = sent["message_id"].clone();
            let edit = json!({ "op": "edit", "conversation_id": group, "message_id": message, "body": "hello again" });
            acked(&mut ada, edit).await;
            let read = json!({ "op": "read", "conversation_id": group, "message_id": message });
            acked(&mut bob, read).await;
            acked(
                &mut ada,
                json!({ "op": "delete", "conversation_id": group, "message_id": message }),
            )
            .await;
            let api = server.api();
            let path = format!("/v1/conversations/{group}");
            let (status, renamed) = api
                .call(
                    Method::PATCH,
                    &path,
                    Some(&people.ada.token),
                    Some(json!({ "title": "renamed" })),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{renamed}");
            let (status, removed) = api
                .call(
                    Method::DELETE,
                    &format!("{path}/members/{}", people.cat.id),
                    Some(&people.ada.token),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{removed}");
            let (status, added) = api
                .post(&format!("{path}/members"), &people.ada, json!({ "user_id": people.cat.id }))
                .await;
            assert_eq!(status, StatusCode::OK, "{added}");
        }
    }
    ada.close().await;
    bob.close().await;
}

/// `/readyz` of `server` says it is ready, its fan-out included.
async fn assert_ready(server: &Server) {
    let (status, ready) = server.api().call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{ready}\n{}", server.log());
    assert_eq!(ready["fanout"], "ok", "{ready}");
}

/// A message ada sends through `ada_node` reaches bob's socket on `bob_node` within the usual
/// wait, and so does one back.
async fn assert_delivers(people: &People, ada_node: &Server, bob_node: &Server) {
    assert_ready(ada_node).await;
    assert_ready(bob_node).await;
    let mut bob = Ws::connect(bob_node, &people.bob).await;
    let mut ada = Ws::connect(ada_node, &people.ada).await;

    // Over HTTP, as an outside client found it: accepted, stored, and pushed.
    let path = format!("/v1/conversations/{}/messages", people.direct);
    let fresh = json!({ "client_msg_id": unique_handle("fresh"), "body": "after the restart" });
    let (status, sent) = ada_node.api().post(&path, &people.ada, fresh).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let pushed = bob
        .next_where(|f| {
            f["type"] == "message.sent" && f["data"]["message_id"] == sent["message_id"]
        })
        .await;
    assert_eq!(pushed["data"]["body"], "after the restart");

    let reply = bob.send_message(&people.direct, &unique_handle("back"), "and back").await;
    ada.next_where(|f| {
        f["type"] == "message.sent" && f["data"]["message_id"] == reply["message_id"]
    })
    .await;
}

/// Logs `history` on a node, stops it as `stop` says, starts it again on the same data, and
/// checks that it delivers.
async fn restart_after(history: History, stop: Stop) {
    let mut first = Server::start(&[]);
    let people = people(&first).await;
    log_history(&first, &people, history).await;
    match stop {
        Stop::Kill => first.kill(),
        Stop::Terminate => assert!(first.terminate(), "{history:?}: unclean stop\n{}", first.log()),
    }
    let restarted = Server::start_in(&first.data_dir, &[]);
    assert_delivers(&people, &restarted, &restarted).await;
}

#[tokio::test]
async fn a_node_restarted_after_signals_delivers() {
    restart_after(History::Signals, Stop::Kill).await;
}

#[tokio::test]
async fn a_node_stopped_gracefully_after_signals_delivers() {
    restart_after(History::Signals, Stop::Terminate).await;
}

#[tokio::test]
async fn a_node_restarted_after_calls_delivers() {
    restart_after(History::Calls, Stop::Terminate).await;
}

#[tokio::test]
async fn a_node_restarted_after_rooms_delivers() {
    restart_after(History::Rooms, Stop::Kill).await;
}

#[tokio::test]
async fn a_node_restarted_after_locations_delivers() {
    restart_after(History::Locations, Stop::Terminate).await;
}

#[tokio::test]
async fn a_node_restarted_after_media_delivers() {
    restart_after(History::Media, Stop::Kill).await;
}

#[tokio::test]
async fn a_node_restarted_after_typing_delivers() {
    restart_after(History::Typing, Stop::Terminate).await;
}

#[tokio::test]
async fn a_node_restarted_after_chat_and_group_changes_delivers() {
    restart_after(History::Chat, Stop::Kill).await;
}

#[tokio::test]
async fn api_nodes_joining_or_restarted_in_a_cluster_with_every_kind_of_event_deliver() {
    if !on_shared_engines(
        "api_nodes_joining_or_restarted_in_a_cluster_with_every_kind_of_event_deliver",
    ) {
        return;
    }
    let id = new_cluster_id();
    let node = |role: &str, node_id: &str| {
        Server::start_in_cluster(&id, &["--role", role, "--node-id", node_id])
    };
    let _projector = node("projector", "100");
    let mut a = node("api", "1");
    let people = people(&a).await;
    for history in EVERY_KIND {
        log_history(&a, &people, history).await;
    }

    let b = node("api", "2");
    assert_delivers(&people, &a, &b).await;

    a.kill();
    let a = node("api", "1");
    assert_delivers(&people, &a, &b).await;
}
