//! The behaviour every [`ReadModel`] backend must show, written once against the trait.
//!
//! Each backend's tests call these functions with a store of their own. Every function makes its
//! own users, conversations and messages with fresh ids (unique across runs too, so a long-lived
//! CQL keyspace can be reused), which lets the functions share one store when run one after
//! another. Two of them look at the store as a whole and want no other writer while they run:
//! [`reapplying_changes_nothing`] compares dumps and [`checkpoint_round_trip`] owns the
//! checkpoint.
//!
//! A function returns `Err` when the store fails and panics when it answers wrongly.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use switchboard_ingest::log::Cursor;
use switchboard_schemas::{
    CallAccepted, CallBusy, CallEnded, CallId, CallInvited, CallMedia, CallMissed,
    ConversationCreated, ConversationId, ConversationKind, ConversationRenamed, Delivered, Event,
    EventMeta, LocationShared, LocationStopped, MediaId, MediaUploaded, MemberAdded, MemberRemoved,
    MessageDeleted, MessageEdited, MessageId, MessageSent, ParticipantJoined, ParticipantLeft,
    Payload, Position, ProfileUpdated, ReadUpTo, RoomStarted, SessionClosed, SessionOpened, Topic,
    Typing, UserId, UserRegistered,
};

use super::{CallKind, CallOutcome, CallState, Location, Logged, Media, ReadModel, StoreError};

/// Ids (and event times) no earlier run has used: they start from the wall clock in
/// microseconds and only go up, which also keeps message ids time-ordered as real ones are.
static NEXT: LazyLock<AtomicI64> = LazyLock::new(|| {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    AtomicI64::new(i64::try_from(micros).unwrap_or(i64::MAX / 2))
});

fn fresh() -> i64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn user() -> UserId {
    UserId(fresh())
}

fn conversation() -> ConversationId {
    ConversationId(fresh())
}

fn message() -> MessageId {
    MessageId(fresh())
}

fn call() -> CallId {
    CallId(fresh())
}

fn media() -> MediaId {
    MediaId(fresh())
}

/// An event as the projector would hand it over, at a made-up but unique log position.
fn logged(at: i64, actor: Option<UserId>, payload: impl Into<Payload>) -> Logged {
    let payload = payload.into();
    // Small offsets, as a log's are: join orders are made from them.
    static OFFSETS: AtomicU64 = AtomicU64::new(0);
    let offset = OFFSETS.fetch_add(1, Ordering::Relaxed);
    let position = Position { topic: payload.topic(), partition: 0, offset };
    let meta = EventMeta {
        event_id: format!("conformance-{}", fresh()),
        occurred_at: at,
        actor,
        trace_id: "conformance".to_owned(),
    };
    Logged { position, event: Event { meta, payload } }
}

/// Applies `events` as one batch, with a checkpoint just past them.
async fn apply(store: &dyn ReadModel, events: &[Logged]) -> Result<(), StoreError> {
    let mut cursor = Cursor::default();
    for event in events {
        cursor.advance(event.position);
    }
    store.apply(events.to_vec(), &cursor).await
}

fn register(id: UserId, handle: &str, at: i64) -> Logged {
    logged(
        at,
        Some(id),
        UserRegistered {
            user_id: id,
            handle: handle.to_owned(),
            display_name: format!("{handle} display"),
            password_hash: format!("hash-of-{id}"),
        },
    )
}

fn create(
    id: ConversationId,
    kind: ConversationKind,
    members: &[UserId],
    by: UserId,
    at: i64,
) -> Logged {
    let title = (kind == ConversationKind::Group).then(|| format!("group {id}"));
    logged(
        at,
        Some(by),
        ConversationCreated { conversation_id: id, kind, title, members: members.to_vec() },
    )
}

fn group(id: ConversationId, members: &[UserId], at: i64) -> Logged {
    create(id, ConversationKind::Group, members, members[0], at)
}

fn invite(id: CallId, caller: UserId, callee: UserId, at: i64) -> Logged {
    let invited =
        CallInvited { call_id: id, caller, callee, media: CallMedia::Video, conversation_id: None };
    logged(at, Some(caller), invited)
}

fn accept(id: CallId, callee: UserId, at: i64) -> Logged {
    logged(at, Some(callee), CallAccepted { call_id: id, user_id: callee, session_id: "s".into() })
}

fn hang_up(id: CallId, by: Option<UserId>, reason: &str, at: i64) -> Logged {
    logged(at, by, CallEnded { call_id: id, reason: reason.to_owned() })
}

fn room(id: CallId, conversation: ConversationId, by: UserId, at: i64) -> Logged {
    let started =
        RoomStarted { call_id: id, conversation_id: conversation, media: CallMedia::Audio };
    logged(at, Some(by), started)
}

fn join(id: CallId, user: UserId, at: i64) -> Logged {
    logged(at, Some(user), ParticipantJoined { call_id: id, user_id: user, session_id: "s".into() })
}

fn leave(id: CallId, user: UserId, at: i64) -> Logged {
    logged(at, Some(user), ParticipantLeft { call_id: id, user_id: user })
}

fn send(
    conversation: ConversationId,
    id: MessageId,
    sender: UserId,
    client_msg_id: &str,
    at: i64,
) -> Logged {
    send_with(conversation, id, sender, client_msg_id, &[], at)
}

