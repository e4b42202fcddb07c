//! The built-in schema registry, served read-only in the Confluent Schema Registry REST shape —
//! its paths, bodies, error codes and content type — so Confluent's serializers, deserializers
//! and `SchemaRegistryClient`s work against it unchanged.
//!
//! The schemas come from the code ([`Registry::builtin`]), so nothing here changes them: every
//! write is refused with Confluent's "operation not permitted", except registering a schema that
//! is already a version of its subject, which answers that version's id as Confluent's registry
//! does. That is what a serializer left on its default `auto.register.schemas` asks before it
//! writes, so producers written for a Confluent registry work here too.

use std::collections::HashMap;

use apache_avro::Schema;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_schemas::{COMPATIBILITY_LEVEL, Registry, SchemaVersion};

use crate::state::AppState;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(refuse))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version).delete(refuse))
        .route("/subjects/{subject}/versions/{version}/schema", get(version_schema))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(by_id))
        .route("/schemas/ids/{id}/schema", get(by_id_schema))
        .route("/schemas/ids/{id}/subjects", get(by_id_subjects))
        .route("/schemas/ids/{id}/versions", get(by_id_versions))
        .route("/config", get(config).put(refuse).delete(refuse))
        .route("/config/{subject}", get(subject_config).put(refuse).delete(refuse))
        .route("/mode", get(mode).put(refuse))
        .route("/mode/{subject}", get(subject_mode).put(refuse).delete(refuse))
        .route("/compatibility/subjects/{subject}/versions", post(compatible_with_all))
        .route("/compatibility/subjects/{subject}/versions/{version}", post(compatible_with))
}

/// A successful answer: a JSON body, or a schema's own text (the `…/schema` routes).
enum Found {
    Json(Value),
    Schema(&'static str),
}

/// One of Confluent's numbered errors.
enum Refusal {
    SubjectNotFound,
    VersionNotFound,
    SchemaNotFound,
    InvalidSchema(String),
    InvalidVersion,
    ReadOnly,
    UnsupportedMediaType,
}

type Answer = Result<Found, Refusal>;

impl IntoResponse for Found {
    fn into_response(self) -> Response {
        let body = match self {
            Found::Json(body) => body.to_string(),
            Found::Schema(text) => text.to_owned(),
        };
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Refusal::SubjectNotFound => (StatusCode::NOT_FOUND, 40401, "Subject not found.".into()),
            Refusal::VersionNotFound => (StatusCode::NOT_FOUND, 40402, "Version not found.".into()),
            Refusal::SchemaNotFound => (StatusCode::NOT_FOUND, 40403, "Schema not found.".into()),
            Refusal::InvalidSchema(why) => {
                (StatusCode::UNPROCESSABLE_ENTITY, 42201, format!("Invalid schema: {why}"))
            }
            Refusal::InvalidVersion => (
                StatusCode::UNPROCESSABLE_ENTITY,
                42202,
                "The specified version is not a valid version id.".into(),
            ),
            Refusal::ReadOnly => (
                StatusCode::UNPROCESSABLE_ENTITY,
                42205,
                "Operation not permitted: this registry is read-only. Its schemas are built into \
                 switchboard's code, and a new version comes with a new release."
                    .into(),
            ),
            Refusal::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                415,
                format!("Unsupported Media Type: send {CONTENT_TYPE} or application/json"),
            ),
        };
        let body = json!({ "error_code": code, "message": message }).to_string();
        (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
    }
}

async fn subjects() -> Answer {
    Ok(Found::Json(json!(Registry::builtin().subjects())))
}

async fn versions(Path(subject): Path<String>) -> Answer {
    let versions: Vec<u32> = Registry::builtin().versions(&subject).map(|v| v.version).collect();
    if versions.is_empty() {
        return Err(Refusal::SubjectNotFound);
    }
    Ok(Found::Json(json!(versions)))
}

async fn version(Path((subject, version)): Path<(String, String)>) -> Answer {
    Ok(Found::Json(describe(find_version(&subject, &version)?)))
}

async fn version_schema(Path((subject, version)): Path<(String, String)>) -> Answer {
    Ok(Found::Schema(find_version(&subject, &version)?.text))
}

/// `POST /subjects/{subject}`: the version of the subject that is the schema sent.
async fn lookup(Path(subject): Path<String>, headers: HeaderMap, body: Bytes) -> Answer {
    let schema = candidate(&headers, &body)?;
    let registry = Registry::builtin();
    if registry.latest(&subject).is_none() {
        return Err(Refusal::SubjectNotFound);
    }
    registry
        .find(&subject, &schema)
        .map(|v| Found::Json(describe(v)))
        .ok_or(Refusal::SchemaNotFound)
}

/// `POST /subjects/{subject}/versions`: only a schema the subject already has "registers".
async fn register(Path(subject): Path<String>, headers: HeaderMap, body: Bytes) -> Answer {
    let schema = candidate(&headers, &body)?;
    let registered = Registry::builtin().find(&subject, &schema).ok_or(Refusal::ReadOnly)?;
    Ok(Found::Json(json!({ "id": registered.id })))
}

