//! `examples/analytics` reads the log on Kafka with nothing but Confluent's Python client, its
//! schemas coming from a node's `/registry`: it decodes events of every type, and what it counts
//! from a node's real traffic is what that traffic was.
//!
//! Needs the engines (the Kafka log of `SWITCHBOARD_TEST_BACKEND_ARGS`) and the example's Python
//! environment: `SWITCHBOARD_ANALYTICS_PYTHON` names its interpreter (`ops/test.sh` makes one with
//! the pinned `examples/analytics/requirements.txt`). Skipped without either, unless
//! `SWITCHBOARD_REQUIRE_ENGINES=1`.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{Server, User, backend_urls, on_shared_engines};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard_schemas::{Codec, Event, EventMeta, Payload, UserId, samples};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/analytics/analytics.py");

#[tokio::test]
async fn the_python_example_decodes_every_event_type_and_counts_real_traffic() {
    if !on_shared_engines("the analytics example") {
        return;
    }
    let Ok(python) = std::env::var("SWITCHBOARD_ANALYTICS_PYTHON") else {
        let required = std::env::var("SWITCHBOARD_REQUIRE_ENGINES").is_ok_and(|v| v == "1");
        assert!(!required, "SWITCHBOARD_ANALYTICS_PYTHON must name the example's Python");
        eprintln!("the analytics example: skipped without its Python (see ops/test.sh)");
        return;
    };
    let server = Server::start(&[]);
    let (log, _) = backend_urls(&server.data_dir);
    let (brokers, node_prefix) = kafka_of(&log);
    let registry = format!("{}/registry", server.url);

    // Events of every type, framed by switchboard's codec, on topics of their own.
    let samples_prefix = format!("{node_prefix}samples.");
    let samples = samples::payloads();
    append_every_type(&brokers, &samples_prefix, &samples).await;
    let found = run(&python, &brokers, &registry, &samples_prefix);
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for payload in &samples {
        *expected.entry(payload.record_name()).or_default() += 1;
    }
    assert_eq!(found["events_by_type"], json!(expected), "{found}");

    // A node's own traffic: two users, three messages, one edited, one deleted, one read.
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let messages = format!("/v1/conversations/{conversation}/messages");
    let mut sent = Vec::new();
    for (i, body) in
        ["Have some wine.", "I don't see any wine.", "There isn't any."].iter().enumerate()
    {
        let sender = if i == 1 { &bob } else { &ada };
        let (status, ack) = api
            .post(&messages, sender, json!({ "client_msg_id": format!("m{i}"), "body": body }))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
        sent.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    call(
        &api,
        Method::PATCH,
        &format!("{messages}/{}", sent[0]),
        &ada,
        json!({ "body": "Have some tea." }),
    )
    .await;
    call(&api, Method::DELETE, &format!("{messages}/{}", sent[2]), &ada, Value::Null).await;
    let read = format!("/v1/conversations/{conversation}/read");
    call(&api, Method::POST, &read, &ada, json!({ "message_id": sent[1] })).await;

    let found = run(&python, &brokers, &registry, &node_prefix);
    let types = &found["events_by_type"];
    for (record, count) in [
        ("UserRegistered", 2),
        ("ConversationCreated", 1),
        ("MessageSent", 3),
        ("MessageEdited", 1),
        ("MessageDeleted", 1),
        ("ReadUpTo", 1),
    ] {
        assert_eq!(types[record], json!(count), "{record}: {found}");
    }
    let per_hour = found["messages_per_hour"].as_object().unwrap();
    assert_eq!(per_hour.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), 3, "{found}");
    let per_day: Vec<u64> = found["active_users_per_day"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .collect();
    // Both users acted, on one day (UTC) unless the run spans midnight.
    assert!(per_day == [2] || per_day.len() == 2, "{found}");
}

/// The brokers and topic prefix of a `kafka://HOST:PORT[,…]?prefix=P` log URL.
fn kafka_of(log: &str) -> (String, String) {
    let rest = log.strip_prefix("kafka://").unwrap_or_else(|| panic!("not a Kafka log: {log}"));
    let (brokers, query) = rest.split_once('?').unwrap_or((rest, ""));
    let prefix = query.split('&').find_map(|pair| pair.strip_prefix("prefix=")).unwrap_or_default();
    (brokers.to_owned(), prefix.to_owned())
}

/// Appends one event per payload to the topics under `prefix`, as the node would.
async fn append_every_type(brokers: &str, prefix: &str, payloads: &[Payload]) {
    let log = switchboard_ingest::log::open(&format!("kafka://{brokers}?prefix={prefix}"), 1)
        .await
        .expect("the samples' log");
    let codec = Codec::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    for (i, payload) in payloads.iter().enumerate() {
        let event = Event {
            meta: EventMeta {
                event_id: format!("sample-{i}"),
                occurred_at: now.as_millis() as i64,
                actor: (i % 2 == 0).then_some(UserId(i as i64 + 1)),
                trace_id: "analytics-test".to_owned(),
            },
            payload: payload.clone(),
        };
        let frame = codec.encode(&event).expect("encodes");
        log.append(event.topic(), event.meta.event_id.as_bytes(), frame).await.expect("appended");
    }
    log.close().await.expect("closed");
}

/// Runs the example against a node's registry; its figures.
fn run(python: &str, brokers: &str, registry: &str, prefix: &str) -> Value {
    let output = Command::new(python)
        .arg(SCRIPT)
        .args(["--bootstrap-servers", brokers, "--registry", registry, "--topic-prefix", prefix])
        .args(["--json", "--timeout", "30"])
        .output()
        .expect("running the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "analytics.py failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

async fn call(api: &common::Api, method: Method, path: &str, user: &User, body: Value) {
    let body = (!body.is_null()).then_some(body);
    let (status, answer) = api.call(method.clone(), path, Some(&user.token), body).await;
    assert!(status.is_success(), "{method} {path}: {answer}");
}