fn send_with(
    conversation: ConversationId,
    id: MessageId,
    sender: UserId,
    client_msg_id: &str,
    attachments: &[MediaId],
    at: i64,
) -> Logged {
    logged(
        at,
        Some(sender),
        MessageSent {
            conversation_id: conversation,
            message_id: id,
            sender,
            client_msg_id: client_msg_id.to_owned(),
            body: format!("body of {id}"),
            reply_to: None,
            attachments: attachments.to_vec(),
        },
    )
}

fn upload(
    conversation: ConversationId,
    id: MediaId,
    uploader: UserId,
    name: Option<&str>,
    at: i64,
) -> Logged {
    logged(
        at,
        Some(uploader),
        MediaUploaded {
            conversation_id: conversation,
            media_id: id,
            uploader,
            content_type: "image/png".to_owned(),
            size: 1000 + at % 1000,
            file_name: name.map(str::to_owned),
            object_key: format!("{conversation}/{id}"),
        },
    )
}

fn read_up_to(conversation: ConversationId, user: UserId, message: MessageId, at: i64) -> Logged {
    logged(
        at,
        Some(user),
        ReadUpTo { conversation_id: conversation, user_id: user, message_id: message },
    )
}

fn edit(
    conversation: ConversationId,
    message: MessageId,
    by: UserId,
    body: &str,
    at: i64,
) -> Logged {
    logged(
        at,
        Some(by),
        MessageEdited { conversation_id: conversation, message_id: message, body: body.to_owned() },
    )
}

fn delete(conversation: ConversationId, message: MessageId, by: UserId, at: i64) -> Logged {
    logged(at, Some(by), MessageDeleted { conversation_id: conversation, message_id: message })
}

fn add(conversation: ConversationId, user: UserId, at: i64) -> Logged {
    logged(at, None, MemberAdded { conversation_id: conversation, user_id: user })
}

fn remove(conversation: ConversationId, user: UserId, at: i64) -> Logged {
    logged(at, None, MemberRemoved { conversation_id: conversation, user_id: user })
}

fn session_closed(user: UserId, at: i64) -> Logged {
    logged(
        at,
        Some(user),
        SessionClosed { user_id: user, session_id: format!("s-{at}"), node_id: "n".to_owned() },
    )
}

/// `user` shares (or moves) a position with `conversation` until `expires_at`.
fn share(
    conversation: ConversationId,
    user: UserId,
    (latitude, longitude): (f64, f64),
    accuracy_m: Option<f64>,
    expires_at: i64,
    at: i64,
) -> Logged {
    logged(
        at,
        Some(user),
        LocationShared {
            user_id: user,
            conversation_id: conversation,
            latitude,
            longitude,
            accuracy_m,
            expires_at,
        },
    )
}

fn stop_sharing(conversation: ConversationId, user: UserId, at: i64) -> Logged {
    logged(at, Some(user), LocationStopped { user_id: user, conversation_id: conversation })
}

/// The users whose locations `conversation` lists, in the order listed.
async fn sharers(
    store: &dyn ReadModel,
    conversation: ConversationId,
) -> Result<Vec<UserId>, StoreError> {
    Ok(store.locations(conversation).await?.into_iter().map(|l| l.user_id).collect())
}

/// `user`'s unread count in `conversation`, failing if the inbox does not list it.
async fn unread(
    store: &dyn ReadModel,
    user: UserId,
    conversation: ConversationId,
) -> Result<u64, StoreError> {
    let inbox = store.inbox(user).await?;
    let entry = inbox
        .iter()
        .find(|entry| entry.conversation.id == conversation)
        .unwrap_or_else(|| panic!("{conversation} is not in {user}'s inbox"));
    Ok(entry.unread)
}

async fn inbox_order(
    store: &dyn ReadModel,
    user: UserId,
) -> Result<Vec<ConversationId>, StoreError> {
    Ok(store.inbox(user).await?.into_iter().map(|entry| entry.conversation.id).collect())
}

/// Unread counts follow read markers; sending reads for the sender; markers only move forward.
pub async fn unread_counts_and_read_markers(store: &dyn ReadModel) -> Result<(), StoreError> {
    let (a, b) = (user(), user());
    let c = conversation();
    let (m1, m2, m3, m4) = (message(), message(), message(), message());
    let t = fresh();
    apply(store, &[group(c, &[a, b], t)]).await?;
    // Three messages in one batch: each sees the one before it.
    apply(
        store,
        &[send(c, m1, a, "1", t + 1), send(c, m2, a, "2", t + 2), send(c, m3, a, "3", t + 3)],
    )
    .await?;

    let seqs: Vec<u64> = store.messages(c, None, 10).await?.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [3, 2, 1], "messages of one batch are numbered in order");
    assert_eq!(unread(store, b, c).await?, 3);
    assert_eq!(unread(store, a, c).await?, 0, "the sender has read their own messages");
    let markers = store.read_markers(c).await?;
    assert_eq!(markers.len(), 1, "only the sender has a marker yet: {markers:?}");
    assert_eq!((markers[0].user_id, markers[0].message_id, markers[0].at), (a, m3, t + 3));

    apply(store, &[read_up_to(c, b, m2, t + 4)]).await?;
    assert_eq!(unread(store, b, c).await?, 1);
    let markers = store.read_markers(c).await?;
    let of_b = markers.iter().find(|m| m.user_id == b).expect("b has a marker");
    assert_eq!((of_b.message_id, of_b.at), (m2, t + 4));

    // An older receipt (another device catching up) and a receipt for a message the store has
    // never seen both leave the marker where it is.
    apply(store, &[read_up_to(c, b, m1, t + 5), read_up_to(c, b, message(), t + 6)]).await?;
    assert_eq!(unread(store, b, c).await?, 1);
    let markers = store.read_markers(c).await?;
    assert_eq!(markers.iter().find(|m| m.user_id == b).map(|m| m.message_id), Some(m2));

    apply(store, &[send(c, m4, b, "4", t + 7)]).await?;
    assert_eq!(unread(store, b, c).await?, 0, "replying reads everything before the reply");
    assert_eq!(unread(store, a, c).await?, 1);
    let markers = store.read_markers(c).await?;
    let users: Vec<UserId> = markers.iter().map(|m| m.user_id).collect();
    assert_eq!(users, [a, b], "markers are listed in member order");
    Ok(())
}

