//! An HTTP request body, read by every route that takes a JSON body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| switchboard_api::fuzzing::http_body(body));
