//! Who should see an event: members of its conversation, or everyone who shares a conversation
//! with a user whose presence changed. A shared location reaches the members only while its
//! sharer is one of them.
//!
//! Memberships are cached and kept current from the conversation events the router itself
//! routes, so a message right after a member joined reaches the new member without a store read
//! (see `members` for who else reads them).
//! Live calls are cached the same way, folded by the read models' own rules: a call's events go
//! to its caller and callee, a room's to every member of its conversation, each with the call as
//! it stands after the event; a signal goes to its recipient alone.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::Serialize;
use switchboard_projector::Progress;
use switchboard_projector::presence::Presence;
use switchboard_projector::store::calls::{self, Call, CallKind};
use switchboard_projector::store::{ReadModel, StoreError};
use switchboard_schemas::{CallId, ConversationId, Event, MessageId, MessageSent, Payload, UserId};

use super::members::Memberships;

/// An event ready to push: to whom, and what.
pub struct Routed {
    pub recipients: Vec<UserId>,
    pub kind: &'static str,
    pub at: i64,
    /// The `data` of the pushed frame, serialised once for every recipient.
    pub data: Box<serde_json::value::RawValue>,
    /// Whether it is history, kept in the recipients' feeds for a resume, or state that is news
    /// only to whoever is connected now (typing, presence).
    pub kept: bool,
}

impl Routed {
    /// The pushed frame up to its token (see [`Delivery::frame`](switchboard_projector::feed::Delivery::frame)).
    pub fn frame(&self) -> String {
        format!(
            r#"{{"op":"event","type":"{}","at":{},"data":{}"#,
            self.kind,
            self.at,
            self.data.get()
        )
    }
}

/// Events of the log no socket is pushed: accounts and profiles are read over HTTP, heartbeats
/// are the nodes' own, an upload is news to nobody until a message carries it, and no node logs
/// delivery receipts or devices ringing.
const UNPUSHED: &[&str] = &[
    "user.registered",
    "user.profile_updated",
    "node.heartbeat",
    "media.uploaded",
    "message.delivered",
    "call.ringing",
];

/// What sessions opening and closing are pushed as, when they change whether a user is online.
const PRESENCE_CHANGED: &str = "presence.changed";
const SESSION_EVENTS: [&str; 2] = ["presence.session_opened", "presence.session_closed"];

/// The `type` of every event a socket may be pushed.
pub fn pushed_types() -> Vec<&'static str> {
    let logged = Payload::TYPE_NAMES.iter().copied();
    let pushed = logged.filter(|name| !UNPUSHED.contains(name) && !SESSION_EVENTS.contains(name));
    pushed.chain([PRESENCE_CHANGED]).collect()
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
    /// Followed from the log, and shared with the membership checks of commands.
    members: Arc<Memberships>,
    /// How far the read models have got, for conversations read from them.
    projected: Progress,
    /// The partitions of the conversations topic.
    partitions: u32,
    contacts: HashMap<UserId, Arc<Vec<UserId>>>,
    /// [`Memberships::changes`] when `contacts` was last valid.
    contacts_as_of: u64,
    /// The online state last pushed per user, so contacts hear of changes only.
    pushed_online: HashMap<UserId, bool>,
    /// Calls still live, as of the last event routed.
    calls: HashMap<CallId, Call>,
    sends: RecentSends,
}

/// How many sends a router remembers, to recognise a retry logged twice.
const RECENT_SENDS: usize = 100_000;

/// The latest sends, by conversation, sender and client id. A retry whose claim could not be
/// checked (the presence backend was down, or its first append failed without saying whether
/// the log took it) may be logged twice under two message ids: the read models keep the first,
/// and so does delivery, so that nobody sees a message twice or one that history does not hold.
/// Both copies are in the conversation's partition, so the router that routes one routes both.
///
/// A router remembers only what it routed itself: a copy whose first was routed before the
/// router started (a rare retry straddling a restart) goes out again. Asking the store instead,
/// for every send, held routing to a store read per message.
#[derive(Default)]
struct RecentSends {
    first: HashMap<u64, MessageId>,
    order: VecDeque<u64>,
}

impl RecentSends {
    fn key(sent: &MessageSent) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        (sent.conversation_id, sent.sender, &sent.client_msg_id).hash(&mut hasher);
        hasher.finish()
    }

    fn remember(&mut self, key: u64, id: MessageId) {
        if self.first.insert(key, id).is_none() {
            self.order.push_back(key);
        }
        if self.order.len() > RECENT_SENDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.first.remove(&oldest);
        }
    }
}

