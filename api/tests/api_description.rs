//! The API descriptions (docs/openapi.json and docs/asyncapi.json, served at `/v1/openapi.json`
//! and `/v1/asyncapi.json`) describe what the server has, no more and no less: every route of
//! its router, every op it reads, every event it pushes and every error code it answers with.
//! The server's side comes from its code: ops, events and codes from the lists the server itself
//! works from ([`switchboard_api::description`]), routes from the router's source, read as the
//! TypeScript client's coverage test reads it, and then asked of a running node. The documents
//! must also be valid OpenAPI 3.1 and AsyncAPI 3 (checked by the specifications' own Node
//! tools, where `SWITCHBOARD_SOCKETIO_CLIENTS` provides them; see ops/test.sh).

#[path = "common/mod.rs"]
mod common;
mod descriptions;

use std::collections::BTreeSet;

use common::{Server, Ws};
use descriptions::{Described, HTTP_METHODS, asyncapi, event_type, openapi, socket_operations};
use serde_json::{Value, json};
use switchboard_api::description;

const ROUTES: &str = include_str!("../src/routes/mod.rs");
const REGISTRY_ROUTES: &str = include_str!("../src/routes/registry.rs");
const PROTOCOL: &str = include_str!("../../docs/protocol.md");

fn sorted<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    items.into_iter().collect()
}

/// The `.route("PATH", get(..).post(..))` calls of a source file, as `METHOD PATH`, each with
/// the name of the function it is in.
fn route_calls(source: &str) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for (at, _) in source.match_indices(".route(") {
        let function = source[..at].rsplit("fn ").next().unwrap_or_default();
        let function = function.split('(').next().unwrap_or_default().to_owned();
        let mut depth = 0;
        let call = &source[at + ".route".len()..];
        let end = call
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(call.len(), |(i, _)| i);
        let call = &call[..end];
        let path = call.split('"').nth(1).expect("a route's path").to_owned();
        for method in HTTP_METHODS {
            if call.contains(&format!("{method}(")) {
                routes.push((function.clone(), format!("{} {path}", method.to_uppercase())));
            }
        }
    }
    routes
}

/// Every route of the server: those of `routes::router`, which nests them under `/v1` unless
/// they are written in full, the other routers of routes/mod.rs as written, and the schema
/// registry's under the prefix it is nested at.
fn server_routes() -> BTreeSet<String> {
    assert!(ROUTES.contains(r#".nest("/v1", v1)"#), "routes::router nests its routes under /v1");
    let registry = ROUTES.split(r#".nest(""#).find_map(|nest| {
        let (prefix, rest) = nest.split_once('"')?;
        rest.starts_with(", registry::router()").then_some(prefix)
    });
    let registry = registry.expect("the registry is nested");
    let prefixed = |(prefix, route): (&str, String)| {
        let (method, path) = route.split_once(' ').expect("METHOD PATH");
        format!("{method} {prefix}{path}")
    };
    let main = route_calls(ROUTES).into_iter().map(|(function, route)| {
        let under_v1 = function == "router" && !route.contains(" /v1/");
        prefixed((if under_v1 { "/v1" } else { "" }, route))
    });
    let registry = route_calls(REGISTRY_ROUTES).into_iter().map(|(_, r)| prefixed((registry, r)));
    sorted(main.chain(registry))
}

fn documented_routes(document: &Value) -> BTreeSet<String> {
    let paths = document["paths"].as_object().expect("paths");
    let operations = paths.iter().flat_map(|(path, item)| {
        let methods = HTTP_METHODS.into_iter().filter(|m| item.get(*m).is_some());
        methods.map(move |method| format!("{} {path}", method.to_uppercase()))
    });
    sorted(operations)
}

#[test]
fn the_openapi_document_has_every_route_of_the_router_and_no_other() {
    let server = server_routes();
    assert!(server.len() > 40, "the router's routes were found: {server:?}");
    assert!(server.contains("GET /v1/users/{id}") && server.contains("GET /registry/mode"));
    let documented = documented_routes(&openapi());
    let missing: Vec<_> = server.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&server).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes of the server the OpenAPI document lacks: {missing:?}\n\
         routes of the OpenAPI document the server lacks: {extra:?}"
    );
}

