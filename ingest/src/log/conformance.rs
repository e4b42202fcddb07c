//! The behaviour every [`Log`] implementation must show, as a suite of async checks.
//!
//! The embedded log and the Kafka log are interchangeable only if they behave the same; each
//! implementation's tests run every function here against a live instance. The functions use
//! nothing but the [`Log`] trait and panic, like assertions, when the log misbehaves.
//!
//! They are written to share one instance, even concurrently ([`run_all`]), and to run against a
//! log that already holds data (a real Kafka cluster): each function owns one topic, tags its keys
//! with a value unique to the run, and only counts offsets from the end offsets it reads first.
//! What they do assume is that nobody else writes to their topic while they run.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use switchboard_schemas::{Position, Topic};

use super::{Cursor, Log, Record};

/// The most records asked for in one `next_batch`: small, so reads span several batches.
const BATCH: usize = 16;

/// Runs the whole suite concurrently on one log.
pub async fn run_all(log: &dyn Log) {
    tokio::join!(
        appends_are_read_back_in_order(log),
        keys_stay_in_their_partition(log),
        readers_follow_the_tail(log),
        concurrent_appends_get_distinct_offsets(log),
        end_offsets_and_committed_positions(log),
        a_reader_starts_where_its_cursor_says(log),
    );
    // These share a topic with a check above, so they run after the others.
    a_group_resumes_after_its_commit(log).await;
    appends_keep_the_order_they_were_made_in(log).await;
    a_time_names_the_first_record_taken_from_then_on(log).await;
    a_group_names_its_members_and_their_partitions(log).await;
}

/// Sequential appends come back from a reader with the positions, keys and values the appends
/// returned, in offset order within each partition.
pub async fn appends_are_read_back_in_order(log: &dyn Log) {
    let topic = Topic::Users;
    let tag = run_tag("in-order");
    let start = Cursor::end(log, &[topic]).await.expect("end offsets");
    let keys: Vec<String> = (0..3).map(|k| format!("{tag}/key-{k}")).collect();

    let mut appended = Vec::new();
    for i in 0..60 {
        let key = keys[i % keys.len()].as_bytes();
        let value = format!("{tag}/value-{i}").into_bytes();
        let position = log.append(topic, key, value.clone()).await.expect("append");
        appended.push((position, key.to_vec(), value));
    }
    for (partition, offsets) in offsets_by_partition(appended.iter().map(|(p, ..)| *p)) {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "appends to partition {partition}, one after another, got offsets {offsets:?}"
        );
    }

    let read = read_tagged(log, start, &tag, appended.len()).await;
    let now = now_ms();
    for record in &read {
        assert!(
            (record.timestamp_ms - now).abs() < 3_600_000,
            "record {} has timestamp {} ms, far from now ({now} ms)",
            record.position,
            record.timestamp_ms
        );
    }
    for partition in 0..log.partitions(topic) {
        let got: Vec<_> = read
            .iter()
            .filter(|r| r.position.partition == partition)
            .map(|r| (r.position, r.key.clone(), r.value.clone()))
            .collect();
        let expected: Vec<_> =
            appended.iter().filter(|(p, ..)| p.partition == partition).cloned().collect();
        assert_eq!(got, expected, "partition {partition} reads back differently");
    }
}

