//! How many appends per second the embedded log acknowledges, and how long each waits.
//!
//! Every acknowledged append is fsynced, so a lone appender measures the disk's sync latency,
//! while many concurrent appenders show what group commit recovers: the writer syncs once for
//! everything queued. These figures are what the choice of fjall for the embedded log rests on.
//!
//! Run with `cargo bench -p switchboard-ingest --bench append`.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_ingest::log::Log;
use switchboard_ingest::log::embedded::EmbeddedLog;
use switchboard_schemas::Topic;

const VALUE_BYTES: usize = 200;
const PARTITIONS: u32 = 8;
const RUN_FOR: Duration = Duration::from_secs(4);
const APPENDERS: [usize; 3] = [1, 64, 1024];

fn main() -> Result<(), Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("{VALUE_BYTES}-byte values, {PARTITIONS} partitions, {}s per row", RUN_FOR.as_secs());
    println!("{:>9} | {:>10} | {:>9} | {:>9}", "appenders", "appends/s", "p50", "p99");
    for appenders in APPENDERS {
        // A fresh log per row, so no row pays for the compaction of an earlier one.
        let dir = tempfile::tempdir()?;
        let log = Arc::new(EmbeddedLog::open(dir.path(), PARTITIONS)?);
        let (elapsed, mut latencies) = runtime.block_on(measure(Arc::clone(&log), appenders))?;
        runtime.block_on(log.close())?;
        latencies.sort_unstable();
        let rate = latencies.len() as f64 / elapsed.as_secs_f64();
        println!(
            "{appenders:>9} | {rate:>10.0} | {:>9} | {:>9}",
            show(percentile(&latencies, 0.50)),
            show(percentile(&latencies, 0.99)),
        );
    }
    Ok(())
}

/// Runs `appenders` tasks that append back to back for [`RUN_FOR`]; returns the time taken and
/// every append's latency.
async fn measure(
    log: Arc<EmbeddedLog>,
    appenders: usize,
) -> Result<(Duration, Vec<Duration>), Box<dyn Error>> {
    let start = Instant::now();
    let deadline = start + RUN_FOR;
    let tasks: Vec<_> = (0..appenders)
        .map(|task| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let key = format!("conversation-{task}").into_bytes();
                let value = vec![b'x'; VALUE_BYTES];
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    log.append(Topic::Messages, &key, value.clone()).await?;
                    latencies.push(sent.elapsed());
                }
                Ok::<_, switchboard_ingest::log::LogError>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((start.elapsed(), latencies))
}

fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    let index = ((sorted.len() as f64 * quantile) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or_default()
}

fn show(latency: Duration) -> String {
    format!("{:.2} ms", latency.as_secs_f64() * 1000.0)
}
