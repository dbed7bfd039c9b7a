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

use crate::close::Close;
use crate::liveness::Heartbeat;
use crate::outbox;
use crate::protocol::{self, ErrorCode, LimitsView, Rejection, ServerMessage};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::rooms::Outbound;
use crate::ws::{self, frame, Incoming, ReadError};
use crate::State;
use commands::{Session, Speaker};

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
    let coalescing = writer::Coalescing {
        delay: state.config.write_delay(),
        max_frames: state.config.write_max_messages,
    };
    let writer = tokio::spawn(writer::write_loop(
        writer,
        inbox,
        kick.clone(),
        heartbeat.clone(),
        coalescing,
    ));
    let mut session = Session::new(conn, state.clone(), outbox, kick.clone());
    session
        .send(ServerMessage::Hello {
            gateway: &state.gateway_id,
            auth: if state.verifier.is_some() {
                "token"
            } else {
                "open"
            },
            limits: LimitsView {
                max_text: state.config.max_text,
                max_name: state.config.max_name,
                max_frame: state.config.max_frame,
            },
        })
        .await;

    let _connected = ConnectedGauge::new();
    let mut limiter = RateLimiter::new(state.config.rate_limit, state.config.rate_burst);
    let connected_at = tokio::time::Instant::now();
    let close = loop {
        let (deadline, expired) = auth_deadline(&session.speaker, connected_at, &state);
        let incoming = tokio::select! {
            _ = state.shutdown.cancelled() => break Close::RESTART,
            _ = kick.cancelled() => break kick_close(&heartbeat),
            _ = tokio::time::sleep_until(deadline), if expired.is_some() => {
                if let Some(close) = expired {
                    let reason = if close == Close::TOKEN_EXPIRED { "expired" } else { "missing" };
                    metrics::counter!("chat_auth_refused_total", "reason" => reason).increment(1);
                    break close;
                }
                continue;
            }
            incoming = reader.next() => incoming,
        };
        // Any frame at all, pongs included, proves the client is there.
        heartbeat.seen();
        let text = match incoming {
            Ok(Some(Incoming::Text(text))) => Some(text),
            Ok(Some(Incoming::Binary(_))) => None,
            Ok(Some(Incoming::Ping(payload))) => {
                let _ = session
                    .outbox
                    .send(Outbound::Encoded(Box::new(frame::pong(&payload))))
                    .await;
                continue;
            }
            Ok(Some(Incoming::Pong)) => continue,
            Ok(Some(Incoming::Close(_)) | None) => break Close::NORMAL,
            Err(ReadError::Frame(err)) => {
                tracing::debug!(error = %err, "closing a websocket that broke the protocol");
                break err.close();
            }
            Err(ReadError::Io(err)) => {
                tracing::debug!(error = %err, "websocket read failed");
                break Close::NORMAL;
            }
        };
        match limiter.check() {
            Verdict::Allow => {}
            Verdict::Limited => {
                metrics::counter!("chat_rate_limited_total").increment(1);
                session
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
                tracing::warn!(conn = session.conn, "disconnecting a flooding client");
                metrics::counter!("chat_clients_disconnected_total", "reason" => "flood")
                    .increment(1);
                break Close::FLOODING;
            }
        }
        let anonymous = matches!(session.speaker, Speaker::Anonymous);
        if let Some(text) = text {
            match protocol::parse(&text, &state.limits) {
                Ok(protocol::Command::Auth { token }) if state.verifier.is_some() => {
                    if let Err(close) = session.authenticate(&token).await {
                        break close;
                    }
                }
                // Token mode: nothing is done for a connection that has not said who it is.
                _ if anonymous => {
                    metrics::counter!("chat_auth_refused_total", "reason" => "missing")
                        .increment(1);
                    break Close::AUTH_REQUIRED;
                }
                // Boxed: the state of a join or say is then allocated only while it runs,
                // instead of enlarging every idle connection's task by its size.
                Ok(command) => Box::pin(session.handle(command)).await,
                Err(rejection) => session.reject(rejection).await,
            }
        } else if anonymous {
            break Close::AUTH_REQUIRED;
        } else {
            session
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
    Box::pin(finish(session, reader, writer, close)).await;
}

/// When the connection's identity runs out, and the close then: a token mode connection
/// that has not authenticated within `AUTH_TIMEOUT_MS`, or whose token expired more than
/// `AUTH_GRACE_MS` ago. Guests never run out.
fn auth_deadline(
    speaker: &Speaker,
    connected_at: tokio::time::Instant,
    state: &crate::State,
) -> (tokio::time::Instant, Option<Close>) {
    let now = tokio::time::Instant::now();
    match speaker {
        Speaker::Guest => (now, None),
        Speaker::Anonymous => (
            connected_at + std::time::Duration::from_millis(state.config.auth_timeout_ms),
            Some(Close::AUTH_REQUIRED),
        ),
        Speaker::Verified(identity) => {
            let left = (identity.expires_at - chrono::Utc::now())
                .to_std()
                .unwrap_or_default();
            let grace = std::time::Duration::from_millis(state.config.auth_grace_ms);
            (now + left + grace, Some(Close::TOKEN_EXPIRED))
        }
    }
}

/// The close for a kicked connection: it did not answer a ping, or it
/// could not keep up.
fn kick_close(heartbeat: &Heartbeat) -> Close {
    if heartbeat.timed_out() {
        Close::PING_TIMEOUT
    } else {
        Close::TOO_SLOW
    }
}

/// Ends a connection: leaves its rooms, queues the close frame behind everything already
/// queued, waits for the writer and, when the gateway closed, for the client's close.
async fn finish(
    mut session: Session,
    mut reader: ws::Reader,
    writer: tokio::task::JoinHandle<()>,
    close: Close,
) {
    let kick = session.kick.clone();
    session.disconnect().await;
    // The close frame goes through the queue, after everything already in it; a client
    // whose queue is stuck is simply cut off.
    if session
        .outbox
        .send_timeout(Outbound::Close(Box::new(close)), CLOSE_GRACE)
        .await
        .is_err()
    {
        kick.cancel();
    }
    drop(session);
    let _ = writer.await;
    if close.code != Close::NORMAL.code && !kick.is_cancelled() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, R>(_f: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every idle client costs its task's future for as long as it is connected: awaiting
    /// a large future inline (as `authenticate` once awaited `handle`) made each one 5.8 KB
    /// and idle memory per client went from 7.6 to 11.6 KiB. Box the rare, large paths.
    #[test]
    fn a_connections_task_stays_small_so_idle_clients_stay_cheap() {
        let size = returned_size(serve);
        assert!(
            size <= 2048,
            "connection::serve's future is {size} bytes: a large future awaited inline? \
             Box::pin it (see Session::authenticate)"
        );
    }
}
