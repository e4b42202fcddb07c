//! The CQL store against a real engine: the conformance suite, and what only this backend has to
//! show — its URLs, its migrations, paging across message buckets,
//! failing fast when the cluster is out of reach — and that it folds any history to the same read
//! models as the embedded store.
//!
//! Engine tests use the ScyllaDB or Cassandra node named by `SWITCHBOARD_CQL`
//! (`[user:password@]host:port`; `ops/engines/start.sh` runs Cassandra at `127.0.0.1:19042`, with
//! password authentication), each in a keyspace of its own that is dropped when the test ends,
//! pass or fail. The TLS test trusts the CA certificates in `SWITCHBOARD_CQL_CA` (a PEM file:
//! `ops/engines/start.sh` makes one for its node).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use switchboard_ingest::log::Cursor;
use switchboard_ingest::url::Tls;
use switchboard_schemas::{
    ConversationCreated, ConversationId, ConversationKind, Event, EventMeta, MessageId,
    MessageSent, Payload, Position, ReadUpTo, UserId,
};

use super::config::{CqlConfig, Replication};
use super::migrations::{self, MIGRATIONS};
use super::{CqlStore, bucket, open_session};
use crate::store::embedded::EmbeddedStore;
use crate::store::{Logged, Message, ReadMarker, ReadModel, StoreError, conformance, history};

const START_ENGINES: &str = "run ops/engines/start.sh and set \
                             SWITCHBOARD_CQL=cassandra:cassandra@127.0.0.1:19042 and \
                             SWITCHBOARD_CQL_CA=FILE (as ops/test.sh does)";

/// The engine's `[user:password@]host:port`, or `None` when the test is to be skipped.
fn engine() -> Option<String> {
    setting("SWITCHBOARD_CQL")
}

/// The variable's value, or `None` when it is unset and the test is to be skipped.
fn setting(variable: &str) -> Option<String> {
    let value = std::env::var(variable).ok();
    if value.is_none() {
        assert_ne!(
            std::env::var("SWITCHBOARD_REQUIRE_ENGINES").as_deref(),
            Ok("1"),
            "{variable} is unset: {START_ENGINES}"
        );
        eprintln!("skipped: {variable} is unset");
    }
    value
}

