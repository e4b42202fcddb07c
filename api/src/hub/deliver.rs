//! The delivery stage: follows the log, decides who should see each event, and appends it to
//! those users' feeds (or, for typing and presence, publishes it to whoever is connected now).
//!
//! It runs where the projector runs, as a consumer group: with several such nodes, each routes
//! the partitions the group gives it. Its offsets are committed only once the feeds hold a
//! batch, and feeds skip what they already took, so a stage that crashes or loses a partition
//! appends nothing twice and leaves nothing out.
//!
//! Two lanes, each a group of its own: one for conversations, messages, calls and signals, one
//! for the presence topic. Routing a presence change reads the user's contacts and their online
//! state, which is where a slow store or a slow Redis would be felt; in a lane of its own, that
//! only delays typing and presence, never a message.
//!
//! Before it routes anything, a lane waits for the read models to hold everything before where
//! it starts, since it reads memberships from them. An event it cannot route (the store does not
//! answer) or cannot append (the feeds do not) is retried, with backoff, until it can: the events
//! behind it wait, and nobody loses any. [`Stage::state`] says what a lane is doing, for
//! `/readyz` and the log.

use std::sync::Arc;
use std::time::Duration;

use switchboard_ingest::log::{Cursor, Log, LogError};
use switchboard_projector::Progress;
use switchboard_projector::feed::{Delivery, Feeds};
use switchboard_projector::presence::Presence;
use switchboard_projector::store::ReadModel;
use switchboard_schemas::{Codec, Event, Topic};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Memberships, Routed, Router, StageState};

/// A lane of the stage: the topics it routes and the consumer group it routes them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lane {
    pub group: &'static str,
    pub topics: &'static [Topic],
}

/// The lane of everything kept in feeds.
pub const HISTORY: Lane = Lane {
    group: "delivery",
    topics: &[Topic::Conversations, Topic::Messages, Topic::Calls, Topic::Signals],
};

/// The lane of typing, presence and live locations.
pub const PRESENCE: Lane = Lane { group: "delivery-presence", topics: &[Topic::Presence] };

/// How often a lane still waiting for the read models says so in the log.
const WAITING_REPORT: Duration = Duration::from_secs(10);
/// The first and the longest wait before a failed step is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_LONGEST: Duration = Duration::from_secs(5);
/// How many records a lane routes at once.
const BATCH: usize = 1024;

/// Why a lane stopped: only the log stops it; the store and the feeds are waited for.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StageError(#[from] LogError);

/// One lane of the delivery stage, with what it needs.
#[derive(Clone)]
pub struct Stage {
    pub lane: Lane,
    pub log: Arc<dyn Log>,
    pub store: Arc<dyn ReadModel>,
    pub presence: Arc<dyn Presence>,
    pub feeds: Arc<dyn Feeds>,
    pub members: Arc<Memberships>,
    pub progress: Progress,
    state: Arc<watch::Sender<StageState>>,
}

