//! The WebSocket clients: one task per socket, sending on its timetable and timing what comes
//! back.
//!
//! Each message carries its own send time in its `client_msg_id` (`sender-seq-micros`, the
//! micros counted from a process-wide epoch), so the recipients, which are sockets of the same
//! process, can time its delivery without asking anyone. The sender times the ack from its own
//! table of messages in flight, keyed by the frame's `ref`.
//!
//! A socket keeps reading at all times, also before and after the timed part: the server pushes
//! presence events as soon as a socket opens, and a socket that does not read its pushes is
//! eventually disconnected as too slow.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::{IntoClientRequest, uri_mode};
use tokio_tungstenite::tungstenite::error::UrlError;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::stream::Mode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::endpoint::{Endpoint, Incoming, PONG};
use super::pacing::{Schedule, first_send_offset};
use super::tally::Tally;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a new socket may take to get its `ready` frame.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the run is; every socket watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Sockets are opening: read, but do not send yet.
    Connecting,
    /// Send on the schedule; stop sending when the measured window is over.
    Running(Schedule),
    /// Close the socket.
    Stopping,
}

/// What every socket of this process shares.
pub struct Shared {
    /// Send times in `client_msg_id`s are microseconds since this instant.
    pub epoch: Instant,
    tally: Mutex<Tally>,
    /// Sends not yet answered, by an ack or an error.
    pub awaiting_acks: AtomicU64,
    /// Deliveries still expected, one per recipient of every message sent.
    pub awaiting_deliveries: AtomicU64,
    pub body: String,
    pub interval: Duration,
    pub max_in_flight: usize,
}

impl Shared {
    pub fn new(body_bytes: usize, interval: Duration, max_in_flight: usize) -> Shared {
        Shared {
            epoch: Instant::now(),
            tally: Mutex::new(Tally::default()),
            awaiting_acks: AtomicU64::new(0),
            awaiting_deliveries: AtomicU64::new(0),
            body: "x".repeat(body_bytes),
            interval,
            max_in_flight,
        }
    }

    /// Whether every message sent so far has been acked and delivered (or failed).
    pub fn settled(&self) -> bool {
        self.awaiting_acks.load(Ordering::Relaxed) == 0
            && self.awaiting_deliveries.load(Ordering::Relaxed) == 0
    }

