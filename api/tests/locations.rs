//! Live locations end to end: members share, move and stop over their sockets and see each
//! other's shares pushed and queried; a share runs out by itself; strangers see nothing; bad
//! positions and durations are refused; removal ends a share; shares outlive a restart.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Api, Server, User, Ws};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn share(conversation: &str, latitude: f64, longitude: f64, duration_s: u64) -> Value {
    json!({
        "op": "location.share",
        "conversation_id": conversation,
        "latitude": latitude,
        "longitude": longitude,
        "duration_s": duration_s,
    })
}

fn update(conversation: &str, latitude: f64, longitude: f64) -> Value {
    json!({
        "op": "location.update",
        "conversation_id": conversation,
        "latitude": latitude,
        "longitude": longitude,
    })
}

fn stop(conversation: &str) -> Value {
    json!({ "op": "location.stop", "conversation_id": conversation })
}

/// `op` with `field` set to `value`, or left out for null.
fn with(op: &Value, field: &str, value: Value) -> Value {
    let mut op = op.clone();
    match value {
        Value::Null => op.as_object_mut().unwrap().remove(field),
        value => op.as_object_mut().unwrap().insert(field.to_owned(), value),
    };
    op
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// An ack's consistency token.
fn token(ack: &Value) -> &str {
    assert_eq!(ack["op"], "ack", "{ack}");
    ack["token"].as_str().unwrap()
}

/// The locations query, answered once the write behind `after` is in.
async fn locations(api: &Api, user: &User, conversation: &str, after: &str) -> Vec<Value> {
    let path = format!("/v1/conversations/{conversation}/locations?after={after}");
    let (status, body) = api.get(&path, user).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["locations"].as_array().unwrap().clone()
}

/// The one location of `user` the query lists.
fn location_of<'a>(listed: &'a [Value], user: &User) -> &'a Value {
    let found: Vec<&Value> = listed.iter().filter(|l| l["user_id"] == json!(user.id)).collect();
    assert_eq!(found.len(), 1, "{listed:?}");
    found[0]
}

fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["op"], "error", "{reply}");
    reply["error"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn members_see_a_share_move_and_stop() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, cy) =
        (api.register("ada").await, api.register("bob").await, api.register("cy").await);
    let group = api.group(&ada, "walk", &[&bob, &cy]).await;
    let dan = api.register("dan").await;
    api.direct(&ada, &dan).await;
    let mut ada_phone = Ws::connect(&server, &ada).await;
    let mut ada_laptop = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    let mut dan_ws = Ws::connect(&server, &dan).await;

    let before = now_ms();
    let mut request = share(&group, 51.5074, -0.1278, 600);
    request["accuracy_m"] = json!(12.5);
    let shared = ada_phone.request(request).await;
    token(&shared);
    let expires_at = shared["expires_at"].as_i64().unwrap();
    assert!((before + 600_000..=now_ms() + 600_000).contains(&expires_at), "{shared}");

    for socket in [&mut bob_ws, &mut ada_laptop] {
        let pushed = socket.next_event("location.shared").await;
        let data = &pushed["data"];
        assert_eq!(data["user_id"], ada.id.as_str());
        assert_eq!(data["conversation_id"], group.as_str());
        assert_eq!(
            (data["latitude"].as_f64(), data["longitude"].as_f64()),
            (Some(51.5074), Some(-0.1278))
        );
        assert_eq!(data["accuracy_m"], 12.5);
        assert_eq!(data["expires_at"], expires_at, "clients learn when the share runs out");
    }

    // A move keeps the expiry; a move without accuracy has none.
    let moved = ada_phone.request(update(&group, 51.508, -0.129)).await;
    assert_eq!(moved["expires_at"], expires_at, "{moved}");
    let pushed = bob_ws.next_event("location.shared").await;
    assert_eq!(pushed["data"]["latitude"], 51.508);
    assert_eq!(pushed["data"]["accuracy_m"], Value::Null);
    assert_eq!(pushed["data"]["expires_at"], expires_at);

    let listed = locations(&api, &bob, &group, token(&moved)).await;
    assert_eq!(listed.len(), 1, "only ada shares: {listed:?}");
    let shown = location_of(&listed, &ada);
    assert_eq!(
        (shown["latitude"].as_f64(), shown["longitude"].as_f64()),
        (Some(51.508), Some(-0.129))
    );
    assert_eq!(shown["accuracy_m"], Value::Null);
    assert_eq!(shown["expires_at"], expires_at);
    assert_eq!(shown["live"], true);
    assert!(shown["updated_at"].as_i64().unwrap() >= before, "{shown}");

    // Stopping from the other device ends the share for everyone, both of ada's devices included.
    let stopped = ada_laptop.request(stop(&group)).await;
    for socket in [&mut bob_ws, &mut ada_phone] {
        let pushed = socket.next_event("location.stopped").await;
        assert_eq!(pushed["data"]["user_id"], ada.id.as_str());
        assert_eq!(pushed["data"]["conversation_id"], group.as_str());
    }
    let listed = locations(&api, &cy, &group, token(&stopped)).await;
    let shown = location_of(&listed, &ada);
    assert_eq!(shown["live"], false);
    assert_eq!(shown["latitude"], 51.508, "the last known position stays");

    let refused = ada_phone.request(update(&group, 51.6, -0.13)).await;
    assert_eq!(error_code(&refused), "not_sharing");

    // Someone in another conversation with ada saw none of it.
    let frames = dan_ws.drain(Duration::from_millis(300)).await;
    let seen: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"].as_str().is_some_and(|t| t.starts_with("location.")))
        .collect();
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn a_share_runs_out_by_itself() {
    let server = Server::start(&["--min-location-duration", "1s"]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ws = Ws::connect(&server, &ada).await;

    let shared = ws.request(share(&conversation, 48.8566, 2.3522, 2)).await;
    let listed = locations(&api, &bob, &conversation, token(&shared)).await;
    let expires_at = shared["expires_at"].as_i64().unwrap();
    if now_ms() < expires_at {
        assert_eq!(location_of(&listed, &ada)["live"], true, "{listed:?}");
    }
    let left = u64::try_from(expires_at - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(left + 100)).await;

    // Nobody stopped it, yet it is over: no longer live, and no longer movable.
    let listed = locations(&api, &bob, &conversation, token(&shared)).await;
    let shown = location_of(&listed, &ada);
    assert_eq!(shown["live"], false, "{shown}");
    assert_eq!(shown["latitude"], 48.8566);
    let refused = ws.request(update(&conversation, 48.86, 2.35)).await;
    assert_eq!(error_code(&refused), "not_sharing");

    // Sharing again starts a new share.
    let again = ws.request(share(&conversation, 48.86, 2.35, 600)).await;
    let moved = ws.request(update(&conversation, 48.87, 2.36)).await;
    assert_eq!(moved["expires_at"], again["expires_at"], "{moved}");
    let listed = locations(&api, &bob, &conversation, token(&moved)).await;
    assert_eq!(location_of(&listed, &ada)["live"], true);
}

#[tokio::test]
async fn strangers_can_neither_share_nor_see() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let eve = api.register("eve").await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    let mut eve_ws = Ws::connect(&server, &eve).await;
    let shared = ada_ws.request(share(&conversation, 52.52, 13.405, 600)).await;
    token(&shared);
    bob_ws.next_event("location.shared").await;

    for op in
        [share(&conversation, 1.0, 2.0, 600), update(&conversation, 1.0, 2.0), stop(&conversation)]
    {
        let reply = eve_ws.request(op).await;
        assert_eq!(error_code(&reply), "not_found", "{reply}");
        assert_eq!(reply["error"]["message"], "conversation not found");
    }
    let path = format!("/v1/conversations/{conversation}/locations?after={}", token(&shared));
    let (status, body) = api.get(&path, &eve).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = api.get("/v1/conversations/1/locations", &ada).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an unknown conversation is not found either");

    let frames = eve_ws.drain(Duration::from_millis(300)).await;
    assert!(frames.iter().all(|f| f["type"] != "location.shared"), "{frames:?}");
    let pushed = bob_ws.drain_events("location.stopped", Duration::from_millis(300)).await;
    assert!(pushed.is_empty(), "a stranger's stop reached a member: {pushed:?}");
    let listed = locations(&api, &bob, &conversation, token(&shared)).await;
    assert_eq!(location_of(&listed, &ada)["live"], true, "ada's share is untouched");
}

#[tokio::test]
async fn bad_positions_and_durations_are_refused() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ws = Ws::connect(&server, &ada).await;

    let good = share(&conversation, 1.0, 1.0, 600);
    let malformed = [
        share(&conversation, 90.5, 0.0, 600),
        share(&conversation, -91.0, 0.0, 600),
        share(&conversation, 0.0, 180.5, 600),
        update(&conversation, 0.0, -181.0),
        with(&good, "accuracy_m", json!(-5)),
        with(&good, "latitude", json!("north")),
        with(&good, "duration_s", Value::Null),
        with(&good, "duration_s", json!(-5)),
        with(&update(&conversation, 1.0, 1.0), "duration_s", json!(600)),
        json!({ "op": "location.stop" }),
    ];
    for op in malformed {
        let reply = ws.request(op.clone()).await;
        assert_eq!(error_code(&reply), "bad_request", "{op} got {reply}");
    }
    // Well-formed, but outside the configured bounds (1 min to 8 h by default).
    for duration_s in [0, 59, 8 * 3600 + 1] {
        let reply = ws.request(share(&conversation, 1.0, 1.0, duration_s)).await;
        assert_eq!(error_code(&reply), "invalid", "{duration_s} s: {reply}");
        assert_eq!(reply["error"]["message"], "duration_s must be 60 to 28800 seconds");
    }
    let never_shared = ws.request(update(&conversation, 1.0, 1.0)).await;
    assert_eq!(error_code(&never_shared), "not_sharing");
    assert_eq!(never_shared["error"]["message"].as_str().map(str::is_empty), Some(false));

    // Nothing of it was stored; the edges of the map are fine.
    let edge = ws.request(share(&conversation, -90.0, 180.0, 60)).await;
    let listed = locations(&api, &bob, &conversation, token(&edge)).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(location_of(&listed, &ada)["latitude"], -90.0);
}

