//! The conformance suite against [`EmbeddedStore`], plus what only a store on disk has to show:
//! its data and checkpoint outlive the process that wrote them, and it folds a history to the same
//! read models however the history is delivered.

use std::path::Path;

use proptest::prelude::*;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{
    ConversationCreated, ConversationId, ConversationKind, Event, EventMeta, MessageId,
    MessageSent, Position, Topic, UserId, UserRegistered,
};
use tempfile::TempDir;

use super::{COMMIT_EVERY, EmbeddedStore};
use crate::store::{Logged, ReadModel, StoreError, conformance, history};

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir).expect("open the store")
}

/// Runs each named conformance function against a store of its own.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() -> Result<(), StoreError> {
            let dir = TempDir::new().expect("temp dir");
            conformance::$name(&open(dir.path())).await
        }
    )*};
}

conformance! {
    unread_counts_and_read_markers,
    paging_has_no_gaps_or_repeats,
    reapplying_changes_nothing,
    retried_send_is_deduplicated,
    membership_and_inbox,
    direct_conversation_lookup,
    contested_handles_and_pairs_go_to_the_smallest_id,
    edit_and_delete,
    handle_uniqueness,
    checkpoint_round_trip,
    last_seen,
    messages_before_their_conversation,
    calls_history_and_live_calls,
    locations_follow_shares_moves_and_stops,
    older_location_events_do_not_win,
    media_and_attachments,
}

#[tokio::test]
async fn the_whole_suite_can_share_one_store() -> Result<(), StoreError> {
    let dir = TempDir::new().expect("temp dir");
    let store = open(dir.path());
    // First: checkpoints only move forward, and the other checks move them.
    conformance::checkpoint_round_trip(&store).await?;
    conformance::unread_counts_and_read_markers(&store).await?;
    conformance::paging_has_no_gaps_or_repeats(&store).await?;
    conformance::reapplying_changes_nothing(&store).await?;
    conformance::retried_send_is_deduplicated(&store).await?;
    conformance::membership_and_inbox(&store).await?;
    conformance::direct_conversation_lookup(&store).await?;
    conformance::contested_handles_and_pairs_go_to_the_smallest_id(&store).await?;
    conformance::edit_and_delete(&store).await?;
    conformance::handle_uniqueness(&store).await?;
    conformance::last_seen(&store).await?;
    conformance::messages_before_their_conversation(&store).await?;
    conformance::calls_history_and_live_calls(&store).await?;
    conformance::locations_follow_shares_moves_and_stops(&store).await?;
    conformance::older_location_events_do_not_win(&store).await?;
    conformance::media_and_attachments(&store).await
}

fn logged(offset: u64, at: i64, payload: impl Into<switchboard_schemas::Payload>) -> Logged {
    let payload = payload.into();
    let position = Position { topic: payload.topic(), partition: 0, offset };
    let meta = EventMeta {
        event_id: format!("e{offset}"),
        occurred_at: at,
        actor: None,
        trace_id: String::new(),
    };
    Logged { position, event: Event { meta, payload } }
}

/// A small history: a user, a direct conversation, three messages.
fn history() -> Vec<Logged> {
    let (a, b) = (UserId(1), UserId(2));
    let c = ConversationId(10);
    let mut events = vec![
        logged(
            0,
            1_000,
            UserRegistered {
                user_id: a,
                handle: "ada".to_owned(),
                display_name: "Ada".to_owned(),
                password_hash: "h".to_owned(),
            },
        ),
        logged(
            1,
            1_001,
            ConversationCreated {
                conversation_id: c,
                kind: ConversationKind::Direct,
                title: None,
                members: vec![a, b],
            },
        ),
    ];
    for i in 0..3 {
        events.push(logged(
            2 + i,
            1_002 + i as i64,
            MessageSent {
                conversation_id: c,
                message_id: MessageId(100 + i as i64),
                sender: a,
                client_msg_id: format!("c{i}"),
                body: format!("hello {i}"),
                reply_to: None,
                attachments: Vec::new(),
            },
        ));
    }
    events
}

