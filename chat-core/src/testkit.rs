//! Helpers for the integration tests of every service (feature `testkit`, never in release
//! binaries): unique broker prefixes so tests run in parallel on one real RabbitMQ, raw
//! access to the exchange and queues, a minimal HTTP client and polling with a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::broker::{connect, event_properties};
use crate::topology::Topology;
use crate::Event;

/// The broker tests use: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".to_owned())
}

/// A prefix no other test uses: `t-<name>-<random>`.
pub fn unique_prefix(name: &str) -> String {
    // The tail of a UUIDv7 is random; its head is the clock, shared by parallel tests.
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("t-{name}-{}", &id[id.len() - 10..])
}

/// A direct connection to the test broker. It deletes the test's broker objects when the
/// test calls [`Broker::cleanup`], and also when a failing test unwinds past it, so no run
/// leaves `t-*` queues or exchanges behind. (Dropped without a panic, it only closes its
/// connection: some tests drop it on purpose before an outage and clean up later; one that
/// forgets is caught by `scripts/test.sh`'s leftover check.)
pub struct Broker {
    /// The connection.
    pub connection: Connection,
    /// The test's names.
    pub topology: Topology,
    /// Whether [`Broker::cleanup`] ran.
    cleaned: bool,
}

impl Broker {
    /// Connects and declares the base topology for `prefix`.
    pub async fn connect(prefix: &str) -> Self {
        let connection = connect(&amqp_url(), "test")
            .await
            .expect("test broker connection");
        let topology = Topology::new(prefix).expect("valid prefix");
        let channel = connection.create_channel().await.expect("channel");
        topology
            .declare_base(&channel)
            .await
            .expect("declare base topology");
        Self {
            connection,
            topology,
            cleaned: false,
        }
    }

    /// Publishes raw bytes to the events exchange, as a foreign producer would, and waits
    /// until the broker has routed them.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirm mode");
        channel
            .basic_publish(
                self.topology.events_exchange().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// Puts an event straight into one queue (through the default exchange), so that only
    /// that queue's consumer sees it: how a test makes one subscriber run ahead of another.
    pub async fn publish_event_to(&self, queue: &str, event: &Event) {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirm mode");
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                event.to_json().as_bytes(),
                event_properties(event),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// Publishes an event exactly as a gateway does.
    pub async fn publish_event(&self, event: &Event) {
        self.publish_raw(event.to_json().as_bytes(), event_properties(event))
            .await;
    }

    /// Takes every message currently in `queue` (acking them) and returns their bodies.
    pub async fn drain(&self, queue: &str) -> Vec<Vec<u8>> {
        let channel = self.connection.create_channel().await.expect("channel");
        let mut bodies = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            bodies.push(message.delivery.data.clone());
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        bodies
    }

    /// How many messages wait in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        self.inspect(queue)
            .await
            .expect("queue exists")
            .message_count()
    }

    /// How many consumers `queue` has.
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.inspect(queue)
            .await
            .expect("queue exists")
            .consumer_count()
    }

    /// Whether `queue` exists.
    pub async fn queue_exists(&self, queue: &str) -> bool {
        self.inspect(queue).await.is_ok()
    }

    /// A passive declare, on a throwaway channel (a failed one closes its channel).
    async fn inspect(&self, queue: &str) -> lapin::Result<lapin::Queue> {
        let channel = self.connection.create_channel().await.expect("channel");
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), passive, Default::default())
            .await
    }

    /// Deletes everything the test's prefix created, so the broker is left as found.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        delete_objects(&self.connection, &self.topology).await;
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.cleaned || !std::thread::panicking() {
            return;
        }
        // A test that ended early (a failed assertion): delete its objects from a thread
        // of its own, since an async runtime may be unwinding around us.
        let topology = self.topology.clone();
        let done = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(connection) = connect(&amqp_url(), "test cleanup").await {
                    delete_objects(&connection, &topology).await;
                    let _ = connection.close(200, "test cleanup".into()).await;
                }
            });
        });
        let _ = done.join();
    }
}

/// Deletes the queues and exchanges of a test's prefix that outlive their connections.
async fn delete_objects(connection: &Connection, t: &Topology) {
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    for queue in [
        t.dead_queue(),
        t.history_queue(),
        t.subscriber_queue("logger"),
        t.subscriber_queue("archiver"),
        t.log_stream(),
    ] {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        t.rooms_exchange(),
        t.events_exchange(),
        t.dead_letter_exchange(),
        t.presence_exchange(),
    ] {
        let _ = channel
            .exchange_delete(exchange.into(), Default::default())
            .await;
    }
}

/// `GET path` on `addr`; returns the status and body, or status 0 if nothing listens.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, &[]).await
}

/// `GET path` with extra headers (`("Authorization", "Bearer …")`), as [`http_get`].
pub async fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
