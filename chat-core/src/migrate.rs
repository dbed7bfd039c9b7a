//! Moving an existing installation's queues to the arguments this version declares (from
//! classic to quorum queues, most often) without losing an event, while chat goes on.
//!
//! RabbitMQ cannot change a queue's type or arguments: the queue must be deleted and
//! declared again, and deleting it would lose its backlog. So each queue `Q` is rebuilt
//! through two temporary quorum queues, in steps that can each be repeated, so that a
//! migration that was interrupted is finished by running it again:
//!
//! 1. `Q.migrating` is declared and bound where `Q` is bound: from now on it receives
//!    every new event. Then `Q` is unbound, so its content is only its backlog.
//! 2. That backlog is moved to `Q.migrating-backlog` (each message published with a
//!    confirm before it is acked in `Q`), and `Q`, now empty, is deleted.
//! 3. `Q` is declared with the new arguments; the backlog is moved into it, then what
//!    `Q.migrating` received meanwhile. `Q` is bound again, the rest of `Q.migrating` is
//!    moved, `Q.migrating` unbound, emptied into `Q` and deleted.
//!
//! Nothing is lost: every message is in a queue at every moment. Events that arrived while
//! both `Q` and `Q.migrating` were bound are in `Q` twice; consumers deduplicate by id. The
//! backlog keeps its order, ahead of the events that came during the migration; of those,
//! the few that came in the instant between the last move and the rebinding can land
//! after newer ones.
//!
//! The queue's consumers must be stopped: a consumer would take events from the old queue
//! while it is being emptied, and its redeclaration would race the migration. The
//! migration refuses to start while `Q` has consumers.

use anyhow::{bail, Context};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection};

use crate::topology::{is_precondition_failed, Topology};

/// How many messages are moved between two waits for their confirms.
const MOVE_BATCH: usize = 500;

/// Which of the system's queues to migrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `<prefix>.dead`, bound to `<prefix>.dlx`.
    Dead,
    /// `<prefix>.<name>`, a subscriber's queue bound to `<prefix>.events`.
    Subscriber(String),
}

/// What a migration found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The queue does not exist: nothing to migrate (a service declares it when it starts).
    Missing,
    /// The queue already has this version's arguments, and no migration was under way.
    UpToDate,
    /// The queue was declared again with this version's arguments; `moved` messages were
    /// carried over.
    Migrated {
        /// Messages moved from the old queue and the temporary ones into the new queue.
        moved: u64,
    },
}

/// One queue's names and arguments.
struct Plan {
    queue: String,
    exchange: String,
    arguments: FieldTable,
    live: String,
    backlog: String,
}

impl Plan {
    fn new(topology: &Topology, target: &Target) -> Self {
        let (queue, exchange, arguments) = match target {
            Target::Dead => (
                topology.dead_queue(),
                topology.dead_letter_exchange(),
                topology.dead_queue_arguments(),
            ),
            Target::Subscriber(name) => (
                topology.subscriber_queue(name),
                topology.events_exchange(),
                topology.subscriber_queue_arguments(),
            ),
        };
        Self {
            live: format!("{queue}.migrating"),
            backlog: format!("{queue}.migrating-backlog"),
            queue,
            exchange,
            arguments,
        }
    }
}

/// Migrates one queue (see the module's documentation); safe to run again after an
/// interruption, and a no-op on a queue that is already up to date.
pub async fn migrate(
    connection: &Connection,
    topology: &Topology,
    target: &Target,
) -> anyhow::Result<Outcome> {
    let plan = Plan::new(topology, target);
    let channel = crate::broker::open_channel(connection).await?;
    topology
        .declare_base_exchanges(&channel)
        .await
        .context("Failed to declare the exchanges")?;

    let old = inspect(connection, &plan.queue).await?;
    let live_exists = inspect(connection, &plan.live).await?.is_some();
    let backlog_exists = inspect(connection, &plan.backlog).await?.is_some();
    let mut moved = 0;
    match old {
        None if !live_exists && !backlog_exists => return Ok(Outcome::Missing),
        None => {}
        Some(consumers) => {
            if has_arguments(connection, &plan.queue, &plan.arguments).await? {
                if !live_exists && !backlog_exists {
                    return Ok(Outcome::UpToDate);
                }
            } else {
                if consumers > 0 {
                    bail!(
                        "{} has {consumers} consumer(s): stop every service that consumes it \
                         (the logger, the archiver, any side subscriber) and run the migration again",
                        plan.queue
                    );
                }
                // Step 1: new events go to the live queue from now on.
                declare_temporary(&channel, &plan.live).await?;
                bind(&channel, &plan.live, &plan.exchange).await?;
                unbind(&channel, &plan.queue, &plan.exchange).await?;
                // Step 2: the frozen backlog moves aside, and the old queue goes.
                declare_temporary(&channel, &plan.backlog).await?;
                moved += move_all(connection, &plan.queue, &plan.backlog).await?;
                channel
                    .queue_delete(
                        plan.queue.as_str().into(),
                        QueueDeleteOptions {
                            if_empty: true,
                            if_unused: true,
                            ..QueueDeleteOptions::default()
                        },
                    )
                    .await
                    .with_context(|| format!("Failed to delete the old {}", plan.queue))?;
            }
        }
    }

    // Step 3: the new queue, the backlog first, then what came meanwhile.
    channel
        .queue_declare(
            plan.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            plan.arguments.clone(),
        )
        .await
        .with_context(|| format!("Failed to declare the new {}", plan.queue))?;
    if backlog_exists || inspect(connection, &plan.backlog).await?.is_some() {
        moved += move_all(connection, &plan.backlog, &plan.queue).await?;
        delete(&channel, &plan.backlog).await?;
    }
    if inspect(connection, &plan.live).await?.is_some() {
        moved += move_all(connection, &plan.live, &plan.queue).await?;
        bind(&channel, &plan.queue, &plan.exchange).await?;
        moved += move_all(connection, &plan.live, &plan.queue).await?;
        unbind(&channel, &plan.live, &plan.exchange).await?;
        moved += move_all(connection, &plan.live, &plan.queue).await?;
        delete(&channel, &plan.live).await?;
    } else {
        bind(&channel, &plan.queue, &plan.exchange).await?;
    }
    let _ = channel.close(200, "migrated".into()).await;
    Ok(Outcome::Migrated { moved })
}

