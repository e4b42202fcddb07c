//! The switchboard API node: the HTTP and WebSocket server, auth, limits, delivery to sockets,
//! calls and media, assembled by [`server::serve`]. The `switchboard` binary runs it; the fuzz
//! targets in `fuzz/` reach its parsers through [`fuzzing`].

mod auth;
mod backends;
mod calls;
mod chat;
mod claims;
pub mod config;
mod coordination;
pub mod description;
mod error;
pub mod fuzzing;
mod hub;
mod lane_thread;
mod limits;
mod locations;
mod media;
mod node_lease;
mod routes;
pub mod server;
mod socketio;
mod state;
mod sync;
pub mod telemetry;
mod ws;
