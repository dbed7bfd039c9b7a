//! The chat system end to end, in-process, against the real RabbitMQ and SQLite: gateways,
//! logger and archiver talking only through the broker.

mod support;

use chat_core::testkit::{eventually, http_get, unique_prefix, Broker};
use chat_core::{Event, EventKind};
use serde_json::{json, Value};
use support::{start_archiver, start_gateway, start_logger, Client, Spy, WAIT};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_message_said_on_one_gateway_reaches_a_client_of_another_gateway() {
    let prefix = unique_prefix("cross");
    let broker = Broker::connect(&prefix).await;
    let one = start_gateway(&prefix, &["--gateway-id", "gw-one"]).await;
    let two = start_gateway(&prefix, &["--gateway-id", "gw-two"]).await;
    let mut alice = Client::connect(&one).await;
    let mut bob = Client::connect(&two).await;
    assert_eq!(
        (alice.gateway.as_str(), bob.gateway.as_str()),
        ("gw-one", "gw-two")
    );

    alice.join("lobby", "alice").await;
    bob.join("lobby", "bob").await;
    let ack = alice.say("lobby", "hello from one", "c-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let event = bob.event("lobby", "message").await;
    assert_eq!(event["text"], "hello from one");
    assert_eq!(event["user"], "alice");
    assert_eq!(event["gateway"], "gw-one");
    assert_eq!(event["id"], ack["id"]);
    // The sender sees its own message as an event too, with the same id.
    assert_eq!(alice.event("lobby", "message").await["id"], ack["id"]);

    one.stop().await;
    two.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_say_is_acked_with_the_id_of_the_event_it_published() {
    let prefix = unique_prefix("ack");
    let broker = Broker::connect(&prefix).await;
    let spy = Spy::bind(&broker).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;

    let ack = alice.say("lobby", "confirmed?", "c-17").await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["ref"], "c-17");
    let id = ack["id"].as_str().unwrap();

    let published = spy.published(&broker).await;
    let message = published
        .iter()
        .find(|e| e.kind == EventKind::Message)
        .unwrap();
    assert_eq!(message.id, id);
    assert_eq!(message.text.as_deref(), Some("confirmed?"));
    assert!(published
        .iter()
        .any(|e| e.kind == EventKind::Join && e.user == "alice"));

    gateway.stop().await;
    spy.close(&broker).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_logger_writes_one_line_per_event_to_its_file() {
    let prefix = unique_prefix("log");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("logs").join("chat.log");
    let logger = start_logger(&prefix, &file).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    alice.say("lobby", "first line\nsecond line", "c-1").await;
    alice.send(json!({"type": "leave", "room": "lobby"})).await;
    alice.recv_until(|f| f["type"] == "left").await;

    let log = eventually(WAIT, "three lines in the log", || {
        let file = file.clone();
        async move {
            let log = tokio::fs::read_to_string(&file).await.ok()?;
            (log.lines().count() >= 3).then_some(log)
        }
    })
    .await;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[0].ends_with(" #lobby * ~alice joined"), "{log}");
    assert!(
        lines[1].ends_with(r" #lobby <~alice> first line\nsecond line"),
        "{log}"
    );
    assert!(lines[2].ends_with(" #lobby * ~alice left"), "{log}");
    assert!(
        lines[0].starts_with("20") && lines[0].as_bytes()[23] == b'Z',
        "{log}"
    );

    gateway.stop().await;
    logger.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_client_joining_a_room_gets_its_recent_history_oldest_first() {
    let prefix = unique_prefix("history");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let one = start_gateway(&prefix, &[]).await;
    let two = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&one).await;
    alice.join("lobby", "alice").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            alice
                .say("lobby", &format!("message {n}"), &format!("c-{n}"))
                .await["id"]
                .clone(),
        );
    }
    // Another room's events stay out of this room's history.
    alice.join("other", "alice").await;
    alice.say("other", "elsewhere", "c-x").await;
    let last = ids.last().unwrap().as_str().unwrap().to_owned();
    eventually(WAIT, "the last message archived", || {
        let addr = archiver.addr();
        let last = last.clone();
        async move {
            let (_, body) = http_get(addr, "/api/rooms/lobby/events?limit=100").await;
            body.contains(&last).then_some(())
        }
    })
    .await;

    let mut bob = Client::connect(&two).await;
    let joined = bob.join("lobby", "bob").await;
    let history = joined["history"].as_array().unwrap();
    let texts: Vec<&str> = history.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(
        texts,
        [
            "message 0",
            "message 1",
            "message 2",
            "message 3",
            "message 4"
        ]
    );
    assert_eq!(history[0]["type"], "join");
    assert!(history.iter().all(|e| e["room"] == "lobby"));
    let history_ids: Vec<&Value> = history
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| &e["id"])
        .collect();
    assert_eq!(history_ids, ids.iter().collect::<Vec<_>>());

    one.stop().await;
    two.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn every_bad_input_gets_its_error_and_the_connection_stays_usable() {
    let prefix = unique_prefix("bad");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &["--max-text", "100", "--max-frame", "2048"]).await;
    let mut client = Client::connect(&gateway).await;
    let long_name = "n".repeat(33);
    let long_room = "r".repeat(65);
    let long_text = "t".repeat(101);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "invalid_json"),
        ("[]".into(), "invalid_json"),
        (json!({"room": "lobby"}).to_string(), "missing_field"),
        (json!({"type": "dance"}).to_string(), "unknown_type"),
        (
            json!({"type": "join", "name": "a"}).to_string(),
            "missing_field",
        ),
        (
            json!({"type": "join", "room": "lobby"}).to_string(),
            "missing_field",
        ),
        (
            json!({"type": "join", "room": 5, "name": "a"}).to_string(),
            "invalid_field",
        ),
        (
            json!({"type": "join", "room": "no spaces", "name": "a"}).to_string(),
            "invalid_room",
        ),
        (
            json!({"type": "join", "room": long_room, "name": "a"}).to_string(),
            "invalid_room",
        ),
        (
            json!({"type": "join", "room": "lobby", "name": ""}).to_string(),
            "invalid_name",
        ),
        (
            json!({"type": "join", "room": "lobby", "name": long_name}).to_string(),
            "invalid_name",
        ),
        (
            json!({"type": "say", "room": "lobby", "text": "hi"}).to_string(),
            "not_joined",
        ),
        (
            json!({"type": "leave", "room": "lobby"}).to_string(),
            "not_joined",
        ),
        (
            json!({"type": "say", "room": "lobby", "text": ""}).to_string(),
            "invalid_text",
        ),
        (
            json!({"type": "say", "room": "lobby", "text": long_text}).to_string(),
            "invalid_text",
        ),
        (
            json!({"type": "say", "room": "lobby", "text": "x".repeat(3000)}).to_string(),
            "too_large",
        ),
    ];
    for (frame, code) in &cases {
        client.send_text(frame).await;
        let error = client.recv().await;
        assert_eq!(error["type"], "error", "{frame} -> {error}");
        assert_eq!(error["code"], *code, "{frame} -> {error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    client.send_message(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(client.recv().await["code"], "unsupported_frame");
    // Errors carry the request's ref.
    client
        .send(json!({"type": "say", "room": "lobby", "text": "hi", "ref": "r-9"}))
        .await;
    assert_eq!(client.recv().await["ref"], "r-9");

    // After all that, the same connection still chats.
    client.join("lobby", "alice").await;
    let ack = client.say("lobby", "still here", "c-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");

    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_garbage_message_on_the_exchange_is_dead_lettered_and_the_flow_goes_on() {
    let prefix = unique_prefix("garbage");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let logger = start_logger(&prefix, &dir.path().join("chat.log")).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;

    let garbage = b"{\"this is\": \"not an event\"}";
    broker.publish_raw(garbage, Default::default()).await;
    broker
        .publish_raw(b"\xff\xfe binary junk", Default::default())
        .await;
    let ack = alice.say("lobby", "after the garbage", "c-1").await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(
        alice.event("lobby", "message").await["text"],
        "after the garbage"
    );

    // Every consumer (gateway, logger, archiver) dead-letters its copy of each.
    let dead = broker.topology.dead_queue();
    let dead_letters = eventually(WAIT, "six dead letters", || {
        let (broker, dead) = (&broker, &dead);
        async move {
            let depth = broker.depth(dead).await;
            (depth >= 6).then_some(depth)
        }
    })
    .await;
    assert_eq!(dead_letters, 6);
    let bodies = broker.drain(&dead).await;
    assert_eq!(bodies.iter().filter(|b| b.as_slice() == garbage).count(), 3);

    // And the valid message behind the garbage was archived.
    let id = ack["id"].as_str().unwrap().to_owned();
    eventually(WAIT, "the message archived", || {
        let (addr, id) = (archiver.addr(), id.clone());
        async move {
            http_get(addr, "/api/rooms/lobby/events")
                .await
                .1
                .contains(&id)
                .then_some(())
        }
    })
    .await;

    gateway.stop().await;
    logger.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn an_event_published_while_the_archiver_is_stopped_is_archived_after_it_restarts() {
    let prefix = unique_prefix("restart");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("archive.db");
    // The first run declares the durable queue; then the archiver goes away.
    start_archiver(&prefix, &db).await.stop().await;

    let gateway = start_gateway(&prefix, &["--history-timeout-ms", "300"]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    let ack = alice.say("lobby", "while you were out", "c-1").await;
    assert_eq!(ack["type"], "ack");
    let queue = broker.topology.subscriber_queue("archiver");
    assert_eq!(
        broker.depth(&queue).await,
        2,
        "join and message wait in the archiver's queue"
    );

    let archiver = start_archiver(&prefix, &db).await;
    let id = ack["id"].as_str().unwrap().to_owned();
    let body = eventually(WAIT, "the message archived", || {
        let (addr, id) = (archiver.addr(), id.clone());
        async move {
            let (_, body) = http_get(addr, "/api/rooms/lobby/events").await;
            body.contains(&id).then_some(body)
        }
    })
    .await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["events"][1]["text"], "while you were out");

    gateway.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_health_probe_and_the_page_are_served() {
    let prefix = unique_prefix("http");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &["--gateway-id", "gw-h"]).await;
    let (status, body) = http_get(gateway.addr(), "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["gateway"],
        "gw-h"
    );
    let (status, page) = http_get(gateway.addr(), "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<script src=\"/app.js\""),
        "the page loads its script from a file"
    );
    assert!(!page.contains("<script>"), "no inline script");
    assert_eq!(http_get(gateway.addr(), "/app.js").await.0, 200);
    assert_eq!(http_get(gateway.addr(), "/nope").await.0, 404);
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn stopping_a_gateway_closes_its_clients_with_service_restart() {
    let prefix = unique_prefix("close");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    let stopping = tokio::spawn(gateway.stop());
    assert_eq!(alice.closed_with().await, 1012);
    stopping.await.unwrap();
    broker.cleanup().await;
}

#[tokio::test]
async fn the_metrics_count_what_happened_from_the_start() {
    let prefix = unique_prefix("metrics");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    assert_eq!(alice.say("lobby", "counted", "c-1").await["type"], "ack");
    // The first scrape comes after the work: what was recorded before it must show.
    let (status, metrics) = http_get(gateway.addr(), "/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        value("chat_events_published_total{type=\"message\"}") >= 1.0,
        "{metrics}"
    );
    assert!(value("chat_events_delivered_total") >= 1.0, "{metrics}");
    assert!(value("chat_clients_connected") >= 1.0, "{metrics}");
    assert!(
        metrics.contains("chat_broker_connected{service=\"gateway "),
        "{metrics}"
    );
    assert!(
        metrics.contains("chat_publish_confirm_seconds_bucket"),
        "{metrics}"
    );
    assert_eq!(http_get(gateway.addr(), "/livez").await.0, 200);
    assert_eq!(http_get(gateway.addr(), "/readyz").await.0, 200);
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn pings_are_answered_and_a_frame_breaking_the_protocol_closes_the_socket_with_1002() {
    use tokio::io::AsyncWriteExt;

    let prefix = unique_prefix("wsproto");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut client = Client::connect(&gateway).await;
    client
        .send_message(Message::Ping(b"are you there".to_vec().into()))
        .await;
    assert_eq!(
        client.next_message().await,
        Message::Pong(b"are you there".to_vec().into())
    );

    // A hand-written client: the handshake and a ping in one write (the ping arrives with
    // the HTTP request), then a frame without the mask every client frame must carry.
    let mut socket = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gateway.addr()
    )
    .into_bytes();
    request.extend_from_slice(&[0x89, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    socket.write_all(&request).await.unwrap();
    let mut received = Vec::new();
    // The RFC 6455 example key and its answer; then `hello`, and the pong to our ping.
    read_until(&mut socket, &mut received, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=").await;
    read_until(&mut socket, &mut received, b"\x8a\x02hi").await;
    assert!(received.starts_with(b"HTTP/1.1 101"));
    assert!(received.windows(7).any(|w| w == b"\"hello\""));

    socket.write_all(b"\x81\x02hi").await.unwrap();
    // A close frame with code 1002 (0x03EA).
    read_until(&mut socket, &mut received, b"\x88").await;
    let at = received.iter().rposition(|&b| b == 0x88).unwrap();
    read_until(&mut socket, &mut received, &[0x03, 0xEA]).await;
    assert_eq!(&received[at + 2..at + 4], &[0x03, 0xEA], "close code 1002");

    gateway.stop().await;
    broker.cleanup().await;
}

/// Reads from `socket` into `received` until `want` appears in it.
async fn read_until(socket: &mut tokio::net::TcpStream, received: &mut Vec<u8>, want: &[u8]) {
    use tokio::io::AsyncReadExt;
    while !received.windows(want.len()).any(|w| w == want) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, socket.read(&mut chunk))
            .await
            .expect("bytes in time")
            .unwrap();
        assert!(
            n > 0,
            "closed early; got {:?}",
            String::from_utf8_lossy(received)
        );
        received.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_resent_message_is_posted_once_whichever_gateway_gets_the_resend() {
    let prefix = unique_prefix("resend");
    let broker = Broker::connect(&prefix).await;
    let spy = Spy::bind(&broker).await;
    let one = start_gateway(&prefix, &[]).await;
    let two = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&one).await;
    alice.join("lobby", "alice").await;
    // Alice's second tab, on the other gateway.
    let mut alice_again = Client::connect(&two).await;
    alice_again.join("lobby", "alice").await;
    let id = uuid::Uuid::now_v7().to_string();

    let first = alice.say_with_id("lobby", "only once", &id, "m1").await;
    assert_eq!(first["type"], "ack", "{first}");
    assert_eq!(first["id"], id.as_str());
    // The same connection resends it: the same ack, nothing published.
    let again = alice.say_with_id("lobby", "only once", &id, "m2").await;
    assert_eq!(
        (again["type"].as_str(), again["id"].as_str()),
        (Some("ack"), Some(id.as_str()))
    );

    // The other gateway has seen the message go by; a resend there is acked, not posted.
    assert_eq!(
        alice_again.event("lobby", "message").await["id"],
        id.as_str()
    );
    let elsewhere = alice_again
        .say_with_id("lobby", "only once", &id, "m3")
        .await;
    assert_eq!(elsewhere["type"], "ack", "{elsewhere}");
    assert_eq!(elsewhere["id"], id.as_str());

    // Someone else using the id, or the same id for other content: refused.
    let mut mallory = Client::connect(&two).await;
    mallory.join("lobby", "mallory").await;
    let stolen = mallory.say_with_id("lobby", "only once", &id, "x1").await;
    assert_eq!(stolen["code"], "conflict", "{stolen}");
    let changed = alice.say_with_id("lobby", "only twice", &id, "x2").await;
    assert_eq!(changed["code"], "conflict", "{changed}");

    let published = spy.published(&broker).await;
    let copies: Vec<&Event> = published.iter().filter(|e| e.id == id).collect();
    assert_eq!(copies.len(), 1, "published once: {copies:?}");
    assert_eq!(copies[0].text.as_deref(), Some("only once"));
    one.stop().await;
    two.stop().await;
    spy.close(&broker).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_client_made_id_must_be_a_recent_uuidv7() {
    let prefix = unique_prefix("badid");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    // A UUIDv7 from 2020, a UUIDv4, an uppercase spelling, and not a UUID at all.
    for bad in [
        "01700000-0000-7000-8000-000000000000".to_owned(),
        "550e8400-e29b-41d4-a716-446655440000".to_owned(),
        uuid::Uuid::now_v7().to_string().to_uppercase(),
        "hello".to_owned(),
    ] {
        let refused = alice.say_with_id("lobby", "hi", &bad, "b").await;
        assert_eq!(refused["code"], "invalid_field", "{bad}: {refused}");
    }
    gateway.stop().await;
    broker.cleanup().await;
}
