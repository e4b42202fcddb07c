//! `switchboard serve`: a [`Node`] (the backends, the projector, the fan-out and the other
//! background work of its role) behind an HTTP server, shut down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::serve::ListenerExt;
use switchboard_ingest::ids::IdGenerator;
use switchboard_ingest::log::Cursor;
use switchboard_ingest::{Ingest, Limits, Origin};
use switchboard_projector::{Progress, Projector};
use switchboard_schemas::NodeHeartbeat;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backends;
use crate::claims::{self, Settling};
use crate::config::{Config, Role};
use crate::coordination::memory::MemoryCoordination;
use crate::hub::Hub;
use crate::hub::deliver::{self, Stage};
use crate::lane_thread::LaneThread;
use crate::media::Blobs;
use crate::node_lease::NodeLease;
use crate::routes;
use crate::state::{AppState, Services};
use crate::telemetry;

/// How long a node's sessions, and its lease on its number, last without a renewal.
const NODE_LEASE: Duration = Duration::from_secs(15);
/// How long a node that does not project waits for the read models before serving anyway.
const BACKLOG_WAIT: Duration = Duration::from_secs(30);
/// How often a node learns other projectors' progress from the store.
const CHECKPOINT_POLL: Duration = Duration::from_millis(20);
/// How long a failed background task waits before it starts again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Runs a node until SIGINT or SIGTERM (or the loss of its node id's lease), then shuts it down
/// in order: sockets closed, requests finished, the projector caught up, the log flushed.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Bound first, so that a port in use fails the start before any backend is touched.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let node = Node::start(config).await?;
    let state = node.state();
    let address = listener.local_addr().context("listening address")?;
    tracing::info!(
        listen = %address,
        node = %state.node_id,
        log = %backends::redacted(&state.config.log_url()),
        store = %backends::redacted(&state.config.store_url()),
        presence = %backends::redacted(&state.config.presence),
        feeds = %backends::redacted(&state.config.feeds_url()),
        media = %state.blobs,
        "switchboard serving"
    );
    // A machine-readable line for scripts and tests that start a node on port 0.
    println!("listening on http://{address}");
    let app = node.router().into_make_service_with_connect_info::<SocketAddr>();
    // Small frames go out at once: without TCP_NODELAY a reply waits for the client's delayed
    // ACK of the previous frame (up to 40 ms), which dominated latency at moderate rates.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
    });
    let (shutdown, lease_lost) = (state.shutdown.clone(), node.lease_lost.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = lease_lost.cancelled() => {}
            }
            tracing::info!("shutting down: closing sockets and finishing requests");
            shutdown.cancel();
        })
        .await
        .context("HTTP server")?;
    tracing::info!("HTTP server stopped; waiting for sockets to close");
    node.stop().await
}

/// A running node without its listener: backends open, its node id leased, background work
/// (projector, fan-out, delivery, timers) running. [`serve`] puts it behind a socket; tests can
/// call its [`router`](Node::router) in process.
pub struct Node {
    state: AppState,
    tasks: JoinSet<()>,
    /// The threads of the stages every event passes through (see [`LaneThread`]).
    lanes: Lanes,
    /// Cancelled to end the background work, once clients are gone.
    stop: CancellationToken,
    /// Cancelled when another node took this node's id: the node must shut down.
    lease_lost: CancellationToken,
}

