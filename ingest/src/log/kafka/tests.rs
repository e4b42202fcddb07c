//! The conformance suite against a real Kafka, and what only the Kafka log has to show: URLs are
//! checked, topics are created with the configured partitions (and a mismatch is refused), a
//! cluster that does not answer fails appends instead of hanging them, closing ends appends and
//! readers, a member never takes its group's offsets back, and a group's partitions move between
//! members without loss or duplicates.
//!
//! The tests that need a cluster use the one at `SWITCHBOARD_KAFKA` (`host:port`;
//! `ops/engines/start.sh` starts one at 127.0.0.1:19092), each on topics under a prefix of its
//! own, deleted again when the test passes. The tests of authentication and TLS use the same
//! broker's SASL_SSL listener, at the URL in `SWITCHBOARD_KAFKA_SASL`
//! (`kafka://user:password@127.0.0.1:19094?ca=FILE`, written by `ops/test.sh`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use switchboard_schemas::{Position, Topic};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{KafkaConfig, KafkaLog, SaslMechanism};
use crate::log::{Cursor, Log, LogError, Record, conformance};

const PARTITIONS: u32 = 3;

/// How long a test may wait on the cluster before it is failed: a guard against hanging, never
/// an expected duration.
const GUARD: Duration = Duration::from_secs(120);

/// How to start the engines the tests need.
const START: &str = "run ops/engines/start.sh and set SWITCHBOARD_KAFKA=127.0.0.1:19092 and \
                     SWITCHBOARD_KAFKA_SASL=kafka://USER:PASSWORD@127.0.0.1:19094?ca=FILE \
                     (as ops/test.sh does)";

/// The Kafka to test against, or `None` (after saying so) when there is none.
fn kafka() -> Option<String> {
    engine("SWITCHBOARD_KAFKA")
}

/// The URL of the same Kafka's SASL_SSL listener, with credentials and CA, or `None`.
fn kafka_sasl() -> Option<String> {
    engine("SWITCHBOARD_KAFKA_SASL")
}

fn engine(variable: &str) -> Option<String> {
    let value = std::env::var(variable).ok();
    let required = std::env::var("SWITCHBOARD_REQUIRE_ENGINES").as_deref() == Ok("1");
    assert!(
        value.is_some() || !required,
        "SWITCHBOARD_REQUIRE_ENGINES=1 but {variable} is unset: {START}"
    );
    value.is_none().then(|| eprintln!("skipped: {variable} is unset: {START}"));
    value
}

/// A topic prefix no other test, run or process has used.
fn unique_prefix() -> String {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let count = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("sbtest_{}_{nanos}_{count}_", std::process::id())
}

async fn fresh(address: &str) -> KafkaLog {
    fresh_at(&format!("kafka://{address}")).await
}

/// A log on fresh topics of the cluster at `url` (a `kafka://` URL, perhaps with a query).
async fn fresh_at(url: &str) -> KafkaLog {
    let config = KafkaConfig::from_url(&with_prefix(url), PARTITIONS).expect("config");
    guard(KafkaLog::connect(config)).await.expect("connect")
}

/// `url` with a fresh topic prefix added to its query.
fn with_prefix(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}prefix={}", unique_prefix())
}

/// Closes the log and deletes its topics, so that test runs do not pile up topics on a shared
/// cluster.
async fn remove(log: KafkaLog) {
    log.close().await.expect("close");
    let names: Vec<String> = Topic::ALL.iter().map(|&t| log.config().topic_name(t)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let deleted = admin(&log).delete_topics(&names, &AdminOptions::new()).await.expect("delete");
    assert!(deleted.iter().all(Result::is_ok), "deleting the test topics: {deleted:?}");
}

fn admin(log: &KafkaLog) -> AdminClient<DefaultClientContext> {
    log.config().client_config().create().expect("admin client")
}

async fn guard<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(GUARD, future).await.expect("gave up waiting on Kafka")
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let Some(address) = kafka() else { return };
            let log = fresh(&address).await;
            guard(conformance::$check(&log)).await;
            remove(log).await;
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
    let Some(address) = kafka() else { return };
    let log = fresh(&address).await;
    guard(conformance::run_all(&log)).await;
    remove(log).await;
}