/// A keyspace name no other test, run or process uses.
fn unique_keyspace() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    format!("sb_test_{}_{micros}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs `test` with the URL of a fresh keyspace, then drops the keyspace whatever the outcome
/// (a panic is passed on once the keyspace is gone). Skipped without an engine.
async fn in_keyspace<F, T>(test: F) -> Result<(), StoreError>
where
    F: FnOnce(CqlConfig) -> T,
    T: Future<Output = Result<(), StoreError>> + Send + 'static,
{
    let Some(address) = engine() else {
        return Ok(());
    };
    let keyspace = unique_keyspace();
    let config = CqlConfig::from_url(&format!("scylla://{address}/{keyspace}")).expect("a URL");
    let outcome = tokio::spawn(test(config.clone())).await;
    open_session(&config)
        .await
        .expect("a session with the engine")
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
        .await
        .expect("dropping the test keyspace");
    match outcome {
        Ok(result) => result,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Runs `test` against a store on a fresh keyspace.
async fn with_store<F, T>(test: F) -> Result<(), StoreError>
where
    F: FnOnce(CqlStore) -> T + Send + 'static,
    T: Future<Output = Result<(), StoreError>> + Send,
{
    in_keyspace(|config| async move { test(CqlStore::connect(config).await?).await }).await
}

/// Runs each named conformance function against a store of its own.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() -> Result<(), StoreError> {
            with_store(|store| async move { conformance::$name(&store).await }).await
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

/// A long-lived keyspace sees the functions one after another, each with fresh ids. The
/// checkpoint test goes first: it owns the checkpoint, which the others' batches move on.
#[tokio::test]
async fn the_whole_suite_can_share_one_store() -> Result<(), StoreError> {
    with_store(|store| async move {
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
    })
    .await
}

#[test]
fn urls_name_nodes_keyspace_and_replication() {
    let plain = CqlConfig::from_url("scylla://127.0.0.1:19042/switchboard").expect("valid");
    assert_eq!(plain.nodes, ["127.0.0.1:19042"]);
    assert_eq!(plain.keyspace, "switchboard");
    assert_eq!(plain.replication, Replication::Simple { factor: 1 });

    let many = CqlConfig::from_url("cassandra://a:1,b,[::1]:9043,[fe80::1]/Chat_01?replication=3")
        .expect("valid");
    assert_eq!(many.nodes, ["a:1", "b:9042", "[::1]:9043", "[fe80::1]:9042"]);
    assert_eq!(many.keyspace, "chat_01", "unquoted CQL names are case-insensitive");
    assert_eq!(many.replication, Replication::Simple { factor: 3 });
    assert_eq!(many.replication.to_cql(), "{'class': 'SimpleStrategy', 'replication_factor': 3}");

    let datacenters =
        CqlConfig::from_url("scylla://h/ks?dc=eu-west,us_east&replication=2").expect("valid");
    let expected = vec!["eu-west".to_owned(), "us_east".to_owned()];
    assert_eq!(
        datacenters.replication,
        Replication::PerDatacenter { datacenters: expected, factor: 2 }
    );
    assert_eq!(
        datacenters.replication.to_cql(),
        "{'class': 'NetworkTopologyStrategy', 'eu-west': 2, 'us_east': 2}"
    );
}

#[test]
fn urls_carry_credentials_and_tls() {
    let plain = CqlConfig::from_url("scylla://h/ks").expect("valid");
    assert_eq!((plain.credentials, plain.tls), (None, None));

    let url = "scylla://app%2B1:p%40ss%3Aw%2Fd@a:1,b/ks?replication=3&ca=/etc/cql/ca%201.pem";
    let config = CqlConfig::from_url(url).expect("valid");
    assert_eq!(config.nodes, ["a:1", "b:9042"]);
    let credentials = config.credentials.as_ref().expect("credentials");
    assert_eq!((credentials.user.as_str(), credentials.password.as_str()), ("app+1", "p@ss:w/d"));
    assert_eq!(config.tls, Some(Tls { ca: Some("/etc/cql/ca 1.pem".into()) }));
    assert_eq!(config.replication, Replication::Simple { factor: 3 });
    assert!(!format!("{config:?}").contains("p@ss"), "Debug shows the password: {config:?}");

    let system = CqlConfig::from_url("cassandra://h/ks?tls=true").expect("valid");
    assert_eq!(system.tls, Some(Tls { ca: None }));
    assert_eq!(CqlConfig::from_url("scylla://h/ks?tls=false").expect("valid").tls, None);

    for (url, reason) in [
        ("scylla://app:hunter2@h/ks?tls=on", "tls must be true or false"),
        ("scylla://app:hunter2@h/ks?tls=false&ca=/ca.pem", "tls=false"),
        ("scylla://app:hunter2@h/ks?ssl=true", "unknown parameter `ssl=true`"),
        ("scylla://app:hunter2@h:x/ks", "not a port"),
        ("scylla://app:hunter2@/ks", "host is missing"),
        ("scylla://app@h/ks", "password is missing"),
    ] {
        let message = CqlConfig::from_url(url).expect_err(url).to_string();
        assert!(message.contains(reason), "`{url}`: `{message}` does not mention {reason}");
        assert!(!message.contains("hunter2"), "`{url}`: the password shows: {message}");
        assert!(message.contains("scylla://…@"), "`{message}` does not quote the URL");
    }
}

#[test]
fn bad_urls_say_what_is_wrong() {
    let long = format!("scylla://h/k{}", "s".repeat(48));
    let cases = [
        ("redis://h:6379/ks", "scheme"),
        ("scylla://h:9042", "keyspace is missing"),
        ("scylla:///ks", "host is missing"),
        ("scylla://a,,b/ks", "host is missing"),
        ("scylla://h:0/ks", "not a port"),
        ("scylla://h:x/ks", "not a port"),
        ("scylla://::1/ks", "brackets"),
        ("scylla://[::1/ks", "bracket"),
        ("scylla://[::1]x/ks", "port"),
        ("scylla://h/1ks", "keyspace"),
        ("scylla://h/ks-1", "keyspace"),
        ("scylla://h/ks/x", "keyspace"),
        (long.as_str(), "48"),
        ("scylla://h/ks?replication=0", "replication"),
        ("scylla://h/ks?replication=x", "replication"),
        ("scylla://h/ks?dc=e'u", "datacenter"),
        ("scylla://h/ks?dc=", "datacenter"),
        ("scylla://h/ks?consistency=one", "unknown parameter"),
    ];
    for (url, reason) in cases {
        match CqlConfig::from_url(url) {
            Ok(config) => panic!("`{url}` was accepted as {config:?}"),
            Err(error) => {
                let message = error.to_string();
                assert!(message.contains(reason), "`{url}`: `{message}` does not mention {reason}");
                assert!(message.contains(url), "`{message}` does not quote the URL");
            }
        }
    }
}

/// Two processes may run a migration at once, and one that died halfway runs it again.
#[test]
fn every_migration_statement_can_run_twice() {
    for migration in MIGRATIONS {
        let statements = migration.statements();
        assert!(!statements.is_empty(), "migration {} is empty", migration.version);
        for statement in statements {
            let repeatable = statement.contains("IF NOT EXISTS")
                || migrations::AddColumn::parse(&statement).is_some();
            assert!(repeatable, "not repeatable: {statement}");
            assert!(!statement.contains("--"), "a comment survived: {statement}");
        }
    }
    let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "out of order: {versions:?}");
}

#[test]
fn column_additions_are_recognised() {
    let parse = migrations::AddColumn::parse;
    assert!(parse("ALTER TABLE messages ADD attachments frozen<list<bigint>>").is_some());
    assert!(parse("alter table Messages\n  add Extra int").is_some());
    assert!(parse("ALTER TABLE messages WITH gc_grace_seconds = 1").is_none());
    assert!(parse("ALTER TABLE messages ADD").is_none());
    assert!(parse("CREATE TABLE IF NOT EXISTS t (a int PRIMARY KEY)").is_none());
}

#[tokio::test]
async fn an_unreachable_cluster_is_unavailable() {
    let config = CqlConfig::from_url("scylla://127.0.0.1:1/unreachable").expect("a URL");
    match CqlStore::connect(config).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("127.0.0.1:1"), "{message}");
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("connected to a port nothing listens on"),
    }
}

