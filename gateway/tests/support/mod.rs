//! The test harness: every service started in-process on port 0 against the real broker,
//! with a unique `CHAT_PREFIX` and temporary files per test, and a websocket client that
//! speaks the protocol.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chat_core::testkit::{amqp_url, eventually, http_get};
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

    /// A service running elsewhere (a child process) at `addr`, once its `/healthz` is 200;
    /// for the helpers that take a [`Service`]. Stop the process itself, not this.
    pub async fn external(addr: SocketAddr) -> Self {
        wait_healthy(addr).await;
        Self {
            addr: Some(addr),
            shutdown: CancellationToken::new(),
            task: tokio::spawn(async { Ok(()) }),
        }
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

/// Runs a service on `listener` in this process and waits until its `/healthz` is 200.
async fn launch<F, Fut>(listener: TcpListener, run: F) -> Service
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, shutdown.clone()));
    wait_healthy(addr).await;
    Service {
        addr: Some(addr),
        shutdown,
        task,
    }
}

/// Starts a gateway and waits until it is linked to the broker.
pub async fn start_gateway(prefix: &str, extra: &[&str]) -> Service {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = amqp_url();
    let mut args = vec!["gateway", "--prefix", prefix, "--amqp-url", &url];
    args.extend_from_slice(extra);
    let config = gateway::Config::try_parse_from(args).unwrap();
    launch(listener, |listener, shutdown| {
        gateway::run(listener, config, shutdown)
    })
    .await
}

/// Starts an archiver on `db` and waits until it consumes.
pub async fn start_archiver(prefix: &str, db: &Path) -> Service {
    start_archiver_with(prefix, db, &[]).await
}

/// Starts an archiver on `db` with extra arguments and waits until it consumes.
pub async fn start_archiver_with(prefix: &str, db: &Path, extra: &[&str]) -> Service {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = amqp_url();
    let database_url = format!("sqlite://{}", db.display());
    let mut args = vec![
        "archiver",
        "--prefix",
        prefix,
        "--amqp-url",
        &url,
        "--database-url",
        &database_url,
    ];
    args.extend_from_slice(extra);
    let cli = archiver::cli::Cli::try_parse_from(args).unwrap();
    launch(listener, |listener, shutdown| {
        archiver::run(listener, cli.config, shutdown)
    })
    .await
}

