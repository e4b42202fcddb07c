//! `switchboard capacity`: the capacity tables the seed guessed, computed from measured figures.
//!
//! The figures (`ops/capacity/figures.json`, built into the binary; `--figures` reads another
//! file) are what `ops/bench.sh` measured: CPU per message and per extra recipient, memory per
//! connection, and delivered rate against p99 from the sweeps. For a number of concurrent users
//! and a traffic profile, the planner prints the seed's "current vs optimized vs with scaling"
//! table with these figures in place of guesses: how many users one node holds, and the API nodes,
//! projector workers, partitions, cores and memory a distributed deployment needs. `--plot` draws
//! each setup's delivered messages/s against its p99 as an SVG.
//!
//! The plan is arithmetic on measured costs, kept below a target utilisation; it is as good as
//! the figures, which come from one small machine. Measure on yours and pass them with
//! `--figures`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, ensure};
use serde::Deserialize;

use crate::load::report::thousands;

/// The figures measured on the test machine.
const MEASURED: &str = include_str!("../capacity/figures.json");

/// Options of `switchboard capacity`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Concurrent users, each with one socket open.
    #[arg(long)]
    pub users: u64,
    /// Messages each user sends per minute, on average.
    #[arg(long, default_value_t = 1.0)]
    pub messages_per_minute: f64,
    /// Members of a conversation: every message is delivered to each (its sender's sockets too).
    #[arg(long, default_value_t = 2)]
    pub group_size: u32,
    /// Cores of each node.
    #[arg(long, default_value_t = 8)]
    pub node_cores: u32,
    /// Memory of each node, GiB.
    #[arg(long, default_value_t = 16.0)]
    pub node_memory_gib: f64,
    /// Sockets one node takes (its `max_connections`).
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: u64,
    /// The share of a node's cores the plan may use, leaving room for bursts.
    #[arg(long, default_value_t = 0.6)]
    pub utilization: f64,
    /// Figures to plan from, in the form of ops/capacity/figures.json [default: the built-in ones].
    #[arg(long)]
    pub figures: Option<PathBuf>,
    /// Also write an SVG of delivered messages/s against p99 for each setup.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
pub struct Figures {
    pub embedded: Setup,
    pub distributed: Setup,
}

#[derive(Debug, Deserialize)]
pub struct Setup {
    pub setup: String,
    pub node_cpu_us_per_message: f64,
    pub node_cpu_us_per_extra_recipient: f64,
    pub active_connection_bytes: f64,
    pub node_base_bytes: f64,
    /// The share of a node's CPU that projecting and routing take, which projector workers do.
    #[serde(default)]
    pub projector_share_of_node_cpu: f64,
    /// CPU the engines spend per message, by engine.
    #[serde(default)]
    pub engines_cpu_us_per_message: std::collections::BTreeMap<String, f64>,
    pub sweep: Vec<Point>,
}

#[derive(Debug, Deserialize)]
pub struct Point {
    pub delivered: f64,
    pub p99_ms: f64,
}

/// A traffic profile on nodes of one size.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub messages_per_minute: f64,
    pub group_size: u32,
    pub node_cores: f64,
    pub node_memory_bytes: f64,
    pub max_connections: u64,
    pub utilization: f64,
}

/// The most users one embedded node holds, and what limits it.
#[derive(Debug, PartialEq)]
pub struct OneNode {
    pub users: u64,
    pub messages_per_s: f64,
    pub limited_by: &'static str,
}

/// A distributed deployment for a number of users.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub messages_per_s: f64,
    pub api_nodes: u64,
    pub projector_workers: u64,
    pub partitions: u64,
    pub node_cores: f64,
    pub engine_cores: f64,
    pub memory_bytes: f64,
}

impl Setup {
    /// Node CPU seconds per second for `messages_per_s` under `profile`.
    fn node_cores(&self, messages_per_s: f64, profile: &Profile) -> f64 {
        let extra = f64::from(profile.group_size.saturating_sub(2));
        messages_per_s
            * (self.node_cpu_us_per_message + extra * self.node_cpu_us_per_extra_recipient)
            / 1e6
    }
}

fn messages_per_s(users: f64, profile: &Profile) -> f64 {
    users * profile.messages_per_minute / 60.0
}

