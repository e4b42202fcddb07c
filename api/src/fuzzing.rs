//! What clients send, parsed the way the server parses it, for the fuzz targets in `fuzz/`. Any
//! input must come back as a value or a typed error; a panic is a bug the fuzzer reports.

/// A WebSocket text frame, read as a socket's session reads it, and the error reply it gets.
pub fn client_frame(text: &str) {
    if let Err((reference, error)) = crate::ws::protocol::parse(text) {
        crate::ws::protocol::error(reference, &error);
    }
}

/// An HTTP request body, read as each route that takes a JSON body reads it.
pub fn http_body(body: &[u8]) {
    crate::routes::read_every_body(body);
}
