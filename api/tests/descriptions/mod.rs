//! The API descriptions as the tests read them: the OpenAPI and AsyncAPI documents the server
//! serves, what they say each route and socket message is, and validators for their schemas.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use jsonschema::Validator;
use serde_json::{Value, json};
use switchboard_api::description::{ASYNCAPI, OPENAPI};

pub const HTTP_METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

pub fn openapi() -> Value {
    serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON")
}

pub fn asyncapi() -> Value {
    serde_json::from_str(ASYNCAPI).expect("docs/asyncapi.json is JSON")
}

/// What a `$ref` of `document` points at, following references to references.
pub fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("references within the document");
            let target = document.pointer(pointer);
            resolve(document, target.unwrap_or_else(|| panic!("{reference} points at nothing")))
        }
        None => value,
    }
}

/// An operation of the WebSocket or Socket.IO channel, as the AsyncAPI document has it: the
/// name of its message and the schemas of that message and of the replies.
pub struct SocketOperation {
    pub channel: String,
    /// `receive` for what clients send, `send` for what the server pushes.
    pub action: String,
    /// The message's `name`: an op, a pushed event's type, `ready`, `error` or `close`.
    pub name: String,
    pub payload: Value,
    pub replies: Vec<Value>,
}

/// Every operation of the AsyncAPI document.
pub fn socket_operations(document: &Value) -> Vec<SocketOperation> {
    let operations = document["operations"].as_object().expect("operations");
    let message = |reference: &Value| resolve(document, reference).clone();
    let payload = |reference: &Value| message(reference)["payload"].clone();
    operations
        .values()
        .map(|operation| {
            let channel = operation["channel"]["$ref"].as_str().expect("a channel");
            let messages = operation["messages"].as_array().expect("messages");
            assert_eq!(messages.len(), 1, "one message per operation: {operation}");
            let replies = operation["reply"]["messages"].as_array().cloned().unwrap_or_default();
            SocketOperation {
                channel: channel.trim_start_matches("#/channels/").to_owned(),
                action: operation["action"].as_str().expect("an action").to_owned(),
                name: message(&messages[0])["name"].as_str().expect("a name").to_owned(),
                payload: payload(&messages[0]),
                replies: replies.iter().map(payload).collect(),
            }
        })
        .collect()
}

/// The type of the events a payload schema describes, if it describes pushed events.
pub fn event_type(document: &Value, payload: &Value) -> Option<String> {
    let schema = resolve(document, payload);
    (schema["properties"]["op"]["const"] == "event")
        .then(|| schema["properties"]["type"]["const"].as_str().expect("a type").to_owned())
}

/// Whether a request path is an instance of a path template (`/v1/users/{id}`).
fn instance_of(template: &str, path: &str) -> bool {
    let (template, path): (Vec<&str>, Vec<&str>) =
        (template.split('/').collect(), path.split('/').collect());
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

/// The template of the OpenAPI document a path is an instance of: of those that fit, the one
/// with the most fixed segments (`/v1/calls/active` rather than `/v1/calls/{id}`).
pub fn template_of<'a>(document: &'a Value, path: &str) -> Option<&'a str> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .keys()
        .filter(|template| instance_of(template, path))
        .max_by_key(|template| template.split('/').filter(|s| !s.starts_with('{')).count())
        .map(String::as_str)
}

/// Validates real requests, responses and frames against the documents' schemas, and counts
/// what it validated.
pub struct Described {
    openapi: Value,
    asyncapi: Value,
    /// By op name: the schema of the op's frame, and of its `ack` (or `pong`) reply.
    ops: HashMap<String, (Value, Value)>,
    /// By event type.
    events: HashMap<String, Value>,
    validated: AtomicUsize,
}

/// One validator per schema of either document, compiled once: the schema, with the
/// components of its document beside it for its references to resolve.
static VALIDATORS: LazyLock<Mutex<HashMap<String, Arc<Validator>>>> =
    LazyLock::new(Default::default);

impl Described {
    pub fn load() -> Described {
        let (openapi, asyncapi) = (openapi(), asyncapi());
        let mut ops = HashMap::new();
        let mut events = HashMap::new();
        for operation in socket_operations(&asyncapi).into_iter().filter(|o| o.channel == "ws") {
            match (operation.action.as_str(), event_type(&asyncapi, &operation.payload)) {
                ("receive", _) => {
                    let reply = operation.replies.first().expect("a reply").clone();
                    ops.insert(operation.name, (operation.payload, reply));
                }
                (_, Some(kind)) => {
                    events.insert(kind, operation.payload);
                }
                _ => {}
            }
        }
        Described { openapi, asyncapi, ops, events, validated: AtomicUsize::new(0) }
    }