/// How many users one node of the profile's size holds on the embedded backends.
pub fn one_node(setup: &Setup, profile: &Profile) -> OneNode {
    let usable_cores = profile.node_cores * profile.utilization;
    let per_user_cores = setup.node_cores(messages_per_s(1.0, profile), profile);
    let by_cores = usable_cores / per_user_cores;
    let by_memory =
        (profile.node_memory_bytes - setup.node_base_bytes) / setup.active_connection_bytes;
    let limits = [
        (by_cores, "cores"),
        (by_memory, "memory"),
        (profile.max_connections as f64, "max_connections"),
    ];
    let (users, limited_by) =
        limits.into_iter().min_by(|a, b| a.0.total_cmp(&b.0)).expect("three limits");
    let users = users.max(0.0).floor() as u64;
    OneNode { users, messages_per_s: messages_per_s(users as f64, profile), limited_by }
}

/// The distributed deployment `users` need.
pub fn plan(setup: &Setup, users: u64, profile: &Profile) -> Plan {
    let messages_per_s = messages_per_s(users as f64, profile);
    let node_cores = setup.node_cores(messages_per_s, profile);
    let usable = profile.node_cores * profile.utilization;
    let projector_cores = node_cores * setup.projector_share_of_node_cpu;
    let memory = users as f64 * setup.active_connection_bytes;
    let api_nodes = ((node_cores - projector_cores) / usable)
        .max(memory / (profile.node_memory_bytes - setup.node_base_bytes))
        .max(users as f64 / profile.max_connections as f64)
        .ceil()
        .max(1.0) as u64;
    let projector_workers = (projector_cores / usable).ceil().max(1.0) as u64;
    // Partitions bound how many workers share a consumer group; leave room to add some.
    let partitions = (2 * api_nodes.max(projector_workers)).max(8).next_power_of_two();
    let engine_us: f64 = setup.engines_cpu_us_per_message.values().sum();
    Plan {
        messages_per_s,
        api_nodes,
        projector_workers,
        partitions,
        node_cores,
        engine_cores: messages_per_s * engine_us / 1e6,
        memory_bytes: memory + (api_nodes + projector_workers) as f64 * setup.node_base_bytes,
    }
}