/// Paging through a conversation newest first returns every message exactly once, and never one
/// of another conversation.
pub async fn paging_has_no_gaps_or_repeats(store: &dyn ReadModel) -> Result<(), StoreError> {
    let a = user();
    let (c, other) = (conversation(), conversation());
    let t = fresh();
    apply(store, &[group(c, &[a], t), group(other, &[a], t)]).await?;
    // The other conversation's messages get ids in between, so a scan that strays past the
    // conversation's own keys would pick them up.
    let mut sent = Vec::new();
    let mut events = Vec::new();
    for i in 0..25 {
        let id = message();
        sent.push(id);
        events.push(send(c, id, a, &format!("c{i}"), t + i));
        events.push(send(other, message(), a, &format!("o{i}"), t + i));
    }
    // Applied in uneven batches so numbering carries across batch boundaries.
    for chunk in events.chunks(7) {
        apply(store, chunk).await?;
    }

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut before = None;
    loop {
        let page = store.messages(c, before, 10).await?;
        if page.is_empty() {
            break;
        }
        assert!(page.iter().all(|m| m.conversation_id == c), "a message of another conversation");
        sizes.push(page.len());
        before = page.last().map(|m| m.id);
        seen.extend(page);
    }
    assert_eq!(sizes, [10, 10, 5]);
    let ids: Vec<MessageId> = seen.iter().map(|m| m.id).collect();
    let expected: Vec<MessageId> = sent.iter().rev().copied().collect();
    assert_eq!(ids, expected, "newest first, no gaps, no repeats");
    let seqs: Vec<u64> = seen.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=25).rev().collect::<Vec<u64>>());
    assert_eq!(store.messages(c, Some(sent[0]), 10).await?, [], "nothing is older than the first");
    assert_eq!(store.messages(c, None, 0).await?, []);
    let conversation = store.conversation(c).await?.expect("conversation exists");
    assert_eq!(conversation.message_count, 25);
    assert_eq!(conversation.last_message.map(|m| m.id), Some(sent[24]));
    Ok(())
}

/// Applying a batch a second time (at-least-once delivery) leaves every read model as it was.
pub async fn reapplying_changes_nothing(store: &dyn ReadModel) -> Result<(), StoreError> {
    let (a, b, c) = (user(), user(), user());
    let (g, d) = (conversation(), conversation());
    let (m1, m2, m3, m4) = (message(), message(), message(), message());
    let (k1, k2) = (call(), call());
    let picture = media();
    let t = fresh();
    let batch = [
        register(a, &format!("alice{a}"), t),
        register(b, &format!("bob{b}"), t + 1),
        logged(t + 2, Some(a), ProfileUpdated { user_id: a, display_name: "Alice".to_owned() }),
        group(g, &[a, b], t + 3),
        create(d, ConversationKind::Direct, &[a, c], a, t + 4),
        add(g, c, t + 5),
        remove(g, b, t + 6),
        logged(
            t + 7,
            None,
            ConversationRenamed { conversation_id: g, title: "renamed".to_owned() },
        ),
        send(g, m1, a, "1", t + 8),
        send(g, m2, c, "2", t + 9),
        send(d, m3, c, "3", t + 10),
        edit(g, m1, a, "edited", t + 11),
        delete(g, m2, c, t + 12),
        read_up_to(g, a, m2, t + 13),
        logged(
            t + 14,
            Some(a),
            SessionOpened {
                user_id: a,
                session_id: "s".to_owned(),
                node_id: "n".to_owned(),
                device: None,
            },
        ),
        session_closed(a, t + 15),
        logged(t + 16, Some(c), Typing { user_id: c, conversation_id: g, active: true }),
        logged(t + 17, Some(a), Delivered { conversation_id: d, user_id: a, message_id: m3 }),
        invite(k1, a, c, t + 18),
        accept(k1, c, t + 19),
        hang_up(k1, Some(a), "hangup", t + 20),
        room(k2, g, a, t + 21),
        join(k2, a, t + 22),
        join(k2, c, t + 23),
        leave(k2, a, t + 24),
        share(g, a, (48.85, 2.35), Some(20.0), t + 60_000, t + 18),
        share(g, c, (40.41, -3.7), None, t + 60_000, t + 19),
        share(g, a, (48.86, 2.34), None, t + 60_000, t + 20),
        stop_sharing(g, c, t + 21),
        upload(g, picture, a, Some("tea.png"), t + 25),
        send_with(g, m4, a, "4", &[picture], t + 26),
    ];
    apply(store, &batch).await?;
    let dump = store.dump().await?;
    let inboxes = (store.inbox(a).await?, store.inbox(c).await?);

    apply(store, &batch).await?;
    assert_eq!(store.dump().await?, dump, "the whole batch again");
    for event in &batch {
        apply(store, std::slice::from_ref(event)).await?;
    }
    assert_eq!(store.dump().await?, dump, "each event again on its own");
    assert_eq!((store.inbox(a).await?, store.inbox(c).await?), inboxes);
    let group = store.conversation(g).await?.expect("group exists");
    assert_eq!(group.members, [a, c]);
    assert_eq!(group.message_count, 3);
    assert_eq!(
        store.live_rooms(g).await?.first().map(|room| room.participants.clone()),
        Some(vec![c])
    );
    let locations = store.locations(g).await?;
    let summary: Vec<(UserId, f64, bool)> =
        locations.iter().map(|l| (l.user_id, l.latitude, l.stopped)).collect();
    assert_eq!(summary, [(a, 48.86, false), (c, 40.41, true)]);
    assert_eq!(store.message(g, m4).await?.map(|m| m.attachments), Some(vec![picture]));
    Ok(())
}