/// Starts a logger writing to `file` and waits until it consumes.
pub async fn start_logger(prefix: &str, file: &Path) -> Service {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = amqp_url();
    let file = file.display().to_string();
    let cli = logger::cli::Cli::try_parse_from([
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
    let reopen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    launch(listener, |listener, shutdown| {
        logger::run(listener, cli.config, reopen, shutdown)
    })
    .await
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
        Self::greeted(ws).await
    }

    /// Wraps an open websocket and reads its `hello` frame.
    async fn greeted(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
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

    /// Connects over a socket with a 4 KiB receive buffer, so that a client that does not
    /// read backs up into the gateway quickly instead of into the kernel.
    pub async fn connect_with_small_buffer(gateway: &Service) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(gateway.addr()).await.unwrap();
        let url = format!("ws://{}/ws", gateway.addr());
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("websocket connects");
        Self::greeted(ws).await
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

    /// The next websocket message of any kind (pongs included), skipping nothing.
    pub async fn next_message(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid message")
    }

    /// The next frame, or the close code if the gateway closed the connection instead.
    pub async fn recv_or_close(&mut self) -> Result<Value, u16> {
        if let Some(frame) = self.backlog.pop_front() {
            return Ok(frame);
        }
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("JSON frame"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(1005, |f| f.code.into()))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(1006),
            }
        }
    }

    /// The raw TCP stream, for a test that reads the gateway's bytes itself (a client that
    /// must not answer pings, which tungstenite does on every read).
    pub fn into_stream(self) -> TcpStream {
        match self.ws.into_inner() {
            MaybeTlsStream::Plain(stream) => stream,
            _ => unreachable!("tests connect without TLS"),
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

    /// Says something under an event id the client made; returns the `ack` or `error`.
    pub async fn say_with_id(&mut self, room: &str, text: &str, id: &str, r#ref: &str) -> Value {
        self.send(json!({"type": "say", "room": room, "text": text, "id": id, "ref": r#ref}))
            .await;
        self.recv_until(|f| (f["type"] == "ack" || f["type"] == "error") && f["ref"] == r#ref)
            .await
    }

    /// Every frame that arrives within `window`, after the backlog.
    pub async fn drain_for(&mut self, window: Duration) -> Vec<Value> {
        let mut frames: Vec<Value> = self.backlog.drain(..).collect();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Text(text) = message {
                frames.push(serde_json::from_str(&text).expect("JSON frame"));
            }
        }
        frames
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

/// Connects with extra request headers (e.g. `Origin`); returns the HTTP status on refusal.
pub async fn connect_with_headers(
    gateway: &Service,
    headers: &[(&str, &str)],
) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/ws", gateway.addr())
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::greeted(ws).await),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(err) => panic!("websocket failed: {err}"),
    }
}

/// One of the workspace's binaries (built on first use), run as a real child process so
/// that tests can SIGKILL or SIGTERM it.
pub struct Process {
    child: std::process::Child,
    /// Its HTTP address, if it serves one.
    pub addr: Option<SocketAddr>,
}

/// The path of a workspace binary, building the service binaries once if needed.
pub fn binary(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let dir = Path::new(env!("CARGO_BIN_EXE_gateway"))
        .parent()
        .unwrap()
        .to_owned();
    BUILT.call_once(|| {
        if !dir.join("archiver").exists() || !dir.join("logger").exists() {
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "--bins", "-p", "archiver", "-p", "logger"])
                .status()
                .expect("cargo build");
            assert!(status.success(), "building the service binaries failed");
        }
    });
    dir.join(name)
}

impl Process {
    /// Starts `name` with these environment variables; waits for its `/healthz` when
    /// `http` is given (the port it was told to listen on).
    pub async fn start(name: &str, env: &[(&str, String)], http: Option<SocketAddr>) -> Self {
        let mut command = std::process::Command::new(binary(name));
        command
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn service");
        if let Some(addr) = http {
            wait_healthy(addr).await;
        }
        Self { child, addr: http }
    }

    /// Sends a signal (`KILL`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal).
    pub async fn wait(&mut self) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "process did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The gateway's `/healthz` body.
pub async fn health(gateway: &Service) -> (u16, Value) {
    let (status, body) = http_get(gateway.addr(), "/healthz").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Every event of `room` in the archive at `addr`, oldest first.
pub async fn archived(addr: SocketAddr, room: &str) -> Vec<Value> {
    let (status, body) = http_get(addr, &format!("/api/rooms/{room}/events?limit=1000")).await;
    if status != 200 {
        return Vec::new();
    }
    let page: Value = serde_json::from_str(&body).unwrap();
    page["events"].as_array().cloned().unwrap_or_default()
}

/// A queue of the test's own on the events exchange: it shows exactly what was published.
pub struct Spy {
    channel: lapin::Channel,
}

impl Spy {
    pub async fn bind(broker: &chat_core::testkit::Broker) -> Self {
        let channel = broker.connection.create_channel().await.unwrap();
        broker
            .topology
            .declare_subscriber_queue(&channel, "spy")
            .await
            .unwrap();
        Self { channel }
    }

    /// Every event published since [`Spy::bind`], in order.
    pub async fn published(&self, broker: &chat_core::testkit::Broker) -> Vec<chat_core::Event> {
        broker
            .drain(&broker.topology.subscriber_queue("spy"))
            .await
            .iter()
            .map(|body| chat_core::Event::decode(body).unwrap())
            .collect()
    }

    /// Deletes the spy queue (`Broker::cleanup` does not know it).
    pub async fn close(self, broker: &chat_core::testkit::Broker) {
        let _ = self
            .channel
            .queue_delete(
                broker.topology.subscriber_queue("spy").into(),
                Default::default(),
            )
            .await;
        let _ = self.channel.close(200, "done".into()).await;
    }
}

/// Appends a line of counts to the reliability report that `scripts/test.sh` prints.
pub fn report(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-report.txt");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(file, "{line}").unwrap();
}
