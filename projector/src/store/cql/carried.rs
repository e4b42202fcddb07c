//! The rows every send consults, carried from one batch to the next.
//!
//! A send reads its conversation's stats, its sender's read marker and its client id before it
//! is folded (see `lane`). While following the log, a batch holds a few hundred sends spread over
//! as many conversations, so those were three reads per message — and the stats and markers read
//! are the very rows this store wrote a batch earlier. The store therefore keeps, after each
//! batch it applied whole, the stats and markers its lanes ended with, and the next batch's lanes
//! take them from here instead of reading them.
//!
//! A client id is nearly always new, and reading one that does not exist tells nothing this
//! store could not know itself when every client id in the keyspace went through it: when it
//! found no checkpoint of the messages topic there (a rebuild's fresh keyspace, a new deployment)
//! and has applied every batch of those partitions since. It then keeps a [`KeyFilter`] of the
//! client ids it wrote, and reads only those the filter may hold.
//!
//! That is only right while nobody else writes those rows. All of them are changed by
//! messages-topic events alone, and each partition of that topic has one applier at a time (see
//! [`CqlStore`](super::CqlStore)), so the rows stay this store's own as long as it applies every
//! batch of their partitions itself: each batch of a partition must start where this store's
//! last batch of it ended. When one does not (another projector had the partition meanwhile, or
//! the log redelivers what was applied), every carried row is dropped and read again. The filter
//! has one more condition: a partition this store takes up must have no checkpoint yet, or
//! another store wrote client ids there.
//!
//! A batch that fails halfway may have landed in part, and the rows it wrote are not the ones
//! carried: those are dropped. The filter holds on, as each client id goes into it
//! before a batch may write it, so an id that landed before the failure is read when the batch is
//! applied again; a filter holding a few ids that never landed only costs their reads.

use std::collections::HashMap;

use switchboard_ingest::log::Cursor;
use switchboard_schemas::Topic;

use super::CHECKPOINT_CONSUMER;
use super::rows::{Db, StatsRow};
use crate::store::key_filter::KeyFilter;
use crate::store::rows::ReadRecord;
use crate::store::{Logged, StoreError};

/// At most this many rows are carried (about 100 bytes each); past it they are all dropped
/// and the next batches read and carry those they need again.
const MAX_ROWS: usize = 200_000;

/// At most this many client ids are filtered (10 bits each): past it, they are read again.
const MAX_CLIENT_IDS: usize = 50_000_000;

/// (conversation, sender, client_msg_id).
pub(super) type ClientIdKey = (i64, i64, String);

/// Rows as this store last wrote them, with `None` for a row known not to exist.
#[derive(Default)]
pub(super) struct Carried {
    /// For each partition of the messages topic, the offset after this store's last batch.
    applied: HashMap<u32, u64>,
    /// Conversation → its stats.
    pub(super) stats: HashMap<i64, Option<StatsRow>>,
    /// (conversation, user) → the user's read marker.
    pub(super) markers: HashMap<(i64, i64), Option<ReadRecord>>,
    client_ids: ClientIds,
}

/// What this store knows of the client ids in its keyspace.
#[derive(Default)]
enum ClientIds {
    /// Nothing yet: the next batch looks for a checkpoint.
    #[default]
    Unasked,
    /// Every client id of the applied partitions, and perhaps a few more.
    Written(KeyFilter),
    /// Others wrote some.
    Unknown,
}

/// The rows one lane ended with, to carry into the next batch.
#[derive(Default)]
pub(super) struct LaneRows {
    pub(super) stats: Vec<(i64, Option<StatsRow>)>,
    pub(super) markers: Vec<((i64, i64), Option<ReadRecord>)>,
}

impl Carried {
    /// What still holds for `events`. A partition this store applied before must go on where it
    /// left off, or nothing carried is kept; one it takes up must have no checkpoint, or the
    /// client ids are read from then on.
    pub(super) async fn for_batch(&mut self, db: &Db, events: &[Logged]) -> Result<(), StoreError> {
        let taken_up = self.follow(events);
        let ask = match self.client_ids {
            ClientIds::Unasked => true,
            ClientIds::Written(_) => !taken_up.is_empty(),
            ClientIds::Unknown => false,
        };
        if ask {
            let checkpoint = db.checkpoint(CHECKPOINT_CONSUMER).await?;
            let written_by_others = match self.client_ids {
                ClientIds::Unasked => checkpoint.iter().any(|(topic, ..)| topic == Topic::Messages),
                _ => taken_up.iter().any(|&p| checkpoint.get(Topic::Messages, p).is_some()),
            };
            self.client_ids = match (written_by_others, std::mem::take(&mut self.client_ids)) {
                (true, _) => ClientIds::Unknown,
                (false, ClientIds::Unasked) => {
                    let filter = KeyFilter::new(0);
                    filter.loaded();
                    ClientIds::Written(filter)
                }
                (false, known) => known,
            };
        }
        Ok(())
    }

    /// Drops everything carried unless each messages partition of `events` that this store
    /// applied before goes on where it left off. Returns the partitions the batch takes up.
    fn follow(&mut self, events: &[Logged]) -> Vec<u32> {
        let mut first: HashMap<u32, u64> = HashMap::new();
        for position in events.iter().map(|logged| logged.position) {
            if position.topic == Topic::Messages {
                let offset = first.entry(position.partition).or_insert(position.offset);
                *offset = (*offset).min(position.offset);
            }
        }
        let follows_on = first.iter().all(|(partition, offset)| {
            self.applied.get(partition).is_none_or(|applied| applied == offset)
        });
        if !follows_on {
            self.forget_rows();
            self.client_ids = ClientIds::Unknown;
        }
        first.into_keys().filter(|p| !self.applied.contains_key(p)).collect()
    }

