//! A node's router called in process: no socket, no child process, so what a handler answers is
//! checked as quickly as a unit test. The suites beside this one drive real nodes over the
//! network; this one shows the router is whole without them.

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use switchboard_api::config::Config;
use switchboard_api::server::Node;
use tower::ServiceExt;

const SECRET: &str = "an in-process test secret, long enough to sign";

/// Sends one request through the router; the answer's status and JSON body.
async fn call(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 20).await.expect("a body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn post(path: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    let request = match token {
        Some(token) => request.header(header::AUTHORIZATION, format!("Bearer {token}")),
        None => request,
    };
    request.body(Body::from(body.to_owned())).expect("a request")
}

fn get(path: &str, token: &str) -> Request<Body> {
    Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("a request")
}

#[tokio::test]
async fn the_router_answers_in_process_with_typed_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().expect("a UTF-8 path");
    let config = Config::from_args(["--data-dir", data_dir, "--jwt-secret", SECRET])?;
    let node = Node::start(config).await?;
    let peer: SocketAddr = "127.0.0.1:40000".parse()?;
    let router = node.router().layer(MockConnectInfo(peer));

    let body = json!({"handle": "Ada", "password": "correct horse"}).to_string();
    let (status, session) = call(&router, post("/v1/auth/register", None, &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    assert_eq!(session["user"]["handle"], "ada");
    let token = session["token"].as_str().expect("an access token").to_owned();

    let (status, me) = call(&router, get("/v1/users/me", &token)).await;
    assert_eq!((status, &me["display_name"]), (StatusCode::OK, &json!("Ada")));

    let (status, error) = call(&router, post("/v1/conversations", Some(&token), "{oops")).await;
    assert_eq!((status, &error["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("bad_request")));

    let (status, error) = call(&router, get("/v1/users/me", "not-a-token")).await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("unauthorized"))
    );
    let in_query = Request::get(format!("/v1/users/me?token={token}")).body(Body::empty())?;
    let (status, _) = call(&router, in_query).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "tokens in the query string open sockets only");

    node.stop().await
}
