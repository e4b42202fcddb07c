//! `switchboard load`: a load generator of real WebSocket clients, and the capacity report the
//! seed analysis only estimated.
//!
//! A run has an unmeasured setup and a timed part:
//!
//! 1. [`setup`]: register one user per connection, put the users into conversations (direct
//!    ones, or groups of `--group-size`), sample the server's memory;
//! 2. [`client`]: open every socket and wait for its `ready`, sample the memory again — the
//!    difference, divided by the sockets, is the memory a connection costs;
//! 3. every socket sends its share of `--rate` on an open-loop timetable ([`pacing`]) for the
//!    warm-up and the measured window, timing send → ack (the message is durable in the log)
//!    and send → delivery to each other member's socket, while the server's CPU time over the
//!    window is sampled;
//! 4. wait (boundedly) for the last answers, close, and [`report`] what the [`tally`] says.
//!
//! With `--processes N`, the same steps run in N child processes ([`workers`]), because one
//! process may hold only so many sockets.
//!
//! `--scenario reconnect` measures something else with the same setup: what it costs to bring
//! back every socket at once after an outage, each resuming what it missed (see [`reconnect`]).
//!
//! `--scenario idle` stops after step 2 and holds the sockets open, sending nothing, for the
//! warm-up and the window: what an idle authenticated connection costs ([`idle`]). For that
//! figure the server should not have registered anyone since it started, so `--scenario
//! register` does step 1 alone and saves the accounts to `--accounts FILE`, and a run given the
//! same file on a restarted server uses them instead of registering ([`saved`]).
//!
//! `--source-addresses N` spreads the sockets over the local addresses 127.0.0.1 to 127.0.0.N
//! (see [`client::Sources`]).

mod client;
mod endpoint;
mod idle;
mod metrics;
mod pacing;
mod reconnect;
pub(crate) mod report;
mod saved;
mod setup;
mod tally;
mod workers;

use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::http::Uri;

use client::{Client, Room, Shared, Sources, Stage};
use endpoint::Endpoint;
use metrics::Scrape;
use pacing::Schedule;
use report::Summary;
use saved::Saved;
use setup::{Account, Api, Conversation, Progress};
use tally::Tally;

/// Sockets opened at once during setup; an upgrade is cheap, unlike a registration.
const CONNECT_CONCURRENCY: usize = 64;

/// After the window, how long to wait for answers to the last messages sent. Longer waits are
/// themselves a result: what is still outstanding then is reported as never answered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Between the last `ready` and the memory sample: the server finishes a socket's registration
/// (presence, the session event, pushes to contacts) around the time it says `ready`.
const SETTLE: Duration = Duration::from_secs(1);

/// What a run measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Every socket sends its share of `--rate` for `--duration`: throughput, latency, memory.
    Steady,
    /// Every socket goes away for `--offline` while `--rate` messages/s are sent to it over
    /// HTTP, then all come back at once and resume: what the catch-up costs and how long it
    /// takes. One process only (it holds up to about 19,000 sockets).
    Reconnect,
    /// Every socket opens and sends nothing for the warm-up and `--duration`: the server's
    /// memory per idle connection, and its CPU over the window.
    Idle,
    /// Only registers the users and creates their conversations, and saves them to
    /// `--accounts`, for later runs against a restarted server. One process only.
    Register,
}

