//! The durable side-subscriber loop that the logger and the archiver share, and that anyone
//! can reuse for a new subscriber: own durable queue bound to the events exchange, bounded
//! prefetch, events handed to an [`EventSink`] in batches, and a broker ack (one multiple-ack
//! per batch) only after the sink has made the batch durable.
//!
//! What it guarantees: an event is acked only after [`EventSink::write`] returned `Ok`; a
//! sink failure is retried with backoff and never acked; a delivery that is not a valid
//! event is rejected without requeue, so the broker dead-letters it to `<prefix>.dead`
//! instead of redelivering it forever; a lost broker connection is re-established with
//! backoff and the topology declared again. Delivery is at-least-once, so sinks must be
//! idempotent by event id (the archiver is; the log may repeat a line after a crash).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use lapin::{
    message::Delivery,
    options::{BasicQosOptions, BasicRejectOptions},
    Connection,
};
use tokio_util::sync::CancellationToken;

use crate::batch;
use crate::broker::{self, Acks, Session, Supervisor};
use crate::event::Event;
use crate::topology::Topology;

/// Where a subscriber puts events. `write` must be idempotent by event id and must not
/// return `Ok` before the batch is durable: the broker forgets the events right after.
pub trait EventSink: Send {
    /// Makes a batch of valid events durable, in delivery order.
    fn write(&mut self, events: &[Event]) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How a subscriber consumes.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Broker URL.
    pub amqp_url: String,
    /// Names of the exchange and queues.
    pub topology: Topology,
    /// Subscriber name: the queue is `<prefix>.<name>`, the connection is named after it.
    pub name: String,
    /// Most unacked deliveries the broker sends before waiting for acks.
    pub prefetch: u16,
    /// Most events handed to the sink in one batch.
    pub batch_max: usize,
    /// How long a batch may wait for more events after its first.
    pub batch_linger: std::time::Duration,
    /// The event log stream to declare, with this retention, before the subscriber's own
    /// queue: the archiver's, so that the stream holds every event the archive does.
    pub log_stream: Option<crate::log_stream::LogRetention>,
}

/// Whether the subscriber is connected and consuming, for `/healthz`-style probes.
#[derive(Debug, Default)]
pub struct Readiness {
    running: AtomicBool,
    /// Whether the broker blocks this service's publishes (a resource alarm), for services
    /// that publish on the connection this readiness describes (the archiver's history).
    pub blocked: Arc<crate::broker::Blocked>,
}

impl Readiness {
    /// True while the queue is declared and the consumer is running.
    pub fn is_ready(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Records whether the consumer is running.
    pub fn set(&self, ready: bool) {
        self.running.store(ready, Ordering::Relaxed);
    }
}

/// Runs the subscriber until `shutdown` is cancelled: finishes and acks the batch in hand,
/// closes the connection and returns. Returns an error (and cancels `shutdown`) only when
/// its queue exists with other arguments ([`crate::topology::QueueConflict`]): retrying
/// would not help.
pub async fn run<S: EventSink>(
    config: SubscriberConfig,
    mut sink: S,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Not `report_blocked`: a subscriber never publishes, so the broker never blocks it
    // during an alarm, and it should keep draining its queue (which frees broker memory).
    let supervisor = Supervisor::new(&config.amqp_url, &config.name, shutdown.clone());
    let mut subscription = Subscription {
        config: &config,
        sink: &mut sink,
        readiness: &readiness,
        shutdown: &shutdown,
    };
    let outcome = supervisor.run(&mut subscription).await;
    tracing::info!(subscriber = %config.name, "subscriber stopped");
    outcome
}

/// What a subscriber does on each broker connection.
struct Subscription<'s, S> {
    config: &'s SubscriberConfig,
    sink: &'s mut S,
    readiness: &'s Readiness,
    shutdown: &'s CancellationToken,
}

impl<S: EventSink> Session for Subscription<'_, S> {
    async fn run(
        &mut self,
        connection: &Connection,
        supervisor: &mut Supervisor,
    ) -> anyhow::Result<()> {
        consume(
            connection,
            self.config,
            self.sink,
            self.readiness,
            supervisor,
            self.shutdown,
        )
        .await
    }

    fn down(&mut self) {
        self.readiness.set(false);
    }
}