/// Every key lands in [`Topic::partition_for`]'s partition, every time, and records read back
/// from a partition carry keys that belong there.
pub async fn keys_stay_in_their_partition(log: &dyn Log) {
    let topic = Topic::Conversations;
    let partitions = log.partitions(topic);
    let tag = run_tag("partitioning");
    let start = Cursor::end(log, &[topic]).await.expect("end offsets");
    let keys: Vec<String> = (0..40).map(|k| format!("{tag}/conversation-{k}")).collect();

    let mut used = BTreeSet::new();
    for round in 0..2 {
        for key in &keys {
            let position = log
                .append(topic, key.as_bytes(), format!("round {round}").into_bytes())
                .await
                .expect("append");
            let expected = Topic::partition_for(key.as_bytes(), partitions);
            assert_eq!(position.partition, expected, "key {key} appended to the wrong partition");
            used.insert(position.partition);
        }
    }
    if partitions > 1 {
        assert!(used.len() > 1, "40 keys all landed in one of {partitions} partitions: {used:?}");
    }

    let read = read_tagged(log, start, &tag, 2 * keys.len()).await;
    for record in &read {
        assert_eq!(
            record.position.partition,
            Topic::partition_for(&record.key, partitions),
            "record {} was read from a partition its key does not hash to",
            record.position
        );
    }
    for key in &keys {
        let rounds: Vec<_> =
            read.iter().filter(|r| r.key == key.as_bytes()).map(|r| &r.value).collect();
        assert_eq!(rounds, [b"round 0", b"round 1"], "key {key} read back out of order");
    }
}

/// A reader at the end of the log waits, returns nothing early, and wakes for a later append.
pub async fn readers_follow_the_tail(log: &dyn Log) {
    let topic = Topic::Presence;
    let tag = run_tag("tail");
    let key = format!("{tag}/user");
    let start = Cursor::end(log, &[topic]).await.expect("end offsets");
    let mut reader = log.reader(start).await.expect("reader");

    for round in 0..3 {
        let value = format!("{tag}/heartbeat-{round}").into_bytes();
        let mut waiting = pin!(reader.next_batch(BATCH));
        for _ in 0..20 {
            if let Some(early) = poll_once(waiting.as_mut()).await {
                panic!("a reader at the tail returned {early:?} before anything was appended");
            }
            tokio::task::yield_now().await;
        }
        let position = log.append(topic, key.as_bytes(), value.clone()).await.expect("append");
        let batch = waiting.await.expect("next_batch");
        let got: Vec<_> = batch.iter().map(|r| (r.position, &r.key[..], &r.value[..])).collect();
        assert_eq!(
            got,
            [(position, key.as_bytes(), &value[..])],
            "a reader at the tail should wake with exactly the new record"
        );
    }
}

/// Many appends in flight at once all succeed, with distinct offsets that fill each partition
/// without gaps, and each offset holds the record its append was told.
pub async fn concurrent_appends_get_distinct_offsets(log: &dyn Log) {
    const APPENDS: usize = 1000;
    let topic = Topic::Messages;
    let partitions = log.partitions(topic);
    let tag = run_tag("concurrent");
    let before = log.end_offsets(topic).await.expect("end offsets");

    let appends = (0..APPENDS).map(|i| {
        let tag = &tag;
        async move {
            let key = format!("{tag}/conversation-{}", i % 50).into_bytes();
            let value = format!("{tag}/message-{i}").into_bytes();
            let position = log.append(topic, &key, value.clone()).await.expect("append");
            (position, key, value)
        }
    });
    let appended = join_all(appends).await;
    let after = log.end_offsets(topic).await.expect("end offsets");

    let by_partition = offsets_by_partition(appended.iter().map(|(p, ..)| *p));
    for partition in 0..partitions {
        let p = partition as usize;
        let mut offsets = by_partition.get(&partition).cloned().unwrap_or_default();
        offsets.sort_unstable();
        let expected: Vec<u64> = (before[p]..before[p] + offsets.len() as u64).collect();
        assert_eq!(
            offsets, expected,
            "offsets in partition {partition} are not distinct and contiguous"
        );
        assert_eq!(
            after[p],
            before[p] + offsets.len() as u64,
            "end offset of partition {partition}"
        );
    }

    let start = cursor_at(topic, &before);
    let read = read_tagged(log, start, &tag, APPENDS).await;
    let stored: BTreeMap<Position, (&[u8], &[u8])> =
        read.iter().map(|r| (r.position, (&r.key[..], &r.value[..]))).collect();
    for (position, key, value) in &appended {
        assert_eq!(
            stored.get(position),
            Some(&(&key[..], &value[..])),
            "the record at {position} is not the one appended there"
        );
    }
}

