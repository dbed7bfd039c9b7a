//! The archiver's side of history over the broker: it consumes `<prefix>.history` and
//! answers each request to its `reply_to` address with the same `correlation_id`, so
//! gateways get history knowing only the broker's address.

use std::sync::Arc;

use anyhow::Context;
use chat_core::access::Reader;
use chat_core::broker::{Acks, Session, Supervisor};
use chat_core::event::id_time;
use chat_core::history::{
    HistoryReply, HistoryRequest, MembershipReply, MembershipRequest, TargetReply, TargetRequest,
    MAX_HISTORY, MAX_MEMBERSHIP_PAGE, MEMBERSHIP_TYPE, TARGET_TYPE,
};
use chat_core::normalize;
use chat_core::subscriber::Readiness;
use chat_core::topology::Topology;
use chat_core::Event;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicQosOptions};
use lapin::{BasicProperties, Channel, Connection};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::store::{LookupError, Store};

/// How long a `since` that is unknown but recent may wait for the archive to catch up;
/// well under the gateways' history timeout.
const CATCH_UP_WAIT: Duration = Duration::from_millis(1500);

/// Answers history requests until `shutdown` is cancelled, reconnecting as needed; an
/// error only if the broker refuses a declaration for good (then `shutdown` is cancelled).
pub async fn run(
    amqp_url: String,
    topology: Topology,
    store: Store,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let supervisor = Supervisor::new(&amqp_url, "archiver-history", shutdown.clone())
        .report_blocked(readiness.blocked.clone());
    supervisor
        .run(&mut HistoryServer {
            topology,
            store,
            readiness,
            shutdown,
        })
        .await
}

/// What the history server does on each broker connection.
struct HistoryServer {
    topology: Topology,
    store: Store,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
}

impl Session for HistoryServer {
    async fn run(
        &mut self,
        connection: &Connection,
        supervisor: &mut Supervisor,
    ) -> anyhow::Result<()> {
        serve(
            connection,
            &self.topology,
            &self.store,
            &self.readiness,
            supervisor,
            &self.shutdown,
        )
        .await
    }

    fn down(&mut self) {
        self.readiness.set(false);
    }
}

async fn serve(
    connection: &Connection,
    topology: &Topology,
    store: &Store,
    readiness: &Readiness,
    supervisor: &mut Supervisor,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = chat_core::broker::open_channel(connection).await?;
    let queue = topology
        .declare_history_queue(&channel)
        .await
        .context("Failed to declare the history queue")?;
    channel.basic_qos(32, BasicQosOptions::default()).await?;
    let mut requests =
        chat_core::broker::consume(&channel, &queue, "archiver-history", Acks::Manual).await?;
    readiness.set(true);
    supervisor.up();
    tracing::info!(%queue, "answering history requests");
    loop {
        let delivery = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                drop(requests);
                chat_core::broker::close_channels(&[channel]).await;
                return Ok(());
            }
            next = requests.next() => match next {
                Some(delivery) => delivery.context("Delivery failed")?,
                None => anyhow::bail!("the broker cancelled the history consumer"),
            },
        };
        // Requests are answered concurrently (at most the prefetch at once): one that waits
        // for the archive to catch up must not hold up the others.
        let (channel, store) = (channel.clone(), store.clone());
        tokio::spawn(async move {
            if let Err(err) = respond(&channel, &store, delivery).await {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot answer a history request"
                );
            }
        });
    }
}

/// Answers one request to its `reply_to`, then acks it.
async fn respond(channel: &Channel, store: &Store, delivery: Delivery) -> anyhow::Result<()> {
    let reply_to = delivery.properties.reply_to().clone();
    let correlation_id = delivery.properties.correlation_id().clone();
    let kind = delivery
        .properties
        .kind()
        .as_ref()
        .map(|kind| kind.as_str().to_owned());
    let membership = kind.as_deref() == Some(MEMBERSHIP_TYPE);
    let target = kind.as_deref() == Some(TARGET_TYPE);
    if let (Some(reply_to), true) = (&reply_to, target) {
        let reply = match serde_json::from_slice::<TargetRequest>(&delivery.data) {
            Ok(request) => answer_target(store, &request).await,
            Err(err) => TargetReply {
                message: None,
                error: Some(format!("invalid target request: {err}")),
            },
        };
        let outcome = match (&reply.error, &reply.message) {
            (Some(_), _) => "error",
            (None, Some(_)) => "found",
            (None, None) => "unknown",
        };
        metrics::counter!("chat_target_requests_total", "outcome" => outcome).increment(1);
        let body = serde_json::to_vec(&reply).context("Failed to encode a target reply")?;
        reply_with(channel, reply_to.clone(), correlation_id, &body).await?;
    } else if let (Some(reply_to), true) = (&reply_to, membership) {
        let reply = match serde_json::from_slice::<MembershipRequest>(&delivery.data) {
            Ok(request) => answer_membership(store, &request).await,
            Err(err) => MembershipReply {
                events: Vec::new(),
                next: 0,
                error: Some(format!("invalid membership request: {err}")),
            },
        };
        let outcome = if reply.error.is_some() { "error" } else { "ok" };
        metrics::counter!("chat_membership_requests_total", "outcome" => outcome).increment(1);
        let body = serde_json::to_vec(&reply).context("Failed to encode a membership reply")?;
        reply_with(channel, reply_to.clone(), correlation_id, &body).await?;
    } else if let Some(reply_to) = reply_to {
        let reply = match serde_json::from_slice::<HistoryRequest>(&delivery.data) {
            Ok(request) => {
                let reply = answer(store, &request).await;
                let outcome = match (&reply.error, &reply.since_error) {
                    (Some(_), _) => "error",
                    (None, Some(_)) => "bad_since",
                    (None, None) => "ok",
                };
                metrics::counter!("chat_history_requests_total", "outcome" => outcome).increment(1);
                reply
            }
            Err(err) => HistoryReply {
                events: Vec::new(),
                since_error: None,
                error: Some(format!("invalid history request: {err}")),
                private: false,
            },
        };
        let body = serde_json::to_vec(&reply).context("Failed to encode a history reply")?;
        reply_with(channel, reply_to, correlation_id, &body).await?;
    } else {
        tracing::warn!("dropping a history request without reply_to");
    }
    delivery
        .ack(BasicAckOptions::default())
        .await
        .context("Failed to ack a history request")?;
    Ok(())
}

