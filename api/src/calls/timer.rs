//! The call timer: a process manager that follows the calls topic and logs what the clock or an
//! absence decides. A call nobody answers within the ring timeout is missed; a caller who goes
//! away while it rings cancels it; a participant whose last socket has been gone past the grace
//! period leaves (a 1:1 call ends); a room left empty closes.
//!
//! The timer reads the topic in a consumer group of its own, so each partition has one timer at
//! a time however many nodes run one. It keeps no state but what it reads: it commits the offset
//! of the first event of the oldest call still live in each partition, so after a restart or a
//! rebalance the timer given a partition reads every live call of it again. It acts on a call
//! only once it has read its partition to the end, so it never decides an outcome that is
//! already logged; and what it decides it claims like any API node does (see the parent module),
//! so an accept racing the timeout either wins or is told the call was missed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_ingest::log::{Cursor, LogReader};
use switchboard_ingest::{Origin, now_ms};
use switchboard_projector::store::calls::{self, Call, CallKind, CallState};
use switchboard_schemas::{
    CallEnded, CallId, CallMissed, Codec, Event, ParticipantLeft, Payload, Position, Topic, UserId,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{OUTCOME_TTL, ended_key, outcome, release_lines, release_room};
use crate::state::AppState;

/// How long an outcome claimed but not logged (its node died in between) stands before the
/// timer logs one itself; also how long the timer waits to read back what it logged before it
/// tries again. Longer than an append may take.
const SETTLE: Duration = Duration::from_secs(15);

/// How often live calls are checked.
const SWEEP: Duration = Duration::from_millis(500);

/// How long a room may stay empty: a room's first participant joins just after it starts.
const EMPTY_ROOM: Duration = Duration::from_secs(2);

/// The consumer group of the ring timers, one per node that serves clients.
pub const GROUP: &str = "call-timer";

/// What the timer logs for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Action {
    /// Nobody answered in time.
    Miss,
    /// The caller went away while it rang.
    Cancel,
    /// A user of an answered call went away.
    Hangup,
    /// A room participant went away.
    Leave(UserId),
    /// The room is empty.
    Close,
}

struct Tracked {
    call: Call,
    /// Where the call's first event sits: its partition is read again from here after a restart.
    first: Position,
    /// Since when each user of the call has had no socket.
    absent_since: HashMap<UserId, Instant>,
    empty_since: Option<Instant>,
    /// What was logged and not yet read back, and when.
    requested: HashMap<Action, Instant>,
}

#[derive(Default)]
struct Live {
    calls: HashMap<CallId, Tracked>,
    /// How far the calls topic has been read.
    read: Cursor,
}

impl Live {
    fn fold(&mut self, position: Position, event: &Event) {
        self.read.advance(position);
        let Some(id) = calls::call_of(&event.payload) else { return };
        let tracked = self.calls.get(&id);
        let Some(call) = calls::fold(tracked.map(|t| &t.call), event) else { return };
        if !call.is_live() {
            self.calls.remove(&id);
            return;
        }
        let empty = call.kind == CallKind::Room && call.participants.is_empty();
        let tracked = self.calls.entry(id).or_insert_with(|| Tracked {
            call: call.clone(),
            first: position,
            absent_since: HashMap::new(),
            empty_since: None,
            requested: HashMap::new(),
        });
        tracked.call = call;
        tracked.empty_since = match (empty, tracked.empty_since) {
            (true, since) => since.or(Some(Instant::now())),
            (false, _) => None,
        };
    }

    /// Everything before the first event of the oldest live call of each partition is done.
    fn commit_point(&self) -> Cursor {
        let mut point = self.read.clone();
        for tracked in self.calls.values() {
            let first = tracked.first;
            if point.get(first.topic, first.partition).is_some_and(|next| next > first.offset) {
                point.set(first.topic, first.partition, first.offset);
            }
        }
        point
    }
}

