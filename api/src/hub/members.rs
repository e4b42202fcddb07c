//! Conversation members as this process has followed them from the log, shared by delivery,
//! which routes by them, and the commands that check membership before acting.
//!
//! Every send, read receipt, typing notice and call op asks whether its caller is a member of the
//! conversation, and delivery asks who the members are for every event of a conversation. Both
//! answer from memory: a store read per send was a large share of the store's load in distributed
//! mode. [`Memberships::follow`] keeps that memory current: it reads every partition of the
//! conversations topic (with several delivery workers, each routes only some partitions, but
//! each must know every membership change) and applies each change to the conversations it
//! knows. A conversation it does not know yet is read from the store on first use, once the read
//! models have applied everything the follower has read of its partition, so that the changes
//! the follower applies next land on a state no older than the one they follow.
//!
//! A command's check answers from memory only when it is at least as current as the read
//! models: the follower has read the conversations topic as far as the projection has applied
//! it. Otherwise (the follower fell behind) the caller asks the store, as before. A command
//! therefore never sees membership older than the read models would have shown it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use switchboard_ingest::log::{Cursor, Log, LogError};
use switchboard_projector::Progress;
use switchboard_projector::store::{ReadModel, StoreError, rules};
use switchboard_schemas::{Codec, ConversationId, Payload, Position, Topic, UserId};
use tokio_util::sync::CancellationToken;

/// How long a conversation read on first use waits for the read models to reach the follower.
const STORE_WAIT: Duration = Duration::from_secs(5);

pub struct Memberships {
    known: RwLock<Known>,
    /// Counts the changes: whoever derives something from memberships (a user's contacts)
    /// knows when to derive it again.
    changes: AtomicU64,
    /// How far the follower has read the conversations topic.
    followed: Progress,
}

impl Default for Memberships {
    fn default() -> Memberships {
        Memberships {
            known: RwLock::default(),
            changes: AtomicU64::default(),
            followed: Progress::new(Cursor::default()),
        }
    }
}

#[derive(Default)]
struct Known {
    members: HashMap<ConversationId, Vec<UserId>>,
    /// Every membership event before this cursor is reflected in `members`.
    routed: Cursor,
}

