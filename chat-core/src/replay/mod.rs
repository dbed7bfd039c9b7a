//! Catching up and following live from the event log stream `<prefix>.log` (docs/topology.md,
//! "Catching up"): a reader starts at the oldest retained event, at a time, or at an offset
//! it stored ([`StartAt`]), gets every event from there in the broker's order, and then the
//! live ones, on one consumer. The past and the present are one sequence of offsets, so
//! there is no handoff between them where an event could fall through or come twice.
//!
//! What it guarantees: events reach the [`LogSink`] in stream order, each offset at most once
//! per run (a reconnect resumes after the last batch the sink accepted; anything older the
//! broker sends is dropped); a copy of an event that a gateway published again after a lost
//! confirm (same id) is dropped within a window of 65 536 ids, also across a restart from a
//! stored offset (the reader first reads the [`WARM_UP`] entries before it again, only to
//! remember their ids); a delivery that is not a valid event is skipped and counted (a
//! stream cannot dead-letter). A run ends between batches; if the sink stores its offset
//! with each batch, the next run neither misses nor repeats one. A sink that cannot must be
//! idempotent by event id, like every subscriber's (delivery is at-least-once then).

mod cursor;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use lapin::{
    message::Delivery,
    options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    Connection,
};
use tokio_util::sync::CancellationToken;

use crate::batch;
use crate::broker::{Session, Supervisor};
use crate::event::Event;
pub use crate::log_stream::StartAt;
use crate::topology::Topology;
use cursor::{Admit, Cursor};

/// How many recent ids a reader remembers to drop a republished copy (as many as the
/// logger: a gateway republishes within `PUBLISH_TIMEOUT_MS`, a few seconds).
pub const DEDUPE_WINDOW: usize = 65_536;

/// How many entries before a stored offset a reader reads again when it starts there, only
/// to remember their ids: a copy republished after the offset of an event handled before it
/// (by the previous run) is then dropped too.
pub const WARM_UP: u64 = DEDUPE_WINDOW as u64;

/// One event of the log and its offset, the position a reader stores to resume after it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    /// The event's offset in the stream: increasing, never reused.
    pub offset: u64,
    /// The event, validated like every delivery (`Event::decode`).
    pub event: Event,
}

/// Where a reader puts the events it reads.
pub trait LogSink: Send {
    /// Handles a batch, in log order. To resume after a restart, make the batch and the
    /// offset of its last event durable together, and start the next run at
    /// [`StartAt::after`] that offset. Returning an error retries the same batch (with
    /// backoff), so this must be idempotent by event id.
    fn write(&mut self, events: &[LogEvent]) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How a reader reads the log.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Broker URL (one node or a comma-separated list).
    pub amqp_url: String,
    /// Names of the exchange and the stream.
    pub topology: Topology,
    /// The reader's name: its connection's and its consumer tag.
    pub name: String,
    /// Where the first session starts; later sessions resume after the last batch written.
    pub start: StartAt,
    /// Most unacked deliveries in flight (a stream requires a prefetch).
    pub prefetch: u16,
    /// Most events handed to the sink in one batch.
    pub batch_max: usize,
    /// How long a batch may wait for more events after its first.
    pub batch_linger: Duration,
}

/// Reads the log from `config.start` and follows it live until `shutdown` is cancelled;
/// the batch in hand is written first. The stream must exist (the archiver declares it):
/// until it does, each attempt fails, is logged, and is retried after backoff.
pub async fn follow<S: LogSink>(
    config: ReplayConfig,
    mut sink: S,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let supervisor = Supervisor::new(&config.amqp_url, &config.name, shutdown.clone());
    let mut reader = Reader {
        config: &config,
        sink: &mut sink,
        cursor: Cursor::new(config.start),
        shutdown: &shutdown,
    };
    let outcome = supervisor.run(&mut reader).await;
    tracing::info!(reader = %config.name, "log reader stopped");
    outcome
}