#[test]
fn urls_are_parsed_and_bad_ones_refused_with_the_reason() {
    let url = "kafka://a:9092,b:9093?prefix=prod_&replication=3&partitions=12\
               &delivery_timeout_ms=5000&fetch_wait_ms=5";
    let config = KafkaConfig::from_url(url, 8).expect("a good URL");
    assert_eq!(config.brokers, "a:9092,b:9093");
    assert_eq!(config.prefix, "prod_");
    assert_eq!(config.topic_name(Topic::Messages), "prod_messages");
    assert_eq!((config.replication, config.partitions), (3, 12));
    assert_eq!(config.delivery_timeout, Duration::from_secs(5));
    assert_eq!(config.fetch_wait, Duration::from_millis(5));

    let defaults = KafkaConfig::from_url("kafka://127.0.0.1:19092", 8).expect("a bare URL");
    assert_eq!((defaults.prefix.as_str(), defaults.replication, defaults.partitions), ("", 1, 8));
    assert_eq!(defaults.topic_name(Topic::Users), "users");

    for (url, partitions, reason) in [
        ("http://127.0.0.1:9092", 8, "must start with kafka://"),
        ("kafka://", 8, "names no broker"),
        ("kafka://127.0.0.1", 8, "`127.0.0.1` is not host:port"),
        ("kafka://127.0.0.1:http", 8, "is not host:port"),
        ("kafka://a:1,:2", 8, "`:2` is not host:port"),
        ("kafka://a:1/users", 8, "has a path"),
        ("kafka://a:1?partitions=0", 8, "partitions must be a whole number from 1"),
        ("kafka://a:1?replication=two", 8, "replication must be a whole number"),
        ("kafka://a:1?delivery_timeout_ms=-1", 8, "delivery_timeout_ms must be"),
        ("kafka://a:1?prefix=a/b", 8, "allow only letters, digits"),
        ("kafka://a:1?retention=1", 8, "unknown parameter `retention`"),
        ("kafka://a:1?prefix", 8, "`prefix` is not name=value"),
        ("kafka://a:1", 0, "1 to 2147483647 partitions, not 0"),
    ] {
        let error = KafkaConfig::from_url(url, partitions).expect_err(url).to_string();
        assert!(
            error.contains(url) && error.contains(reason),
            "{url}: the error should say `{reason}`, but says: {error}"
        );
    }
}

#[test]
fn credentials_and_tls_choose_the_security_protocol() {
    let protocol = |url: &str| {
        let config = KafkaConfig::from_url(url, 8).expect(url).client_config();
        let get = |key: &str| config.get(key).map(str::to_owned);
        (get("security.protocol"), get("sasl.mechanism"), get("ssl.ca.location"))
    };
    let some = |text: &str| Some(text.to_owned());
    assert_eq!(protocol("kafka://a:1"), (some("PLAINTEXT"), None, None));
    assert_eq!(protocol("kafka://a:1?tls=true"), (some("SSL"), None, None));
    assert_eq!(protocol("kafka://a:1?tls=false"), (some("PLAINTEXT"), None, None));
    assert_eq!(
        protocol("kafka://app:pw@a:1,b:2"),
        (some("SASL_PLAINTEXT"), some("SCRAM-SHA-512"), None)
    );
    assert_eq!(
        protocol("kafka://app:pw@a:1?ca=/etc/kafka/ca%201.pem&sasl=scram-sha-256"),
        (some("SASL_SSL"), some("SCRAM-SHA-256"), some("/etc/kafka/ca 1.pem"))
    );
    assert_eq!(protocol("kafka://app:pw@a:1?tls=true&sasl=PLAIN").1, some("PLAIN"));

    let config = KafkaConfig::from_url("kafka://app%2B1:p%40ss%3Aw0rd@a:1,b:2", 8).expect("valid");
    assert_eq!(config.brokers, "a:1,b:2");
    let sasl = config.sasl.as_ref().expect("credentials turn SASL on");
    assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
    assert_eq!(
        (sasl.credentials.user.as_str(), sasl.credentials.password.as_str()),
        ("app+1", "p@ss:w0rd")
    );
    let client = config.client_config();
    assert_eq!(client.get("sasl.username"), Some("app+1"));
    assert_eq!(client.get("sasl.password"), Some("p@ss:w0rd"));
    assert!(!format!("{config:?}").contains("p@ss"), "Debug shows the password: {config:?}");
}

