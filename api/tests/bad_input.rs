//! Bad input gets a typed JSON error and disturbs nothing: malformed frames, unknown ops,
//! missing fields, oversized frames and bodies, wrong and expired tokens, strangers, floods,
//! silent clients and one connection too many.

mod common;

use std::time::Duration;

use common::{JWT_SECRET, Refused, Server, User, Ws};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn malformed_frames_get_errors_and_the_socket_stays_usable() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ws = Ws::connect(&server, &ada).await;

    ws.send_text("{not json".into()).await;
    let error = ws.next_where(|f| f["op"] == "error").await;
    assert_eq!(error["error"]["code"], "bad_request", "{error}");
    ws.assert_usable().await;

    let unknown = ws.request(json!({ "op": "dance" })).await;
    assert_eq!(unknown["error"]["code"], "unknown_op", "{unknown}");
    ws.assert_usable().await;

    let missing =
        ws.request(json!({ "op": "send", "conversation_id": conversation, "body": "x" })).await;
    assert_eq!(missing["error"]["code"], "bad_request");
    assert!(missing["error"]["message"].as_str().unwrap().contains("client_msg_id"), "{missing}");
    ws.assert_usable().await;

    let empty = ws.send_message(&conversation, "e1", "   ").await;
    assert_eq!(empty["error"]["code"], "invalid", "{empty}");

    let huge = "x".repeat(2 * 1024 * 1024);
    ws.send_text(json!({ "op": "send", "ref": "big", "body": huge }).to_string()).await;
    let too_large = ws.next_where(|f| f["op"] == "error").await;
    assert_eq!(too_large["error"]["code"], "frame_too_large", "{too_large}");
    ws.assert_usable().await;

    // None of it reached the log: the conversation is still empty.
    let ok = ws.send_message(&conversation, "fine", "after all that").await;
    let history = api.history(&bob, &conversation, ok["token"].as_str()).await;
    assert_eq!(history.len(), 1);
}

#[tokio::test]
async fn wrong_and_expired_tokens_are_refused_with_typed_errors() {
    let server = Server::start(&[]);
    let api = server.api();
    let ada = api.register("ada").await;

    let Err(Refused::Http(status, body)) = Ws::connect_with(&server, "token=not.a.jwt").await
    else {
        panic!("a wrong token must be refused")
    };
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");

    let Err(Refused::Http(status, _)) = Ws::connect_with(&server, "").await else {
        panic!("no token must be refused")
    };
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({ "sub": ada.id, "iat": now - 7200, "exp": now - 3600 });
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let Err(Refused::Http(status, body)) =
        Ws::connect_with(&server, &format!("token={expired}")).await
    else {
        panic!("an expired token must be refused")
    };
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "token_expired");
    let (status, body) = api.call(Method::GET, "/v1/users/me", Some(&expired), None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("token_expired"))
    );

    let (status, body) = api
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({ "handle": ada.handle, "password": "wrong password" })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("invalid_credentials"))
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({ "handle": ada.handle, "password": "correct horse battery" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn strangers_can_neither_read_nor_post() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, eve) =
        (api.register("ada").await, api.register("bob").await, api.register("eve").await);
    let conversation = api.direct(&ada, &bob).await;
    let mut eve_ws = Ws::connect(&server, &eve).await;

    let send = eve_ws.send_message(&conversation, "sneak", "let me in").await;
    assert_eq!(send["error"]["code"], "not_found", "{send}");
    eve_ws.assert_usable().await;
    for path in [
        format!("/v1/conversations/{conversation}"),
        format!("/v1/conversations/{conversation}/messages"),
        format!("/v1/conversations/{conversation}/read"),
    ] {
        let (status, body) = api.get(&path, &eve).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    // A conversation that does not exist looks the same as one Eve is not in.
    let (status, _) = api.get("/v1/conversations/12345/messages", &eve).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let mut ada_ws = Ws::connect(&server, &ada).await;
    let real = ada_ws.send_message(&conversation, "real", "for bob").await;
    let history = api.history(&bob, &conversation, real["token"].as_str()).await;
    assert_eq!(history.len(), 1, "the stranger's attempt stored nothing");
    let pushed = eve_ws.drain_events("message.sent", Duration::from_millis(300)).await;
    assert!(pushed.is_empty(), "strangers get no pushes: {pushed:?}");
}

#[tokio::test]
async fn the_thirty_first_message_in_a_minute_is_rate_limited() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let mut ws = Ws::connect(&server, &ada).await;
    for i in 0..30 {
        let ack = ws.send_message(&conversation, &format!("f{i}"), "flood").await;
        assert_eq!(ack["op"], "ack", "message {i}: {ack}");
    }
    let limited = ws.send_message(&conversation, "f30", "flood").await;
    assert_eq!(limited["error"]["code"], "rate_limited", "{limited}");
    let retry_after = limited["error"]["retry_after_ms"].as_u64().unwrap();
    assert!(retry_after > 0 && retry_after <= 60_000, "{retry_after}");
    ws.assert_usable().await;

    // Bob's own budget is untouched.
    let mut bob_ws = Ws::connect(&server, &bob).await;
    assert_eq!(bob_ws.send_message(&conversation, "b1", "not me").await["op"], "ack");
}

