//! The web app (clients/web) as the binary serves it: the page at `/`, its script and styles
//! under `/app/`, each with its content type and byte for byte as in clients/web (the page) and
//! its build (dist/); nothing else under `/app/`. The browser tests (clients/web/test) drive the
//! app itself.

mod common;

use common::Server;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::json;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/web");

#[tokio::test]
async fn the_web_app_is_served_at_the_root_with_its_assets() {
    let server = Server::start(&[]);
    let http = reqwest::Client::new();
    for (path, file, content_type) in [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/app/app.js", "dist/app.js", "text/javascript; charset=utf-8"),
        ("/app/app.css", "dist/app.css", "text/css; charset=utf-8"),
    ] {
        let response = http.get(format!("{}{path}", server.url)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()[CONTENT_TYPE], content_type, "{path}");
        let body = response.bytes().await.expect("body");
        let expected = std::fs::read(format!("{APP}/{file}")).expect("the file");
        assert!(body == expected, "{path} serves {file}");
    }
    let (status, body) = server.api().call(Method::GET, "/app/missing.js", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
}