#[tokio::test]
async fn a_removed_member_stops_sharing() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, cy) =
        (api.register("ada").await, api.register("bob").await, api.register("cy").await);
    let group = api.group(&ada, "hike", &[&bob, &cy]).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    let mut cy_ws = Ws::connect(&server, &cy).await;
    let shared = cy_ws.request(share(&group, 46.55, 7.98, 3600)).await;
    token(&shared);
    bob_ws.next_event("location.shared").await;

    let path = format!("/v1/conversations/{group}/members/{}", cy.id);
    let (status, removed) = api.call(Method::DELETE, &path, Some(&ada.token), None).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    let pushed = bob_ws.next_event("location.stopped").await;
    assert_eq!(pushed["data"]["user_id"], cy.id.as_str(), "the others stop showing it");
    let listed = locations(&api, &bob, &group, removed["token"].as_str().unwrap()).await;
    assert!(listed.is_empty(), "a former member is not listed: {listed:?}");
    let refused = cy_ws.request(update(&group, 46.56, 7.99)).await;
    assert_eq!(error_code(&refused), "not_found");

    // Back in the group, cy's old share does not come back to life.
    let (status, added) = api
        .post(&format!("/v1/conversations/{group}/members"), &ada, json!({ "user_id": cy.id }))
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    let listed = locations(&api, &bob, &group, added["token"].as_str().unwrap()).await;
    assert_eq!(location_of(&listed, &cy)["live"], false, "{listed:?}");
    let refused = cy_ws.request(update(&group, 46.56, 7.99)).await;
    assert_eq!(error_code(&refused), "not_sharing");
}

#[tokio::test]
async fn shares_are_rebuilt_from_the_log_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    token(&ada_ws.request(share(&conversation, 59.3293, 18.0686, 3600)).await);
    let moved = ada_ws.request(update(&conversation, 59.33, 18.07)).await;
    token(&bob_ws.request(share(&conversation, 60.17, 24.94, 3600)).await);
    let stopped = bob_ws.request(stop(&conversation)).await;
    let before = locations(&api, &bob, &conversation, token(&stopped)).await;
    ada_ws.close().await;
    bob_ws.close().await;
    server.kill();

    // On the embedded backends, replace the read models with ones rebuilt from the log alone.
    let (log, store) = common::backend_urls(dir.path());
    if let Some(path) = store.strip_prefix("file://") {
        let rebuilt = dir.path().join("rebuilt");
        let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["rebuild", "--log", &log, "--into"])
            .arg(&rebuilt)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        std::fs::remove_dir_all(path).unwrap();
        std::fs::rename(&rebuilt, path).unwrap();
    }
    let server = Server::start_in(dir.path(), &[]);
    let api = server.api();
    let after = locations(&api, &bob, &conversation, token(&stopped)).await;
    assert_eq!(after, before);
    assert_eq!(location_of(&after, &ada)["latitude"], 59.33);
    assert_eq!(location_of(&after, &ada)["live"], true);
    assert_eq!(location_of(&after, &bob)["live"], false);

    let mut ada_ws = Ws::connect(&server, &ada).await;
    let again = ada_ws.request(update(&conversation, 59.34, 18.08)).await;
    assert_eq!(again["expires_at"], moved["expires_at"], "the running share goes on: {again}");
}

#[tokio::test]
async fn location_updates_have_a_rate_limit_of_their_own() {
    let server = Server::start(&["--rate-locations", "2/1m", "--rate-messages", "1/1m"]);
    let api = server.api();
    let (ada, _bob, conversation) = api.pair().await;
    let mut ws = Ws::connect(&server, &ada).await;
    token(&ws.request(share(&conversation, 1.0, 1.0, 600)).await);
    token(&ws.request(update(&conversation, 1.1, 1.1)).await);
    let limited = ws.request(update(&conversation, 1.2, 1.2)).await;
    assert_eq!(error_code(&limited), "rate_limited");
    assert!(limited["error"]["retry_after_ms"].as_u64().unwrap() > 0, "{limited}");
    // Stopping is never refused, and messaging has its own budget.
    token(&ws.request(stop(&conversation)).await);
    token(&ws.send_message(&conversation, "m1", "still here").await);
}