/// Sends one reply to a request's `reply_to` with its correlation id.
async fn reply_with(
    channel: &Channel,
    reply_to: lapin::types::ShortString,
    correlation_id: Option<lapin::types::ShortString>,
    body: &[u8],
) -> anyhow::Result<()> {
    let mut properties = BasicProperties::default().with_content_type("application/json".into());
    if let Some(id) = correlation_id {
        properties = properties.with_correlation_id(id);
    }
    channel
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .context("Failed to send a reply")?;
    Ok(())
}

/// One page of the membership replay a gateway asks for at start.
pub async fn answer_membership(store: &Store, request: &MembershipRequest) -> MembershipReply {
    let limit = request.limit.clamp(1, MAX_MEMBERSHIP_PAGE);
    match store.membership_after(request.after.max(0), limit).await {
        Ok(rows) => MembershipReply {
            next: rows.last().map_or(request.after.max(0), |(seq, _)| *seq),
            events: rows.into_iter().map(|(_, event)| event).collect(),
            error: None,
        },
        Err(err) => MembershipReply {
            events: Vec::new(),
            next: request.after,
            error: Some(format!("archive error: {err}")),
        },
    }
}

/// The target of an edit, deletion or reaction. A message made moments ago that the archive
/// does not have yet is waited for, as a recent `since` is: a user who edits a message right
/// after sending it must not be told it does not exist.
pub async fn answer_target(store: &Store, request: &TargetRequest) -> TargetReply {
    if normalize::room(&request.room).is_err() || !chat_core::event::is_id(&request.id) {
        return TargetReply {
            message: None,
            error: Some("invalid target request: bad room or id".to_owned()),
        };
    }
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    loop {
        match store.target(&request.room, &request.id).await {
            Ok(None) if is_recent(&request.id) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(message) => {
                return TargetReply {
                    message,
                    error: None,
                }
            }
            Err(err) => {
                return TargetReply {
                    message: None,
                    error: Some(format!("archive error: {err}")),
                }
            }
        }
    }
}

/// Events after `since`. A client may have seen an event live that the archive has not
/// stored yet (the archiver lags the exchange a little): if `since` is unknown but its id
/// says it was made moments ago, wait for the archive to catch up rather than wrongly
/// declare a gap.
async fn since_catching_up(
    store: &Store,
    room: &str,
    since: &str,
) -> Result<Vec<Event>, LookupError> {
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    loop {
        match store.since(room, since, MAX_HISTORY).await {
            Err(LookupError::UnknownEvent(..))
                if is_recent(since) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

fn is_recent(id: &str) -> bool {
    id_time(id).is_some_and(|at| {
        let age = chrono::Utc::now() - at;
        age < chrono::TimeDelta::seconds(10) && age > chrono::TimeDelta::seconds(-10)
    })
}

/// Answers one request from the archive. A failed `since` falls back to the latest `limit`
/// events, flagged with `since_error`.
pub async fn answer(store: &Store, request: &HistoryRequest) -> HistoryReply {
    let failed = |error: String| HistoryReply {
        events: Vec::new(),
        since_error: None,
        error: Some(error),
        private: false,
    };
    if normalize::room(&request.room).is_err() {
        return failed(format!("invalid room {:?}", request.room));
    }
    // The archive's view of the room's visibility travels with its events, so that a
    // gateway whose projection lags cannot take a private room for a public one.
    let private = match store.can_read(&request.room, Reader::Guest).await {
        Ok(public) => !public,
        Err(err) => return failed(format!("archive error: {err}")),
    };
    let limit = request.limit.clamp(1, MAX_HISTORY);
    let mut since_error = None;
    if let Some(since) = &request.since {
        match since_catching_up(store, &request.room, since).await {
            Ok(events) => {
                return HistoryReply {
                    events,
                    since_error: None,
                    error: None,
                    private,
                }
            }
            Err(LookupError::Database(err)) => return failed(format!("archive error: {err}")),
            Err(err) => since_error = Some(err.to_string()),
        }
    }
    match store.page(&request.room, limit, None).await {
        Ok(events) => HistoryReply {
            events,
            since_error,
            error: None,
            private,
        },
        Err(err) => failed(format!("archive error: {err}")),
    }
}