/// A retried send (same conversation, sender and `client_msg_id`, new message id) is dropped.
pub async fn retried_send_is_deduplicated(store: &dyn ReadModel) -> Result<(), StoreError> {
    let (a, b) = (user(), user());
    let (c, other) = (conversation(), conversation());
    let (first, retry, retry_in_batch) = (message(), message(), message());
    let t = fresh();
    apply(store, &[group(c, &[a, b], t), group(other, &[a, b], t)]).await?;
    apply(store, &[send(c, first, a, "client-1", t + 1)]).await?;
    apply(store, &[send(c, retry, a, "client-1", t + 2)]).await?;

    assert_eq!(store.message(c, retry).await?, None);
    let found = store.message_by_client_id(c, a, "client-1").await?.expect("the first send");
    assert_eq!((found.id, found.seq), (first, 1));

    // The same client id from another sender, or in another conversation, is another message.
    let (from_b, elsewhere) = (message(), message());
    apply(
        store,
        &[
            send(c, from_b, b, "client-1", t + 3),
            send(other, elsewhere, a, "client-1", t + 4),
            // A retry inside one batch is caught as well.
            send(c, retry_in_batch, b, "client-1", t + 5),
        ],
    )
    .await?;
    assert_eq!(store.message(c, from_b).await?.map(|m| m.seq), Some(2));
    assert_eq!(store.message(other, elsewhere).await?.map(|m| m.seq), Some(1));
    assert_eq!(store.message(c, retry_in_batch).await?, None);
    assert_eq!(store.conversation(c).await?.map(|c| c.message_count), Some(2));
    assert_eq!(store.message_by_client_id(c, a, "client-2").await?, None);
    Ok(())
}

/// Members in join order; adding twice is once; removal drops the conversation from the inbox;
/// the inbox is ordered by last activity.
pub async fn membership_and_inbox(store: &dyn ReadModel) -> Result<(), StoreError> {
    let (a, b, c) = (user(), user(), user());
    let (first, second) = (conversation(), conversation());
    let t = fresh();
    apply(
        store,
        &[create(first, ConversationKind::Group, &[a, b], b, t), group(second, &[a, c], t + 1)],
    )
    .await?;

    let created = store.conversation(first).await?.expect("conversation exists");
    assert_eq!(created.kind, ConversationKind::Group);
    assert_eq!(created.title, Some(format!("group {first}")));
    assert_eq!((created.created_by, created.created_at), (Some(b), t));
    assert_eq!((created.message_count, created.last_message), (0, None));
    assert_eq!(inbox_order(store, a).await?, [second, first], "newest conversation first");

    let m = message();
    apply(store, &[send(first, m, b, "1", t + 2)]).await?;
    assert_eq!(inbox_order(store, a).await?, [first, second], "the latest message moves it up");

    apply(store, &[add(first, c, t + 3), add(first, c, t + 4)]).await?;
    assert_eq!(store.conversation(first).await?.map(|c| c.members), Some(vec![a, b, c]));
    assert_eq!(inbox_order(store, c).await?, [first, second]);
    assert_eq!(unread(store, c, first).await?, 1, "a new member has not read the history");

    assert!(store.is_member(first, b).await? && store.is_member(first, c).await?);
    apply(store, &[remove(first, b, t + 5)]).await?;
    assert_eq!(store.conversation(first).await?.map(|c| c.members), Some(vec![a, c]));
    assert!(!store.is_member(first, b).await?, "a removed member is no member");
    assert!(!store.is_member(second, b).await?, "nor is someone never added");
    assert_eq!(inbox_order(store, b).await?, []);
    assert!(store.read_markers(first).await?.iter().all(|m| m.user_id != b));
    apply(store, &[remove(first, b, t + 6)]).await?;

    apply(store, &[add(first, b, t + 7)]).await?;
    assert_eq!(
        store.conversation(first).await?.map(|c| c.members),
        Some(vec![a, c, b]),
        "rejoining puts the member last"
    );
    assert_eq!(unread(store, b, first).await?, 0, "their read marker survived the absence");

    apply(
        store,
        &[logged(
            t + 8,
            Some(a),
            ConversationRenamed { conversation_id: second, title: "new".to_owned() },
        )],
    )
    .await?;
    assert_eq!(store.conversation(second).await?.and_then(|c| c.title), Some("new".to_owned()));

    // Membership of an unknown conversation is not invented.
    let unknown = conversation();
    apply(store, &[add(unknown, a, t + 9)]).await?;
    assert_eq!(store.conversation(unknown).await?, None);
    assert!(!inbox_order(store, a).await?.contains(&unknown));
    Ok(())
}