impl Router {
    /// A router reading memberships from `members`, which must be followed from the log.
    pub fn new(
        store: Arc<dyn ReadModel>,
        presence: Arc<dyn Presence>,
        members: Arc<Memberships>,
        projected: Progress,
        partitions: u32,
    ) -> Router {
        Router {
            store,
            presence,
            members,
            projected,
            partitions,
            contacts: HashMap::new(),
            contacts_as_of: 0,
            pushed_online: HashMap::new(),
            calls: HashMap::new(),
            sends: RecentSends::default(),
        }
    }

    /// Who should see `event`, and what. A failed routing changes nothing: the event may be
    /// routed again.
    pub async fn route(&mut self, event: &Event) -> Result<Option<Routed>, StoreError> {
        use Payload::*;
        let mut kept = true;
        let recipients = match &event.payload {
            ConversationCreated(e) => e.members.clone(),
            // The follower has applied the change (see `Stage`): the members after it, and the
            // user it is about, who may have left again since.
            MemberAdded(e) => self.members_and(e.conversation_id, e.user_id).await?,
            MemberRemoved(e) => self.members_and(e.conversation_id, e.user_id).await?,
            Typing(e) => {
                kept = false;
                let mut members = self.members(e.conversation_id).await?;
                members.retain(|m| *m != e.user_id);
                members
            }
            // To every member, the sharer's other devices included. A share from someone who is
            // no member (one that raced their removal) is shown to nobody; a stop always goes
            // out, so that whoever still shows the location stops.
            LocationShared(e) => {
                let members = self.members(e.conversation_id).await?;
                if !members.contains(&e.user_id) {
                    return Ok(None);
                }
                members
            }
            LocationStopped(e) => self.members(e.conversation_id).await?,
            SessionOpened(e) => {
                return self.presence_changed(e.user_id, event.meta.occurred_at, true).await;
            }
            SessionClosed(e) => {
                return self.presence_changed(e.user_id, event.meta.occurred_at, false).await;
            }
            SignalRelayed(e) => vec![e.to_user],
            MessageSent(e) => {
                if self.is_repeated(e) {
                    return Ok(None);
                }
                self.members(e.conversation_id).await?
            }
            payload if UNPUSHED.contains(&payload.type_name()) => return Ok(None),
            payload if calls::call_of(payload).is_some() => return self.call_changed(event).await,
            payload => match payload.conversation_id() {
                Some(conversation) => self.members(conversation).await?,
                None => return Ok(None),
            },
        };
        Ok(Some(Routed {
            recipients,
            kind: event.payload.type_name(),
            at: event.meta.occurred_at,
            data: to_raw(&event.payload),
            kept,
        }))
    }

    /// Whether `sent` is a second copy of a send already routed under another message id.
    fn is_repeated(&mut self, sent: &MessageSent) -> bool {
        let key = RecentSends::key(sent);
        match self.sends.first.get(&key) {
            Some(first) => *first != sent.message_id,
            None => {
                self.sends.remember(key, sent.message_id);
                false
            }
        }
    }

    async fn members_and(
        &mut self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Vec<UserId>, StoreError> {
        let mut members = self.members(id).await?;
        if !members.contains(&user) {
            members.push(user);
        }
        Ok(members)
    }

    async fn members(&mut self, id: ConversationId) -> Result<Vec<UserId>, StoreError> {
        self.members.of(id, self.store.as_ref(), &self.projected, self.partitions).await
    }

    /// A call's event, with the call as it stands after it.
    async fn call_changed(&mut self, event: &Event) -> Result<Option<Routed>, StoreError> {
        let Some(id) = calls::call_of(&event.payload) else { return Ok(None) };
        if !self.calls.contains_key(&id)
            && let Some(stored) = self.store.call(id).await?
        {
            self.calls.insert(id, stored);
        }
        let current = self.calls.get(&id);
        // The read models may already hold this event (a store read just now): then it changes
        // nothing, and the call as stored is the call after it.
        let Some(call) = calls::fold(current, event).or_else(|| current.cloned()) else {
            return Ok(None);
        };
        let recipients = match (call.kind, call.conversation_id) {
            (CallKind::Room, Some(conversation)) => self.members(conversation).await?,
            _ => call.involved.clone(),
        };
        let mut data = serde_json::to_value(&event.payload).expect("events serialise to JSON");
        if let Some(fields) = data.as_object_mut() {
            fields.insert("call".to_owned(), serde_json::to_value(&call).expect("calls serialise"));
        }
        match call.is_live() {
            true => self.calls.insert(id, call),
            false => self.calls.remove(&id),
        };
        Ok(Some(Routed {
            recipients,
            kind: event.payload.type_name(),
            at: event.meta.occurred_at,
            data: to_raw(&data),
            kept: true,
        }))
    }

    /// Everyone who shares a conversation with `user`, `user` included (their other devices).
    async fn contacts_of(&mut self, user: UserId) -> Result<Arc<Vec<UserId>>, StoreError> {
        // Another lane's router may have changed memberships: contacts derive from them.
        let changes = self.members.changes();
        if changes != self.contacts_as_of {
            self.contacts.clear();
            self.contacts_as_of = changes;
        }
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

    /// Presence is state, not history: no feed keeps it (the current state is one query away),
    /// and connected sockets hear only of real changes.
    async fn presence_changed(
        &mut self,
        user: UserId,
        at: i64,
        opened: bool,
    ) -> Result<Option<Routed>, StoreError> {
        let online = match self.presence.status(&[user]).await {
            Ok(status) => status.first().is_some_and(|s| s.online),
            // Without the presence backend the event itself is the best guess.
            Err(_) => opened,
        };
        if self.pushed_online.get(&user) == Some(&online) {
            return Ok(None);
        }
        // Contacts first: an event whose routing fails is routed again, and must find the
        // change still unpushed.
        let recipients = self.contacts_of(user).await?.to_vec();
        self.pushed_online.insert(user, online);
        let last_seen = (!online).then_some(at);
        Ok(Some(Routed {
            recipients,
            kind: PRESENCE_CHANGED,
            at,
            data: to_raw(&PresenceChanged { user_id: user, online, last_seen }),
            kept: false,
        }))
    }
}

fn to_raw<T: Serialize>(value: &T) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(value).expect("events serialise to JSON")
}

#[cfg(test)]
mod tests {
    use switchboard_projector::presence::memory::MemoryPresence;
    use switchboard_projector::store::embedded::EmbeddedStore;
    use switchboard_schemas::{
        ConversationCreated, ConversationKind, EventMeta, LocationShared, LocationStopped,
        MemberRemoved, MessageId, MessageSent,
    };

