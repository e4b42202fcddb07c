//! The built-in schema registry, served read-only in the Confluent Schema Registry REST shape so
//! standard Avro deserializers can resolve the schema ids in each event's frame.

use axum::Json;
use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};
use switchboard_schemas::{Registry, SchemaVersion};

use super::extract::Params;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}/versions", get(versions))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route("/schemas/ids/{id}", get(by_id))
}

async fn subjects() -> Json<Vec<&'static str>> {
    Json(Registry::builtin().subjects())
}

async fn versions(Params(subject): Params<String>) -> Result<Json<Vec<u32>>, ApiError> {
    let versions: Vec<u32> = Registry::builtin().versions(&subject).map(|v| v.version).collect();
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("subject {subject}")));
    }
    Ok(Json(versions))
}

/// `version` is a number or `latest`.
async fn version(Params((subject, version)): Params<(String, String)>) -> Result<Json<Value>, ApiError> {
    let registry = Registry::builtin();
    let found = match version.as_str() {
        "latest" => registry.latest(&subject),
        number => {
            let number: u32 = number.parse().map_err(|_| ApiError::bad_request("version must be a number or `latest`"))?;
            registry.versions(&subject).find(|v| v.version == number)
        }
    };
    found.map(describe).ok_or_else(|| ApiError::not_found(format!("{subject} version {version}")))
}

async fn by_id(Params(id): Params<u32>) -> Result<Json<Value>, ApiError> {
    let found = Registry::builtin().by_id(id).ok_or_else(|| ApiError::not_found(format!("schema {id}")))?;
    Ok(Json(json!({ "schema": found.text })))
}

fn describe(version: &SchemaVersion) -> Json<Value> {
    Json(json!({
        "subject": version.subject,
        "version": version.version,
        "id": version.id,
        "schema": version.text,
    }))
}
