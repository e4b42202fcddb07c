//! An event as the log holds it (a registry-framed Avro datum): decoded or refused with an error,
//! and an event that decodes encodes to a frame that decodes and encodes to the same bytes.
//! (Bytes, not events, are compared: a location may hold a NaN, which equals nothing.)
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchboard_schemas::Codec;

static CODEC: LazyLock<Codec> = LazyLock::new(Codec::new);

fuzz_target!(|frame: &[u8]| {
    let Ok(event) = CODEC.decode(frame) else {
        return;
    };
    let encoded = CODEC.encode(&event).expect("a decoded event encodes");
    let decoded = CODEC.decode(&encoded).expect("an encoded event decodes");
    assert_eq!(CODEC.encode(&decoded).expect("it encodes again"), encoded);
});
