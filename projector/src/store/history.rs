//! Random event histories for property tests of the stores: events of every kind the read
//! models keep, placed in partitions as the log places them, then delivered as a projector may
//! see them — partitions interleaved any way, stretches of a partition delivered again (a
//! projector restarting from its checkpoint), in batches of any size.
//!
//! Histories are built from a few users, handles, conversations and calls, so that events often
//! meet: two users register one handle, two direct conversations join one pair, a retried send
//! reuses a client id, an edit races a delete. Event times jitter, so they disagree with log
//! order now and then, as clocks of several API nodes do.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use switchboard_schemas::{
    CallAccepted, CallEnded, CallId, CallInvited, CallMedia, ConversationCreated, ConversationId,
    ConversationKind, ConversationRenamed, Event, EventMeta, LocationShared, LocationStopped,
    MediaId, MediaUploaded, MemberAdded, MemberRemoved, MessageDeleted, MessageEdited, MessageId,
    MessageSent, ParticipantJoined, ParticipantLeft, Payload, Position, ProfileUpdated, ReadUpTo,
    RoomStarted, SessionClosed, Topic, UserId, UserRegistered,
};

use super::{Logged, ReadModel, StoreError};
use switchboard_ingest::log::Cursor;

/// Partitions per topic: few, so that related events often share one and often do not.
const PARTITIONS: u32 = 3;

/// One history: each partition's events in log order.
#[derive(Clone, Debug)]
pub(crate) struct History {
    partitions: Vec<Vec<Logged>>,
}

/// Histories of up to `max_steps` events.
pub(crate) fn histories(max_steps: usize) -> impl Strategy<Value = History> {
    prop::collection::vec(any::<Step>(), 1..max_steps).prop_map(|steps| History::from_steps(&steps))
}

/// A history and two ways of delivering it.
pub(crate) fn history_delivered_twice(
    max_steps: usize,
) -> impl Strategy<Value = (History, Vec<Vec<Logged>>, Vec<Vec<Logged>>)> {
    histories(max_steps).prop_flat_map(|history| {
        let deliveries = (deliveries(&history), deliveries(&history));
        (Just(history), deliveries).prop_map(|(history, (one, other))| (history, one, other))
    })
}

/// The batches a projector could be handed for `history`.
fn deliveries(history: &History) -> impl Strategy<Value = Vec<Vec<Logged>>> + use<> {
    let history = history.clone();
    let length = history.len() * 2 + 1;
    (prop::collection::vec(any::<u16>(), length), prop::collection::vec(1..12usize, length))
        .prop_map(move |(choices, sizes)| history.deliver(&choices, &sizes))
}

/// Applies `batches` one after another, each with a checkpoint just past it.
pub(crate) async fn deliver(
    store: &dyn ReadModel,
    batches: &[Vec<Logged>],
) -> Result<(), StoreError> {
    let mut cursor = Cursor::default();
    for batch in batches {
        for logged in batch {
            cursor.advance(logged.position);
        }
        store.apply(batch.clone(), &cursor).await?;
    }
    Ok(())
}

/// Numbers from which one event is made; see [`History::from_steps`].
type Step = (u8, u8, u8, u8, i8);

impl History {
    fn len(&self) -> usize {
        self.partitions.iter().map(Vec::len).sum()
    }

    fn from_steps(steps: &[Step]) -> History {
        let mut builder = Builder::default();
        for (index, &step) in steps.iter().enumerate() {
            let at = 1_750_000_000_000 + index as i64 * 10 + i64::from(step.4);
            let payload = builder.payload(step);
            builder.push(payload, at);
        }
        History { partitions: builder.partitions.into_values().collect() }
    }

    /// Every event in some interleaving of the partitions, some stretches of a partition again,
    /// cut into batches. `choices` picks the next partition and now and then a rewind; `sizes`
    /// are the batch sizes. Every event is delivered at least once.
    fn deliver(&self, choices: &[u16], sizes: &[usize]) -> Vec<Vec<Logged>> {
        let mut next = vec![0; self.partitions.len()];
        let mut rewinds_left = 4;
        let mut order = Vec::new();
        let mut choices = choices.iter().copied().chain(std::iter::repeat(0));
        loop {
            let open: Vec<usize> = (0..self.partitions.len())
                .filter(|&p| next[p] < self.partitions[p].len())
                .collect();
            let Some(choice) = choices.next().filter(|_| !open.is_empty()) else { break };
            let partition = open[usize::from(choice) % open.len()];
            if choice % 11 == 0 && rewinds_left > 0 && next[partition] > 0 {
                rewinds_left -= 1;
                next[partition] -= 1 + usize::from(choice / 11) % next[partition];
                continue;
            }
            order.push(self.partitions[partition][next[partition]].clone());
            next[partition] += 1;
        }
        let mut batches = Vec::new();
        let mut sizes = sizes.iter().copied().chain(std::iter::repeat(1));
        while !order.is_empty() {
            let size = sizes.next().unwrap_or(1).min(order.len());
            batches.push(order.drain(..size).collect());
        }
        batches
    }
}

#[derive(Default)]
struct Builder {
    /// (topic, partition) → its events so far.
    partitions: BTreeMap<(Topic, u32), Vec<Logged>>,
    /// conversation → the messages sent to it, in order.
    sent: BTreeMap<ConversationId, Vec<MessageId>>,
    messages: i64,
    uploads: i64,
    registered: BTreeSet<UserId>,
    created: BTreeSet<ConversationId>,
    started: BTreeSet<CallId>,
}