    use switchboard_ingest::log::Cursor;

    use super::*;

    fn event(payload: impl Into<Payload>) -> Event {
        let meta = EventMeta {
            event_id: "e".to_owned(),
            occurred_at: 1,
            actor: None,
            trace_id: "t".to_owned(),
        };
        Event { meta, payload: payload.into() }
    }

    fn shared(user: UserId, conversation: ConversationId) -> Event {
        event(LocationShared {
            user_id: user,
            conversation_id: conversation,
            latitude: 1.0,
            longitude: 2.0,
            accuracy_m: None,
            expires_at: 10,
        })
    }

    /// A router on a fresh embedded store, with the memberships it reads.
    fn router() -> (Router, Arc<Memberships>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let presence = Arc::new(MemoryPresence::new("n"));
        let members = Arc::new(Memberships::default());
        let projected = Progress::new(Cursor::default());
        (Router::new(store, presence, members.clone(), projected, 8), members, dir)
    }

    async fn recipients(router: &mut Router, event: &Event) -> Option<Vec<UserId>> {
        router.route(event).await.expect("routing").map(|routed| routed.recipients)
    }

    #[tokio::test]
    async fn locations_reach_members_while_the_sharer_is_one() {
        let (mut router, members, _dir) = router();
        let (a, b, c) = (UserId(1), UserId(2), UserId(3));
        let group = ConversationId(10);
        let created = ConversationCreated {
            conversation_id: group,
            kind: ConversationKind::Group,
            title: Some("t".to_owned()),
            members: vec![a, b, c],
        };
        members.apply(&created.into());

        assert_eq!(recipients(&mut router, &shared(a, group)).await, Some(vec![a, b, c]));
        members.apply(&MemberRemoved { conversation_id: group, user_id: c }.into());
        assert_eq!(recipients(&mut router, &shared(c, group)).await, None, "c is no member");
        let stopped = event(LocationStopped { user_id: c, conversation_id: group });
        assert_eq!(recipients(&mut router, &stopped).await, Some(vec![a, b]));
    }

    #[tokio::test]
    async fn a_send_logged_twice_reaches_nobody_twice() {
        let (mut router, members, _dir) = router();
        let (a, b, direct) = (UserId(1), UserId(2), ConversationId(10));
        let created = ConversationCreated {
            conversation_id: direct,
            kind: ConversationKind::Direct,
            title: None,
            members: vec![a, b],
        };
        members.apply(&created.into());
        let sent = |id: i64, client_msg_id: &str| {
            event(MessageSent {
                conversation_id: direct,
                message_id: MessageId(id),
                sender: a,
                client_msg_id: client_msg_id.to_owned(),
                body: "hi".to_owned(),
                reply_to: None,
                attachments: Vec::new(),
            })
        };

        assert_eq!(recipients(&mut router, &sent(100, "c1")).await, Some(vec![a, b]));
        assert_eq!(recipients(&mut router, &sent(101, "c1")).await, None, "a retry logged again");
        assert_eq!(
            recipients(&mut router, &sent(100, "c1")).await,
            Some(vec![a, b]),
            "routed again"
        );
        assert_eq!(
            recipients(&mut router, &sent(102, "c2")).await,
            Some(vec![a, b]),
            "another send"
        );
    }
}
