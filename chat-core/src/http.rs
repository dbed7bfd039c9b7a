//! The HTTP accept loop every service runs (the gateway's page, probes and websocket
//! upgrades; the archiver's API; the logger's probes), written once so that all three hold
//! the same line against hostile or broken clients:
//!
//! - **Handshake deadline**: a request's headers must arrive within `HANDSHAKE_TIMEOUT_MS`
//!   (hyper's header-read timeout, which also closes keep-alive connections idle that long);
//!   for `/ws` the 101 is answered as soon as the headers are in, so the whole upgrade is
//!   bounded by it.
//! - **In-flight cap**: at most `MAX_HANDSHAKES` connections may be in the HTTP phase at
//!   once (a websocket leaves it at its 101). A new connection beyond the cap evicts the
//!   *oldest* one: a slowloris holding every slot loses them one by one to real clients,
//!   whose handshakes take milliseconds, and an evicted socket costs nothing after it is
//!   closed.
//! - **Out of file descriptors**: `accept` failing with EMFILE/ENFILE does not touch the
//!   connections already served; the loop backs off (10 ms doubling to 1 s), counts
//!   `chat_accept_errors_total{error}`, and warns at most once a second.
//!
//! hyper-util's `GracefulShutdown` is not used: it only watches `http1::Connection`, not
//! the `UpgradeableConnection` the gateway needs for websockets, so the one graceful path
//! here covers both kinds.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long requests in flight may take to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// First pause after a failed `accept`; doubled up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Settings of the HTTP listener every service takes, as flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Longest time a client may take to send a request's headers (for `/ws`: the whole
    /// websocket handshake), in milliseconds; then the socket is closed. Also closes
    /// keep-alive connections idle that long.
    #[arg(long, env = "HANDSHAKE_TIMEOUT_MS", default_value_t = 5000)]
    pub handshake_timeout_ms: u64,
    /// Most connections in the HTTP phase at once (not counting upgraded websockets). A new
    /// one beyond it closes the oldest.
    #[arg(long, env = "MAX_HANDSHAKES", default_value_t = 256)]
    pub max_handshakes: usize,
}

impl Default for HttpArgs {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 5000,
            max_handshakes: 256,
        }
    }
}

impl HttpArgs {
    /// Refuses settings that cannot work, naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.handshake_timeout_ms >= 100,
            "HANDSHAKE_TIMEOUT_MS must be at least 100"
        );
        anyhow::ensure!(
            self.max_handshakes >= 1,
            "MAX_HANDSHAKES must be at least 1"
        );
        Ok(())
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// The response type of every service served here.
pub type HttpResponse = warp::reply::Response;

/// Serves HTTP/1.1 on `listener` until `shutdown` is cancelled, with the protections of the
/// module header. `make_service` is called once per connection with the peer's address and
/// returns the request handler for that connection. On shutdown it stops accepting, lets
/// requests in flight finish (up to 5 s) and returns; upgraded connections have left hyper
/// and are the caller's to close.
pub async fn serve<M, S, F>(
    listener: TcpListener,
    args: &HttpArgs,
    make_service: M,
    shutdown: CancellationToken,
) where
    M: Fn(SocketAddr) -> S,
    S: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Result<HttpResponse, Infallible>> + Send + 'static,
{
    let handshakes = Handshakes::new(args.max_handshakes);
    let tasks = TaskTracker::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    accepted
                }
                Err(err) => {
                    let kind = accept_error_kind(&err);
                    metrics::counter!("chat_accept_errors_total", "error" => kind).increment(1);
                    let now = tokio::time::Instant::now();
                    if last_warning.is_none_or(|at| now - at >= Duration::from_secs(1)) {
                        last_warning = Some(now);
                        tracing::warn!(error = %err, kind, retry_in_ms = backoff.as_millis() as u64,
                            "accept failed; existing connections are not affected");
                    }
                    // The failed connection stays in the kernel's backlog: wait rather than
                    // spin, and let connections that end free their descriptors.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let slot = handshakes.enter();
        let service = service_fn(make_service(peer));
        let mut connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(args.handshake_timeout())
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let result = tokio::select! {
                result = &mut connection => result,
                _ = slot.evicted() => {
                    metrics::counter!("chat_handshakes_evicted_total").increment(1);
                    tracing::debug!(%peer, "closed the oldest connection still in its handshake");
                    return;
                }
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, then close; an upgraded socket has left
                    // hyper already and is closed by its own task.
                    std::pin::Pin::new(&mut connection).graceful_shutdown();
                    connection.await
                }
            };
            drop(slot);
            if let Err(err) = result {
                if err.is_timeout() {
                    metrics::counter!("chat_handshake_timeouts_total").increment(1);
                }
                tracing::debug!(error = %err, %peer, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    tasks.close();
    let _ = tokio::time::timeout(DRAIN, tasks.wait()).await;
}

/// Serves warp `routes` with [`serve`]: the archiver's API and the logger's probes.
pub async fn serve_warp<F>(
    listener: TcpListener,
    args: &HttpArgs,
    routes: F,
    shutdown: CancellationToken,
) where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    use tower_service::Service;
    let service = warp::service(routes);
    let make_service = move |_peer: SocketAddr| {
        let service = service.clone();
        move |request: Request<Incoming>| {
            let mut service = service.clone();
            async move { service.call(request).await }
        }
    };
    serve(listener, args, make_service, shutdown).await;
}