    /// What the sockets counted, with what is still outstanding; for when they have all stopped.
    pub fn take_tally(&self, connected: u64) -> Tally {
        Tally {
            connected,
            unacked: self.awaiting_acks.load(Ordering::Relaxed),
            undelivered: self.awaiting_deliveries.load(Ordering::Relaxed),
            ..std::mem::take(&mut *self.tally())
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        // A socket task that panicked left counters, not broken invariants: keep counting.
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Identifies a message within a process: the sending socket's slot and its sequence number.
type MessageKey = (u32, u64);

/// A conversation as its sockets share it: which messages still wait for some recipients.
pub struct Room {
    pub id: String,
    /// Members other than the sender.
    recipients: u32,
    waiting: Mutex<HashMap<MessageKey, u32>>,
}

impl Room {
    pub fn new(id: String, members: usize) -> Room {
        Room {
            id,
            recipients: members.saturating_sub(1) as u32,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<MessageKey, u32>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a message about to be sent. Called before the frame is written, so that a quick
    /// delivery always finds it.
    fn expect(&self, key: MessageKey) {
        self.waiting().insert(key, self.recipients);
    }

    /// Notes one delivery; true when it was the last recipient, None for an unknown message.
    fn arrived(&self, key: MessageKey) -> Option<bool> {
        let mut waiting = self.waiting();
        let remaining = waiting.get_mut(&key)?;
        *remaining -= 1;
        let last = *remaining == 0;
        if last {
            waiting.remove(&key);
        }
        Some(last)
    }

    /// Drops a message that will never be delivered; returns how many deliveries it still
    /// expected.
    fn forget(&self, key: MessageKey) -> u32 {
        self.waiting().remove(&key).unwrap_or(0)
    }
}

/// The `client_msg_id` of a load message: who sent it, its number, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tag {
    sender: u32,
    seq: u64,
    sent_micros: u64,
}

impl Tag {
    fn key(&self) -> MessageKey {
        (self.sender, self.seq)
    }

    fn encode(&self) -> String {
        format!("{}-{}-{}", self.sender, self.seq, self.sent_micros)
    }

    fn parse(text: &str) -> Option<Tag> {
        let mut parts = text.split('-');
        let tag = Tag {
            sender: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
            sent_micros: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(tag)
    }
}

#[derive(Serialize)]
struct SendFrame<'a> {
    op: &'static str,
    #[serde(rename = "ref")]
    reference: u64,
    conversation_id: &'a str,
    client_msg_id: &'a str,
    body: &'a str,
}

/// The fields of server frames the generator looks at.
#[derive(Deserialize)]
struct ServerFrame<'a> {
    op: &'a str,
    #[serde(rename = "ref", default)]
    reference: Option<u64>,
    #[serde(rename = "type", default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
}

#[derive(Deserialize)]
struct MessageSentData<'a> {
    client_msg_id: &'a str,
}

/// Opens a socket of `endpoint` for `token` from `source` and waits for the server's `ready`
/// frame.
pub async fn connect(
    endpoint: Endpoint,
    ws_base: &str,
    token: &str,
    source: Option<IpAddr>,
) -> anyhow::Result<Socket> {
    let (socket, _) = open(endpoint, &endpoint.url(ws_base, token), source).await?;
    Ok(socket)
}

/// The local addresses the sockets connect from, each socket taking the next in turn.
///
/// One source address has only the ephemeral port range (about 28,000 ports here) for its
/// connections to one server port, and ports in `TIME_WAIT` from an earlier run stay taken for
/// a minute; with several loopback addresses, as many sockets as the process may hold fit with
/// room to spare, and the server sees several clients' addresses rather than one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// `Some(n)`: 127.0.0.1 to 127.0.0.n; `None`: whatever the system chooses.
    loopbacks: Option<u8>,
}

impl Sources {
    pub fn loopbacks(count: Option<u8>) -> Sources {
        Sources { loopbacks: count }
    }

    /// The address socket `index` binds to before connecting, if any.
    pub fn of(self, index: usize) -> Option<IpAddr> {
        let count = usize::from(self.loopbacks?);
        let last_octet = u8::try_from(1 + index % count).expect("at most 255 addresses");
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet)))
    }
}

/// What a `ready` frame says about the connection it opens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Ready {
    /// Where the connection's stream begins: the resume token to keep until the first event.
    #[serde(default)]
    pub token: String,
    /// Present on a connection that passed `resume`: whether the resume is served.
    #[serde(default)]
    pub resumed: Option<bool>,
}

/// Opens the WebSocket of `endpoint` at `url` (a full URL, see [`Endpoint::url`]), its TCP
/// connection bound to `source` when given, and waits for its `ready` frame.
pub async fn open(
    endpoint: Endpoint,
    url: &str,
    source: Option<IpAddr>,
) -> anyhow::Result<(Socket, Ready)> {
    let mut socket =
        handshake(url, source).await.map_err(explain_refusal).context("opening a WebSocket")?;
    if let Some(greeting) = endpoint.greeting() {
        socket.send(Message::Text(greeting.into())).await.context("greeting the server")?;
    }
    let ready = async {
        while let Some(message) = socket.next().await {
            if let Message::Text(text) = message? {
                let text = match endpoint.read(&text) {
                    Incoming::Frame(frame) => frame,
                    Incoming::Ping => {
                        socket.send(Message::Text(PONG.into())).await?;
                        continue;
                    }
                    Incoming::Closed(reason) => anyhow::bail!("the server {reason}"),
                    Incoming::Nothing => continue,
                };
                let frame: ServerFrame<'_> = serde_json::from_str(text)
                    .with_context(|| format!("the server sent a frame that is not JSON: {text}"))?;
                if frame.op == "ready" {
                    return serde_json::from_str::<Ready>(text)
                        .with_context(|| format!("unreadable `ready` frame: {text}"));
                }
            }
        }
        anyhow::bail!("the server closed the socket before it was ready")
    };
    let ready =
        tokio::time::timeout(READY_TIMEOUT, ready).await.context("no `ready` frame in time")??;
    Ok((socket, ready))
}

