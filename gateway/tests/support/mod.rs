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
    // `RUST_LOG=debug cargo test -- --nocapture` shows the in-process services' logs.
    if std::env::var_os("RUST_LOG").is_some() {
        chat_core::telemetry::init();
    }
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

/// Starts a gateway that reaches the broker at `amqp_url` (a [`BrokerProxy`]'s) and waits
/// until it is linked.
pub async fn start_gateway_via(prefix: &str, amqp_url: &str, extra: &[&str]) -> Service {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut args = vec!["gateway", "--prefix", prefix, "--amqp-url", amqp_url];
    args.extend_from_slice(extra);
    let config = gateway::Config::try_parse_from(args).unwrap();
    launch(listener, |listener, shutdown| {
        gateway::run(listener, config, shutdown)
    })
    .await
}

/// A TCP proxy in front of the test broker that a test can cut: [`BrokerProxy::cut`]
/// closes every connection through it and refuses new ones until [`BrokerProxy::restore`].
/// It takes one service off the broker without touching the shared broker, whose other
/// connections (other tests') go on.
pub struct BrokerProxy {
    /// The broker's URL through the proxy.
    pub url: String,
    state: std::sync::Arc<ProxyState>,
    task: JoinHandle<()>,
}

struct ProxyState {
    up: std::sync::atomic::AtomicBool,
    /// Cancelled by `cut`: ends the connections made before it.
    cut: std::sync::Mutex<CancellationToken>,
}

impl BrokerProxy {
    pub async fn start() -> Self {
        let broker = amqp_url();
        let (scheme, rest) = broker.split_once("://").expect("AMQP_URL has a scheme");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (credentials, target) = match authority.rsplit_once('@') {
            Some((credentials, host)) => (format!("{credentials}@"), host.to_owned()),
            None => (String::new(), authority.to_owned()),
        };
        let target = if target.contains(':') {
            target
        } else {
            format!("{target}:5672")
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "{scheme}://{credentials}{}{path}",
            listener.local_addr().unwrap()
        );
        let state = std::sync::Arc::new(ProxyState {
            up: std::sync::atomic::AtomicBool::new(true),
            cut: std::sync::Mutex::new(CancellationToken::new()),
        });
        let accepting = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.up.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let cut = accepting.cut.lock().unwrap().clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    }
                });
            }
        });
        Self { url, state, task }
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.state
            .up
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let old = std::mem::take(&mut *self.state.cut.lock().unwrap());
        old.cancel();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state
            .up
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.cut.lock().unwrap().cancel();
    }
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

    /// Drops the frames matching `unwanted` from the backlog.
    pub fn discard(&mut self, unwanted: impl Fn(&Value) -> bool) {
        self.backlog.retain(|frame| !unwanted(frame));
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

    /// Presents a token and returns the `authenticated` answer (panics on a close).
    pub async fn authenticate(&mut self, token: &str) -> Value {
        self.send(json!({"type": "auth", "token": token})).await;
        self.recv_until(|f| f["type"] == "authenticated").await
    }

    /// Sends a request with a `ref` and returns the `ack` or `error` for it.
    pub async fn request(&mut self, mut frame: Value, r#ref: &str) -> Value {
        frame["ref"] = json!(r#ref);
        self.send(frame).await;
        self.recv_until(|f| (f["type"] == "ack" || f["type"] == "error") && f["ref"] == r#ref)
            .await
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

/// One of the workspace's binaries, run as a real child process so that tests can SIGKILL
/// or SIGTERM it.
pub struct Process {
    child: std::process::Child,
    /// Its HTTP address, as it reported it, if it serves one.
    pub addr: Option<SocketAddr>,
}

/// The path of a workspace binary. `scripts/test.sh` builds them all before the tests
/// (`cargo build --bins`) and says where (`CHAT_BIN_DIR`); a test run on its own finds them
/// beside the gateway's, and says how to build them if they are missing.
pub fn binary(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("CHAT_BIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_gateway"))
                .parent()
                .unwrap()
                .to_owned()
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

impl Process {
    /// Starts `name` with these environment variables. With `http`, it listens on a port
    /// of its own choosing (`<NAME>_LISTEN=127.0.0.1:0`, so no port can be taken
    /// meanwhile), reports it in its start-up log line, and is waited for until healthy.
    pub async fn start(name: &str, env: &[(&str, String)], http: bool) -> Self {
        let mut command = std::process::Command::new(binary(name));
        for (key, value) in env {
            command.env(key, value);
        }
        Self::spawn(name, command, http).await
    }

    /// Like [`Process::start`], for a `command` that runs service `name` some other way
    /// (through `prlimit`, say); the variables it sets win over the defaults.
    pub async fn spawn(name: &str, mut command: std::process::Command, http: bool) -> Self {
        let listen = format!("{}_LISTEN", name.to_uppercase());
        let set: Vec<String> = command
            .get_envs()
            .map(|(key, _)| key.to_string_lossy().into_owned())
            .collect();
        for (key, value) in [
            ("AMQP_URL", amqp_url()),
            ("RUST_LOG", "info".to_owned()),
            (listen.as_str(), "127.0.0.1:0".to_owned()),
        ] {
            if !set.iter().any(|k| k == key) {
                command.env(key, value);
            }
        }
        command
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("spawn service");
        let (found, reported) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        // Reads the logs until the process ends, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let addr = ["http", "listen"]
                    .iter()
                    .find_map(|key| entry[key].as_str()?.parse::<SocketAddr>().ok());
                if let Some(addr) = addr {
                    let _ = found.send(addr);
                }
            }
        });
        let addr = if http {
            let addr = tokio::task::spawn_blocking(move || reported.recv_timeout(WAIT))
                .await
                .unwrap()
                .unwrap_or_else(|_| panic!("{name} reports its HTTP address"));
            wait_healthy(addr).await;
            Some(addr)
        } else {
            None
        };
        Self { child, addr }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// The gateway's `/healthz` body.
pub async fn health(gateway: &Service) -> (u16, Value) {
    let (status, body) = http_get(gateway.addr(), "/healthz").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Every event of `room` in the archive at `addr`, oldest first.
pub async fn archived(addr: SocketAddr, room: &str) -> Vec<Value> {
    // Page back from the newest, 1000 at a time (the API's most), so that long tests see
    // every event.
    let mut events = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(id) => format!("/api/rooms/{room}/events?limit=1000&before={id}"),
            None => format!("/api/rooms/{room}/events?limit=1000"),
        };
        let (status, body) = http_get(addr, &path).await;
        if status != 200 {
            return events;
        }
        let page: Value = serde_json::from_str(&body).unwrap();
        let mut older = page["events"].as_array().cloned().unwrap_or_default();
        let full = older.len() == 1000;
        before = page["before"].as_str().map(str::to_owned);
        older.append(&mut events);
        events = older;
        if !full || before.is_none() {
            return events;
        }
    }
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