/// Names an `accept` failure for the metric label.
fn accept_error_kind(err: &std::io::Error) -> &'static str {
    // EMFILE (24): this process is out of descriptors; ENFILE (23): the whole system is.
    match err.raw_os_error() {
        Some(24) => "emfile",
        Some(23) => "enfile",
        _ => "other",
    }
}

/// The connections in their HTTP phase, oldest first, so the oldest can be closed when a
/// new one would exceed the cap.
#[derive(Clone)]
struct Handshakes {
    inner: Arc<Mutex<HandshakesInner>>,
}

struct HandshakesInner {
    max: usize,
    next: u64,
    /// Sequence number (age) → the token that closes that connection.
    open: BTreeMap<u64, CancellationToken>,
}

/// One connection's place among [`Handshakes`]; leaving it (drop) frees the place.
struct Slot {
    id: u64,
    token: CancellationToken,
    handshakes: Handshakes,
}

impl Handshakes {
    fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(HandshakesInner {
                max: max.max(1),
                next: 0,
                open: BTreeMap::new(),
            })),
        }
    }

    /// Takes a place for a new connection, closing the oldest when all are taken.
    fn enter(&self) -> Slot {
        let token = CancellationToken::new();
        let mut inner = self.lock();
        while inner.open.len() >= inner.max {
            match inner.open.pop_first() {
                Some((_, oldest)) => oldest.cancel(),
                None => break,
            }
        }
        let id = inner.next;
        inner.next += 1;
        inner.open.insert(id, token.clone());
        metrics::gauge!("chat_http_handshakes").set(inner.open.len() as f64);
        Slot {
            id,
            token,
            handshakes: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HandshakesInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().open.len()
    }
}

impl Slot {
    /// Completes when a newer connection took this one's place.
    async fn evicted(&self) {
        self.token.cancelled().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.handshakes.lock();
        inner.open.remove(&self.id);
        metrics::gauge!("chat_http_handshakes").set(inner.open.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_beyond_the_cap_evicts_the_oldest() {
        let handshakes = Handshakes::new(2);
        let first = handshakes.enter();
        let second = handshakes.enter();
        assert!(!first.token.is_cancelled());
        let third = handshakes.enter();
        assert!(first.token.is_cancelled(), "the oldest makes room");
        assert!(!second.token.is_cancelled());
        assert!(!third.token.is_cancelled());
        assert_eq!(handshakes.len(), 2);
    }

    #[test]
    fn a_finished_handshake_frees_its_place_for_the_next() {
        let handshakes = Handshakes::new(2);
        let first = handshakes.enter();
        let second = handshakes.enter();
        drop(second);
        let third = handshakes.enter();
        assert!(
            !first.token.is_cancelled(),
            "nobody is evicted while a place is free"
        );
        assert!(!third.token.is_cancelled());
        drop(first);
        drop(third);
        assert_eq!(handshakes.len(), 0);
    }

    #[test]
    fn an_evicted_slot_dropping_late_does_not_free_another_place() {
        let handshakes = Handshakes::new(1);
        let first = handshakes.enter();
        let second = handshakes.enter();
        drop(first); // evicted already: its place is gone
        assert_eq!(handshakes.len(), 1);
        assert!(!second.token.is_cancelled());
    }

    #[test]
    fn accept_errors_are_named_for_the_metric() {
        assert_eq!(
            accept_error_kind(&std::io::Error::from_raw_os_error(24)),
            "emfile"
        );
        assert_eq!(
            accept_error_kind(&std::io::Error::from_raw_os_error(23)),
            "enfile"
        );
        assert_eq!(
            accept_error_kind(&std::io::Error::from_raw_os_error(104)),
            "other"
        );
    }
}