/// Runs the timer until `stop` is cancelled.
pub async fn run(state: AppState, stop: CancellationToken) -> anyhow::Result<()> {
    let log = state.ingest.log().clone();
    let start = Cursor::beginning(log.as_ref(), &[Topic::Calls]);
    let reader = log.join_group(GROUP, &[Topic::Calls], start).await?;
    let live = Arc::new(Mutex::new(Live::default()));
    tokio::select! {
        _ = stop.cancelled() => Ok(()),
        result = follow(reader, live.clone()) => result,
        () = sweep(&state, &live) => Ok(()),
    }
}

async fn follow(mut reader: Box<dyn LogReader>, live: Arc<Mutex<Live>>) -> anyhow::Result<()> {
    let codec = Codec::new();
    loop {
        let records = reader.next_batch(256).await?;
        let commit = {
            let mut live = live.lock().expect("timer lock");
            for record in records {
                match codec.decode(&record.value) {
                    Ok(event) => live.fold(record.position, &event),
                    Err(error) => {
                        live.read.advance(record.position);
                        tracing::error!(position = %record.position, %error, "call timer skips undecodable record");
                    }
                }
            }
            live.commit_point()
        };
        reader.commit(&commit).await?;
    }
}

async fn sweep(state: &AppState, live: &Mutex<Live>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let due = due_actions(state, live).await;
        if due.is_empty() {
            continue;
        }
        let Ok(ends) = state.ingest.log().end_offsets(Topic::Calls).await else { continue };
        for (call, action) in due {
            // Only with the whole partition read: an outcome already logged comes first.
            let read_all = {
                let live = live.lock().expect("timer lock");
                let next = live.read.get(Topic::Calls, call.partition).unwrap_or(0);
                next >= ends.get(call.partition as usize).copied().unwrap_or(0)
            };
            if !read_all {
                continue;
            }
            match act(state, &call.call, action).await {
                Ok(true) => {
                    metrics::counter!("call_timer_actions_total", "action" => action.name())
                        .increment(1);
                    let mut live = live.lock().expect("timer lock");
                    if let Some(tracked) = live.calls.get_mut(&call.call.id) {
                        tracked.requested.insert(action, Instant::now());
                    }
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(call = %call.call.id, ?action, %error, "call timer could not act; retrying")
                }
            }
        }
    }
}

struct Due {
    call: Call,
    partition: u32,
}

/// The actions the clock and the users' presence call for now.
async fn due_actions(state: &AppState, live: &Mutex<Live>) -> Vec<(Due, Action)> {
    let watched: Vec<UserId> = {
        let live = live.lock().expect("timer lock");
        if live.calls.is_empty() {
            return Vec::new();
        }
        let users = live.calls.values().flat_map(|t| watched_users(&t.call).to_vec());
        users.collect::<HashSet<_>>().into_iter().collect()
    };
    // Without the presence backend nobody counts as gone: an outage must not end calls.
    let online: HashSet<UserId> = match state.presence.status(&watched).await {
        Ok(status) => status.into_iter().filter(|s| s.online).map(|s| s.user_id).collect(),
        Err(_) => watched.iter().copied().collect(),
    };
    let (now, now_ms) = (Instant::now(), now_ms());
    let config = &state.config;
    let mut due = Vec::new();
    let mut live = live.lock().expect("timer lock");
    for tracked in live.calls.values_mut() {
        let call = &tracked.call;
        let watched = watched_users(call);
        tracked.absent_since.retain(|user, _| watched.contains(user) && !online.contains(user));
        for user in watched.iter().filter(|user| !online.contains(user)) {
            tracked.absent_since.entry(*user).or_insert(now);
        }
        let gone: Vec<UserId> = tracked
            .absent_since
            .iter()
            .filter(|(_, since)| now - **since >= config.call_grace.0)
            .map(|(user, _)| *user)
            .collect();
        let ring_deadline = call.started_at + config.ring_timeout.0.as_millis() as i64;
        let mut actions = Vec::new();
        match (call.kind, call.state) {
            (CallKind::Direct, CallState::Ringing) if now_ms >= ring_deadline => {
                actions.push(Action::Miss)
            }
            (CallKind::Direct, CallState::Ringing) if !gone.is_empty() => {
                actions.push(Action::Cancel)
            }
            (CallKind::Direct, CallState::Active) if !gone.is_empty() => {
                actions.push(Action::Hangup)
            }
            (CallKind::Room, _) => {
                actions.extend(gone.iter().map(|user| Action::Leave(*user)));
                if tracked.empty_since.is_some_and(|since| now - since >= EMPTY_ROOM) {
                    actions.push(Action::Close);
                }
            }
            _ => {}
        }
        tracked.requested.retain(|_, at| now - *at < SETTLE);
        for action in actions.into_iter().filter(|a| !tracked.requested.contains_key(a)) {
            due.push((Due { call: call.clone(), partition: tracked.first.partition }, action));
        }
    }
    due
}