/// Connects to the server of `url` from `source` and upgrades the connection to a WebSocket.
async fn handshake(url: &str, source: Option<IpAddr>) -> Result<Socket, tungstenite::Error> {
    let request = url.into_client_request()?;
    // Plain TCP only: tokio-tungstenite is built here without TLS.
    if matches!(uri_mode(request.uri())?, Mode::Tls) {
        return Err(UrlError::TlsFeatureNotEnabled.into());
    }
    let stream = tcp_connect(request.uri(), source).await?;
    // Small buffers: with thousands of sockets per process, the default 128 KiB each would
    // make the generator, not the server, the thing that runs out of memory.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0);
    let (socket, _) = tokio_tungstenite::client_async_with_config(
        request,
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await?;
    Ok(socket)
}

/// A TCP connection to the host and port of `uri`, from `source` when given.
async fn tcp_connect(uri: &Uri, source: Option<IpAddr>) -> Result<TcpStream, tungstenite::Error> {
    let host = uri.host().ok_or(UrlError::NoHostName)?;
    // An IPv6 literal comes in brackets.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let server = tokio::net::lookup_host((host, port))
        .await?
        .find(|server| source.is_none_or(|source| source.is_ipv4() == server.is_ipv4()))
        .ok_or_else(|| UrlError::UnableToConnect(format!("{host}:{port}")))?;
    let socket = if server.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A refused upgrade carries the server's JSON error in its body; that is the useful part.
fn explain_refusal(error: tungstenite::Error) -> anyhow::Error {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let hint = if response.status() == 429 {
                " (a load test opens many sockets from few addresses: run the node with \
                 --rate-sockets off --rate-sockets-ip off and a high --max-sockets-per-user)"
            } else {
                ""
            };
            anyhow::anyhow!(
                "the server refused the upgrade with {}: {body}{hint}",
                response.status()
            )
        }
        other => other.into(),
    }
}

/// One socket's state while it runs.
pub struct Client {
    /// Position among this process's sockets: names its messages and spreads its first sends.
    slot: u32,
    count: usize,
    room: Arc<Room>,
    shared: Arc<Shared>,
    stage: watch::Receiver<Stage>,
    endpoint: Endpoint,
    sink: SplitSink<Socket, Message>,
    stream: SplitStream<Socket>,
    seq: u64,
    /// Send time of each message not yet answered, by `ref`.
    in_flight: HashMap<u64, Instant>,
}

impl Client {
    pub fn new(
        endpoint: Endpoint,
        socket: Socket,
        index: usize,
        count: usize,
        room: Arc<Room>,
        shared: Arc<Shared>,
        stage: watch::Receiver<Stage>,
    ) -> Client {
        let (sink, stream) = socket.split();
        Client {
            slot: index as u32,
            count,
            room,
            shared,
            stage,
            endpoint,
            sink,
            stream,
            seq: 0,
            in_flight: HashMap::new(),
        }
    }