/// Options of `switchboard load`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Base URL of the node under test.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// What to measure: steady load, or a mass reconnect with resume.
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    pub scenario: Scenario,

    /// Which endpoint the sockets use: `/v1/ws`, or `/socket.io/` (Socket.IO over WebSocket).
    #[arg(long, value_enum, default_value_t = Endpoint::Ws)]
    pub endpoint: Endpoint,

    /// WebSocket connections to open and hold, one user each.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,

    /// Messages per second to send, in total over all connections.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,

    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// How long to send before measuring.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Members per conversation: 2 makes direct conversations, more makes groups.
    #[arg(long, default_value_t = 2)]
    pub group_size: usize,

    /// Size of each message body, in bytes.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,

    /// Processes to spread the connections over; one process may hold at most 20,000 open
    /// files on this machine, and every socket is one.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,

    /// Most messages one socket may have unacknowledged. A send due past it is skipped and
    /// counted: the server is not keeping up.
    #[arg(long, default_value_t = 64)]
    pub max_in_flight: usize,

    /// Registrations and conversation creations in flight at once during setup. Registration
    /// hashes a password with argon2, so more mostly slows the server down.
    #[arg(long, default_value_t = 8)]
    pub setup_concurrency: usize,

    /// Reconnect: how long the sockets stay away while `--rate` messages/s are sent to them.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub offline: Duration,

    /// Reconnect: HTTP sends in flight at once while the sockets are away.
    #[arg(long, default_value_t = 64)]
    pub send_concurrency: usize,

    /// Reconnect: WebSocket upgrades in flight at once when every socket comes back.
    #[arg(long, default_value_t = 500)]
    pub reconnect_concurrency: usize,

    /// Reconnect: how long, from the start of the reconnect, the sockets may take to catch up;
    /// what has not arrived by then is reported missing.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub catch_up_timeout: Duration,

    /// Also write the full result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// With `--scenario register`, where to save the users and conversations; with the other
    /// scenarios, use the ones saved there instead of registering new users. They must have
    /// been registered with the server under test (or one whose data it has), and for as many
    /// `--connections` in conversations of the same `--group-size`.
    #[arg(long, value_name = "FILE")]
    pub accounts: Option<PathBuf>,

    /// Connect the sockets from 127.0.0.1 to 127.0.0.N in turn, as N client addresses, rather
    /// than from whichever address the system picks; `--url` must then be a loopback one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub source_addresses: Option<u8>,

    /// Runs as child process N of a multi-process test (set by the parent).
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.url.starts_with("http://") || self.url.starts_with("https://"),
            "--url must be an http:// or https:// URL, not `{}`",
            self.url
        );
        ensure!(self.rate.is_finite() && self.rate > 0.0, "--rate must be positive");
        ensure!(self.group_size >= 2, "--group-size must be at least 2");
        ensure!(self.processes >= 1, "--processes must be at least 1");
        let smallest_share = self.connections / self.processes;
        ensure!(
            smallest_share >= self.group_size,
            "each process needs at least one conversation of {} members, but {} connections over \
             {} processes leaves {smallest_share}",
            self.group_size,
            self.connections,
            self.processes
        );
        ensure!(self.body_bytes >= 1, "--body-bytes must be at least 1");
        ensure!(self.max_in_flight >= 1, "--max-in-flight must be at least 1");
        ensure!(self.setup_concurrency >= 1, "--setup-concurrency must be at least 1");
        ensure!(!self.duration.is_zero(), "--duration must be longer than 0");
        ensure!(
            self.source_addresses.is_none() || is_loopback(&self.url),
            "--source-addresses connects from loopback addresses, so --url must be a loopback \
             one, not `{}`",
            self.url
        );
        match self.scenario {
            Scenario::Reconnect => self.check_reconnect(),
            Scenario::Register => self.check_register(),
            Scenario::Steady | Scenario::Idle => Ok(()),
        }
    }

    fn check_register(&self) -> anyhow::Result<()> {
        ensure!(self.accounts.is_some(), "--scenario register saves to --accounts FILE; give one");
        ensure!(
            self.processes == 1,
            "--scenario register runs in one process (it opens no socket), not --processes {}",
            self.processes
        );
        Ok(())
    }

    fn check_reconnect(&self) -> anyhow::Result<()> {
        ensure!(self.endpoint == Endpoint::Ws, "--scenario reconnect measures /v1/ws only");
        ensure!(
            self.processes == 1,
            "--scenario reconnect runs in one process (it holds up to about 19,000 sockets), \
             not --processes {}",
            self.processes
        );
        ensure!(!self.offline.is_zero(), "--offline must be longer than 0");
        ensure!(
            self.rate * self.offline.as_secs_f64() >= 1.0,
            "--rate {} for --offline {} sends no message",
            self.rate,
            humantime::format_duration(self.offline)
        );
        ensure!(self.send_concurrency >= 1, "--send-concurrency must be at least 1");
        ensure!(self.reconnect_concurrency >= 1, "--reconnect-concurrency must be at least 1");
        ensure!(!self.catch_up_timeout.is_zero(), "--catch-up-timeout must be longer than 0");
        Ok(())
    }

    /// The saved accounts a run uses instead of registering new ones.
    fn saved_accounts(&self) -> Option<&Path> {
        self.accounts.as_deref().filter(|_| self.scenario != Scenario::Register)
    }

    fn sources(&self) -> Sources {
        Sources::loopbacks(self.source_addresses)
    }

    /// The WebSocket URL base matching `--url`.
    fn ws_base(&self) -> String {
        let url = self.url.trim_end_matches('/');
        match url.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", url.trim_start_matches("http://")),
        }
    }
}

