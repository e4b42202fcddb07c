//! Media end to end: uploads streamed into the blob store and downloaded whole or by range by the
//! members of their conversation only, messages carrying them, and uploads that go wrong (too
//! large, cut off, of a refused type) leaving nothing behind. Some uploads here are written by
//! hand over a plain TCP socket, to control exactly what the server gets and when.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, User, Ws};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RANGE};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

/// The byte at `offset` of every generated file: reproducible anywhere in a file without
/// keeping it, and different from one offset to the next.
fn byte_at(offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 9)) as u8
}

fn generated(range: std::ops::Range<u64>) -> Vec<u8> {
    range.map(byte_at).collect()
}

/// Uploads `bytes` as a PNG and returns the media id.
async fn upload_png(server: &Server, user: &User, conversation: &str, bytes: Vec<u8>) -> String {
    let (status, body) =
        server.api().upload(user, conversation, Some("image/png"), "?name=tea.png", bytes).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["media"]["id"].as_str().expect("media id").to_owned()
}

async fn download(
    server: &Server,
    user: &User,
    media: &str,
    range: Option<&str>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let url = format!("{}/v1/media/{media}", server.url);
    let mut request = reqwest::Client::new().get(url).bearer_auth(&user.token);
    if let Some(range) = range {
        request = request.header(RANGE, range);
    }
    let response = request.send().await.expect("download request");
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.bytes().await.expect("download body").to_vec())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
}

/// Every regular file under `dir`: objects, and any staging file of an unfinished upload.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn media_dir(server: &Server) -> PathBuf {
    server.data_dir.join("media")
}

/// Waits (up to a few seconds) for the blob store directory to hold no file at all.
async fn assert_nothing_stored(server: &Server) {
    let dir = media_dir(server);
    for _ in 0..50 {
        if files_under(&dir).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("files left in the media store: {:?}", files_under(&dir));
}

/// How a hand-written upload frames its body.
enum Framing {
    Length(u64),
    Chunked,
}

/// Connects and sends the request line and headers of an upload; the body is the caller's.
async fn start_upload(
    server: &Server,
    user: &User,
    conversation: &str,
    framing: Framing,
) -> TcpStream {
    let mut stream = TcpStream::connect(server.address()).await.expect("connect");
    let framing = match framing {
        Framing::Length(length) => format!("content-length: {length}"),
        Framing::Chunked => "transfer-encoding: chunked".to_owned(),
    };
    let head = format!(
        "POST /v1/conversations/{conversation}/media HTTP/1.1\r\nhost: {}\r\n\
         authorization: Bearer {}\r\ncontent-type: video/mp4\r\n{framing}\r\n\r\n",
        server.address(),
        user.token
    );
    stream.write_all(head.as_bytes()).await.expect("request head");
    stream
}

/// Reads one response: its status and JSON body (every answer to an upload has a length).
async fn read_response(reader: &mut (impl AsyncRead + Unpin)) -> (u16, Value) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = reader.read_u8().await.expect("response head");
        head.push(byte);
    }
    let head = String::from_utf8(head).expect("ASCII head");
    let status = head[9..12].parse().expect("status code");
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned)
        })
        .map(|length| length.trim().parse().expect("content length"))
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.expect("response body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The server's resident memory, in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test]
async fn members_download_what_was_uploaded_and_strangers_get_nothing() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let dave = api.register("dave").await;
    let file = generated(0..300_000);

    let (status, uploaded) = api
        .upload(&ada, &conversation, Some("image/png"), "?name=th%C3%A9%20party.png", file.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    let media = &uploaded["media"];
    let id = media["id"].as_str().expect("id as a decimal string");
    assert!(id.parse::<u64>().is_ok(), "{id}");
    assert_eq!(media["conversation_id"], conversation.as_str());
    assert_eq!(media["uploader"], ada.id.as_str());
    assert_eq!(media["content_type"], "image/png");
    assert_eq!(media["size"], 300_000);
    assert_eq!(media["name"], "thé party.png");
    assert!(media.get("object_key").is_none(), "the store's key is the server's business");
    let token = uploaded["token"].as_str().expect("a consistency token");
    assert!(token.starts_with("messages/"), "{token}");

    let (status, headers, bytes) = download(&server, &bob, id, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bytes == file, "the member gets the very bytes that were uploaded");
    assert_eq!(header(&headers, "content-type"), "image/png");
    assert_eq!(header(&headers, "content-length"), "300000");
    assert_eq!(header(&headers, "accept-ranges"), "bytes");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert_eq!(
        header(&headers, "content-disposition"),
        "attachment; filename*=UTF-8''th%C3%A9%20party.png"
    );
    let (status, info) = api.get(&format!("/v1/media/{id}/info?after={token}"), &bob).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(&info, media);

    // To a stranger the upload does not exist, nor may they upload into the conversation.
    let (status, _, bytes) = download(&server, &dave, id, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let refused: Value = serde_json::from_slice(&bytes).expect("a JSON error");
    assert_eq!(refused["error"]["code"], "not_found", "{refused}");
    let (status, _) = api.get(&format!("/v1/media/{id}/info"), &dave).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) =
        api.upload(&dave, &conversation, Some("image/png"), "", vec![1, 2, 3]).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::NOT_FOUND, &json!("not_found")));
    let (status, _, _) = download(&server, &bob, "12345", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an unknown id");

    let (_, metrics) = api.call(reqwest::Method::GET, "/metrics", None, None).await;
    let metrics = metrics.as_str().expect("metrics text");
    assert!(metrics.contains("media_uploads_total 1"), "{metrics}");
    assert!(metrics.contains("media_upload_bytes_total 300000"), "{metrics}");
}