impl Node {
    /// Opens the backends `config` names, takes the lease on its node id, starts the background
    /// work of its role and, for a node that serves clients, waits for the read models and the
    /// fan-out to catch up with the log (see [`Node::catch_up`]).
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        let metrics = telemetry::install_metrics()?;
        let node_id =
            format!("{}-{}", config.node_id, &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let log = backends::open_log(&config, &node_id).await?;
        let store = backends::open_store(&config).await?;
        let presence = backends::open_presence(&config, &node_id).await?;
        let coordination = backends::open_coordination(&config)?;
        let lease = NodeLease::take(
            coordination.clone(),
            config.node_id,
            &node_id,
            &config.data_dir,
            NODE_LEASE,
        )
        .await?;
        let feeds = backends::open_feeds(&config).await?;
        let blobs = Blobs::open(&config.media_store_url())
            .with_context(|| format!("opening the media store at {}", config.media_store_url()))?;
        let ids = IdGenerator::new(config.node_id).context("node id")?;
        let limits = Limits {
            max_body_bytes: config.max_message_bytes,
            max_group_members: config.max_group_members,
        };
        let hub = Hub::new(feeds.clone());
        let progress = Progress::new(Cursor::default());
        let delivery = match config.role.projects() {
            true => [deliver::HISTORY, deliver::PRESENCE]
                .into_iter()
                .map(|lane| {
                    let (store, presence) = (store.clone(), presence.clone());
                    let members = hub.memberships().clone();
                    Stage::new(
                        lane,
                        log.clone(),
                        store,
                        presence,
                        feeds.clone(),
                        members,
                        progress.clone(),
                    )
                })
                .collect(),
            false => Vec::new(),
        };
        let state = AppState::new(Services {
            coordination,
            local_limits: MemoryCoordination::default(),
            node_id,
            ingest: Ingest::new(log, ids, limits),
            store,
            presence,
            progress,
            blobs,
            hub,
            feeds,
            delivery,
            claims: Settling::default(),
            tokens: crate::auth::Tokens::new(
                config.jwt_secret.as_deref(),
                &config.data_dir,
                config.token_ttl.0,
            )?,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            user_sockets: Default::default(),
            shutdown: CancellationToken::new(),
            metrics,
            config,
        });
        let role = state.config.role;
        let mut node = Node {
            state,
            tasks: JoinSet::new(),
            lanes: Lanes::start(role)?,
            stop: CancellationToken::new(),
            lease_lost: CancellationToken::new(),
        };
        node.tasks.spawn(lease.keep(node.stop.clone(), node.lease_lost.clone()));
        node.spawn_background_work();
        if node.state.config.role.takes_writes() {
            node.catch_up().await?;
        }
        Ok(node)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// What the node serves over HTTP: the whole API, or only health and metrics on a node that
    /// just projects.
    pub fn router(&self) -> Router {
        match self.state.config.role {
            Role::Projector => routes::operations(self.state.clone()),
            Role::All | Role::Api => routes::router(self.state.clone()),
            Role::ReadOnly => routes::read_only(self.state.clone()),
        }
    }

    fn spawn_background_work(&mut self) {
        let (state, stop, tasks) = (&self.state, &self.stop, &mut self.tasks);
        let delivering = self.lanes.delivering.handle();
        let role = state.config.role;
        if let Some(projecting) = &self.lanes.projecting {
            tasks.spawn_on(
                supervise("projector", stop.clone(), {
                    let state = state.clone();
                    move |stop| {
                        let projector = Projector::new(
                            state.ingest.log().clone(),
                            state.store.clone(),
                            state.progress.clone(),
                        );
                        async move { projector.run(stop).await.map_err(anyhow::Error::from) }
                    }
                }),
                projecting.handle(),
            );
            tasks.spawn(supervise("call-timer", stop.clone(), {
                let state = state.clone();
                move |stop| crate::calls::timer::run(state.clone(), stop)
            }));
        }
        if role != Role::All || !state.config.store_url().starts_with("file://") {
            // Other processes project (part of) the log: learn their progress from the store.
            tasks.spawn(follow_store_checkpoint(state.clone(), stop.clone()));
        }
        tasks.spawn_on(
            supervise("memberships", stop.clone(), {
                let state = state.clone();
                move |stop| {
                    let members = state.hub.memberships().clone();
                    let run =
                        members.follow(state.ingest.log().clone(), state.progress.clone(), stop);
                    async move { run.await.map_err(anyhow::Error::from) }
                }
            }),
            delivering,
        );
        for stage in &state.delivery {
            tasks.spawn_on(
                supervise(stage.lane.group, stop.clone(), {
                    let stage = stage.clone();
                    move |stop| {
                        let stage = stage.clone();
                        async move { stage.run(stop).await.map_err(anyhow::Error::from) }
                    }
                }),
                delivering,
            );
        }
        if role.takes_writes() {
            tasks.spawn_on(
                supervise("fan-out", stop.clone(), {
                    let hub = state.hub.clone();
                    move |stop| {
                        let hub = hub.clone();
                        async move { hub.run(stop).await.map_err(anyhow::Error::from) }
                    }
                }),
                delivering,
            );
            tasks.spawn(renew_lease(state.clone(), stop.clone()));
            let (state, stop) = (state.clone(), stop.clone());
            tasks.spawn(async move {
                let state = &*state;
                claims::release_projected(
                    &state.claims,
                    &state.progress,
                    &*state.coordination,
                    stop,
                )
                .await;
            });
        }
    }

    /// Waits until the read models hold everything logged before this start, so that membership
    /// checks and retried sends see the state clients last saw, and until the fan-out pushes.
    /// When another process does the projecting, waits only so long: readiness says what is
    /// missing from then on.
    async fn catch_up(&self) -> anyhow::Result<()> {
        let state = &self.state;
        let backlog =
            Cursor::end(state.ingest.log().as_ref(), &switchboard_projector::PROJECTED_TOPICS)
                .await?;
        tracing::info!(until = %backlog, "catching up with the log");
        let caught_up = state.progress.wait_for_cursor(&backlog);
        if state.config.role.projects() && state.config.store_url().starts_with("file://") {
            caught_up.await;
        } else if tokio::time::timeout(BACKLOG_WAIT, caught_up).await.is_err() {
            tracing::warn!("the read models are still behind the log; serving anyway");
        }
        if tokio::time::timeout(BACKLOG_WAIT, state.hub.live()).await.is_err() {
            tracing::warn!(
                "the fan-out delivers nothing yet ({}); serving anyway",
                state.hub.state()
            );
        }
        for stage in &state.delivery {
            if tokio::time::timeout(BACKLOG_WAIT, stage.live()).await.is_err() {
                tracing::warn!(
                    lane = stage.lane.group,
                    "delivery routes nothing yet ({}); serving anyway",
                    stage.state()
                );
            }
        }
        Ok(())
    }

    /// Shuts the node down once its HTTP server has stopped: waits for sockets to close and the
    /// projector to apply what they logged, stops the background work and flushes the log. Fails
    /// when the node stopped because it lost its node id's lease.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let state = &self.state;
        state.shutdown.cancel();
        drain_sockets(state).await;
        if state.config.role.projects() {
            settle_projection(state).await;
        }
        tracing::info!("stopping background tasks");
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.lanes.stop().await;
        state.ingest.log().close().await.context("flushing the log")?;
        if self.lease_lost.is_cancelled() {
            bail!(
                "stopped: another node took node id {} while this one could not renew its lease",
                state.config.node_id
            );
        }
        tracing::info!("switchboard stopped");
        Ok(())
    }
}

