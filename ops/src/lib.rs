//! Operator tooling for switchboard, run as subcommands of the `switchboard` binary.
//!
//! - [`rebuild`]: replays the log into a fresh read-model store. The log is the source of
//!   truth, so any read model can be thrown away and rebuilt; this is how.
//! - [`dump`]: prints every read model in a stable text form, so a rebuilt store can be
//!   compared with a live one by a plain `diff`.
//! - [`capacity`]: the seed's capacity tables, computed from the figures `ops/bench.sh` measured.
//! - [`load`]: drives real WebSocket clients against a running node and reports what it held
//!   and how fast, in place of the capacity estimates this project was asked to replace.
//! - [`verify`]: compares two stores table by table, with checksums, and names the first row
//!   that differs.
//! - [`status`]: asks each node of a deployment how it is, and prints the consumer groups' lag.
//! - [`tail`]: prints a topic's events as JSON lines, decoded with their schemas, from either
//!   log: what an operator or analyst reaches for before writing a consumer.
//!
//! Each command's options are a clap [`Args`](clap::Args) struct in its module, so the binary
//! only has to list them.

pub mod capacity;
pub mod dump;
pub mod load;
mod log_source;
pub mod rebuild;
pub mod status;
pub mod tail;
#[cfg(test)]
mod testing;
pub mod verify;