/// The direct conversation of a pair is found either way round; the first one created wins.
pub async fn direct_conversation_lookup(store: &dyn ReadModel) -> Result<(), StoreError> {
    let (a, b, c) = (user(), user(), user());
    let (direct, racing, grouped) = (conversation(), conversation(), conversation());
    let t = fresh();
    apply(
        store,
        &[
            group(grouped, &[a, c], t),
            create(direct, ConversationKind::Direct, &[a, b], a, t + 1),
            create(racing, ConversationKind::Direct, &[b, a], b, t + 2),
        ],
    )
    .await?;
    assert_eq!(store.direct_conversation(a, b).await?, Some(direct));
    assert_eq!(store.direct_conversation(b, a).await?, Some(direct));
    assert_eq!(
        store.direct_conversation(a, c).await?,
        None,
        "a group is not a direct conversation"
    );
    assert_eq!(store.conversation(direct).await?.map(|c| c.kind), Some(ConversationKind::Direct));
    Ok(())
}

/// Edits and deletes change the message in place, and the conversation's last message with it.
pub async fn edit_and_delete(store: &dyn ReadModel) -> Result<(), StoreError> {
    let a = user();
    let c = conversation();
    let (m1, m2) = (message(), message());
    let t = fresh();
    apply(store, &[group(c, &[a], t), send(c, m1, a, "1", t + 1), send(c, m2, a, "2", t + 2)])
        .await?;

    apply(store, &[edit(c, m2, a, "second, edited", t + 3)]).await?;
    let edited = store.message(c, m2).await?.expect("m2 exists");
    assert_eq!(
        (edited.body.as_str(), edited.edited_at, edited.deleted),
        ("second, edited", Some(t + 3), false)
    );
    assert_eq!((edited.sent_at, edited.seq), (t + 2, 2));
    let last = store.conversation(c).await?.and_then(|c| c.last_message);
    assert_eq!(last.as_ref(), Some(&edited), "last_message shows the edit");

    apply(store, &[edit(c, m1, a, "first, edited", t + 4)]).await?;
    let last = store.conversation(c).await?.and_then(|c| c.last_message);
    assert_eq!(last.map(|m| m.id), Some(m2), "editing an older message does not make it last");

    apply(store, &[delete(c, m2, a, t + 5)]).await?;
    let deleted = store.message(c, m2).await?.expect("a deleted message keeps its place");
    assert!(deleted.deleted);
    assert_eq!(deleted.body, "");
    let conversation = store.conversation(c).await?.expect("conversation exists");
    assert_eq!(conversation.last_message, Some(deleted));
    assert_eq!(conversation.message_count, 2, "deleted messages still count");

    apply(store, &[edit(c, m2, a, "resurrected", t + 6)]).await?;
    assert_eq!(
        store.message(c, m2).await?.map(|m| m.body),
        Some(String::new()),
        "no editing once deleted"
    );

    let unknown = message();
    apply(store, &[edit(c, unknown, a, "ghost", t + 7), delete(c, unknown, a, t + 8)]).await?;
    assert_eq!(store.message(c, unknown).await?, None);
    let page = store.messages(c, None, 10).await?;
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), [m2, m1]);
    assert_eq!(page[1].body, "first, edited");
    Ok(())
}

/// Users by id and by handle; handles are unique regardless of case and the first one wins.
pub async fn handle_uniqueness(store: &dyn ReadModel) -> Result<(), StoreError> {
    let (first, second) = (user(), user());
    let handle = format!("Ada{first}");
    let t = fresh();
    apply(store, &[register(first, &handle, t)]).await?;
    apply(store, &[register(second, &handle.to_uppercase(), t + 1)]).await?;

    let found = store.user_by_handle(&handle.to_lowercase()).await?.expect("the handle is taken");
    assert_eq!(found.id, first);
    assert_eq!((found.handle.as_str(), found.created_at), (handle.as_str(), t));
    assert_eq!(found.password_hash, format!("hash-of-{first}"));
    assert_eq!(store.user(second).await?, None, "the losing registration leaves no user");
    assert_eq!(store.user(first).await?, Some(found));

    apply(
        store,
        &[logged(
            t + 2,
            Some(first),
            ProfileUpdated { user_id: first, display_name: "Ada L.".to_owned() },
        )],
    )
    .await?;
    assert_eq!(store.user(first).await?.map(|u| u.display_name), Some("Ada L.".to_owned()));
    assert_eq!(store.user_by_handle(&format!("nobody{second}")).await?, None);
    Ok(())
}