#[tokio::test]
async fn a_store_works_over_tls() -> Result<(), StoreError> {
    let Some(ca) = setting("SWITCHBOARD_CQL_CA") else {
        return Ok(());
    };
    in_keyspace(|mut config| async move {
        config.tls = Some(Tls { ca: Some(ca.into()) });
        let store = CqlStore::connect(config).await?;
        conformance::membership_and_inbox(&store).await
    })
    .await
}

#[tokio::test]
async fn a_certificate_of_another_ca_is_refused() -> Result<(), StoreError> {
    in_keyspace(|mut config| async move {
        // The system's trust store does not know the test CA.
        config.tls = Some(Tls { ca: None });
        match CqlStore::connect(config).await {
            Err(StoreError::Storage(message)) => {
                assert!(
                    message.contains("certificate verify failed"),
                    "the cause is not named: {message}"
                );
            }
            Err(other) => panic!("an untrusted certificate is no outage: {other:?}"),
            Ok(_) => panic!("trusted a certificate no CA of the trust store signed"),
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_wrong_password_is_refused_naming_the_cause() -> Result<(), StoreError> {
    in_keyspace(|mut config| async move {
        let Some(credentials) = config.credentials.as_mut() else {
            panic!("SWITCHBOARD_CQL has no credentials, but the engine is to ask for them");
        };
        credentials.password = "not-the-password-0451".to_owned();
        match CqlStore::connect(config).await {
            Err(StoreError::Storage(message)) => {
                assert!(
                    message.contains("password are incorrect"),
                    "the cause is not named: {message}"
                );
                assert!(
                    !message.contains("not-the-password-0451"),
                    "the password shows: {message}"
                );
            }
            Err(other) => panic!("a wrong password is no outage: {other:?}"),
            Ok(_) => panic!("connected with a wrong password"),
        }
        Ok(())
    })
    .await
}

fn all_versions() -> Vec<i32> {
    MIGRATIONS.iter().map(|m| m.version).collect()
}

#[tokio::test]
async fn migrations_apply_once() -> Result<(), StoreError> {
    in_keyspace(|config| async move {
        let session = open_session(&config).await?;
        assert_eq!(migrations::run(&session, &config).await?, all_versions());
        assert_eq!(migrations::run(&session, &config).await?, Vec::<i32>::new(), "nothing left");
        // A process that died after running a migration but before recording it runs all of it
        // again, column additions included.
        session
            .query_unpaged("DELETE FROM schema_migrations WHERE version = 4", ())
            .await
            .expect("forgetting migration 4");
        assert_eq!(migrations::run(&session, &config).await?, vec![4], "run again in full");
        drop(session);

        // Every later start, through the store itself, finds the schema as it is.
        let store = CqlStore::connect(config.clone()).await?;
        assert_eq!(migrations::applied_versions(&store.db.session).await?, all_versions());
        assert_eq!(migrations::run(&store.db.session, &config).await?, Vec::<i32>::new());
        conformance::last_seen(&store).await
    })
    .await
}

#[tokio::test]
async fn migrations_can_run_concurrently() -> Result<(), StoreError> {
    in_keyspace(|config| async move {
        let (first, second) =
            tokio::join!(CqlStore::connect(config.clone()), CqlStore::connect(config.clone()));
        let (first, second) = (first?, second?);
        assert_eq!(migrations::applied_versions(&first.db.session).await?, all_versions());
        // Both work, on the same tables.
        conformance::handle_uniqueness(&first).await?;
        conformance::direct_conversation_lookup(&second).await?;
        conformance::last_seen(&first).await
    })
    .await
}

fn logged(offset: u64, at: i64, payload: impl Into<Payload>) -> Logged {
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

/// Applies `events` as one batch, with a checkpoint just past them.
async fn apply(store: &dyn ReadModel, events: &[Logged]) -> Result<(), StoreError> {
    let mut cursor = Cursor::default();
    for event in events {
        cursor.advance(event.position);
    }
    store.apply(events.to_vec(), &cursor).await
}

/// Applies `events` one batch each.
async fn apply_one_by_one(store: &CqlStore, events: &[Logged]) -> Result<(), StoreError> {
    for event in events {
        apply(store, std::slice::from_ref(event)).await?;
    }
    Ok(())
}

/// A message id from `days` after the id epoch, as the id generator would make it.
fn id_on_day(days: f64, sequence: i64) -> MessageId {
    let millis = (days * 86_400_000.0) as i64;
    MessageId(millis << 22 | sequence)
}

fn send(offset: u64, conversation: ConversationId, id: MessageId, sender: UserId) -> Logged {
    logged(
        offset,
        offset as i64,
        MessageSent {
            conversation_id: conversation,
            message_id: id,
            sender,
            client_msg_id: format!("c{}", id.0),
            body: format!("body {}", id.0),
            reply_to: None,
            attachments: Vec::new(),
        },
    )
}

#[tokio::test]
async fn paging_walks_across_buckets() -> Result<(), StoreError> {
    with_store(|store| async move {
        let (a, c, other) = (UserId(1), ConversationId(10), ConversationId(11));
        // Two or three messages every ten days, then a month of silence (empty buckets), then
        // more; another conversation's messages in the same buckets.
        let days = [0.5, 3.0, 7.0, 11.0, 12.0, 19.0, 24.0, 29.0, 63.0, 64.0, 71.0, 75.0];
        let ids: Vec<MessageId> =
            days.iter().enumerate().map(|(i, &day)| id_on_day(day, i as i64)).collect();
        let buckets: BTreeSet<i32> = ids.iter().map(|id| bucket(id.0)).collect();
        assert!(buckets.len() >= 6, "the ids cover several buckets: {buckets:?}");
        let (first, last) = (buckets.first().copied(), buckets.last().copied());
        let gap = (first.unwrap_or(0)..=last.unwrap_or(0)).filter(|b| !buckets.contains(b));
        assert!(gap.count() >= 2, "some buckets in between stay empty: {buckets:?}");

        let mut events = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            events.push(send(2 * i as u64, c, id, a));
            events.push(send(2 * i as u64 + 1, other, MessageId(id.0 + 1000), a));
        }
        apply(&store, &events).await?;

        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store.messages(c, before, 5).await?;
            if page.is_empty() {
                break;
            }
            assert!(page.iter().all(|m| m.conversation_id == c));
            before = page.last().map(|m| m.id);
            seen.extend(page.into_iter().map(|m| (m.id, m.seq)));
        }
        let expected: Vec<(MessageId, u64)> =
            ids.iter().copied().zip(1..).collect::<Vec<_>>().into_iter().rev().collect();
        assert_eq!(seen, expected, "newest first across buckets, nothing skipped or repeated");

        // `before` past the newest message, in an empty bucket, and at the oldest one.
        let future = id_on_day(400.0, 0);
        assert_eq!(
            store.messages(c, Some(future), 2).await?.iter().map(|m| m.id).collect::<Vec<_>>(),
            [ids[11], ids[10]]
        );
        let silence = id_on_day(45.0, 0);
        let page = store.messages(c, Some(silence), 3).await?;
        assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[7], ids[6], ids[5]]);
        assert_eq!(store.messages(c, Some(ids[0]), 10).await?, []);
        for &id in &ids {
            assert_eq!(store.message(c, id).await?.map(|m| m.id), Some(id));
        }

        // The rows really sit in one partition per bucket.
        let partitions = store
            .db
            .session
            .query_unpaged("SELECT DISTINCT conversation_id, bucket FROM messages", ())
            .await
            .expect("listing partitions")
            .into_rows_result()
            .expect("rows")
            .rows::<(i64, i32)>()
            .expect("typed rows")
            .filter_map(Result::ok)
            .filter(|&(conversation, _)| conversation == c.0)
            .map(|(_, bucket)| bucket)
            .collect::<BTreeSet<i32>>();
        assert_eq!(partitions, buckets);
        Ok(())
    })
    .await
}

/// A lane longer than one write batch ends as the same events applied one at a time do, and
/// replaying it changes nothing.
#[tokio::test]
async fn long_lanes_are_written_in_several_batches() -> Result<(), StoreError> {
    with_store(|store| async move {
        let (a, b) = (UserId(1), UserId(2));
        let (long, single) = (ConversationId(100), ConversationId(200));
        let make = |conversation: ConversationId, base: u64| {
            let mut events = vec![logged(
                base,
                0,
                ConversationCreated {
                    conversation_id: conversation,
                    kind: ConversationKind::Group,
                    title: Some("t".to_owned()),
                    members: vec![a, b],
                },
            )];
            for i in 1..60 {
                let id = MessageId(conversation.0 * 1000 + i as i64);
                events.push(send(base + i, conversation, id, if i % 2 == 0 { a } else { b }));
                if i % 7 == 0 {
                    let read =
                        ReadUpTo { conversation_id: conversation, user_id: a, message_id: id };
                    events.push(logged(base + i + 500, 0, read));
                }
            }
            events
        };
        let (batched, one_by_one) = (make(long, 0), make(single, 10_000));
        apply(&store, &batched).await?;
        apply_one_by_one(&store, &one_by_one).await?;
        let (x, y) = (store.conversation(long).await?, store.conversation(single).await?);
        let (x, y) = (x.expect("long exists"), y.expect("single exists"));
        assert_eq!((x.message_count, y.message_count), (59, 59));
        let seqs = |page: Vec<Message>| page.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(store.messages(long, None, 100).await?),
            seqs(store.messages(single, None, 100).await?)
        );
        assert_eq!(store.inbox(a).await?.iter().map(|e| e.unread).collect::<Vec<_>>(), [1, 1]);
        let markers =
            |m: Vec<ReadMarker>| m.into_iter().map(|m| m.message_id.0 % 1000).collect::<Vec<_>>();
        assert_eq!(
            markers(store.read_markers(long).await?),
            markers(store.read_markers(single).await?)
        );

        let dump = store.dump().await?;
        apply(&store, &batched).await?;
        assert_eq!(store.dump().await?, dump);
        Ok(())
    })
    .await
}