/// What a reader does on each broker connection.
struct Reader<'r, S> {
    config: &'r ReplayConfig,
    sink: &'r mut S,
    cursor: Cursor,
    shutdown: &'r CancellationToken,
}

impl<S: LogSink> Session for Reader<'_, S> {
    async fn run(
        &mut self,
        connection: &Connection,
        supervisor: &mut Supervisor,
    ) -> anyhow::Result<()> {
        read(
            connection,
            self.config,
            self.sink,
            &mut self.cursor,
            supervisor,
            self.shutdown,
        )
        .await
    }
}

/// One broker session: attach where the cursor says, then batches until shutdown (`Ok`) or a
/// broker error.
async fn read<S: LogSink>(
    connection: &Connection,
    config: &ReplayConfig,
    sink: &mut S,
    cursor: &mut Cursor,
    supervisor: &mut Supervisor,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // A batch a failed session was collecting was never written: read it again.
    cursor.abort();
    let channel = crate::broker::open_channel(connection).await?;
    let stream = config.topology.log_stream();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(stream.as_str().into(), passive, FieldTable::default())
        .await
        .with_context(|| {
            format!("The event log stream {stream} is not there (the archiver declares it when it starts)")
        })?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .context("Failed to set the prefetch")?;
    let start = cursor.resume_at();
    // Not `broker::consume`: a stream's consumer takes where to start as an argument.
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), start.consume_argument());
    let mut consumer = channel
        .basic_consume(
            stream.as_str().into(),
            config.name.as_str().into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .with_context(|| format!("Failed to read {stream}"))?;
    supervisor.up();
    tracing::info!(reader = %config.name, %stream, %start, "reading the event log");

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
        let (events, last) = sort_out(&config.name, cursor, batch)?;
        let reader = config.name.as_str();
        let written = events.is_empty()
            || batch::write_until_held(
                sink,
                &events,
                |err, delay| {
                    tracing::error!(
                        reader,
                        error = format!("{err:#}"),
                        events = events.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot handle a batch of the log; retrying it"
                    )
                },
                shutdown,
            )
            .await;
        if !written {
            cursor.abort();
            crate::broker::close_channels(&[channel]).await;
            return Ok(());
        }
        // Written: a reconnect from here on resumes after this batch, even if the ack
        // below is lost with the channel.
        cursor.commit();
        // A stream's acks only give the consumer credit; one covers the whole batch.
        crate::broker::ack_through(last).await?;
    }
}

/// Turns a batch of deliveries into the events the sink gets (the cursor drops what was
/// read before, what precedes a start time and repeated ids; invalid ones are skipped), and
/// returns the last delivery, whose multiple-ack covers the batch.
fn sort_out(
    reader: &str,
    cursor: &mut Cursor,
    batch: Vec<Delivery>,
) -> anyhow::Result<(Vec<LogEvent>, Delivery)> {
    let mut events = Vec::with_capacity(batch.len());
    let mut last = None;
    for delivery in batch {
        let offset = stream_offset(&delivery).context(
            "a delivery from the event log stream carries no x-stream-offset: is it a stream?",
        )?;
        match Event::decode(&delivery.data) {
            Ok(event) => match cursor.admit(offset, &event) {
                Admit::New => events.push(LogEvent { offset, event }),
                skipped => {
                    metrics::counter!("chat_log_skipped_total", "reader" => reader.to_owned(), "why" => skipped.as_str())
                        .increment(1);
                }
            },
            Err(err) => {
                cursor.skip(offset);
                metrics::counter!("chat_log_skipped_total", "reader" => reader.to_owned(), "why" => "invalid")
                    .increment(1);
                tracing::warn!(
                    reader,
                    offset,
                    error = %err,
                    "skipping a log entry that is not a valid event"
                );
            }
        }
        last = Some(delivery);
    }
    // A batch has at least its first delivery.
    let last = last.context("an empty batch")?;
    Ok((events, last))
}

/// The offset RabbitMQ puts in each delivery from a stream (`x-stream-offset`, a long).
fn stream_offset(delivery: &Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}
