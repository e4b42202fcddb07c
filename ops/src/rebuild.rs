//! `switchboard rebuild`: replays the whole log into an empty read-model store.
//!
//! Read models are derived data: when a projection changes, a store is damaged, or a new backend
//! is brought up, the fix is to fold the log into a fresh store rather than to migrate the old
//! one. The replay stops at the end of the log as it was when the replay started, so the result
//! is a definite point in the log even if something keeps appending.
//!
//! `--until` stops it earlier, at a time or at given offsets: the store then holds the read
//! models as they were at that point in history, for `switchboard serve --read-only` to show
//! during an investigation (time travel).
//!
//! A replay can take hours, and the store or the log may be out of reach for a while meanwhile
//! (a write timeout of an overloaded node, an engine restarting). A replay therefore waits and
//! goes on from the new store's checkpoint rather than fail, as long as it is only unavailable:
//! see [`Patience`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use switchboard_ingest::log::{Cursor, Log};
use switchboard_ingest::url::redacted;
use switchboard_projector::store::{ReadModel, StoreError};
use switchboard_projector::{PROJECTED_TOPICS, Progress, Projector, ProjectorError};

use crate::log_source::{LogArgs, parse_time};

/// Options of `switchboard rebuild`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The log to replay.
    #[command(flatten)]
    pub source: LogArgs,

    /// The new, empty store to fold it into: a directory, file://DIR or scylla://HOST:PORT/KEYSPACE.
    #[arg(long)]
    pub into: String,

    /// Replay only the events the log took before this time (RFC 3339, e.g.
    /// 2026-12-05T10:00:00Z), or before these offsets (`topic.partition=offset,…`, the form of
    /// a checkpoint; partitions it does not name are replayed whole) [default: the end].
    #[arg(long, default_value = "end")]
    pub until: Until,
}

/// Where a replay stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Until {
    /// The end of the log when the replay starts.
    #[default]
    End,
    /// Before the first record taken at or after this time (milliseconds since the epoch).
    Time(i64),
    /// Before these offsets.
    Offsets(Cursor),
}

impl FromStr for Until {
    type Err = String;

    fn from_str(s: &str) -> Result<Until, String> {
        if s == "end" {
            Ok(Until::End)
        } else if s.contains('=') {
            s.parse().map(Until::Offsets)
        } else {
            parse_time(s).map(Until::Time)
        }
    }
}

impl Until {
    /// The offsets, within the log's current end, that the replay stops before.
    async fn cursor(&self, log: &dyn Log) -> anyhow::Result<Cursor> {
        let end =
            Cursor::end(log, &PROJECTED_TOPICS).await.context("reading where the log ends")?;
        Ok(match self {
            Until::End => end,
            Until::Time(time_ms) => Cursor::at_time(log, &PROJECTED_TOPICS, *time_ms)
                .await
                .context("finding that time in the log")?,
            Until::Offsets(offsets) => {
                let mut until = end.clone();
                for (topic, partition, offset) in offsets.iter() {
                    let end = end.get(topic, partition).with_context(|| {
                        format!(
                            "{topic}.{partition} is not a partition the read models are built from"
                        )
                    })?;
                    until.set(topic, partition, offset.min(end));
                }
                until
            }
        })
    }
}

/// What a rebuild did.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Events folded into the new store.
    pub events: u64,
    pub elapsed: Duration,
    /// The offsets the replay stopped before.
    pub until: Cursor,
    /// Whether those are where the log ended when the replay started (no `--until`).
    pub to_the_end: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        let rate = if seconds > 0.0 { self.events as f64 / seconds } else { 0.0 };
        write!(
            f,
            "rebuilt the read models from {} events in {seconds:.2} s ({rate:.0} events/s), ",
            self.events
        )?;
        match self.to_the_end {
            true => f.write_str("to the end of the log"),
            false => write!(f, "up to {}", self.until),
        }
    }
}

/// How long a replay waits for a store or log that is unavailable (the error says "try again
/// later"; any other error ends the replay at once): each attempt that fails waits twice as long
/// as the one before, from `first_wait` up to [`MAX_WAIT`], and after `retries` failures in a row
/// with nothing applied in between, the replay gives up with the last error.
#[derive(Clone, Copy, Debug)]
struct Patience {
    retries: u32,
    first_wait: Duration,
}

/// The longest wait between two attempts.
const MAX_WAIT: Duration = Duration::from_secs(30);

impl Default for Patience {
    /// About three minutes of waiting in all: longer than an engine takes to restart.
    fn default() -> Patience {
        Patience { retries: 10, first_wait: Duration::from_secs(1) }
    }
}

