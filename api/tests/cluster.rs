//! Several nodes on the same engines, sharing nothing else: API nodes that hand messages to
//! each other's users, one rate limit across them, the same history from each, and projector
//! workers that survive `kill -9` and take over each other's partitions.
//!
//! These need shared engines (Kafka, Cassandra, Redis); on the embedded backends they skip.

mod common;

use std::collections::HashSet;

use common::{Server, Ws, new_cluster_id, on_shared_engines};
use serde_json::{Value, json};

struct Cluster {
    projectors: Vec<Server>,
    a: Server,
    b: Server,
}

fn cluster(id: &str, extra: &[&str]) -> Cluster {
    let node = |role: &str, node_id: &str| {
        let mut args = vec!["--role", role, "--node-id", node_id];
        args.extend_from_slice(extra);
        Server::start_in_cluster(id, &args)
    };
    Cluster { projectors: vec![node("projector", "100")], a: node("api", "1"), b: node("api", "2") }
}

#[tokio::test]
async fn nodes_deliver_to_each_others_users_and_agree_on_history() {
    if !on_shared_engines("nodes_deliver_to_each_others_users_and_agree_on_history") {
        return;
    }
    let id = new_cluster_id();
    let nodes = cluster(&id, &[]);
    let (api_a, api_b) = (nodes.a.api(), nodes.b.api());
    let ada = api_a.register("ada").await;
    let bob = api_b.register("bob").await;
    let conversation = api_a.direct(&ada, &bob).await;
    let mut ada_ws = Ws::connect(&nodes.a, &ada).await;
    let mut bob_ws = Ws::connect(&nodes.b, &bob).await;

    let sent = ada_ws.send_message(&conversation, "x1", "across nodes").await;
    assert_eq!(sent["op"], "ack", "{sent}");
    let got = bob_ws.next_event("message.sent").await;
    assert_eq!(got["data"]["message_id"], sent["message_id"]);
    let reply = bob_ws.send_message(&conversation, "x2", "and back").await;
    let back = ada_ws
        .next_where(|f| {
            f["type"] == "message.sent" && f["data"]["message_id"] == reply["message_id"]
        })
        .await;
    assert_eq!(back["data"]["body"], "and back");

    let token = reply["token"].as_str();
    let from_a = api_a.history(&ada, &conversation, token).await;
    let from_b = api_b.history(&bob, &conversation, token).await;
    assert_eq!(from_a.len(), 2);
    assert_eq!(from_a, from_b, "every node serves the same history");
}

#[tokio::test]
async fn the_message_rate_limit_holds_across_nodes() {
    if !on_shared_engines("the_message_rate_limit_holds_across_nodes") {
        return;
    }
    let nodes = cluster(&new_cluster_id(), &[]);
    let api = nodes.a.api();
    let (ada, _bob, conversation) = api.pair().await;
    let mut on_a = Ws::connect(&nodes.a, &ada).await;
    let mut on_b = Ws::connect(&nodes.b, &ada).await;
    for i in 0..30 {
        let socket = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        assert_eq!(socket.send_message(&conversation, &format!("r{i}"), "hi").await["op"], "ack");
    }
    for socket in [&mut on_a, &mut on_b] {
        let limited = socket.send_message(&conversation, "over", "one too many").await;
        assert_eq!(limited["error"]["code"], "rate_limited", "{limited}");
    }
}

/// Sends `count` messages pipelined and returns the acknowledged message ids by client_msg_id.
async fn send_many(
    ws: &mut Ws,
    conversation: &str,
    prefix: &str,
    count: usize,
) -> Vec<(String, String)> {
    for i in 0..count {
        let frame = json!({ "op": "send", "ref": format!("{prefix}{i}"), "conversation_id": conversation, "client_msg_id": format!("{prefix}{i}"), "body": format!("{prefix} {i}") });
        ws.send_json(frame).await;
    }
    let mut acked = Vec::new();
    while acked.len() < count {
        let reply = ws.next_where(|f| f["op"] == "ack" || f["op"] == "error").await;
        assert_eq!(reply["op"], "ack", "{reply}");
        acked.push((
            reply["ref"].as_str().unwrap().to_owned(),
            reply["message_id"].as_str().unwrap().to_owned(),
        ));
    }
    acked
}

fn assert_exactly(history: &[Value], acked: &[(String, String)]) {
    let stored: Vec<&str> = history.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "a message was projected twice");
    for (client_msg_id, id) in acked {
        assert!(
            unique.contains(id.as_str()),
            "acknowledged {client_msg_id} missing from the read models"
        );
    }
    assert_eq!(stored.len(), acked.len());
}

#[tokio::test]
async fn a_projector_killed_mid_stream_resumes_without_loss_or_duplicates() {
    if !on_shared_engines("a_projector_killed_mid_stream_resumes_without_loss_or_duplicates") {
        return;
    }
    let id = new_cluster_id();
    let mut nodes = cluster(&id, &["--rate-messages", "off"]);
    let api = nodes.a.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ws = Ws::connect(&nodes.a, &ada).await;

    let mut acked = send_many(&mut ws, &conversation, "before", 150).await;
    nodes.projectors[0].kill();
    acked.extend(send_many(&mut ws, &conversation, "during", 150).await);
    nodes.projectors[0] =
        Server::start_in_cluster(&id, &["--role", "projector", "--node-id", "100"]);
    acked.extend(send_many(&mut ws, &conversation, "after", 50).await);

    let last = ws.send_message(&conversation, "last", "the end").await;
    acked.push(("last".into(), last["message_id"].as_str().unwrap().to_owned()));
    let history = api.history(&bob, &conversation, last["token"].as_str()).await;
    assert_exactly(&history, &acked);
}

