//! The broker alone: the same rate through a fanout exchange with lapin and nothing else
//! (persistent messages, publisher confirms, the same queues bound, declared by chat-core's
//! topology exactly as the services declare them: the logger's and the archiver's quorum
//! queues, the event log stream, and one exclusive queue per gateway on its own
//! connection), consumed and acked. This is the ceiling the machine's RabbitMQ sets for
//! the chat system. Everything is declared under a fresh `bench-<random>` prefix and
//! deleted at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_core::broker;
use chat_core::log_stream::LogRetention;
use chat_core::topology::Topology;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::amqp::{self, Confirms, Pace};
use crate::load::Window;
use crate::marker::Marker;
use crate::procfs::Watched;
use crate::stats::{now_us, AtomicHistogram, WindowStats};

/// The counters of one baseline window.
struct Counts {
    window: u32,
    /// Deliveries to the gateway-like queues, with latency.
    stats: WindowStats,
    /// Deliveries to the durable, subscriber-like queues.
    durable: AtomicU64,
    confirms: Arc<Confirms>,
    lag: Arc<AtomicHistogram>,
}

impl Counts {
    fn new(window: u32) -> Self {
        Self {
            window,
            stats: WindowStats::new(0),
            durable: AtomicU64::new(0),
            confirms: Arc::new(Confirms::default()),
            lag: Arc::new(AtomicHistogram::default()),
        }
    }
}

/// A window's outcome: the common figures plus the durable queues' count.
pub struct BaselineWindow {
    pub window: Window,
    pub durable_expected: u64,
    pub durable_received: u64,
    pub confirmed: u64,
}

/// The declared topology and its consumers.
pub struct Baseline {
    prefix: String,
    admin: Connection,
    gateway_connections: Vec<Connection>,
    publishers: Vec<(Connection, Channel)>,
    durable_queues: Vec<String>,
    gateways: usize,
    payload: usize,
    current: watch::Sender<Arc<Counts>>,
    windows: u32,
}

/// A fresh prefix no one else uses.
pub fn random_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("bench-{:x}{:05x}", std::process::id(), nanos & 0xfffff)
}

impl Baseline {
    /// Declares the exchange and queues, starts the consumers and opens the publishers.
    pub async fn start(
        url: &str,
        gateways: usize,
        publishers: usize,
        payload: usize,
    ) -> anyhow::Result<Self> {
        let prefix = random_prefix();
        let topology = Topology::new(&prefix)?;
        let admin = broker::connect(url, "chat-bench-baseline")
            .await
            .context("cannot connect to the broker")?;
        let channel = admin.create_channel().await?;
        // What the services declare, from the same code: the exchanges and `<prefix>.dead`
        // (every service), the event log stream (the archiver, before its queue).
        topology.declare_base(&channel).await?;
        topology
            .declare_log_stream(&channel, &LogRetention::default())
            .await?;
        let (current, _) = watch::channel(Arc::new(Counts::new(0)));
        let mut baseline = Self {
            prefix,
            admin,
            gateway_connections: Vec::new(),
            publishers: Vec::new(),
            durable_queues: Vec::new(),
            gateways,
            payload,
            current,
            windows: 0,
        };
        for name in ["logger", "archiver"] {
            let queue = topology.declare_subscriber_queue(&channel, name).await?;
            baseline.durable_queues.push(queue.clone());
            let consumer = baseline.admin.create_channel().await?;
            baseline.consume(consumer, queue, 512, false).await?;
        }
        for g in 0..gateways {
            let connection = broker::connect(url, &format!("chat-bench-gateway-{g}")).await?;
            let consumer = connection.create_channel().await?;
            // Every event to every gateway queue, the ceiling without routing by room.
            let queue = topology.declare_gateway_queue(&consumer, false).await?;
            baseline.consume(consumer, queue, 1024, true).await?;
            baseline.gateway_connections.push(connection);
        }
        for p in 0..publishers.max(1) {
            let connection = broker::connect(url, &format!("chat-bench-publisher-{p}")).await?;
            let channel = connection.create_channel().await?;
            amqp::confirming(&channel).await?;
            baseline.publishers.push((connection, channel));
        }
        Ok(baseline)
    }

