//! The web app of `clients/web`, served at `/` by every node that serves clients (read-only ones
//! too: it only reads). Its page and built files are embedded in the binary, so that a node needs
//! nothing beside it and a browser nothing beyond it: no CDN, no build step at deploy time.

use axum::Router;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::state::AppState;

/// A built file of the app, as `/app/{name}` serves it.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../../clients/web/index.html"),
};

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../clients/web/dist/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../clients/web/dist/app.css"),
    },
];

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(|| async { serve(&INDEX) })).route("/app/{name}", get(asset))
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .map(serve)
        .ok_or_else(|| ApiError::not_found("file"))
}

fn serve(asset: &Asset) -> Response {
    // Revalidated on every load, so that a browser never runs the app of an older binary.
    let headers = [(header::CONTENT_TYPE, asset.content_type), (header::CACHE_CONTROL, "no-cache")];
    (headers, asset.body).into_response()
}
