//! `switchboard status`: a deployment as an operator sees it, from its nodes' own answers.
//!
//! Each node named is asked for `/readyz` and `/metrics`: one line per node (its run, role,
//! readiness and why not, connections, memory, CPU), then the consumer groups' lag per topic as
//! the first node that answers reports it (every node reports every group). A node that does not
//! answer is a line saying so, and the command fails, so that a script can alert on it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// How long one node may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `switchboard status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A node's HTTP address, e.g. http://10.0.0.5:8080; repeat for every node.
    #[arg(long = "node", required = true, env = "SWITCHBOARD_NODES", value_delimiter = ',')]
    pub nodes: Vec<String>,
}

/// What one node said.
#[derive(Debug, Default, PartialEq)]
pub struct NodeStatus {
    pub address: String,
    /// `None` when the node did not answer, with why in `problems`.
    pub ready: Option<bool>,
    pub node: String,
    pub role: String,
    /// The parts of `/readyz` that are not `ok`, and failures to reach the node.
    pub problems: Vec<String>,
    pub metrics: BTreeMap<String, f64>,
}

/// Runs `switchboard status`.
pub async fn command(args: Args) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(TIMEOUT).build().context("an HTTP client")?;
    let mut statuses = Vec::new();
    for address in &args.nodes {
        statuses.push(ask(&http, address.trim_end_matches('/')).await);
    }
    print!("{}", report(&statuses));
    let down = statuses.iter().filter(|status| status.ready != Some(true)).count();
    match down {
        0 => Ok(()),
        n => bail!("{n} of {} nodes are not ready", statuses.len()),
    }
}

async fn ask(http: &reqwest::Client, address: &str) -> NodeStatus {
    let mut status = NodeStatus { address: address.to_owned(), ..NodeStatus::default() };
    let ready: Result<Value, reqwest::Error> =
        match http.get(format!("{address}/readyz")).send().await {
            Ok(response) => response.json().await,
            Err(error) => Err(error),
        };
    match ready {
        Ok(ready) => read_readiness(&mut status, &ready),
        Err(error) => {
            status.problems.push(format!("unreachable: {error}"));
            return status;
        }
    }
    match http.get(format!("{address}/metrics")).send().await {
        Ok(response) => match response.text().await {
            Ok(text) => status.metrics = parse_metrics(&text),
            Err(error) => status.problems.push(format!("metrics: {error}")),
        },
        Err(error) => status.problems.push(format!("metrics: {error}")),
    }
    status
}

fn read_readiness(status: &mut NodeStatus, ready: &Value) {
    status.ready = ready["ready"].as_bool();
    status.node = ready["node"].as_str().unwrap_or("?").to_owned();
    status.role = ready["role"].as_str().unwrap_or("?").to_owned();
    for part in ["log", "store", "fanout"] {
        if let Some(state) = ready[part].as_str().filter(|state| *state != "ok") {
            status.problems.push(format!("{part}: {state}"));
        }
    }
    if let Some(lanes) = ready["delivery"].as_object() {
        for (lane, state) in lanes {
            if let Some(state) = state.as_str().filter(|state| *state != "ok") {
                status.problems.push(format!("{lane}: {state}"));
            }
        }
    }
}

/// Prometheus text as `series → value`, the series written as the node wrote it.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of an unlabelled series.
fn value(metrics: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    metrics.get(name).copied()
}

/// Each group's lag by topic, summed over partitions.
fn lag_by_group(metrics: &BTreeMap<String, f64>) -> BTreeMap<(String, String), f64> {
    let mut lag = BTreeMap::new();
    for (series, value) in metrics {
        let Some(labels) = series.strip_prefix("consumer_lag_events{") else { continue };
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
            Some(labels[start..].split('"').next()?.to_owned())
        };
        if let (Some(group), Some(topic)) = (label("group"), label("topic")) {
            *lag.entry((group, topic)).or_insert(0.0) += value;
        }
    }
    lag
}

/// The report: one line per node, then the groups' lag.
pub fn report(statuses: &[NodeStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<14} {:<9} {:<9} {:>11} {:>10}  problems",
        "node", "run", "role", "ready", "connections", "memory"
    );
    for status in statuses {
        let ready = match status.ready {
            Some(true) => "ready",
            Some(false) => "NOT READY",
            None => "DOWN",
        };
        let connections = value(&status.metrics, "ws_connections")
            .map_or_else(|| "-".to_owned(), |n| format!("{n:.0}"));
        let memory = value(&status.metrics, "process_resident_memory_bytes")
            .map_or_else(|| "-".to_owned(), |bytes| format!("{:.0} MiB", bytes / 1048576.0));
        let line = format!(
            "{:<28} {:<14} {:<9} {:<9} {connections:>11} {memory:>10}  {}",
            status.address,
            status.node,
            status.role,
            ready,
            status.problems.join("; ")
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if let Some(reporting) = statuses.iter().find(|status| !status.metrics.is_empty()) {
        let _ = writeln!(out, "\nconsumer lag (events), as {} reports it:", reporting.address);
        let _ = writeln!(out, "{:<20} {:<14} {:>10}", "group", "topic", "lag");
        for ((group, topic), lag) in lag_by_group(&reporting.metrics) {
            let _ = writeln!(out, "{group:<20} {topic:<14} {lag:>10.0}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP ws_connections open WebSocket connections
# TYPE ws_connections gauge
ws_connections 12
process_resident_memory_bytes 104857600
consumer_lag_events{group=\"projector\",topic=\"messages\",partition=\"0\"} 3
consumer_lag_events{group=\"projector\",topic=\"messages\",partition=\"1\"} 4
consumer_lag_events{group=\"delivery\",topic=\"messages\",partition=\"0\"} 0
";

    #[test]
    fn nodes_and_lag_are_reported_and_problems_named() {
        let mut up = NodeStatus { address: "http://a:8080".into(), ..NodeStatus::default() };
        let ready = serde_json::json!({
            "ready": false, "node": "1-ab12cd34", "role": "all", "log": "ok", "store": "ok",
            "fanout": "ok", "delivery": {"delivery": "ok", "delivery-presence": "starting"}
        });
        read_readiness(&mut up, &ready);
        up.metrics = parse_metrics(METRICS);
        let down = NodeStatus {
            address: "http://b:8080".into(),
            problems: vec!["unreachable: connection refused".into()],
            ..NodeStatus::default()
        };

        let report = report(&[up, down]);
        let lines: Vec<&str> = report.lines().collect();
        assert!(lines[1].starts_with("http://a:8080") && lines[1].contains("1-ab12cd34"));
        assert!(lines[1].contains("NOT READY") && lines[1].contains("12"), "{report}");
        assert!(lines[1].contains("100 MiB") && lines[1].ends_with("delivery-presence: starting"));
        assert!(lines[2].contains("DOWN") && lines[2].ends_with("connection refused"), "{report}");
        assert!(report.contains("projector            messages                7"), "{report}");
        assert!(report.contains("delivery             messages                0"), "{report}");
    }
}