#[tokio::test]
async fn a_second_projector_takes_over_when_the_first_stops() {
    if !on_shared_engines("a_second_projector_takes_over_when_the_first_stops") {
        return;
    }
    let id = new_cluster_id();
    let mut nodes = cluster(&id, &["--rate-messages", "off"]);
    nodes
        .projectors
        .push(Server::start_in_cluster(&id, &["--role", "projector", "--node-id", "101"]));
    let api = nodes.a.api();
    let (ada, bob) = (api.register("ada").await, api.register("bob").await);
    let mut conversations = Vec::new();
    for i in 0..4 {
        let other = api.register(&format!("p{i}")).await;
        conversations.push(api.direct(&ada, &other).await);
    }
    conversations.push(api.direct(&ada, &bob).await);
    let mut ws = Ws::connect(&nodes.a, &ada).await;
    let mut acked = Vec::new();
    for conversation in &conversations {
        acked.push(send_many(&mut ws, conversation, "two", 20).await);
    }

    assert!(nodes.projectors[0].terminate(), "the first projector stops cleanly");
    for (conversation, acked) in conversations.iter().zip(&mut acked) {
        acked.extend(send_many(&mut ws, conversation, "one", 20).await);
    }
    // Every conversation's partition is projected again, by the remaining worker.
    for (conversation, acked) in conversations.iter().zip(&acked) {
        let last = ws.send_message(conversation, "fin", "fin").await;
        let mut expected = acked.clone();
        expected.push(("fin".into(), last["message_id"].as_str().unwrap().to_owned()));
        let history = api.history(&ada, conversation, last["token"].as_str()).await;
        assert_exactly(&history, &expected);
    }
}

#[tokio::test]
async fn a_call_rings_across_nodes_and_two_timers_miss_it_once() {
    if !on_shared_engines("a_call_rings_across_nodes_and_two_timers_miss_it_once") {
        return;
    }
    let id = new_cluster_id();
    let timers = ["--ring-timeout", "3s", "--call-grace", "60s"];
    let mut nodes = cluster(&id, &timers);
    let mut second = vec!["--role", "projector", "--node-id", "101"];
    second.extend_from_slice(&timers);
    nodes.projectors.push(Server::start_in_cluster(&id, &second));
    let api = nodes.a.api();
    let (ada, bob, _) = api.pair().await;
    let mut ada_ws = Ws::connect(&nodes.a, &ada).await;
    let mut bob_on_b = Ws::connect(&nodes.b, &bob).await;
    let mut bob_on_a = Ws::connect(&nodes.a, &bob).await;

    // Several calls, so that both timers (each with part of the partitions) get some.
    let mut calls = Vec::new();
    for _ in 0..3 {
        let ack = ada_ws
            .request(json!({ "op": "call.invite", "callee": bob.id, "media": "audio" }))
            .await;
        assert_eq!(ack["op"], "ack", "{ack}");
        let call = ack["call_id"].as_str().expect("call id").to_owned();
        for device in [&mut bob_on_b, &mut bob_on_a] {
            device
                .next_where(|f| {
                    f["type"] == "call.invited" && f["data"]["call_id"] == call.as_str()
                })
                .await;
        }
        let missed = bob_on_b
            .next_within(std::time::Duration::from_secs(30), |f| {
                f["type"] == "call.missed" && f["data"]["call_id"] == call.as_str()
            })
            .await;
        assert_eq!(missed["data"]["call"]["outcome"], "missed");
        calls.push(call);
    }
    let missed: Vec<Value> = ada_ws
        .drain(std::time::Duration::from_secs(3))
        .await
        .into_iter()
        .filter(|f| f["type"] == "call.missed")
        .collect();
    let distinct: HashSet<&str> =
        missed.iter().filter_map(|f| f["data"]["call_id"].as_str()).collect();
    assert_eq!((missed.len(), distinct.len()), (3, 3), "each call missed once: {missed:?}");
}

#[tokio::test]
async fn a_node_given_a_node_id_another_node_runs_with_refuses_to_start() {
    if !on_shared_engines("a_node_given_a_node_id_another_node_runs_with_refuses_to_start") {
        return;
    }
    let id = new_cluster_id();
    let running = Server::start_in_cluster(&id, &["--node-id", "9"]);
    let log = Server::refused_in_cluster(&id, &["--node-id", "9"]);
    assert!(
        log.contains("node id 9 is in use by another running node")
            && log.contains("every node sharing a log needs its own --node-id"),
        "{log}"
    );
    // The node holding the id goes on serving.
    let api = running.api();
    let (ada, bob) = (api.register("ada").await, api.register("bob").await);
    api.direct(&ada, &bob).await;
}