/// Handles and direct pairs go to the smallest id, whichever registration or conversation was
/// applied first, so that a rebuild reading the log's partitions in another order agrees.
pub async fn contested_handles_and_pairs_go_to_the_smallest_id(
    store: &dyn ReadModel,
) -> Result<(), StoreError> {
    let (ada, ada_late, bob, bob_late, cy, cy_late) =
        (user(), user(), user(), user(), user(), user());
    let (pair_first, pair_second, reversed_first, reversed_second) =
        (conversation(), conversation(), conversation(), conversation());
    let t = fresh();
    let direct =
        |id, members: &[UserId], at| create(id, ConversationKind::Direct, members, members[0], at);
    // `ada` and the pair (ada, bob) come in id order, one event per batch; `bob` and the pair
    // (cy, bob) in reverse order within one batch; `cy` in reverse order across batches.
    let in_order = [
        register(ada, &format!("ada{t}"), t),
        register(ada_late, &format!("ADA{t}"), t + 1),
        direct(pair_first, &[ada, bob], t + 2),
        direct(pair_second, &[bob, ada], t + 3),
    ];
    for event in &in_order {
        apply(store, std::slice::from_ref(event)).await?;
    }
    let reversed = [
        register(bob_late, &format!("bob{t}"), t + 4),
        register(bob, &format!("Bob{t}"), t + 5),
        direct(reversed_second, &[cy, bob], t + 6),
        direct(reversed_first, &[bob, cy], t + 7),
    ];
    apply(store, &reversed).await?;
    let late =
        [register(cy_late, &format!("cy{t}"), t + 8), register(cy, &format!("cy{t}"), t + 9)];
    for event in &late {
        apply(store, std::slice::from_ref(event)).await?;
    }

    for (handle, holder, loser) in [
        (format!("ada{t}"), ada, ada_late),
        (format!("BOB{t}"), bob, bob_late),
        (format!("Cy{t}"), cy, cy_late),
    ] {
        let found = store.user_by_handle(&handle.to_lowercase()).await?.map(|user| user.id);
        assert_eq!(found, Some(holder), "{handle}");
        assert_eq!(store.user(loser).await?, None, "{handle}: the loser leaves no user");
    }
    assert_eq!(store.direct_conversation(bob, ada).await?, Some(pair_first));
    assert_eq!(store.direct_conversation(cy, bob).await?, Some(reversed_first));
    Ok(())
}

/// The checkpoint reads back as it was applied, and moves with every batch.
pub async fn checkpoint_round_trip(store: &dyn ReadModel) -> Result<(), StoreError> {
    let mut cursor = Cursor::default();
    cursor.set(Topic::Users, 0, 5);
    cursor.set(Topic::Messages, 3, 17);
    store.apply(Vec::new(), &cursor).await?;
    assert_eq!(store.checkpoint().await?, cursor);

    let event = register(user(), &format!("cp{}", fresh()), fresh());
    cursor.advance(Position { topic: Topic::Messages, partition: 3, offset: 40 });
    store.apply(vec![event], &cursor).await?;
    assert_eq!(store.checkpoint().await?, cursor);
    Ok(())
}

/// Last seen is the time of the latest closed session.
pub async fn last_seen(store: &dyn ReadModel) -> Result<(), StoreError> {
    let a = user();
    let t = fresh();
    assert_eq!(store.last_seen(a).await?, None);
    apply(store, &[session_closed(a, t + 10)]).await?;
    assert_eq!(store.last_seen(a).await?, Some(t + 10));
    apply(store, &[session_closed(a, t + 20), session_closed(a, t + 15)]).await?;
    assert_eq!(store.last_seen(a).await?, Some(t + 20), "a late, older close does not go back");
    Ok(())
}

/// Messages may be read before the conversation that holds them (they are different topics, and
/// a rebuild reads topics in any interleaving); they are not lost.
pub async fn messages_before_their_conversation(store: &dyn ReadModel) -> Result<(), StoreError> {
    let (a, b) = (user(), user());
    let c = conversation();
    let (m1, m2) = (message(), message());
    let t = fresh();
    apply(store, &[send(c, m1, a, "1", t + 1), read_up_to(c, b, m1, t + 2)]).await?;
    assert_eq!(store.conversation(c).await?, None);
    apply(store, &[group(c, &[a, b], t), send(c, m2, a, "2", t + 3)]).await?;
    let conversation = store.conversation(c).await?.expect("conversation exists");
    assert_eq!(conversation.message_count, 2);
    assert_eq!(conversation.last_message.map(|m| m.id), Some(m2));
    assert_eq!(unread(store, b, c).await?, 1);
    Ok(())
}

