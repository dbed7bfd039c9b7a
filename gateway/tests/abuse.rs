//! Hostile and vanished clients, over real sockets: half-open handshakes (slowloris),
//! clients that stop answering, a process out of file descriptors, and many connections
//! from one address. None of these stops the broker, so they run in parallel with the
//! other tests.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use chat_core::testkit::{eventually, http_get, unique_prefix, Broker};
use serde_json::json;
use support::{
    binary, connect_with_headers, start_archiver_with, start_gateway, Client, Process, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a TCP connection and sends the start of a websocket handshake, never finishing it.
async fn half_open_handshake(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    stream
}

/// Whether the server closed `stream` (EOF or reset) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or similar before the close: keep reading until the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn half_open_handshakes_are_closed_and_a_real_client_still_connects_during_the_attack() {
    let prefix = unique_prefix("slowloris");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(
        &prefix,
        &["--max-handshakes", "20", "--handshake-timeout-ms", "700"],
    )
    .await;
    let mut attack = Vec::new();
    for _ in 0..60 {
        attack.push(half_open_handshake(gateway.addr()).await);
    }
    // The oldest 40 made room for newer ones at once: they are closed already.
    let mut evicted = 0;
    for stream in attack.iter_mut().take(40) {
        if closed_within(stream, Duration::from_millis(500)).await {
            evicted += 1;
        }
    }
    assert_eq!(
        evicted, 40,
        "connections over MAX_HANDSHAKES are closed at once"
    );

    // A real client gets through while the attack holds every slot.
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    assert_eq!(alice.say("lobby", "still here", "m1").await["type"], "ack");

    // The rest are closed by the handshake deadline.
    let mut timed_out = 0;
    for stream in attack.iter_mut().skip(40) {
        if closed_within(stream, Duration::from_secs(3)).await {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 20, "every half-open handshake is closed");
    let (_, metrics) = http_get(gateway.addr(), "/metrics").await;
    assert!(
        metrics.contains("chat_handshakes_evicted_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chat_handshake_timeouts_total"),
        "{metrics}"
    );
    support::report(&format!(
        "slowloris: 60 half-open handshakes against MAX_HANDSHAKES=20: evicted={evicted} \
         closed_by_deadline={timed_out} real_client_connected=true"
    ));
    // The accepted websocket is unaffected by the deadline.
    assert_eq!(alice.say("lobby", "and now", "m2").await["type"], "ack");
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_archivers_http_listener_closes_a_half_open_request_after_its_deadline() {
    let prefix = unique_prefix("slowapi");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver_with(
        &prefix,
        &dir.path().join("archive.db"),
        &["--handshake-timeout-ms", "300"],
    )
    .await;
    let mut stream = half_open_handshake(archiver.addr()).await;
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);
    assert_eq!(http_get(archiver.addr(), "/healthz").await.0, 200);
    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_and_its_leave_is_published() {
    let prefix = unique_prefix("ghost");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(
        &prefix,
        // A timeout long enough for a reading client on a busy CI machine to answer.
        &["--ping-interval-ms", "300", "--ping-timeout-ms", "1500"],
    )
    .await;
    let mut ghost = Client::connect(&gateway).await;
    ghost.join("lobby", "ghost").await;
    // The ghost's last frame was its join: from now on it sends nothing.
    let started = tokio::time::Instant::now();
    let mut ghost = ghost.into_stream();
    let mut watcher = Client::connect(&gateway).await;
    watcher.join("lobby", "watcher").await;

    // The ghost reads nothing from now on, so it never answers a ping. The watcher reads
    // (and so answers pings) the whole time.
    let leave = watcher
        .recv_until(|f| f["type"] == "event" && f["event"]["type"] == "leave")
        .await;
    let elapsed = started.elapsed();
    assert_eq!(leave["event"]["user"], "ghost");
    assert!(
        elapsed < WAIT,
        "closed within interval + timeout (+ sweep), took {elapsed:?}"
    );
    // What the ghost would have read: the gateway's pings, then its close frame with 4009.
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(WAIT, ghost.read_to_end(&mut bytes)).await;
    let close_4009 = bytes
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2..4] == 4009u16.to_be_bytes());
    assert!(close_4009, "a close frame with 4009 was sent: {bytes:?}");
    assert!(
        bytes.windows(2).any(|w| w == [0x89, 0x00]),
        "pinged first: {bytes:?}"
    );

    // The watcher keeps reading (its client library answers pings as it reads), silent
    // for several intervals: it is pinged, answers, and stays connected.
    let _ = tokio::time::timeout(Duration::from_millis(1500), watcher.recv_until(|_| false)).await;
    assert_eq!(watcher.say("lobby", "alive", "w1").await["type"], "ack");
    support::report(&format!(
        "vanished client: closed with 4009 and its leave published {} ms after it went silent \
         (PING_INTERVAL_MS=300, PING_TIMEOUT_MS=1500)",
        elapsed.as_millis()
    ));
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_page_can_check_its_connection_with_an_application_ping() {
    let prefix = unique_prefix("apping");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut client = Client::connect(&gateway).await;
    client.send(json!({"type": "ping", "ref": "p1"})).await;
    let pong = client.recv().await;
    assert_eq!(pong, json!({"type": "pong", "ref": "p1"}));
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_per_address_cap_refuses_the_connection_over_the_limit() {
    let prefix = unique_prefix("perip");
    let broker = Broker::connect(&prefix).await;
    // No trusted proxy: X-Forwarded-For is ignored, everyone here is 127.0.0.1.
    let gateway = start_gateway(&prefix, &["--max-connections-per-ip", "2"]).await;
    let forged = [("x-forwarded-for", "203.0.113.9")];
    let _a = connect_with_headers(&gateway, &forged).await.unwrap();
    let _b = connect_with_headers(&gateway, &[]).await.unwrap();
    assert_eq!(
        connect_with_headers(&gateway, &forged).await.err(),
        Some(503),
        "a forged header from an untrusted peer does not get around the cap"
    );
    drop(_a);
    eventually(WAIT, "a closed connection frees its place", || async {
        connect_with_headers(&gateway, &[]).await.ok()
    })
    .await;
    gateway.stop().await;

    // Behind a trusted proxy (127.0.0.1 here), each forwarded address has its own cap.
    let gateway = start_gateway(
        &prefix,
        &[
            "--max-connections-per-ip",
            "2",
            "--trusted-proxies",
            "127.0.0.1/32",
        ],
    )
    .await;
    let one = [("x-forwarded-for", "203.0.113.1")];
    let other = [("x-forwarded-for", "198.51.100.1, 203.0.113.2")];
    let _c = connect_with_headers(&gateway, &one).await.unwrap();
    let _d = connect_with_headers(&gateway, &one).await.unwrap();
    assert_eq!(connect_with_headers(&gateway, &one).await.err(), Some(503));
    let _e = connect_with_headers(&gateway, &other).await.unwrap();
    let _f = connect_with_headers(&gateway, &other).await.unwrap();
    assert_eq!(
        connect_with_headers(&gateway, &other).await.err(),
        Some(503)
    );
    gateway.stop().await;
    broker.cleanup().await;
}

/// The gateway binary run under `prlimit` with an open-file limit of `soft:hard`.
fn gateway_with_file_limit(
    prefix: &str,
    soft_hard: &str,
    extra_env: &[(&str, &str)],
) -> std::process::Command {
    let mut command = std::process::Command::new("prlimit");
    command
        .arg(format!("--nofile={soft_hard}"))
        .arg("--")
        .arg(binary("gateway"))
        .env("CHAT_PREFIX", prefix);
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command
}

#[tokio::test]
async fn a_gateway_refuses_a_max_connections_its_open_file_limit_cannot_hold() {
    let prefix = unique_prefix("nofile");
    let mut command = gateway_with_file_limit(
        &prefix,
        "256:512",
        &[
            ("MAX_CONNECTIONS", "5000"),
            ("GATEWAY_LISTEN", "127.0.0.1:0"),
        ],
    );
    command
        .env("AMQP_URL", chat_core::testkit::amqp_url())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().expect("prlimit runs the gateway");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{logs}");
    assert!(
        logs.contains("MAX_CONNECTIONS=5000 cannot be held"),
        "{logs}"
    );
    assert!(
        logs.contains("soft=512"),
        "raised to the hard limit first: {logs}"
    );
}

#[tokio::test]
async fn a_gateway_out_of_file_descriptors_keeps_its_clients_and_accepts_again_later() {
    let prefix = unique_prefix("emfile");
    let broker = Broker::connect(&prefix).await;
    let child = Process::spawn(
        "gateway",
        gateway_with_file_limit(&prefix, "1024:1024", &[]),
        true,
    )
    .await;
    let pid = child.pid();
    let http = child.addr.unwrap();
    let gateway = support::Service::external(http).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;

    // Leave the gateway two spare descriptors, then knock with more connections than that.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let lowered = std::process::Command::new("prlimit")
        .args([
            &format!("--pid={pid}"),
            &format!("--nofile={}:1024", open + 2),
        ])
        .status()
        .unwrap();
    assert!(lowered.success());
    let mut knocking = Vec::new();
    for _ in 0..10 {
        knocking.push(TcpStream::connect(http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The client it has is served as before.
    assert_eq!(
        alice.say("lobby", "still served", "m1").await["type"],
        "ack"
    );

    // Room again: the backlog drains and new clients get in.
    let raised = std::process::Command::new("prlimit")
        .args([&format!("--pid={pid}"), "--nofile=1024:1024"])
        .status()
        .unwrap();
    assert!(raised.success());
    drop(knocking);
    let mut bob = eventually(WAIT, "a new client connects", || async {
        connect_with_headers(&gateway, &[]).await.ok()
    })
    .await;
    bob.join("lobby", "bob").await;
    let (_, metrics) = http_get(http, "/metrics").await;
    let emfile = metrics
        .lines()
        .find(|l| l.starts_with("chat_accept_errors_total") && l.contains("emfile"))
        .unwrap_or_else(|| panic!("no emfile count in {metrics}"));
    let count: f64 = emfile.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{emfile}");
    support::report(&format!(
        "out of descriptors: accept failed {count} times with EMFILE; the existing client was \
         served throughout and a new one connected once descriptors were free"
    ));
    drop(alice);
    drop(bob);
    drop(child);
    broker.cleanup().await;
}
