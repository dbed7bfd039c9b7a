//! The broker topology: a contract other programs rely on (docs/topology.md). Every name
//! derives from one prefix (`CHAT_PREFIX`), so two systems or two tests can share a broker
//! without seeing each other. Declarations are idempotent: every service declares what it
//! uses each time it (re)connects, so start-up order does not matter.
//!
//! The queues that must outlive a broker node (`<prefix>.dead` and every subscriber's) are
//! quorum queues, replicated by Raft over a cluster's nodes; a gateway's own queue stays a
//! classic exclusive one, which dies with its connection anyway. A queue that already
//! exists with other arguments (a classic one from before, most often) is refused with a
//! [`QueueConflict`] that says how to migrate it (`chat_core::migrate`).

use lapin::{
    options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable},
    Channel, ExchangeKind,
};

/// How long a history request may wait in its queue before the broker drops it; the
/// gateway has given up on it by then.
pub const HISTORY_REQUEST_TTL_MS: u32 = 10_000;

/// How many times a quorum queue delivers one message before dead-lettering it
/// (`x-delivery-limit`). A message that makes its consumer crash is thereby contained. It
/// is generous because RabbitMQ also counts a delivery that came back because the
/// consumer's channel was lost (a node failure, a restart), and a valid event must not be
/// dead-lettered for a few outages in a row; one that is can be moved back from
/// `<prefix>.dead`.
pub const DELIVERY_LIMIT: i32 = 20;

/// A queue exists with other arguments than this version declares, so the broker refused
/// the declaration (`406 PRECONDITION_FAILED`). Retrying cannot help: an operator must
/// migrate the queue (or, for the event log stream, restore its settings), so a service
/// that meets this stops with this message.
#[derive(Debug, thiserror::Error)]
#[error(
    "the broker already has a queue {queue:?} with other arguments than this version declares \
     ({detail}). {remedy}"
)]
pub struct QueueConflict {
    /// The queue.
    pub queue: String,
    /// The broker's words.
    pub detail: String,
    /// What the operator can do about it.
    pub remedy: &'static str,
}

/// What to do about a subscriber queue (or `<prefix>.dead`) with other arguments.
const MIGRATE_QUEUES: &str = "Queues made by a version before quorum queues are classic: stop \
     every consumer of the queue (logger, archiver), run `archiver migrate-queues` with the same \
     AMQP_URL and CHAT_PREFIX, and start them again (docs/operations.md, \"Migrating to quorum \
     queues\")";

/// What to do about an event log stream declared with other retention arguments.
const RESTORE_RETENTION: &str = "The event log stream keeps the arguments it was created with: \
     give every archiver the LOG_STREAM_* settings it was created with, and change the retention \
     of the existing stream with a RabbitMQ policy instead, which takes precedence over the \
     arguments (docs/operations.md, \"The event log stream\"). If the queue is not a stream at \
     all, a side subscriber named `log` took its name: delete that queue";

