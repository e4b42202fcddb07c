//! Conversation members as the fan-out has routed them, shared with the commands that check
//! membership before acting.
//!
//! Every send, read receipt, typing notice and call op asks whether its caller is a member of the
//! conversation. The fan-out already keeps each routed conversation's members current from the
//! log, so those checks answer from memory instead of from the read models: a store read per
//! send was a large share of the store's load in distributed mode.
//!
//! The memory answers only when it is at least as current as the read models: it has read the
//! conversations topic as far as the projection has applied it. Otherwise (the fan-out fell
//! behind, or has not routed the conversation yet) the caller asks the store, as before. A
//! command therefore never sees membership older than the read models would have shown it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use switchboard_ingest::log::Cursor;
use switchboard_projector::Progress;
use switchboard_schemas::{ConversationId, Topic, UserId};

#[derive(Default)]
pub struct Memberships {
    known: RwLock<Known>,
    /// Counts the changes: whoever derives something from memberships (a user's contacts)
    /// knows when to derive it again.
    changes: AtomicU64,
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

    pub(super) fn get(&self, conversation: ConversationId) -> Option<Vec<UserId>> {
        self.read().members.get(&conversation).cloned()
    }

    pub(super) fn set(&self, conversation: ConversationId, members: Vec<UserId>) {
        self.write().members.insert(conversation, members);
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// How many changes there have been: equal counts mean nothing changed in between.
    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Records that every event before `cursor` has been routed.
    pub(super) fn routed_up_to(&self, cursor: &Cursor) {
        self.write().routed.clone_from(cursor);
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
    use super::*;

    #[test]
    fn answers_only_when_as_current_as_the_read_models() {
        let memberships = Memberships::default();
        let (group, ada, bob) = (ConversationId(7), UserId(1), UserId(2));
        let progress = Progress::new(Cursor::default());
        assert_eq!(memberships.is_member(group, ada, &progress), None, "never routed");

        memberships.set(group, vec![ada]);
        assert_eq!(memberships.is_member(group, ada, &progress), Some(true));
        assert_eq!(memberships.is_member(group, bob, &progress), Some(false));

        let mut projected = Cursor::default();
        projected.set(Topic::Conversations, 0, 5);
        progress.advance(projected.clone());
        assert_eq!(memberships.is_member(group, ada, &progress), None, "the store is ahead");

        memberships.routed_up_to(&projected);
        memberships.set(group, vec![bob]);
        assert_eq!(memberships.is_member(group, ada, &progress), Some(false));
    }
}
