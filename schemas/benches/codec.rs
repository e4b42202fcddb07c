//! How long encoding and decoding one event takes, for every event type.
//!
//! Every event is encoded once, when it is appended, and decoded by each reader of its topic:
//! the projector, the fan-out, replays. A rebuild decodes the whole log, so the decode column
//! bounds how fast one core replays it.
//!
//! Run with `cargo bench -p switchboard-schemas --bench codec`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use switchboard_schemas::{Codec, Event, EventMeta, UserId, samples};

const RUN_FOR: Duration = Duration::from_millis(300);

fn main() {
    let codec = Codec::new();
    println!("{:<20} | {:>5} | {:>9} | {:>9}", "record", "bytes", "encode", "decode");
    for payload in samples::payloads() {
        let event = Event {
            meta: EventMeta {
                event_id: "0b7c6a5e-8d4f-4b7e-9f57-6f1f3c1f2a11".into(),
                occurred_at: 1_800_000_000_000,
                actor: Some(UserId(1_234_567_890_123)),
                trace_id: "5f0c2d7a-3b1e-4c8f-a2d9-7e6b1c0f4a33".into(),
            },
            payload,
        };
        let frame = codec.encode(&event).expect("samples encode");
        let encode = time_each(|| codec.encode(black_box(&event)).expect("samples encode"));
        let decode = time_each(|| codec.decode(black_box(&frame)).expect("frames decode"));
        println!(
            "{:<20} | {:>5} | {:>6.0} ns | {:>6.0} ns",
            event.payload.record_name(),
            frame.len(),
            encode,
            decode
        );
    }
}

/// Runs `work` over and over for [`RUN_FOR`]; returns the mean time of one run, in nanoseconds.
fn time_each<T>(mut work: impl FnMut() -> T) -> f64 {
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < RUN_FOR {
        for _ in 0..256 {
            black_box(work());
        }
        runs += 256;
    }
    start.elapsed().as_nanos() as f64 / runs as f64
}