#[test]
fn the_asyncapi_document_has_every_op_and_pushed_event_on_both_sockets_and_no_other() {
    let document = asyncapi();
    let operations = socket_operations(&document);
    let ops = sorted(description::ops().iter().map(|op| op.to_string()));
    let events = sorted(description::pushed_events().into_iter().map(str::to_owned));
    assert!(ops.len() > 15 && events.len() > 20, "the server's ops and events were found");
    for channel in ["ws", "socketio"] {
        let on_channel = || operations.iter().filter(|o| o.channel == channel);
        let documented_ops = sorted(on_channel().filter(|o| o.action == "receive").map(|o| {
            assert_eq!(o.replies.len(), 2, "{}: an ack (or pong) and an error reply", o.name);
            o.name.clone()
        }));
        let documented_events =
            sorted(on_channel().filter_map(|o| event_type(&document, &o.payload)));
        assert_eq!(documented_ops, ops, "the ops of the {channel} channel");
        assert_eq!(documented_events, events, "the pushed events of the {channel} channel");
    }
}

fn code_enum(document: &Value) -> BTreeSet<String> {
    let codes = document["components"]["schemas"]["ErrorCode"]["enum"].as_array().expect("codes");
    sorted(codes.iter().map(|code| code.as_str().expect("a code").to_owned()))
}

/// The codes of the error table of docs/protocol.md.
fn protocol_codes() -> BTreeSet<String> {
    let errors = PROTOCOL.split("\n## Errors\n").nth(1).expect("an Errors section");
    let errors = errors.split("\n## ").next().unwrap_or_default();
    let rows = errors.lines().filter_map(|line| line.strip_prefix("| `"));
    sorted(rows.map(|row| row.split('`').next().unwrap_or_default().to_owned()))
}

#[test]
fn every_error_code_is_described_and_every_described_code_exists() {
    let server = sorted(description::error_codes().into_iter().map(str::to_owned));
    let (http, sockets) = (code_enum(&openapi()), code_enum(&asyncapi()));
    let described: BTreeSet<String> = http.union(&sockets).cloned().collect();
    assert_eq!(described, server, "the codes of the two documents are the server's");
    assert_eq!(protocol_codes(), server, "the codes of the error table of docs/protocol.md");
    // Each error response lists codes of the document's own list.
    let openapi = openapi();
    for (name, response) in openapi["components"]["responses"].as_object().unwrap() {
        let error = &response["content"]["application/json"]["schema"]["properties"]["error"];
        for code in error["properties"]["code"]["enum"].as_array().into_iter().flatten() {
            assert!(http.contains(code.as_str().unwrap()), "{name} lists {code}");
        }
    }
}

/// Fills a path template's parameters with an id, so that the route matches.
fn concrete(template: &str) -> String {
    let segments = template.split('/').map(|s| if s.starts_with('{') { "1" } else { s });
    segments.collect::<Vec<_>>().join("/")
}

#[tokio::test]
async fn a_node_serves_both_documents_and_has_every_route_they_describe() {
    let server = Server::start(&[]);
    let http = reqwest::Client::new();
    for (path, document) in
        [("/v1/openapi.json", description::OPENAPI), ("/v1/asyncapi.json", description::ASYNCAPI)]
    {
        let response = http.get(format!("{}{path}", server.url)).send().await.expect(path);
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json", "{path}");
        assert_eq!(response.text().await.unwrap(), document, "{path} serves the document as it is");
    }
    // Every route the OpenAPI document describes is one the node routes: no request to it is
    // answered as an unknown route or an unknown method.
    let mut unrouted = Vec::new();
    for route in documented_routes(&openapi()) {
        let (method, template) = route.split_once(' ').unwrap();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = http.request(method, format!("{}{}", server.url, concrete(template)));
        let response = response.send().await.expect("a response");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        if status == 405 || body["error"]["message"] == "route not found" {
            unrouted.push(format!("{route}: {status} {body}"));
        }
    }
    assert!(
        unrouted.is_empty(),
        "described routes the node does not have:\n{}",
        unrouted.join("\n")
    );
}

