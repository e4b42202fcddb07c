//! The switchboard write path.
//!
//! Commands come in from the API already authorised; here they are validated for shape, turned
//! into events and appended to the [`Log`](log::Log). The log is the source of truth: an append
//! is acknowledged only once it is durable, and everything else — read models, presence,
//! pushes to sockets — is derived from it.

mod commands;
pub mod embedded_db;
pub mod ids;
pub mod log;
pub mod url;

pub use commands::{Ingest, IngestError, Limits, Logging, Origin, now_ms};