/// Two stores taking turns at a conversation's partition, as projectors do when the log's
/// partitions move between nodes: each batch folds what the other wrote in between, even though
/// a store carries the rows of its own last batch into the next.
#[tokio::test]
async fn a_store_sees_what_another_applied_between_its_batches() -> Result<(), StoreError> {
    in_keyspace(|config| async move {
        let first = CqlStore::connect(config.clone()).await?;
        let second = CqlStore::connect(config).await?;
        let (a, b, c) = (UserId(1), UserId(2), ConversationId(10));
        apply(&first, &[send(0, c, MessageId(100), a), send(1, c, MessageId(101), b)]).await?;
        apply(&second, &[send(2, c, MessageId(102), a)]).await?;
        apply(&first, &[send(3, c, MessageId(103), b)]).await?;

        let seqs: Vec<(i64, u64)> =
            first.messages(c, None, 10).await?.iter().map(|m| (m.id.0, m.seq)).collect();
        assert_eq!(seqs, [(103, 4), (102, 3), (101, 2), (100, 1)]);
        Ok(())
    })
    .await
}

/// A store that wrote every client id of its keyspace so far takes them as known, and reads
/// them again once it takes up a partition another store has written: a retried send logged
/// there is still told apart from a new one.
#[tokio::test]
async fn a_partition_taken_up_from_another_store_has_its_client_ids_read() -> Result<(), StoreError>
{
    in_keyspace(|config| async move {
        let first = CqlStore::connect(config.clone()).await?;
        let second = CqlStore::connect(config).await?;
        let (a, c, d) = (UserId(1), ConversationId(10), ConversationId(11));
        let on_partition = |partition, mut logged: Logged| {
            logged.position.partition = partition;
            logged
        };
        let retry = |offset, id| {
            let mut retry = send(offset, d, MessageId(id), a);
            if let Payload::MessageSent(sent) = &mut retry.event.payload {
                sent.client_msg_id = "the same send".to_owned();
            }
            on_partition(1, retry)
        };
        apply(&first, &[send(0, c, MessageId(100), a)]).await?;
        apply(&second, &[retry(0, 200)]).await?;
        apply(&first, &[send(1, c, MessageId(101), a), retry(1, 201)]).await?;

        let kept: Vec<i64> = first.messages(d, None, 10).await?.iter().map(|m| m.id.0).collect();
        assert_eq!(kept, [200], "the retry is not a second message");
        assert_eq!(first.messages(c, None, 10).await?.len(), 2);
        Ok(())
    })
    .await
}