/// Appends made one after another, none waited for before the next is made, are stored in the
/// order they were made, however their futures are then awaited.
pub async fn appends_keep_the_order_they_were_made_in(log: &dyn Log) {
    const APPENDS: usize = 200;
    let topic = Topic::Messages;
    let tag = run_tag("unwaited");
    let start = Cursor::end(log, &[topic]).await.expect("end offsets");
    let keys: Vec<String> = (0..3).map(|k| format!("{tag}/conversation-{k}")).collect();
    let appending: Vec<_> = (0..APPENDS)
        .map(|i| {
            let value = format!("{tag}/message-{i}").into_bytes();
            log.append(topic, keys[i % keys.len()].as_bytes(), value)
        })
        .collect();
    // Awaited last first: the order must already be settled when the appends are made.
    let mut positions = Vec::new();
    for append in appending.into_iter().rev() {
        positions.push(append.await.expect("append"));
    }
    positions.reverse();
    for (partition, offsets) in offsets_by_partition(positions.iter().copied()) {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "appends made in order to partition {partition} got offsets {offsets:?}"
        );
    }
    let read = read_tagged(log, start, &tag, APPENDS).await;
    for key in &keys {
        let stored: Vec<&[u8]> =
            read.iter().filter(|r| r.key == key.as_bytes()).map(|r| &r.value[..]).collect();
        let made: Vec<Vec<u8>> = (0..APPENDS)
            .filter(|i| keys[i % keys.len()] == *key)
            .map(|i| format!("{tag}/message-{i}").into_bytes())
            .collect();
        assert_eq!(stored, made.iter().map(Vec::as_slice).collect::<Vec<_>>(), "order under {key}");
    }
}

/// End offsets move by exactly the appends made; committed positions start empty, are read back
/// as committed, overwrite each other, and are kept per group.
pub async fn end_offsets_and_committed_positions(log: &dyn Log) {
    let topic = Topic::Calls;
    let partitions = log.partitions(topic);
    let tag = run_tag("offsets");
    let before = log.end_offsets(topic).await.expect("end offsets");
    assert_eq!(before.len(), partitions as usize, "one end offset per partition");

    let key = format!("{tag}/call");
    let partition = Topic::partition_for(key.as_bytes(), partitions);
    let mut positions = Vec::new();
    for i in 0..3 {
        positions.push(log.append(topic, key.as_bytes(), vec![i]).await.expect("append"));
    }
    let first = before[partition as usize];
    let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [first, first + 1, first + 2], "appends take the end offset in turn");
    let mut expected = before.clone();
    expected[partition as usize] += 3;
    assert_eq!(log.end_offsets(topic).await.expect("end offsets"), expected);

    let group = format!("conformance-{tag}");
    let other = format!("{group}-other");
    assert_eq!(log.committed(&group).await.expect("committed"), Cursor::default(), "new group");

    let mut cursor = Cursor::default();
    cursor.advance(positions[0]);
    log.commit(&group, &cursor).await.expect("commit");
    assert_eq!(log.committed(&group).await.expect("committed"), cursor);

    cursor.advance(positions[2]);
    cursor.set(Topic::Users, 0, 7);
    log.commit(&group, &cursor).await.expect("commit");
    assert_eq!(log.committed(&group).await.expect("committed"), cursor, "a commit overwrites");
    assert_eq!(
        log.committed(&other).await.expect("committed"),
        Cursor::default(),
        "groups are apart"
    );
}

