//! Arbitrary request heads: parsing, the upgrade checks and query decoding must never panic.
#![no_main]

use chat_wire::handshake::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, len))) = parse_request(data) {
        assert!(len <= data.len());
        let _ = req.wants_websocket();
        let _ = req.websocket_accept();
        let _ = req.query_param("user");
        let _ = req.query_param("token");
        let _ = req.header("origin");
    }
});
