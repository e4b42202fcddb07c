//! `switchboard tail`: the events of one topic as JSON lines, decoded with their schemas.
//!
//! What kcat is to a Kafka topic, for either log. Each line says where the event is (partition,
//! offset, when the log took it), its key, its type, and the event in the JSON shape of its Avro
//! record, so that `jq` can take it from there. A record that does not decode is a line with an
//! `error` instead of stopping the tail: it is the record an operator is looking for. Password
//! hashes are left out of what is printed.

use std::collections::BTreeMap;
use std::io::Write;
use std::str::FromStr;

use anyhow::{Context, ensure};
use serde::Serialize;
use switchboard_ingest::log::{Cursor, Log, Record};
use switchboard_schemas::{Codec, EventMeta, Payload, Topic};

use crate::log_source::{LogArgs, parse_time};

/// What is printed in place of a password hash.
const REDACTED: &str = "[redacted]";

/// Options of `switchboard tail`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The topic: users, conversations, messages, presence, calls or signals.
    pub topic: Topic,

    #[command(flatten)]
    pub source: LogArgs,

    #[command(flatten)]
    pub select: Select,
}

/// Which of a topic's events to print.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Select {
    /// Where to start in each partition: `beginning`, `end`, an offset, or a time (RFC 3339,
    /// e.g. 2026-12-05T10:00:00Z) for the events the log took from then on.
    #[arg(long, default_value = "beginning")]
    pub from: Start,

    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,

    /// Keep waiting for new events at the end of the log instead of stopping there.
    #[arg(long)]
    pub follow: bool,

    /// Only events under this key, as the log keys them (a user id on `users` and `presence`,
    /// a conversation id on `conversations` and `messages`, a call id on `calls`).
    #[arg(long)]
    pub key: Option<String>,

    /// Only events of this type, such as `message.sent`.
    #[arg(long = "type", value_parser = event_type)]
    pub event_type: Option<String>,

    /// Stop after printing this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

/// Where a tail starts in each partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    #[default]
    Beginning,
    End,
    Offset(u64),
    /// Milliseconds since the Unix epoch: the first event the log took at or after it.
    Time(i64),
}

impl FromStr for Start {
    type Err = String;

    fn from_str(s: &str) -> Result<Start, String> {
        match s {
            "beginning" => Ok(Start::Beginning),
            "end" => Ok(Start::End),
            _ if s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().map(Start::Offset).map_err(|e| format!("offset `{s}`: {e}"))
            }
            _ => parse_time(s).map(Start::Time).map_err(|_| {
                format!(
                    "`{s}` is not beginning, end, an offset or a time such as 2026-12-05T10:00:00Z"
                )
            }),
        }
    }
}

fn event_type(name: &str) -> Result<String, String> {
    match Payload::TYPE_NAMES.contains(&name) {
        true => Ok(name.to_owned()),
        false => Err(format!("no event type `{name}`; known: {}", Payload::TYPE_NAMES.join(", "))),
    }
}

/// Runs `switchboard tail`.
pub async fn command(args: Args) -> anyhow::Result<()> {
    let log = args.source.open().await?;
    let printed = tail(log.as_ref(), args.topic, &args.select, &mut std::io::stdout()).await;
    log.close().await.context("closing the log")?;
    printed.map(|_| ())
}

