//! Calls end to end over real sockets: ringing, answering on one of several devices, the ring
//! timeout (also across a restart), busy lines, hanging up, signalling, group rooms, and what a
//! stranger gets.

mod common;

use std::time::Duration;

use common::{Server, User, Ws};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Short timers, so that a test waits seconds rather than the defaults' half minute.
const FAST: &[&str] = &["--ring-timeout", "3s", "--call-grace", "2s"];

async fn invite(ws: &mut Ws, callee: &User) -> Value {
    ws.request(json!({ "op": "call.invite", "callee": callee.id, "media": "video" })).await
}

async fn on_call(ws: &mut Ws, op: &str, call: &str) -> Value {
    ws.request(json!({ "op": op, "call_id": call })).await
}

fn call_id(ack: &Value) -> String {
    assert_eq!(ack["op"], "ack", "{ack}");
    ack["call_id"].as_str().expect("call id").to_owned()
}

fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["op"], "error", "{reply}");
    reply["error"]["code"].as_str().expect("code")
}

/// Two users who share a direct conversation, each on one socket.
async fn caller_and_callee(server: &Server) -> (User, User, Ws, Ws) {
    let (ada, bob, _) = server.api().pair().await;
    let ada_ws = Ws::connect(server, &ada).await;
    let bob_ws = Ws::connect(server, &bob).await;
    (ada, bob, ada_ws, bob_ws)
}

/// The user's call history, newest first.
async fn history(server: &Server, user: &User) -> Vec<Value> {
    let (status, page) = server.api().get("/v1/calls", user).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["calls"].as_array().expect("calls").clone()
}