/// The points at which the processes of one run wait for each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Users and conversations exist; no socket is open yet.
    Registered,
    /// Every socket is open and ready; nothing has been sent yet.
    Connected,
}

impl Phase {
    const ALL: [Phase; 2] = [Phase::Registered, Phase::Connected];

    fn name(self) -> &'static str {
        match self {
            Phase::Registered => "registered",
            Phase::Connected => "connected",
        }
    }

    fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|phase| phase.name() == name)
    }
}

/// Whether `url` names this host by a loopback address (IPv4, as the source addresses are).
fn is_loopback(url: &str) -> bool {
    let host = url.parse::<Uri>().ok().and_then(|uri| uri.host().map(str::to_owned));
    host.is_some_and(|host| {
        host == "localhost" || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// The server's resident memory before any socket opened and with all of them open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Memory {
    pub before_bytes: u64,
    pub after_bytes: u64,
}

impl Memory {
    /// The server's growth from before the sockets opened to `now_bytes`, per socket; none when
    /// its memory shrank meanwhile.
    pub fn growth_per_connection(&self, now_bytes: u64, connected: u64) -> Option<f64> {
        let growth = now_bytes.checked_sub(self.before_bytes)?;
        Some(growth as f64 / connected.max(1) as f64)
    }
}

/// What the server reports of the measured window: the CPU time it spent in it, and its memory
/// at its end.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    pub cpu_seconds: Option<f64>,
    pub end_bytes: Option<u64>,
}

/// What the run samples of the server itself: its memory at each [`Phase`], and the
/// [`Window`].
#[derive(Default)]
pub struct Watch {
    memory: Memory,
    window: Option<tokio::task::JoinHandle<anyhow::Result<Window>>>,
}

impl Watch {
    async fn reached(&mut self, args: &Args, phase: Phase) -> anyhow::Result<()> {
        let api = Api::new(&args.url)?;
        match phase {
            Phase::Registered => self.memory.before_bytes = api.resident_memory().await?,
            Phase::Connected => {
                tokio::time::sleep(SETTLE).await;
                self.memory.after_bytes = api.resident_memory().await?;
                // The window starts as soon as this returns, in every process.
                let schedule = Schedule::new(Instant::now(), args.warmup, args.duration);
                self.window = Some(tokio::spawn(sample_window(api, schedule)));
            }
        }
        Ok(())
    }

    /// The memory samples, and what the server reported of the window.
    async fn finish(self) -> anyhow::Result<(Memory, Window)> {
        let window = match self.window {
            Some(task) => task.await.context("sampling the server over the window")??,
            None => Window::default(),
        };
        Ok((self.memory, window))
    }
}

/// Scrapes the server's metrics at the start and the end of the measured window: the CPU time
/// from its `process_cpu_seconds_total`, the memory from the last scrape.
async fn sample_window(api: Api, schedule: Schedule) -> anyhow::Result<Window> {
    tokio::time::sleep_until(schedule.measure_from.into()).await;
    let before = api.scrape().await?;
    tokio::time::sleep_until(schedule.measure_until.into()).await;
    let after = api.scrape().await?;
    let cpu = |scrape: &Scrape| scrape.value(metrics::CPU_SECONDS);
    Ok(Window {
        cpu_seconds: cpu(&before).zip(cpu(&after)).map(|(before, after)| after - before),
        end_bytes: after.value(metrics::RESIDENT_MEMORY).map(|bytes| bytes as u64),
    })
}

/// Runs `switchboard load`: the whole test, or one child's part of it.
pub async fn command(args: Args) -> anyhow::Result<()> {
    args.check()?;
    match args.scenario {
        Scenario::Reconnect => return reconnect::command(&args).await,
        Scenario::Register => return register(&args).await,
        Scenario::Steady | Scenario::Idle => {}
    }
    if let Some(worker) = args.worker {
        let mut follower = workers::Follower::new();
        let tally = drive(&args, worker, async |phase| follower.reached(phase).await).await?;
        return follower.finish(&tally);
    }
    let (tally, watch) = if args.processes > 1 {
        workers::lead(&args).await?
    } else {
        let mut watch = Watch::default();
        let tally = drive(&args, 0, async |phase| watch.reached(&args, phase).await).await?;
        (tally, watch)
    };
    let (memory, window) = watch.finish().await?;
    if args.scenario == Scenario::Idle {
        let summary = idle::Summary::new(&args, &tally, memory, window);
        println!("{}", summary.table());
        return write_json(args.json.as_deref(), &summary);
    }
    let summary = Summary::new(&args, &tally, memory, window.cpu_seconds);
    println!("{}", summary.table());
    println!("{}", summary.capacity_table());
    write_json(args.json.as_deref(), &summary)
}

/// Writes `result` as JSON to `path`, when there is one.
fn write_json(path: Option<&Path>, result: &impl Serialize) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let json = serde_json::to_string_pretty(result).context("encoding the result")?;
    std::fs::write(path, json + "\n")
        .with_context(|| format!("writing the result to {}", path.display()))
}

