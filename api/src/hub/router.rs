//! Who should see an event: members of its conversation, or everyone who shares a conversation
//! with a user whose presence changed.
//!
//! Memberships are cached and kept current from the conversation events the router itself
//! routes, so a message right after a member joined reaches the new member without a store read.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use switchboard_projector::presence::Presence;
use switchboard_projector::store::{ReadModel, StoreError};
use switchboard_schemas::{ConversationId, Event, Payload, UserId};

/// An event ready to push: to whom, and what.
pub struct Routed {
    pub recipients: Vec<UserId>,
    pub kind: &'static str,
    pub at: i64,
    /// The `data` of the pushed frame, serialised once for every recipient.
    pub data: Box<serde_json::value::RawValue>,
}

#[derive(Serialize)]
struct PresenceChanged {
    user_id: UserId,
    online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<i64>,
}

pub struct Router {
    store: Arc<dyn ReadModel>,
    presence: Arc<dyn Presence>,
    members: HashMap<ConversationId, Vec<UserId>>,
    contacts: HashMap<UserId, Arc<Vec<UserId>>>,
    /// The online state last pushed per user, so contacts hear of changes only.
    pushed_online: HashMap<UserId, bool>,
    replaying: bool,
}

impl Router {
    /// A router for the live fan-out.
    pub fn live(store: Arc<dyn ReadModel>, presence: Arc<dyn Presence>) -> Router {
        Router {
            store,
            presence,
            members: HashMap::new(),
            contacts: HashMap::new(),
            pushed_online: HashMap::new(),
            replaying: false,
        }
    }

    /// A router for replaying what a resuming socket missed.
    pub fn replay(store: Arc<dyn ReadModel>, presence: Arc<dyn Presence>) -> Router {
        Router { replaying: true, ..Router::live(store, presence) }
    }

    pub async fn route(&mut self, event: &Event) -> Result<Option<Routed>, StoreError> {
        use Payload::*;
        let recipients = match &event.payload {
            ConversationCreated(e) => {
                self.members.insert(e.conversation_id, e.members.clone());
                self.contacts.clear();
                e.members.clone()
            }
            MemberAdded(e) => {
                let members = self.members_mut(e.conversation_id).await?;
                if !members.contains(&e.user_id) {
                    members.push(e.user_id);
                }
                let recipients = members.clone();
                self.contacts.clear();
                recipients
            }
            MemberRemoved(e) => {
                let members = self.members_mut(e.conversation_id).await?;
                let recipients = members.clone();
                members.retain(|m| *m != e.user_id);
                if !recipients.contains(&e.user_id) {
                    return Ok(None);
                }
                self.contacts.clear();
                recipients
            }
            Typing(e) => {
                let mut members = self.members_mut(e.conversation_id).await?.clone();
                members.retain(|m| *m != e.user_id);
                members
            }
            SessionOpened(e) => {
                return self.presence_changed(e.user_id, event.meta.occurred_at, true).await;
            }
            SessionClosed(e) => {
                return self.presence_changed(e.user_id, event.meta.occurred_at, false).await;
            }
            // An upload is not news to anyone until a message carries it.
            UserRegistered(_) | ProfileUpdated(_) | NodeHeartbeat(_) | MediaUploaded(_) => {
                return Ok(None);
            }
            payload => match payload.conversation_id() {
                Some(conversation) => self.members_mut(conversation).await?.clone(),
                None => return Ok(None),
            },
        };
        Ok(Some(Routed {
            recipients,
            kind: event.payload.type_name(),
            at: event.meta.occurred_at,
            data: to_raw(&event.payload),
        }))
    }

    async fn members_mut(&mut self, id: ConversationId) -> Result<&mut Vec<UserId>, StoreError> {
        if !self.members.contains_key(&id) {
            let members = self.store.conversation(id).await?.map(|c| c.members).unwrap_or_default();
            self.members.insert(id, members);
        }
        Ok(self.members.get_mut(&id).expect("inserted above"))
    }

    /// Everyone who shares a conversation with `user`, `user` included (their other devices).
    async fn contacts_of(&mut self, user: UserId) -> Result<Arc<Vec<UserId>>, StoreError> {
        if let Some(contacts) = self.contacts.get(&user) {
            return Ok(contacts.clone());
        }
        let mut contacts: Vec<UserId> = vec![user];
        for entry in self.store.inbox(user).await? {
            contacts.extend(entry.conversation.members);
        }
        contacts.sort_unstable();
        contacts.dedup();
        let contacts = Arc::new(contacts);
        self.contacts.insert(user, contacts.clone());
        Ok(contacts)
    }

    /// Presence is state, not history: a socket replaying what it missed gets none of it (the
    /// current state is one query away), and live sockets hear only of real changes.
    async fn presence_changed(
        &mut self,
        user: UserId,
        at: i64,
        opened: bool,
    ) -> Result<Option<Routed>, StoreError> {
        if self.replaying {
            return Ok(None);
        }
        let online = match self.presence.status(&[user]).await {
            Ok(status) => status.first().is_some_and(|s| s.online),
            // Without the presence backend the event itself is the best guess.
            Err(_) => opened,
        };
        if self.pushed_online.insert(user, online) == Some(online) {
            return Ok(None);
        }
        let last_seen = (!online).then_some(at);
        Ok(Some(Routed {
            recipients: self.contacts_of(user).await?.to_vec(),
            kind: "presence.changed",
            at,
            data: to_raw(&PresenceChanged { user_id: user, online, last_seen }),
        }))
    }
}

fn to_raw<T: Serialize>(value: &T) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(value).expect("events serialise to JSON")
}