impl Memberships {
    /// Whether `user` is a member of `conversation`, if known here at least as recently as the
    /// read models know it.
    pub fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
        projected: &Progress,
    ) -> Option<bool> {
        let known = self.read();
        let members = known.members.get(&conversation)?;
        projected
            .is_covered_by(&known.routed, Topic::Conversations)
            .then(|| members.contains(&user))
    }

    /// The members of `conversation`: from memory, or from the store once it has applied what
    /// the follower has read of the conversation's partition.
    pub(super) async fn of(
        &self,
        conversation: ConversationId,
        store: &dyn ReadModel,
        projected: &Progress,
        partitions: u32,
    ) -> Result<Vec<UserId>, StoreError> {
        if let Some(members) = self.read().members.get(&conversation) {
            return Ok(members.clone());
        }
        let key = conversation.to_string();
        let partition = Topic::partition_for(key.as_bytes(), partitions);
        let followed = self.followed.current().get(Topic::Conversations, partition).unwrap_or(0);
        if let Some(offset) = followed.checked_sub(1) {
            let position = Position { topic: Topic::Conversations, partition, offset };
            if projected.wait_for(position, STORE_WAIT).await.is_err() {
                tracing::warn!(%position, "the read models lag the membership follower; reading them anyway");
            }
        }
        let members =
            store.conversation(conversation).await?.map(|c| c.members).unwrap_or_default();
        // A change the follower applied meanwhile is in the read models too: keep what it set.
        let mut known = self.write();
        Ok(known.members.entry(conversation).or_insert(members).clone())
    }

    /// Waits until the follower has read every conversation event before `cursor`.
    pub(super) async fn reached(&self, cursor: &Cursor) {
        self.followed.wait_for_cursor(cursor).await;
    }

    /// Follows the conversations topic from its end, applying every membership change to the
    /// conversations known here, until `stop` is cancelled.
    pub async fn follow(
        self: Arc<Self>,
        log: Arc<dyn Log>,
        projected: Progress,
        stop: CancellationToken,
    ) -> Result<(), LogError> {
        let topics = [Topic::Conversations];
        let followed = self.followed.current();
        let start = match followed.is_empty() {
            true => Cursor::end(log.as_ref(), &topics).await?,
            false => followed,
        };
        // What is read from the store on first use must be no older than where following starts.
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = projected.wait_for_cursor(&start) => {}
        }
        let mut reader = log.reader(start.clone()).await?;
        let codec = Codec::new();
        let mut cursor = start;
        self.record_followed(&cursor);
        loop {
            let records = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                records = reader.next_batch(1024) => records?,
            };
            for record in records {
                cursor.advance(record.position);
                if let Ok(event) = codec.decode(&record.value) {
                    self.apply(&event.payload);
                }
            }
            self.record_followed(&cursor);
        }
    }

    pub(super) fn apply(&self, payload: &Payload) {
        let mut known = self.write();
        let changed = match payload {
            // As the read models have it (`rules`): a creation applied again changes nothing.
            Payload::ConversationCreated(e) => match known.members.entry(e.conversation_id) {
                Entry::Vacant(entry) => {
                    entry.insert(rules::founding_members(e));
                    true
                }
                Entry::Occupied(_) => false,
            },
            Payload::MemberAdded(e) => match known.members.get_mut(&e.conversation_id) {
                Some(members) if !members.contains(&e.user_id) => {
                    members.push(e.user_id);
                    true
                }
                _ => false,
            },
            Payload::MemberRemoved(e) => match known.members.get_mut(&e.conversation_id) {
                Some(members) => {
                    let before = members.len();
                    members.retain(|m| *m != e.user_id);
                    members.len() != before
                }
                None => false,
            },
            _ => false,
        };
        drop(known);
        if changed {
            self.changes.fetch_add(1, Ordering::Release);
        }
    }

    fn record_followed(&self, cursor: &Cursor) {
        self.write().routed.clone_from(cursor);
        self.followed.advance(cursor.clone());
    }

    /// How many changes there have been: equal counts mean nothing changed in between.
    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    // Every change leaves the map whole, so one a panicking holder left is still valid.
    fn read(&self) -> RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Known> {
        self.known.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use switchboard_schemas::{ConversationCreated, ConversationKind, MemberAdded, MemberRemoved};

    use super::*;

    fn created(conversation: ConversationId, members: Vec<UserId>) -> Payload {
        let kind = ConversationKind::Group;
        let title = Some("t".to_owned());
        ConversationCreated { conversation_id: conversation, kind, title, members }.into()
    }

    #[test]
    fn answers_only_when_as_current_as_the_read_models() {
        let memberships = Memberships::default();
        let (group, ada, bob) = (ConversationId(7), UserId(1), UserId(2));
        let progress = Progress::new(Cursor::default());
        assert_eq!(memberships.is_member(group, ada, &progress), None, "never followed");

        memberships.apply(&created(group, vec![ada]));
        assert_eq!(memberships.is_member(group, ada, &progress), Some(true));
        assert_eq!(memberships.is_member(group, bob, &progress), Some(false));

        let mut projected = Cursor::default();
        projected.set(Topic::Conversations, 0, 5);
        progress.advance(projected.clone());
        assert_eq!(memberships.is_member(group, ada, &progress), None, "the store is ahead");

        memberships.record_followed(&projected);
        memberships.apply(&MemberAdded { conversation_id: group, user_id: bob }.into());
        memberships.apply(&MemberRemoved { conversation_id: group, user_id: ada }.into());
        assert_eq!(memberships.is_member(group, ada, &progress), Some(false));
        assert_eq!(memberships.is_member(group, bob, &progress), Some(true));
    }

    #[test]
    fn changes_to_conversations_not_known_here_are_left_for_the_store() {
        let memberships = Memberships::default();
        let (group, ada) = (ConversationId(7), UserId(1));
        let before = memberships.changes();
        memberships.apply(&MemberAdded { conversation_id: group, user_id: ada }.into());
        assert_eq!(memberships.is_member(group, ada, &Progress::new(Cursor::default())), None);
        assert_eq!(memberships.changes(), before, "nothing known changed");
    }

    /// As in the read models: a creation applied again (a replay) leaves later changes alone,
    /// and a member listed twice is one member.
    #[test]
    fn a_creation_applied_again_changes_nothing() {
        let memberships = Memberships::default();
        let (group, ada, bob) = (ConversationId(7), UserId(1), UserId(2));
        let creation = created(group, vec![ada, ada]);
        memberships.apply(&creation);
        memberships.apply(&MemberAdded { conversation_id: group, user_id: bob }.into());
        let before = memberships.changes();
        memberships.apply(&creation);
        assert_eq!(memberships.changes(), before, "nothing changed");
        assert_eq!(memberships.read().members[&group], [ada, bob]);
    }
}