/// `--scenario register`: the setup alone, saved for later runs.
async fn register(args: &Args) -> anyhow::Result<()> {
    let path = args.accounts.as_deref().expect("checked: register has --accounts");
    let (accounts, conversations) = populate(args, 0, "").await?;
    let saved = Saved { group_size: args.group_size, accounts, conversations };
    saved.write(path)?;
    eprintln!(
        "saved {} accounts in {} conversations to {}",
        saved.accounts.len(),
        saved.conversations.len(),
        path.display()
    );
    Ok(())
}

/// One process's part of the run; `reached` is called at each [`Phase`] and returns when the
/// run may go on.
async fn drive(
    args: &Args,
    worker: usize,
    mut reached: impl AsyncFnMut(Phase) -> anyhow::Result<()>,
) -> anyhow::Result<Tally> {
    let label = if args.processes > 1 { format!("[worker {worker}] ") } else { String::new() };
    let (accounts, conversations) = populate(args, worker, &label).await?;
    reached(Phase::Registered).await?;

    // Every socket sends at the same rate whichever process it is in: the total rate over the
    // total connections.
    let interval = pacing::send_interval(args.connections, args.rate);
    let shared = Arc::new(Shared::new(args.body_bytes, interval, args.max_in_flight));
    let (stage, watching) = watch::channel(Stage::Connecting);
    let sockets = open_sockets(args, &accounts, &conversations, &shared, &watching, &label).await?;
    reached(Phase::Connected).await?;

    let schedule = Schedule::new(Instant::now(), args.warmup, args.duration);
    let timing = format!(
        "{} of warm-up, then {} measured",
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration)
    );
    if args.scenario == Scenario::Idle {
        eprintln!("{label}holding every socket idle: {timing}");
        // A moment past the window, while the server's memory at its end is sampled.
        tokio::time::sleep_until((schedule.measure_until + SETTLE).into()).await;
    } else {
        eprintln!("{label}sending: {timing}");
        send(&shared, &stage, schedule, &label).await;
    }
    stage.send_replace(Stage::Stopping);
    sockets.join_all().await;

    Ok(shared.take_tally(accounts.len() as u64))
}

/// Has every socket send on `schedule`, then waits (boundedly) for the last answers.
async fn send(shared: &Shared, stage: &watch::Sender<Stage>, schedule: Schedule, label: &str) {
    stage.send_replace(Stage::Running(schedule));
    tokio::time::sleep_until(schedule.measure_until.into()).await;
    eprintln!("{label}waiting for the last answers");
    let settled = async {
        while !shared.settled() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Whatever is still outstanding after the timeout is reported, not waited for.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, settled).await;
}