#[tokio::test]
async fn http_errors_are_typed_json() {
    let server = Server::start(&["--max-body-bytes", "1024"]);
    let api = server.api();
    let ada = api.register("ada").await;
    let error = |body: &Value| body["error"]["code"].clone();

    let (status, body) = api.call(Method::GET, "/v1/nowhere", Some(&ada.token), None).await;
    assert_eq!((status, error(&body)), (StatusCode::NOT_FOUND, json!("not_found")));

    let (status, body) = api.post("/v1/conversations", &ada, json!({ "kind": "direct" })).await;
    assert_eq!((status, error(&body)), (StatusCode::BAD_REQUEST, json!("bad_request")));

    let (status, body) = api
        .post(
            "/v1/conversations",
            &ada,
            json!({ "kind": "group", "title": "x".repeat(2000), "members": [] }),
        )
        .await;
    assert_eq!((status, error(&body)), (StatusCode::PAYLOAD_TOO_LARGE, json!("payload_too_large")));

    let (status, body) = api.get("/v1/conversations/not-a-number", &ada).await;
    assert_eq!((status, error(&body)), (StatusCode::BAD_REQUEST, json!("bad_request")));

    let (status, body) = api.call(Method::GET, "/v1/conversations", None, None).await;
    assert_eq!((status, error(&body)), (StatusCode::UNAUTHORIZED, json!("unauthorized")));
}

