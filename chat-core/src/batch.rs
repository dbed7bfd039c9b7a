//! The steps every durable reader of the broker takes around its sink, written once so that
//! the side subscribers (on their queues, [`crate::subscriber`]) and the readers of the event
//! log stream ([`crate::replay`]) batch, stop, retry and ack alike: collect what arrives
//! within a linger of the first delivery, hand it to the sink until the sink holds it, then
//! one multiple-ack for the batch (`broker::ack_through`).

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;

use crate::broker::Backoff;
use crate::event::Event;
use crate::replay::{LogEvent, LogSink};
use crate::subscriber::EventSink;

/// The first delivery and whatever follows within `linger` of it, up to `max` in all: under
/// load one fsync or commit covers many events, for a few milliseconds of latency when
/// traffic is light. `None` if shutdown came before the first delivery; shutdown is only
/// looked at between batches, so a batch begun is always finished. An error if the broker
/// cancelled the consumer or a delivery failed (the session then ends and reconnects).
pub async fn next(
    consumer: &mut lapin::Consumer,
    max: usize,
    linger: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Vec<Delivery>>> {
    let first = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return Ok(None),
        next = consumer.next() => next,
    };
    let Some(first) = first else {
        bail!("the broker cancelled the consumer");
    };
    let mut batch = vec![first.context("Delivery failed")?];
    let linger = tokio::time::sleep(linger);
    tokio::pin!(linger);
    while batch.len() < max {
        tokio::select! {
            biased;
            next = consumer.next() => match next {
                Some(delivery) => batch.push(delivery.context("Delivery failed")?),
                None => break,
            },
            _ = &mut linger => break,
        }
    }
    Ok(Some(batch))
}

/// What [`write_until_held`] writes to: a subscriber's [`EventSink`] or a log reader's
/// [`LogSink`], whose batches differ only in their item type.
pub trait Sink<T>: Send {
    fn write_batch(&mut self, items: &[T]) -> impl Future<Output = anyhow::Result<()>> + Send;
}

impl<S: EventSink> Sink<Event> for S {
    fn write_batch(&mut self, items: &[Event]) -> impl Future<Output = anyhow::Result<()>> + Send {
        self.write(items)
    }
}

impl<S: LogSink> Sink<LogEvent> for S {
    fn write_batch(
        &mut self,
        items: &[LogEvent],
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        self.write(items)
    }
}

/// Hands the batch to the sink until it holds it, waiting with capped exponential backoff
/// (200 ms to 10 s) between attempts and telling `failed` each error and the wait before
/// the next try. False if shutdown came first: the batch is then neither written nor acked.
pub async fn write_until_held<T: Sync>(
    sink: &mut impl Sink<T>,
    items: &[T],
    mut failed: impl FnMut(&anyhow::Error, Duration) + Send,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match sink.write_batch(items).await {
            Ok(()) => return true,
            Err(err) => {
                let delay = backoff.next_delay();
                failed(&err, delay);
                if !backoff.sleep(delay, shutdown).await {
                    return false;
                }
            }
        }
    }
}