/// A 1:1 call rings, is answered and ends; a busy call and a group room go into history; the
/// live indexes follow the calls.
pub async fn calls_history_and_live_calls(store: &dyn ReadModel) -> Result<(), StoreError> {
    let (a, b, c) = (user(), user(), user());
    let g = conversation();
    let (answered, busy, missed, room_id) = (call(), call(), call(), call());
    let t = fresh();
    apply(store, &[invite(answered, a, b, t)]).await?;
    let ringing = store.call(answered).await?.expect("the call is stored");
    assert_eq!((ringing.kind, ringing.state), (CallKind::Direct, CallState::Ringing));
    assert_eq!(live_ids(store, b).await?, [answered], "the callee's phone rings");

    let busy_event = CallBusy { call_id: busy, user_id: b, caller: Some(c), media: None };
    apply(
        store,
        &[
            accept(answered, b, t + 1_000),
            logged(t + 1_001, Some(c), busy_event),
            invite(missed, c, a, t + 1_002),
            logged(t + 31_002, None, CallMissed { call_id: missed }),
        ],
    )
    .await?;
    let active = store.call(answered).await?.expect("stored");
    assert_eq!((active.state, active.outcome), (CallState::Active, Some(CallOutcome::Answered)));
    assert_eq!(active.participants, [a, b]);
    assert_eq!(live_ids(store, a).await?, [answered], "a missed call is not live");

    apply(store, &[hang_up(answered, Some(a), "hangup", t + 61_000)]).await?;
    let ended = store.call(answered).await?.expect("stored");
    assert_eq!(ended.state, CallState::Ended);
    assert_eq!(ended.duration_ms, Some(60_000));
    assert!(live_ids(store, a).await?.is_empty() && live_ids(store, b).await?.is_empty());

    let outcomes = |calls: Vec<super::Call>| -> Vec<(CallId, Option<CallOutcome>)> {
        calls.into_iter().map(|call| (call.id, call.outcome)).collect()
    };
    assert_eq!(
        outcomes(store.call_history(b, None, 10).await?),
        [(busy, Some(CallOutcome::Busy)), (answered, Some(CallOutcome::Answered))],
        "newest first"
    );
    assert_eq!(
        outcomes(store.call_history(a, Some(missed), 10).await?),
        [(answered, Some(CallOutcome::Answered))],
        "strictly older than the cursor"
    );
    assert_eq!(
        outcomes(store.call_history(a, None, 1).await?),
        [(missed, Some(CallOutcome::Missed))]
    );

    apply(store, &[group(g, &[a, b, c], t), room(room_id, g, a, t + 1), join(room_id, a, t + 2)])
        .await?;
    apply(store, &[join(room_id, c, t + 3), leave(room_id, a, t + 4)]).await?;
    let open = store.live_rooms(g).await?;
    assert_eq!(
        open.iter().map(|room| (room.id, room.participants.clone())).collect::<Vec<_>>(),
        [(room_id, vec![c])]
    );
    assert_eq!(live_ids(store, c).await?, [room_id]);
    assert!(!live_ids(store, a).await?.contains(&room_id), "a left the room");

    apply(store, &[leave(room_id, c, t + 5), hang_up(room_id, None, "empty", t + 6)]).await?;
    assert!(store.live_rooms(g).await?.is_empty(), "the room closed");
    let closed = store.call(room_id).await?.expect("stored");
    assert_eq!((closed.kind, closed.involved.clone()), (CallKind::Room, vec![a, c]));
    assert!(store.call_history(c, None, 10).await?.iter().any(|call| call.id == room_id));
    assert!(
        store.call_history(b, None, 10).await?.iter().all(|call| call.id != room_id),
        "b never joined"
    );
    Ok(())
}

async fn live_ids(store: &dyn ReadModel, user: UserId) -> Result<Vec<CallId>, StoreError> {
    Ok(store.live_calls(user).await?.into_iter().map(|call| call.id).collect())
}

/// A share sets a location, a move replaces it whole, a stop keeps the last position, sharing
/// again restarts; the list holds current members only, in join order.
pub async fn locations_follow_shares_moves_and_stops(
    store: &dyn ReadModel,
) -> Result<(), StoreError> {
    let (a, b, c) = (user(), user(), user());
    let (g, other) = (conversation(), conversation());
    let t = fresh();
    let hour = 3_600_000;
    // The presence topic may be read before the conversations topic: a location shared with a
    // conversation the store does not know yet is kept, and listed once its sharer is a member.
    apply(store, &[share(g, b, (35.68, 139.69), Some(3.0), t + hour, t + 1)]).await?;
    assert_eq!(sharers(store, g).await?, []);
    apply(store, &[group(g, &[a, b, c], t), group(other, &[a, b], t)]).await?;
    apply(store, &[share(g, a, (51.5, -0.12), Some(10.0), t + hour, t + 2)]).await?;
    assert_eq!(sharers(store, g).await?, [a, b], "members in join order");
    assert_eq!(sharers(store, other).await?, [], "shared with one conversation only");

    apply(store, &[share(g, a, (51.6, -0.13), None, t + hour, t + 3)]).await?;
    let moved = store.location(g, a).await?.expect("a shares");
    let expected = Location {
        user_id: a,
        latitude: 51.6,
        longitude: -0.13,
        accuracy_m: None,
        updated_at: t + 3,
        expires_at: t + hour,
        stopped: false,
    };
    assert_eq!(moved, expected, "a move replaces position and accuracy");
    assert!(moved.live_at(t + 4));
    assert!(!moved.live_at(t + hour), "a share runs out by itself at expires_at");

    apply(store, &[stop_sharing(g, a, t + 5)]).await?;
    let stopped = store.location(g, a).await?.expect("a stopped location is still known");
    assert_eq!(stopped, Location { stopped: true, ..expected }, "the last position stays");
    assert!(!stopped.live_at(t + 6));

    apply(store, &[share(g, a, (40.0, 3.0), Some(5.0), t + 2 * hour, t + 7)]).await?;
    let again = store.location(g, a).await?.expect("a shares again");
    assert!(again.live_at(t + 8) && (again.latitude, again.expires_at) == (40.0, t + 2 * hour));

    apply(store, &[stop_sharing(g, c, t + 9)]).await?;
    assert_eq!(store.location(g, c).await?, None, "stopping what was never shared leaves nothing");

    apply(store, &[remove(g, b, t + 10)]).await?;
    assert_eq!(sharers(store, g).await?, [a], "a former member is not listed");
    assert!(store.location(g, b).await?.is_some(), "but what they shared is still known");
    apply(store, &[add(g, b, t + 11)]).await?;
    assert_eq!(sharers(store, g).await?, [a, b]);
    Ok(())
}