/// Runs `switchboard capacity`.
pub fn command(args: Args) -> anyhow::Result<()> {
    ensure!(args.users > 0, "plan for at least one user");
    ensure!(args.utilization > 0.0 && args.utilization <= 1.0, "--utilization is a share, 0 to 1");
    let figures: Figures = match &args.figures {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?
        }
        None => serde_json::from_str(MEASURED).context("the built-in figures")?,
    };
    let profile = Profile {
        messages_per_minute: args.messages_per_minute,
        group_size: args.group_size,
        node_cores: f64::from(args.node_cores),
        node_memory_bytes: args.node_memory_gib * GIB,
        max_connections: args.max_connections,
        utilization: args.utilization,
    };
    print!("{}", table(&figures, args.users, &profile));
    if let Some(path) = &args.plot {
        std::fs::write(path, plot(&figures))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The seed's comparison table, with measured figures in place of its guesses.
pub fn table(figures: &Figures, users: u64, profile: &Profile) -> String {
    let one = one_node(&figures.embedded, profile);
    let scaled = plan(&figures.distributed, users, profile);
    let one_memory = one.users as f64 * figures.embedded.active_connection_bytes
        + figures.embedded.node_base_bytes;
    let one_cores = figures.embedded.node_cores(one.messages_per_s, profile);
    let rows = [
        (
            "Concurrent users",
            "1,000-2,000".to_owned(),
            format!("{} (limited by {})", thousands(one.users as f64), one.limited_by),
            thousands(users as f64),
        ),
        (
            "Messages/sec",
            "50-100".to_owned(),
            thousands(one.messages_per_s),
            thousands(scaled.messages_per_s),
        ),
        (
            "Servers",
            "1".to_owned(),
            "1".to_owned(),
            format!(
                "{} API + {} projector, and the engines",
                scaled.api_nodes, scaled.projector_workers
            ),
        ),
        (
            "Cores used",
            "3 (1,000 users)".to_owned(),
            format!("{one_cores:.2} of {}", profile.node_cores),
            format!("{:.2} nodes + {:.2} engines", scaled.node_cores, scaled.engine_cores),
        ),
        (
            "Memory",
            "3-6 GB".to_owned(),
            format!("{:.1} GiB", one_memory / GIB),
            format!("{:.1} GiB on the nodes", scaled.memory_bytes / GIB),
        ),
        (
            "Partitions per topic",
            "-".to_owned(),
            "8 (default)".to_owned(),
            scaled.partitions.to_string(),
        ),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} messages per user per minute, conversations of {}, nodes of {} cores and {:.0} GiB used \
         up to {:.0}%:\n",
        profile.messages_per_minute,
        profile.group_size,
        profile.node_cores,
        profile.node_memory_bytes / GIB,
        profile.utilization * 100.0
    );
    let _ = writeln!(
        out,
        "| Metric | Seed (guessed) | One node, embedded (measured) | Scaled to {} users, distributed (measured) |",
        thousands(users as f64)
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for (metric, seed, one, scaled) in rows {
        let _ = writeln!(out, "| {metric} | {seed} | {one} | {scaled} |");
    }
    out
}

/// An SVG of delivered messages/s (x) against p99 in ms (y, logarithmic) for each setup.
pub fn plot(figures: &Figures) -> String {
    let (width, height, margin) = (640.0, 400.0, 60.0);
    let setups = [(&figures.embedded, "#1f77b4"), (&figures.distributed, "#d62728")];
    let points = setups.iter().flat_map(|(setup, _)| &setup.sweep);
    let max_x = points.clone().map(|p| p.delivered).fold(1.0, f64::max) * 1.1;
    let (min_y, max_y) = (1.0_f64, points.map(|p| p.p99_ms).fold(10.0, f64::max) * 2.0);
    let x = |v: f64| margin + v / max_x * (width - 2.0 * margin);
    let y = |v: f64| {
        let share = (v.max(min_y).log10() - min_y.log10()) / (max_y.log10() - min_y.log10());
        height - margin - share * (height - 2.0 * margin)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{margin}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{margin}\" y1=\"{margin}\" x2=\"{margin}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{cx}\" y=\"{xl}\" text-anchor=\"middle\">delivered messages/s</text>\n\
         <text x=\"15\" y=\"{cy}\" transform=\"rotate(-90 15 {cy})\" text-anchor=\"middle\">p99 send → delivered (ms, log)</text>\n",
        b = height - margin,
        r = width - margin,
        cx = width / 2.0,
        xl = height - 20.0,
        cy = height / 2.0,
    );
    let mut tick = min_y;
    while tick <= max_y {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{tick}</text>",
            margin - 5.0,
            y(tick) + 4.0
        );
        tick *= 10.0;
    }
    for (i, (setup, colour)) in setups.iter().enumerate() {
        let line: Vec<String> = setup
            .sweep
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.delivered), y(p.p99_ms)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            line.join(" ")
        );
        for p in &setup.sweep {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{colour}\"/>",
                x(p.delivered),
                y(p.p99_ms)
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>",
            margin + 10.0,
            margin + 15.0 * i as f64,
            setup.setup
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        serde_json::from_str(MEASURED).unwrap()
    }

    fn profile() -> Profile {
        Profile {
            messages_per_minute: 6.0,
            group_size: 2,
            node_cores: 2.0,
            node_memory_bytes: 24.0 * GIB,
            max_connections: 1_000_000,
            utilization: 1.0,
        }
    }

    #[test]
    fn one_node_holds_what_its_measured_cost_allows() {
        let figures = figures();
        // 6 messages a minute is 0.1 a second per user: a node's 2 cores at 74 µs a message
        // carry 27,027 messages/s, so 270,270 users, before memory (19,150 bytes each) binds.
        let one = one_node(&figures.embedded, &profile());
        assert_eq!(one.limited_by, "cores");
        assert_eq!(one.users, 270_270);
        let small = Profile { node_memory_bytes: 1.0 * GIB, ..profile() };
        assert_eq!(one_node(&figures.embedded, &small).limited_by, "memory");
        let capped = Profile { max_connections: 10_000, ..profile() };
        assert_eq!(one_node(&figures.embedded, &capped).users, 10_000);
        assert_eq!(plan(&figures.distributed, 25_000, &capped).api_nodes, 3, "sockets per node");
    }

    #[test]
    fn a_plan_grows_with_users_and_groups() {
        let figures = figures();
        let small = plan(&figures.distributed, 10_000, &profile());
        let large = plan(&figures.distributed, 1_000_000, &profile());
        assert_eq!(small.api_nodes, 1);
        assert!(large.api_nodes > small.api_nodes && large.projector_workers >= 1);
        assert!(large.partitions >= 2 * large.api_nodes && large.partitions.is_power_of_two());
        assert!(large.engine_cores > 10.0 * small.engine_cores);
        let groups = Profile { group_size: 100, ..profile() };
        assert!(plan(&figures.distributed, 10_000, &groups).node_cores > 10.0 * small.node_cores);
    }

    #[test]
    fn the_table_and_plot_show_every_setup() {
        let figures = figures();
        let table = table(&figures, 50_000, &profile());
        assert!(
            table.contains(
                "| Concurrent users | 1,000-2,000 | 270,270 (limited by cores) | 50,000 |"
            ),
            "{table}"
        );
        let svg = plot(&figures);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains(&figures.embedded.setup) && svg.ends_with("</svg>\n"));
    }
}
