//! The web app (clients/web) as the binary serves it: the page at `/`, its script and styles
//! under `/app/`, each with its content type and exactly as built in clients/web/dist; nothing
//! else under `/app/`. The browser tests (clients/web/test) drive the app itself.

mod common;

use common::Server;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::json;

const BUILT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/web/dist");

#[tokio::test]
async fn the_web_app_is_served_at_the_root_with_its_assets() {
    let server = Server::start(&[]);
    let http = reqwest::Client::new();
    for (path, file, content_type) in [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/app/app.js", "app.js", "text/javascript; charset=utf-8"),
        ("/app/app.css", "app.css", "text/css; charset=utf-8"),
    ] {
        let response = http.get(format!("{}{path}", server.url)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()[CONTENT_TYPE], content_type, "{path}");
        let body = response.bytes().await.expect("body");
        let built = std::fs::read(format!("{BUILT}/{file}")).expect("the built file");
        assert!(body == built, "{path} serves {file} as built");
    }
    let (status, body) = server.api().call(Method::GET, "/app/missing.js", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
}