fn cursor_after(events: &[Logged]) -> Cursor {
    let mut cursor = Cursor::default();
    for event in events {
        cursor.advance(event.position);
    }
    cursor
}

#[tokio::test]
async fn reopening_keeps_data_and_checkpoint() -> Result<(), StoreError> {
    let dir = TempDir::new().expect("temp dir");
    let events = history();
    let checkpoint = cursor_after(&events);
    let dump = {
        let store = open(dir.path());
        store.apply(events, &checkpoint).await?;
        store.dump().await?
    };

    let store = open(dir.path());
    assert_eq!(store.checkpoint().await?, checkpoint);
    assert_eq!(store.dump().await?, dump);
    assert_eq!(store.user_by_handle("ADA").await?.map(|u| u.id), Some(UserId(1)));
    let page = store.messages(ConversationId(10), None, 10).await?;
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 2, 1]);
    assert_eq!(store.direct_conversation(UserId(2), UserId(1)).await?, Some(ConversationId(10)));
    // Client ids stored before the reopen are known to the retry check and to the fold, once
    // they are loaded into the filter that answers for the absent ones.
    while !store.inner.client_ids.is_loaded() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(!store.inner.client_ids.may_contain(b"never stored"));
    let stored = store.message_by_client_id(ConversationId(10), UserId(1), "c1").await?;
    assert_eq!(stored.map(|m| m.id), Some(MessageId(101)));
    let retry = MessageSent {
        conversation_id: ConversationId(10),
        message_id: MessageId(999),
        sender: UserId(1),
        client_msg_id: "c1".to_owned(),
        body: "hello again".to_owned(),
        reply_to: None,
        attachments: Vec::new(),
    };
    store.apply(vec![logged(99, 2_000, retry)], &checkpoint).await?;
    assert_eq!(store.message(ConversationId(10), MessageId(999)).await?, None);
    Ok(())
}

#[tokio::test]
async fn a_fresh_store_starts_from_nothing() -> Result<(), StoreError> {
    let dir = TempDir::new().expect("temp dir");
    let store = open(dir.path());
    assert_eq!(store.checkpoint().await?, Cursor::default());
    assert_eq!(store.dump().await?, "");
    Ok(())
}

/// Batch boundaries do not show in the result: a rebuild that reads the log in other chunks than
/// the live projector did ends in the same state.
#[tokio::test]
async fn batching_does_not_change_the_result() -> Result<(), StoreError> {
    let events = history();
    let (one_dir, each_dir) =
        (TempDir::new().expect("temp dir"), TempDir::new().expect("temp dir"));
    let (in_one, one_by_one) = (open(one_dir.path()), open(each_dir.path()));
    in_one.apply(events.clone(), &cursor_after(&events)).await?;
    for (i, event) in events.iter().enumerate() {
        one_by_one.apply(vec![event.clone()], &cursor_after(&events[..=i])).await?;
    }
    let dump = in_one.dump().await?;
    assert_eq!(one_by_one.dump().await?, dump);
    assert_eq!(in_one.checkpoint().await?, one_by_one.checkpoint().await?);
    // Every table shows up, keyed readably.
    assert!(dump.contains("handles ada "), "{dump}");
    assert!(dump.contains("messages 10/102 "), "{dump}");
    assert!(dump.contains("reads 10/1 "), "{dump}");
    assert_eq!(in_one.checkpoint().await?.get(Topic::Messages, 0), Some(5));
    Ok(())
}

