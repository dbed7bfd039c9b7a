//! The gateway's accept loop: one hyper HTTP/1 server whose `/ws` requests go to our own
//! websocket upgrade (`upgrade.rs`) and everything else to the warp routes (`routes.rs`).
//! On shutdown it stops accepting and lets HTTP requests in flight finish; websockets are
//! closed by their own tasks (1012) and awaited by `lib.rs`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::{routes, upgrade, State};

/// How long plain HTTP requests in flight may take to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves HTTP and websockets on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let warp = warp::service(routes::routes(state.clone()));
    let http = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (state, warp) = (state.clone(), warp.clone());
        let service = service_fn(move |request: Request<Incoming>| {
            let (state, mut warp) = (state.clone(), warp.clone());
            async move {
                if request.uri().path() == "/ws" {
                    Ok::<_, Infallible>(upgrade::handle(request, state))
                } else {
                    warp.call(request).await
                }
            }
        });
        let mut connection = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        http.spawn(async move {
            let result = tokio::select! {
                result = &mut connection => result,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, then close; an upgraded socket has
                    // left hyper already and is closed by its own task.
                    std::pin::Pin::new(&mut connection).graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(error = %err, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    http.close();
    let _ = tokio::time::timeout(DRAIN, http.wait()).await;
}
