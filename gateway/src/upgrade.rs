//! The websocket handshake on `/ws`, done on hyper directly rather than through warp's
//! `ws()` filter, so that each socket is built with our own [`WebSocketConfig`]: warp's
//! fixed configuration allocates a 128 KiB read buffer per connection up front, which
//! would make an idle client cost far more than its chat state. The page and the probes
//! stay on warp (see `server.rs`).
//!
//! Before upgrading, the request must be a well-formed websocket handshake, come from an
//! allowed `Origin`, and find the gateway under its connection limit.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::reply::Response;

use crate::connection;
use crate::routes::json_error;
use crate::State;

/// The socket's read buffer, allocated up front for every connection. Ordinary chat frames
/// fit; for a larger frame tungstenite reserves the frame's length once its header is read.
const READ_BUFFER: usize = 1024;
/// Bytes gathered before a write reaches the socket (frames sent together are batched).
const WRITE_BUFFER: usize = 8 * 1024;
/// Bytes that may wait in one socket's write buffer before the client counts as dead.
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// The socket configuration: small buffers, and a hard cap on frames well above
/// `MAX_FRAME`, so an oversized frame gets a `too_large` error and the connection stays
/// usable; only abuse beyond the cap is cut.
pub fn config(max_frame: usize) -> WebSocketConfig {
    let hard_cap = max_frame.saturating_mul(4).max(64 * 1024);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(hard_cap))
        .max_frame_size(Some(hard_cap))
}

/// Answers a request for `/ws`: 101 and a websocket served by [`connection::serve`], or a
/// JSON error saying why not.
pub fn handle(mut request: Request<Incoming>, state: Arc<State>) -> Response {
    let headers = request.headers();
    let Some(key) = handshake_key(request.method(), headers) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "not_a_websocket",
            "GET /ws must be a websocket upgrade (version 13)",
        );
    };
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !state.origins.allows(origin, host) {
        tracing::warn!(origin = ?origin, "refused a websocket from a foreign origin");
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this origin may not open the chat; see ALLOWED_ORIGINS",
        );
    }
    if state.connections.len() >= state.config.max_connections {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this gateway is full; try another",
        );
    }
    let accept = derive_accept_key(key.as_bytes());
    let pending = hyper::upgrade::on(&mut request);
    let config = config(state.config.max_frame);
    // Tracked from now on, so the connection limit counts handshakes in progress too.
    let tracker = state.connections.clone();
    tracker.spawn(async move {
        match pending.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                connection::serve(socket, state).await;
            }
            Err(err) => tracing::debug!(error = %err, "websocket upgrade failed"),
        }
    });
    let mut response = Response::default();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The `Sec-WebSocket-Key` of a valid version-13 upgrade request.
fn handshake_key(method: &hyper::Method, headers: &HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let ok = method == hyper::Method::GET
        && has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
    if !ok {
        return None;
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
}
