//! Presence in process memory: the backend for a single node.
//!
//! Everything sits behind one mutex. Each call does a few hash-map operations under it, which is
//! far cheaper than the network round trip the Redis backend pays for the same call, so the lock
//! is not worth splitting. Sessions need no sweeping: each one belongs to a connection whose end
//! closes it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchboard_schemas::UserId;

use super::{Presence, PresenceError, Status};

/// How long the local node counts as live after [`MemoryPresence::new`] without a renewal. The
/// caller renews it (with [`Presence::renew_lease`]) well within this, as it would in Redis.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Presence state of one process. See the module docs.
pub struct MemoryPresence {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// user → session id → the node holding the session.
    sessions: HashMap<UserId, HashMap<String, String>>,
    /// node → when its lease runs out.
    leases: HashMap<String, Instant>,
}

impl MemoryPresence {
    /// Presence for the node `node_id`, whose lease starts out live for [`DEFAULT_LEASE`].
    pub fn new(node_id: &str) -> MemoryPresence {
        let mut state = State::default();
        state.leases.insert(node_id.to_owned(), Instant::now() + DEFAULT_LEASE);
        MemoryPresence { state: Mutex::new(state) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the maps consistent at each step, so the state a panicking
        // caller left behind is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn online(&self, user: UserId, now: Instant) -> bool {
        self.sessions.get(&user).is_some_and(|sessions| {
            sessions.values().any(|node| self.leases.get(node).is_some_and(|&until| until > now))
        })
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn open_session(
        &self,
        user: UserId,
        session_id: &str,
        node_id: &str,
    ) -> Result<bool, PresenceError> {
        let now = Instant::now();
        let mut state = self.state();
        let was_online = state.online(user, now);
        state.sessions.entry(user).or_default().insert(session_id.to_owned(), node_id.to_owned());
        Ok(!was_online && state.online(user, now))
    }

    async fn close_session(&self, user: UserId, session_id: &str) -> Result<bool, PresenceError> {
        let now = Instant::now();
        let mut state = self.state();
        let was_online = state.online(user, now);
        if let Some(sessions) = state.sessions.get_mut(&user) {
            sessions.remove(session_id);
            if sessions.is_empty() {
                state.sessions.remove(&user);
            }
        }
        Ok(was_online && !state.online(user, now))
    }

    async fn status(&self, users: &[UserId]) -> Result<Vec<Status>, PresenceError> {
        let now = Instant::now();
        let state = self.state();
        Ok(users
            .iter()
            .map(|&user_id| Status { user_id, online: state.online(user_id, now) })
            .collect())
    }

    async fn renew_lease(&self, node_id: &str, lease: Duration) -> Result<(), PresenceError> {
        let until = Instant::now() + lease;
        self.state().leases.insert(node_id.to_owned(), until);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::conformance;

    const NODE: &str = "local-node";

    #[tokio::test]
    async fn sessions_come_and_go_on_edges() -> Result<(), PresenceError> {
        conformance::sessions_come_and_go_on_edges(&MemoryPresence::new(NODE), NODE).await
    }

    #[tokio::test]
    async fn a_lapsed_lease_takes_its_users_offline() -> Result<(), PresenceError> {
        conformance::a_lapsed_lease_takes_its_users_offline(&MemoryPresence::new(NODE), NODE).await
    }

    #[tokio::test]
    async fn the_local_node_is_live_from_the_start() -> Result<(), PresenceError> {
        let presence = MemoryPresence::new(NODE);
        assert!(presence.open_session(UserId(1), "s", NODE).await?);
        // A node that never took a lease holds nobody online.
        assert!(!presence.open_session(UserId(2), "s", "stranger").await?);
        let status = presence.status(&[UserId(1), UserId(2)]).await?;
        assert_eq!(status.iter().map(|s| s.online).collect::<Vec<_>>(), [true, false]);
        Ok(())
    }
}