/// Whose absence matters: both users of an answered call, a room's participants, and only the
/// caller of a ringing call (a callee with no socket lets it ring out).
fn watched_users(call: &Call) -> &[UserId] {
    match (call.kind, call.state) {
        (CallKind::Direct, CallState::Ringing) => call.initiator.as_slice(),
        _ => call.live_users(),
    }
}

/// Logs what `action` decides, unless someone settled the call first. `Ok(true)`: logged.
async fn act(state: &AppState, call: &Call, action: Action) -> anyhow::Result<bool> {
    let id = call.id;
    let claims = &state.coordination;
    let event: Payload = match action {
        Action::Miss => {
            match claims.claim(&outcome(id), "missed", OUTCOME_TTL).await? {
                None => {}
                // Claimed (by us before a restart, or by a node that died before logging).
                Some(claimed)
                    if claimed == "missed"
                        || now_ms() >= call.started_at + settle_deadline(state) => {}
                Some(_) => return Ok(false),
            }
            CallMissed { call_id: id }.into()
        }
        // The timer's own claims say so: a claim it made before failing to log is retried.
        Action::Cancel => {
            if !ours(claims.claim(&outcome(id), CANCELLED, OUTCOME_TTL).await?, CANCELLED) {
                return Ok(false);
            }
            CallEnded { call_id: id, reason: "disconnected".to_owned() }.into()
        }
        Action::Hangup => {
            if !ours(claims.claim(&ended_key(id), HUNG_UP, OUTCOME_TTL).await?, HUNG_UP) {
                return Ok(false);
            }
            CallEnded { call_id: id, reason: "disconnected".to_owned() }.into()
        }
        Action::Leave(user) => ParticipantLeft { call_id: id, user_id: user }.into(),
        Action::Close => CallEnded { call_id: id, reason: "empty".to_owned() }.into(),
    };
    // Lines first, as the API nodes do: users told of the end may call again at once.
    match action {
        Action::Leave(user) => release_lines(state, &[user]).await,
        Action::Close => {
            if let Some(conversation) = call.conversation_id {
                release_room(state, conversation).await;
            }
        }
        _ => release_lines(state, &call.involved).await,
    }
    state.ingest.append(&Origin::system(GROUP), event).await?;
    Ok(true)
}

/// What the timer claims when it ends a call; the first word is what callers are told.
const CANCELLED: &str = "cancelled by-timer";
const HUNG_UP: &str = "disconnected by-timer";

/// Whether a claim attempt found the claim free, or held by the timer itself already.
fn ours(held: Option<String>, value: &str) -> bool {
    held.is_none_or(|held| held == value)
}

/// Milliseconds after a call started past which a claimed outcome that never got logged no
/// longer holds the call ringing.
fn settle_deadline(state: &AppState) -> i64 {
    (state.config.ring_timeout.0 + SETTLE).as_millis() as i64
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Miss => "missed",
            Action::Cancel => "cancelled",
            Action::Hangup => "hung_up",
            Action::Leave(_) => "left",
            Action::Close => "closed",
        }
    }
}
