//! `switchboard rebuild`: replays the whole log into an empty read-model store.
//!
//! Read models are derived data: when a projection changes, a store is damaged, or a new backend
//! is brought up, the fix is to fold the log into a fresh store rather than to migrate the old
//! one. The replay stops at the end of the log as it was when the replay started, so the result
//! is a definite point in the log even if something keeps appending.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use switchboard_ingest::log::{Cursor, Log};
use switchboard_ingest::url::redacted;
use switchboard_projector::store::ReadModel;
use switchboard_projector::{PROJECTED_TOPICS, Progress, Projector};

/// Options of `switchboard rebuild`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Data directory of the node, for the default log location. Stop a node that uses an
    /// embedded log first: it can only be open in one process.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// The log to replay: file://DIR or kafka://HOST:PORT[?prefix=P] [default: file://<data-dir>/log].
    #[arg(long, env = "SWITCHBOARD_LOG")]
    pub log: Option<String>,

    /// The new, empty store to fold it into: a directory, file://DIR or scylla://HOST:PORT/KEYSPACE.
    #[arg(long)]
    pub into: String,

    /// Partitions per topic of the log, as `switchboard serve` created it.
    #[arg(long, env = "SWITCHBOARD_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
}

/// What a rebuild did.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Events folded into the new store.
    pub events: u64,
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        let rate = if seconds > 0.0 { self.events as f64 / seconds } else { 0.0 };
        write!(
            f,
            "rebuilt the read models from {} events in {seconds:.2} s ({rate:.0} events/s)",
            self.events
        )
    }
}

/// Runs `switchboard rebuild`: opens the log and the new store, replays, and prints the
/// [`Report`].
pub async fn command(args: Args) -> anyhow::Result<()> {
    let log_url =
        args.log.unwrap_or_else(|| format!("file://{}", args.data_dir.join("log").display()));
    // Opening an embedded log creates it when missing, and an empty log would "rebuild" nothing.
    if let Some(dir) = log_url.strip_prefix("file://") {
        ensure!(Path::new(dir).is_dir(), "{dir} holds no log");
    }
    let log = switchboard_ingest::log::open(&log_url, args.partitions)
        .await
        .with_context(|| format!("opening the log at {}", redacted(&log_url)))?;
    let into = store_url(&args.into);
    let store = switchboard_projector::store::open(&into)
        .await
        .with_context(|| format!("opening the new store at {}", redacted(&into)))?;
    let report = rebuild(Arc::clone(&log), store).await?;
    log.close().await.context("closing the log")?;
    println!("{report}");
    Ok(())
}

/// A store URL; a plain path means an embedded store in that directory.
pub fn store_url(location: &str) -> String {
    if location.contains("://") { location.to_owned() } else { format!("file://{location}") }
}

