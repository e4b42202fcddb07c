//! A WebSocket text frame from a client: parsed into an op, or answered with a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| switchboard_api::fuzzing::client_frame(text));