    /// Runs the socket until the stage says stop or the connection is lost.
    pub async fn run(mut self) {
        let mut schedule: Option<Schedule> = None;
        let mut ticker: Option<Interval> = None;
        let lost = loop {
            tokio::select! {
                changed = self.stage.changed() => {
                    if changed.is_err() {
                        break None;
                    }
                    let stage = *self.stage.borrow_and_update();
                    match stage {
                        Stage::Connecting => {}
                        Stage::Running(timed) => {
                            schedule = Some(timed);
                            ticker = Some(self.ticker(&timed));
                        }
                        Stage::Stopping => break None,
                    }
                }
                due = next_tick(&mut ticker) => {
                    let Some(timed) = schedule.filter(|s| s.sending(due)) else {
                        ticker = None;
                        continue;
                    };
                    if let Err(error) = self.send(&timed).await {
                        break Some(format!("send failed: {error}"));
                    }
                }
                message = self.stream.next() => match message {
                    Some(Ok(Message::Text(text))) => match self.endpoint.read(&text) {
                        Incoming::Frame(frame) => self.receive(frame, schedule.as_ref()),
                        Incoming::Ping => {
                            if let Err(error) = self.sink.send(Message::Text(PONG.into())).await {
                                break Some(format!("send failed: {error}"));
                            }
                        }
                        Incoming::Closed(reason) => break Some(reason),
                        Incoming::Nothing => {}
                    },
                    Some(Ok(Message::Close(frame))) => {
                        break Some(frame.map_or_else(
                            || "closed by the server".to_owned(),
                            |f| format!("closed by the server ({} {})", u16::from(f.code), f.reason),
                        ));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => break Some(format!("read failed: {error}")),
                    None => break Some("connection lost".to_owned()),
                },
            }
        };
        match lost {
            Some(reason) => {
                // The answers to what this socket had in flight will never come.
                self.shared.awaiting_acks.fetch_sub(self.in_flight.len() as u64, Ordering::Relaxed);
                self.shared.tally().count_drop(reason);
            }
            None => {
                // Best effort: the run is over, and a server that is gone is no longer measured.
                let _ = self.sink.close().await;
            }
        }
    }

    fn ticker(&self, schedule: &Schedule) -> Interval {
        let first = schedule.start
            + first_send_offset(self.slot as usize, self.count, self.shared.interval);
        let mut ticker = tokio::time::interval_at(first.into(), self.shared.interval);
        // Open loop: a socket that fell behind its timetable catches up rather than lowering
        // the offered rate.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        ticker
    }

    async fn send(&mut self, schedule: &Schedule) -> Result<(), tungstenite::Error> {
        let now = Instant::now();
        if self.in_flight.len() >= self.shared.max_in_flight {
            if schedule.measures(now) {
                self.shared.tally().skipped += 1;
            }
            return Ok(());
        }
        self.seq += 1;
        let tag = Tag {
            sender: self.slot,
            seq: self.seq,
            sent_micros: now.duration_since(self.shared.epoch).as_micros() as u64,
        };
        let frame = SendFrame {
            op: "send",
            reference: self.seq,
            conversation_id: &self.room.id,
            client_msg_id: &tag.encode(),
            body: &self.shared.body,
        };
        let frame = serde_json::to_string(&frame).expect("send frames serialise");
        let frame = self.endpoint.op("send", self.seq, frame);
        self.room.expect(tag.key());
        self.in_flight.insert(self.seq, now);
        self.shared.awaiting_acks.fetch_add(1, Ordering::Relaxed);
        self.shared.awaiting_deliveries.fetch_add(self.room.recipients.into(), Ordering::Relaxed);
        if schedule.measures(now) {
            self.shared.tally().sent += 1;
        }
        self.sink.send(Message::Text(frame.into())).await
    }

    fn receive(&mut self, text: &str, schedule: Option<&Schedule>) {
        let measures = |at: Instant| schedule.is_some_and(|s| s.measures(at));
        let Ok(frame) = serde_json::from_str::<ServerFrame<'_>>(text) else {
            self.shared.tally().count_error("unreadable_frame");
            return;
        };
        match frame.op {
            "ack" => {
                let Some(sent_at) = frame.reference.and_then(|r| self.in_flight.remove(&r)) else {
                    return;
                };
                let now = Instant::now();
                self.shared.awaiting_acks.fetch_sub(1, Ordering::Relaxed);
                let mut tally = self.shared.tally();
                if measures(now) {
                    tally.acked += 1;
                }
                if measures(sent_at) {
                    tally.ack_latency.record(now - sent_at);
                }
            }
            "error" => {
                let code = frame.error.as_ref().map_or("unknown", |e| e.code.as_str());
                self.shared.tally().count_error(code);
                if let Some(seq) = frame.reference
                    && self.in_flight.remove(&seq).is_some()
                {
                    // Refused, so never stored: no delivery will follow either.
                    self.shared.awaiting_acks.fetch_sub(1, Ordering::Relaxed);
                    let expected = self.room.forget((self.slot, seq));
                    self.shared.awaiting_deliveries.fetch_sub(expected.into(), Ordering::Relaxed);
                }
            }
            "event" if frame.kind == Some("message.sent") => {
                let tag = frame
                    .data
                    .and_then(|data| serde_json::from_str::<MessageSentData<'_>>(data.get()).ok())
                    .and_then(|data| Tag::parse(data.client_msg_id));
                // The sender's own copy is not a delivery; anything untagged is not ours.
                let Some(tag) = tag.filter(|tag| tag.sender != self.slot) else {
                    return;
                };
                let Some(last) = self.room.arrived(tag.key()) else {
                    return;
                };
                let now = Instant::now();
                let sent_at = self.shared.epoch + Duration::from_micros(tag.sent_micros);
                self.shared.awaiting_deliveries.fetch_sub(1, Ordering::Relaxed);
                let mut tally = self.shared.tally();
                if measures(now) {
                    tally.deliveries += 1;
                    if last {
                        tally.delivered += 1;
                    }
                }
                if let Some(second) = schedule.and_then(|s| s.second_of(sent_at)) {
                    tally.record_delivery(second, now - sent_at);
                }
            }
            _ => {}
        }
    }
}

/// The next tick of `ticker`, or never when there is none.
async fn next_tick(ticker: &mut Option<Interval>) -> Instant {
    match ticker {
        Some(ticker) => ticker.tick().await.into_std(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_reject_foreign_ids() {
        let tag = Tag { sender: 17, seq: 42, sent_micros: 1_234_567 };
        assert_eq!(tag.encode(), "17-42-1234567");
        assert_eq!(Tag::parse(&tag.encode()), Some(tag));
        assert!(tag.encode().len() <= 64, "client_msg_id is limited to 64 bytes");
        for foreign in ["", "abc", "1-2", "1-2-3-4", "1-x-3", "-1-2-3"] {
            assert_eq!(Tag::parse(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn a_message_is_delivered_when_its_last_recipient_has_it() {
        let room = Room::new("1".into(), 3);
        room.expect((0, 1));
        room.expect((0, 2));
        assert_eq!(room.arrived((0, 1)), Some(false));
        assert_eq!(room.arrived((0, 1)), Some(true));
        assert_eq!(room.arrived((0, 1)), None, "a message is completed once");
        assert_eq!(room.arrived((9, 9)), None);
        assert_eq!(room.arrived((0, 2)), Some(false));
        assert_eq!(room.forget((0, 2)), 1);
        assert_eq!(room.forget((0, 2)), 0);
    }

    #[test]
    fn sockets_take_the_source_addresses_in_turn() {
        let sources = Sources::loopbacks(Some(3));
        let addresses: Vec<String> =
            (0..4).map(|index| sources.of(index).unwrap().to_string()).collect();
        assert_eq!(addresses, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]);
        assert_eq!(Sources::loopbacks(Some(255)).of(254).unwrap().to_string(), "127.0.0.255");
        assert_eq!(Sources::default().of(7), None, "the system chooses");
    }

    #[test]
    fn server_frames_are_read_for_what_matters() {
        let ack: ServerFrame<'_> = serde_json::from_str(
            r#"{"op":"ack","ref":7,"message_id":"9","token":"messages.0=1","duplicate":false}"#,
        )
        .unwrap();
        assert_eq!((ack.op, ack.reference), ("ack", Some(7)));
        let error: ServerFrame<'_> = serde_json::from_str(
            r#"{"op":"error","ref":null,"error":{"code":"rate_limited","message":"slow down","retry_after_ms":5}}"#,
        )
        .unwrap();
        assert_eq!(error.reference, None);
        assert_eq!(error.error.unwrap().code, "rate_limited");
        let event: ServerFrame<'_> = serde_json::from_str(
            r#"{"op":"event","type":"message.sent","at":1,"data":{"conversation_id":"5","client_msg_id":"1-2-3","body":"x"},"token":"t"}"#,
        )
        .unwrap();
        let data: MessageSentData<'_> = serde_json::from_str(event.data.unwrap().get()).unwrap();
        assert_eq!(Tag::parse(data.client_msg_id).map(|t| t.key()), Some((1, 2)));
    }

    #[test]
    fn ready_frames_say_where_the_stream_begins_and_whether_it_resumed() {
        let fresh: Ready = serde_json::from_str(
            r#"{"heartbeat_ms":25000,"op":"ready","session_id":"s","token":"17.1.17","user_id":"5"}"#,
        )
        .unwrap();
        assert_eq!(fresh, Ready { token: "17.1.17".into(), resumed: None });
        let refused: Ready = serde_json::from_str(
            r#"{"heartbeat_ms":25000,"op":"ready","resumed":false,"session_id":"s","sync_required":true,"token":"17.9.20","user_id":"5"}"#,
        )
        .unwrap();
        assert_eq!(refused.resumed, Some(false));
    }
}