/// The consumer count of `queue`, or `None` if it does not exist (a passive declare, on a
/// channel of its own because a failed one closes its channel).
async fn inspect(connection: &Connection, queue: &str) -> anyhow::Result<Option<u32>> {
    let channel = crate::broker::open_channel(connection).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let found = match channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(found) => Some(found.consumer_count()),
        Err(err) if is_not_found(&err) => None,
        Err(err) => return Err(err).with_context(|| format!("Failed to look up {queue}")),
    };
    let _ = channel.close(200, "looked".into()).await;
    Ok(found)
}

/// Whether the existing `queue` has exactly `arguments`: a declaration with them succeeds.
async fn has_arguments(
    connection: &Connection,
    queue: &str,
    arguments: &FieldTable,
) -> anyhow::Result<bool> {
    let channel = crate::broker::open_channel(connection).await?;
    match channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            arguments.clone(),
        )
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "looked".into()).await;
            Ok(true)
        }
        Err(err) if is_precondition_failed(&err) => Ok(false),
        Err(err) => Err(err).with_context(|| format!("Failed to check {queue}")),
    }
}

fn is_not_found(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(
                e.kind(),
                lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
            )
    )
}

/// A temporary queue: a plain quorum queue, so it survives a node as the real one will.
async fn declare_temporary(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .with_context(|| format!("Failed to declare {queue}"))?;
    Ok(())
}

async fn bind(channel: &Channel, queue: &str, exchange: &str) -> anyhow::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("Failed to bind {queue} to {exchange}"))
}

async fn unbind(channel: &Channel, queue: &str, exchange: &str) -> anyhow::Result<()> {
    channel
        .queue_unbind(
            queue.into(),
            exchange.into(),
            "".into(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("Failed to unbind {queue} from {exchange}"))
}

/// Deletes an emptied, unbound temporary queue; refuses (and keeps it) if anything is left
/// in it. (Quorum queues do not support `if-empty`, so the count is looked at first; the
/// queue is bound to nothing by then, so nothing can arrive in between.)
async fn delete(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let left = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .with_context(|| format!("Failed to look up {queue}"))?
        .message_count();
    if left > 0 {
        bail!("{queue} still holds {left} message(s); run the migration again");
    }
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("Failed to delete {queue}"))?;
    Ok(())
}

/// Moves every message of `from` to the end of `to`, in order, with body and properties
/// (headers such as `x-death` included): each batch is published to `to` through the
/// default exchange, mandatory, and acked in `from` only once the broker confirmed all of
/// it. Returns how many were moved.
///
/// Each move has a channel of its own: RabbitMQ 3.10 keeps, per channel, the type of the
/// queues the channel has used by name, and a channel that took messages from the classic
/// `Q` crashes when it publishes to the quorum `Q` declared in its place.
async fn move_all(connection: &Connection, from: &str, to: &str) -> anyhow::Result<u64> {
    let channel = crate::broker::open_channel(connection).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("Failed to enable publisher confirms")?;
    let mut moved = 0;
    loop {
        let mut confirms = Vec::with_capacity(MOVE_BATCH);
        let mut last = None;
        while confirms.len() < MOVE_BATCH {
            let Some(message) = channel
                .basic_get(from.into(), BasicGetOptions { no_ack: false })
                .await
                .with_context(|| format!("Failed to get from {from}"))?
            else {
                break;
            };
            let delivery = message.delivery;
            let confirm = channel
                .basic_publish(
                    "".into(),
                    to.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    delivery.properties.clone(),
                )
                .await
                .with_context(|| format!("Failed to publish to {to}"))?;
            confirms.push(confirm);
            last = Some(delivery);
        }
        let Some(last) = last else {
            let _ = channel.close(200, "moved".into()).await;
            return Ok(moved);
        };
        let count = confirms.len() as u64;
        for confirm in confirms {
            match confirm
                .await
                .with_context(|| format!("No confirm from {to}"))?
            {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) => bail!("{to} does not exist: the message came back"),
                Confirmation::Nack(_) | Confirmation::NotRequested => {
                    bail!("the broker did not take a message into {to}")
                }
            }
        }
        last.ack(BasicAckOptions { multiple: true })
            .await
            .with_context(|| format!("Failed to ack in {from}"))?;
        moved += count;
    }
}
