//! permessage-deflate (RFC 7692): the negotiation in the opening handshake and the codec.
//!
//! What the server does, and why:
//!
//! * It always answers `server_no_context_takeover`: every message it sends is compressed on its
//!   own, with no reference to earlier ones. That is what lets one compressed frame serve every
//!   member of a room who negotiated the same window (encode once, like the plain frame), at
//!   the price of a somewhat lower ratio on a stream of small messages.
//! * It honours `server_max_window_bits` (9 to 15; 8 is declined, since zlib's raw deflate
//!   cannot promise a 256-byte window) and echoes `client_no_context_takeover`.
//! * It inflates what clients send with a context kept per connection (the client chooses
//!   whether to take over its context), and bounds the output: a message that inflates past
//!   the message limit is refused after at most that many bytes ([`Inflater::inflate`]).
//!
//! `negotiate.rs` reads offers and writes the response header; `codec.rs` compresses and
//! inflates messages.

mod codec;
mod negotiate;

pub use codec::{Deflater, InflateError, Inflater};
pub use negotiate::negotiate;

/// What one connection agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The LZ77 window (as a power of two) the server compresses with: 9 to 15.
    pub server_max_window_bits: u8,
    /// The client asked for a window limit, so the response names the one we use.
    pub server_window_requested: bool,
    /// The client said it will not take its context over between messages (echoed back).
    pub client_no_context_takeover: bool,
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response_header(&self) -> String {
        let mut out = String::from("permessage-deflate; server_no_context_takeover");
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if self.server_window_requested {
            out.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
