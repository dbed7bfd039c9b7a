//! `archiver restore-from-log`: refills the archive from the event log stream `<prefix>.log`
//! (docs/operations.md, "The event log stream"). An archive that was lost, or restored from
//! a backup older than the stream's retention, gets back what the stream still holds, in
//! the stream's order, each event once (inserts skip ids the archive has).
//!
//! It runs while no archiver consumes `<prefix>.archiver`: the archive keeps events in the
//! order it received them, so the refilled past must come before what the queue kept
//! meanwhile, which the archiver consumes afterwards (its copies dropped by id).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_core::broker::{connect, redact, BrokerArgs};
use chat_core::log_stream::StartAt;
use chat_core::replay::{self, LogEvent, LogSink, ReplayConfig};
use chrono::{DateTime, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How long the stream may have nothing more before the refill counts as done (when no
/// event stamped after the start of the command comes to end it).
pub const IDLE: Duration = Duration::from_secs(3);

/// What a refill did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Events read from the stream (after dropping repeated ids).
    pub read: u64,
    /// Of those, events the archive did not have.
    pub inserted: u64,
    /// The offsets of the first and the last event read.
    pub offsets: Option<(u64, u64)>,
}

impl Restored {
    /// The line the command prints.
    pub fn line(&self, stream: &str) -> String {
        let range = match self.offsets {
            Some((first, last)) => format!(" (offsets {first} to {last})"),
            None => String::new(),
        };
        format!(
            "{stream}: {} event(s) read{range}, {} of them new in the archive",
            self.read, self.inserted
        )
    }
}

/// Reads the stream from `from` into the archive at `database_url` (created and migrated if
/// missing) until it reaches an event stamped after the command started, or the stream has
/// had nothing more for [`IDLE`], or `shutdown`.
pub async fn restore(
    broker: &BrokerArgs,
    database_url: &str,
    from: StartAt,
    shutdown: CancellationToken,
) -> anyhow::Result<Restored> {
    let topology = broker.topology()?;
    refuse_while_archiving(broker, &topology).await?;
    let store = Store::open(database_url).await?;
    let done = shutdown.child_token();
    let progress = Arc::new(Mutex::new(Progress {
        restored: Restored::default(),
        last_batch: Instant::now(),
    }));
    let sink = RestoreSink {
        store: store.clone(),
        progress: progress.clone(),
        started: Utc::now(),
        done: done.clone(),
    };
    let watchdog = tokio::spawn({
        let (progress, done) = (progress.clone(), done.clone());
        async move {
            while !done.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let idle = progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_batch
                    .elapsed();
                if idle >= IDLE {
                    done.cancel();
                }
            }
        }
    });
    let config = ReplayConfig {
        amqp_url: broker.amqp_url.clone(),
        topology,
        name: "archiver restore-from-log".to_owned(),
        start: from,
        prefetch: 512,
        batch_max: 256,
        batch_linger: Duration::from_millis(5),
    };
    let outcome = replay::follow(config, sink, done.clone()).await;
    done.cancel();
    let _ = watchdog.await;
    store.close().await;
    outcome?;
    let restored = progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .restored
        .clone();
    Ok(restored)
}

/// Fails if an archiver consumes `<prefix>.archiver` (the refilled past would interleave
/// with its live events) or if the stream does not exist.
async fn refuse_while_archiving(
    broker: &BrokerArgs,
    topology: &chat_core::topology::Topology,
) -> anyhow::Result<()> {
    let connection = connect(&broker.amqp_url, "archiver restore-from-log")
        .await
        .with_context(|| format!("Failed to connect to {}", redact(&broker.amqp_url)))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let (queue, stream) = (topology.subscriber_queue("archiver"), topology.log_stream());
    // A passive declare of a missing queue closes its channel: one channel each.
    let consumers = match connection
        .create_channel()
        .await?
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await
    {
        Ok(declared) => declared.consumer_count(),
        Err(_) => 0,
    };
    let stream_exists = connection
        .create_channel()
        .await?
        .queue_declare(stream.as_str().into(), passive, FieldTable::default())
        .await
        .is_ok();
    let _ = connection.close(200, "checked".into()).await;
    if consumers > 0 {
        bail!(
            "{queue} has {consumers} consumer(s): stop every archiver first, so that the \
             refilled events come before what the queue kept meanwhile"
        );
    }
    if !stream_exists {
        bail!("there is no event log stream {stream} (an archiver of this version declares it)");
    }
    Ok(())
}

/// The refill's counts, and when the last batch came.
struct Progress {
    restored: Restored,
    last_batch: Instant,
}

/// The archive as the stream reader's sink: each batch one transaction.
struct RestoreSink {
    store: Store,
    progress: Arc<Mutex<Progress>>,
    /// When the command started: an event stamped after it means the refill has caught up.
    started: DateTime<Utc>,
    done: CancellationToken,
}

impl LogSink for RestoreSink {
    async fn write(&mut self, events: &[LogEvent]) -> anyhow::Result<()> {
        let batch: Vec<_> = events.iter().map(|e| e.event.clone()).collect();
        let inserted = self
            .store
            .insert(&batch)
            .await
            .context("Failed to insert a batch into the archive")?;
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let restored = &mut progress.restored;
        restored.read += events.len() as u64;
        restored.inserted += inserted;
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            let from = restored.offsets.map_or(first.offset, |(from, _)| from);
            restored.offsets = Some((from, last.offset));
        }
        progress.last_batch = Instant::now();
        if events.iter().any(|e| e.event.at >= self.started) {
            self.done.cancel();
        }
        Ok(())
    }
}