/// A batch that fails part way, and then one whose caller gives up on it any number of times,
/// applied whole at last leave the read models the embedded store makes of the same events: what
/// the failed attempt landed is read again, rather than taken from the rows the store carried
/// from the batch before, and none of its sends is taken for a new one a second time. Four
/// conversations have lanes longer than a write batch; the failure is a send too large for the
/// engine to take, in the middle of one of them.
#[tokio::test]
async fn a_batch_that_failed_part_way_and_is_applied_again_lands_once() -> Result<(), StoreError> {
    with_store(|store| async move {
        let (a, b) = (UserId(1), UserId(2));
        let conversations: Vec<ConversationId> = (10..50).map(ConversationId).collect();
        let mut carried_from = Vec::new();
        for (offset, &conversation) in (0..).zip(&conversations) {
            let created = ConversationCreated {
                conversation_id: conversation,
                kind: ConversationKind::Group,
                title: Some("t".to_owned()),
                members: vec![a, b],
            };
            carried_from.push(logged(offset, 0, created));
            carried_from.push(send(offset, conversation, MessageId(conversation.0 * 1000), a));
        }
        // Going on where the first batch left off, so that the store takes its carried rows.
        let mut batch = Vec::new();
        let mut offset = conversations.len() as u64;
        for n in 1..60 {
            // Four long conversations, and two more sends in each of the others.
            for &conversation in conversations.iter().take(if n > 2 { 4 } else { 40 }) {
                let id = MessageId(conversation.0 * 1000 + n);
                batch.push(send(offset, conversation, id, if n % 2 == 0 { a } else { b }));
                offset += 1;
            }
        }
        let dir = tempfile::TempDir::new().expect("temp dir");
        let local = EmbeddedStore::open(dir.path())?;
        apply(&local, &carried_from).await?;
        apply(&local, &batch).await?;

        apply(&store, &carried_from).await?;
        let mut failing = batch.clone();
        let too_large = failing
            .iter_mut()
            .find(|logged| {
                matches!(&logged.event.payload, Payload::MessageSent(sent)
                    if sent.message_id == MessageId(10_040))
            })
            .expect("the 40th send of conversation 10");
        if let Payload::MessageSent(sent) = &mut too_large.event.payload {
            // Over the largest logged batch either engine takes (50 KiB in Cassandra, 1 MiB in
            // ScyllaDB, by default).
            sent.body = "x".repeat(1100 * 1024);
        }
        let refused = apply(&store, &failing).await;
        assert!(refused.is_err(), "the engine took a batch over its limit: {refused:?}");
        for cut_ms in [2, 10, 40] {
            let cut = std::time::Duration::from_millis(cut_ms);
            let _ = tokio::time::timeout(cut, apply(&store, &batch)).await;
        }
        apply(&store, &batch).await?;
        assert_eq!(store.dump().await?, local.dump().await?);
        Ok(())
    })
    .await
}

proptest! {
    // Each case makes a keyspace, which takes the engine a few seconds.
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// The two stores run the same rules: a history, however each is handed it, leaves them with
    /// the same read models.
    #[test]
    fn a_history_folds_to_the_same_read_models_as_in_the_embedded_store(
        (_, embedded, cql) in history::history_delivered_twice(80)
    ) {
        if engine().is_none() {
            return Ok(());
        }
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(with_store(|store| async move {
            let dir = tempfile::TempDir::new().expect("temp dir");
            let local = EmbeddedStore::open(dir.path())?;
            history::deliver(&local, &embedded).await?;
            history::deliver(&store, &cql).await?;
            assert_eq!(store.dump().await?, local.dump().await?);
            Ok(())
        }))?;
    }
}
