//! The websocket handshake on `/ws`, done on hyper directly rather than through warp's
//! `ws()` filter: warp's websocket allocates a 128 KiB read buffer per connection up front
//! and encodes every message per socket, while our own layer (`ws`) keeps no buffers for an
//! idle client and shares each event's encoded frame between sockets. After the 101 the
//! TCP stream is taken back from hyper and split into our reader and writer. The page and
//! the probes stay on warp (see `server.rs`).
//!
//! Before upgrading, the request must be a well-formed websocket handshake, come from an
//! allowed `Origin`, and find the gateway under its connection limit and its client's
//! address under `MAX_CONNECTIONS_PER_IP` (see `addresses.rs`).

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use warp::reply::Response;

use crate::{addresses, connection, ws, State};
use chat_core::probes::json_error;

/// The longest message read at all: well above `MAX_FRAME`, so an oversized message gets a
/// `too_large` error and the connection stays usable; only abuse beyond this cap is cut
/// (close code 1009).
fn max_message(max_frame: usize) -> usize {
    max_frame.saturating_mul(4).max(64 * 1024)
}

/// Answers a request for `/ws`: 101 and a websocket served by [`connection::serve`], or a
/// JSON error saying why not.
pub fn handle(mut request: Request<Incoming>, state: Arc<State>, peer: IpAddr) -> Response {
    let headers = request.headers();
    let key = match handshake_key(request.method(), headers) {
        Ok(key) => key,
        Err(refusal) => return refusal.response(),
    };
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !state.origins.allows(origin, host) {
        tracing::warn!(origin = ?origin, "refused a websocket from a foreign origin");
        return Refusal::ForeignOrigin.response();
    }
    if state.connections.len() >= state.max_connections {
        metrics::counter!("chat_connections_refused_total", "reason" => "full").increment(1);
        return Refusal::Full.response();
    }
    let per_address = match state.config.max_connections_per_ip {
        0 => None,
        max => {
            let client = addresses::client_ip(peer, headers, &state.config.trusted_proxies);
            match state.per_address.try_enter(client, max) {
                Some(guard) => Some(guard),
                None => {
                    metrics::counter!("chat_connections_refused_total", "reason" => "per_address")
                        .increment(1);
                    tracing::info!(%client, max, "refused a websocket over the per-address cap");
                    return Refusal::AddressFull.response();
                }
            }
        }
    };
    let accept = ws::accept_key(key.as_bytes());
    let pending = hyper::upgrade::on(&mut request);
    let max_message = max_message(state.config.max_frame);
    // Tracked from now on, so the connection limit counts handshakes in progress too.
    let tracker = state.connections.clone();
    tracker.spawn(async move {
        // Counted against the client's address for as long as the websocket lives.
        let _per_address = per_address;
        match pending.await {
            // The server serves plain TCP streams, so the upgraded connection is one.
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    let (read, write) = parts.io.into_inner().into_split();
                    let reader = ws::Reader::new(read, parts.read_buf, max_message);
                    connection::serve(reader, ws::Writer::new(write), state).await;
                }
                Err(_) => tracing::error!("an upgraded connection is not a TCP stream"),
            },
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

/// Why a request for `/ws` is not upgraded. Each answer follows RFC 6455 section 4.2.2
/// (and 4.4 for versions): an HTTP error status, the headers that tell a client what would
/// work, and our JSON error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Not `GET`: 405 with `Allow: GET`.
    Method,
    /// No `Upgrade: websocket` / `Connection: Upgrade`: 426 with `Upgrade: websocket`.
    NotAnUpgrade,
    /// A websocket version other than 13: 426 with `Sec-WebSocket-Version: 13`.
    Version,
    /// No `Host`, or no `Sec-WebSocket-Key` that is 16 bytes in base64: 400.
    Malformed(&'static str),
    /// An `Origin` that may not open the chat: 403.
    ForeignOrigin,
    /// The gateway holds `MAX_CONNECTIONS`: 503 with `Retry-After`.
    Full,
    /// The client's address holds `MAX_CONNECTIONS_PER_IP`: 503 with `Retry-After`.
    AddressFull,
}

/// Seconds a refused client is asked to wait before trying a full gateway again.
const RETRY_AFTER_SECS: &str = "5";

impl Refusal {
    fn response(self) -> Response {
        let (status, code, message) = match self {
            Refusal::Method => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "a websocket handshake is a GET",
            ),
            Refusal::NotAnUpgrade => (
                StatusCode::UPGRADE_REQUIRED,
                "not_a_websocket",
                "GET /ws must be a websocket upgrade (version 13)",
            ),
            Refusal::Version => (
                StatusCode::UPGRADE_REQUIRED,
                "unsupported_websocket_version",
                "only websocket version 13 is supported",
            ),
            Refusal::Malformed(what) => (StatusCode::BAD_REQUEST, "bad_handshake", what),
            Refusal::ForeignOrigin => (
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "this origin may not open the chat; see ALLOWED_ORIGINS",
            ),
            Refusal::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "this gateway is full; try another",
            ),
            Refusal::AddressFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections_from_address",
                "too many connections from your address; close some and try again",
            ),
        };
        let mut response = json_error(status, code, message);
        let headers = response.headers_mut();
        match self {
            Refusal::Method => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            Refusal::NotAnUpgrade => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            Refusal::Version => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            Refusal::Full | Refusal::AddressFull => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            Refusal::Malformed(_) | Refusal::ForeignOrigin => {}
        }
        response
    }
}

/// The `Sec-WebSocket-Key` of a valid version-13 upgrade request (RFC 6455 section
/// 4.2.1), or why the request is not one.
fn handshake_key(method: &hyper::Method, headers: &HeaderMap) -> Result<String, Refusal> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if method != hyper::Method::GET {
        return Err(Refusal::Method);
    }
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return Err(Refusal::NotAnUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Refusal::Version);
    }
    if !headers.contains_key(header::HOST) {
        return Err(Refusal::Malformed("the request has no Host header"));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|key| is_websocket_key(key))
        .map(str::to_owned)
        .ok_or(Refusal::Malformed(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ))
}

/// Whether `key` is base64 (with padding) of exactly 16 bytes: 22 characters and `==`.
fn is_websocket_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes.ends_with(b"==")
        && bytes[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
        // The last character before the padding carries 2 of the 128 bits and 4 zero bits.
        && b"AQgw".contains(&bytes[21])
}