/// The threads of a node's stages: `projecting` only on a node that projects.
struct Lanes {
    projecting: Option<LaneThread>,
    delivering: LaneThread,
}

impl Lanes {
    fn start(role: Role) -> anyhow::Result<Lanes> {
        let projecting = role.projects().then(|| LaneThread::start("projecting")).transpose()?;
        Ok(Lanes { projecting, delivering: LaneThread::start("delivering")? })
    }

    async fn stop(self) {
        if let Some(projecting) = self.projecting {
            projecting.stop().await;
        }
        self.delivering.stop().await;
    }
}

/// Runs a background task, restarting it after a failure until `stop` is cancelled.
async fn supervise<F, Fut>(name: &'static str, stop: CancellationToken, start: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    // Exported from the start, so that an alert on restarts sees each task at zero.
    let restarts = metrics::counter!("task_restarts_total", "task" => name);
    restarts.increment(0);
    while !stop.is_cancelled() {
        match start(stop.clone()).await {
            Ok(()) => break,
            Err(error) => {
                restarts.increment(1);
                tracing::error!(
                    task = name,
                    error = format!("{error:#}"),
                    "task failed; restarting"
                );
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(RESTART_DELAY) => {}
                }
            }
        }
    }
    tracing::debug!(task = name, "task stopped");
}

/// Feeds [`Progress`] from the store's checkpoint, which every projector worker writes.
async fn follow_store_checkpoint(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECKPOINT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.store.checkpoint().await {
            Ok(checkpoint) => state.progress.advance(checkpoint),
            Err(error) => tracing::debug!(%error, "store checkpoint unavailable"),
        }
    }
}

/// Keeps this node's sessions alive in presence and tells the log the node is up.
async fn renew_lease(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(NODE_LEASE / 3);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = state.presence.renew_lease(&state.node_id, NODE_LEASE).await {
            tracing::warn!(%error, "could not renew the node lease");
        }
        let heartbeat = NodeHeartbeat {
            node_id: state.node_id.clone(),
            lease_ms: NODE_LEASE.as_millis() as i64,
        };
        if let Err(error) =
            state.ingest.append(&Origin::system("heartbeat"), heartbeat.into()).await
        {
            tracing::warn!(%error, "could not log the node heartbeat");
        }
    }
}

/// Waits until every socket has closed, or the grace period is over.
async fn drain_sockets(state: &AppState) {
    let all = state.config.max_connections as u32;
    let wait = state.connections.acquire_many(all);
    if tokio::time::timeout(state.config.shutdown_grace.0, wait).await.is_err() {
        tracing::warn!("some sockets did not close within the grace period");
    }
}

/// Lets the projector apply what the last sockets logged on their way out, so a restart (or a
/// rebuild) starts from read models that match the log.
async fn settle_projection(state: &AppState) {
    let Ok(end) =
        Cursor::end(state.ingest.log().as_ref(), &switchboard_projector::PROJECTED_TOPICS).await
    else {
        return;
    };
    let settled = state.progress.wait_for_cursor(&end);
    if tokio::time::timeout(state.config.shutdown_grace.0, settled).await.is_err() {
        tracing::warn!(
            "the projector did not catch up before shutdown; it resumes on the next start"
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