/// A batch longer than one commit is folded in parts, each on top of the part before while that
/// one is still being written: it ends as the same events applied in small batches do, retries of
/// sends from earlier parts included.
#[tokio::test]
async fn a_batch_committed_in_parts_folds_as_one() -> Result<(), StoreError> {
    let mut events = history();
    let sends = 2 * COMMIT_EVERY + 100;
    let send = |i: usize, client_msg_id: String| {
        logged(
            5 + i as u64,
            2_000 + i as i64,
            MessageSent {
                conversation_id: ConversationId(10),
                message_id: MessageId(1_000 + i as i64),
                sender: UserId(2),
                client_msg_id,
                body: format!("part of a long batch {i}"),
                reply_to: None,
                attachments: Vec::new(),
            },
        )
    };
    for i in 0..sends {
        // Every 1,000th send retries the very first one, from the later parts.
        let client_msg_id =
            if i > 0 && i % 1_000 == 0 { "long-0".to_owned() } else { format!("long-{i}") };
        events.push(send(i, client_msg_id));
    }
    let retries = (sends - 1) / 1_000;

    let (whole_dir, small_dir) =
        (TempDir::new().expect("temp dir"), TempDir::new().expect("temp dir"));
    let (whole, in_small_batches) = (open(whole_dir.path()), open(small_dir.path()));
    whole.apply(events.clone(), &cursor_after(&events)).await?;
    let mut applied = 0;
    for batch in events.chunks(500) {
        applied += batch.len();
        in_small_batches.apply(batch.to_vec(), &cursor_after(&events[..applied])).await?;
    }

    let conversation = whole.conversation(ConversationId(10)).await?.expect("the conversation");
    assert_eq!(conversation.message_count as usize, 3 + sends - retries);
    assert_eq!(whole.message(ConversationId(10), MessageId(2_000)).await?, None, "a retry");
    assert_eq!(whole.checkpoint().await?, cursor_after(&events));
    assert_eq!(whole.dump().await?, in_small_batches.dump().await?);
    Ok(())
}

/// Set in the child process of [`an_applied_batch_survives_an_abort`] to the store's directory.
const ABORT_CHILD_DIR: &str = "SWITCHBOARD_TEST_ABORT_CHILD_DIR";

/// Like `kill -9`: the child applies a batch and aborts at once, so no destructor gets to flush
/// anything. Whatever `apply` acknowledged must be there when the store is opened again.
#[tokio::test]
async fn an_applied_batch_survives_an_abort() -> Result<(), StoreError> {
    let events = history();
    let checkpoint = cursor_after(&events);
    if let Some(dir) = std::env::var_os(ABORT_CHILD_DIR) {
        open(Path::new(&dir)).apply(events, &checkpoint).await?;
        std::process::abort();
    }

    let dir = TempDir::new().expect("temp dir");
    let test = module_path!().split_once("::").map_or("", |(_, path)| path);
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            &format!("{test}::an_applied_batch_survives_an_abort"),
            "--exact",
            "--test-threads=1",
        ])
        .env(ABORT_CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run the child");
    assert!(!status.success(), "the child should have aborted");

    let store = open(dir.path());
    assert_eq!(store.checkpoint().await?, checkpoint);
    assert_eq!(store.conversation(ConversationId(10)).await?.map(|c| c.message_count), Some(3));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However a projector is handed a history — partitions interleaved any way, stretches of
    /// them delivered again, any batch sizes — the read models come out the same.
    #[test]
    fn every_delivery_of_a_history_folds_to_the_same_store(
        (_, one, other) in history::history_delivered_twice(80)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let (one_dir, other_dir) = (TempDir::new().expect("temp dir"), TempDir::new().expect("temp dir"));
        let (one_dump, other_dump) = runtime.block_on(async {
            let (one_store, other_store) = (open(one_dir.path()), open(other_dir.path()));
            history::deliver(&one_store, &one).await?;
            history::deliver(&other_store, &other).await?;
            Ok::<_, StoreError>((one_store.dump().await?, other_store.dump().await?))
        })?;
        prop_assert_eq!(one_dump, other_dump);
    }
}