async fn refuse() -> Refusal {
    Refusal::ReadOnly
}

async fn schema_types() -> Answer {
    Ok(Found::Json(json!(["AVRO"])))
}

/// Ids are global here, so the `subject` and `format` parameters clients add change nothing.
async fn by_id(Path(id): Path<String>) -> Answer {
    Ok(Found::Json(json!({ "schema": find_id(&id)?.text })))
}

async fn by_id_schema(Path(id): Path<String>) -> Answer {
    Ok(Found::Schema(find_id(&id)?.text))
}

/// Each id is one version of one subject.
async fn by_id_subjects(Path(id): Path<String>) -> Answer {
    Ok(Found::Json(json!([find_id(&id)?.subject])))
}

async fn by_id_versions(Path(id): Path<String>) -> Answer {
    let found = find_id(&id)?;
    Ok(Found::Json(json!([{ "subject": found.subject, "version": found.version }])))
}

/// One level for every subject: the rule the registered versions are tested against.
async fn config() -> Answer {
    Ok(Found::Json(json!({ "compatibilityLevel": COMPATIBILITY_LEVEL })))
}

async fn subject_config(Path(subject): Path<String>) -> Answer {
    known_subject(&subject)?;
    config().await
}

async fn mode() -> Answer {
    Ok(Found::Json(json!({ "mode": "READONLY" })))
}

async fn subject_mode(Path(subject): Path<String>) -> Answer {
    known_subject(&subject)?;
    mode().await
}

/// `POST /compatibility/subjects/{subject}/versions/{version}`: whether the schema sent reads
/// what that version wrote.
async fn compatible_with(
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let schema = candidate(&headers, &body)?;
    let version = find_version(&subject, &version)?;
    Ok(compatibility(&schema, [version], &query))
}

/// `POST /compatibility/subjects/{subject}/versions`: the same against every version, as
/// [`COMPATIBILITY_LEVEL`] asks of a new one.
async fn compatible_with_all(
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let schema = candidate(&headers, &body)?;
    known_subject(&subject)?;
    Ok(compatibility(&schema, Registry::builtin().versions(&subject), &query))
}

/// `{"is_compatible": …}`, with what breaks it under `messages` when the query has
/// `verbose=true` (Python's client sends `True`/`False`).
fn compatibility<'a>(
    schema: &Schema,
    versions: impl IntoIterator<Item = &'a SchemaVersion>,
    query: &HashMap<String, String>,
) -> Found {
    let messages: Vec<String> = versions
        .into_iter()
        .filter_map(|version| {
            let error = version.readable_by(schema).err()?;
            Some(format!(
                "cannot read what {} v{} wrote: {error}",
                version.subject, version.version
            ))
        })
        .collect();
    let mut answer = json!({ "is_compatible": messages.is_empty() });
    if query.get("verbose").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        answer["messages"] = json!(messages);
    }
    Found::Json(answer)
}

/// The schema a request carries: Confluent's `{"schema": "…", "schemaType": "AVRO"}` (other
/// fields, such as `references` or `metadata`, are not used here), sent as JSON or as the
/// registry's own content type.
fn candidate(headers: &HeaderMap, body: &[u8]) -> Result<Schema, Refusal> {
    #[derive(Deserialize)]
    struct Request {
        schema: String,
        #[serde(rename = "schemaType")]
        schema_type: Option<String>,
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let essence = content_type.map(|v| v.split(';').next().unwrap_or_default().trim());
    if essence.is_some_and(|t| t != "application/json" && !t.ends_with("+json")) {
        return Err(Refusal::UnsupportedMediaType);
    }
    let request: Request =
        serde_json::from_slice(body).map_err(|e| Refusal::InvalidSchema(e.to_string()))?;
    if request.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
        return Err(Refusal::InvalidSchema("only AVRO schemas are registered here".into()));
    }
    Schema::parse_str(&request.schema).map_err(|e| Refusal::InvalidSchema(e.to_string()))
}

fn known_subject(subject: &str) -> Result<(), Refusal> {
    Registry::builtin().latest(subject).map(|_| ()).ok_or(Refusal::SubjectNotFound)
}

/// `version` is a number from 1, or `latest` (or `-1`, Confluent's other name for it).
fn find_version(subject: &str, version: &str) -> Result<&'static SchemaVersion, Refusal> {
    let registry = Registry::builtin();
    let latest = registry.latest(subject).ok_or(Refusal::SubjectNotFound)?;
    let found = match version {
        "latest" | "-1" => Some(latest),
        number => {
            let number = number.parse::<u32>().ok().filter(|&n| n > 0);
            let number = number.ok_or(Refusal::InvalidVersion)?;
            registry.versions(subject).find(|v| v.version == number)
        }
    };
    found.ok_or(Refusal::VersionNotFound)
}

fn find_id(id: &str) -> Result<&'static SchemaVersion, Refusal> {
    id.parse().ok().and_then(|id| Registry::builtin().by_id(id)).ok_or(Refusal::SchemaNotFound)
}

fn describe(version: &SchemaVersion) -> Value {
    json!({
        "subject": version.subject,
        "version": version.version,
        "id": version.id,
        "schema": version.text,
    })
}