/// The call as the read models hold it, once they show it settled as `outcome`.
async fn settled(server: &Server, user: &User, call: &str, outcome: &str) -> Value {
    for _ in 0..100 {
        let (status, found) = server.api().get(&format!("/v1/calls/{call}"), user).await;
        assert_eq!(status, StatusCode::OK, "{found}");
        if found["state"] == "ended" && found["outcome"] == outcome {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("call {call} never ended as {outcome}:\n{}", server.log());
}

#[tokio::test]
async fn a_call_rings_on_every_device_is_answered_on_one_and_ends() {
    let server = Server::start(FAST);
    let (ada, bob, mut ada_ws, mut phone) = caller_and_callee(&server).await;
    let mut laptop = Ws::connect(&server, &bob).await;

    let call = call_id(&invite(&mut ada_ws, &bob).await);
    for device in [&mut phone, &mut laptop] {
        let ringing = device.next_event("call.invited").await;
        assert_eq!(ringing["data"]["call_id"], call.as_str());
        assert_eq!(ringing["data"]["caller"], ada.id.as_str());
        assert_eq!(ringing["data"]["call"]["state"], "ringing");
    }

    let accepted = on_call(&mut phone, "call.accept", &call).await;
    assert_eq!(accepted["op"], "ack", "{accepted}");
    // The laptop is told the call was answered, and on which device: not this one.
    let elsewhere = laptop.next_event("call.accepted").await;
    assert_eq!(elsewhere["data"]["call"]["answered_session"], phone.ready["session_id"]);
    assert_ne!(elsewhere["data"]["call"]["answered_session"], laptop.ready["session_id"]);
    let late = on_call(&mut laptop, "call.accept", &call).await;
    assert_eq!(error_code(&late), "call_not_ringing");
    assert!(late["error"]["message"].as_str().unwrap().contains("another device"), "{late}");
    let answered = ada_ws.next_event("call.accepted").await;
    assert_eq!(answered["data"]["call"]["participants"], json!([ada.id, bob.id]));

    assert_eq!(on_call(&mut ada_ws, "call.end", &call).await["op"], "ack");
    for device in [&mut phone, &mut laptop] {
        let ended = device.next_event("call.ended").await;
        assert_eq!(ended["data"]["reason"], "hangup");
    }
    let record = settled(&server, &ada, &call, "answered").await;
    // Talk time runs from the answer to the hang-up, as the record's own times say.
    let talk = record["ended_at"].as_i64().unwrap() - record["answered_at"].as_i64().unwrap();
    assert_eq!(record["duration_ms"].as_i64(), Some(talk), "{record}");
    let again = on_call(&mut ada_ws, "call.end", &call).await;
    assert_eq!(error_code(&again), "call_ended");
    let (_, active) = server.api().get("/v1/calls/active", &bob).await;
    assert_eq!(active["calls"], json!([]), "{active}");
}

#[tokio::test]
async fn of_two_devices_accepting_at_once_exactly_one_wins() {
    let server = Server::start(FAST);
    let (_ada, bob, mut ada_ws, mut phone) = caller_and_callee(&server).await;
    let mut laptop = Ws::connect(&server, &bob).await;
    let call = call_id(&invite(&mut ada_ws, &bob).await);
    phone.next_event("call.invited").await;
    laptop.next_event("call.invited").await;

    let accept = |device: &str| json!({ "op": "call.accept", "call_id": call, "ref": device });
    phone.send_json(accept("phone")).await;
    laptop.send_json(accept("laptop")).await;
    let replies = [
        phone.next_where(|f| f["ref"] == "phone").await,
        laptop.next_where(|f| f["ref"] == "laptop").await,
    ];
    let acks = replies.iter().filter(|r| r["op"] == "ack").count();
    assert_eq!(acks, 1, "{replies:?}");
    let loser = replies.iter().find(|r| r["op"] == "error").expect("one refusal");
    assert_eq!(loser["error"]["code"], "call_not_ringing");
    let accepted = ada_ws.drain_events("call.accepted", Duration::from_secs(1)).await;
    assert_eq!(accepted.len(), 1, "one answer is logged: {accepted:?}");
}

#[tokio::test]
async fn an_unanswered_call_is_missed_once_and_a_late_accept_is_refused() {
    let server = Server::start(FAST);
    let (_ada, bob, mut ada_ws, mut bob_ws) = caller_and_callee(&server).await;
    let call = call_id(&invite(&mut ada_ws, &bob).await);
    bob_ws.next_event("call.invited").await;

    let missed = bob_ws.next_event("call.missed").await;
    assert_eq!(missed["data"]["call"]["outcome"], "missed");
    let late = on_call(&mut bob_ws, "call.accept", &call).await;
    assert_eq!(error_code(&late), "call_not_ringing");
    assert!(late["error"]["message"].as_str().unwrap().contains("in time"), "{late}");
    let more = ada_ws.drain_events("call.missed", Duration::from_secs(3)).await;
    assert_eq!(more.len(), 1, "the timeout fires once: {more:?}");
    assert_eq!(history(&server, &bob).await[0]["outcome"], "missed");

    // The lines are free again: the same two can call at once.
    let next = invite(&mut ada_ws, &bob).await;
    assert_eq!(next["op"], "ack", "{next}");
}

#[tokio::test]
async fn calling_someone_whose_phone_rings_for_another_call_is_busy() {
    let server = Server::start(FAST);
    let api = server.api();
    let (ada, bob, _) = api.pair().await;
    let carl = api.register("carl").await;
    api.direct(&carl, &bob).await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    let mut carl_ws = Ws::connect(&server, &carl).await;

    let first = call_id(&invite(&mut carl_ws, &bob).await);
    let busy = invite(&mut ada_ws, &bob).await;
    assert_eq!(error_code(&busy), "busy");
    // Bob hears of the attempt without his phone ringing for it.
    let notice = bob_ws.next_event("call.busy").await;
    assert_eq!(notice["data"]["caller"], ada.id.as_str());
    let rings = bob_ws.drain_events("call.invited", Duration::from_millis(500)).await;
    assert_eq!(rings.len(), 1, "only carl's call rings: {rings:?}");
    assert_eq!(rings[0]["data"]["call_id"], first.as_str());
    let ada_calls = history(&server, &ada).await;
    assert_eq!(ada_calls[0]["outcome"], "busy", "{ada_calls:?}");
    // A caller whose own call is still ringing cannot start another.
    api.direct(&carl, &ada).await;
    let second = invite(&mut carl_ws, &ada).await;
    assert_eq!(error_code(&second), "already_in_call");
}

#[tokio::test]
async fn a_ringing_call_still_times_out_once_after_a_restart() {
    // The caller's socket goes down with the server: a long grace keeps that from cancelling
    // the call before it rings out.
    const RESTARTED: &[&str] = &["--ring-timeout", "3s", "--call-grace", "60s"];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start_in(dir.path(), RESTARTED);
    let (ada, bob, _) = server.api().pair().await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let call = call_id(&invite(&mut ada_ws, &bob).await);
    drop(ada_ws);
    server.kill();

    let server = Server::start_in(dir.path(), RESTARTED);
    let mut bob_ws = Ws::connect(&server, &bob).await;
    let record = settled(&server, &bob, &call, "missed").await;
    assert_eq!(record["end_reason"], "missed");
    let missed = bob_ws.drain_events("call.missed", Duration::from_secs(3)).await;
    assert!(missed.len() <= 1, "fired at most once live: {missed:?}");
    let calls = history(&server, &ada).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
}

#[tokio::test]
async fn only_participants_signal_and_see_a_call() {
    let server = Server::start(FAST);
    let api = server.api();
    let (ada, bob, _) = api.pair().await;
    let carl = api.register("carl").await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    let mut carl_ws = Ws::connect(&server, &carl).await;
    let call = call_id(&invite(&mut ada_ws, &bob).await);
    assert_eq!(on_call(&mut bob_ws, "call.accept", &call).await["op"], "ack");

    let offer = json!({
        "op": "call.signal", "call_id": call, "to_user": bob.id, "kind": "offer", "payload": "v=0 sdp"
    });
    assert_eq!(ada_ws.request(offer.clone()).await["op"], "ack");
    let relayed = bob_ws.next_event("signal").await;
    assert_eq!(relayed["data"]["payload"], "v=0 sdp");
    assert_eq!(relayed["data"]["from_user"], ada.id.as_str());

    assert_eq!(error_code(&carl_ws.request(offer).await), "not_found");
    let to_ada = json!({
        "op": "call.signal", "call_id": call, "to_user": ada.id, "kind": "ice_candidate", "payload": "x"
    });
    assert_eq!(error_code(&carl_ws.request(to_ada).await), "not_found");
    assert_eq!(error_code(&on_call(&mut carl_ws, "call.end", &call).await), "not_found");
    let (status, _) = api.get(&format!("/v1/calls/{call}"), &carl).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(carl_ws.drain_events("signal", Duration::from_millis(300)).await.is_empty());
}

#[tokio::test]
async fn a_participant_whose_sockets_are_gone_past_the_grace_period_ends_the_call() {
    let server = Server::start(FAST);
    let (_ada, bob, mut ada_ws, mut bob_ws) = caller_and_callee(&server).await;
    let call = call_id(&invite(&mut ada_ws, &bob).await);
    assert_eq!(on_call(&mut bob_ws, "call.accept", &call).await["op"], "ack");
    bob_ws.close().await;

    let ended = ada_ws.next_within(Duration::from_secs(15), |f| f["type"] == "call.ended").await;
    assert_eq!(ended["data"]["reason"], "disconnected");
}

#[tokio::test]
async fn a_group_room_pushes_its_participants_caps_them_and_closes_when_empty() {
    let server = Server::start(&["--max-room-participants", "2", "--call-grace", "2s"]);
    let api = server.api();
    let (a, b, c) = (api.register("a").await, api.register("b").await, api.register("c").await);
    let stranger = api.register("s").await;
    let group = api.group(&a, "room", &[&b, &c]).await;
    let mut sockets = Vec::new();
    for user in [&a, &b, &c, &stranger] {
        sockets.push(Ws::connect(&server, user).await);
    }
    let start = json!({ "op": "room.start", "conversation_id": group, "media": "audio" });
    let room = call_id(&sockets[0].request(start.clone()).await);
    let again = sockets[1].request(start).await;
    assert_eq!(error_code(&again), "conflict", "one room per conversation");

    let joined = sockets[1].request(json!({ "op": "room.join", "call_id": room })).await;
    assert_eq!(joined["op"], "ack", "{joined}");
    let seen = sockets[2]
        .next_where(|f| f["type"] == "room.joined" && f["data"]["user_id"] == b.id.as_str())
        .await;
    assert_eq!(seen["data"]["call"]["participants"], json!([a.id, b.id]));
    let full = sockets[2].request(json!({ "op": "room.join", "call_id": room })).await;
    assert_eq!(error_code(&full), "room_full");
    let outsider = sockets[3].request(json!({ "op": "room.join", "call_id": room })).await;
    assert_eq!(error_code(&outsider), "not_found");

    let (_, active) = api.get("/v1/calls/active", &c).await;
    assert_eq!(active["rooms"][0]["id"], room.as_str(), "{active}");

    for socket in &mut sockets[..2] {
        let left = socket.request(json!({ "op": "room.leave", "call_id": room })).await;
        assert_eq!(left["op"], "ack", "{left}");
    }
    let closed =
        sockets[2].next_within(Duration::from_secs(10), |f| f["type"] == "call.ended").await;
    assert_eq!(closed["data"]["reason"], "empty");
    let mut open = json!(null);
    for _ in 0..50 {
        open = api.get("/v1/calls/active", &c).await.1["rooms"].clone();
        if open == json!([]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, json!([]), "the closed room is no longer listed");
    assert!(sockets[3].drain_events("room.joined", Duration::from_millis(300)).await.is_empty());
}

#[tokio::test]
async fn an_accept_at_the_edge_of_the_ring_timeout_either_answers_or_is_told_it_was_missed() {
    let server = Server::start(&["--ring-timeout", "2s", "--call-grace", "60s"]);
    let (_ada, bob, mut ada_ws, mut bob_ws) = caller_and_callee(&server).await;
    // The timer looks every half second: accepting around the deadline lands on either side.
    for wait_ms in [1_800, 1_950, 2_050, 2_200, 2_400] {
        let call = call_id(&invite(&mut ada_ws, &bob).await);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        let reply = on_call(&mut bob_ws, "call.accept", &call).await;
        let outcome = match reply["op"].as_str() {
            Some("ack") => "answered",
            _ => {
                assert_eq!(error_code(&reply), "call_not_ringing");
                "missed"
            }
        };
        let record = match outcome {
            "answered" => {
                assert_eq!(on_call(&mut ada_ws, "call.end", &call).await["op"], "ack");
                settled(&server, &bob, &call, "answered").await
            }
            _ => settled(&server, &bob, &call, "missed").await,
        };
        assert_eq!(record["outcome"], outcome, "the answer and the record agree");
        let endings: Vec<Value> = ada_ws
            .drain(Duration::from_millis(700))
            .await
            .into_iter()
            .filter(|f| f["data"]["call_id"] == call.as_str())
            .filter(|f| f["type"] == "call.missed" || f["type"] == "call.accepted")
            .collect();
        assert_eq!(endings.len(), 1, "one outcome after {wait_ms} ms: {endings:?}");
    }
}

/// The TURN credential coturn expects for `username`: base64(HMAC-SHA1(secret, username)).
fn turn_credential(secret: &str, username: &str) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()))
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn participants_get_the_stun_servers_and_turn_credentials_of_their_own_that_run_out() {
    let secret = "shared with the TURN servers";
    let turn_urls = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"];
    let server = Server::start(&[
        "--stun-urls",
        "stun:stun.example.org:3478",
        "--turn-urls",
        &turn_urls.join(","),
        "--turn-secret",
        secret,
        "--turn-ttl",
        "1h",
    ]);
    let (ada, bob, mut ada_ws, mut bob_ws) = caller_and_callee(&server).await;
    let (group, mut carol_ws, carol) = {
        let carol = server.api().register("carol").await;
        let group = server.api().group(&ada, "room", &[&bob, &carol]).await;
        (group, Ws::connect(&server, &carol).await, carol)
    };
    let before = unix_seconds();
    let invited = invite(&mut ada_ws, &bob).await;
    let call = call_id(&invited);
    bob_ws.next_event("call.invited").await;
    let accepted = on_call(&mut bob_ws, "call.accept", &call).await;
    on_call(&mut ada_ws, "call.end", &call).await;
    let start = json!({ "op": "room.start", "conversation_id": group, "media": "audio" });
    let started = ada_ws.request(start).await;
    let joined = on_call(&mut carol_ws, "room.join", &call_id(&started)).await;
    let after = unix_seconds();

    for (what, ack, user) in [
        ("call.invite", &invited, &ada),
        ("call.accept", &accepted, &bob),
        ("room.start", &started, &ada),
        ("room.join", &joined, &carol),
    ] {
        assert_eq!(ack["op"], "ack", "{what}: {ack}");
        let servers = ack["ice_servers"].as_array().expect("ice_servers");
        assert_eq!(servers.len(), 2, "{what}: {ack}");
        assert_eq!(servers[0], json!({ "urls": ["stun:stun.example.org:3478"] }), "{what}");
        let turn = &servers[1];
        assert_eq!(turn["urls"], json!(turn_urls), "{what}");
        let username = turn["username"].as_str().expect("username");
        let (expiry, id) = username.split_once(':').expect("EXPIRY:USER_ID");
        assert_eq!(id, user.id, "{what}: the credential names its participant");
        let expiry: u64 = expiry.parse().expect("expiry in Unix seconds");
        assert!((before + 3600..=after + 3600).contains(&expiry), "{what}: {expiry} is an hour on");
        assert_eq!(turn["credential"], turn_credential(secret, username), "{what}");
    }
}

#[tokio::test]
async fn without_ice_settings_participants_get_no_ice_servers() {
    let server = Server::start(&[]);
    let (_, bob, mut ada_ws, _) = caller_and_callee(&server).await;
    let invited = invite(&mut ada_ws, &bob).await;
    assert_eq!(invited["ice_servers"], json!([]), "{invited}");
}