impl Stage {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lane: Lane,
        log: Arc<dyn Log>,
        store: Arc<dyn ReadModel>,
        presence: Arc<dyn Presence>,
        feeds: Arc<dyn Feeds>,
        members: Arc<Memberships>,
        progress: Progress,
    ) -> Stage {
        let state = Arc::new(watch::Sender::new(StageState::Starting));
        Stage { lane, log, store, presence, feeds, members, progress, state }
    }

    /// What the lane is doing now.
    pub fn state(&self) -> StageState {
        self.state.borrow().clone()
    }

    /// Resolves once the lane routes.
    pub async fn live(&self) {
        // The sender lives as long as `self`, so the wait ends only by going live.
        let _ = self.state.subscribe().wait_for(StageState::is_live).await;
    }

    fn set_state(&self, state: StageState) {
        let live = if state.is_live() { 1.0 } else { 0.0 };
        metrics::gauge!("delivery_ready", "lane" => self.lane.group).set(live);
        self.state.send_replace(state);
    }

    /// Routes the lane's topics until `stop` is cancelled: from where the group stands, or, for
    /// a group that never ran, from the log's end (a new deployment delivers nothing old).
    pub async fn run(self, stop: CancellationToken) -> Result<(), StageError> {
        let result = self.route_until(&stop).await;
        if let Err(error) = &result {
            self.set_state(StageState::Failed(error.to_string()));
        }
        result
    }

    async fn route_until(&self, stop: &CancellationToken) -> Result<(), StageError> {
        let topics = self.lane.topics;
        let committed = self.log.committed(self.lane.group).await?;
        let start = match committed.is_empty() {
            true => Cursor::end(self.log.as_ref(), topics).await?,
            false => committed.or(&Cursor::beginning(self.log.as_ref(), topics)),
        };
        if !self.wait_for_read_models(&start, stop).await {
            return Ok(());
        }
        let mut reader = self.log.join_group(self.lane.group, topics, start.clone()).await?;
        let partitions = self.log.partitions(Topic::Conversations);
        let (store, presence, members) =
            (self.store.clone(), self.presence.clone(), self.members.clone());
        let mut router = Router::new(store, presence, members, self.progress.clone(), partitions);
        let codec = Codec::new();
        let mut cursor = start;
        tracing::info!(lane = self.lane.group, from = %cursor, "delivery live");
        self.set_state(StageState::Live);
        loop {
            let records = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                records = reader.next_batch(BATCH) => records?,
            };
            // Memberships come from the follower: it must have applied the batch's own changes.
            let mut changes = Cursor::default();
            for record in records.iter().filter(|r| r.position.topic == Topic::Conversations) {
                changes.advance(record.position);
            }
            if !changes.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = self.members.reached(&changes) => {}
                }
            }
            let mut kept = Vec::with_capacity(records.len());
            let mut passing = Vec::new();
            for record in records {
                cursor.advance(record.position);
                let event = match codec.decode(&record.value) {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::error!(position = %record.position, %error, "delivery skips undecodable record");
                        continue;
                    }
                };
                let Some(routed) = self.route_patiently(&mut router, &event, stop).await else {
                    return Ok(());
                };
                match routed {
                    Some(routed) if routed.kept => kept.push(Delivery {
                        source: record.position,
                        frame: routed.frame().into(),
                        recipients: routed.recipients,
                    }),
                    Some(routed) => passing.push(routed),
                    None => {}
                }
            }
            if self.append_patiently(&kept, stop).await.is_none() {
                return Ok(());
            }
            metrics::counter!("delivery_events_total", "lane" => self.lane.group)
                .increment(kept.len() as u64);
            // Publishing waits while the fan-out is behind, and the fan-out may be stopped first.
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                () = self.publish(passing) => {}
            }
            reader.commit(&cursor).await?;
        }
    }

    /// Routes `event`, trying again while the store fails; `None` if stopped first.
    async fn route_patiently(
        &self,
        router: &mut Router,
        event: &Event,
        stop: &CancellationToken,
    ) -> Option<Option<Routed>> {
        let mut retry = Retry::new(self);
        loop {
            match router.route(event).await {
                Ok(routed) => {
                    retry.succeeded();
                    return Some(routed);
                }
                Err(error) => retry.after("store", &error, stop).await?,
            }
        }
    }

    async fn publish(&self, passing: Vec<Routed>) {
        for routed in passing {
            // Typing and presence are worth nothing late: one the feeds cannot take now is
            // dropped rather than holding up the ones behind it.
            if let Err(error) = self.feeds.publish(&routed.recipients, &routed.frame()).await {
                tracing::warn!(%error, kind = routed.kind, "not published");
            }
        }
    }

    /// Appends `deliveries`, trying again while the feeds fail; `None` if stopped first. An
    /// append cut short by the stop is made again by the next start, which skips what went in.
    async fn append_patiently(
        &self,
        deliveries: &[Delivery],
        stop: &CancellationToken,
    ) -> Option<()> {
        let mut retry = Retry::new(self);
        loop {
            let appended = tokio::select! {
                _ = stop.cancelled() => return None,
                appended = self.feeds.append(deliveries) => appended,
            };
            match appended {
                Ok(()) => {
                    retry.succeeded();
                    return Some(());
                }
                Err(error) => retry.after("feeds", &error, stop).await?,
            }
        }
    }

    /// Waits until the read models hold everything before `start`, saying what it waits for
    /// while it does. Returns `false` if stopped first.
    async fn wait_for_read_models(&self, start: &Cursor, stop: &CancellationToken) -> bool {
        let caught_up = self.progress.wait_for_cursor(start);
        tokio::pin!(caught_up);
        let mut report = tokio::time::interval(WAITING_REPORT);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: readiness says at once what the lane waits for.
        let mut reported_before = false;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return false,
                _ = &mut caught_up => return true,
                _ = report.tick() => {
                    let waiting = StageState::WaitingForReadModels(self.progress.behind(start));
                    if reported_before {
                        tracing::warn!(lane = self.lane.group, "delivery routes nothing yet: {waiting}");
                    }
                    reported_before = true;
                    self.set_state(waiting);
                }
            }
        }
    }
}

