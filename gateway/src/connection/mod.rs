//! One websocket client, from `hello` to its close. [`serve`] is the reader loop: it checks
//! liveness and the rate limit, parses each frame and hands the command to the handlers
//! ([`commands`]); the writer ([`writer`]) owns the socket's sending half and alone decides
//! what the client sees and in which order. A join's history is loaded beside them
//! ([`history`]) and merged with live events by pure functions ([`catch_up`]).

pub(crate) mod catch_up;
mod commands;
mod history;
mod writer;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::liveness::Heartbeat;
use crate::outbox;
use crate::protocol::{self, ErrorCode, LimitsView, Rejection, ServerFrame};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::rooms::Outbound;
use crate::ws::{self, frame, Incoming, ReadError};
use crate::State;
use commands::Client;

/// Close code when the gateway shuts down: clients reconnect elsewhere.
const CLOSE_RESTART: u16 = 1012;
/// Close code for a client that kept flooding after `rate_limited` errors.
const CLOSE_POLICY: u16 = 1008;
/// Close code for a client whose queue overflowed; it may reconnect and resume.
const CLOSE_SLOW: u16 = 4008;
const REASON_SLOW: &str = "too slow: reconnect and resume with since";
/// Close code for a client that answered no ping within `PING_TIMEOUT_MS`.
const CLOSE_PING_TIMEOUT: u16 = 4009;
const REASON_PING_TIMEOUT: &str = "ping timeout: reconnect and resume with since";
/// How long the final close frame may take to be queued before the socket is just dropped.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a kicked client's socket may take to accept the 4008 close frame.
const KICK_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// Serves one websocket until the client leaves, the gateway shuts down, or the client is
/// too slow to keep up.
pub async fn serve(mut reader: ws::Reader, writer: ws::Writer, state: Arc<State>) {
    let (outbox, inbox) = outbox::channel(state.config.client_queue.max(16));
    let kick = CancellationToken::new();
    let conn = state.rooms.next_conn_id();
    let heartbeat = state.liveness.add(conn, outbox.clone(), kick.clone());
    let writer = tokio::spawn(writer::write_loop(
        writer,
        inbox,
        kick.clone(),
        heartbeat.clone(),
    ));
    let mut client = Client::new(conn, state.clone(), outbox, kick.clone());
    client
        .send(ServerFrame::Hello {
            gateway: &state.gateway_id,
            limits: LimitsView {
                max_text: state.config.max_text,
                max_name: state.config.max_name,
                max_frame: state.config.max_frame,
            },
        })
        .await;

    let _connected = ConnectedGauge::new();
    let mut limiter = RateLimiter::new(state.config.rate_limit, state.config.rate_burst);
    let (code, reason) = loop {
        let incoming = tokio::select! {
            _ = state.shutdown.cancelled() => break (CLOSE_RESTART, "service restart"),
            _ = kick.cancelled() => break kick_close(&heartbeat),
            incoming = reader.next() => incoming,
        };
        // Any frame at all, pongs included, proves the client is there.
        heartbeat.seen();
        let text = match incoming {
            Ok(Some(Incoming::Text(text))) => Some(text),
            Ok(Some(Incoming::Binary(_))) => None,
            Ok(Some(Incoming::Ping(payload))) => {
                let _ = client
                    .outbox
                    .send(Outbound::Raw(Box::new(frame::pong(&payload))))
                    .await;
                continue;
            }
            Ok(Some(Incoming::Pong)) => continue,
            Ok(Some(Incoming::Close(_)) | None) => break (1000, ""),
            Err(ReadError::Frame(err)) => {
                tracing::debug!(error = %err, "closing a websocket that broke the protocol");
                break (err.close_code(), err.close_reason());
            }
            Err(ReadError::Io(err)) => {
                tracing::debug!(error = %err, "websocket read failed");
                break (1000, "");
            }
        };
        match limiter.check() {
            Verdict::Allow => {}
            Verdict::Limited => {
                metrics::counter!("chat_rate_limited_total").increment(1);
                client
                    .reject(Rejection::new(
                        None,
                        ErrorCode::RateLimited,
                        format!(
                            "too many messages: at most {} per second",
                            state.config.rate_limit
                        ),
                    ))
                    .await;
                continue;
            }
            Verdict::Flooding => {
                tracing::warn!(conn = client.conn, "disconnecting a flooding client");
                metrics::counter!("chat_clients_disconnected_total", "reason" => "flood")
                    .increment(1);
                break (CLOSE_POLICY, "flooding: too many messages");
            }
        }
        if let Some(text) = text {
            match protocol::parse(&text, &state.limits) {
                // Boxed: the state of a join or say is then allocated only while it runs,
                // instead of enlarging every idle connection's task by its size.
                Ok(command) => Box::pin(client.handle(command)).await,
                Err(rejection) => client.reject(rejection).await,
            }
        } else {
            client
                .reject(Rejection::new(
                    None,
                    ErrorCode::UnsupportedFrame,
                    "send JSON text frames, not binary",
                ))
                .await;
        }
    };

    state.liveness.remove(conn);
    drop(heartbeat);
    // Boxed: the closing steps are allocated only when they run, instead of enlarging
    // every idle connection's task by their size.
    Box::pin(finish(client, reader, writer, code, reason)).await;
}

/// The close code and reason for a kicked connection: it did not answer a ping, or it
/// could not keep up.
fn kick_close(heartbeat: &Heartbeat) -> (u16, &'static str) {
    if heartbeat.timed_out() {
        (CLOSE_PING_TIMEOUT, REASON_PING_TIMEOUT)
    } else {
        (CLOSE_SLOW, REASON_SLOW)
    }
}

/// Ends a connection: leaves its rooms, queues the close frame behind everything already
/// queued, waits for the writer and, when the gateway closed, for the client's close.
async fn finish(
    mut client: Client,
    mut reader: ws::Reader,
    writer: tokio::task::JoinHandle<()>,
    code: u16,
    reason: &'static str,
) {
    let kick = client.kick.clone();
    client.disconnect().await;
    // The close frame goes through the queue, after everything already in it; a client
    // whose queue is stuck is simply cut off.
    let close = Outbound::Close(Box::new((code, reason)));
    if client
        .outbox
        .send_timeout(close, CLOSE_GRACE)
        .await
        .is_err()
    {
        kick.cancel();
    }
    drop(client);
    let _ = writer.await;
    if code != 1000 && !kick.is_cancelled() {
        // We closed: finish the closing handshake by reading (and dropping) what the client
        // still sends until its close arrives. Closing a socket with unread input resets
        // the connection, and the client would lose our close frame and its code.
        let drain = async {
            while let Ok(Some(incoming)) = reader.next().await {
                if matches!(incoming, Incoming::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    }
}

/// Counts the connection in `chat_clients_connected` for as long as it lives.
struct ConnectedGauge;

impl ConnectedGauge {
    fn new() -> Self {
        metrics::gauge!("chat_clients_connected").increment(1.0);
        Self
    }
}

impl Drop for ConnectedGauge {
    fn drop(&mut self) {
        metrics::gauge!("chat_clients_connected").decrement(1.0);
    }
}
