//! The gateway's link to the broker. One supervised connection carries three channels: a
//! publisher channel in confirm mode ([`publish`]), a consumer channel on the gateway's own
//! exclusive queue (every event, fanned out to local clients: [`session`]), and a history
//! channel that asks the archiver over direct reply-to ([`history`]). When the broker goes
//! away the link reports unavailable (`/healthz` says 503; a publish waits up to
//! `PUBLISH_TIMEOUT_MS` for the link to come back, then the client gets `unavailable`) and
//! reconnects by itself, declaring its queue again.

mod acks;
mod history;
mod publish;
mod session;

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

pub use publish::PublishError;

/// The live channels while connected.
struct Channels {
    publisher: Channel,
    history: Channel,
    /// History requests waiting for their reply.
    waiting: Arc<history::Waiting>,
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
}

/// Starts the link's supervisor task; it runs until `shutdown` is cancelled.
pub fn start(
    config: &Config,
    topology: Topology,
    rooms: Arc<Rooms>,
    says: Arc<Says>,
    gateway_id: String,
    shutdown: CancellationToken,
) -> (Link, tokio::task::JoinHandle<()>) {
    let (channels, session) = watch::channel(None);
    let blocked = Arc::new(Blocked::default());
    let link = Link {
        topology: topology.clone(),
        session,
        blocked: blocked.clone(),
        publish_timeout: config.publish_timeout(),
        history_timeout: config.history_timeout(),
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
        prefetch: config.prefetch,
        channels,
        shutdown,
    };
    let task = tokio::spawn(async move { supervisor.run(&mut session).await });
    (link, task)
}