/// One step tried until it succeeds, waiting longer after each failure.
struct Retry<'a> {
    stage: &'a Stage,
    backoff: Duration,
    failed: bool,
}

impl<'a> Retry<'a> {
    fn new(stage: &'a Stage) -> Retry<'a> {
        Retry { stage, backoff: RETRY_FIRST, failed: false }
    }

    /// Waits before the next try; `None` if stopped first.
    async fn after(
        &mut self,
        cause: &'static str,
        error: &(dyn std::fmt::Display + Sync),
        stop: &CancellationToken,
    ) -> Option<()> {
        let lane = self.stage.lane.group;
        self.failed = true;
        metrics::counter!("delivery_retries_total", "lane" => lane, "cause" => cause).increment(1);
        tracing::warn!(lane, %error, retry_in = ?self.backoff, "delivery waits for the {cause}");
        self.stage.set_state(StageState::Failed(format!("{cause}: {error}")));
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(self.backoff) => {}
        }
        self.backoff = (self.backoff * 2).min(RETRY_LONGEST);
        Some(())
    }

    fn succeeded(self) {
        if self.failed {
            tracing::info!(lane = self.stage.lane.group, "delivery goes on");
            self.stage.set_state(StageState::Live);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchboard_ingest::log::embedded::EmbeddedLog;
    use switchboard_projector::feed::embedded::EmbeddedFeeds;
    use switchboard_projector::feed::{PUBLISHED_CAPACITY, Retention};
    use switchboard_projector::presence::memory::MemoryPresence;
    use switchboard_projector::store::embedded::EmbeddedStore;
    use switchboard_schemas::{
        ConversationCreated, ConversationId, ConversationKind, EventMeta, MessageId, MessageSent,
        UserId,
    };

    use super::*;

    fn sent(conversation: ConversationId, sender: UserId, id: i64) -> Event {
        let meta = EventMeta {
            event_id: format!("e{id}"),
            occurred_at: 1,
            actor: Some(sender),
            trace_id: "t".to_owned(),
        };
        let payload = MessageSent {
            conversation_id: conversation,
            message_id: MessageId(id),
            sender,
            client_msg_id: format!("c{id}"),
            body: "hi".to_owned(),
            reply_to: None,
            attachments: Vec::new(),
        };
        Event { meta, payload: payload.into() }
    }

    /// A lane whose follower no longer listens (the fan-out stopped first, as it may on
    /// shutdown) waits to publish, and still stops when told to.
    #[tokio::test]
    async fn a_lane_stuck_publishing_to_a_stopped_fan_out_stops() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log: Arc<dyn Log> =
            Arc::new(EmbeddedLog::open(&dir.path().join("log"), 2).expect("log"));
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store")).expect("store"));
        let feeds = Arc::new(
            EmbeddedFeeds::open(&dir.path().join("feeds"), Retention::default()).expect("feeds"),
        );
        let members = Arc::new(Memberships::default());
        let (ada, bob, direct) = (UserId(1), UserId(2), ConversationId(10));
        members.apply(
            &ConversationCreated {
                conversation_id: direct,
                kind: ConversationKind::Direct,
                title: None,
                members: vec![ada, bob],
            }
            .into(),
        );
        let published = feeds.listen().await.expect("listen");
        feeds.follow(ada).await.expect("follow");
        let stage = Stage::new(
            HISTORY,
            log.clone(),
            store,
            Arc::new(MemoryPresence::new("n")),
            feeds,
            members,
            Progress::new(Cursor::default()),
        );
        let stop = CancellationToken::new();
        let running = tokio::spawn(stage.clone().run(stop.clone()));
        stage.live().await;

        let codec = Codec::new();
        let key = direct.to_string();
        for id in 0..PUBLISHED_CAPACITY as i64 + 100 {
            let value = codec.encode(&sent(direct, bob, id)).expect("encode");
            log.append(Topic::Messages, key.as_bytes(), value).await.expect("append");
        }
        tokio::time::timeout(Duration::from_secs(60), async {
            while published.len() < PUBLISHED_CAPACITY {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the follower's queue fills up");

        stop.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(10), running).await;
        assert!(stopped.is_ok(), "the lane stops while its follower's queue is full");
        drop(published);
    }
}