/// A reader begins exactly at its cursor's offset, whether the cursor was built or committed.
pub async fn a_reader_starts_where_its_cursor_says(log: &dyn Log) {
    let topic = Topic::Signals;
    let tag = run_tag("cursor");
    let key = format!("{tag}/recipient");
    let mut appended = Vec::new();
    for i in 0..5 {
        let value = format!("{tag}/signal-{i}").into_bytes();
        appended
            .push((log.append(topic, key.as_bytes(), value.clone()).await.expect("append"), value));
    }
    let third = appended[2].0;
    let mut cursor = Cursor::default();
    cursor.set(topic, third.partition, third.offset);
    let expected: Vec<_> = appended[2..].iter().map(|(p, v)| (*p, v.clone())).collect();

    let read = read_tagged(log, cursor.clone(), &tag, 3).await;
    let got: Vec<_> = read.iter().map(|r| (r.position, r.value.clone())).collect();
    assert_eq!(got, expected, "a reader from {cursor} should start at {third}");

    let group = format!("conformance-{tag}");
    log.commit(&group, &cursor).await.expect("commit");
    let committed = log.committed(&group).await.expect("committed");
    let read = read_tagged(log, committed, &tag, 3).await;
    let got: Vec<_> = read.iter().map(|r| (r.position, r.value.clone())).collect();
    assert_eq!(got, expected, "a reader from a committed cursor should start where it was");
}

/// Reads from `from` until `want` records whose key starts with `tag` have come, checking that
/// every batch respects its size bounds.
/// A group reader starts where its group committed (or at the checkpoint it is given, if that is
/// later), so a new member carries on exactly where the previous one left off.
pub async fn a_group_resumes_after_its_commit(log: &dyn Log) {
    let topic = Topic::Users;
    let tag = run_tag("group");
    let group = format!("conformance-{}", tag.replace('/', "-"));
    let start = Cursor::end(log, &[topic]).await.expect("end offsets");
    let key = format!("{tag}/member");
    let mut positions = Vec::new();
    for i in 0..4u8 {
        positions.push(log.append(topic, key.as_bytes(), vec![i]).await.expect("append"));
    }

    let mut first = log.join_group(&group, &[topic], start.clone()).await.expect("join");
    let read = read_tagged_from(first.as_mut(), &tag, 4).await;
    assert_eq!(read.iter().map(|r| r.position).collect::<Vec<_>>(), positions);
    let mut processed = start.clone();
    processed.advance(positions[1]);
    first.commit(&processed).await.expect("commit");
    drop(first);

    let mut next = log.join_group(&group, &[topic], start.clone()).await.expect("rejoin");
    let rest = read_tagged_from(next.as_mut(), &tag, 2).await;
    assert_eq!(
        rest.iter().map(|r| r.position).collect::<Vec<_>>(),
        positions[2..],
        "a new member resumes after the commit, not at its older start"
    );
    drop(next);

    let mut ahead = start.clone();
    ahead.advance(positions[2]);
    let mut later = log.join_group(&group, &[topic], ahead).await.expect("rejoin");
    let last = read_tagged_from(later.as_mut(), &tag, 1).await;
    assert_eq!(last[0].position, positions[3], "a checkpoint past the commit wins");
}