/// Writes the events `select` picks from `topic` to `out`, one JSON line each; returns how many.
pub async fn tail(
    log: &dyn Log,
    topic: Topic,
    select: &Select,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let partitions = log.partitions(topic);
    if let Some(partition) = select.partition {
        ensure!(
            partition < partitions,
            "topic {} has partitions 0 to {}, not {partition}",
            topic.name(),
            partitions - 1
        );
    }
    let ends = log.end_offsets(topic).await.context("reading where the log ends")?;
    let starts = match select.from {
        Start::Beginning => vec![0; ends.len()],
        Start::End => ends.clone(),
        Start::Offset(offset) => vec![offset; ends.len()],
        Start::Time(time_ms) => {
            log.offsets_at(topic, time_ms).await.context("finding that time in the log")?
        }
    };
    let mut cursor = Cursor::default();
    // Partitions not yet read up to the end they had when the tail started.
    let mut unfinished = BTreeMap::new();
    for partition in (0..partitions).filter(|p| select.partition.is_none_or(|only| only == *p)) {
        let (start, end) = (starts[partition as usize], ends[partition as usize]);
        cursor.set(topic, partition, start);
        if start < end {
            unfinished.insert(partition, end);
        }
    }

    let codec = Codec::new();
    let mut reader = log.reader(cursor).await.context("reading the log")?;
    let mut printed = 0;
    while select.follow || !unfinished.is_empty() {
        if select.count.is_some_and(|count| printed >= count) {
            break;
        }
        for record in reader.next_batch(512).await.context("reading the log")? {
            let (partition, offset) = (record.position.partition, record.position.offset);
            if !select.follow {
                match unfinished.get(&partition) {
                    Some(&end) if offset < end => {
                        if offset + 1 == end {
                            unfinished.remove(&partition);
                        }
                    }
                    // Appended after the tail started.
                    _ => continue,
                }
            }
            if select.count.is_some_and(|count| printed >= count) || !wanted(select, &record) {
                continue;
            }
            let Some(line) = line(&codec, &record, select.event_type.as_deref()) else {
                continue;
            };
            writeln!(out, "{line}").context("writing an event")?;
            printed += 1;
        }
        out.flush().context("writing events")?;
    }
    Ok(printed)
}

/// Whether `record` passes the filters that need no decoding.
fn wanted(select: &Select, record: &Record) -> bool {
    select.key.as_ref().is_none_or(|key| record.key == key.as_bytes())
}

/// One printed line.
#[derive(Serialize)]
struct Line<'a> {
    partition: u32,
    offset: u64,
    timestamp_ms: i64,
    key: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    event_type: Option<&'static str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    meta: Option<&'a EventMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a Payload>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The line of `record`, or `None` when it is not of the wanted type.
fn line(codec: &Codec, record: &Record, wanted_type: Option<&str>) -> Option<String> {
    let mut line = Line {
        partition: record.position.partition,
        offset: record.position.offset,
        timestamp_ms: record.timestamp_ms,
        key: String::from_utf8_lossy(&record.key).into_owned(),
        event_type: None,
        meta: None,
        payload: None,
        error: None,
    };
    let mut event = match codec.decode(&record.value) {
        Ok(event) => event,
        Err(error) => {
            line.error = Some(format!("undecodable record: {error}"));
            return Some(serialized(&line));
        }
    };
    if wanted_type.is_some_and(|wanted| wanted != event.payload.type_name()) {
        return None;
    }
    if let Payload::UserRegistered(user) = &mut event.payload {
        REDACTED.clone_into(&mut user.password_hash);
    }
    line.event_type = Some(event.payload.type_name());
    line.meta = Some(&event.meta);
    line.payload = Some(&event.payload);
    Some(serialized(&line))
}

