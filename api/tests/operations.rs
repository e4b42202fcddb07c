//! What operators and analytics consumers rely on: health, readiness, metrics that answer the
//! capacity analysis's key metrics, which node holds which partitions, and the schema registry
//! in Confluent's REST shape.

mod common;

use common::{Server, Ws};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let server = Server::start(&[]);
    let api = server.api();
    let (status, health) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, health["status"].clone()), (StatusCode::OK, json!("ok")));
    let (status, ready) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["ready"], true);
    assert!(ready["projector_lag_events"].is_u64());

    let (ada, _bob, conversation) = api.pair().await;
    let mut ws = Ws::connect(&server, &ada).await;
    assert_eq!(ws.send_message(&conversation, "m", "counted").await["op"], "ack");

    let (status, metrics) = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().expect("Prometheus text").to_owned();
    let value = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("ws_connections"), 1.0);
    assert_eq!(value("messages_sent_total"), 1.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(metrics.contains("http_request_duration_seconds_bucket"), "response times per route");
    assert!(metrics.contains("log_append_seconds"), "log append latency");
    assert!(metrics.contains("# HELP messages_sent_total "), "every metric says what it is");

    // Every partition of the projector's topics has its lag, which falls to zero once the
    // read models hold the message.
    let projector_lag = |metrics: &str| -> (usize, f64) {
        let series: Vec<f64> = metrics
            .lines()
            .filter(|l| l.starts_with("consumer_lag_events{group=\"projector\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        (series.len(), series.iter().sum())
    };
    let partitions = 8 * switchboard_projector::PROJECTED_TOPICS.len();
    let mut lag = projector_lag(&metrics);
    for _ in 0..50 {
        if lag.1 == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (_, metrics) = api.call(Method::GET, "/metrics", None, None).await;
        lag = projector_lag(metrics.as_str().unwrap());
    }
    assert_eq!(lag, (partitions, 0.0), "series per partition, and the projector caught up");
}

#[tokio::test]
async fn the_schema_registry_speaks_confluents_rest_shape() {
    let server = Server::start(&[]);
    let api = server.api();
    let (status, subjects) = api.call(Method::GET, "/registry/subjects", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for topic in ["users", "conversations", "messages", "presence", "calls", "signals"] {
        assert!(
            subjects.as_array().unwrap().contains(&json!(format!("{topic}-value"))),
            "{subjects}"
        );
    }
    let (_, latest) = api
        .call(Method::GET, "/registry/subjects/messages-value/versions/latest", None, None)
        .await;
    let id = latest["id"].as_u64().unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(latest["schema"].as_str().unwrap()).unwrap();
    assert_eq!(schema["name"], "MessageEvent");
    let (status, by_id) =
        api.call(Method::GET, &format!("/registry/schemas/ids/{id}"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id["schema"], latest["schema"]);

    let (status, missing) =
        api.call(Method::GET, "/registry/subjects/chats-value/versions", None, None).await;
    assert_eq!((status, missing["error_code"].clone()), (StatusCode::NOT_FOUND, json!(40401)));
    let (status, missing) = api.call(Method::GET, "/registry/schemas/ids/999", None, None).await;
    assert_eq!((status, missing["error_code"].clone()), (StatusCode::NOT_FOUND, json!(40403)));
}

#[tokio::test]
async fn each_consumer_groups_partitions_name_the_node_holding_them() {
    let server = Server::start(&[]);
    let api = server.api();
    let (_, ready) = api.call(Method::GET, "/readyz", None, None).await;
    let node = ready["node"].as_str().expect("the node's id").to_owned();
    api.pair().await;

    // A group's members settle on their partitions a moment after the node starts, and the
    // projector commits how far it got a moment after the pair was projected.
    let mut groups = serde_json::Value::Null;
    for _ in 0..300 {
        let (status, answer) = api.call(Method::GET, "/groups", None, None).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        groups = answer;
        let projector = groups["projector"].as_object().expect("the projector's partitions");
        let held_here = |state: &serde_json::Value| {
            state["owner"].as_str().is_some_and(|owner| owner.starts_with(&node))
        };
        if projector.values().all(held_here) && projector["users.0"]["lag"].is_u64() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let partitions = 8 * switchboard_projector::PROJECTED_TOPICS.len();
    let projector = groups["projector"].as_object().unwrap();
    assert_eq!(projector.len(), partitions, "{groups}");
    assert!(
        projector.values().all(|state| state["owner"].as_str().unwrap_or("").starts_with(&node)),
        "this node holds every partition of its projector: {groups}"
    );
    assert!(projector.values().all(|state| state["lag"].is_u64()), "{groups}");

    let status = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["status", "--node", &format!("http://{}", server.address())])
        .output()
        .expect("switchboard status");
    let printed = String::from_utf8_lossy(&status.stdout);
    let said = String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success(), "{printed}{said}");
    let projector_line = printed
        .lines()
        .find(|line| line.starts_with("projector") && line.contains("messages"))
        .unwrap_or_else(|| panic!("no projector line:\n{printed}{said}"));
    assert!(projector_line.contains(&format!("0,1,2,3,4,5,6,7 by {node}")), "{printed}");
}

/// An investigation: the read models as they were before some time, rebuilt from the log of a
/// stopped node into a store of their own, served by a read-only node that answers queries and
/// refuses everything else.
#[tokio::test]
async fn a_rebuild_until_a_time_is_served_read_only() {
    let data = tempfile::tempdir().unwrap();
    let mut node = Server::start_in(data.path(), &[]);
    let api = node.api();
    let (ada, _bob, conversation) = api.pair().await;
    let path = format!("/v1/conversations/{conversation}/messages");
    let say = |body: &str| json!({ "client_msg_id": body, "body": body });
    assert_eq!(api.post(&path, &ada, say("before the incident")).await.0, StatusCode::ACCEPTED);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let incident = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(api.post(&path, &ada, say("after the incident")).await.0, StatusCode::ACCEPTED);
    assert!(node.terminate(), "the node stops cleanly");

    let (log, store) = common::backend_urls(data.path());
    let then = match store.strip_prefix("file://") {
        Some(_) => format!("file://{}", data.path().join("then").display()),
        None => format!("{}_then", store.split('?').next().unwrap()),
    };
    let rebuilt = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["rebuild", "--log", &log, "--into", &then, "--until", &incident])
        .output()
        .expect("switchboard rebuild");
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));

    let read_only = ["--role", "read-only", "--log", &log, "--store", &then];
    let investigation = tempfile::tempdir().unwrap();
    let investigating = Server::start_in(investigation.path(), &read_only);
    let api = investigating.api();
    let (status, history) = api.get(&path, &ada).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let history = history.to_string();
    assert!(history.contains("before the incident"), "{history}");
    assert!(!history.contains("after the incident"), "{history}");

    let refused = |(status, body): (StatusCode, serde_json::Value)| {
        (status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
    };
    let expected = (StatusCode::FORBIDDEN, "read_only".to_owned());
    assert_eq!(refused(api.post(&path, &ada, say("meanwhile")).await), expected);
    assert_eq!(refused(api.get("/v1/ws", &ada).await), expected);
    let socketio = "/socket.io/?EIO=4&transport=polling";
    assert_eq!(refused(api.get(socketio, &ada).await), expected);
    let login = json!({ "handle": ada.handle, "password": "correct horse battery" });
    let (status, _) = api.call(Method::POST, "/v1/auth/login", None, Some(login)).await;
    assert_eq!(status, StatusCode::OK, "logging in only reads");
    let (status, ready) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!((status, ready["role"].clone()), (StatusCode::OK, json!("read-only")), "{ready}");
    let (status, page) = api.call(Method::GET, "/", None, None).await;
    let app = page.as_str().is_some_and(|html| html.contains("/app/app.js"));
    assert!(status == StatusCode::OK && app, "the web app only reads: {status} {page}");
}