/// Projects the log, from offset 0 up to the end it has when this starts, into `into`, which
/// must be empty.
pub async fn rebuild(log: Arc<dyn Log>, into: Arc<dyn ReadModel>) -> anyhow::Result<Report> {
    let started = Instant::now();
    let existing = into.checkpoint().await.context("reading the target store's checkpoint")?;
    ensure!(
        existing.iter().next().is_none(),
        "the target store already holds read models (at {existing}); rebuild into an empty one"
    );
    let until =
        Cursor::end(log.as_ref(), &PROJECTED_TOPICS).await.context("reading where the log ends")?;
    let projector = Projector::new(log, into, Progress::new(Cursor::default()));
    let events = projector
        .catch_up(&until)
        .await
        .with_context(|| format!("replaying the log up to {until}"))?;
    Ok(Report { events, elapsed: started.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::write_dump;
    use switchboard_ingest::ids::IdGenerator;
    use switchboard_ingest::log::embedded::EmbeddedLog;
    use switchboard_ingest::{Ingest, Limits, Origin};
    use switchboard_projector::store::embedded::EmbeddedStore;
    use switchboard_schemas::{ConversationKind, MessageId, MessageSent};

    /// A log holding two users, a conversation between them and `messages` messages.
    async fn written_log(dir: &Path, messages: usize) -> (Arc<dyn Log>, u64) {
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir, 2).unwrap());
        let limits = Limits { max_body_bytes: 1024, max_group_members: 8 };
        let ingest = Ingest::new(Arc::clone(&log), IdGenerator::new(1).unwrap(), limits);
        let origin = Origin::system("test");
        let (ada, _) = ingest.register_user(&origin, "ada", "Ada", "hash".into()).await.unwrap();
        let (bob, _) = ingest.register_user(&origin, "bob", "Bob", "hash".into()).await.unwrap();
        let (conversation_id, _) = ingest
            .create_conversation(&origin, ConversationKind::Direct, None, vec![ada, bob])
            .await
            .unwrap();
        for i in 0..messages {
            let message = MessageSent {
                conversation_id,
                message_id: MessageId(ingest.next_id()),
                sender: ada,
                client_msg_id: format!("m{i}"),
                body: format!("hello {i}"),
                reply_to: None,
                attachments: Vec::new(),
            };
            ingest.send_message(&Origin::user(ada, "test"), message).await.unwrap();
        }
        (log, 3 + messages as u64)
    }

    async fn dumped(store: &EmbeddedStore) -> String {
        let mut out = Vec::new();
        write_dump(store, &mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn rebuilds_the_same_read_models_every_time_and_only_into_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let (log, written) = written_log(&dir.path().join("log"), 5).await;

        let first = Arc::new(EmbeddedStore::open(&dir.path().join("first")).unwrap());
        let report = rebuild(Arc::clone(&log), first.clone()).await.unwrap();
        assert_eq!(report.events, written);
        let second = Arc::new(EmbeddedStore::open(&dir.path().join("second")).unwrap());
        rebuild(Arc::clone(&log), second.clone()).await.unwrap();

        let dump = dumped(&first).await;
        assert!(dump.contains("hello 4"), "{dump}");
        assert_eq!(dump, dumped(&second).await);

        let again = format!("{:#}", rebuild(log, first).await.unwrap_err());
        assert!(again.contains("already holds read models"), "{again}");
    }

    #[tokio::test]
    async fn catching_up_stops_at_the_end_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let (log, written) = written_log(&dir.path().join("log"), 2).await;
        let until = Cursor::end(log.as_ref(), &PROJECTED_TOPICS).await.unwrap();
        let origin = Origin::system("test");
        let limits = Limits { max_body_bytes: 1024, max_group_members: 8 };
        Ingest::new(Arc::clone(&log), IdGenerator::new(2).unwrap(), limits)
            .register_user(&origin, "late", "Late", "hash".into())
            .await
            .unwrap();

        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let projector = Projector::new(log, store.clone(), Progress::new(Cursor::default()));
        assert_eq!(projector.catch_up(&until).await.unwrap(), written);
        let dump = dumped(&store).await;
        assert!(dump.contains("\"ada\"") && !dump.contains("\"late\""), "{dump}");
        assert_eq!(projector.catch_up(&until).await.unwrap(), 0, "nothing is applied twice");
    }

    #[tokio::test]
    async fn an_empty_log_rebuilds_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("log"), 2).unwrap());
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        assert_eq!(rebuild(log, store).await.unwrap().events, 0);
    }

    #[test]
    fn plain_paths_name_embedded_stores() {
        assert_eq!(store_url("/tmp/rebuilt"), "file:///tmp/rebuilt");
        assert_eq!(store_url("scylla://127.0.0.1:9042/ks"), "scylla://127.0.0.1:9042/ks");
    }

    #[test]
    fn the_report_reads_as_a_sentence() {
        let report = Report { events: 1000, elapsed: Duration::from_millis(500) };
        assert_eq!(
            report.to_string(),
            "rebuilt the read models from 1000 events in 0.50 s (2000 events/s)"
        );
    }
}
