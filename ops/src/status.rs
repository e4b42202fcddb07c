//! `switchboard status`: a deployment as an operator sees it, from its nodes' own answers.
//!
//! Each node named is asked for `/readyz` and `/metrics`: one line per node (its run, role,
//! readiness and why not, connections, memory), then, from the first node that answers
//! (`/groups`: every node reports every group), each consumer group's lag per topic and which
//! node holds which of its partitions. A node that does not answer is a line saying so, and the
//! command fails, so that a script can alert on it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// How long one node may take to answer. Its `/groups` asks Kafka for the end of every partition
/// and each group's offsets and members, which takes seconds on a busy cluster.
const TIMEOUT: Duration = Duration::from_secs(15);

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
    let mut groups = None;
    for status in statuses.iter().filter(|status| status.ready.is_some()) {
        match ask_json(&http, &format!("{}/groups", status.address)).await {
            Ok(answer) => {
                groups = Some((status.address.clone(), answer));
                break;
            }
            Err(error) => eprintln!("{}/groups: {error}", status.address),
        }
    }
    print!(
        "{}",
        report(&statuses, groups.as_ref().map(|(address, groups)| (address.as_str(), groups)))
    );
    let down = statuses.iter().filter(|status| status.ready != Some(true)).count();
    match down {
        0 => Ok(()),
        n => bail!("{n} of {} nodes are not ready", statuses.len()),
    }
}

async fn ask(http: &reqwest::Client, address: &str) -> NodeStatus {
    let mut status = NodeStatus { address: address.to_owned(), ..NodeStatus::default() };
    match ask_json(http, &format!("{address}/readyz")).await {
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

async fn ask_json(http: &reqwest::Client, url: &str) -> Result<Value, reqwest::Error> {
    http.get(url).send().await?.json().await
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

/// One topic of a consumer group: its lag, summed over partitions, and who holds which
/// partition.
#[derive(Debug, Default, PartialEq)]
struct GroupTopic {
    lag: u64,
    /// Partitions by the member holding them; `None` for those nobody holds.
    holders: BTreeMap<Option<String>, Vec<u32>>,
}

/// `/groups` (`{group: {"topic.partition": {"owner": …, "lag": …}}}`) by group and topic.
fn group_topics(groups: &Value) -> BTreeMap<(String, String), GroupTopic> {
    let mut topics: BTreeMap<(String, String), GroupTopic> = BTreeMap::new();
    for (group, partitions) in groups.as_object().into_iter().flatten() {
        for (place, state) in partitions.as_object().into_iter().flatten() {
            let Some((topic, partition)) = place.rsplit_once('.') else { continue };
            let Ok(partition) = partition.parse() else { continue };
            let entry = topics.entry((group.clone(), topic.to_owned())).or_default();
            entry.lag += state["lag"].as_u64().unwrap_or(0);
            let owner = state["owner"].as_str().map(str::to_owned);
            entry.holders.entry(owner).or_default().push(partition);
        }
    }
    topics
}

/// The report: one line per node, then the groups' lag and partitions as `groups` (the node
/// that answered, and its `/groups`) has them.
pub fn report(statuses: &[NodeStatus], groups: Option<(&str, &Value)>) -> String {
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
    if let Some((address, groups)) = groups {
        let _ = writeln!(out, "\nconsumer groups, as {address} reports them:");
        let _ = writeln!(out, "{:<20} {:<14} {:>10}  partitions held", "group", "topic", "lag");
        for ((group, topic), state) in group_topics(groups) {
            let held: Vec<String> = state
                .holders
                .iter()
                .map(|(holder, partitions)| {
                    let partitions: Vec<String> = partitions.iter().map(u32::to_string).collect();
                    format!("{} by {}", partitions.join(","), holder.as_deref().unwrap_or("nobody"))
                })
                .collect();
            let _ = writeln!(out, "{group:<20} {topic:<14} {:>10}  {}", state.lag, held.join("; "));
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

        let groups = serde_json::json!({
            "projector": {
                "messages.0": {"owner": "1-ab12cd34@10.0.0.5", "lag": 3},
                "messages.1": {"owner": "2-ee00ff11@10.0.0.6", "lag": 4},
                "messages.2": {"owner": "1-ab12cd34@10.0.0.5", "lag": 0},
            },
            "delivery": {"messages.0": {"owner": null, "lag": null}},
        });
        let report = report(&[up, down], Some(("http://a:8080", &groups)));
        let lines: Vec<&str> = report.lines().collect();
        assert!(lines[1].starts_with("http://a:8080") && lines[1].contains("1-ab12cd34"));
        assert!(lines[1].contains("NOT READY") && lines[1].contains("12"), "{report}");
        assert!(lines[1].contains("100 MiB") && lines[1].ends_with("delivery-presence: starting"));
        assert!(lines[2].contains("DOWN") && lines[2].ends_with("connection refused"), "{report}");
        assert!(
            report.contains(
                "projector            messages                7  0,2 by 1-ab12cd34@10.0.0.5; 1 by \
                 2-ee00ff11@10.0.0.6"
            ),
            "{report}"
        );
        assert!(report.contains("delivery             messages                0  0 by nobody"));
    }
}