/// One broker session: declare, consume batches until shutdown (`Ok`) or a broker error.
async fn consume<S: EventSink>(
    connection: &Connection,
    config: &SubscriberConfig,
    sink: &mut S,
    readiness: &Readiness,
    supervisor: &mut Supervisor,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = crate::broker::open_channel(connection).await?;
    config
        .topology
        .declare_base(&channel)
        .await
        .context("Failed to declare the exchanges")?;
    if let Some(retention) = &config.log_stream {
        config
            .topology
            .declare_log_stream(&channel, retention)
            .await
            .context("Failed to declare the event log stream")?;
    }
    let queue = config
        .topology
        .declare_subscriber_queue(&channel, &config.name)
        .await
        .with_context(|| format!("Failed to declare the {} queue", config.name))?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .context("Failed to set the prefetch")?;
    let mut consumer = broker::consume(&channel, &queue, &config.name, Acks::Manual).await?;
    readiness.set(true);
    supervisor.up();
    tracing::info!(subscriber = %config.name, %queue, prefetch = config.prefetch, "consuming");

    loop {
        let Some(batch) = batch::next(
            &mut consumer,
            config.batch_max,
            config.batch_linger,
            shutdown,
        )
        .await?
        else {
            crate::broker::close_channels(&[channel]).await;
            return Ok(());
        };
        let Some((events, last_delivery)) = accept_valid(&config.name, batch).await? else {
            continue;
        };
        let started = std::time::Instant::now();
        let subscriber = config.name.as_str();
        let stored = batch::write_until_held(
            sink,
            &events,
            |err, delay| {
                tracing::error!(
                    subscriber,
                    error = format!("{err:#}"),
                    events = events.len(),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot store a batch; it stays unacked and is retried"
                )
            },
            shutdown,
        )
        .await;
        if !stored {
            // Shutdown during a storage outage: leave the batch unacked; closing the channel
            // hands it back to the queue at once, for the next run.
            crate::broker::close_channels(&[channel]).await;
            return Ok(());
        }
        crate::broker::ack_through(last_delivery).await?;
        record_batch(&config.name, &events, started);
    }
}

/// Batch metrics: duration, count, and how old the newest event was once stored.
fn record_batch(subscriber: &str, events: &[Event], started: std::time::Instant) {
    let name = subscriber.to_owned();
    metrics::histogram!("chat_batch_seconds", "subscriber" => name.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("chat_events_stored_total", "subscriber" => name.clone())
        .increment(events.len() as u64);
    if let Some(newest) = events.iter().map(|e| e.at).max() {
        let lag = (chrono::Utc::now() - newest).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::gauge!("chat_subscriber_lag_seconds", "subscriber" => name).set(lag);
    }
}

/// Splits a batch: invalid deliveries are rejected without requeue (dead-lettered) and
/// logged; returns the valid events and the last valid delivery, whose multiple-ack covers
/// them all, or `None` if nothing in the batch was valid.
async fn accept_valid(
    subscriber: &str,
    batch: Vec<Delivery>,
) -> anyhow::Result<Option<(Vec<Event>, Delivery)>> {
    let mut events = Vec::with_capacity(batch.len());
    let mut last_valid = None;
    for delivery in batch {
        match Event::decode(&delivery.data) {
            Ok(event) => {
                events.push(event);
                last_valid = Some(delivery);
            }
            Err(err) => {
                metrics::counter!("chat_dead_lettered_total", "consumer" => subscriber.to_owned())
                    .increment(1);
                tracing::warn!(
                    subscriber,
                    error = %err,
                    bytes = delivery.data.len(),
                    message_id = ?delivery.properties.message_id().as_ref().map(|s| s.as_str()),
                    "dead-lettering a delivery that is not a valid event"
                );
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .context("Failed to reject an invalid delivery")?;
            }
        }
    }
    Ok(last_valid.map(|d| (events, d)))
}