#[tokio::test]
async fn auth_is_limited_per_client_address() {
    let server = Server::start(&["--rate-auth", "5/15m"]);
    let api = server.api();
    let login = json!({ "handle": "nobody_here", "password": "whatever123" });
    for _ in 0..5 {
        let (status, _) = api.call(Method::POST, "/v1/auth/login", None, Some(login.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = api.call(Method::POST, "/v1/auth/login", None, Some(login)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["retry_after_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn references_to_things_that_do_not_exist_are_refused() {
    let server = Server::start(&[]);
    let api = server.api();
    let users = [api.register("ada").await, api.register("bob").await, api.register("cy").await];
    let group = api.group(&users[0], "refs", &[&users[1]]).await;
    let mut ws = Ws::connect(&server, &users[0]).await;

    let read =
        ws.request(json!({ "op": "read", "conversation_id": group, "message_id": "12345" })).await;
    assert_eq!(read["error"]["code"], "not_found", "{read}");
    let reply = ws
        .request(json!({ "op": "send", "conversation_id": group, "client_msg_id": "r", "body": "re", "reply_to": "999" }))
        .await;
    assert_eq!(reply["error"]["code"], "not_found", "{reply}");
    let edit = ws
        .request(
            json!({ "op": "edit", "conversation_id": group, "message_id": "777", "body": "x" }),
        )
        .await;
    assert_eq!(edit["error"]["code"], "not_found", "{edit}");

    let members = format!("/v1/conversations/{group}/members");
    let (status, body) = api.post(&members, &users[0], json!({ "user_id": users[1].id })).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("conflict")));
    let (status, _) = api.post(&members, &users[0], json!({ "user_id": users[2].id })).await;
    assert_eq!(status, StatusCode::OK);

    // A plain request to the socket route gets the JSON error shape too.
    let (status, body) = api.get(&format!("/v1/ws?token={}", users[0].token), &users[0]).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("bad_request"))
    );
    ws.assert_usable().await;
}

#[tokio::test]
async fn a_client_that_closes_gets_a_close_frame_back() {
    let server = Server::start(&[]);
    let ada = server.api().register("ada").await;
    let ws = Ws::connect(&server, &ada).await;
    assert_eq!(ws.close_handshake().await, Some(1000));
}

#[tokio::test]
async fn a_client_silent_past_the_idle_timeout_gets_the_4000_close_frame() {
    let server = Server::start(&["--ping-interval", "1s", "--idle-timeout", "3s"]);
    let ada = server.api().register("ada").await;
    let mut ws = Ws::connect(&server, &ada).await;
    // Not reading answers none of the server's pings. Reading again answers them (the client
    // does so by itself) while the server's close is already under way.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closed = ws.next_where(|f| f["op"] == "closed").await;
    assert_eq!(closed["code"], 4000, "{closed}");
}

#[tokio::test]
async fn a_connection_past_the_node_cap_is_refused_before_the_upgrade() {
    let server = Server::start(&["--max-connections", "1"]);
    let (ada, bob, _) = server.api().pair().await;
    let held = Ws::connect(&server, &ada).await;
    let Err(Refused::Http(status, body)) =
        Ws::connect_with(&server, &format!("token={}", bob.token)).await
    else {
        panic!("a second connection was taken by a node capped at one")
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    assert_eq!(body["error"]["retry_after_ms"], 5000);
    drop(held);
}

/// The refusal of a socket the server turned away before the upgrade.
async fn refused(server: &Server, user: &User) -> (StatusCode, Value) {
    match Ws::connect_with(server, &format!("token={}", user.token)).await {
        Err(Refused::Http(status, body)) => (status, body),
        Err(Refused::Other(error)) => panic!("refused without an HTTP answer: {error}"),
        Ok(_) => panic!("the socket was taken"),
    }
}

#[tokio::test]
async fn sockets_opened_past_the_per_user_and_per_ip_rates_are_refused_before_the_upgrade() {
    let server = Server::start(&["--rate-sockets", "2/1m"]);
    let (ada, bob, _) = server.api().pair().await;
    let _open = [Ws::connect(&server, &ada).await, Ws::connect(&server, &ada).await];
    let (status, body) = refused(&server, &ada).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{body}");
    Ws::connect(&server, &bob).await.assert_usable().await;

    let server = Server::start(&["--rate-sockets-ip", "3/1m"]);
    let (ada, bob, _) = server.api().pair().await;
    let _open = [
        Ws::connect(&server, &ada).await,
        Ws::connect(&server, &bob).await,
        Ws::connect(&server, &ada).await,
    ];
    let (status, body) = refused(&server, &bob).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
}

#[tokio::test]
async fn a_user_at_the_socket_cap_is_refused_another_until_one_closes() {
    let server = Server::start(&["--max-sockets-per-user", "2"]);
    let (ada, bob, _) = server.api().pair().await;
    let first = Ws::connect(&server, &ada).await;
    let _second = Ws::connect(&server, &ada).await;
    let (status, body) = refused(&server, &ada).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "too_many_sockets", "{body}");
    Ws::connect(&server, &bob).await.assert_usable().await;

    first.close_handshake().await;
    let mut again = None;
    for _ in 0..50 {
        if let Ok(ws) = Ws::connect_with(&server, &format!("token={}", ada.token)).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    again.expect("a closed socket frees its place").assert_usable().await;
}

#[tokio::test]
async fn edits_deletes_and_receipts_past_their_rates_are_refused_and_log_nothing() {
    let server = Server::start(&["--rate-edits", "2/1m", "--rate-receipts", "1/1m"]);
    let (ada, bob, conversation) = server.api().pair().await;
    let mut ada_ws = Ws::connect(&server, &ada).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    let sent = ada_ws.send_message(&conversation, "m1", "hello").await;
    let message = sent["message_id"].as_str().expect("message id").to_owned();
    let edit = |body: &str| json!({ "op": "edit", "conversation_id": conversation, "message_id": message, "body": body });
    assert_eq!(ada_ws.request(edit("one")).await["op"], "ack");
    assert_eq!(ada_ws.request(edit("two")).await["op"], "ack");
    for over in [
        edit("three"),
        json!({ "op": "delete", "conversation_id": conversation, "message_id": message }),
    ] {
        let answer = ada_ws.request(over).await;
        assert_eq!(answer["error"]["code"], "rate_limited", "{answer}");
    }
    let read = json!({ "op": "read", "conversation_id": conversation, "message_id": message });
    assert_eq!(bob_ws.request(read.clone()).await["op"], "ack");
    let answer = bob_ws.request(read).await;
    assert_eq!(answer["error"]["code"], "rate_limited", "{answer}");

    let seen = ada_ws.drain(Duration::from_secs(2)).await;
    let edits: Vec<&Value> = seen.iter().filter(|f| f["type"] == "message.edited").collect();
    assert_eq!(edits.len(), 2, "only the edits let through were logged: {seen:?}");
    assert!(seen.iter().all(|f| f["type"] != "message.deleted"), "{seen:?}");
    let receipts = seen.iter().filter(|f| f["type"] == "message.read").count();
    assert_eq!(receipts, 1, "{seen:?}");
}
