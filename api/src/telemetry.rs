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
    Ok(installed.insert(handle).clone())
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
