//! Folds the switchboard log into read models and presence.
//!
//! The [`Projector`] reads every topic from its checkpoint, decodes each record and hands the
//! batch to a [`ReadModel`](store::ReadModel), which applies it idempotently and moves its
//! checkpoint. [`Progress`] tells anyone waiting on a consistency token how far it has got.

pub mod feed;
pub mod presence;
mod progress;
mod projector;
#[cfg(test)]
mod redis_testing;
pub mod store;

pub use progress::{Behind, Progress};
pub use projector::{PROJECTED_TOPICS, Projector};
