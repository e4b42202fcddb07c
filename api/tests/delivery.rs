//! Delivery as users notice it, on real server processes and real sockets: whatever the traffic
//! and whatever happens to a node, a delivery worker or the feeds' pub/sub connection, every
//! socket is pushed every event of its conversations exactly once, each conversation's events in
//! the order they were logged, and a client that was away gets exactly what it missed when it
//! resumes — then live events.
//!
//! - A user offline for a minute (`SWITCHBOARD_TEST_OFFLINE_SECS`, default 60) while eighty
//!   others chat at 1,000 and at 10,000 messages a second (as fast as the machine allows up to
//!   that; the rate reached is printed) resumes with exactly what was sent, edited, deleted and
//!   changed in their conversations meanwhile, then live events.
//! - Every socket of a node stopped under traffic (`kill -9`, or SIGTERM) and started again on
//!   the same data and backends resumes from the last frame it processed with exactly what it
//!   missed, while other clients send as it goes down and comes back.
//! - On the shared engines only: a delivery worker killed mid-traffic, its partitions moving to
//!   the other worker, and the node's Redis pub/sub connection killed mid-traffic, lose and
//!   repeat nothing.
//!
//! What a user should get is what the senders were acknowledged. Every acknowledgement carries
//! the log position of its event (`topic/partition/offset`), and the events of one conversation
//! share a partition, so the order they must arrive in is known too (a retried send answered as
//! a duplicate does not carry its own position: where sends are retried, the order is the one
//! of the conversation's history, which must then hold exactly the acknowledged messages).
//! Events are compared as labels (`message.sent ID`, `conversation.member_added USER`) per
//! stream: the message events of one conversation, and separately its membership events, the two
//! orders the protocol promises. `presence.changed` and `typing` are no feed's business and are
//! not compared; neither is `conversation.created`, which every test logs before its sockets
//! connect, so that a socket is pushed it or not depending on when the delivery stage got to it.
//!
//! Traffic comes from one socket per sending user, each sending at a steady rate with up to a
//! window of sends unacknowledged, and from HTTP sends. No assertion is about time: waits are
//! deadlines for what must happen. When something is not delivered, the failure says whether the
//! user's feed holds it (read by resuming from the feed's start) and what the servers warned.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Api, Server, User, Ws, new_cluster_id, on_shared_engines};
use futures_util::StreamExt;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// No limit may refuse the traffic these tests make.
const UNLIMITED: [&str; 6] =
    ["--rate-messages", "off", "--rate-general", "off", "--rate-strict", "off"];

/// How long anything that must happen may take, however loaded the machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// How long a socket must stay quiet, once it has everything, before it counts as having got
/// nothing twice.
const QUIET: Duration = Duration::from_secs(2);

/// How often waits look again.
const POLL: Duration = Duration::from_millis(100);

/// How long the user of the offline tests is away: `SWITCHBOARD_TEST_OFFLINE_SECS`, default 60.
fn offline_for() -> Duration {
    let secs = std::env::var("SWITCHBOARD_TEST_OFFLINE_SECS")
        .ok()
        .map(|s| s.parse().expect("SWITCHBOARD_TEST_OFFLINE_SECS is a number of seconds"))
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// Whether the suite runs on shared engines (where a second node can share a first's data).
fn shared_engines() -> bool {
    std::env::var("SWITCHBOARD_TEST_BACKEND_ARGS").is_ok_and(|args| !args.trim().is_empty())
}

// ---------------------------------------------------------------------------------------------
// What users should get: the ledger of acknowledged writes, and what sockets were pushed.

/// The stream of a conversation's membership events (its message events' stream is its id).
fn members_stream(conversation: &str) -> String {
    format!("{conversation} members")
}

/// One pushed event as the tests compare it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Seen {
    conversation: String,
    stream: String,
    label: String,
}

/// The pushed event a frame is, if it is one these tests compare (see the module docs).
fn classify(frame: &Value) -> Option<Seen> {
    if frame["op"] != "event" {
        return None;
    }
    let kind = frame["type"].as_str()?;
    let data = &frame["data"];
    let conversation = data["conversation_id"].as_str().unwrap_or("none").to_owned();
    let (stream, label) = match kind {
        "presence.changed" | "typing" | "conversation.created" => return None,
        "message.sent" | "message.edited" | "message.deleted" => {
            (conversation.clone(), format!("{kind} {}", data["message_id"].as_str()?))
        }
        "conversation.member_added" | "conversation.member_removed" => {
            (members_stream(&conversation), format!("{kind} {}", data["user_id"].as_str()?))
        }
        // Nothing else is caused by these tests: it shows up as unexpected.
        other => (format!("{conversation} {other}"), frame.to_string()),
    };
    Some(Seen { conversation, stream, label })
}

/// One acknowledged write.
#[derive(Clone, Debug)]
struct Logged {
    label: String,
    /// The acknowledgement's consistency token.
    token: String,
    /// Its log position, `(topic, partition, offset)`; `None` for a retried send answered as a
    /// duplicate, whose token is not its own event's position.
    position: Option<(String, u32, u64)>,
}

fn position(token: &str) -> (String, u32, u64) {
    let parts: Vec<&str> = token.split('/').collect();
    match parts[..] {
        [topic, partition, offset] => (
            topic.to_owned(),
            partition.parse().expect("partition"),
            offset.parse().expect("offset"),
        ),
        _ => panic!("`{token}` is not a topic/partition/offset token"),
    }
}

/// Every write acknowledged, by stream.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<HashMap<String, Vec<Logged>>>>);

impl Ledger {
    /// Records an acknowledged write; a retry acknowledged again is recorded once.
    fn record(&self, stream: &str, token: &str, label: String, duplicate: bool) {
        let mut streams = self.0.lock().unwrap();
        let logged = streams.entry(stream.to_owned()).or_default();
        if logged.iter().any(|l| l.label == label) {
            return;
        }
        let position = (!duplicate).then(|| position(token));
        logged.push(Logged { label, token: token.to_owned(), position });
    }

