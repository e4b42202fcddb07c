//! Logs and metrics: the tracing subscriber, the Prometheus recorder, and the process figures
//! (memory, CPU, open files) the capacity analysis asks to track.

use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Our own logs at `info`; the storage engines' routine chatter only when it matters.
const DEFAULT_FILTER: &str = "info,fjall=warn,lsm_tree=warn,apache_avro=error";

/// Logs go to stderr; `RUST_LOG` filters them (default [`DEFAULT_FILTER`]).
pub fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// The Prometheus recorder every metric goes to, installed on first use. It is the process's:
/// nodes started in one process (as tests do) share it.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    const LATENCY_BUCKETS: &[f64] =
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe_metrics();
    Ok(installed.insert(handle).clone())
}

/// Every metric the node exports and what it measures. The dashboards and alerts in
/// `ops/monitoring` use these names, and their check fails on a name that is not here.
const METRICS: &[Metric] = &[
    Metric {
        name: "messages_sent_total",
        kind: Kind::Counter,
        labels: &[],
        help: "messages accepted and logged",
    },
    Metric {
        name: "events_appended_total",
        kind: Kind::Counter,
        labels: &["topic"],
        help: "events appended to the log",
    },
    Metric {
        name: "events_pushed_total",
        kind: Kind::Counter,
        labels: &[],
        help: "events pushed to sockets",
    },
    Metric {
        name: "http_requests_total",
        kind: Kind::Counter,
        labels: &["method", "route", "status"],
        help: "HTTP requests",
    },
    Metric {
        name: "api_errors_total",
        kind: Kind::Counter,
        labels: &["code"],
        help: "typed errors answered, over HTTP and WebSocket",
    },
    Metric {
        name: "rate_limited_total",
        kind: Kind::Counter,
        labels: &["limit"],
        help: "requests refused by a rate limit",
    },
    Metric {
        name: "rate_checks_local_total",
        kind: Kind::Counter,
        labels: &[],
        help: "rate checks counted on this node alone, the shared backend being unreachable",
    },
    Metric {
        name: "sockets_evicted_total",
        kind: Kind::Counter,
        labels: &[],
        help: "sockets closed for not reading what was pushed to them",
    },
    Metric {
        name: "projector_events_applied_total",
        kind: Kind::Counter,
        labels: &[],
        help: "events folded into the read models",
    },
    Metric {
        name: "projector_undecodable_records_total",
        kind: Kind::Counter,
        labels: &[],
        help: "log records no schema could read, skipped",
    },
    Metric {
        name: "delivery_events_total",
        kind: Kind::Counter,
        labels: &["lane"],
        help: "events the delivery stage routed into feeds",
    },
    Metric {
        name: "delivery_retries_total",
        kind: Kind::Counter,
        labels: &["lane", "cause"],
        help: "delivery batches retried",
    },
    Metric {
        name: "fanout_gaps_total",
        kind: Kind::Counter,
        labels: &[],
        help: "feed gaps the fan-out had to read back",
    },
    Metric {
        name: "resumes_total",
        kind: Kind::Counter,
        labels: &["outcome"],
        help: "socket resumes",
    },
    Metric {
        name: "resume_events_total",
        kind: Kind::Counter,
        labels: &[],
        help: "events replayed to resuming sockets",
    },
    Metric {
        name: "resume_feed_reads_total",
        kind: Kind::Counter,
        labels: &[],
        help: "feed reads made for resuming sockets",
    },
    Metric {
        name: "media_uploads_total",
        kind: Kind::Counter,
        labels: &[],
        help: "files uploaded",
    },
    Metric {
        name: "media_upload_bytes_total",
        kind: Kind::Counter,
        labels: &[],
        help: "bytes uploaded",
    },
    Metric {
        name: "calls_started_total",
        kind: Kind::Counter,
        labels: &["kind"],
        help: "calls and rooms started",
    },
    Metric {
        name: "call_timer_actions_total",
        kind: Kind::Counter,
        labels: &["action"],
        help: "calls the ring timer settled",
    },
    Metric {
        name: "task_restarts_total",
        kind: Kind::Counter,
        labels: &["task"],
        help: "background tasks restarted after a failure",
    },
    Metric {
        name: "ws_connections",
        kind: Kind::Gauge,
        labels: &[],
        help: "open WebSocket connections",
    },
    Metric {
        name: "process_resident_memory_bytes",
        kind: Kind::Gauge,
        labels: &[],
        help: "resident memory of the process",
    },
    Metric {
        name: "process_cpu_seconds_total",
        kind: Kind::Gauge,
        labels: &[],
        help: "CPU time the process used, user and system",
    },
    Metric {
        name: "process_open_fds",
        kind: Kind::Gauge,
        labels: &[],
        help: "open file descriptors",
    },
    Metric {
        name: "projector_lag_events",
        kind: Kind::Gauge,
        labels: &[],
        help: "events in the log not yet in the read models",
    },
    Metric {
        name: "consumer_lag_events",
        kind: Kind::Gauge,
        labels: &["group", "topic", "partition"],
        help: "events in a partition a consumer group has not committed",
    },
    Metric {
        name: "delivery_ready",
        kind: Kind::Gauge,
        labels: &["lane"],
        help: "1 while a delivery lane routes",
    },
    Metric {
        name: "fanout_ready",
        kind: Kind::Gauge,
        labels: &[],
        help: "1 while the fan-out hears its users' feeds",
    },
    Metric {
        name: "http_request_duration_seconds",
        kind: Kind::Histogram,
        labels: &["method", "route"],
        help: "HTTP response times",
    },
    Metric {
        name: "log_append_seconds",
        kind: Kind::Histogram,
        labels: &[],
        help: "time for an event to become durable in the log",
    },
];

