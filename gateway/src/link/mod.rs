//! The gateway's link to the broker. One supervised connection carries three channels: a
//! publisher channel in confirm mode ([`publish`]), a consumer channel on the gateway's own
//! exclusive queue (the events of the rooms it serves, or every event without routing by
//! room, fanned out to local clients: [`session`]), and a history channel that asks the
//! archiver over direct reply-to ([`history`], whose recent replies answer the joins that
//! follow for a second: [`reuse`]); with routing by room, a fourth binds and unbinds the
//! served rooms ([`routes`]). When the broker goes
//! away the link reports unavailable (`/healthz` says 503; a publish waits up to
//! `PUBLISH_TIMEOUT_MS` for the link to come back, then the client gets `unavailable`) and
//! reconnects by itself, declaring its queue again.

mod acks;
mod budget;
mod history;
mod page;
mod publish;
mod reuse;
mod routes;
mod session;
mod single_flight;

use std::sync::Arc;
use std::time::Duration;

use chat_core::broker::{Blocked, Supervisor};
use chat_core::topology::Topology;
use lapin::Channel;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::idempotency::Says;
use crate::rooms::Rooms;

pub use history::HistoryError;
pub use page::Page;
pub use publish::PublishError;

/// The live channels while connected.
struct Channels {
    publisher: Channel,
    history: Channel,
    /// History requests waiting for their reply.
    waiting: Arc<history::Waiting>,
    /// Cancelled when the broker nacked a publish on this session: the session then ends
    /// and the supervisor opens a fresh connection (see [`publish`]).
    nacked: CancellationToken,
    /// The rooms bound for the queue, when routing by room.
    routes: Option<Arc<routes::Routes>>,
    /// History replies kept for the joins that follow ([`reuse`]).
    recent: Arc<reuse::Recent>,
}

/// A cheap handle to the broker link, shared by every connection.
#[derive(Clone)]
pub struct Link {
    topology: Topology,
    session: watch::Receiver<Option<Arc<Channels>>>,
    /// Set while the broker blocks the link's publishes (a memory or disk alarm).
    blocked: Arc<Blocked>,
    publish_timeout: Duration,
    history_timeout: Duration,
    /// History requests in flight, shared by identical ones.
    history_calls: Arc<history::HistoryCalls>,
    /// Joins' history requests in flight, shared by identical ones.
    page_calls: Arc<history::PageCalls>,
    /// Whether the gateway's queue gets only the served rooms' events (`ROUTE_BY_ROOM`).
    route_by_room: bool,
}

/// Why a room could not be routed to this gateway; the join is refused (`unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("the broker is not connected")]
    NotConnected,
    #[error("the broker is blocking this gateway ({0})")]
    Blocked(String),
    #[error("the broker did not bind the room in time")]
    Timeout,
    #[error("the broker refused to bind the room: {0}")]
    Failed(#[from] lapin::Error),
}

impl Link {
    /// Completes when the link goes up or down; then [`Link::is_ready`] tells which.
    pub async fn changed(&mut self) -> bool {
        self.session.changed().await.is_ok()
    }

    /// Whether the link is connected with its topology declared.
    pub fn is_ready(&self) -> bool {
        self.session.borrow().is_some()
    }

    /// The broker's reason while it blocks our publishes.
    pub fn blocked(&self) -> Option<String> {
        self.blocked.reason()
    }

    fn current(&self) -> Option<Arc<Channels>> {
        self.session.borrow().clone()
    }

    /// Makes sure the events of `room` reach this gateway: with routing by room, binds the
    /// queue for it (once; a bound room answers at once) and returns when the broker has
    /// confirmed the binding, with the room's mark for the join's history check
    /// (`connection::catch_up::reaches`). `None` without routing: every event arrives
    /// anyway. Call it after registering the room's member, so that the binding cannot be
    /// removed by a leave racing it. While the broker is away it waits for the link, like a
    /// publish, up to `PUBLISH_TIMEOUT_MS`.
    pub async fn serve_room(
        &self,
        room: &Arc<str>,
        rooms: &Rooms,
    ) -> Result<Option<u64>, RouteError> {
        if !self.route_by_room {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        loop {
            let mut session = self.session.clone();
            let usable = |s: &Option<Arc<Channels>>| {
                s.as_ref()
                    .is_some_and(|c| c.routes.as_ref().is_some_and(|r| !r.failed.is_cancelled()))
            };
            let current = match tokio::time::timeout_at(deadline, session.wait_for(usable)).await {
                Ok(Ok(current)) => current.clone(),
                _ => return Err(RouteError::NotConnected),
            };
            let Some(routes) = current.as_ref().and_then(|c| c.routes.clone()) else {
                return Err(RouteError::NotConnected);
            };
            if let Some(reason) = self.blocked.reason() {
                // A blocked connection's commands wait unread until the alarm clears: a
                // room bound already is served, a new one is refused now, as its join event
                // would be.
                return routes
                    .bound(room)
                    .map(Some)
                    .ok_or(RouteError::Blocked(reason));
            }
            let served = tokio::time::timeout_at(deadline, routes.serve(room, rooms)).await;
            match served.map_err(|_| RouteError::Timeout)? {
                Ok(mark) => return Ok(Some(mark)),
                // The session ends; the next one binds every served room, this one too.
                Err(err) if tokio::time::Instant::now() >= deadline => return Err(err.into()),
                Err(err) => {
                    tracing::debug!(%room, error = %err, "binding again on the next session");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Where the link delivers what it consumes.
pub struct Targets {
    /// The local clients, by room: live events fan out to them.
    pub rooms: Arc<Rooms>,
    /// The gateway's memory of client ids, fed from every consumed event.
    pub says: Arc<Says>,
    /// Who may read which room, kept current from membership events.
    pub projection: Arc<crate::access::Projection>,
}

/// Starts the link's supervisor task; it runs until `shutdown` is cancelled. If the broker
/// refuses a declaration for good (a [`chat_core::topology::QueueConflict`]), the task
/// cancels `service` too, so the gateway stops, and returns the error.
pub fn start(
    config: &Config,
    topology: Topology,
    targets: Targets,
    gateway_id: String,
    shutdown: CancellationToken,
    service: CancellationToken,
) -> (Link, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let Targets {
        rooms,
        says,
        projection,
    } = targets;
    let (channels, session) = watch::channel(None);
    let blocked = Arc::new(Blocked::default());
    let link = Link {
        topology: topology.clone(),
        session,
        blocked: blocked.clone(),
        publish_timeout: config.publish_timeout(),
        history_timeout: config.history_timeout(),
        history_calls: Arc::default(),
        page_calls: Arc::default(),
        route_by_room: config.route_by_room,
    };
    let supervisor = Supervisor::new(
        &config.broker.amqp_url,
        &format!("gateway {gateway_id}"),
        shutdown.clone(),
    )
    .report_blocked(blocked);
    let mut session = session::LinkSession {
        topology,
        rooms,
        says,
        projection,
        prefetch: config.prefetch,
        route_by_room: config.route_by_room,
        history_reuse: config.history_reuse(),
        channels,
        shutdown,
    };
    let task = tokio::spawn(async move {
        let outcome = supervisor.run(&mut session).await;
        if outcome.is_err() {
            service.cancel();
        }
        outcome
    });
    (link, task)
}