    /// The labels of a stream, in the order they were logged.
    fn ordered(&self, stream: &str) -> Vec<String> {
        let streams = self.0.lock().unwrap();
        let Some(logged) = streams.get(stream) else { return Vec::new() };
        let mut positioned: Vec<((String, u32, u64), String)> = logged
            .iter()
            .map(|l| {
                let position = l.position.clone().unwrap_or_else(|| {
                    panic!("{}: a retried send's position is not known; order by history", l.label)
                });
                (position, l.label.clone())
            })
            .collect();
        positioned.sort();
        let (first, last) = (&positioned[0].0, &positioned[positioned.len() - 1].0);
        assert_eq!(
            (&first.0, first.1),
            (&last.0, last.1),
            "stream {stream} spans partitions: its order is not known"
        );
        positioned.into_iter().map(|(_, label)| label).collect()
    }

    /// The labels of a stream, in no particular order.
    fn labels(&self, stream: &str) -> HashSet<String> {
        let streams = self.0.lock().unwrap();
        streams.get(stream).map(|l| l.iter().map(|l| l.label.clone()).collect()).unwrap_or_default()
    }

    /// The token of the latest write of a stream, to read the read models after it.
    fn latest_token(&self, stream: &str) -> Option<String> {
        let streams = self.0.lock().unwrap();
        let logged = streams.get(stream)?;
        logged.iter().max_by_key(|l| position(&l.token).2).map(|l| l.token.clone())
    }

    /// The token a write of a stream was acknowledged with, to say where a missing one was.
    fn token_of(&self, stream: &str, label: &str) -> Option<String> {
        let streams = self.0.lock().unwrap();
        streams.get(stream)?.iter().find(|l| l.label == label).map(|l| l.token.clone())
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().values().map(Vec::len).sum()
    }
}

/// What is wrong with the stream `got` where `expected` was due, or `None` if they are equal.
fn stream_problem(got: &[String], expected: &[String]) -> Option<String> {
    if got == expected {
        return None;
    }
    let some = |labels: Vec<String>| {
        let shown: Vec<&String> = labels.iter().take(5).collect();
        format!("{} {shown:?}{}", labels.len(), if labels.len() > 5 { "…" } else { "" })
    };
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for label in got {
        *counts.entry(label).or_default() += 1;
    }
    let due: HashSet<&str> = expected.iter().map(String::as_str).collect();
    let missing: Vec<String> =
        expected.iter().filter(|l| !counts.contains_key(l.as_str())).cloned().collect();
    let twice: Vec<String> = got
        .iter()
        .filter(|l| counts.get(l.as_str()).is_some_and(|&n| n > 1))
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let unexpected: Vec<String> =
        got.iter().filter(|l| !due.contains(l.as_str())).cloned().collect();
    let first_difference = got.iter().zip(expected).position(|(g, e)| g != e);
    let out_of_order = first_difference
        .map(|i| format!("first difference at #{i}: got {:?}, expected {:?}", got[i], expected[i]));
    Some(format!(
        "got {} where {} were due; missing {}; more than once {}; unexpected {}; {}",
        got.len(),
        expected.len(),
        some(missing),
        some(twice),
        some(unexpected),
        out_of_order.unwrap_or_default()
    ))
}

/// What is wrong with the events `got`, by stream, where `expected` was due.
fn problems(who: &str, got: &[Seen], expected: &HashMap<String, Vec<String>>) -> Vec<String> {
    let mut by_stream: HashMap<&str, Vec<String>> = HashMap::new();
    for seen in got {
        by_stream.entry(&seen.stream).or_default().push(seen.label.clone());
    }
    let streams: HashSet<&str> =
        expected.keys().map(String::as_str).chain(by_stream.keys().copied()).collect();
    let mut problems = Vec::new();
    for stream in streams {
        let got = by_stream.get(stream).map(Vec::as_slice).unwrap_or_default();
        let due = expected.get(stream).map(Vec::as_slice).unwrap_or_default();
        if let Some(problem) = stream_problem(got, due) {
            problems.push(format!("{who}, stream {stream}: {problem}"));
        }
    }
    problems
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problems:\n{}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Setting up people and conversations.

/// Users, the conversations among them, and each user's conversations.
struct Layout {
    users: Vec<User>,
    /// Each conversation with its members (indices into `users`).
    conversations: Vec<(String, Vec<usize>)>,
    /// The conversations of each user.
    of_user: Vec<Vec<String>>,
}

impl Layout {
    /// `count` users, in direct conversations two by two (0 with 1, 2 with 3, …), and `groups`
    /// groups of `group_size`, the first of users 0.., the next of users `stride`.., and so on.
    async fn new(
        api: &Api,
        prefix: &str,
        count: usize,
        groups: usize,
        group_size: usize,
        stride: usize,
    ) -> Layout {
        let mut users = Vec::with_capacity(count);
        for chunk in (0..count).collect::<Vec<_>>().chunks(16) {
            users.extend(
                join_all(
                    chunk
                        .iter()
                        .map(|i| async move { api.register(&format!("{prefix}{i}")).await }),
                )
                .await,
            );
        }
        let mut conversations = Vec::new();
        let pairs: Vec<usize> = (0..count / 2).collect();
        for chunk in pairs.chunks(16) {
            let made =
                join_all(chunk.iter().map(|&p| api.direct(&users[2 * p], &users[2 * p + 1]))).await;
            for (&p, id) in chunk.iter().zip(made) {
                conversations.push((id, vec![2 * p, 2 * p + 1]));
            }
        }
        for g in 0..groups {
            let members: Vec<usize> = (g * stride..g * stride + group_size).collect();
            assert!(members.iter().all(|&m| m < count), "group {g} past the users");
            let others: Vec<&User> = members[1..].iter().map(|&m| &users[m]).collect();
            let id = api.group(&users[members[0]], &format!("{prefix} group {g}"), &others).await;
            conversations.push((id, members));
        }
        let mut of_user = vec![Vec::new(); count];
        for (id, members) in &conversations {
            for &m in members {
                of_user[m].push(id.clone());
            }
        }
        Layout { users, conversations, of_user }
    }
}

/// Waits until the node says it is ready: its delivery routes and its fan-out pushes.
async fn until_ready(server: &Server) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, ready) = server.api().call(Method::GET, "/readyz", None, None).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {ready}\n{}", server.log());
        tokio::time::sleep(POLL).await;
    }
}