fn serialized(line: &Line) -> String {
    serde_json::to_string(line).expect("a line of plain values serializes")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::Arc;

    use serde_json::Value;
    use switchboard_ingest::Origin;
    use switchboard_schemas::{MessageId, MessageSent};

    use super::*;
    use crate::testing::{ingest, written_log};

    /// The printed lines of a tail, parsed.
    async fn tailed(log: &dyn Log, topic: Topic, select: Select) -> Vec<Value> {
        let mut out = Vec::new();
        let printed = tail(log, topic, &select, &mut out).await.unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(printed, lines.len() as u64);
        lines
    }

    fn bodies(lines: &[Value]) -> Vec<&str> {
        lines.iter().map(|line| line["payload"]["body"].as_str().unwrap()).collect()
    }

    #[tokio::test]
    async fn prints_a_topic_decoded_and_stops_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = written_log(&dir.path().join("log"), 3).await;

        let messages = tailed(log.as_ref(), Topic::Messages, Select::default()).await;
        assert_eq!(bodies(&messages), ["hello 0", "hello 1", "hello 2"]);
        let first = &messages[0];
        assert_eq!(first["type"], "message.sent");
        assert_eq!(first["offset"], 0);
        assert_eq!(first["payload"]["client_msg_id"], "m0");
        assert_eq!(first["key"], first["payload"]["conversation_id"]);
        assert!(first["event_id"].is_string() && first["timestamp_ms"].as_i64().unwrap() > 0);

        let users = tailed(log.as_ref(), Topic::Users, Select::default()).await;
        assert_eq!(users.len(), 2);
        for user in &users {
            assert_eq!(user["type"], "user.registered");
            assert_eq!(user["payload"]["password_hash"], REDACTED, "no hash is printed");
        }
    }

    #[tokio::test]
    async fn picks_by_start_key_type_partition_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = written_log(&dir.path().join("log"), 3).await;
        let log = log.as_ref();
        let pick = |select: Select| tailed(log, Topic::Messages, select);

        let from_end = Select { from: Start::End, ..Select::default() };
        assert!(pick(from_end).await.is_empty());
        let from_offset = Select { from: Start::Offset(1), ..Select::default() };
        assert_eq!(bodies(&pick(from_offset).await), ["hello 1", "hello 2"]);
        let later = Select { from: "2999-01-01T00:00:00Z".parse().unwrap(), ..Select::default() };
        assert!(pick(later).await.is_empty());
        let earlier = Select { from: "2000-01-01T00:00:00Z".parse().unwrap(), ..Select::default() };
        assert_eq!(pick(earlier).await.len(), 3);
        let counted = Select { count: Some(2), ..Select::default() };
        assert_eq!(bodies(&pick(counted).await), ["hello 0", "hello 1"]);

        let conversation = pick(Select::default()).await[0]["key"].as_str().unwrap().to_owned();
        let by_key = Select { key: Some(conversation), ..Select::default() };
        assert_eq!(pick(by_key).await.len(), 3);
        let other_key = Select { key: Some("42".into()), ..Select::default() };
        assert!(pick(other_key).await.is_empty());

        let created =
            Select { event_type: Some("conversation.created".into()), ..Select::default() };
        assert_eq!(tailed(log, Topic::Conversations, created).await.len(), 1);
        let edits = Select { event_type: Some("message.edited".into()), ..Select::default() };
        assert!(pick(edits).await.is_empty());

        let partitions = log.partitions(Topic::Messages);
        let mut found = 0;
        for partition in 0..partitions {
            let only = Select { partition: Some(partition), ..Select::default() };
            for line in pick(only).await {
                assert_eq!(line["partition"], partition);
                found += 1;
            }
        }
        assert_eq!(found, 3, "each message is in exactly one partition");
        let outside = Select { partition: Some(partitions), ..Select::default() };
        let error = tail(log, Topic::Messages, &outside, &mut Vec::new()).await.unwrap_err();
        assert!(error.to_string().contains("partitions 0 to"), "{error}");
    }

    #[tokio::test]
    async fn follows_what_is_appended_after_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = written_log(&dir.path().join("log"), 1).await;
        let first = tailed(log.as_ref(), Topic::Messages, Select::default()).await.remove(0);

        let follow = Select { from: Start::End, follow: true, count: Some(1), ..Select::default() };
        let following = tokio::spawn({
            let log = Arc::clone(&log);
            async move { tailed(log.as_ref(), Topic::Messages, follow).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut later: MessageSent = serde_json::from_value(first["payload"].clone()).unwrap();
        let node = ingest(&log, 2);
        later.message_id = MessageId(node.next_id());
        later.body = "later".into();
        node.send_message(&Origin::user(later.sender, "test"), later).await.unwrap();

        let lines =
            tokio::time::timeout(Duration::from_secs(10), following).await.unwrap().unwrap();
        assert_eq!(bodies(&lines), ["later"]);
    }

    #[test]
    fn starts_and_types_are_checked_when_parsed() {
        assert_eq!("beginning".parse(), Ok(Start::Beginning));
        assert_eq!("end".parse(), Ok(Start::End));
        assert_eq!("1042".parse(), Ok(Start::Offset(1042)));
        assert_eq!("1970-01-01T00:00:01Z".parse(), Ok(Start::Time(1000)));
        assert!("yesterday".parse::<Start>().unwrap_err().contains("2026-12-05T10:00:00Z"));
        assert_eq!(event_type("message.sent"), Ok("message.sent".to_owned()));
        assert!(event_type("message.snet").unwrap_err().contains("message.sent"));
    }
}