    /// Consumes `queue`, acking each delivery; gateway-like queues record latency.
    async fn consume(
        &self,
        channel: Channel,
        queue: String,
        prefetch: u16,
        gateway_like: bool,
    ) -> anyhow::Result<()> {
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let current = self.current.subscribe();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let now = now_us();
                let marker = std::str::from_utf8(&delivery.data)
                    .ok()
                    .and_then(Marker::find);
                let counts = current.borrow().clone();
                if let Some(m) = marker.filter(|m| m.window == counts.window) {
                    if gateway_like {
                        counts.stats.received.fetch_add(1, Ordering::Relaxed);
                        counts.stats.latency.record(now.saturating_sub(m.sent_us));
                    } else {
                        counts.durable.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if delivery.ack(BasicAckOptions::default()).await.is_err() {
                    break;
                }
            }
            let _ = channel;
        });
        Ok(())
    }

    /// One window at `rate` for `duration`, then up to `drain` for the last deliveries.
    pub async fn measure(
        &mut self,
        rate: f64,
        duration: Duration,
        drain: Duration,
        watched: &Watched,
    ) -> BaselineWindow {
        watched.wait_idle(0.15, Duration::from_secs(30)).await;
        self.windows += 1;
        let counts = Arc::new(Counts::new(self.windows));
        self.current.send_replace(counts.clone());
        let cpu_before = watched.cpu();
        let start = Instant::now() + Duration::from_millis(100);
        let exchange = format!("{}.events", self.prefix);
        let paces = Pace::split(rate, start, duration, self.publishers.len());
        let mut tasks = Vec::new();
        for (p, ((_, channel), pace)) in self.publishers.iter().zip(paces).enumerate() {
            let window = counts.window;
            let payload = self.payload;
            let make = move |seq, sent_us| {
                let marker = Marker {
                    window,
                    sender: p as u32,
                    seq,
                    sent_us,
                    room: 0,
                };
                amqp::event("bench", marker, payload)
            };
            tasks.push(tokio::spawn(amqp::publish_paced(
                channel.clone(),
                exchange.clone(),
                pace,
                make,
                counts.confirms.clone(),
                counts.lag.clone(),
            )));
        }
        let deadline = start + duration + drain;
        for task in tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        let durable_queues = self.durable_queues.len() as u64;
        loop {
            let sent = counts.confirms.sent.load(Ordering::Relaxed);
            let done = counts.stats.received() >= sent * self.gateways as u64
                && counts.durable.load(Ordering::Relaxed) >= sent * durable_queues;
            if done || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = start.elapsed();
        let cpu = cpu_before.until(&watched.cpu());
        let sent = counts.confirms.sent.load(Ordering::Relaxed);
        let failed = counts.confirms.failed.load(Ordering::Relaxed);
        BaselineWindow {
            window: Window {
                rate,
                duration,
                sent,
                offered: (rate * duration.as_secs_f64()).round() as u64,
                expected: sent * self.gateways as u64,
                received: counts.stats.received(),
                duplicates: 0,
                stale: 0,
                foreign: 0,
                acks: counts.confirms.confirmed.load(Ordering::Relaxed),
                errors: failed,
                disconnects: 0,
                error_codes: if failed > 0 {
                    [("unconfirmed".to_owned(), failed)].into()
                } else {
                    Default::default()
                },
                latency: counts.stats.latency.snapshot(),
                send_lag: counts.lag.snapshot(),
                elapsed,
                cpu,
                own_traffic: Vec::new(),
                ambient_frames: 0,
                typing_sent: 0,
                ambient_deliveries: 0,
                rejoins: 0,
            },
            durable_expected: sent * durable_queues,
            durable_received: counts.durable.load(Ordering::Relaxed),
            confirmed: counts.confirms.confirmed.load(Ordering::Relaxed),
        }
    }

    /// Waits until the queues are empty again (at most `limit`), so a step starts clean.
    pub async fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let Ok(channel) = self.admin.create_channel().await else {
            return;
        };
        while Instant::now() < deadline {
            let mut backlog = 0;
            for queue in &self.durable_queues {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                if let Ok(q) = channel
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    backlog += q.message_count();
                }
            }
            if backlog == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = channel.close(200, "settled".into()).await;
    }

    /// Deletes everything declared and closes the connections.
    pub async fn stop(self) {
        for (connection, _) in &self.publishers {
            let _ = connection.close(200, "done".into()).await;
        }
        for connection in &self.gateway_connections {
            let _ = connection.close(200, "done".into()).await;
        }
        let _ = delete_prefix(&self.admin, &self.prefix).await;
        let _ = self.admin.close(200, "done".into()).await;
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Deletes the exchanges and queues the chat topology declares under `prefix` (those that
/// exist; the others are skipped).
pub async fn delete_prefix(connection: &Connection, prefix: &str) -> anyhow::Result<Vec<String>> {
    let topology = Topology::new(prefix)?;
    let mut deleted = Vec::new();
    for queue in [
        topology.subscriber_queue("logger"),
        topology.subscriber_queue("archiver"),
        topology.dead_queue(),
        topology.history_queue(),
        topology.log_stream(),
    ] {
        // A failed operation closes the channel, so each gets its own.
        let channel = connection.create_channel().await?;
        if channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .is_ok()
        {
            deleted.push(queue);
        }
    }
    for exchange in [
        topology.rooms_exchange(),
        topology.events_exchange(),
        topology.dead_letter_exchange(),
        topology.presence_exchange(),
    ] {
        let channel = connection.create_channel().await?;
        if channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await
            .is_ok()
        {
            deleted.push(exchange);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_valid_and_distinct() {
        let a = random_prefix();
        assert!(a.starts_with("bench-"));
        assert!(Topology::new(&a).is_ok());
    }
}