/// Sends a message over HTTP and records it; returns its id.
async fn http_send(
    api: &Api,
    user: &User,
    conversation: &str,
    client_msg_id: &str,
    ledger: &Ledger,
) -> String {
    let path = format!("/v1/conversations/{conversation}/messages");
    let body = json!({ "client_msg_id": client_msg_id, "body": client_msg_id });
    let (status, sent) = api.post(&path, user, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "send {client_msg_id}: {sent}");
    let id = sent["message_id"].as_str().expect("message id").to_owned();
    let token = sent["token"].as_str().expect("token");
    ledger.record(conversation, token, format!("message.sent {id}"), false);
    id
}

/// Makes an HTTP call, trying again while it is answered `503 not_caught_up` (the read models
/// are behind the log, as they may be under heavy traffic), as a client does; returns the last
/// answer and how many times it was refused so.
async fn patiently(
    api: &Api,
    method: Method,
    path: &str,
    user: &User,
    body: Option<Value>,
) -> (StatusCode, Value, usize) {
    let deadline = Instant::now() + DEADLINE;
    let mut refused = 0;
    loop {
        let (status, answer) =
            api.call(method.clone(), path, Some(&user.token), body.clone()).await;
        if answer["error"]["code"] != "not_caught_up" || Instant::now() > deadline {
            return (status, answer, refused);
        }
        refused += 1;
        let wait = answer["error"]["retry_after_ms"].as_u64().unwrap_or(500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Edits (`Some(body)`) or deletes (`None`) a message over HTTP, and records it. An edit or a
/// delete refused as `not_caught_up` changed nothing, and is tried again.
async fn http_change(
    api: &Api,
    user: &User,
    conversation: &str,
    message: &str,
    body: Option<&str>,
    ledger: &Ledger,
) {
    let path = format!("/v1/conversations/{conversation}/messages/{message}");
    let (method, kind, request) = match body {
        Some(body) => (Method::PATCH, "message.edited", Some(json!({ "body": body }))),
        None => (Method::DELETE, "message.deleted", None),
    };
    let (status, answer, refused) = patiently(api, method, &path, user, request).await;
    assert!(status.is_success(), "{kind} {message}: {answer}");
    if refused > 0 {
        eprintln!("{kind} {message}: refused {refused} times as not_caught_up first");
    }
    let token = answer["token"].as_str().expect("token");
    ledger.record(conversation, token, format!("{kind} {message}"), false);
}

/// Adds `newcomer` to `group` over HTTP, and records it. The add waits for the read models to
/// hold it before answering; under heavy traffic that wait may end in `503 not_caught_up` after
/// the member was added: the add is tried again, and a `409` then says the first one counted.
async fn http_add_member(api: &Api, user: &User, group: &str, newcomer: &User, ledger: &Ledger) {
    let path = format!("/v1/conversations/{group}/members");
    let request = Some(json!({ "user_id": newcomer.id }));
    let (status, added, refused) = patiently(api, Method::POST, &path, user, request).await;
    let label = format!("conversation.member_added {}", newcomer.id);
    if refused > 0 {
        eprintln!("{label}: refused {refused} times as not_caught_up first, then {status} {added}");
    }
    match status {
        StatusCode::OK => {
            ledger.record(&members_stream(group), added["token"].as_str().unwrap(), label, false)
        }
        // Added by an attempt refused as not caught up: the one event of its stream, whose
        // position does not matter.
        StatusCode::CONFLICT if refused > 0 => {
            ledger.record(&members_stream(group), "conversations/0/0", label, false)
        }
        _ => panic!("adding {}: {status} {added}", newcomer.id),
    }
}

/// Sends one message over HTTP into every conversation of `layout`, from its first member.
async fn one_each_over_http(api: &Api, layout: &Layout, tag: &str, ledger: &Ledger) {
    futures_util::stream::iter(&layout.conversations)
        .map(|(conversation, members)| {
            let user = &layout.users[members[0]];
            async move {
                let client_msg_id = format!("{tag}-{}", user.handle);
                http_send(api, user, conversation, &client_msg_id, ledger).await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// Every event `user`'s feed holds (of those compared), read by resuming from its start.
async fn whole_feed(server: &Server, user: &User) -> Vec<Seen> {
    let ws = Ws::connect(server, user).await;
    let epoch = ws.ready["token"].as_str().unwrap().split('.').next().unwrap().to_owned();
    ws.close().await;
    let mut ws = Ws::resume(server, user, &format!("{epoch}.0.0")).await;
    assert_eq!(ws.ready["resumed"], true, "reading {}'s whole feed: {}", user.handle, ws.ready);
    let frames = ws.drain(Duration::from_secs(1)).await;
    frames.iter().filter_map(classify).collect()
}

// ---------------------------------------------------------------------------------------------
// Clients: one socket each, sending at a steady rate and reading everything pushed.

/// What one client does.
struct Plan {
    user: User,
    /// The conversations it sends into, in turn.
    sends_to: Vec<String>,
    /// Messages a second it sends while sending is on.
    rate: f64,
    /// How many of its sends may be unacknowledged at once.
    window: usize,
    /// The conversations whose events it keeps, to be compared.
    keeps: HashSet<String>,
}

/// What every client of a test shares.
#[derive(Default)]
struct Shared {
    sending: AtomicBool,
    stop: AtomicBool,
    /// Sends acknowledged, by every client.
    acked: AtomicU64,
    /// Anything refused; any fails the test.
    trouble: Mutex<Vec<String>>,
}

/// What a client's task works with.
#[derive(Clone)]
struct Link {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    ledger: Ledger,
    /// The events it was pushed (of the conversations it keeps), over all its connections.
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Its sends not yet acknowledged.
    in_flight: Arc<AtomicUsize>,
}

/// How a client's connection ended.
struct Ended {
    /// The token of the last frame it processed (the ready frame's, if no other came).
    last_token: String,
    /// Sends not acknowledged, to send again on the next connection.
    unacked: Vec<Value>,
    /// The frame saying how the socket closed, if it did (rather than being told to stop).
    closed: Option<Value>,
    /// How many sends it made, so that a next connection goes on numbering them.
    sent: u64,
}

/// Runs one connection of a client until it is told to stop or the socket closes.
async fn drive(mut ws: Ws, link: Link, mut retry: Vec<Value>, mut sent: u64) -> Ended {
    let Link { plan, shared, ledger, seen, in_flight } = link;
    let mut last_token = ws.ready["token"].as_str().expect("ready token").to_owned();
    let mut outstanding: HashMap<String, Value> = HashMap::new();
    // When sending started, and how many were sent since: the pace to keep.
    let mut pace: Option<(Instant, u64)> = None;
    let mut broken = false;
    retry.reverse();
    loop {
        in_flight.store(outstanding.len(), SeqCst);
        if shared.stop.load(SeqCst) {
            let unacked = outstanding.into_values().collect();
            return Ended { last_token, unacked, closed: None, sent };
        }
        let sending = shared.sending.load(SeqCst) && plan.rate > 0.0 && !plan.sends_to.is_empty();
        if !sending {
            pace = None;
        }
        let mut wait = POLL;
        let mut frame = None;
        if !broken && outstanding.len() < plan.window {
            frame = retry.pop();
            if frame.is_none() && sending {
                let (start, paced) = *pace.get_or_insert((Instant::now(), 0));
                let due = start + Duration::from_secs_f64(paced as f64 / plan.rate);
                let now = Instant::now();
                if now >= due {
                    pace = Some((start, paced + 1));
                    let conversation = &plan.sends_to[sent as usize % plan.sends_to.len()];
                    sent += 1;
                    let id = format!("{}-{sent}", plan.user.handle);
                    frame = Some(
                        json!({ "op": "send", "ref": id, "conversation_id": conversation, "client_msg_id": id, "body": format!("message {sent}") }),
                    );
                } else {
                    wait = wait.min(due - now);
                }
            }
        }
        if let Some(frame) = frame {
            let reference = frame["ref"].as_str().expect("ref").to_owned();
            outstanding.insert(reference, frame.clone());
            // A socket that is gone says how it ended on the next read.
            broken = !ws.try_send_json(frame).await;
            continue;
        }
        let Some(frame) = ws.next_frame_within(wait).await else { continue };
        match frame["op"].as_str() {
            Some("ack") => {
                let Some(send) = frame["ref"].as_str().and_then(|r| outstanding.remove(r)) else {
                    continue;
                };
                shared.acked.fetch_add(1, SeqCst);
                let conversation = send["conversation_id"].as_str().expect("conversation");
                let id = frame["message_id"].as_str().expect("message id");
                let token = frame["token"].as_str().expect("token");
                ledger.record(
                    conversation,
                    token,
                    format!("message.sent {id}"),
                    frame["duplicate"] == true,
                );
            }
            Some("error") => {
                let trouble = format!("{}: refused: {frame}", plan.user.handle);
                shared.trouble.lock().unwrap().push(trouble);
                if let Some(reference) = frame["ref"].as_str() {
                    outstanding.remove(reference);
                }
            }
            Some("closed") => {
                in_flight.store(0, SeqCst);
                let unacked = outstanding.into_values().collect();
                return Ended { last_token, unacked, closed: Some(frame), sent };
            }
            Some("event") => {
                if let Some(token) = frame["token"].as_str() {
                    last_token = token.to_owned();
                }
                if let Some(event) = classify(&frame)
                    && plan.keeps.contains(&event.conversation)
                {
                    seen.lock().unwrap().push(event);
                }
            }
            _ => {}
        }
    }
}

/// One client: its plan, what it was pushed, and the task driving its current connection.
struct Client {
    link: Link,
    task: Option<JoinHandle<Ended>>,
}

/// The clients of a test.
struct Crowd {
    clients: Vec<Client>,
    shared: Arc<Shared>,
    ledger: Ledger,
}

impl Crowd {
    /// Connects a socket for each plan and starts driving it (not sending until told to).
    async fn connect(server: &Server, plans: Vec<Plan>, ledger: &Ledger) -> Crowd {
        let shared = Arc::new(Shared::default());
        let mut clients = Vec::with_capacity(plans.len());
        for plan in plans {
            let link = Link {
                plan: Arc::new(plan),
                shared: shared.clone(),
                ledger: ledger.clone(),
                seen: Arc::default(),
                in_flight: Arc::default(),
            };
            clients.push(Client { link, task: None });
        }
        for chunk in clients.chunks_mut(32) {
            let sockets =
                join_all(chunk.iter().map(|c| Ws::connect(server, &c.link.plan.user))).await;
            for (client, ws) in chunk.iter_mut().zip(sockets) {
                client.task = Some(tokio::spawn(drive(ws, client.link.clone(), Vec::new(), 0)));
            }
        }
        Crowd { clients, shared, ledger: ledger.clone() }
    }

    fn sending(&self, on: bool) {
        self.shared.sending.store(on, SeqCst);
    }

    fn assert_untroubled(&self) {
        let trouble = self.shared.trouble.lock().unwrap();
        assert!(trouble.is_empty(), "clients were refused:\n{}", trouble.join("\n"));
    }

    /// Fails if a client's socket closed while it should be running.
    async fn assert_running(&mut self) {
        for client in &mut self.clients {
            if client.task.as_ref().is_some_and(JoinHandle::is_finished) {
                let ended = client.task.take().expect("task").await.expect("client task");
                panic!("{}'s socket closed: {:?}", client.link.plan.user.handle, ended.closed);
            }
        }
    }

    /// Waits until every send made is acknowledged.
    async fn settle(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.assert_untroubled();
            self.assert_running().await;
            let left: usize = self.clients.iter().map(|c| c.link.in_flight.load(SeqCst)).sum();
            if left == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{left} sends still unacknowledged");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every client was pushed every acknowledged write of the conversations it
    /// keeps, then for a quiet while in which anything pushed twice would show. On failure, the
    /// message says whether the feeds hold what is missing (as read from `servers[0]`), and
    /// what the servers warned about.
    async fn until_delivered(&mut self, servers: &[&Server]) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.assert_untroubled();
            self.assert_running().await;
            // (client, stream, labels missing)
            let mut lacking: Vec<(usize, String, Vec<String>)> = Vec::new();
            for (i, client) in self.clients.iter().enumerate() {
                let seen: HashSet<String> =
                    client.link.seen.lock().unwrap().iter().map(|s| s.label.clone()).collect();
                for conversation in &client.link.plan.keeps {
                    for stream in [conversation.clone(), members_stream(conversation)] {
                        let due = self.ledger.labels(&stream);
                        let mut missing: Vec<String> = due.difference(&seen).cloned().collect();
                        missing.sort();
                        if !missing.is_empty() {
                            lacking.push((i, stream, missing));
                        }
                    }
                }
            }
            if lacking.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                panic!("{}", self.undelivered(&lacking, servers).await);
            }
            tokio::time::sleep(POLL * 5).await;
        }
        tokio::time::sleep(QUIET).await;
        self.assert_running().await;
    }

    /// Says what was not delivered, whether the users' feeds hold it, and what the servers
    /// warned about.
    async fn undelivered(
        &self,
        lacking: &[(usize, String, Vec<String>)],
        servers: &[&Server],
    ) -> String {
        let mut report =
            format!("not delivered within {DEADLINE:?} ({} streams lacking):\n", lacking.len());
        let mut feeds_read = 0;
        for (i, stream, missing) in lacking.iter().take(20) {
            let user = &self.clients[*i].link.plan.user;
            let some: Vec<String> = missing
                .iter()
                .take(4)
                .map(|l| format!("{l} ({})", self.ledger.token_of(stream, l).unwrap_or_default()))
                .collect();
            report.push_str(&format!(
                "{} lacks {} of {stream}: {some:?}\n",
                user.handle,
                missing.len()
            ));
            if feeds_read < 3 {
                feeds_read += 1;
                let feed = whole_feed(servers[0], user).await;
                let in_feed: Vec<usize> =
                    missing.iter().map(|l| feed.iter().filter(|s| &s.label == l).count()).collect();
                let labels: Vec<&String> = feed.iter().map(|s| &s.label).collect();
                let distinct: HashSet<&String> = labels.iter().copied().collect();
                let seen = self.clients[*i].link.seen.lock().unwrap().clone();
                let gone: Vec<&String> =
                    seen.iter().map(|s| &s.label).filter(|l| !distinct.contains(l)).collect();
                report.push_str(&format!(
                    "  {}'s feed holds {} events ({} distinct); how often it holds each missing one: {in_feed:?}; \
                     it holds none of {} events the client was pushed: {:?}\n",
                    user.handle,
                    labels.len(),
                    distinct.len(),
                    gone.len(),
                    gone.iter().take(4).collect::<Vec<_>>()
                ));
            }
        }
        let warnings: Vec<String> = servers
            .iter()
            .flat_map(|s| {
                let log = s.log();
                log.lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        report.push_str(&format!(
            "server warnings ({}, the last 40):\n{}",
            warnings.len(),
            warnings[warnings.len().saturating_sub(40)..].join("\n")
        ));
        report
    }

    /// Tells every client to stop and waits for them.
    async fn stop(&mut self) -> Vec<Ended> {
        self.shared.stop.store(true, SeqCst);
        let ended = self.join().await;
        self.shared.stop.store(false, SeqCst);
        self.assert_untroubled();
        ended
    }

    /// Waits for every client's connection to end (its socket closed, or told to stop).
    async fn join(&mut self) -> Vec<Ended> {
        let tasks = self.clients.iter_mut().map(|c| c.task.take().expect("a running client"));
        let all = join_all(tasks.map(|task| tokio::time::timeout(DEADLINE, task))).await;
        all.into_iter()
            .map(|ended| ended.expect("a client's connection never ended").expect("client task"))
            .collect()
    }

    /// Reconnects every client to `server` with the token of the last frame it processed, all
    /// at once, and goes on driving them (their unacknowledged sends first, sent again).
    /// Returns what is wrong with the ready frames: each must say it resumed from that token.
    async fn resume(&mut self, server: &Server, ended: Vec<Ended>) -> Vec<String> {
        let sockets =
            join_all(self.clients.iter().zip(&ended).map(|(client, ended)| {
                Ws::resume(server, &client.link.plan.user, &ended.last_token)
            }))
            .await;
        let mut problems = Vec::new();
        for ((client, ended), ws) in self.clients.iter_mut().zip(ended).zip(sockets) {
            if ws.ready["resumed"] != true || ws.ready["token"] != ended.last_token.as_str() {
                let user = &client.link.plan.user.handle;
                problems.push(format!("{user} resumed from {}: {}", ended.last_token, ws.ready));
            }
            let link = client.link.clone();
            client.task = Some(tokio::spawn(drive(ws, link, ended.unacked, ended.sent)));
        }
        problems
    }
}

/// Plans for every user of `layout`: each sends at `rate` into its conversations in turn and
/// keeps all their events.
fn plans(layout: &Layout, rate: f64, window: usize) -> Vec<Plan> {
    layout
        .users
        .iter()
        .zip(&layout.of_user)
        .map(|(user, conversations)| Plan {
            user: user.clone(),
            sends_to: conversations.clone(),
            rate,
            window,
            keeps: conversations.iter().cloned().collect(),
        })
        .collect()
}

/// What every client of `layout` was due, by stream, in the order the ledger knows.
fn due_by_ledger(ledger: &Ledger, conversations: &[String]) -> HashMap<String, Vec<String>> {
    let mut due = HashMap::new();
    for conversation in conversations {
        for stream in [conversation.clone(), members_stream(conversation)] {
            let labels = ledger.ordered(&stream);
            if !labels.is_empty() {
                due.insert(stream, labels);
            }
        }
    }
    due
}

fn print_rate(test: &str, what: &str, count: u64, took: Duration, target: Option<f64>) {
    let rate = count as f64 / took.as_secs_f64();
    let target = target.map(|t| format!(" (target {t:.0}/s)")).unwrap_or_default();
    eprintln!("{test}: {what}: {count} messages in {took:.1?}: {rate:.0}/s{target}");
}

// ---------------------------------------------------------------------------------------------
// A user away while others chat.

/// The others of the offline tests: forty direct conversations and two groups of ten.
const OTHERS: usize = 80;

/// T's side of the offline tests.
#[derive(Clone)]
struct Away {
    partners: Vec<User>,
    /// T's direct conversation with each partner.
    directs: Vec<String>,
    /// T's group: partners 0 (who made it), 1 and 2, and T.
    group: String,
    /// Added to the group while T is away.
    newcomer: User,
}

/// What T's partners do while T is away, until `until`: a message every 200 ms into one of T's
/// direct conversations, each partner in turn, and one every 400 ms into T's group, from
/// partners 1 and 2 in turn — each sent without waiting for the ones before, so that a busy
/// server slows none of them down — and, meanwhile, an edit and a delete in the group, an edit
/// in a direct conversation and a newcomer added to the group (done by then in any case).
async fn while_away(api: &Api, away: &Away, ledger: &Ledger, until: Instant) {
    let changes = {
        let (api, ledger) = (api.clone(), ledger.clone());
        let Away { partners, directs, group, newcomer } = away.clone();
        tokio::spawn(async move {
            let pause = || tokio::time::sleep(Duration::from_millis(500));
            let edited = http_send(&api, &partners[1], &group, "to-edit", &ledger).await;
            let deleted = http_send(&api, &partners[2], &group, "to-delete", &ledger).await;
            let direct = http_send(&api, &partners[3], &directs[3], "to-edit", &ledger).await;
            pause().await;
            http_change(&api, &partners[1], &group, &edited, Some("edited"), &ledger).await;
            pause().await;
            http_add_member(&api, &partners[0], &group, &newcomer, &ledger).await;
            pause().await;
            http_change(&api, &partners[2], &group, &deleted, None, &ledger).await;
            pause().await;
            http_change(&api, &partners[3], &directs[3], &direct, Some("edited"), &ledger).await;
        })
    };
    let mut sends = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut n = 0;
    while Instant::now() < until {
        tick.tick().await;
        n += 1;
        let p = n % away.partners.len();
        let mut due = vec![(away.partners[p].clone(), away.directs[p].clone())];
        if n % 2 == 0 {
            due.push((away.partners[1 + (n / 2) % 2].clone(), away.group.clone()));
        }
        for (sender, conversation) in due {
            let (api, ledger) = (api.clone(), ledger.clone());
            sends.spawn(async move {
                http_send(&api, &sender, &conversation, &format!("away-{n}"), &ledger).await;
            });
        }
    }
    changes.await.expect("the edits, the delete and the newcomer");
    while let Some(sent) = sends.join_next().await {
        sent.expect("a send to T");
    }
}

async fn offline_while_others_chat(test: &str, target: f64) {
    let offline = offline_for();
    let server = Server::start(&UNLIMITED);
    until_ready(&server).await;
    let api = server.api();
    let ledger = Ledger::default();

    let others = Layout::new(&api, "o", OTHERS, 2, 10, 10).await;
    let t = api.register("t").await;
    let newcomer = api.register("x").await;
    let partners: Vec<User> = others.users[..5].to_vec();
    let directs = join_all(partners.iter().map(|p| api.direct(p, &t))).await;
    let group = api.group(&partners[0], "away", &[&t, &partners[1], &partners[2]]).await;
    let away = Away { partners, directs, group, newcomer };
    let mut of_t = away.directs.clone();
    of_t.push(away.group.clone());

    // The others send as fast as they may up to the target; the partners, among them, watch
    // T's conversations, to tell when everything T is due has been delivered.
    let mut plans = plans(&others, target / OTHERS as f64, 32);
    for (i, plan) in plans.iter_mut().enumerate() {
        plan.keeps.clear();
        if i < away.partners.len() {
            plan.keeps.insert(away.directs[i].clone());
            if i < 3 {
                plan.keeps.insert(away.group.clone());
            }
        }
    }
    let mut crowd = Crowd::connect(&server, plans, &ledger).await;

    // T is pushed a first message, processes it, and goes away.
    let mut ws = Ws::connect(&server, &t).await;
    let hello = http_send(&api, &away.partners[0], &away.directs[0], "hello", &ledger).await;
    let mut token = ws.ready["token"].as_str().unwrap().to_owned();
    let mut processed_hello = false;
    while let Some(frame) = ws
        .next_frame_within(if processed_hello { Duration::from_millis(300) } else { DEADLINE })
        .await
    {
        assert_ne!(frame["op"], "closed", "T's socket closed");
        if let Some(t) = frame["token"].as_str() {
            token = t.to_owned();
        }
        processed_hello |= frame["data"]["message_id"] == hello.as_str();
    }
    assert!(processed_hello, "T was not pushed the first message");
    ws.close().await;
    let before: HashMap<String, Vec<String>> = due_by_ledger(&ledger, &of_t);

    crowd.sending(true);
    let started = Instant::now();
    while_away(&api, &away, &ledger, started + offline).await;
    crowd.sending(false);
    let took = started.elapsed();
    crowd.settle().await;
    let sent = crowd.shared.acked.load(SeqCst);
    print_rate(test, "the others' traffic while T was away", sent, took, Some(target));
    // Everything T missed has been routed (its partners were pushed it): T's feed holds it.
    crowd.until_delivered(&[&server]).await;
    let missed: HashMap<String, Vec<String>> = due_by_ledger(&ledger, &of_t)
        .into_iter()
        .map(|(stream, labels)| {
            let seen = before.get(&stream).cloned().unwrap_or_default();
            (stream, labels.into_iter().filter(|l| !seen.contains(l)).collect())
        })
        .collect();
    let missed_count: usize = missed.values().map(Vec::len).sum();
    eprintln!("{test}: T missed {missed_count} events in {} streams", missed.len());

    let mut ws = Ws::resume(&server, &t, &token).await;
    assert_eq!(ws.ready["resumed"], true, "{}", ws.ready);
    assert_eq!(ws.ready["token"], token.as_str(), "{}", ws.ready);
    // Then, live: one more message in each of T's conversations.
    let mut live: HashMap<String, Vec<String>> = HashMap::new();
    let senders = away.partners.iter().chain([&away.partners[1]]);
    for (i, (conversation, sender)) in of_t.iter().zip(senders).enumerate() {
        let id = http_send(&api, sender, conversation, &format!("live-{i}"), &ledger).await;
        live.entry(conversation.clone()).or_default().push(format!("message.sent {id}"));
    }
    let live_count: usize = live.values().map(Vec::len).sum();

    let mut got: Vec<Seen> = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while got.len() < missed_count + live_count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = ws.next_frame_within(left).await else {
            panic!(
                "T got {} of {} events within {DEADLINE:?}",
                got.len(),
                missed_count + live_count
            )
        };
        assert_ne!(frame["op"], "closed", "T's socket closed: {frame}");
        got.extend(classify(&frame));
    }
    let after = ws.drain(QUIET).await;
    assert!(after.iter().all(|f| f["op"] != "closed"), "T's socket closed: {after:?}");
    got.extend(after.iter().filter_map(classify));

    let mut due = missed.clone();
    for (stream, labels) in &live {
        due.entry(stream.clone()).or_default().extend(labels.iter().cloned());
    }
    assert_no_problems("what T got on resuming", &problems("T", &got, &due));
    let live_labels: HashSet<&String> = live.values().flatten().collect();
    let first_live = got.iter().position(|s| live_labels.contains(&s.label));
    let last_missed = got.iter().rposition(|s| !live_labels.contains(&s.label));
    assert!(
        last_missed < first_live,
        "live events came before missed ones: last missed at #{last_missed:?}, first live at #{first_live:?}"
    );
    crowd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_offline_for_a_minute_resumes_with_exactly_what_it_missed_at_1x_traffic() {
    offline_while_others_chat("1x", 1_000.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_offline_for_a_minute_resumes_with_exactly_what_it_missed_at_10x_traffic() {
    offline_while_others_chat("10x", 10_000.0).await;
}

// ---------------------------------------------------------------------------------------------
// A node restarted under traffic.

/// Every conversation's message order as its history has it (by `seq`, the order of the log),
/// after checking that history holds exactly the messages acknowledged.
async fn due_by_history(
    api: &Api,
    layout: &Layout,
    ledger: &Ledger,
) -> HashMap<String, Vec<String>> {
    let mut due = HashMap::new();
    for (conversation, members) in &layout.conversations {
        let after = ledger.latest_token(conversation);
        let user = &layout.users[members[0]];
        let mut history = api.history(user, conversation, after.as_deref()).await;
        history.sort_by_key(|m| m["seq"].as_u64().expect("seq"));
        let labels: Vec<String> = history
            .iter()
            .map(|m| format!("message.sent {}", m["id"].as_str().expect("id")))
            .collect();
        let stored: HashSet<String> = labels.iter().cloned().collect();
        assert_eq!(
            stored,
            ledger.labels(conversation),
            "conversation {conversation} holds exactly what was acknowledged"
        );
        due.insert(conversation.clone(), labels);
    }
    due
}

/// How a node goes down before it starts again.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// `kill -9`: the sockets are reset, and nothing is flushed.
    Kill,
    /// SIGTERM: the sockets are closed with 1001, and the node shuts down cleanly.
    Terminate,
}

/// 200 users, each with one socket, chat; the node goes down as `stop` says, and other clients
/// send while it is down (on the shared engines, through a second API node) and as it comes
/// back; every socket reconnects at once with the token of the last frame it processed, and
/// must get exactly what it missed — the two connections together exactly every message of its
/// conversations, each conversation's in the order of its history — and be told it resumed.
async fn restart_under_traffic(test: &str, stop: Stop) {
    let mut node = Server::start(&UNLIMITED);
    until_ready(&node).await;
    let api = node.api();
    let ledger = Ledger::default();
    // 200 users, 100 direct conversations and ten groups of eight.
    let layout = Layout::new(&api, "r", 200, 10, 8, 20).await;
    // On the shared engines, a second API node takes sends while the first is down.
    let helper = shared_engines().then(|| {
        let id = std::fs::read_to_string(node.data_dir.join("backend-id")).expect("backend id");
        let mut args = vec!["--role", "api", "--node-id", "7"];
        args.extend(UNLIMITED);
        Server::start_in_cluster(&id, &args)
    });

    let mut crowd = Crowd::connect(&node, plans(&layout, 1.5, 8), &ledger).await;
    crowd.sending(true);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    crowd.assert_running().await;
    match stop {
        Stop::Kill => node.kill(),
        Stop::Terminate => assert!(node.terminate(), "unclean stop:\n{}", node.log()),
    }
    let ended = crowd.join().await;
    let acked = crowd.shared.acked.load(SeqCst);
    print_rate(test, "before the stop", acked, started.elapsed(), None);
    for (client, ended) in crowd.clients.iter().zip(&ended) {
        assert!(ended.closed.is_some(), "{} was not disconnected", client.link.plan.user.handle);
    }
    let processed: Vec<usize> =
        crowd.clients.iter().map(|c| c.link.seen.lock().unwrap().len()).collect();
    let unacked: usize = ended.iter().map(|e| e.unacked.len()).sum();
    eprintln!(
        "{test}: the sockets processed {} events before the stop; {unacked} sends unacknowledged",
        processed.iter().sum::<usize>()
    );
    if let Some(helper) = &helper {
        until_ready(helper).await;
        one_each_over_http(&helper.api(), &layout, "down", &ledger).await;
    }

    let node = Server::start_in(&node.data_dir, &UNLIMITED);
    let api = node.api();
    // Everyone reconnects at once, while HTTP sends come in.
    let (refused, ()) = tokio::join!(
        crowd.resume(&node, ended),
        one_each_over_http(&api, &layout, "back", &ledger)
    );
    assert_no_problems("resumes", &refused);
    let resumed_at = Instant::now();
    let acked_before = crowd.shared.acked.load(SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    crowd.sending(false);
    crowd.settle().await;
    let acked = crowd.shared.acked.load(SeqCst) - acked_before;
    print_rate(test, "after the restart", acked, resumed_at.elapsed(), None);
    crowd.until_delivered(&[&node]).await;
    crowd.stop().await;

    let due = due_by_history(&api, &layout, &ledger).await;
    eprintln!("{test}: {} writes acknowledged in all", ledger.len());
    let mut all = Vec::new();
    for (i, client) in crowd.clients.iter().enumerate() {
        let user = &client.link.plan.user.handle;
        let expected: HashMap<String, Vec<String>> =
            layout.of_user[i].iter().map(|c| (c.clone(), due[c].clone())).collect();
        let who = format!("{user} (processed {} before the stop)", processed[i]);
        all.extend(problems(&who, &client.link.seen.lock().unwrap(), &expected));
    }
    assert_no_problems("what the sockets got across the restart", &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_of_a_restarted_node_resumes_with_exactly_what_it_missed() {
    restart_under_traffic("killed node", Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_of_a_node_stopped_and_started_again_resumes_with_exactly_what_it_missed() {
    restart_under_traffic("stopped node", Stop::Terminate).await;
}

// ---------------------------------------------------------------------------------------------
// Shared engines only: delivery workers and the feeds' subscriptions failing under traffic.

/// Sixty users in thirty direct conversations and three groups of eight, all connected to
/// `node` and sending about 180 messages a second in all.
async fn sixty_chatting(node: &Server, ledger: &Ledger) -> (Layout, Crowd) {
    let layout = Layout::new(&node.api(), "s", 60, 3, 8, 20).await;
    let crowd = Crowd::connect(node, plans(&layout, 3.0, 16), ledger).await;
    (layout, crowd)
}

/// Every client got every acknowledged write of its conversations once, in order.
fn assert_exactly_once_in_order(what: &str, layout: &Layout, crowd: &Crowd) {
    let mut all = Vec::new();
    for (i, client) in crowd.clients.iter().enumerate() {
        let expected = due_by_ledger(&crowd.ledger, &layout.of_user[i]);
        let seen = client.link.seen.lock().unwrap();
        all.extend(problems(&client.link.plan.user.handle, &seen, &expected));
    }
    assert_no_problems(what, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_stage_moving_between_workers_under_traffic_loses_and_repeats_nothing() {
    const TEST: &str =
        "the_delivery_stage_moving_between_workers_under_traffic_loses_and_repeats_nothing";
    if !on_shared_engines(TEST) {
        return;
    }
    let id = new_cluster_id();
    let node = |role: &str, node_id: &str| {
        let mut args = vec!["--role", role, "--node-id", node_id];
        args.extend(UNLIMITED);
        Server::start_in_cluster(&id, &args)
    };
    let mut first = node("projector", "100");
    let second = node("projector", "101");
    let api_node = node("api", "1");
    for server in [&first, &second, &api_node] {
        until_ready(server).await;
    }
    let ledger = Ledger::default();
    let (layout, mut crowd) = sixty_chatting(&api_node, &ledger).await;

    crowd.sending(true);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let routed = "delivery_events_total{lane=\"delivery\"}";
    let (by_first, by_second) = (metric(&first, routed).await, metric(&second, routed).await);
    first.kill();
    // Its partitions move to the other worker once the group notices (its session times out).
    tokio::time::sleep(Duration::from_secs(20)).await;
    crowd.sending(false);
    crowd.settle().await;
    let acked = crowd.shared.acked.load(SeqCst);
    print_rate(TEST, "traffic", acked, started.elapsed(), Some(180.0));
    crowd.until_delivered(&[&api_node, &first, &second]).await;
    eprintln!(
        "{TEST}: events routed: by the killed worker {by_first} before it died; by the other \
         {by_second} before, {} in all",
        metric(&second, routed).await
    );
    crowd.stop().await;
    assert_exactly_once_in_order("what the sockets got while a worker died", &layout, &crowd);
}

/// The sum of the samples of a counter on `/metrics` whose line starts with `series` (a name,
/// perhaps with labels); 0 when there is none yet.
async fn metric(server: &Server, series: &str) -> f64 {
    let (status, text) = server.api().call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let text = text.as_str().expect("metrics text").to_owned();
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, sample| sum + sample)
}

/// Sends one command to the Redis at `url` (`redis://host:port…`) and returns its reply: an
/// integer or a bulk string, as text.
async fn redis_command(url: &str, args: &[&str]) -> String {
    let address = url.trim_start_matches("redis://").split(['/', '?']).next().expect("address");
    let stream = tokio::net::TcpStream::connect(address).await.expect("connecting to Redis");
    let mut stream = BufReader::new(stream);
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(command.as_bytes()).await.expect("writing to Redis");
    let mut line = String::new();
    stream.read_line(&mut line).await.expect("reading from Redis");
    let line = line.trim_end();
    match line.split_at(1) {
        (":", number) => number.to_owned(),
        ("$", length) => {
            let mut bulk = vec![0; length.parse::<usize>().expect("length") + 2];
            stream.read_exact(&mut bulk).await.expect("reading from Redis");
            String::from_utf8_lossy(&bulk).trim_end().to_owned()
        }
        _ => panic!("Redis answered {args:?} with {line}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_feed_subscription_loses_and_repeats_nothing() {
    const TEST: &str = "a_broken_feed_subscription_loses_and_repeats_nothing";
    if !on_shared_engines(TEST) {
        return;
    }
    let redis = std::env::var("SWITCHBOARD_REDIS").expect("SWITCHBOARD_REDIS, the engines' Redis");
    let node = Server::start(&UNLIMITED);
    until_ready(&node).await;
    let ledger = Ledger::default();
    let (layout, mut crowd) = sixty_chatting(&node, &ledger).await;

    crowd.sending(true);
    let started = Instant::now();
    // Other test servers may share this Redis: they lose their subscriptions too, and recover
    // the same way.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let subscribers = redis_command(&redis, &["CLIENT", "LIST", "TYPE", "pubsub"]).await;
        let killed = redis_command(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        eprintln!("{TEST}: killed {killed} pub/sub connections of {}", subscribers.lines().count());
        assert_ne!(killed, "0", "no subscription to break: {subscribers}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    crowd.sending(false);
    crowd.settle().await;
    let acked = crowd.shared.acked.load(SeqCst);
    print_rate(TEST, "traffic", acked, started.elapsed(), Some(180.0));
    crowd.until_delivered(&[&node]).await;
    let gaps = metric(&node, "fanout_gaps_total").await;
    eprintln!("{TEST}: the node read {gaps} gaps in feeds from Redis");
    crowd.stop().await;
    assert_exactly_once_in_order(
        "what the sockets got while the subscription broke",
        &layout,
        &crowd,
    );
}
