//! The `switchboard` command.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use switchboard_api::{config, server, telemetry};

/// The message path allocates many small, short-lived buffers (frames, events, JSON) on one
/// thread and frees them on another; glibc's malloc took a fifth of the CPU at 20,000 messages/s,
/// its arena locks and consolidation most of that. mimalloc's thread-local free lists do not.
///
/// Built without asking for transparent huge pages: the kernel zeroes a whole 2 MiB page on the
/// first touch of any byte of it, and again after mimalloc returns it, which took a fifth of the
/// CPU of a rebuild (memtables filling and flushing), and a page barely used still counts whole
/// towards the resident size.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An event-sourced messaging and calling backend.
#[derive(Parser)]
#[command(name = "switchboard", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at startup, so its size does not matter")]
enum Command {
    /// Run a node: the log, the projector and the HTTP/WebSocket API in one process
    /// (embedded backends by default, nothing to install).
    Serve {
        /// A TOML file with any of the settings below (keys are the flag names with `_`).
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: config::Config,
    },
    /// Replay the log of a stopped node into a new, empty read-model store.
    Rebuild(switchboard_ops::rebuild::Args),
    /// Print every read model of a store in a stable text form, for comparing stores.
    Dump(switchboard_ops::dump::Args),
    /// Compare two stores table by table, with checksums; name the first row that differs.
    Verify(switchboard_ops::verify::Args),
    /// Print a topic's events as JSON lines, decoded with their schemas.
    Tail(switchboard_ops::tail::Args),
    /// Ask each node of a deployment how it is; print its readiness and the consumers' lag.
    Status(switchboard_ops::status::Args),
    /// Drive a running node with WebSocket clients and report the capacity it showed.
    Load(switchboard_ops::load::Args),
    /// Plan nodes, partitions, cores and memory for a number of users from measured figures.
    Capacity(switchboard_ops::capacity::Args),
}

fn main() -> std::process::ExitCode {
    telemetry::init_logging();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let result = match cli.command {
        Command::Serve { config, settings } => {
            let serve_matches = matches.subcommand_matches("serve").expect("serve was parsed");
            settings
                .layered(serve_matches, config.as_deref())
                .and_then(|config| run(server::serve(config)))
        }
        Command::Rebuild(args) => run(switchboard_ops::rebuild::command(args)),
        Command::Dump(args) => run(switchboard_ops::dump::command(args)),
        Command::Verify(args) => run(switchboard_ops::verify::command(args)),
        Command::Tail(args) => run(switchboard_ops::tail::command(args)),
        Command::Status(args) => run(switchboard_ops::status::command(args)),
        Command::Load(args) => run(switchboard_ops::load::command(args)),
        Command::Capacity(args) => switchboard_ops::capacity::command(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("switchboard: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(future)
}