#[tokio::test]
async fn ranges_are_served_exactly() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let id = upload_png(&server, &ada, &conversation, generated(0..1000)).await;

    for (range, expected, content_range) in [
        ("bytes=10-19", 10..20, "bytes 10-19/1000"),
        ("bytes=990-", 990..1000, "bytes 990-999/1000"),
        ("bytes=-5", 995..1000, "bytes 995-999/1000"),
        ("bytes=900-5000", 900..1000, "bytes 900-999/1000"),
    ] {
        let (status, headers, bytes) = download(&server, &bob, &id, Some(range)).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(bytes, generated(expected.clone()), "{range}");
        assert_eq!(header(&headers, "content-range"), content_range);
        assert_eq!(header(&headers, "content-length"), (expected.end - expected.start).to_string());
        assert_eq!(header(&headers, "content-type"), "image/png");
    }

    let (status, headers, bytes) = download(&server, &bob, &id, Some("bytes=1000-")).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&headers, "content-range"), "bytes */1000");
    let error: Value = serde_json::from_slice(&bytes).expect("a JSON error");
    assert_eq!(error["error"]["code"], "range_not_satisfiable");

    // Several ranges at once are not served separately: the whole file is.
    let (status, _, bytes) = download(&server, &bob, &id, Some("bytes=0-1,5-6")).await;
    assert_eq!((status, bytes.len()), (StatusCode::OK, 1000));
}