    /// Whether `key` is certainly not in the keyspace, in which case the filter takes it now:
    /// the batch asking may write it before it is applied whole, or fail after.
    pub(super) fn take_new(&self, key: &ClientIdKey) -> bool {
        let ClientIds::Written(filter) = &self.client_ids else { return false };
        let key = filter_key(key);
        let new = !filter.may_contain(&key);
        if new {
            filter.insert(&key);
        }
        new
    }

    /// Takes in what a batch's lanes ended with, once the batch is applied up to `checkpoint`.
    pub(super) fn applied(&mut self, lanes: Vec<LaneRows>, checkpoint: &Cursor) {
        for (topic, partition, next) in checkpoint.iter() {
            if topic == Topic::Messages {
                self.applied.insert(partition, next);
            }
        }
        for lane in lanes {
            self.stats.extend(lane.stats);
            self.markers.extend(lane.markers);
        }
        if self.stats.len() + self.markers.len() > MAX_ROWS {
            self.forget_rows();
        }
        if matches!(&self.client_ids, ClientIds::Written(filter) if filter.len() > MAX_CLIENT_IDS) {
            self.client_ids = ClientIds::Unknown;
        }
    }

    /// Takes in that a batch failed: it may have landed in part.
    pub(super) fn failed(&mut self) {
        self.forget_rows();
    }

    fn forget_rows(&mut self) {
        self.stats = HashMap::new();
        self.markers = HashMap::new();
    }
}

fn filter_key((conversation, sender, client_msg_id): &ClientIdKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + client_msg_id.len());
    key.extend_from_slice(&conversation.to_be_bytes());
    key.extend_from_slice(&sender.to_be_bytes());
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_schemas::{
        ConversationId, Event, EventMeta, MessageId, Payload, Position, ReadUpTo, UserId,
    };

    fn read_at(partition: u32, offset: u64) -> Logged {
        let payload = Payload::from(ReadUpTo {
            conversation_id: ConversationId(1),
            user_id: UserId(2),
            message_id: MessageId(3),
        });
        let meta = EventMeta {
            event_id: String::new(),
            occurred_at: 0,
            actor: None,
            trace_id: String::new(),
        };
        let position = Position { topic: Topic::Messages, partition, offset };
        Logged { position, event: Event { meta, payload } }
    }

    /// A store that applied the messages partitions up to `applied`, carrying a marker and
    /// knowing every client id.
    fn carrying(applied: &[(u32, u64)]) -> Carried {
        let filter = KeyFilter::new(0);
        filter.loaded();
        let mut carried = Carried { client_ids: ClientIds::Written(filter), ..Carried::default() };
        let mut checkpoint = Cursor::default();
        for &(partition, next) in applied {
            checkpoint.set(Topic::Messages, partition, next);
        }
        assert!(carried.take_new(&(1, 2, "c1".to_owned())));
        let marker = ReadRecord { message_id: MessageId(3), seq: 1, at: 0 };
        let lane = LaneRows { markers: vec![((1, 2), Some(marker))], ..LaneRows::default() };
        carried.applied(vec![lane], &checkpoint);
        carried
    }

    fn kept(mut carried: Carried, events: &[Logged]) -> (bool, bool, Vec<u32>) {
        let taken_up = carried.follow(events);
        let knows = matches!(carried.client_ids, ClientIds::Written(_));
        (!carried.markers.is_empty(), knows, taken_up)
    }

    #[test]
    fn what_is_carried_holds_only_for_a_batch_that_goes_on_where_the_last_left_off() {
        let both = carrying(&[(0, 5), (1, 9)]);
        assert_eq!(kept(both, &[read_at(0, 5), read_at(0, 6)]), (true, true, vec![]));
        let taking_up = carrying(&[(0, 5)]);
        assert_eq!(kept(taking_up, &[read_at(0, 5), read_at(3, 0)]), (true, true, vec![3]));

        let skipped_ahead = carrying(&[(0, 5)]);
        assert_eq!(
            kept(skipped_ahead, &[read_at(0, 7)]),
            (false, false, vec![]),
            "5 and 6 applied elsewhere"
        );
        let again = carrying(&[(0, 5)]);
        assert_eq!(
            kept(again, &[read_at(0, 6), read_at(0, 4)]),
            (false, false, vec![]),
            "4 redelivered"
        );
    }

    #[test]
    fn client_ids_written_here_are_known_new_or_not() {
        let carried = carrying(&[(0, 5)]);
        let key = |id: &str| (1, 2, id.to_owned());
        assert!(!carried.take_new(&key("c1")));
        assert!(carried.take_new(&key("c2")));
        assert!(!carried.take_new(&key("c2")), "taken by the batch that found it new");
        assert!(!Carried::default().take_new(&key("c3")), "not before it is asked");
    }

    #[test]
    fn a_failed_batch_drops_the_rows_and_keeps_the_client_ids() {
        let mut carried = carrying(&[(0, 5)]);
        assert!(carried.take_new(&(1, 2, "c2".to_owned())));
        carried.failed();
        assert_eq!(kept(carried, &[read_at(0, 5)]), (false, true, vec![]));
    }
}
