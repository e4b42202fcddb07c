//! Claims on `client_msg_id`s, and when they are let go.
//!
//! A send claims its sender, conversation and `client_msg_id` in the coordination backend before
//! anything else, so that a retry arriving while the first send is in flight gets the first
//! send's answer rather than a second message. Once the read models hold the message, a retry
//! finds it there instead, and the claim has done its job: [`Settling`] keeps each finished
//! send's claim until the projection has passed its log position, then releases it.
//!
//! A send whose node dies mid-send leaves its claim in flight; the first retry to see it unchanged
//! for [`IN_FLIGHT`] takes it over, and waits for the read models to hold whatever that node
//! logged before it checks them.
//!
//! Claims therefore number the sends in flight or not yet projected. Kept for the whole retry
//! window instead, they piled up a day's sends — in process memory, or in Redis — and every
//! doubling of the in-memory map rehashed and swept all of them while sends waited on its lock.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use switchboard_ingest::log::Cursor;
use switchboard_projector::Progress;
use switchboard_schemas::{ConversationId, Position, UserId};
use tokio_util::sync::CancellationToken;

use crate::coordination::Coordination;

/// How long a finished send's claim lives at most: the backstop for claims whose node stopped
/// before it could release them.
pub const RETRY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a send in flight may leave its claim unchanged before a retry takes it for abandoned:
/// its node died mid-send. The sending node writes a new value every third of this while the
/// send lasts, so a retry that sees one value for this long takes the claim over.
///
/// The claim itself lives the whole retry window from the start. One that merely expired would
/// leave nothing behind, and a retry arriving after that could not tell a send that died after
/// logging (so whose message the read models may not hold yet) from one never sent.
pub const IN_FLIGHT: Duration = Duration::from_secs(5);

/// How often projected sends have their claims released.
const RELEASE_INTERVAL: Duration = Duration::from_millis(100);

/// The claim of one sender's `client_msg_id` in one conversation.
pub fn key(sender: UserId, conversation: ConversationId, client_msg_id: &str) -> String {
    format!("send:{sender}:{conversation}:{client_msg_id}")
}

/// Keeps a send's claim (when it holds one) visibly alive while the send lasts, so that retries
/// see a slow send alive and a dead node's send abandoned.
pub struct InFlight {
    claim: Option<String>,
    value: String,
    renewals: u64,
}

impl InFlight {
    /// For the send holding `claim` with the in-flight `value`.
    pub fn new(claim: Option<String>, value: String) -> InFlight {
        InFlight { claim, value, renewals: 0 }
    }

    /// Runs one step of the send, renewing the claim every third of [`IN_FLIGHT`] until it ends.
    pub async fn during<T>(
        &mut self,
        claims: &dyn Coordination,
        step: impl Future<Output = T>,
    ) -> T {
        let Some(claim) = &self.claim else { return step.await };
        let mut step = std::pin::pin!(step);
        loop {
            tokio::select! {
                done = &mut step => return done,
                () = tokio::time::sleep(IN_FLIGHT / 3) => {
                    self.renewals += 1;
                    let renewed = in_flight(&self.value, self.renewals);
                    if let Err(error) = claims.update_claim(claim, &renewed, RETRY_WINDOW).await {
                        tracing::warn!(%error, "could not renew the claim of a send in flight");
                    }
                }
            }
        }
    }
}

/// The value of an in-flight claim at its `renewal`th renewal: a new value each time, and never
/// a finished send's, which holds a space.
fn in_flight(value: &str, renewal: u64) -> String {
    format!("{value}+{renewal}")
}

/// Claims of finished sends, in the order they were logged, waiting for the projection.
#[derive(Default)]
pub struct Settling {
    pending: Mutex<VecDeque<(Position, String)>>,
}

impl Settling {
    /// Keeps `claim` until the read models hold the event at `position`.
    pub fn hold(&self, position: Position, claim: String) {
        self.pending().push_back((position, claim));
    }

    /// The claims whose events `projected` has passed. Taken from the front only: partitions
    /// move along together, and a claim left a little longer behind a slower one is harmless.
    fn take_projected(&self, projected: &Cursor) -> Vec<String> {
        let mut pending = self.pending();
        let settled = pending.iter().take_while(|(at, _)| projected.has_passed(*at)).count();
        pending.drain(..settled).map(|(_, claim)| claim).collect()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<(Position, String)>> {
        // Every change leaves the queue whole, so one a panicking holder left is still valid.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Releases the claims of sends the read models have caught up with, as `progress` tells,
/// until `stop`.
pub async fn release_projected(
    settling: &Settling,
    progress: &Progress,
    claims: &dyn Coordination,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(RELEASE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let settled = settling.take_projected(&progress.current());
        if settled.is_empty() {
            continue;
        }
        let keys: Vec<&str> = settled.iter().map(String::as_str).collect();
        if let Err(error) = claims.release_claims(&keys).await {
            // Harmless: they expire at the end of the retry window.
            tracing::debug!(%error, claims = keys.len(), "could not release settled claims");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_schemas::Topic;

    fn at(partition: u32, offset: u64) -> Position {
        Position { topic: Topic::Messages, partition, offset }
    }

    #[test]
    fn claims_are_released_once_projected_in_log_order() {
        let settling = Settling::default();
        settling.hold(at(0, 4), "a".into());
        settling.hold(at(1, 9), "b".into());
        settling.hold(at(0, 5), "c".into());
        let mut projected = Cursor::default();
        assert!(settling.take_projected(&projected).is_empty());
        projected.set(Topic::Messages, 0, 6);
        assert_eq!(settling.take_projected(&projected), ["a"], "b's partition is behind");
        projected.set(Topic::Messages, 1, 10);
        assert_eq!(settling.take_projected(&projected), ["b", "c"]);
        assert!(settling.take_projected(&projected).is_empty());
    }
}