#[tokio::test]
async fn messages_carry_uploads_of_their_own_conversation_only() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let carol = api.register("carol").await;
    let elsewhere = api.direct(&ada, &carol).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    let mut ada_ws = Ws::connect(&server, &ada).await;

    let photo = upload_png(&server, &ada, &conversation, generated(0..5000)).await;
    let clip = upload_png(&server, &ada, &conversation, generated(0..70)).await;
    // Attached straight after the upload: the send waits for the projection to hold them.
    let ack = ada_ws
        .request(json!({
            "op": "send",
            "conversation_id": conversation,
            "client_msg_id": "with-files",
            "body": "the photos",
            "attachments": [clip, photo],
        }))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");

    let pushed = bob_ws.next_event("message.sent").await;
    assert_eq!(pushed["data"]["message_id"], ack["message_id"]);
    assert_eq!(pushed["data"]["attachments"], json!([clip, photo]));
    let history = api.history(&bob, &conversation, ack["token"].as_str()).await;
    assert_eq!(history[0]["attachments"], json!([clip, photo]), "{:?}", history[0]);
    let (status, _, bytes) = download(&server, &bob, &photo, None).await;
    assert_eq!((status, bytes), (StatusCode::OK, generated(0..5000)));

    // A message without attachments says so.
    let plain = ada_ws.send_message(&conversation, "plain", "no files").await;
    let pushed = bob_ws.next_where(|f| f["data"]["message_id"] == plain["message_id"]).await;
    assert_eq!(pushed["data"]["attachments"], json!([]));

    // Over HTTP as well; and neither an unknown id nor another conversation's upload is taken.
    let other = upload_png(&server, &carol, &elsewhere, vec![7; 10]).await;
    let path = format!("/v1/conversations/{conversation}/messages");
    for (attachment, case) in [(other.as_str(), "another conversation's"), ("4242", "unknown")] {
        let body = json!({ "client_msg_id": case, "body": "x", "attachments": [attachment] });
        let (status, refused) = api.post(&path, &ada, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{case}: {refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("media {attachment}")), "{message}");
    }
    let body = json!({ "client_msg_id": "http", "body": "again", "attachments": [photo] });
    let (status, sent) = api.post(&path, &ada, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let body = json!({ "client_msg_id": "twice", "body": "x", "attachments": [photo, photo] });
    let (status, refused) = api.post(&path, &ada, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
}

#[tokio::test]
async fn refused_types_and_sizes_store_nothing() {
    let server = Server::start(&["--max-upload-bytes", "1048576"]);
    let api = server.api();
    let (ada, _bob, conversation) = api.pair().await;

    for content_type in [Some("text/html"), Some("not a type"), None] {
        let (status, body) = api.upload(&ada, &conversation, content_type, "", vec![1; 10]).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}: {body}");
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    let (status, body) =
        api.upload(&ada, &conversation, Some("image/png"), "?name=%07", vec![1; 10]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a control character in the name: {body}");

    // Refused from the declared length alone, before a byte of the body is sent.
    let mut stream = start_upload(&server, &ada, &conversation, Framing::Length(10 * MIB)).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream))
        .await
        .expect("an answer without the body");
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("1048576"), "{body}");

    // A chunked body has no declared length: it is cut off when it passes the limit.
    let stream = start_upload(&server, &ada, &conversation, Framing::Chunked).await;
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        let chunk = generated(0..64 * 1024);
        let frame =
            [format!("{:x}\r\n", chunk.len()).into_bytes(), chunk, b"\r\n".to_vec()].concat();
        // Four times the limit, unless the server stops listening first.
        for _ in 0..64 {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
    });
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut reader))
        .await
        .expect("an answer midway");
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    sending.abort();
    assert_nothing_stored(&server).await;

    // The limit itself is fine.
    let id = upload_png(&server, &ada, &conversation, generated(0..MIB)).await;
    assert_eq!(files_under(&media_dir(&server)).len(), 1);
    let (status, _, bytes) = download(&server, &ada, &id, Some("bytes=-3")).await;
    assert_eq!((status, bytes), (StatusCode::PARTIAL_CONTENT, generated(MIB - 3..MIB)));
}

