//! Plain HTTP on the server port: the chat page, health and metrics. Every connection starts
//! here; `GET /ws` with upgrade headers leaves as a WebSocket, `/api/*` as a request of the
//! server API (`api/mod.rs`).

use crate::node::Node;
use chat_wire::deflate::DeflateParams;
use chat_wire::handshake::{http_response, Request};
use chat_wire::protocol::validate_user;

/// The chat page, built into the binary, with its script and styles.
const INDEX_HTML: &str = include_str!("../assets/index.html");
const CHAT_JS: &str = include_str!("../assets/chat.js");
const CHAT_LIVE_JS: &str = include_str!("../assets/chat-live.js");
const CHAT_CSS: &str = include_str!("../assets/chat.css");

/// What to do with a request head.
pub enum Route {
    /// Write this response and close.
    Respond(Vec<u8>),
    /// Upgrade: the `Sec-WebSocket-Accept` value, the user, and the permessage-deflate
    /// parameters if the client offered it and the server takes it.
    WebSocket {
        accept: String,
        user: String,
        deflate: Option<DeflateParams>,
    },
    /// A server API request (authorised), served with its body by `api::serve`.
    Api(crate::api::Call),
}

pub fn route(req: &Request<'_>, node: &Node) -> Route {
    match page(req, node) {
        // HEAD: the same status and headers (Content-Length included), no body.
        Route::Respond(mut bytes) if req.method == "HEAD" => {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                bytes.truncate(end + 4);
            }
            Route::Respond(bytes)
        }
        other => other,
    }
}

fn page(req: &Request<'_>, node: &Node) -> Route {
    if req.path == "/ws" {
        return websocket(req, node);
    }
    if req.path.starts_with("/api/") {
        return match crate::api::route(req, node) {
            Ok(call) => Route::Api(call),
            Err(answer) => Route::Respond(answer),
        };
    }
    if req.method != "GET" && req.method != "HEAD" {
        return text(405, "only GET is served here\n");
    }
    match req.path {
        "/" | "/index.html" => Route::Respond(http_response(
            200,
            "text/html; charset=utf-8",
            INDEX_HTML.as_bytes(),
        )),
        "/chat.js" => asset("text/javascript; charset=utf-8", CHAT_JS),
        "/chat-live.js" => asset("text/javascript; charset=utf-8", CHAT_LIVE_JS),
        "/chat.css" => asset("text/css; charset=utf-8", CHAT_CSS),
        "/healthz" if node.draining() => text(503, "draining\n"),
        "/healthz" => text(200, "ok\n"),
        "/metrics" => Route::Respond(http_response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            node.metrics.render(node.draining()).as_bytes(),
        )),
        _ => text(404, "not found\n"),
    }
}

fn websocket(req: &Request<'_>, node: &Node) -> Route {
    if !req.wants_websocket() {
        return text(426, "this endpoint speaks WebSocket only\n");
    }
    if req.header("sec-websocket-version") != Some("13") {
        // RFC 6455 section 4.4: refuse with the versions we speak (426 carries the header).
        return text(426, "Sec-WebSocket-Version must be 13\n");
    }
    let accept = match req.websocket_accept() {
        Ok(a) => a,
        Err(why) => return text(400, &format!("{why}\n")),
    };
    if !node.config.allowed_origins.is_empty() {
        match req.header("origin") {
            Some(origin) if !node.config.allowed_origins.iter().any(|o| o == origin) => {
                return text(403, "origin not allowed\n");
            }
            None if node.config.require_origin => {
                return text(403, "an Origin header is required\n");
            }
            _ => {}
        }
    }
    let user = match &node.auth {
        // With a JWT secret the token names the user; `?user=` is ignored.
        Some(auth) => match req.query_param("token").map(|t| auth.user(&t)) {
            Some(Ok(user)) => user,
            Some(Err(why)) => return text(401, &format!("{why}\n")),
            None => return text(401, "missing ?token=<JWT>\n"),
        },
        None => match req.query_param("user") {
            Some(u) => u.into_owned(),
            None => return text(400, "missing ?user=<id>\n"),
        },
    };
    if let Err(why) = validate_user(&user) {
        let status = if node.auth.is_some() { 401 } else { 400 };
        return text(status, &format!("{why}\n"));
    }
    if node.draining() {
        return text(503, "draining: connect to another node\n");
    }
    if node.open_connections() >= node.config.max_connections {
        return text(503, "connection limit reached: connect to another node\n");
    }
    let deflate = node.config.deflate.then(|| req.deflate_offer()).flatten();
    Route::WebSocket {
        accept,
        user,
        deflate,
    }
}

/// A built-in page asset; the same headers as the page (`http_response`: `Cache-Control: no-store`).
fn asset(content_type: &str, body: &str) -> Route {
    Route::Respond(http_response(200, content_type, body.as_bytes()))
}

fn text(status: u16, body: &str) -> Route {
    Route::Respond(http_response(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes(),
    ))
}