#[test]
fn both_documents_are_valid_by_their_specifications() {
    let Ok(clients) = std::env::var("SWITCHBOARD_SOCKETIO_CLIENTS") else {
        eprintln!("skipped without SWITCHBOARD_SOCKETIO_CLIENTS (see ops/test.sh)");
        return;
    };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = std::process::Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/descriptions.cjs"))
        .arg(format!("{root}/docs/openapi.json"))
        .arg(format!("{root}/docs/asyncapi.json"))
        .env("NODE_PATH", std::path::Path::new(&clients).join("node_modules"))
        .output()
        .expect("node runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(report.trim(), "ok");
}

/// Sends an op the server takes, and holds the op, its reply and `events` (then pushed to
/// `listener`) to the AsyncAPI document.
async fn described_op(described: &Described, ws: &mut Ws, op: Value) -> Value {
    let reply = ws.request(op.clone()).await;
    assert_eq!(reply["op"], "ack", "{op}: {reply}");
    described.sent(&op).unwrap_or_else(|why| panic!("{op}: {why}"));
    let name = op["op"].as_str();
    described.received(&reply, name).unwrap_or_else(|why| panic!("{reply}: {why}"));
    reply
}

async fn described_events(described: &Described, ws: &mut Ws, kinds: &[&str]) {
    for kind in kinds {
        let event = ws.next_event(kind).await;
        described.received(&event, None).unwrap_or_else(|why| panic!("{event}: {why}"));
    }
}

/// What docs/protocol.md shows no capture of that the replay plays (calls and rooms, and the
/// routes that read them), held to the descriptions as the replay holds its exchanges.
#[tokio::test]
async fn calls_rooms_and_syncs_are_as_described() {
    let server = Server::start(&[]);
    let described = Described::load();
    let api = server.api();
    let (alice, bob, _) = api.pair().await;
    let group = api.group(&alice, "Tea party", &[&bob]).await;
    let (mut alice_ws, mut bob_ws) =
        (Ws::connect(&server, &alice).await, Ws::connect(&server, &bob).await);
    for ws in [&alice_ws, &bob_ws] {
        described.received(&ws.ready, None).expect("ready as described");
    }
    let d = &described;

    let invite = json!({ "op": "call.invite", "callee": bob.id, "media": "video" });
    let call = described_op(d, &mut alice_ws, invite.clone()).await["call_id"].clone();
    described_op(d, &mut bob_ws, json!({ "op": "call.accept", "call_id": call })).await;
    let offer = json!({ "op": "call.signal", "call_id": call, "to_user": bob.id, "kind": "offer", "payload": "v=0" });
    described_op(d, &mut alice_ws, offer).await;
    described_op(d, &mut alice_ws, json!({ "op": "call.end", "call_id": call })).await;
    described_events(d, &mut bob_ws, &["call.invited", "call.accepted", "signal", "call.ended"])
        .await;
    let declined = described_op(d, &mut alice_ws, invite).await["call_id"].clone();
    described_op(d, &mut bob_ws, json!({ "op": "call.decline", "call_id": declined })).await;
    described_events(d, &mut alice_ws, &["call.invited", "call.declined"]).await;

    let room = json!({ "op": "room.start", "conversation_id": group, "media": "audio" });
    let room = described_op(d, &mut bob_ws, room).await["call_id"].clone();
    described_op(d, &mut alice_ws, json!({ "op": "room.join", "call_id": room })).await;
    described_op(d, &mut alice_ws, json!({ "op": "room.leave", "call_id": room })).await;
    described_op(d, &mut bob_ws, json!({ "op": "room.leave", "call_id": room })).await;
    described_events(d, &mut alice_ws, &["room.started", "room.joined", "room.left", "call.ended"])
        .await;
    described_op(d, &mut alice_ws, json!({ "op": "sync", "limit": 5 })).await;

    let call = call.as_str().unwrap();
    for path in [
        format!("/v1/calls/{call}"),
        "/v1/calls".into(),
        "/v1/calls/active".into(),
        "/v1/sync".into(),
    ] {
        let (status, body) = api.get(&path, &alice).await;
        let content_type = Some("application/json");
        let held = described.http("GET", &path, None, status.as_u16(), content_type, Some(&body));
        held.unwrap_or_else(|why| panic!("GET {path}: {why}"));
    }
}