#[tokio::test]
async fn an_upload_cut_off_halfway_leaves_nothing_and_the_server_serves_on() {
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;

    // Twelve of twenty announced MiB, then the client goes away.
    let mut stream = start_upload(&server, &ada, &conversation, Framing::Length(20 * MIB)).await;
    for part in 0..12 {
        stream.write_all(&generated(part * MIB..(part + 1) * MIB)).await.expect("half the body");
    }
    stream.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    assert_nothing_stored(&server).await;

    let (status, uploaded) =
        api.upload(&ada, &conversation, Some("audio/ogg"), "", generated(0..4096)).await;
    assert_eq!(status, StatusCode::CREATED, "the server still takes uploads: {uploaded}");
    let id = uploaded["media"]["id"].as_str().unwrap();
    let (status, _, bytes) = download(&server, &bob, id, None).await;
    assert_eq!((status, bytes), (StatusCode::OK, generated(0..4096)));
    let (_, info) = api.get(&format!("/v1/media/{id}/info"), &bob).await;
    assert_eq!(info["content_type"], "audio/ogg");
    assert_eq!(files_under(&media_dir(&server)).len(), 1, "only the finished upload");
}

#[tokio::test]
async fn an_upload_that_stalls_is_given_up() {
    let server = Server::start(&["--upload-idle-timeout", "1s"]);
    let api = server.api();
    let (ada, _bob, conversation) = api.pair().await;
    let mut stream = start_upload(&server, &ada, &conversation, Framing::Length(MIB)).await;
    stream.write_all(&generated(0..1000)).await.expect("a little of the body");
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream))
        .await
        .expect("an answer after the idle timeout");
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    assert_nothing_stored(&server).await;
}

/// A 400 MiB upload streams through: the server's memory grows by a few parts, not by the file.
#[tokio::test]
async fn memory_stays_flat_while_a_large_file_is_uploaded() {
    const SIZE: u64 = 400 * MIB;
    let server = Server::start(&[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    // A first upload warms up what any upload allocates.
    upload_png(&server, &ada, &conversation, generated(0..20 * MIB)).await;
    let baseline = resident(server.pid());

    let pid = server.pid();
    let done = Arc::new(AtomicBool::new(false));
    let sampling = tokio::spawn({
        let done = done.clone();
        async move {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(resident(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        }
    });
    let mut stream = start_upload(&server, &ada, &conversation, Framing::Length(SIZE)).await;
    let mut chunk = vec![0; MIB as usize];
    for part in 0..SIZE / MIB {
        for (i, byte) in chunk.iter_mut().enumerate() {
            *byte = byte_at(part * MIB + i as u64);
        }
        stream.write_all(&chunk).await.expect("the body");
    }
    let (status, uploaded) = read_response(&mut stream).await;
    done.store(true, Ordering::Relaxed);
    let peak = sampling.await.expect("sampling").max(resident(pid));
    assert_eq!(status, 201, "{uploaded}");
    assert_eq!(uploaded["media"]["size"], SIZE);

    let growth = peak.saturating_sub(baseline);
    eprintln!("resident memory: {} MiB before, {} MiB at the peak", baseline / MIB, peak / MIB);
    assert!(growth < 64 * MIB, "memory grew by {} MiB during a 400 MiB upload", growth / MIB);

    let id = uploaded["media"]["id"].as_str().unwrap();
    let (status, _, bytes) = download(&server, &bob, id, Some("bytes=300000000-300000099")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(bytes, generated(300_000_000..300_000_100), "bytes deep inside the file");
    let (status, _, bytes) = download(&server, &bob, id, Some("bytes=-10")).await;
    assert_eq!((status, bytes), (StatusCode::PARTIAL_CONTENT, generated(SIZE - 10..SIZE)));
}

#[tokio::test]
async fn uploads_outlive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &[]);
    let api = server.api();
    let (ada, bob, conversation) = api.pair().await;
    let id = upload_png(&server, &ada, &conversation, generated(0..123_456)).await;
    assert!(server.terminate(), "a clean stop");

    let server = Server::start_in(dir.path(), &[]);
    let (status, headers, bytes) = download(&server, &bob, &id, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bytes == generated(0..123_456), "the same bytes after the restart");
    assert_eq!(header(&headers, "content-type"), "image/png");
    let (status, info) = server.api().get(&format!("/v1/media/{id}/info"), &bob).await;
    assert_eq!((status, &info["name"]), (StatusCode::OK, &json!("tea.png")));
}