/// Location events are ordered by their log offsets: one applied again after later ones (a
/// redelivery) does not undo them, whether it is a share or a stop.
pub async fn older_location_events_do_not_win(store: &dyn ReadModel) -> Result<(), StoreError> {
    let a = user();
    let g = conversation();
    let t = fresh();
    let expires = t + 3_600_000;
    let first = share(g, a, (10.0, 10.0), None, expires, t + 1);
    let second = share(g, a, (20.0, 20.0), Some(1.0), expires, t + 2);
    let stopped = stop_sharing(g, a, t + 3);
    let latitude = |location: Option<Location>| location.map(|l| (l.latitude, l.stopped));
    apply(store, &[group(g, &[a], t)]).await?;

    apply(store, std::slice::from_ref(&second)).await?;
    apply(store, std::slice::from_ref(&first)).await?;
    assert_eq!(latitude(store.location(g, a).await?), Some((20.0, false)));

    apply(store, std::slice::from_ref(&stopped)).await?;
    apply(store, &[first.clone(), second.clone()]).await?;
    assert_eq!(latitude(store.location(g, a).await?), Some((20.0, true)), "the stop stands");
    let later = share(g, a, (30.0, 30.0), None, expires, t + 4);
    apply(store, &[later, stopped]).await?;
    assert_eq!(
        latitude(store.location(g, a).await?),
        Some((30.0, false)),
        "a new share after the stop restarts sharing, and the old stop does not end it"
    );
    Ok(())
}

/// Uploads are found by id with everything the event said; a message keeps the uploads it
/// carries, in order, through an edit, and loses them with its body when deleted.
pub async fn media_and_attachments(store: &dyn ReadModel) -> Result<(), StoreError> {
    let (a, b) = (user(), user());
    let (c, other) = (conversation(), conversation());
    let (photo, unnamed, elsewhere) = (media(), media(), media());
    let (with, without) = (message(), message());
    let t = fresh();
    assert_eq!(store.media(photo).await?, None);
    apply(
        store,
        &[
            group(c, &[a, b], t),
            group(other, &[a], t),
            upload(c, photo, a, Some("tea party.png"), t + 1),
            upload(c, unnamed, b, None, t + 2),
            upload(other, elsewhere, a, None, t + 3),
        ],
    )
    .await?;
    let found = store.media(photo).await?.expect("the upload is recorded");
    let expected = Media {
        id: photo,
        conversation_id: c,
        uploader: a,
        content_type: "image/png".to_owned(),
        size: (1000 + (t + 1) % 1000) as u64,
        name: Some("tea party.png".to_owned()),
        created_at: t + 1,
        object_key: format!("{c}/{photo}"),
    };
    assert_eq!(found, expected);
    let unnamed_found = store.media(unnamed).await?.expect("the second upload");
    assert_eq!((unnamed_found.uploader, unnamed_found.name), (b, None));
    assert_eq!(store.media(elsewhere).await?.map(|m| m.conversation_id), Some(other));
    assert_eq!(store.media(media()).await?, None, "no upload is invented");

    apply(
        store,
        &[send_with(c, with, b, "w", &[unnamed, photo], t + 4), send(c, without, a, "o", t + 5)],
    )
    .await?;
    let page = store.messages(c, None, 10).await?;
    let attachments: Vec<Vec<MediaId>> = page.iter().map(|m| m.attachments.clone()).collect();
    assert_eq!(attachments, [vec![], vec![unnamed, photo]], "in the order the sender gave");
    apply(store, &[edit(c, with, b, "edited", t + 6)]).await?;
    assert_eq!(
        store.message(c, with).await?.map(|m| m.attachments),
        Some(vec![unnamed, photo]),
        "an edit keeps the attachments"
    );
    apply(store, &[delete(c, with, b, t + 7)]).await?;
    let deleted = store.message(c, with).await?.expect("a tombstone");
    assert!(deleted.deleted && deleted.attachments.is_empty(), "{deleted:?}");
    assert_eq!(store.media(photo).await?, Some(expected), "the upload itself stays");
    Ok(())
}
