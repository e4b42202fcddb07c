//! The conformance suite against the embedded log, and what only the embedded log promises:
//! records and offsets survive reopening and `kill -9`, the partition count is fixed, closing
//! stops appends and readers cleanly, and however much was appended, little journal is left for
//! the next open to replay.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use switchboard_schemas::{Position, Topic};
use tempfile::TempDir;

use super::EmbeddedLog;
use crate::log::{Cursor, Log, LogError, Record, conformance};

const PARTITIONS: u32 = 4;

fn fresh() -> (TempDir, EmbeddedLog) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), PARTITIONS).expect("open");
    (dir, log)
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let (_dir, log) = fresh();
            conformance::$check(&log).await;
        }
    )*};
}

conformance!(
    appends_are_read_back_in_order,
    keys_stay_in_their_partition,
    readers_follow_the_tail,
    concurrent_appends_get_distinct_offsets,
    end_offsets_and_committed_positions,
    a_reader_starts_where_its_cursor_says,
    a_group_resumes_after_its_commit,
    appends_keep_the_order_they_were_made_in,
    a_time_names_the_first_record_taken_from_then_on,
    a_group_names_its_members_and_their_partitions,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_shares_one_log() {
    let (_dir, log) = fresh();
    conformance::run_all(&log).await;
}

/// Every record of `topic`, read from the beginning up to the current end.
async fn read_all(log: &dyn Log, topic: Topic) -> Vec<Record> {
    let total: u64 = log.end_offsets(topic).await.unwrap().iter().sum();
    let mut reader = log.reader(Cursor::beginning(log, &[topic])).await.unwrap();
    let mut records = Vec::new();
    while (records.len() as u64) < total {
        records.extend(reader.next_batch(500).await.unwrap());
    }
    records
}

async fn append_some(log: &dyn Log, topic: Topic, tag: &str, count: usize) -> Vec<Record> {
    let mut appended = Vec::new();
    for i in 0..count {
        let key = format!("{tag}-key-{}", i % 5).into_bytes();
        let value = format!("{tag}-value-{i}").into_bytes();
        let position = log.append(topic, &key, value.clone()).await.unwrap();
        appended.push(Record { position, key, value, timestamp_ms: 0 });
    }
    appended
}

fn without_timestamps(mut records: Vec<Record>) -> Vec<Record> {
    for record in &mut records {
        record.timestamp_ms = 0;
    }
    records.sort_by_key(|r| r.position);
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_every_acknowledged_record_and_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::Messages;
    let mut expected = Vec::new();
    let mut committed = Cursor::default();

    // First life ends with close(); the second only with the last handle dropped.
    {
        let log = EmbeddedLog::open(dir.path(), PARTITIONS).unwrap();
        expected.extend(append_some(&log, topic, "first", 30).await);
        committed.advance(expected[10].position);
        log.commit("projector", &committed).await.unwrap();
        log.close().await.unwrap();
    }
    {
        let log = EmbeddedLog::open(dir.path(), PARTITIONS).unwrap();
        expected.extend(append_some(&log, topic, "second", 30).await);
    }

    let log = EmbeddedLog::open(dir.path(), PARTITIONS).unwrap();
    assert_eq!(
        without_timestamps(read_all(&log, topic).await),
        without_timestamps(expected.clone())
    );
    assert_eq!(log.committed("projector").await.unwrap(), committed);

    let ends = log.end_offsets(topic).await.unwrap();
    for partition in 0..PARTITIONS {
        let stored = expected.iter().filter(|r| r.position.partition == partition).count();
        assert_eq!(ends[partition as usize], stored as u64, "end of partition {partition}");
    }
    let next = log.append(topic, b"first-key-0", b"third".to_vec()).await.unwrap();
    assert_eq!(next.offset, ends[next.partition as usize], "offsets continue after reopening");
}

#[tokio::test]
async fn reopening_with_another_partition_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), 4).unwrap();
        log.append(Topic::Users, b"u1", b"kept".to_vec()).await.unwrap();
    }
    let Err(LogError::Storage(message)) = EmbeddedLog::open(dir.path(), 8) else {
        panic!("opening a 4-partition log with 8 partitions must fail");
    };
    assert!(
        message.contains("4 partitions") && message.contains("opened with 8"),
        "the error should name both counts: {message}"
    );

    let log = EmbeddedLog::open(dir.path(), 4).unwrap();
    let records = read_all(&log, Topic::Users).await;
    assert_eq!(records.len(), 1, "the refused open must leave the log as it was");
    assert_eq!(records[0].value, b"kept");
}

#[test]
fn topic_slots_follow_topic_all() {
    // `Store::slot` indexes partitions by `topic as usize`, while `open` lays them out in
    // `Topic::ALL` order; the two must agree or topics would share keyspaces.
    for (index, topic) in Topic::ALL.into_iter().enumerate() {
        assert_eq!(topic as usize, index, "{topic}");
    }
}

