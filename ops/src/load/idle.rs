//! The report of `--scenario idle`: what holding a connection costs the server when it does
//! nothing but stay open, authenticated and subscribed.
//!
//! That cost is what bounds how many users one node holds, since most users' sockets are idle
//! most of the time. It is the growth of the server's resident memory from just before the
//! first socket opened to just after the last `ready` (plus a moment for the server to finish
//! each socket's registration), divided by the sockets. The memory at the end of the idle
//! window is reported too: it shows whether idle sockets keep costing more as time passes.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::report::{
    self, Connections, bytes, connections_line, counts, memory_line, per_connection, thousands,
};
use super::tally::Tally;
use super::{Args, Memory, Window};

/// Everything an idle run found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub offered: Offered,
    pub connections: Connections,
    pub memory: MemoryFigures,
    pub cpu: CpuFigures,
    /// Sockets lost during the run, by reason.
    pub dropped: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Offered {
    pub url: String,
    pub connections: usize,
    /// Local addresses the sockets connected from; none when the system chose.
    pub source_addresses: Option<u8>,
    pub processes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryFigures {
    /// Before and after the sockets opened, as every load report gives them.
    #[serde(flatten)]
    pub opened: report::MemoryFigures,
    /// At the end of the idle window, when the server reported it.
    pub end_bytes: Option<u64>,
    /// The growth per socket in KiB, the unit the figure is quoted in.
    pub per_connection_kib: Option<f64>,
    /// The growth up to the end of the idle window, per socket.
    pub per_connection_at_end_bytes: Option<f64>,
}

/// The server's CPU time over the idle window: pings, and whatever else idle sockets cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuFigures {
    pub seconds: Option<f64>,
    pub cores: Option<f64>,
}

impl Summary {
    pub fn new(args: &Args, tally: &Tally, memory: Memory, window: Window) -> Summary {
        let opened = report::MemoryFigures::of(&memory, tally.connected);
        Summary {
            offered: Offered {
                url: args.url.clone(),
                connections: args.connections,
                source_addresses: args.source_addresses,
                processes: args.processes,
                warmup_s: args.warmup.as_secs_f64(),
                duration_s: args.duration.as_secs_f64(),
            },
            connections: Connections::of(tally),
            memory: MemoryFigures {
                end_bytes: window.end_bytes,
                per_connection_kib: opened.per_connection_bytes.map(|bytes| bytes / 1024.0),
                per_connection_at_end_bytes: window
                    .end_bytes
                    .and_then(|end| memory.growth_per_connection(end, tally.connected)),
                opened,
            },
            cpu: CpuFigures {
                seconds: window.cpu_seconds,
                cores: window.cpu_seconds.map(|cpu| cpu / args.duration.as_secs_f64()),
            },
            dropped: tally.dropped.clone(),
        }
    }

    pub fn table(&self) -> String {
        let Summary { offered: o, connections: c, memory: m, cpu, .. } = self;
        let sources = o.source_addresses.map_or_else(
            || "the system's choice of source address".to_owned(),
            |count| format!("{count} source addresses"),
        );
        let processes = if o.processes == 1 { "process" } else { "processes" };
        let mut out = String::new();
        let _ = writeln!(out, "switchboard idle connections against {}", o.url);
        let _ = writeln!(
            out,
            "offered      {} idle connections from {sources}, {} client {processes}",
            thousands(o.connections as f64),
            o.processes
        );
        let _ = writeln!(
            out,
            "             sending nothing: {}s warm-up, {}s measured",
            o.warmup_s, o.duration_s
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "{}", connections_line(c));
        let _ = writeln!(
            out,
            "{}",
            memory_line(m.opened.before_bytes, m.opened.after_bytes, m.opened.per_connection_bytes)
        );
        if let Some(end) = m.end_bytes {
            let _ = writeln!(
                out,
                "             at the end {}   per connection {}",
                bytes(end as f64),
                per_connection(m.per_connection_at_end_bytes)
            );
        }
        let _ = match (cpu.seconds, cpu.cores) {
            (Some(seconds), Some(cores)) => {
                writeln!(out, "server CPU   {seconds:.2} s in the window ({cores:.3} cores)")
            }
            _ => writeln!(out, "server CPU   not reported by the server"),
        };
        let _ = write!(out, "sockets dropped  {}", counts(&self.dropped));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(window: Window) -> Summary {
        let args = crate::load::tests::args(&[
            "--scenario",
            "idle",
            "--connections",
            "2000",
            "--source-addresses",
            "4",
            "--duration",
            "10s",
        ]);
        let mut tally = Tally { connected: 2000, ..Tally::default() };
        tally.count_drop("closed by the server (4000 no activity)".into());
        let memory = Memory { before_bytes: 40 << 20, after_bytes: (40 << 20) + 2000 * 12 * 1024 };
        Summary::new(&args, &tally, memory, window)
    }

    #[test]
    fn memory_per_connection_is_the_growth_over_the_sockets() {
        let end = (40 << 20) + 2000 * 13 * 1024;
        let summary = summary(Window { cpu_seconds: Some(0.5), end_bytes: Some(end) });
        assert_eq!(summary.memory.opened.per_connection_bytes, Some(12.0 * 1024.0));
        assert_eq!(summary.memory.per_connection_kib, Some(12.0));
        assert_eq!(summary.memory.per_connection_at_end_bytes, Some(13.0 * 1024.0));
        assert_eq!(summary.cpu.cores, Some(0.05));
        assert_eq!(summary.connections.held, 1999);
        let table = summary.table();
        for expected in [
            "2,000 idle connections from 4 source addresses, 1 client process",
            "sending nothing: 5s warm-up, 10s measured",
            "connected 2,000   dropped 1   held 1,999",
            "before 40.0 MiB   after 63.4 MiB   per connection 12.0 KiB",
            "at the end 65.4 MiB   per connection 13.0 KiB",
            "0.50 s in the window (0.050 cores)",
            "(4000 no activity): 1",
        ] {
            assert!(table.contains(expected), "missing `{expected}` in\n{table}");
        }
    }

    #[test]
    fn what_the_server_did_not_report_is_said_so() {
        let table = summary(Window::default()).table();
        assert!(!table.contains("at the end"), "{table}");
        assert!(table.contains("server CPU   not reported by the server"), "{table}");
    }
}