/// `offsets_at` gives, in each partition, the first record taken at or after a time: the record
/// itself for its own timestamp, the one after it for a later time, the end for a time to come.
pub async fn a_time_names_the_first_record_taken_from_then_on(log: &dyn Log) {
    let topic = Topic::Calls;
    let tag = run_tag("time");
    let key = format!("{tag}/call");
    let partition = Topic::partition_for(key.as_bytes(), log.partitions(topic)) as usize;
    let start = Cursor::end(log, &[topic]).await.expect("end offsets");

    let first = log.append(topic, key.as_bytes(), vec![1]).await.expect("append");
    let first_taken = read_tagged(log, start.clone(), &tag, 1).await[0].timestamp_ms;
    // The second record must be taken at a later millisecond than the first.
    while now_ms() <= first_taken {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let second = log.append(topic, key.as_bytes(), vec![2]).await.expect("append");
    let second_taken = read_tagged(log, start, &tag, 2).await[1].timestamp_ms;
    assert!(second_taken > first_taken, "timestamps {first_taken} then {second_taken}");

    let at = |time_ms| async move { log.offsets_at(topic, time_ms).await.expect("offsets_at") };
    assert_eq!(at(first_taken).await[partition], first.offset, "at the first record's time");
    assert_eq!(at(first_taken + 1).await[partition], second.offset, "just after it");
    assert_eq!(at(second_taken).await[partition], second.offset, "at the second record's time");
    assert_eq!(
        at(second_taken + 60_000).await,
        log.end_offsets(topic).await.expect("end offsets"),
        "a time to come names the end of every partition"
    );
    assert_eq!(
        Cursor::at_time(log, &[topic], first_taken)
            .await
            .expect("at_time")
            .get(topic, partition as u32),
        Some(first.offset)
    );
}

/// A group with a reader has one member, holding every partition of the group's topic; once the
/// reader is gone, the group has none.
pub async fn a_group_names_its_members_and_their_partitions(log: &dyn Log) {
    let topic = Topic::Conversations;
    let tag = run_tag("members");
    let group = format!("conformance-{}", tag.replace('/', "-"));
    let start = Cursor::end(log, &[topic]).await.expect("end offsets");
    assert_eq!(log.members(&group).await.expect("members"), [], "nobody reads in a new group");

    let mut reader = log.join_group(&group, &[topic], start).await.expect("join");
    let key = format!("{tag}/conversation");
    log.append(topic, key.as_bytes(), vec![1]).await.expect("append");
    // Reading is what completes joining, on a log that shares partitions between processes.
    read_tagged_from(reader.as_mut(), &tag, 1).await;
    let all: Vec<(Topic, u32)> = (0..log.partitions(topic)).map(|p| (topic, p)).collect();
    let members = log.members(&group).await.expect("members");
    assert_eq!(members.len(), 1, "one reader is one member: {members:?}");
    let mut held = members[0].partitions.clone();
    held.sort_unstable();
    assert_eq!(held, all, "the only member holds every partition");
    assert!(!members[0].name.is_empty());

    drop(reader);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !log.members(&group).await.expect("members").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the reader never left its group");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn read_tagged(log: &dyn Log, from: Cursor, tag: &str, want: usize) -> Vec<Record> {
    let mut reader = log.reader(from).await.expect("reader");
    read_tagged_from(reader.as_mut(), tag, want).await
}

async fn read_tagged_from(
    reader: &mut dyn super::LogReader,
    tag: &str,
    want: usize,
) -> Vec<Record> {
    let mut found = Vec::with_capacity(want);
    while found.len() < want {
        let batch = reader.next_batch(BATCH).await.expect("next_batch");
        assert!(
            (1..=BATCH).contains(&batch.len()),
            "next_batch({BATCH}) returned {} records",
            batch.len()
        );
        found.extend(batch.into_iter().filter(|r| r.key.starts_with(tag.as_bytes())));
    }
    assert_eq!(found.len(), want, "more records than were appended came back");
    found
}

/// Polls `future` once: `Some` if it finished, `None` if it is waiting.
async fn poll_once<F: Future>(mut future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match future.as_mut().poll(cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    })
    .await
}

fn offsets_by_partition(positions: impl Iterator<Item = Position>) -> BTreeMap<u32, Vec<u64>> {
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for position in positions {
        by_partition.entry(position.partition).or_default().push(position.offset);
    }
    by_partition
}

fn cursor_at(topic: Topic, offsets: &[u64]) -> Cursor {
    let mut cursor = Cursor::default();
    for (partition, &offset) in (0u32..).zip(offsets) {
        cursor.set(topic, partition, offset);
    }
    cursor
}

/// A prefix no earlier run (or concurrent test process) has used, so old data never matches.
fn run_tag(check: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("conformance/{check}/{}-{nanos}", std::process::id())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
