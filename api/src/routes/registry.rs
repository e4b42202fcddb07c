//! The built-in schema registry, served read-only in the Confluent Schema Registry REST shape —
//! its paths, bodies, error codes and content type — so standard Avro deserializers can resolve
//! the schema ids in each event's frame.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use switchboard_schemas::{Registry, SchemaVersion};

use crate::state::AppState;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}/versions", get(versions))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route("/schemas/ids/{id}", get(by_id))
}

/// A registry answer: a body, or one of Confluent's numbered errors.
enum Answer {
    Found(Value),
    SubjectNotFound,
    VersionNotFound,
    SchemaNotFound,
    InvalidVersion,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Answer::Found(body) => (StatusCode::OK, body),
            Answer::SubjectNotFound => not_found(40401, "Subject not found."),
            Answer::VersionNotFound => not_found(40402, "Version not found."),
            Answer::SchemaNotFound => not_found(40403, "Schema not found."),
            Answer::InvalidVersion => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "error_code": 42202, "message": "The specified version is not a valid version id." }),
            ),
        };
        (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response()
    }
}

fn not_found(code: u32, message: &str) -> (StatusCode, Value) {
    (StatusCode::NOT_FOUND, json!({ "error_code": code, "message": message }))
}

async fn subjects() -> Answer {
    Answer::Found(json!(Registry::builtin().subjects()))
}

async fn versions(Path(subject): Path<String>) -> Answer {
    let versions: Vec<u32> = Registry::builtin().versions(&subject).map(|v| v.version).collect();
    if versions.is_empty() {
        return Answer::SubjectNotFound;
    }
    Answer::Found(json!(versions))
}

/// `version` is a number or `latest`.
async fn version(Path((subject, version)): Path<(String, String)>) -> Answer {
    let registry = Registry::builtin();
    if registry.latest(&subject).is_none() {
        return Answer::SubjectNotFound;
    }
    let found = match version.as_str() {
        "latest" => registry.latest(&subject),
        number => match number.parse::<u32>() {
            Ok(number) => registry.versions(&subject).find(|v| v.version == number),
            Err(_) => return Answer::InvalidVersion,
        },
    };
    found.map_or(Answer::VersionNotFound, |v| Answer::Found(describe(v)))
}

async fn by_id(Path(id): Path<String>) -> Answer {
    match id.parse().ok().and_then(|id| Registry::builtin().by_id(id)) {
        Some(found) => Answer::Found(json!({ "schema": found.text })),
        None => Answer::SchemaNotFound,
    }
}

fn describe(version: &SchemaVersion) -> Value {
    json!({
        "subject": version.subject,
        "version": version.version,
        "id": version.id,
        "schema": version.text,
    })
}
