//! What every handler is given: the backends, the configuration and the node's own services.
//!
//! Dependencies point one way. The services held here (tokens, coordination, claims, the hub,
//! blobs, socket slots) are built from their own modules, none of which sees [`AppState`]; the
//! code that serves requests (`routes`, `ws`, `chat`, `calls`, `locations`, `sync`, the media
//! uploads and `limits`) takes an `AppState` and uses them. So a service can be built and tested
//! on its own, and nothing here is reached through a cycle.

use std::ops::Deref;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use switchboard_ingest::Ingest;
use switchboard_projector::Progress;
use switchboard_projector::feed::Feeds;
use switchboard_projector::presence::Presence;
use switchboard_projector::store::ReadModel;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::Tokens;
use crate::claims::Settling;
use crate::config::Config;
use crate::coordination::Coordination;
use crate::coordination::memory::MemoryCoordination;
use crate::hub::Hub;
use crate::hub::deliver::Stage;
use crate::media::blobs::Blobs;
use crate::ws::slots::UserSockets;

#[derive(Clone)]
pub struct AppState(Arc<Services>);

pub struct Services {
    pub config: Config,
    /// Unique per process start: sessions are held under this node's lease.
    pub node_id: String,
    pub ingest: Ingest,
    pub store: Arc<dyn ReadModel>,
    pub presence: Arc<dyn Presence>,
    /// Rate limits and claims, shared with the other nodes.
    pub coordination: Arc<dyn Coordination>,
    /// Rate limits counted on this node alone, while `coordination` cannot be reached.
    pub local_limits: MemoryCoordination,
    pub progress: Progress,
    /// Where uploaded files are kept.
    pub blobs: Blobs,
    pub hub: Hub,
    /// Users' feeds: what the delivery stage appends and the hub pushes and replays.
    pub feeds: Arc<dyn Feeds>,
    /// The delivery stage's lanes, on a node that projects.
    pub delivery: Vec<Stage>,
    /// Claims of finished sends, released once projected.
    pub claims: Settling,
    pub tokens: Tokens,
    /// One permit per WebSocket connection this node may still take.
    pub connections: Arc<Semaphore>,
    /// How many sockets each user holds open here.
    pub user_sockets: UserSockets,
    /// Cancelled when the node shuts down: sockets close with a close frame.
    pub shutdown: CancellationToken,
    pub metrics: PrometheusHandle,
}

impl AppState {
    pub fn new(services: Services) -> AppState {
        AppState(Arc::new(services))
    }
}

impl Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}