/// The setup every scenario starts with, for process `worker`: its share of `--connections`
/// users in conversations of `--group-size`, either new ones or its part of `--accounts`.
async fn populate(
    args: &Args,
    worker: usize,
    label: &str,
) -> anyhow::Result<(Vec<Account>, Vec<Conversation>)> {
    let api = Api::new(&args.url)?;
    if let Some(path) = args.saved_accounts() {
        let saved = Saved::read(path, args.connections, args.group_size)?;
        let (mut accounts, conversations) = saved.part(args.processes, worker);
        saved::renew_expiring(&api, &mut accounts, args.setup_concurrency, label).await?;
        return Ok((accounts, conversations));
    }
    let connections = pacing::share(args.connections, args.processes, worker);
    let prefix = handle_prefix();
    let accounts =
        setup::register_all(&api, &prefix, connections, args.setup_concurrency, label).await?;
    let conversations = setup::create_conversations(
        &api,
        &accounts,
        args.group_size,
        args.setup_concurrency,
        label,
    )
    .await?;
    Ok((accounts, conversations))
}

/// Opens one socket per account and starts its client; they idle until the stage changes.
async fn open_sockets(
    args: &Args,
    accounts: &[Account],
    conversations: &[Conversation],
    shared: &Arc<Shared>,
    stage: &watch::Receiver<Stage>,
    label: &str,
) -> anyhow::Result<JoinSet<()>> {
    let ws_base = args.ws_base();
    let sources = args.sources();
    // Conversations cover the accounts in order, so this is each account's room.
    let rooms: Vec<Arc<Room>> = conversations
        .iter()
        .flat_map(|conversation| {
            let room = Arc::new(Room::new(conversation.id.clone(), conversation.members.len()));
            conversation.members.clone().map(move |_| Arc::clone(&room))
        })
        .collect();
    let mut progress = Progress::new(format!("{label}opening sockets"), accounts.len());
    let mut opened = stream::iter(accounts.iter().enumerate())
        .map(|(index, account)| {
            let ws_base = &ws_base;
            async move {
                let socket =
                    client::connect(args.endpoint, ws_base, &account.token, sources.of(index))
                        .await
                        .with_context(|| format!("connecting user {}", account.id))?;
                anyhow::Ok((index, socket))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    let mut clients = JoinSet::new();
    while let Some((index, socket)) = opened.try_next().await? {
        let client = Client::new(
            args.endpoint,
            socket,
            index,
            accounts.len(),
            Arc::clone(&rooms[index]),
            Arc::clone(shared),
            stage.clone(),
        );
        clients.spawn(client.run());
        progress.advance();
    }
    Ok(clients)
}

/// A prefix for this process's user handles: new on every run against the same server, and
/// different in each process of a run.
fn handle_prefix() -> String {
    let random = std::hash::RandomState::new().hash_one(std::process::id());
    format!("ld{:08x}", random as u32)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// `switchboard load` with `args`, as the command line would give them, unchecked.
    pub(crate) fn args(args: &[&str]) -> Args {
        Cli::parse_from(std::iter::once("load").chain(args.iter().copied())).args
    }

    fn parse(args: &[&str]) -> anyhow::Result<Args> {
        let cli = Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))?;
        cli.args.check()?;
        Ok(cli.args)
    }

    #[test]
    fn defaults_are_the_target_load() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.connections, 1000);
        assert_eq!(args.rate, 20_000.0);
        assert_eq!(args.duration, Duration::from_secs(30));
        assert_eq!(args.warmup, Duration::from_secs(5));
        assert_eq!(args.ws_base(), "ws://127.0.0.1:8080");
    }

    #[test]
    fn impossible_runs_are_refused_before_anything_starts() {
        let refused = |args: &[&str]| format!("{:#}", parse(args).unwrap_err());
        assert!(
            refused(&["--connections", "5", "--processes", "3"])
                .contains("at least one conversation")
        );
        assert!(refused(&["--group-size", "1"]).contains("at least 2"));
        assert!(refused(&["--rate", "0"]).contains("positive"));
        assert!(refused(&["--url", "127.0.0.1:8080"]).contains("http://"));
        assert!(refused(&["--duration", "soon"]).contains("duration"));
    }

    #[test]
    fn the_reconnect_scenario_has_its_own_options_and_checks() {
        let args = parse(&[
            "--scenario",
            "reconnect",
            "--connections",
            "10000",
            "--rate",
            "1000",
            "--offline",
            "60s",
        ])
        .unwrap();
        assert_eq!(args.scenario, Scenario::Reconnect);
        assert_eq!(args.offline, Duration::from_secs(60));
        assert_eq!(args.reconnect_concurrency, 500);
        assert_eq!(parse(&[]).unwrap().scenario, Scenario::Steady, "steady stays the default");
        let refused = |args: &[&str]| {
            let args = [&["--scenario", "reconnect"], args].concat();
            format!("{:#}", parse(&args).unwrap_err())
        };
        assert!(refused(&["--processes", "2"]).contains("one process"));
        assert!(refused(&["--offline", "0s"]).contains("--offline"));
        assert!(refused(&["--rate", "0.5", "--offline", "1s"]).contains("sends no message"));
        assert!(refused(&["--reconnect-concurrency", "0"]).contains("at least 1"));
        assert!(refused(&["--send-concurrency", "0"]).contains("at least 1"));
        assert!(refused(&["--catch-up-timeout", "0s"]).contains("longer than 0"));
        assert!(parse(&["--processes", "2"]).is_ok(), "the steady scenario still spreads");
    }

    #[test]
    fn the_idle_scenario_uses_saved_accounts_from_several_addresses() {
        let args = parse(&[
            "--scenario",
            "idle",
            "--connections",
            "15000",
            "--accounts",
            "accounts.json",
            "--source-addresses",
            "4",
        ])
        .unwrap();
        assert_eq!(args.scenario, Scenario::Idle);
        assert_eq!(args.saved_accounts(), Some(Path::new("accounts.json")));
        assert_eq!(args.sources(), Sources::loopbacks(Some(4)));
        assert_eq!(parse(&[]).unwrap().saved_accounts(), None, "new users by default");
        assert_eq!(parse(&[]).unwrap().sources(), Sources::default());
        let refused = |args: &[&str]| format!("{:#}", parse(args).unwrap_err());
        assert!(refused(&["--source-addresses", "0"]).contains("--source-addresses"));
        assert!(refused(&["--source-addresses", "256"]).contains("--source-addresses"));
        assert!(
            refused(&["--source-addresses", "2", "--url", "http://10.0.0.1:8080"])
                .contains("loopback")
        );
        for url in ["http://localhost:8080", "http://127.0.0.1:18700/", "http://127.1.2.3"] {
            assert!(parse(&["--source-addresses", "2", "--url", url]).is_ok(), "{url}");
        }
    }

    #[test]
    fn the_register_scenario_saves_what_the_others_use() {
        let args =
            parse(&["--scenario", "register", "--accounts", "a.json", "--connections", "15000"])
                .unwrap();
        assert_eq!(args.scenario, Scenario::Register);
        assert_eq!(args.saved_accounts(), None, "it registers, and writes the file");
        let refused = |args: &[&str]| {
            let args = [&["--scenario", "register"], args].concat();
            format!("{:#}", parse(&args).unwrap_err())
        };
        assert!(refused(&[]).contains("--accounts FILE"));
        assert!(refused(&["--accounts", "a.json", "--processes", "2"]).contains("one process"));
    }

    #[test]
    fn websocket_urls_follow_the_http_scheme() {
        let base = |url: &str| parse(&["--url", url]).unwrap().ws_base();
        assert_eq!(base("http://10.0.0.1:18181/"), "ws://10.0.0.1:18181");
        assert_eq!(base("https://chat.example"), "wss://chat.example");
    }

    #[test]
    fn phases_have_names_both_ways() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_name(phase.name()), Some(phase));
        }
        assert_eq!(Phase::from_name("done"), None);
    }

    #[test]
    fn handle_prefixes_fit_the_handle_rules() {
        let prefix = handle_prefix();
        let longest = format!("{prefix}_{}", usize::MAX);
        assert!(longest.len() <= 32, "{longest}");
        assert!(
            longest.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{longest}"
        );
    }
}