#[test]
fn zero_partitions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(EmbeddedLog::open(dir.path(), 0), Err(LogError::Storage(_))));
}

#[tokio::test]
async fn readers_refuse_partitions_that_do_not_exist() {
    let (_dir, log) = fresh();
    let mut cursor = Cursor::default();
    cursor.set(Topic::Calls, PARTITIONS, 0);
    assert!(log.reader(cursor).await.is_err());
    assert!(log.reader(Cursor::default()).await.is_err(), "a reader must follow something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_finishes_queued_appends_then_refuses_more() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), PARTITIONS).unwrap();
    let topic = Topic::Presence;
    let mut reader = log.reader(Cursor::end(&log, &[topic]).await.unwrap()).await.unwrap();

    let appends = (0..200u32).map(|i| {
        let log = &log;
        async move {
            let key = format!("user-{}", i % 7).into_bytes();
            (log.append(topic, &key, i.to_be_bytes().to_vec()).await, key, i)
        }
    });
    let (outcomes, closed) = tokio::join!(join_all(appends), log.close());
    closed.unwrap();

    let mut acknowledged = Vec::new();
    for (outcome, key, i) in outcomes {
        match outcome {
            Ok(position) => acknowledged.push((position, key, i.to_be_bytes().to_vec())),
            Err(LogError::Closed) => {}
            Err(e) => panic!("an append racing close() failed with {e}"),
        }
    }
    assert!(matches!(log.append(topic, b"late", vec![]).await, Err(LogError::Closed)));
    assert!(matches!(log.commit("late", &Cursor::default()).await, Err(LogError::Closed)));
    log.close().await.expect("closing twice is harmless");

    // The reader drains what was acknowledged, then learns that nothing more will come.
    let mut read = Vec::new();
    loop {
        match reader.next_batch(64).await {
            Ok(batch) => read.extend(batch),
            Err(LogError::Closed) => break,
            Err(e) => panic!("reader failed with {e}"),
        }
    }
    let mut read: Vec<_> = read.into_iter().map(|r| (r.position, r.key, r.value)).collect();
    read.sort();
    acknowledged.sort();
    assert_eq!(read, acknowledged);

    drop(reader);
    drop(log);
    let log = EmbeddedLog::open(dir.path(), PARTITIONS).unwrap();
    let mut stored: Vec<_> =
        read_all(&log, topic).await.into_iter().map(|r| (r.position, r.key, r.value)).collect();
    stored.sort();
    assert_eq!(stored, acknowledged, "every acknowledged append is on disk, nothing else");
}

#[tokio::test]
async fn a_batch_is_shared_fairly_between_partitions() {
    let (_dir, log) = fresh();
    let topic = Topic::Conversations;
    let key_in = |partition: u32| {
        (0..)
            .map(|i| format!("conversation-{i}"))
            .find(|key| Topic::partition_for(key.as_bytes(), PARTITIONS) == partition)
            .unwrap()
    };
    // The busy partition comes first, so a reader that filled batches in partition order would
    // hand out only its records.
    let (busy, quiet) = (key_in(0), key_in(PARTITIONS - 1));
    for i in 0..50u8 {
        log.append(topic, busy.as_bytes(), vec![i]).await.unwrap();
    }
    let lone = log.append(topic, quiet.as_bytes(), b"lone".to_vec()).await.unwrap();

    let mut reader = log.reader(Cursor::beginning(&log, &[topic])).await.unwrap();
    let batch = reader.next_batch(10).await.unwrap();
    assert_eq!(batch.len(), 10, "a full batch when records are waiting");
    assert!(batch.iter().any(|r| r.position == lone), "the quiet partition got no share");
    let busy_offsets: Vec<u64> =
        batch.iter().filter(|r| r.position.partition == 0).map(|r| r.position.offset).collect();
    assert_eq!(
        busy_offsets,
        (0..9).collect::<Vec<_>>(),
        "the rest comes from the busy partition, in order"
    );
}

/// Set for the child process of [`kill_9_loses_no_acknowledged_append`]: the log directory.
const KILL_CHILD_DIR: &str = "SWITCHBOARD_EMBEDDED_LOG_KILL_TEST_DIR";

/// The child half of [`kill_9_loses_no_acknowledged_append`]: appends from many tasks and prints
/// each acknowledgement until it is killed. Without the variable set it does nothing.
#[test]
#[ignore = "run as a child process by kill_9_loses_no_acknowledged_append"]
fn kill_9_child_appends_until_killed() {
    let Some(dir) = std::env::var_os(KILL_CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let log = std::sync::Arc::new(EmbeddedLog::open(dir.as_ref(), PARTITIONS).unwrap());
        let appenders: Vec<_> = (0..16)
            .map(|task| {
                let log = std::sync::Arc::clone(&log);
                tokio::spawn(async move {
                    for i in 0.. {
                        let key = format!("k{task}");
                        let value = format!("{task}-{i}");
                        let position = log
                            .append(Topic::Messages, key.as_bytes(), value.clone().into_bytes())
                            .await
                            .unwrap();
                        println!("ack {position} {key} {value}");
                    }
                })
            })
            .collect();
        join_all(appenders).await;
    });
}

