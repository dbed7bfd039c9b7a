//! The gateway's HTTP surface on the shared accept loop (`chat_core::http`, which bounds
//! handshakes in time and number and survives running out of descriptors): `/ws` requests
//! go to our own websocket upgrade (`upgrade.rs`), everything else to the warp routes
//! (`routes.rs`). Websockets are closed by their own tasks (1012) and awaited by `lib.rs`.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::Request;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::{routes, upgrade, State};

/// Serves HTTP and websockets on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let warp = warp::service(routes::routes(state.clone()));
    let http = state.config.http.clone();
    let make_service = move |peer: std::net::SocketAddr| {
        let (state, warp) = (state.clone(), warp.clone());
        move |request: Request<Incoming>| {
            let (state, mut warp) = (state.clone(), warp.clone());
            async move {
                if request.uri().path() == "/ws" {
                    Ok::<_, Infallible>(upgrade::handle(request, state, peer.ip()))
                } else {
                    warp.call(request).await
                }
            }
        }
    };
    chat_core::http::serve(listener, &http, make_service, shutdown).await;
}
