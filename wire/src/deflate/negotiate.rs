//! Reading a client's `Sec-WebSocket-Extensions` offers (RFC 7692 section 5 and 7.1).
//!
//! A client may offer permessage-deflate several times, with different parameters, in order of
//! preference, over one or several header lines. The server takes the first offer it can
//! honour and declines the others; an offer is declined (never failed) when it has an unknown
//! or repeated parameter or a value out of range. Other extensions are ignored.

use super::DeflateParams;

/// The first acceptable permessage-deflate offer among the header values, or `None` (the
/// connection then goes uncompressed).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<DeflateParams> {
    header_values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

/// One offer (`name; param; param=value`), if it is permessage-deflate and acceptable.
fn accept_offer(offer: &str) -> Option<DeflateParams> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut params = DeflateParams {
        server_max_window_bits: 15,
        server_window_requested: false,
        client_no_context_takeover: false,
    };
    let mut seen: Vec<String> = Vec::new();
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
            None => (part, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => {}
            ("client_no_context_takeover", None) => params.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => {
                // 8 is valid on the wire, but zlib's raw deflate cannot keep to a 256-byte
                // window: decline rather than send what the client cannot inflate.
                let bits = window_bits(v).filter(|&b| b >= 9)?;
                params.server_max_window_bits = bits;
                params.server_window_requested = true;
            }
            // We inflate with the largest window, which reads any smaller one: nothing to
            // answer (section 7.1.2.2), but the value must still be valid.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(params)
}

/// A quoted-string value (section 7.1: accepted when parsing).
fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// A window size: 8 to 15, digits only, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}