struct Metric {
    name: &'static str,
    kind: Kind,
    /// The labels its series carry; a metric without any starts at zero.
    labels: &'static [&'static str],
    help: &'static str,
}

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Gives every metric its help text, and starts the counters and gauges without labels at zero:
/// a quiet node then reads as zero on a dashboard, not as missing. Nothing has been recorded when
/// this runs: the recorder was just installed.
fn describe_metrics() {
    for metric in METRICS {
        let (name, help, unlabelled) = (metric.name, metric.help, metric.labels.is_empty());
        match metric.kind {
            Kind::Counter => {
                metrics::describe_counter!(name, help);
                if unlabelled {
                    metrics::counter!(name).absolute(0);
                }
            }
            Kind::Gauge => {
                metrics::describe_gauge!(name, help);
                if unlabelled {
                    metrics::gauge!(name).set(0.0);
                }
            }
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Samples memory, CPU time and open files from `/proc` (Linux), where present.
pub fn record_process_metrics() {
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(resident_pages) =
            statm.split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok())
    {
        metrics::gauge!("process_resident_memory_bytes").set(resident_pages * PAGE_SIZE);
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
        let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
        // A gauge, as documented: a counter here would count whole seconds only.
        metrics::gauge!("process_cpu_seconds_total").set(ticks / CLOCK_TICKS_PER_SECOND);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
}

/// Linux reports CPU time in USER_HZ ticks, 100 per second on every mainstream architecture.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The page size `statm` counts in: 4 KiB on the x86-64 and most arm64 Linux kernels this runs on.
const PAGE_SIZE: f64 = 4096.0;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The metrics table of `docs/protocol.md`: name → (type, labels).
    fn documented() -> BTreeMap<String, (String, String)> {
        let doc = include_str!("../../docs/protocol.md");
        let section = &doc[doc.find("### `GET /metrics`").expect("the /metrics section")..];
        let mut metrics = BTreeMap::new();
        for row in section.lines().skip_while(|l| !l.starts_with("| metric")).skip(2) {
            let Some(cells) = row.strip_prefix('|') else { break };
            let cells: Vec<&str> = cells.split('|').map(str::trim).collect();
            for name in cells[0].split(", ") {
                let entry = (cells[1].to_owned(), cells[2].replace('`', ""));
                metrics.insert(name.trim_matches('`').to_owned(), entry);
            }
        }
        metrics
    }

    #[test]
    fn every_metric_is_documented_as_exported() {
        let exported: BTreeMap<String, (String, String)> = METRICS
            .iter()
            .map(|metric| {
                let kind = match metric.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::Histogram => "histogram",
                };
                (metric.name.to_owned(), (kind.to_owned(), metric.labels.join(", ")))
            })
            .collect();
        assert_eq!(exported, documented());
    }
}
