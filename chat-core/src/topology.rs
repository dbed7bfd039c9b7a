//! The broker topology: a contract other programs rely on (docs/topology.md). Every name
//! derives from one prefix (`CHAT_PREFIX`), so two systems or two tests can share a broker
//! without seeing each other. Declarations are idempotent: every service declares what it
//! uses each time it (re)connects, so start-up order does not matter.

use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    Channel, ExchangeKind,
};

/// How long a history request may wait in its queue before the broker drops it; the
/// gateway has given up on it by then.
pub const HISTORY_REQUEST_TTL_MS: u32 = 10_000;

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

    /// `<prefix>.<name>`: the durable queue of a side subscriber such as `logger`.
    pub fn subscriber_queue(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Declares what every participant relies on: the events exchange and the dead-letter
    /// exchange with its queue.
    pub async fn declare_base(&self, channel: &Channel) -> lapin::Result<()> {
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
            .await?;
        let dead = self.dead_queue();
        channel
            .queue_declare(
                dead.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                dead.into(),
                self.dead_letter_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Declares a side subscriber's durable queue, bound to the events exchange, whose
    /// rejected deliveries go to the dead-letter exchange. Returns the queue name.
    pub async fn declare_subscriber_queue(
        &self,
        channel: &Channel,
        name: &str,
    ) -> lapin::Result<String> {
        let queue = self.subscriber_queue(name);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                self.dead_lettering(),
            )
            .await?;
        self.bind_to_events(channel, &queue).await?;
        Ok(queue)
    }

    /// Declares a gateway's own queue: server-named, exclusive and auto-delete, so it lives
    /// exactly as long as the gateway's connection. Returns the name the broker chose.
    pub async fn declare_gateway_queue(&self, channel: &Channel) -> lapin::Result<String> {
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), options, self.dead_lettering())
            .await?;
        let name = queue.name().to_string();
        self.bind_to_events(channel, &name).await?;
        Ok(name)
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

    async fn bind_to_events(&self, channel: &Channel, queue: &str) -> lapin::Result<()> {
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
        assert_eq!(t.subscriber_queue("logger"), "chat.logger");
        assert_eq!(t.subscriber_queue("archiver"), "chat.archiver");
    }

    #[test]
    fn prefixes_that_would_break_broker_names_are_refused() {
        assert!(Topology::new("").is_err());
        assert!(Topology::new("a b").is_err());
        assert!(Topology::new(&"x".repeat(101)).is_err());
        assert!(Topology::new("test-1.a_b").is_ok());
    }
}