#[test]
fn kill_9_loses_no_acknowledged_append() {
    const ACKS: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "log::embedded::tests::kill_9_child_appends_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut acknowledged: Vec<(Position, Vec<u8>, Vec<u8>)> = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let Some(ack) = line.strip_prefix("ack ") else {
            continue;
        };
        let mut fields = ack.split(' ');
        let (Some(position), Some(key), Some(value)) =
            (fields.next(), fields.next(), fields.next())
        else {
            panic!("unexpected line from the child: {line}");
        };
        acknowledged.push((position.parse().unwrap(), key.into(), value.into()));
        if acknowledged.len() == ACKS {
            break;
        }
    }
    // SIGKILL: no destructor, no flush, no chance to finish the batch in flight.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(acknowledged.len(), ACKS, "the child stopped before it was killed");

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let log = EmbeddedLog::open(dir.path(), PARTITIONS).unwrap();
        let stored: std::collections::HashMap<Position, (Vec<u8>, Vec<u8>)> =
            read_all(&log, Topic::Messages)
                .await
                .into_iter()
                .map(|r| (r.position, (r.key, r.value)))
                .collect();
        for (position, key, value) in acknowledged {
            assert_eq!(
                stored.get(&position),
                Some(&(key, value)),
                "acknowledged record {position} is missing or different after kill -9"
            );
        }
    });
}

/// The offset of the first record a reader from offset 0 of `topic`'s partition 0 gets.
async fn first_kept(log: &dyn Log, topic: Topic) -> u64 {
    let mut from = Cursor::default();
    from.set(topic, 0, 0);
    let mut reader = log.reader(from).await.unwrap();
    reader.next_batch(1).await.unwrap()[0].position.offset
}

/// Appends `count` records to partition 0 of `topic`.
async fn append_to_first_partition(log: &dyn Log, topic: Topic, count: usize) {
    let key = (0..)
        .map(|k| format!("key-{k}"))
        .find(|k| Topic::partition_for(k.as_bytes(), PARTITIONS) == 0)
        .unwrap();
    for i in 0..count {
        log.append(topic, key.as_bytes(), vec![i as u8]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_are_removed_and_offsets_go_on_across_reopening() {
    const KEPT: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), PARTITIONS).unwrap();
    append_to_first_partition(&log, Topic::Presence, 3).await;
    append_to_first_partition(&log, Topic::Signals, 2).await;
    append_to_first_partition(&log, Topic::Messages, 2).await;
    tokio::time::sleep(KEPT + Duration::from_millis(200)).await;
    append_to_first_partition(&log, Topic::Presence, 1).await;
    let ends = |log: EmbeddedLog, topic| async move { log.end_offsets(topic).await.unwrap()[0] };

    log.expire("presence=2s,signals=2s".parse().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while first_kept(&log, Topic::Presence).await != 3 {
        assert!(Instant::now() < deadline, "the three old presence records never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ends(log.clone(), Topic::Presence).await, 4, "the end stays");
    assert_eq!(log.offsets_at(Topic::Presence, 0).await.unwrap()[0], 3);
    assert_eq!(first_kept(&log, Topic::Messages).await, 0, "messages are kept forever");
    while log.offsets_at(Topic::Signals, 0).await.unwrap()[0] != 2 {
        assert!(Instant::now() < deadline, "the signals never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.close().await.unwrap();
    drop(log);

    let log = EmbeddedLog::open(dir.path(), PARTITIONS).unwrap();
    assert_eq!(first_kept(&log, Topic::Presence).await, 3, "the start survives reopening");
    assert_eq!(ends(log.clone(), Topic::Signals).await, 2, "an emptied partition keeps its end");
    append_to_first_partition(&log, Topic::Signals, 1).await;
    assert_eq!(first_kept(&log, Topic::Signals).await, 2, "offsets are never reused");
}

/// The size of the journals fjall keeps in `dir`: what the next open replays.
fn journal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.path().extension().is_some_and(|extension| extension == "jnl"))
        .map(|entry| entry.metadata().unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_log_leaves_a_bounded_journal_to_replay() {
    const WRITTEN: u64 = 250 << 20;
    const RECORD: usize = 512 << 10;
    let (dir, log) = fresh();
    // Incompressible, as fjall compresses large values in its journal.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..WRITTEN / RECORD as u64 {
        let value = (0..RECORD / 8)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        log.append(Topic::Messages, format!("key-{i}").as_bytes(), value).await.unwrap();
    }
    log.close().await.unwrap();
    drop(log);

    // fjall writes memtables out and drops old journals in the background.
    let deadline = Instant::now() + Duration::from_secs(60);
    let bound = 100 << 20;
    while journal_bytes(dir.path()) > bound && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = journal_bytes(dir.path());
    assert!(left <= bound, "{left} bytes of journal left after writing {WRITTEN}");
}
