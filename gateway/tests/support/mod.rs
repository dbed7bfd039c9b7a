//! The test harness: every service started in-process on port 0 against the real broker,
//! with a unique `CHAT_PREFIX` and temporary files per test, and a websocket client that
//! speaks the protocol.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chat_core::testkit::{amqp_url, eventually, http_get, Broker};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long any single expected frame or condition may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A service running in this test process.
pub struct Service {
    /// Its HTTP address, if it has one.
    pub addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// The HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("this service has no HTTP address")
    }

    /// Stops the service the way SIGTERM does and waits until it has exited.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("service stops in time")
            .expect("service task")
            .expect("service exits cleanly");
    }
}

async fn wait_healthy(addr: SocketAddr) {
    eventually(WAIT, "a healthy /healthz", || async move {
        (http_get(addr, "/healthz").await.0 == 200).then_some(())
    })
    .await;
}

/// Starts a gateway and waits until it is linked to the broker.
pub async fn start_gateway(prefix: &str, extra: &[&str]) -> Service {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = amqp_url();
    let mut args = vec!["gateway", "--prefix", prefix, "--amqp-url", &url];
    args.extend_from_slice(extra);
    let config = gateway::Config::try_parse_from(args).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway::run(listener, config, shutdown.clone()));
    wait_healthy(addr).await;
    Service {
        addr: Some(addr),
        shutdown,
        task,
    }
}

/// Starts an archiver on `db` and waits until it consumes.
pub async fn start_archiver(prefix: &str, db: &Path) -> Service {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = amqp_url();
    let database_url = format!("sqlite://{}", db.display());
    let cli = archiver::cli::Cli::try_parse_from([
        "archiver",
        "--prefix",
        prefix,
        "--amqp-url",
        &url,
        "--database-url",
        &database_url,
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(archiver::run(listener, cli.config, shutdown.clone()));
    wait_healthy(addr).await;
    Service {
        addr: Some(addr),
        shutdown,
        task,
    }
}

/// Starts a logger writing to `file` and waits until its queue exists.
pub async fn start_logger(prefix: &str, file: &Path) -> Service {
    let url = amqp_url();
    let file = file.display().to_string();
    let config = logger::Config::try_parse_from([
        "logger",
        "--prefix",
        prefix,
        "--amqp-url",
        &url,
        "--log-file",
        &file,
        "--stdout",
        "false",
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(logger::run(config, shutdown.clone()));
    let broker = Broker::connect(prefix).await;
    let queue = broker.topology.subscriber_queue("logger");
    eventually(WAIT, "the logger's queue", || {
        let (broker, queue) = (&broker, &queue);
        async move { broker.queue_exists(queue).await.then_some(()) }
    })
    .await;
    Service {
        addr: None,
        shutdown,
        task,
    }
}

/// A websocket client of a gateway.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames received while waiting for another one, in order.
    backlog: VecDeque<Value>,
    /// The gateway id from `hello`.
    pub gateway: String,
}

impl Client {
    /// Connects and reads the `hello` frame.
    pub async fn connect(gateway: &Service) -> Self {
        let url = format!("ws://{}/ws", gateway.addr());
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        let mut client = Self {
            ws,
            backlog: VecDeque::new(),
            gateway: String::new(),
        };
        let hello = client.recv().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        client.gateway = hello["gateway"].as_str().unwrap().to_owned();
        client
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends a raw websocket message.
    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next frame (from the backlog first).
    pub async fn recv(&mut self) -> Value {
        if let Some(frame) = self.backlog.pop_front() {
            return frame;
        }
        self.recv_socket().await
    }

    async fn recv_socket(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the socket is open")
                .expect("a valid frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
                Message::Close(frame) => panic!("closed by the gateway: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame matching `want`; others are kept in the backlog, in order.
    pub async fn recv_until(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.backlog.iter().position(&want) {
            return self.backlog.remove(pos).unwrap();
        }
        loop {
            let frame = self.recv_socket().await;
            if want(&frame) {
                return frame;
            }
            self.backlog.push_back(frame);
        }
    }

    /// The close frame's code, after reading and discarding everything before it.
    pub async fn closed_with(&mut self) -> u16 {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a close in time");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
                Some(Ok(Message::Close(None))) | None => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(err)) => panic!("socket failed instead of closing: {err}"),
            }
        }
    }

    /// Joins a room and returns the `joined` frame.
    pub async fn join(&mut self, room: &str, name: &str) -> Value {
        self.send(json!({"type": "join", "room": room, "name": name}))
            .await;
        self.recv_until(|f| f["type"] == "joined" && f["room"] == room)
            .await
    }

    /// Says something and returns the `ack` (or `error`) for it.
    pub async fn say(&mut self, room: &str, text: &str, r#ref: &str) -> Value {
        self.send(json!({"type": "say", "room": room, "text": text, "ref": r#ref}))
            .await;
        self.recv_until(|f| (f["type"] == "ack" || f["type"] == "error") && f["ref"] == r#ref)
            .await
    }

    /// The next live event of `room` with type `kind`.
    pub async fn event(&mut self, room: &str, kind: &str) -> Value {
        self.recv_until(|f| {
            f["type"] == "event" && f["event"]["room"] == room && f["event"]["type"] == kind
        })
        .await["event"]
            .clone()
    }
}