#[test]
fn bad_security_settings_are_refused_without_the_password() {
    for (url, reason) in [
        (
            "kafka://app:hunter2@a:1?sasl=GSSAPI",
            "sasl must be SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN",
        ),
        ("kafka://a:1?sasl=PLAIN", "sasl=PLAIN needs credentials"),
        ("kafka://app@a:1", "the password is missing"),
        ("kafka://app:hunter2@a:1?tls=maybe", "tls must be true or false"),
        ("kafka://app:hunter2@a:1?tls=false&ca=/ca.pem", "tls=false turns it off"),
        ("kafka://app:hunter2@a:1?ssl=true", "unknown parameter `ssl`"),
        ("kafka://app:hunter2@a:1/x", "has a path"),
        ("kafka://app:hunter2@a", "`a` is not host:port"),
    ] {
        let error = KafkaConfig::from_url(url, 8).expect_err(url).to_string();
        assert!(
            error.contains(reason),
            "{url}: the error should say `{reason}`, but says: {error}"
        );
        assert!(!error.contains("hunter2"), "{url}: the error shows the password: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_over_tls_appends_and_reads_back() {
    let Some(url) = kafka_sasl() else { return };
    let log = fresh_at(&url).await;
    assert!(log.config().sasl.is_some() && log.config().tls.is_some(), "{url} is not SASL_SSL");
    guard(conformance::appends_are_read_back_in_order(&log)).await;
    guard(conformance::a_group_resumes_after_its_commit(&log)).await;
    remove(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_at_once_naming_the_cause() {
    let Some(url) = kafka_sasl() else { return };
    let mut config = KafkaConfig::from_url(&with_prefix(&url), PARTITIONS).expect("config");
    let sasl = config.sasl.as_mut().expect("SWITCHBOARD_KAFKA_SASL has credentials");
    sasl.credentials.password = "not-the-password-0451".to_owned();
    // Long enough that a refusal taken for a broker that is down would show as a timeout, which
    // fails as unavailable: only a refusal seen for what it is fails as a storage error.
    config.request_timeout = Duration::from_secs(60);
    match guard(KafkaLog::connect(config)).await {
        Err(LogError::Storage(message)) => {
            assert!(message.contains("Authentication failed"), "the cause is not named: {message}");
            assert!(!message.contains("not-the-password-0451"), "the password shows: {message}");
        }
        Err(other) => panic!("a wrong password should be refused as such, not {other}"),
        Ok(_) => panic!("connected with a wrong password"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused() {
    let Some(url) = kafka_sasl() else { return };
    let mut config = KafkaConfig::from_url(&with_prefix(&url), PARTITIONS).expect("config");
    // The system's trust store does not know the test CA.
    config.tls = Some(crate::url::Tls { ca: None });
    config.request_timeout = Duration::from_secs(60);
    match guard(KafkaLog::connect(config)).await {
        Err(LogError::Storage(message)) => {
            assert!(
                message.contains("certificate verify failed"),
                "the cause is not named: {message}"
            );
        }
        Err(other) => panic!("an untrusted certificate should be refused as such, not {other}"),
        Ok(_) => panic!("trusted a certificate no CA of the trust store signed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_get_the_configured_layout_and_a_mismatch_is_refused() {
    let Some(address) = kafka() else { return };
    let log = fresh(&address).await;
    let admin = admin(&log);
    for topic in Topic::ALL {
        let name = log.config().topic_name(topic);
        let metadata = admin.inner().fetch_metadata(Some(&name), GUARD).expect("metadata");
        let partitions =
            metadata.topics().iter().find(|t| t.name() == name).map(|t| t.partitions().len());
        assert_eq!(partitions, Some(PARTITIONS as usize), "partitions of {name}");

        let retention = match topic {
            Topic::Signals => "3600000",
            Topic::Presence => "604800000",
            _ => "-1",
        };
        let setting = |key| topic_setting(&admin, &name, key);
        assert_eq!(
            setting("retention.ms").await.as_deref(),
            Some(retention),
            "retention of {name}"
        );
        assert_eq!(setting("message.timestamp.type").await.as_deref(), Some("LogAppendTime"));
    }

    let again = guard(KafkaLog::connect(log.config().clone())).await;
    assert!(again.is_ok(), "connecting to the topics it created should work");

    let mut more = log.config().clone();
    more.partitions = PARTITIONS + 2;
    match guard(KafkaLog::connect(more)).await {
        Err(LogError::Storage(message)) => assert!(
            message.contains(&format!("has {PARTITIONS} partitions"))
                && message.contains(&format!("configured for {}", PARTITIONS + 2)),
            "the error should name both counts: {message}"
        ),
        Err(other) => panic!("a partition mismatch should be a storage error, not {other}"),
        Ok(_) => panic!(
            "topics with {PARTITIONS} partitions were accepted for a log of {}",
            PARTITIONS + 2
        ),
    }
    remove(log).await;
}

/// The value of one of a topic's settings.
async fn topic_setting(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    key: &str,
) -> Option<String> {
    let configs = admin
        .describe_configs(&[ResourceSpecifier::Topic(name)], &AdminOptions::new())
        .await
        .expect("describe configs");
    configs[0].as_ref().expect("topic config").get(key).and_then(|entry| entry.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gives_existing_topics_its_retention_and_keeps_their_other_settings() {
    let Some(address) = kafka() else { return };
    let log = fresh(&address).await;
    let admin = admin(&log);
    let presence = log.config().topic_name(Topic::Presence);
    let messages = log.config().topic_name(Topic::Messages);

    let mut tool = log.config().clone();
    tool.retention = Some("presence=1h".parse().unwrap());
    guard(KafkaLog::connect(tool.clone())).await.expect("connect with a retention");
    assert_eq!(topic_setting(&admin, &presence, "retention.ms").await.as_deref(), Some("3600000"));
    assert_eq!(
        topic_setting(&admin, &presence, "message.timestamp.type").await.as_deref(),
        Some("LogAppendTime"),
        "the topic's other settings stay"
    );

    tool.retention = Some("presence=forever,messages=30d".parse().unwrap());
    guard(KafkaLog::connect(tool)).await.expect("connect with another retention");
    assert_eq!(topic_setting(&admin, &presence, "retention.ms").await.as_deref(), Some("-1"));
    assert_eq!(
        topic_setting(&admin, &messages, "retention.ms").await.as_deref(),
        Some("2592000000")
    );

    let mut reader = log.config().clone();
    reader.retention = None;
    guard(KafkaLog::connect(reader)).await.expect("connect as a tool");
    assert_eq!(
        topic_setting(&admin, &messages, "retention.ms").await.as_deref(),
        Some("2592000000"),
        "a tool leaves retention as it is"
    );
    remove(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_that_does_not_answer_fails_appends_instead_of_hanging() {
    let url = format!("kafka://127.0.0.1:1?prefix={}&delivery_timeout_ms=1000", unique_prefix());
    let mut config = KafkaConfig::from_url(&url, PARTITIONS).expect("config");
    config.request_timeout = Duration::from_secs(1);
    match guard(KafkaLog::connect(config.clone())).await {
        Err(LogError::Unavailable(_)) => {}
        Err(other) => panic!("connecting to nothing should be `unavailable`, not {other}"),
        Ok(_) => panic!("connected to a Kafka that is not there"),
    }

    // Past start-up, as if the cluster had gone away since.
    let log = KafkaLog::start(config).expect("start");
    let appended = guard(log.append(Topic::Messages, b"key", b"value".to_vec())).await;
    assert!(matches!(appended, Err(LogError::Unavailable(_))), "append: {appended:?}");
    let ends = guard(log.end_offsets(Topic::Messages)).await;
    assert!(matches!(ends, Err(LogError::Unavailable(_))), "end offsets: {ends:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_ends_appends_and_readers() {
    let Some(address) = kafka() else { return };
    let log = fresh(&address).await;
    let start = Cursor::end(&log, &[Topic::Users]).await.expect("end offsets");
    let mut reader = log.reader(start).await.expect("reader");
    let waiting = tokio::spawn(async move { reader.next_batch(16).await });

    log.close().await.expect("close");
    let read = guard(waiting).await.expect("reader task");
    assert!(matches!(read, Err(LogError::Closed)), "a waiting reader should end: {read:?}");
    let appended = log.append(Topic::Users, b"key", b"late".to_vec()).await;
    assert!(matches!(appended, Err(LogError::Closed)), "append after close: {appended:?}");
    assert!(matches!(log.reader(Cursor::default()).await.err(), Some(LogError::Closed)));
    remove(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_never_take_their_group_back_and_outsiders_cannot_commit_over_them() {
    let Some(address) = kafka() else { return };
    let log = fresh(&address).await;
    guard(group_offsets(&log)).await;
    remove(log).await;
}

/// A member's commits never take its group back past where the member started a partition, and
/// nobody outside the group can commit over it.
async fn group_offsets(log: &KafkaLog) {
    let topic = Topic::Calls;
    let group = format!("offsets-{}", unique_prefix());
    let mut positions = Vec::new();
    for i in 0..3 {
        positions.push(log.append(topic, b"call", vec![i]).await.expect("append"));
    }
    let partition = positions[0].partition;
    let mut checkpoint = Cursor::default();
    checkpoint.advance(positions[1]);
    log.commit(&group, &checkpoint).await.expect("a commit from outside a group nobody is in");

    let mut member = log.join_group(&group, &[topic], Cursor::default()).await.expect("join");
    let batch = member.next_batch(16).await.expect("next_batch");
    assert_eq!(batch[0].position, positions[2], "a member starts at its group's commit");

    member.commit(&Cursor::beginning(log, &[topic])).await.expect("commit");
    assert_eq!(
        log.committed(&group).await.expect("committed").get(topic, partition),
        Some(positions[2].offset),
        "a member's commit behind where it started took the group back"
    );

    // Kafka takes commits from outside a group only while nobody is in it.
    match log.commit(&group, &Cursor::beginning(log, &[topic])).await {
        Err(LogError::Storage(message)) if message.contains("Unknown member") => {}
        other => panic!("a commit from outside a group with a member should be refused: {other:?}"),
    }

    let mut done = Cursor::default();
    done.advance(positions[2]);
    member.commit(&done).await.expect("commit");
    assert_eq!(
        log.committed(&group).await.expect("committed").get(topic, partition),
        Some(positions[2].offset + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_split_the_partitions_and_hand_them_over() {
    let Some(address) = kafka() else { return };
    let log = fresh(&address).await;
    guard(hand_over(&log)).await;
    remove(log).await;
}

/// Two members share the group until the first leaves; then the second reads every partition,
/// each from where the first committed. Every record is read by exactly one member.
async fn hand_over(log: &KafkaLog) {
    let topic = Topic::Messages;
    let group = format!("handover-{}", unique_prefix());
    // One key per partition, so every round of appends reaches every partition.
    let keys: Vec<String> = (0..PARTITIONS)
        .map(|partition| {
            (0..)
                .map(|i| format!("key-{i}"))
                .find(|key| Topic::partition_for(key.as_bytes(), PARTITIONS) == partition)
                .expect("a key for every partition")
        })
        .collect();
    let start = Cursor::end(log, &[topic]).await.expect("end offsets");
    let (sender, mut received) = mpsc::unbounded_channel();
    let first = Worker::join(log, &group, topic, start.clone(), "first", sender.clone()).await;
    let second = Worker::join(log, &group, topic, start, "second", sender).await;

    let mut readers: BTreeMap<Position, Vec<&'static str>> = BTreeMap::new();
    let mut appended = Vec::new();
    // The group splits the partitions once both members are in; until then one reads them all.
    loop {
        let round = next_round(log, topic, &keys, &mut received, &mut readers).await;
        appended.extend(round.keys().copied());
        if round.values().any(|&m| m == "first") && round.values().any(|&m| m == "second") {
            break;
        }
    }
    first.leave().await;
    // The first member's partitions move to the second, which starts them at the first's commit.
    loop {
        let round = next_round(log, topic, &keys, &mut received, &mut readers).await;
        appended.extend(round.keys().copied());
        if round.values().all(|&m| m == "second") {
            break;
        }
    }
    second.leave().await;

    for position in &appended {
        assert_eq!(readers[position].len(), 1, "{position} was read by {:?}", readers[position]);
    }
    assert_eq!(readers.len(), appended.len(), "records were read that were never appended");
}

/// Appends one record per key, waits until each has been read, and says which member read it.
async fn next_round(
    log: &KafkaLog,
    topic: Topic,
    keys: &[String],
    received: &mut mpsc::UnboundedReceiver<(&'static str, Record)>,
    readers: &mut BTreeMap<Position, Vec<&'static str>>,
) -> BTreeMap<Position, &'static str> {
    let mut round = Vec::new();
    for key in keys {
        round.push(log.append(topic, key.as_bytes(), b"round".to_vec()).await.expect("append"));
    }
    while !round.iter().all(|position| readers.contains_key(position)) {
        let (member, record) = received.recv().await.expect("the members stopped");
        readers.entry(record.position).or_default().push(member);
    }
    round.into_iter().map(|position| (position, readers[&position][0])).collect()
}

/// A group member that reads, reports what it read, and commits it before reading on.
struct Worker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Worker {
    async fn join(
        log: &KafkaLog,
        group: &str,
        topic: Topic,
        start: Cursor,
        name: &'static str,
        report: mpsc::UnboundedSender<(&'static str, Record)>,
    ) -> Worker {
        let mut reader = log.join_group(group, &[topic], start.clone()).await.expect("join");
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut processed = start;
            loop {
                let batch = tokio::select! {
                    _ = &mut stopped => break,
                    batch = reader.next_batch(16) => batch.expect("next_batch"),
                };
                for record in batch {
                    processed.advance(record.position);
                    report.send((name, record)).expect("report");
                }
                // Before the next poll, where a rebalance may move partitions away: whoever gets
                // them starts right after what this member has read.
                reader.commit(&processed).await.expect("commit");
            }
        });
        Worker { stop, task }
    }

    /// Stops reading and drops the reader, which leaves the group.
    async fn leave(self) {
        let _ = self.stop.send(());
        self.task.await.expect("member task");
    }
}
