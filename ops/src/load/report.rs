//! The result of a run: figures per second and per connection, as a table for people, as the
//! seed analysis's "Current vs Optimized Capacity" table with measured numbers in place of
//! estimates, and as JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::tally::{Percentiles, Tally};
use super::{Args, Memory};

/// Everything a run found, derived from the merged [`Tally`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub offered: Offered,
    pub connections: Connections,
    pub memory: MemoryFigures,
    pub cpu: CpuFigures,
    pub throughput: Throughput,
    pub latency: LatencyFigures,
    /// Error frames received, by code.
    pub errors: BTreeMap<String, u64>,
    /// Sockets lost during the run, by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// The load that was asked for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Offered {
    pub url: String,
    pub connections: usize,
    pub rate_per_s: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub group_size: usize,
    pub body_bytes: usize,
    pub processes: usize,
    pub max_in_flight: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Connections {
    pub connected: u64,
    pub dropped: u64,
    /// Open at the end of the run.
    pub held: u64,
}

impl Connections {
    pub(super) fn of(tally: &Tally) -> Connections {
        let dropped = tally.dropped_total();
        Connections {
            connected: tally.connected,
            dropped,
            held: tally.connected.saturating_sub(dropped),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryFigures {
    pub before_bytes: u64,
    pub after_bytes: u64,
    /// The growth from opening the sockets, per socket; none when the server's memory shrank
    /// meanwhile (its allocator gave back memory freed earlier, which hides what the sockets
    /// cost).
    pub per_connection_bytes: Option<f64>,
}

impl MemoryFigures {
    pub(super) fn of(memory: &Memory, connected: u64) -> MemoryFigures {
        MemoryFigures {
            before_bytes: memory.before_bytes,
            after_bytes: memory.after_bytes,
            per_connection_bytes: memory.growth_per_connection(memory.after_bytes, connected),
        }
    }
}

/// The server's CPU time over the measured window, when it reports it, and what that comes to
/// per message: the cost a capacity plan divides cores by.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuFigures {
    pub seconds: Option<f64>,
    /// Cores busy on average: CPU seconds per second of the window.
    pub cores: Option<f64>,
    pub per_delivered_message_us: Option<f64>,
    pub per_delivery_us: Option<f64>,
}

/// Counts over the measured window and their rates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Throughput {
    pub sent: u64,
    pub acked: u64,
    /// Arrivals of a message at a recipient's socket: one per message and recipient, so a
    /// message to a group of 100 makes 99.
    pub deliveries: u64,
    /// Messages that reached every recipient.
    pub delivered_messages: u64,
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    /// What fan-out costs the server: delivered messages × their recipients, per second.
    pub deliveries_per_s: f64,
    pub delivered_messages_per_s: f64,
    /// Sends skipped because the socket had `max_in_flight` messages unanswered.
    pub skipped_sends: u64,
    pub unacked_at_end: u64,
    pub undelivered_at_end: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyFigures {
    /// Send → ack: the message is durable in the log.
    pub ack: Percentiles,
    /// Send → arrival at a recipient's socket.
    pub delivery: Percentiles,
    /// The p99 of send → arrival for the messages sent in each second of the window.
    pub delivery_p99_by_second_ms: Vec<f64>,
}

impl Summary {
    pub fn new(args: &Args, tally: &Tally, memory: Memory, cpu_seconds: Option<f64>) -> Summary {
        let seconds = args.duration.as_secs_f64();
        let per_second = |count: u64| count as f64 / seconds;
        let micros_per =
            |count: u64| cpu_seconds.filter(|_| count > 0).map(|cpu| cpu * 1e6 / count as f64);
        Summary {
            offered: Offered {
                url: args.url.clone(),
                connections: args.connections,
                rate_per_s: args.rate,
                warmup_s: args.warmup.as_secs_f64(),
                duration_s: seconds,
                group_size: args.group_size,
                body_bytes: args.body_bytes,
                processes: args.processes,
                max_in_flight: args.max_in_flight,
            },
            connections: Connections::of(tally),
            memory: MemoryFigures::of(&memory, tally.connected),
            cpu: CpuFigures {
                seconds: cpu_seconds,
                cores: cpu_seconds.map(|cpu| cpu / seconds),
                per_delivered_message_us: micros_per(tally.delivered),
                per_delivery_us: micros_per(tally.deliveries),
            },
            throughput: Throughput {
                sent: tally.sent,
                acked: tally.acked,
                deliveries: tally.deliveries,
                delivered_messages: tally.delivered,
                sent_per_s: per_second(tally.sent),
                acked_per_s: per_second(tally.acked),
                deliveries_per_s: per_second(tally.deliveries),
                delivered_messages_per_s: per_second(tally.delivered),
                skipped_sends: tally.skipped,
                unacked_at_end: tally.unacked,
                undelivered_at_end: tally.undelivered,
            },
            latency: LatencyFigures {
                ack: tally.ack_latency.percentiles(),
                delivery: tally.delivery_latency.percentiles(),
                delivery_p99_by_second_ms: tally
                    .delivery_latency_by_second
                    .iter()
                    .map(|second| second.percentiles().p99_ms)
                    .collect(),
            },
            errors: tally.errors.clone(),
            dropped: tally.dropped.clone(),
        }
    }

    /// The full result, for people.
    pub fn table(&self) -> String {
        let Summary { offered: o, connections: c, memory: m, throughput: t, latency, .. } = self;
        let conversations = if o.group_size == 2 {
            "direct conversations".to_owned()
        } else {
            format!("groups of {}", o.group_size)
        };
        let processes = if o.processes == 1 { "process" } else { "processes" };
        let mut out = String::new();
        let _ = writeln!(out, "switchboard load test against {}", o.url);
        let _ = writeln!(
            out,
            "offered      {} connections in {conversations}, {} messages/s, {}-byte bodies",
            thousands(o.connections as f64),
            thousands(o.rate_per_s),
            o.body_bytes
        );
        let _ = writeln!(
            out,
            "             {}s warm-up, {}s measured, {} client {processes}",
            o.warmup_s, o.duration_s, o.processes
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "{}", connections_line(c));
        let _ =
            writeln!(out, "{}", memory_line(m.before_bytes, m.after_bytes, m.per_connection_bytes));
        let _ = writeln!(out, "server CPU   {}", cpu_line(&self.cpu));
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "per second   sent {}   acked {}   deliveries (message × recipient) {}   messages fully delivered {}",
            thousands(t.sent_per_s),
            thousands(t.acked_per_s),
            thousands(t.deliveries_per_s),
            thousands(t.delivered_messages_per_s)
        );
        let _ = writeln!(
            out,
            "backlog      sends skipped (in-flight cap) {}   unacked at end {}   undelivered at end {}",
            thousands(t.skipped_sends as f64),
            thousands(t.unacked_at_end as f64),
            thousands(t.undelivered_at_end as f64)
        );
        let _ = writeln!(out);
        out.push_str(&columns(&[
            ["latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"]
                .map(str::to_owned)
                .to_vec(),
            percentile_row("send -> ack", &latency.ack, 2),
            percentile_row("send -> delivered", &latency.delivery, 2),
        ]));
        let by_second: Vec<String> =
            latency.delivery_p99_by_second_ms.iter().map(|ms| format!("{ms:.0}")).collect();
        let _ = writeln!(out, "p99 delivered, by second sent (ms): {}", by_second.join(" "));
        let _ = writeln!(out);
        let _ = writeln!(out, "error frames     {}", counts(&self.errors));
        let _ = write!(out, "sockets dropped  {}", counts(&self.dropped));
        out
    }

    /// The seed's "Current vs Optimized Capacity" table, with a column of measured figures.
    pub fn capacity_table(&self) -> String {
        let c = &self.connections;
        let l = &self.latency;
        let rows = [
            [
                "Concurrent users",
                "1,000-2,000",
                "2,000-5,000",
                &format!("{} held", thousands(c.held as f64)),
            ],
            ["Servers", "1", "1", "1"],
            [
                "Memory per connection",
                "2-5 MB",
                "2-5 MB",
                &per_connection(self.memory.per_connection_bytes),
            ],
            [
                "Memory usage",
                "3-6 GB",
                "6-15 GB",
                &format!(
                    "{} with {} sockets",
                    bytes(self.memory.after_bytes as f64),
                    thousands(c.connected as f64)
                ),
            ],
            ["Messages/sec", "50-100", "200-500", &self.messages_per_s()],
            [
                "p99 latency",
                "not estimated",
                "not estimated",
                &format!("{:.1} ms durable, {:.1} ms delivered", l.ack.p99_ms, l.delivery.p99_ms),
            ],
        ];
        let mut table = vec![
            [
                "Metric",
                "Current (seed estimate)",
                "Optimized single (seed estimate)",
                "switchboard (measured)",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        table.extend(rows.map(|row| row.map(str::to_owned).to_vec()));
        format!("## Current vs Optimized Capacity\n\n{}", markdown(&table))
    }

    /// Messages delivered per second, and for groups the deliveries they make.
    fn messages_per_s(&self) -> String {
        let t = &self.throughput;
        let messages = format!(
            "{} delivered ({} offered)",
            thousands(t.delivered_messages_per_s),
            thousands(self.offered.rate_per_s)
        );
        match self.offered.group_size {
            2 => messages,
            size => format!(
                "{messages}, {} deliveries in groups of {size}",
                thousands(t.deliveries_per_s)
            ),
        }
    }
}

/// The server's CPU time, or why it is missing.
fn cpu_line(cpu: &CpuFigures) -> String {
    let micros =
        |value: Option<f64>| value.map_or_else(|| "n/a".to_owned(), |us| format!("{us:.1} µs"));
    match (cpu.seconds, cpu.cores) {
        (Some(seconds), Some(cores)) => format!(
            "{seconds:.2} s in the window ({cores:.2} cores)   per delivered message {}   per delivery {}",
            micros(cpu.per_delivered_message_us),
            micros(cpu.per_delivery_us)
        ),
        _ => "not reported by the server".to_owned(),
    }
}

/// `12345.6` as `12,346`.
/// A table row: a name, a count and the percentiles, in ms with `decimals` places.
pub(super) fn percentile_row(name: &str, p: &Percentiles, decimals: usize) -> Vec<String> {
    let ms = |value: f64| format!("{value:.decimals$}");
    vec![
        name.to_owned(),
        thousands(p.count as f64),
        ms(p.p50_ms),
        ms(p.p90_ms),
        ms(p.p99_ms),
        ms(p.p999_ms),
        ms(p.max_ms),
    ]
}

pub(crate) fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value.round() < 0.0 {
        grouped.insert(0, '-');
    }
    grouped
}

/// The `connections` line of a report.
pub(super) fn connections_line(c: &Connections) -> String {
    format!(
        "connections  connected {}   dropped {}   held {}",
        thousands(c.connected as f64),
        thousands(c.dropped as f64),
        thousands(c.held as f64)
    )
}

/// The `memory` line of a report: the server's memory before and after the sockets opened.
pub(super) fn memory_line(before: u64, after: u64, per_connection_bytes: Option<f64>) -> String {
    format!(
        "memory       before {}   after {}   per connection {}",
        bytes(before as f64),
        bytes(after as f64),
        per_connection(per_connection_bytes)
    )
}

pub(super) fn per_connection(bytes_each: Option<f64>) -> String {
    bytes_each.map_or_else(|| "unknown (the server's memory shrank)".to_owned(), bytes)
}

/// A byte count in binary units: `512 B`, `23.4 KiB`, `1.20 GiB`.
pub(super) fn bytes(value: f64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if value.abs() < 1024.0 {
        return format!("{value:.0} B");
    }
    let mut scaled = value / 1024.0;
    let mut unit = 0;
    while scaled.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    let decimals = if scaled.abs() < 10.0 { 2 } else { 1 };
    format!("{scaled:.decimals$} {}", UNITS[unit])
}

/// `code 3, other 1`, or `none`.
pub(super) fn counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(what, count)| format!("{what}: {}", thousands(*count as f64)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    widths
}

/// Rows with the first column left-aligned and the others right-aligned, as figures read best.
pub(super) fn columns(rows: &[Vec<String>]) -> String {
    let widths = widths(rows);
    let mut out = String::new();
    for row in rows {
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            let _ = match i {
                0 => write!(out, "{cell:<width$}"),
                _ => write!(out, "  {cell:>width$}"),
            };
        }
        out.push('\n');
    }
    out
}

/// A Markdown table whose first row is the header.
fn markdown(rows: &[Vec<String>]) -> String {
    let widths = widths(rows);
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        out +=
            &line(row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect());
        if i == 0 {
            out += &line(widths.iter().map(|width| "-".repeat(*width)).collect());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::tally::Latencies;
    use std::time::Duration;

    fn summary() -> Summary {
        let args = crate::load::tests::args(&["--duration", "10s"]);
        let mut ack_latency = Latencies::default();
        for ms in 1..=100 {
            ack_latency.record(Duration::from_millis(ms));
        }
        let mut tally = Tally {
            connected: 1000,
            sent: 200_000,
            acked: 199_990,
            deliveries: 199_980,
            delivered: 199_980,
            ack_latency,
            ..Tally::default()
        };
        // 2–100 ms for the messages sent in the first second, 102–200 ms in the next.
        for ms in 1..=100 {
            tally.record_delivery((ms as usize - 1) / 50, Duration::from_millis(2 * ms));
        }
        tally.count_drop("closed by the server (4008 too slow)".into());
        tally.count_error("rate_limited");
        let memory = Memory { before_bytes: 40 << 20, after_bytes: (40 << 20) + 1000 * 24 * 1024 };
        // 2 cores busy for the 10 s window.
        Summary::new(&args, &tally, memory, Some(20.0))
    }

    #[test]
    fn rates_are_per_second_of_the_measured_window() {
        let summary = summary();
        assert_eq!(summary.throughput.sent_per_s, 20_000.0);
        assert_eq!(summary.throughput.delivered_messages_per_s, 19_998.0);
        assert_eq!(summary.memory.per_connection_bytes, Some(24.0 * 1024.0));
        assert_eq!(summary.connections.held, 999);
        assert!((summary.latency.delivery.p99_ms - 198.0).abs() < 0.5);
        assert_eq!(summary.cpu.cores, Some(2.0));
        let per_message = summary.cpu.per_delivered_message_us.unwrap();
        assert!((per_message - 20e6 / 199_980.0).abs() < 1e-9, "{per_message}");
    }

    #[test]
    fn the_table_shows_every_figure() {
        let table = summary().table();
        for expected in [
            "connected 1,000   dropped 1   held 999",
            "per connection 24.0 KiB",
            "sent 20,000   acked 19,999",
            "messages fully delivered 19,998",
            "rate_limited: 1",
            "4008 too slow",
            "p99 delivered, by second sent (ms): 100 200",
            "server CPU   20.00 s in the window (2.00 cores)   per delivered message 100.0 µs",
        ] {
            assert!(table.contains(expected), "missing `{expected}` in\n{table}");
        }
        let ack_row = table.lines().find(|l| l.starts_with("send -> ack")).unwrap();
        assert!(ack_row.contains("50.0") && ack_row.contains("99.0"), "{ack_row}");
    }

    #[test]
    fn the_capacity_table_has_the_seed_shape_with_measured_figures() {
        let table = summary().capacity_table();
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(rows.len(), 8, "{table}");
        assert!(rows[0].contains("Current (seed estimate)"));
        assert!(rows.iter().all(|row| row.len() == rows[0].len()), "{table}");
        let row =
            |metric: &str| *rows.iter().find(|r| r.starts_with(&format!("| {metric}"))).unwrap();
        assert!(row("Concurrent users").contains("999 held"));
        assert!(row("Memory per connection").contains("24.0 KiB"));
        assert!(row("Messages/sec").contains("19,998 delivered (20,000 offered)"));
        assert!(row("p99 latency").contains("99.0 ms durable"));
    }

    #[test]
    fn group_runs_give_their_deliveries_per_second() {
        let args = crate::load::tests::args(&["--group-size", "100", "--duration", "10s"]);
        let tally =
            Tally { connected: 1000, delivered: 2000, deliveries: 198_000, ..Tally::default() };
        let summary = Summary::new(&args, &tally, Memory::default(), None);
        assert_eq!(summary.throughput.deliveries_per_s, 19_800.0);
        assert!(summary.table().contains("deliveries (message × recipient) 19,800"));
        let capacity = summary.capacity_table();
        assert!(
            capacity.contains("200 delivered (20,000 offered), 19,800 deliveries in groups of 100"),
            "{capacity}"
        );
        let direct = crate::load::tests::args(&[]);
        let direct = Summary::new(&direct, &tally, Memory::default(), None).capacity_table();
        assert!(!direct.contains("deliveries in groups"), "{direct}");
    }

    #[test]
    fn memory_that_shrank_gives_no_cost_per_connection() {
        let args = crate::load::tests::args(&[]);
        let tally = Tally { connected: 10, ..Tally::default() };
        let memory = Memory { before_bytes: 2 << 30, after_bytes: 1 << 30 };
        let summary = Summary::new(&args, &tally, memory, None);
        assert_eq!(summary.memory.per_connection_bytes, None);
        let table = summary.table();
        assert!(table.contains("per connection unknown (the server's memory shrank)"));
        assert!(table.contains("server CPU   not reported by the server"), "{table}");
    }

    #[test]
    fn numbers_read_like_numbers() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-1500.0), "-1,500");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(24.0 * 1024.0), "24.0 KiB");
        assert_eq!(bytes(1.5 * 1024.0 * 1024.0 * 1024.0), "1.50 GiB");
        assert_eq!(bytes(-2048.0), "-2.00 KiB");
    }
}