/// Whether `err` is the broker refusing a declaration that differs from an existing one.
pub fn is_precondition_failed(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

/// Turns a refused declaration of `queue` into a [`QueueConflict`] saying `remedy`, anything
/// else into itself.
fn explain(err: lapin::Error, queue: &str, remedy: &'static str) -> anyhow::Error {
    if is_precondition_failed(&err) {
        let detail = match err.kind() {
            lapin::ErrorKind::ProtocolError(e) => e.get_message().to_string(),
            _ => err.to_string(),
        };
        QueueConflict {
            queue: queue.to_owned(),
            detail,
            remedy,
        }
        .into()
    } else {
        anyhow::Error::new(err).context(format!("Failed to declare the queue {queue}"))
    }
}

/// The routing key of the events every gateway needs, whatever rooms it serves: the
/// membership events (the access projection of every gateway folds them), and anything
/// published with the empty key (older gateways, other producers).
pub const EVERY_GATEWAY: &str = "";

/// The routing key an event is published with. The events exchange is a fanout and
/// ignores it; the rooms exchange routes by it: a room's `message`, `join` and `leave` go
/// to the gateways serving that room, membership events to every gateway. Room names are
/// never empty, so no room can take [`EVERY_GATEWAY`].
pub fn routing_key(event: &crate::Event) -> &str {
    if event.kind.is_membership() {
        EVERY_GATEWAY
    } else {
        &event.room
    }
}

/// The names derived from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

/// A prefix that cannot form valid broker names.
#[derive(Debug, thiserror::Error)]
#[error("CHAT_PREFIX must be 1 to 100 characters of A-Z, a-z, 0-9, '_', '-' or '.', got {0:?}")]
pub struct InvalidPrefix(String);

impl Topology {
    /// Validates the prefix; broker names are at most 255 bytes, so it is kept short.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 100
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(InvalidPrefix(prefix.to_owned()))
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.events`: the fanout exchange every event is published to.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// `<prefix>.rooms`: the direct exchange that routes each event to the gateways serving
    /// its room. It is bound to the events exchange (every event passes through it with the
    /// routing key it was published with, [`routing_key`]); a gateway binds its queue with
    /// the key of each room it has members in, and with [`EVERY_GATEWAY`] for the events
    /// every gateway needs.
    pub fn rooms_exchange(&self) -> String {
        format!("{}.rooms", self.prefix)
    }

    /// `<prefix>.dlx`: the fanout exchange that rejected deliveries are dead-lettered to.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// `<prefix>.dead`: the durable queue that keeps dead-lettered deliveries for operators.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// `<prefix>.history`: where gateways send history requests for the archiver.
    pub fn history_queue(&self) -> String {
        format!("{}.history", self.prefix)
    }

    /// `<prefix>.presence`: the transient fanout exchange on which gateways tell each other
    /// who is online and who is typing. Nothing durable is bound to it: the logger and the
    /// archiver never see it.
    pub fn presence_exchange(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// Declares the presence exchange (not durable: presence is rebuilt from heartbeats
    /// after a broker restart) and a gateway's own exclusive queue on it, whose messages
    /// expire after `ttl_ms` (older presence is stale anyway) and of which at most
    /// `max_length` wait (the oldest are dropped). Returns the queue name.
    pub async fn declare_presence_queue(
        &self,
        channel: &Channel,
        ttl_ms: u32,
        max_length: u32,
    ) -> lapin::Result<String> {
        let exchange = self.presence_exchange();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongUInt(ttl_ms));
        args.insert("x-max-length".into(), AMQPValue::LongUInt(max_length));
        let queue = channel.queue_declare("".into(), options, args).await?;
        let name = queue.name().to_string();
        channel
            .queue_bind(
                name.as_str().into(),
                exchange.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(name)
    }

    /// `<prefix>.log`: the stream bound to the events exchange that keeps every event for
    /// its retention (`crate::log_stream`), so a subscriber can read the past from the
    /// broker and go on live (`crate::replay`).
    pub fn log_stream(&self) -> String {
        format!("{}.log", self.prefix)
    }

    /// Declares the event log stream with `retention` and binds it to the events exchange;
    /// returns its name. The archiver does so before it binds its own queue, so the stream
    /// holds every event the archive does (within its retention). Fails with a
    /// [`QueueConflict`] if the stream exists with other arguments.
    pub async fn declare_log_stream(
        &self,
        channel: &Channel,
        retention: &crate::log_stream::LogRetention,
    ) -> anyhow::Result<String> {
        let stream = self.log_stream();
        channel
            .queue_declare(
                stream.as_str().into(),
                QueueDeclareOptions::durable(),
                retention.arguments(),
            )
            .await
            .map_err(|err| explain(err, &stream, RESTORE_RETENTION))?;
        self.bind_to_events(channel, &stream).await?;
        Ok(stream)
    }

    /// `<prefix>.<name>`: the durable queue of a side subscriber such as `logger`.
    pub fn subscriber_queue(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Declares what every participant relies on: the events exchange and the dead-letter
    /// exchange with its quorum queue. Fails with a [`QueueConflict`] if `<prefix>.dead`
    /// exists with other arguments.
    pub async fn declare_base(&self, channel: &Channel) -> anyhow::Result<()> {
        self.declare_base_exchanges(channel).await?;
        let dead = self.dead_queue();
        channel
            .queue_declare(
                dead.as_str().into(),
                QueueDeclareOptions::durable(),
                self.dead_queue_arguments(),
            )
            .await
            .map_err(|err| explain(err, &dead, MIGRATE_QUEUES))?;
        channel
            .queue_bind(
                dead.into(),
                self.dead_letter_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Declares the events exchange and the dead-letter exchange (both fanout, durable).
    pub async fn declare_base_exchanges(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
    }

    /// The arguments of `<prefix>.dead`: a quorum queue, nothing else (nobody consumes it,
    /// so it needs no delivery limit, and it dead-letters nowhere).
    pub fn dead_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args
    }

    /// The arguments of every subscriber's queue: a quorum queue that dead-letters to
    /// `<prefix>.dlx` what its consumer rejects or what was delivered [`DELIVERY_LIMIT`]
    /// times, at least once (the broker keeps a message until `<prefix>.dead` confirms it,
    /// which RabbitMQ allows only with `x-overflow` = `reject-publish`).
    pub fn subscriber_queue_arguments(&self) -> FieldTable {
        let mut args = self.dead_lettering();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(DELIVERY_LIMIT),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args
    }

    /// Declares a side subscriber's quorum queue ([`Topology::subscriber_queue_arguments`]),
    /// bound to the events exchange. Returns the queue name; fails with a
    /// [`QueueConflict`] if the queue exists with other arguments.
    pub async fn declare_subscriber_queue(
        &self,
        channel: &Channel,
        name: &str,
    ) -> anyhow::Result<String> {
        let queue = self.subscriber_queue(name);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                self.subscriber_queue_arguments(),
            )
            .await
            .map_err(|err| explain(err, &queue, MIGRATE_QUEUES))?;
        self.bind_to_events(channel, &queue).await?;
        Ok(queue)
    }

    /// Declares a gateway's own queue: server-named, exclusive and auto-delete, so it lives
    /// exactly as long as the gateway's connection. Returns the name the broker chose.
    /// Unrouted, it is bound to the events exchange and gets every event. Routed by room, it
    /// is bound to the rooms exchange (declared here, and bound to the events exchange) with
    /// [`EVERY_GATEWAY`] only: the caller binds each room it serves ([`Topology::bind_room`]).
    pub async fn declare_gateway_queue(
        &self,
        channel: &Channel,
        routed: bool,
    ) -> lapin::Result<String> {
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), options, self.dead_lettering())
            .await?;
        let name = queue.name().to_string();
        if routed {
            self.declare_rooms_exchange(channel).await?;
            self.bind_room(channel, &name, EVERY_GATEWAY).await?;
        } else {
            self.bind_to_events(channel, &name).await?;
        }
        Ok(name)
    }

    /// Declares the rooms exchange (direct, durable) and binds it to the events exchange,
    /// so that every event reaches it with its routing key.
    pub async fn declare_rooms_exchange(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.rooms_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_bind(
                self.rooms_exchange().into(),
                self.events_exchange().into(),
                "".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Binds a gateway's queue to the rooms exchange with `key`: a room's name, or
    /// [`EVERY_GATEWAY`]. Once the broker answers, every event published with that key
    /// reaches the queue.
    pub async fn bind_room(&self, channel: &Channel, queue: &str, key: &str) -> lapin::Result<()> {
        channel
            .queue_bind(
                queue.into(),
                self.rooms_exchange().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Removes a room's binding of a gateway's queue: its events stop reaching the queue.
    pub async fn unbind_room(
        &self,
        channel: &Channel,
        queue: &str,
        key: &str,
    ) -> lapin::Result<()> {
        channel
            .queue_unbind(
                queue.into(),
                self.rooms_exchange().into(),
                key.into(),
                FieldTable::default(),
            )
            .await
    }

    /// Declares the history request queue. It is not durable: a request is only useful for
    /// the few seconds a gateway waits for its answer.
    pub async fn declare_history_queue(&self, channel: &Channel) -> lapin::Result<String> {
        let queue = self.history_queue();
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongUInt(HISTORY_REQUEST_TTL_MS),
        );
        channel
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
            .await?;
        Ok(queue)
    }

    fn dead_lettering(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        args
    }

    /// Binds `queue` to the events exchange with routing key `""`.
    pub async fn bind_to_events(&self, channel: &Channel, queue: &str) -> lapin::Result<()> {
        channel
            .queue_bind(
                queue.into(),
                self.events_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_derives_from_the_prefix() {
        let t = Topology::new("chat").unwrap();
        assert_eq!(t.events_exchange(), "chat.events");
        assert_eq!(t.dead_queue(), "chat.dead");
        assert_eq!(t.history_queue(), "chat.history");
        assert_eq!(t.rooms_exchange(), "chat.rooms");
        assert_eq!(t.subscriber_queue("logger"), "chat.logger");
        assert_eq!(t.subscriber_queue("archiver"), "chat.archiver");
        assert_eq!(t.log_stream(), "chat.log");
    }

    #[test]
    fn room_events_are_keyed_by_room_and_membership_events_reach_every_gateway() {
        use crate::{Event, EventKind};
        for kind in [EventKind::Message, EventKind::Join, EventKind::Leave] {
            let event = Event::new(kind, "lobby", "alice", None, "gw-1");
            assert_eq!(routing_key(&event), "lobby", "{kind:?}");
        }
        for kind in [
            EventKind::RoomCreated,
            EventKind::MemberAdded,
            EventKind::MemberRemoved,
        ] {
            let event = Event::new(kind, "club", "alice", None, "gw-1");
            assert_eq!(routing_key(&event), EVERY_GATEWAY, "{kind:?}");
        }
        assert!(crate::normalize::room(EVERY_GATEWAY).is_err());
    }

    #[test]
    fn prefixes_that_would_break_broker_names_are_refused() {
        assert!(Topology::new("").is_err());
        assert!(Topology::new("a b").is_err());
        assert!(Topology::new(&"x".repeat(101)).is_err());
        assert!(Topology::new("test-1.a_b").is_ok());
    }

    #[test]
    fn subscriber_queues_are_quorum_queues_that_contain_poison() {
        let t = Topology::new("chat").unwrap();
        let args = t.subscriber_queue_arguments();
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            get("x-delivery-limit"),
            Some(AMQPValue::LongInt(DELIVERY_LIMIT))
        );
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(AMQPValue::LongString("at-least-once".into()))
        );
        assert_eq!(
            get("x-overflow"),
            Some(AMQPValue::LongString("reject-publish".into()))
        );
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(AMQPValue::LongString("chat.dlx".into()))
        );
        assert_eq!(
            args.inner().len(),
            5,
            "every declarer must send exactly these"
        );
    }
}