impl Patience {
    /// Counts a failure with `error`; then waits before the next attempt, or hands the error back
    /// when it is not `transient` or the failures in a row have used up the retries.
    async fn wait_out<E: fmt::Display>(
        &self,
        failures: &mut u32,
        error: E,
        transient: bool,
    ) -> Result<(), E> {
        *failures += 1;
        if !transient || *failures > self.retries {
            return Err(error);
        }
        let wait = self.first_wait.saturating_mul(1 << (*failures - 1).min(16)).min(MAX_WAIT);
        tracing::warn!(
            %error,
            "unavailable; trying again in {wait:?} (retry {failures} of {})",
            self.retries
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// Runs `switchboard rebuild`: opens the log and the new store, replays, and prints the
/// [`Report`].
pub async fn command(args: Args) -> anyhow::Result<()> {
    let log = args.source.open().await?;
    let into = store_url(&args.into);
    let mut failures = 0;
    let store = loop {
        match switchboard_projector::store::open(&into).await {
            Ok(store) => break store,
            Err(error) => {
                let transient = matches!(error, StoreError::Unavailable(_));
                Patience::default()
                    .wait_out(&mut failures, error, transient)
                    .await
                    .with_context(|| format!("opening the new store at {}", redacted(&into)))?;
            }
        }
    };
    let report = rebuild(Arc::clone(&log), store, &args.until).await?;
    log.close().await.context("closing the log")?;
    println!("{report}");
    Ok(())
}

/// A store URL; a plain path means an embedded store in that directory.
pub fn store_url(location: &str) -> String {
    if location.contains("://") { location.to_owned() } else { format!("file://{location}") }
}

/// Projects the log, from offset 0 up to `until`, into `into`, which must be empty, waiting
/// with [`Patience`] for a log or store that is unavailable.
pub async fn rebuild(
    log: Arc<dyn Log>,
    into: Arc<dyn ReadModel>,
    until: &Until,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let existing = into.checkpoint().await.context("reading the target store's checkpoint")?;
    ensure!(
        existing.iter().next().is_none(),
        "the target store already holds read models (at {existing}); rebuild into an empty one"
    );
    let to_the_end = *until == Until::End;
    let until = until.cursor(log.as_ref()).await?;
    let progress = Progress::new(Cursor::default());
    let shown = tokio::spawn(show(progress.clone(), until.clone()));
    let projector = Projector::new(log, into, progress);
    let replayed = replay(&projector, &until, Patience::default()).await;
    shown.abort();
    replayed.with_context(|| format!("replaying the log up to {until}"))?;
    Ok(Report { events: projector.applied(), elapsed: started.elapsed(), until, to_the_end })
}

/// Catches `projector` up with `until`, going on from the store's checkpoint after each failure
/// `patience` waits out.
async fn replay(
    projector: &Projector,
    until: &Cursor,
    patience: Patience,
) -> Result<(), ProjectorError> {
    let mut failures = 0;
    loop {
        let applied_before = projector.applied();
        let error = match projector.catch_up(until).await {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        if projector.applied() > applied_before {
            failures = 0;
        }
        let transient = error.is_transient();
        patience.wait_out(&mut failures, error, transient).await?;
    }
}

/// How often the progress bar is redrawn.
const SHOW_EVERY: Duration = Duration::from_millis(200);

/// Draws the replay's progress on the terminal (nothing when stderr is not one): events done,
/// events/s and the time left, counted in log offsets, which number the events.
async fn show(progress: Progress, until: Cursor) {
    let offsets = |cursor: &Cursor| -> u64 {
        until
            .iter()
            .map(|(topic, partition, end)| cursor.get(topic, partition).unwrap_or(0).min(end))
            .sum()
    };
    let bar = ProgressBar::with_draw_target(Some(offsets(&until)), ProgressDrawTarget::stderr())
        .with_style(
            ProgressStyle::with_template(
                "{bar:40} {human_pos}/{human_len} events  {per_sec}  {eta} left",
            )
            .expect("a valid template"),
        );
    loop {
        bar.set_position(offsets(&progress.current()));
        tokio::time::sleep(SHOW_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::write_dump;
    use crate::testing::{Chat, ingest, written_log};
    use switchboard_ingest::Origin;
    use switchboard_ingest::log::embedded::EmbeddedLog;
    use switchboard_projector::store::embedded::EmbeddedStore;
    use switchboard_schemas::Topic;

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
        let report = rebuild(Arc::clone(&log), first.clone(), &Until::End).await.unwrap();
        assert_eq!(report.events, written);
        let second = Arc::new(EmbeddedStore::open(&dir.path().join("second")).unwrap());
        rebuild(Arc::clone(&log), second.clone(), &Until::End).await.unwrap();

        let dump = dumped(&first).await;
        assert!(dump.contains("hello 4"), "{dump}");
        assert_eq!(dump, dumped(&second).await);

        let again = format!("{:#}", rebuild(log, first, &Until::End).await.unwrap_err());
        assert!(again.contains("already holds read models"), "{again}");
    }

    #[tokio::test]
    async fn catching_up_stops_at_the_end_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let (log, written) = written_log(&dir.path().join("log"), 2).await;
        let until = Cursor::end(log.as_ref(), &PROJECTED_TOPICS).await.unwrap();
        ingest(&log, 2)
            .register_user(&Origin::system("test"), "late", "Late", "hash".into())
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
        assert_eq!(rebuild(log, store, &Until::End).await.unwrap().events, 0);
    }

    #[tokio::test]
    async fn a_rebuild_until_a_time_holds_the_read_models_of_that_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut chat = Chat::written(&dir.path().join("log"), 2).await;
        chat.say("before the incident").await;
        let (log, written) = (Arc::clone(&chat.log), chat.events);
        let end = Cursor::end(log.as_ref(), &PROJECTED_TOPICS).await.unwrap();
        // Everything so far was taken before `incident`; everything after, at or after it.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let incident = switchboard_ingest::now_ms();
        tokio::time::sleep(Duration::from_millis(5)).await;
        chat.say("after the incident").await;

        let then = Arc::new(EmbeddedStore::open(&dir.path().join("then")).unwrap());
        let report = rebuild(Arc::clone(&log), then.clone(), &Until::Time(incident)).await.unwrap();
        assert_eq!(report.events, written);
        assert_eq!(report.until, end);
        let dump = dumped(&then).await;
        assert!(dump.contains("before the incident"), "{dump}");
        assert!(!dump.contains("after the incident"), "{dump}");
        let beginning = Cursor::beginning(log.as_ref(), &PROJECTED_TOPICS);
        let checkpoint = then.checkpoint().await.unwrap().or(&beginning);
        assert_eq!(checkpoint, end, "the store says what point it holds");

        let by_offsets = Arc::new(EmbeddedStore::open(&dir.path().join("offsets")).unwrap());
        let until = Until::Offsets(end.clone());
        rebuild(Arc::clone(&log), by_offsets.clone(), &until).await.unwrap();
        assert_eq!(dumped(&by_offsets).await, dump, "the same point named by its offsets");

        let now = Arc::new(EmbeddedStore::open(&dir.path().join("now")).unwrap());
        rebuild(log, now.clone(), &Until::End).await.unwrap();
        assert!(dumped(&now).await.contains("after the incident"));
    }

    #[tokio::test]
    async fn offsets_past_the_end_stop_at_the_end_and_unknown_partitions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (log, written) = written_log(&dir.path().join("log"), 2).await;
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let far: Until = "messages.0=1000000,messages.1=1000000".parse().unwrap();
        assert_eq!(rebuild(Arc::clone(&log), store, &far).await.unwrap().events, written);

        let store = Arc::new(EmbeddedStore::open(&dir.path().join("other")).unwrap());
        let unknown: Until = "messages.9=1".parse().unwrap();
        let refused = format!("{:#}", rebuild(log, store, &unknown).await.unwrap_err());
        assert!(refused.contains("messages.9 is not a partition"), "{refused}");
    }

    #[tokio::test]
    async fn a_rebuild_until_offsets_the_log_no_longer_keeps_ends() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(&dir.path().join("log"), 1).unwrap();
        for _ in 0..3 {
            log.append(Topic::Presence, b"user", b"gone by now".to_vec()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        log.append(Topic::Presence, b"user", b"kept".to_vec()).await.unwrap();
        log.expire("presence=1s".parse().unwrap());
        while log.offsets_at(Topic::Presence, 0).await.unwrap() != [3] {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let until: Until = "presence.0=2".parse().unwrap();
        let replay = rebuild(Arc::new(log), store, &until);
        let report = tokio::time::timeout(Duration::from_secs(60), replay)
            .await
            .expect("the replay waited for events that expired")
            .unwrap();
        assert_eq!(report.events, 0, "the events before offset 2 have expired");
    }

    #[test]
    fn until_reads_a_time_offsets_or_the_end() {
        assert_eq!("end".parse(), Ok(Until::End));
        assert_eq!("1970-01-01T00:00:01Z".parse(), Ok(Until::Time(1000)));
        assert_eq!("users.1=4".parse::<Until>(), Ok(Until::Offsets("users.1=4".parse().unwrap())));
        assert!("yesterday".parse::<Until>().unwrap_err().contains("is not a time"));
        assert!("users.x=4".parse::<Until>().is_err());
    }

    #[test]
    fn plain_paths_name_embedded_stores() {
        assert_eq!(store_url("/tmp/rebuilt"), "file:///tmp/rebuilt");
        assert_eq!(store_url("scylla://127.0.0.1:9042/ks"), "scylla://127.0.0.1:9042/ks");
    }

    #[test]
    fn the_report_reads_as_a_sentence() {
        let mut report = Report {
            events: 1000,
            elapsed: Duration::from_millis(500),
            until: "messages.0=600,users.0=400".parse().unwrap(),
            to_the_end: false,
        };
        assert_eq!(
            report.to_string(),
            "rebuilt the read models from 1000 events in 0.50 s (2000 events/s), up to \
             users.0=400,messages.0=600"
        );
        report.to_the_end = true;
        assert!(report.to_string().ends_with("(2000 events/s), to the end of the log"));
    }
}