impl Builder {
    fn push(&mut self, payload: Payload, at: i64) {
        let topic = payload.topic();
        let partition = Topic::partition_for(payload.key().as_bytes(), PARTITIONS);
        let events = self.partitions.entry((topic, partition)).or_default();
        let position = Position { topic, partition, offset: events.len() as u64 };
        let meta = EventMeta {
            event_id: format!("{topic}-{partition}-{}", events.len()),
            occurred_at: at,
            actor: None,
            trace_id: String::new(),
        };
        events.push(Logged { position, event: Event { meta, payload } });
    }

    /// The message of `conversation` that `pick` points at, or one never sent.
    fn pick_message(&self, conversation: ConversationId, pick: u8) -> MessageId {
        match self.sent.get(&conversation) {
            Some(sent) if !sent.is_empty() => sent[usize::from(pick) % sent.len()],
            _ => message_id(-1),
        }
    }

    /// The event `step` makes. Like the API, it logs nothing about a user, conversation or call
    /// before creating it, and creates each once: an event that would is made the creation.
    fn payload(&mut self, (kind, a, b, c, _): Step) -> Payload {
        let user = |n: u8| UserId(1000 + i64::from(n % 5));
        let account = UserId(1000 + i64::from(a % 6));
        let conversation = ConversationId(2000 + i64::from(a % 4));
        let call = CallId(3000 + i64::from(b % 3));
        match kind % 20 {
            0 | 1 if self.registered.insert(account) => {
                let handle = ["ada", "bob", "cy"][usize::from(b % 3)];
                let handle = if c % 2 == 0 { handle.to_owned() } else { handle.to_uppercase() };
                UserRegistered {
                    user_id: account,
                    handle,
                    display_name: format!("user {a}"),
                    password_hash: format!("hash {a}"),
                }
                .into()
            }
            0 | 1 => {
                ProfileUpdated { user_id: account, display_name: format!("renamed {b}") }.into()
            }
            2..=5 if self.created.insert(conversation) => {
                let (kind, members) = match b % 2 {
                    0 => (ConversationKind::Direct, vec![user(c), user(c / 5)]),
                    _ => (
                        ConversationKind::Group,
                        (0..5).filter(|i| c >> i & 1 == 1).map(user).collect(),
                    ),
                };
                let title = (kind == ConversationKind::Group).then(|| format!("group {c}"));
                ConversationCreated { conversation_id: conversation, kind, title, members }.into()
            }
            2 | 3 => MemberAdded { conversation_id: conversation, user_id: user(b) }.into(),
            4 => MemberRemoved { conversation_id: conversation, user_id: user(b) }.into(),
            5 => {
                ConversationRenamed { conversation_id: conversation, title: format!("t{b}") }.into()
            }
            6..=8 => {
                self.messages += 1;
                let id = message_id(self.messages);
                let reply_to = (c & 8 != 0).then(|| self.pick_message(conversation, b));
                self.sent.entry(conversation).or_default().push(id);
                MessageSent {
                    conversation_id: conversation,
                    message_id: id,
                    sender: user(b),
                    client_msg_id: format!("c{}", c % 4),
                    body: format!("body {}", self.messages),
                    reply_to,
                    attachments: (c & 16 != 0)
                        .then(|| MediaId(4000 + i64::from(c % 3) + 1))
                        .into_iter()
                        .collect(),
                }
                .into()
            }
            9 => MessageEdited {
                conversation_id: conversation,
                message_id: self.pick_message(conversation, b),
                body: format!("edited {c}"),
            }
            .into(),
            10 => MessageDeleted {
                conversation_id: conversation,
                message_id: self.pick_message(conversation, b),
            }
            .into(),
            11 => ReadUpTo {
                conversation_id: conversation,
                user_id: user(b),
                message_id: self.pick_message(conversation, c),
            }
            .into(),
            12 => {
                // Media ids are never reused.
                self.uploads += 1;
                MediaUploaded {
                    conversation_id: conversation,
                    media_id: MediaId(4000 + self.uploads),
                    uploader: user(c),
                    content_type: "image/png".to_owned(),
                    size: i64::from(c) - 8,
                    file_name: (c % 2 == 0).then(|| format!("f{c}.png")),
                    object_key: format!("objects/{b}"),
                }
                .into()
            }
            13 => SessionClosed {
                user_id: user(a),
                session_id: format!("s{b}"),
                node_id: "n".to_owned(),
            }
            .into(),
            14 => LocationShared {
                user_id: user(b),
                conversation_id: conversation,
                latitude: f64::from(c) / 3.0,
                longitude: -f64::from(c) / 7.0,
                accuracy_m: (c % 2 == 0).then_some(f64::from(c)),
                expires_at: 1_750_000_100_000,
            }
            .into(),
            15 => LocationStopped { user_id: user(b), conversation_id: conversation }.into(),
            16..=19 if self.started.insert(call) => match c % 2 {
                0 => CallInvited {
                    call_id: call,
                    caller: user(a),
                    callee: user(c / 2),
                    media: CallMedia::Audio,
                    conversation_id: None,
                }
                .into(),
                _ => RoomStarted {
                    call_id: call,
                    conversation_id: conversation,
                    media: CallMedia::Video,
                }
                .into(),
            },
            16 => CallAccepted { call_id: call, user_id: user(a), session_id: "s".into() }.into(),
            17 => {
                ParticipantJoined { call_id: call, user_id: user(a), session_id: "s".into() }.into()
            }
            18 => ParticipantLeft { call_id: call, user_id: user(a) }.into(),
            _ => CallEnded { call_id: call, reason: "hangup".to_owned() }.into(),
        }
    }
}

/// Message ids as the id generator makes them, three days apart, so that a history's messages
/// span several of the CQL store's ten-day buckets.
fn message_id(n: i64) -> MessageId {
    const THREE_DAYS_MS: i64 = 3 * 86_400_000;
    MessageId((1_700_000_000_000 + n * THREE_DAYS_MS) << 22 | (n & 0x3f))
}