    /// How many requests, responses and frames were validated.
    pub fn validated(&self) -> usize {
        self.validated.load(Ordering::Relaxed)
    }

    fn check(&self, document: &Value, schema: &Value, instance: &Value) -> Result<(), String> {
        let key = format!("{}{schema}", document["info"]["title"]);
        let validator = VALIDATORS
            .lock()
            .unwrap()
            .entry(key)
            .or_insert_with(|| {
                let root = json!({ "components": document["components"], "allOf": [schema] });
                let options = jsonschema::options().with_draft(jsonschema::Draft::Draft202012);
                Arc::new(options.build(&root).expect("the schema compiles"))
            })
            .clone();
        self.validated.fetch_add(1, Ordering::Relaxed);
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        match errors.is_empty() {
            true => Ok(()),
            false => Err(format!("not as the schema says: {}", errors.join("; "))),
        }
    }

    /// Holds an HTTP exchange to the OpenAPI document: the request's JSON body (when the
    /// server took it) and the response's, against the schemas of the route's operation.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        request: Option<&Value>,
        status: u16,
        content_type: Option<&str>,
        response: Option<&Value>,
    ) -> Result<(), String> {
        let document = &self.openapi;
        let method = method.to_lowercase();
        let operation = template_of(document, path).map(|t| &document["paths"][t][&method]);
        let responses = &document["components"]["responses"];
        let described = match operation {
            Some(operation) if operation.is_object() => {
                if let (Some(body), true) = (request, (200..300).contains(&status)) {
                    let schema = &resolve(document, &operation["requestBody"])["content"];
                    let schema = &schema["application/json"]["schema"];
                    if schema.is_null() {
                        return Err(format!("{method} {path} takes no JSON body"));
                    }
                    self.check(document, schema, body).map_err(|e| format!("request {e}"))?;
                }
                &operation["responses"][status.to_string()]
            }
            // The server's answer to a route or method it does not have.
            Some(_) => &responses["E405"],
            None => &responses["E404"],
        };
        if described.is_null() {
            return Err(format!("{method} {path}: status {status} is not described"));
        }
        let (Some(body), Some(content_type)) = (response, content_type) else { return Ok(()) };
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        let content = &resolve(document, described)["content"];
        let schema = &content[media_type]["schema"];
        match (schema.is_null(), content.get("*/*")) {
            (false, _) => self.check(document, schema, body).map_err(|e| format!("response {e}")),
            (true, Some(_)) => Ok(()),
            (true, None) => Err(format!("{method} {path}: {content_type} is not described")),
        }
    }

    /// Holds a frame a client sent, which the server took, to the schema of its op.
    pub fn sent(&self, frame: &Value) -> Result<(), String> {
        let op = frame["op"].as_str().unwrap_or_default();
        let (schema, _) = self.ops.get(op).ok_or_else(|| format!("op {op} is not described"))?;
        self.check(&self.asyncapi, schema, frame).map_err(|e| format!("sent frame {e}"))
    }

    /// Holds a frame the server sent to its schema: a reply to `op` (the op of the frame with
    /// the same `ref`), `ready`, `error` or a pushed event.
    pub fn received(&self, frame: &Value, op: Option<&str>) -> Result<(), String> {
        let schema = match (frame["op"].as_str(), op) {
            (Some("ready"), _) => json!({"$ref": "#/components/schemas/Ready"}),
            (Some("error"), _) => json!({"$ref": "#/components/schemas/ErrorFrame"}),
            (Some("event"), _) => {
                let kind = frame["type"].as_str().unwrap_or_default();
                let schema = self.events.get(kind);
                schema.ok_or_else(|| format!("event {kind} is not described"))?.clone()
            }
            (Some("ack" | "pong"), Some(op)) => {
                let schema = self.ops.get(op).map(|(_, reply)| reply.clone());
                schema.ok_or_else(|| format!("op {op} is not described"))?
            }
            _ => return Err(format!("a frame the replay cannot tell the schema of: {frame}")),
        };
        self.check(&self.asyncapi, &schema, frame).map_err(|e| format!("received frame {e}"))
    }
}
