//! Folds the switchboard log into read models and presence.
//!
//! The [`Projector`] reads every topic from its checkpoint, decodes each record and hands the
//! batch to a [`ReadModel`](store::ReadModel), which applies it idempotently and moves its
//! checkpoint. [`Progress`] tells anyone waiting on a consistency token how far it has got.

pub mod feed;
pub mod presence;
mod progress;
mod projector;
pub mod redis_client;
// Also for the API's tests, through the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod redis_testing;
pub mod store;

pub use progress::{Behind, Progress};
pub use projector::{GROUP as PROJECTOR_GROUP, PROJECTED_TOPICS, Projector, ProjectorError};
