//! Liveness, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use futures_util::future::try_join_all;
use serde_json::{Value, json};
use switchboard_ingest::log::{Cursor, LogError};
use switchboard_projector::{PROJECTED_TOPICS, PROJECTOR_GROUP};
use switchboard_schemas::Topic;

use crate::calls::timer;
use crate::error::ApiError;
use crate::hub::StageState;
use crate::hub::deliver;
use crate::state::AppState;

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The node can serve: the log and the store answer, (on a node that serves clients) the hub
/// hears its users' feeds, and (on a node that projects) every delivery lane routes. Reports how
/// far the projector lags.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let end = log_end(&state).await;
    let store = state.store.checkpoint().await;
    let lag = end.as_ref().ok().map(|end| lag(&state, end));
    let fanout = state.config.role.takes_writes().then(|| state.hub.state());
    let delivery: Vec<(&str, StageState)> =
        state.delivery.iter().map(|stage| (stage.lane.group, stage.state())).collect();
    let ready = end.is_ok()
        && store.is_ok()
        && fanout.as_ref().is_none_or(StageState::is_live)
        && delivery.iter().all(|(_, lane)| lane.is_live());
    let delivery = (!delivery.is_empty()).then(|| {
        delivery
            .iter()
            .map(|(lane, state)| (lane.to_string(), json!(state.to_string())))
            .collect::<serde_json::Map<_, _>>()
    });
    let body = json!({
        "node": state.node_id,
        "role": state.config.role.to_string(),
        "ready": ready,
        "log": end.err().map_or("ok".to_owned(), |e| e.to_string()),
        "store": store.err().map_or("ok".to_owned(), |e| e.to_string()),
        "fanout": fanout.map(|state| state.to_string()),
        "delivery": delivery,
        "projector_lag_events": lag,
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}

async fn log_end(state: &AppState) -> Result<Cursor, LogError> {
    Cursor::end(state.ingest.log().as_ref(), &PROJECTED_TOPICS).await
}

/// Events appended but not yet applied to the read models, also kept as a gauge.
fn lag(state: &AppState, end: &Cursor) -> u64 {
    let applied = state.progress.current();
    let lag = end
        .iter()
        .map(|(topic, partition, next)| {
            next.saturating_sub(applied.get(topic, partition).unwrap_or(0))
        })
        .sum();
    metrics::gauge!("projector_lag_events").set(lag as f64);
    lag
}

/// Prometheus text format, with the process figures and the consumers' lag as of now.
pub async fn metrics(State(state): State<AppState>) -> String {
    crate::telemetry::record_process_metrics();
    if let Ok(end) = log_end(&state).await {
        lag(&state, &end);
    }
    if let Err(error) = record_consumer_lag(&state).await {
        tracing::debug!(%error, "consumer lag left out of the metrics");
    }
    state.metrics.render()
}

/// Every consumer group of the deployment: for each partition it reads, who holds it (the
/// member's node id and host; `null` while nobody does), and the group's lag there, as
/// `kafka-consumer-groups --describe` shows a group. Every node answers for every group.
pub async fn groups(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let log = state.ingest.log();
    let log = log.as_ref();
    // Each question is a round trip or more to Kafka (and a client of its own there): asked all
    // at once, the answer takes as long as the slowest rather than all of them.
    let described = try_join_all(GROUPS.map(|(group, topics)| async move {
        let (committed, members) = tokio::try_join!(log.committed(group), log.members(group))?;
        Ok::<_, LogError>((group, topics, committed, members))
    }));
    let (end, described) = tokio::try_join!(Cursor::end(log, &Topic::ALL), described)?;
    let mut groups = serde_json::Map::new();
    for (group, topics, committed, members) in described {
        let holder = |topic, partition| {
            members.iter().find(|member| member.partitions.contains(&(topic, partition)))
        };
        let partitions: serde_json::Map<String, Value> = end
            .iter()
            .filter(|(topic, ..)| topics.contains(topic))
            .map(|(topic, partition, end)| {
                let lag = committed.get(topic, partition).map(|at| end.saturating_sub(at));
                let owner = holder(topic, partition).map(|member| member.name.clone());
                (format!("{topic}.{partition}"), json!({ "owner": owner, "lag": lag }))
            })
            .collect();
        groups.insert(group.to_owned(), Value::Object(partitions));
    }
    Ok(Json(Value::Object(groups)))
}

/// Every consumer group of a deployment and the topics it reads.
const GROUPS: [(&str, &[Topic]); 4] = [
    (PROJECTOR_GROUP, &PROJECTED_TOPICS),
    (deliver::HISTORY.group, deliver::HISTORY.topics),
    (deliver::PRESENCE.group, deliver::PRESENCE.topics),
    (timer::GROUP, &[Topic::Calls]),
];

/// Each group's lag per partition: the log's end less the group's committed offset, which is
/// what `kafka-consumer-groups --describe` shows. Every node reports every group, whichever node
/// consumes it. A group that never committed (one not run yet) has no lag to report. The ring
/// timer commits only up to the oldest call still live, so its lag holds those calls' events.
async fn record_consumer_lag(state: &AppState) -> Result<(), LogError> {
    let log = state.ingest.log();
    let log = log.as_ref();
    let committed = try_join_all(GROUPS.map(|(group, _)| log.committed(group)));
    let (end, committed) = tokio::try_join!(Cursor::end(log, &Topic::ALL), committed)?;
    for ((group, topics), committed) in GROUPS.into_iter().zip(committed) {
        if committed.is_empty() {
            continue;
        }
        for (topic, partition, end) in end.iter().filter(|(topic, ..)| topics.contains(topic)) {
            let lag = end.saturating_sub(committed.get(topic, partition).unwrap_or(0));
            let (topic, partition) = (topic.name(), partition.to_string());
            metrics::gauge!("consumer_lag_events", "group" => group, "topic" => topic, "partition" => partition)
                .set(lag as f64);
        }
    }
    Ok(())
}
