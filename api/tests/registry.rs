//! The schema registry as Confluent's clients call it, through a node's router in process: every
//! route, the lookups and compatibility checks that parse the schema sent, the writes it
//! refuses, and each of Confluent's error codes.

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, header};
use serde_json::{Value, json};
use switchboard_api::config::Config;
use switchboard_api::server::Node;
use switchboard_schemas::Registry;
use tower::ServiceExt;

const REGISTRY_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A node's router, and the directory its data lives in while it runs.
struct Registered {
    node: Node,
    router: Router,
    _dir: tempfile::TempDir,
}

impl Registered {
    async fn start() -> Registered {
        let dir = tempfile::tempdir().expect("a temp dir");
        let data_dir = dir.path().to_str().expect("a UTF-8 path");
        let secret = "a registry test secret, long enough to sign";
        let config = Config::from_args(["--data-dir", data_dir, "--jwt-secret", secret]).unwrap();
        let node = Node::start(config).await.expect("the node starts");
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let router = node.router().layer(MockConnectInfo(peer));
        Registered { node, router, _dir: dir }
    }

    /// The status and text of the answer; every answer has the registry's content type.
    async fn text(&self, method: Method, path: &str, body: Option<(&str, Value)>) -> (u16, String) {
        let request = Request::builder().method(method).uri(format!("/registry{path}"));
        let request = match body {
            Some((content_type, body)) => request
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        let response = self.router.clone().oneshot(request.unwrap()).await.expect("an answer");
        let status = response.status().as_u16();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        assert_eq!(content_type.unwrap(), REGISTRY_TYPE, "{path}");
        let body = to_bytes(response.into_body(), 1 << 20).await.expect("a body");
        (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.text(Method::GET, path, None).await;
        (status, serde_json::from_str(&text).expect("a JSON answer"))
    }

    /// Sends `schema` as Confluent's clients do: `{"schema": "<text>"}` in the registry's type.
    async fn post(&self, path: &str, schema: &str) -> (u16, Value) {
        self.post_as(REGISTRY_TYPE, path, json!({ "schema": schema })).await
    }

    async fn post_as(&self, content_type: &str, path: &str, body: Value) -> (u16, Value) {
        let (status, text) = self.text(Method::POST, path, Some((content_type, body))).await;
        (status, serde_json::from_str(&text).expect("a JSON answer"))
    }
}

/// An answer's Confluent error code.
fn code(answer: &(u16, Value)) -> (u16, i64) {
    (answer.0, answer.1["error_code"].as_i64().unwrap_or_else(|| panic!("no code: {answer:?}")))
}

/// The text of a registered version, with its layout changed: one line, keys reordered.
fn relaid(text: &str) -> String {
    let json: Value = serde_json::from_str(text).unwrap();
    let Value::Object(fields) = json else { panic!("a record schema") };
    let reversed: serde_json::Map<String, Value> = fields.into_iter().rev().collect();
    Value::Object(reversed).to_string()
}

/// The latest messages schema with one more field in its envelope.
fn messages_with_field(field: Value) -> String {
    let latest = Registry::builtin().latest("messages-value").unwrap();
    let mut json: Value = serde_json::from_str(latest.text).unwrap();
    json["fields"].as_array_mut().unwrap().push(field);
    json.to_string()
}

#[tokio::test]
async fn subjects_versions_and_ids_are_served_as_confluent_serves_them() {
    let registry = Registered::start().await;
    let builtin = Registry::builtin();
    let (status, subjects) = registry.get("/subjects").await;
    assert_eq!((status, subjects), (200, json!(builtin.subjects())));
    assert_eq!(registry.get("/subjects/messages-value/versions").await, (200, json!([1, 2])));
    assert_eq!(registry.get("/schemas/types").await, (200, json!(["AVRO"])));

    let v1 = builtin.versions("messages-value").next().unwrap();
    let v2 = builtin.latest("messages-value").unwrap();
    let described = |v: &switchboard_schemas::SchemaVersion| json!({ "subject": v.subject, "version": v.version, "id": v.id, "schema": v.text });
    for (version, expected) in [("1", v1), ("2", v2), ("latest", v2), ("-1", v2)] {
        let path = format!("/subjects/messages-value/versions/{version}");
        assert_eq!(registry.get(&path).await, (200, described(expected)), "{path}");
        let raw = registry.text(Method::GET, &format!("{path}/schema"), None).await;
        assert_eq!(raw, (200, expected.text.to_owned()), "{path}/schema is the text itself");
    }

    // Deserializers add `subject` and `format`; ids are global here, so they change nothing.
    let by_id = format!("/schemas/ids/{}?subject=elsewhere-value&format=serialized", v1.id);
    assert_eq!(registry.get(&by_id).await, (200, json!({ "schema": v1.text })));
    let raw = registry.text(Method::GET, &format!("/schemas/ids/{}/schema", v1.id), None).await;
    assert_eq!(raw, (200, v1.text.to_owned()));
    let subjects = registry.get(&format!("/schemas/ids/{}/subjects", v2.id)).await;
    assert_eq!(subjects, (200, json!(["messages-value"])));
    let versions = registry.get(&format!("/schemas/ids/{}/versions", v2.id)).await;
    assert_eq!(versions, (200, json!([{ "subject": "messages-value", "version": 2 }])));

    let level = json!({ "compatibilityLevel": "BACKWARD_TRANSITIVE" });
    assert_eq!(registry.get("/config").await, (200, level.clone()));
    assert_eq!(registry.get("/config/calls-value").await, (200, level));
    assert_eq!(registry.get("/mode").await, (200, json!({ "mode": "READONLY" })));
    assert_eq!(registry.get("/mode/users-value").await, (200, json!({ "mode": "READONLY" })));

    assert_eq!(code(&registry.get("/subjects/chats-value/versions").await), (404, 40401));
    assert_eq!(code(&registry.get("/subjects/chats-value/versions/1").await), (404, 40401));
    assert_eq!(code(&registry.get("/config/chats-value").await), (404, 40401));
    assert_eq!(code(&registry.get("/mode/chats-value").await), (404, 40401));
    assert_eq!(code(&registry.get("/subjects/users-value/versions/2").await), (404, 40402));
    assert_eq!(code(&registry.get("/subjects/users-value/versions/2/schema").await), (404, 40402));
    for version in ["two", "0", "-2"] {
        let path = format!("/subjects/users-value/versions/{version}");
        assert_eq!(code(&registry.get(&path).await), (422, 42202), "{path}");
    }
    for path in ["/schemas/ids/99", "/schemas/ids/x", "/schemas/ids/99/schema"] {
        assert_eq!(code(&registry.get(path).await), (404, 40403), "{path}");
    }
    assert_eq!(code(&registry.get("/schemas/ids/99/subjects").await), (404, 40403));
    assert_eq!(code(&registry.get("/schemas/ids/99/versions").await), (404, 40403));
    registry.node.stop().await.unwrap();
}

#[tokio::test]
async fn a_schema_is_looked_up_by_what_it_says_not_how_it_is_laid_out() {
    let registry = Registered::start().await;
    let v1 = Registry::builtin().versions("messages-value").next().unwrap();
    let (status, found) = registry.post("/subjects/messages-value", &relaid(v1.text)).await;
    assert_eq!(status, 200, "{found}");
    let expected =
        json!({ "subject": "messages-value", "version": 1, "id": v1.id, "schema": v1.text });
    assert_eq!(found, expected);
    // The query Python's client adds, and plain JSON instead of the registry's own type.
    let lookup = "/subjects/messages-value?normalize=False&deleted=True";
    let plain = registry.post_as("application/json", lookup, json!({ "schema": v1.text })).await;
    assert_eq!(plain, (200, expected));

    let unregistered = messages_with_field(json!({ "name": "tenant", "type": "string" }));
    assert_eq!(code(&registry.post("/subjects/messages-value", &unregistered).await), (404, 40403));
    assert_eq!(code(&registry.post("/subjects/calls-value", v1.text).await), (404, 40403));
    assert_eq!(code(&registry.post("/subjects/chats-value", v1.text).await), (404, 40401));

    let invalid = registry.post("/subjects/messages-value", r#"{"type":"recrod"}"#).await;
    assert_eq!(code(&invalid), (422, 42201));
    let not_avro = json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" });
    let not_avro = registry.post_as(REGISTRY_TYPE, "/subjects/messages-value", not_avro).await;
    assert_eq!(code(&not_avro), (422, 42201));
    let no_schema = registry.post_as(REGISTRY_TYPE, "/subjects/messages-value", json!({})).await;
    assert_eq!(code(&no_schema), (422, 42201));
    let text =
        registry.post_as("text/plain", "/subjects/messages-value", json!({ "schema": v1.text }));
    assert_eq!(code(&text.await), (415, 415));
    registry.node.stop().await.unwrap();
}

#[tokio::test]
async fn writes_are_refused_except_registering_a_version_the_subject_has() {
    let registry = Registered::start().await;
    let latest = Registry::builtin().latest("calls-value").unwrap();
    let (status, registered) =
        registry.post("/subjects/calls-value/versions", &relaid(latest.text)).await;
    assert_eq!((status, registered), (200, json!({ "id": latest.id })));

    let new = messages_with_field(
        json!({ "name": "tenant", "type": ["null", "string"], "default": null }),
    );
    let refused = registry.post("/subjects/messages-value/versions", &new).await;
    assert_eq!(code(&refused), (422, 42205));
    assert!(refused.1["message"].as_str().unwrap().contains("built into switchboard's code"));
    let elsewhere = registry.post("/subjects/users-value/versions", latest.text).await;
    assert_eq!(code(&elsewhere), (422, 42205), "a schema of another subject");

    let level = json!({ "compatibility": "NONE" });
    let mode = json!({ "mode": "READWRITE" });
    let writes = [
        (Method::DELETE, "/subjects/calls-value", None),
        (Method::DELETE, "/subjects/calls-value/versions/1", None),
        (Method::PUT, "/config", Some(level.clone())),
        (Method::PUT, "/config/calls-value", Some(level)),
        (Method::DELETE, "/config/calls-value", None),
        (Method::PUT, "/mode", Some(mode)),
    ];
    for (method, path, body) in writes {
        let body = body.map(|body| (REGISTRY_TYPE, body));
        let (status, text) = registry.text(method.clone(), path, body).await;
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(code(&(status, answer)), (422, 42205), "{method} {path}");
    }
    registry.node.stop().await.unwrap();
}

#[tokio::test]
async fn compatibility_is_checked_against_the_versions_asked_about() {
    let registry = Registered::start().await;
    let builtin = Registry::builtin();
    let v2 = builtin.latest("messages-value").unwrap();
    let check = "/compatibility/subjects/messages-value/versions/1";
    assert_eq!(registry.post(check, v2.text).await, (200, json!({ "is_compatible": true })));

    let optional = messages_with_field(
        json!({ "name": "tenant", "type": ["null", "string"], "default": null }),
    );
    let all = "/compatibility/subjects/messages-value/versions";
    assert_eq!(registry.post(all, &optional).await, (200, json!({ "is_compatible": true })));

    // A new field without a default cannot be read from events written before it.
    let required = messages_with_field(json!({ "name": "tenant", "type": "string" }));
    let latest = "/compatibility/subjects/messages-value/versions/latest";
    assert_eq!(registry.post(latest, &required).await, (200, json!({ "is_compatible": false })));
    let (status, verbose) =
        registry.post(&format!("{all}?normalize=False&verbose=True"), &required).await;
    assert_eq!((status, &verbose["is_compatible"]), (200, &json!(false)));
    let messages = verbose["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "one for each version it cannot read: {verbose}");
    assert!(messages[0].as_str().unwrap().contains("messages-value v1"), "{verbose}");
    let quiet = registry.post(&format!("{latest}?verbose=false"), &required).await;
    assert_eq!(quiet, (200, json!({ "is_compatible": false })));

    let users = "/compatibility/subjects/users-value/versions/1";
    assert_eq!(registry.post(users, v2.text).await, (200, json!({ "is_compatible": false })));
    assert_eq!(
        code(&registry.post("/compatibility/subjects/chats-value/versions/1", v2.text).await),
        (404, 40401)
    );
    assert_eq!(
        code(&registry.post("/compatibility/subjects/chats-value/versions", v2.text).await),
        (404, 40401)
    );
    assert_eq!(
        code(&registry.post("/compatibility/subjects/users-value/versions/9", v2.text).await),
        (404, 40402)
    );
    assert_eq!(
        code(&registry.post("/compatibility/subjects/users-value/versions/one", v2.text).await),
        (422, 42202)
    );
    assert_eq!(code(&registry.post(users, "{").await), (422, 42201));
    registry.node.stop().await.unwrap();
}
