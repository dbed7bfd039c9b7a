//! Client policy tests: a gateway defending itself and its other clients against one
//! client (a slow reader, a flood, a foreign origin, too many connections) and keeping the
//! broker password out of its logs. Unlike the fault tests they never stop the broker, so
//! they run in parallel; each that counts prints its counts to the reliability report.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use chat_core::testkit::{eventually, unique_prefix, Broker};
use serde_json::json;
use support::{connect_with_headers, health, report, start_gateway, Client, WAIT};

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_the_others_get_everything() {
    let prefix = unique_prefix("slow");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(
        &prefix,
        &[
            "--client-queue",
            "64",
            "--rate-limit",
            "100000",
            "--rate-burst",
            "100000",
            "--history-timeout-ms",
            "200",
            "--max-text",
            "16000",
            "--max-frame",
            "65536",
        ],
    )
    .await;
    // The sleeper's socket has a tiny receive buffer and it never reads: the gateway's send
    // buffer fills, then the sleeper's queue of 64 frames.
    let mut sleeper = Client::connect_with_small_buffer(&gateway).await;
    sleeper.join("lobby", "sleeper").await;
    let mut reader = Client::connect(&gateway).await;
    reader.join("lobby", "reader").await;
    let mut sender = Client::connect(&gateway).await;
    sender.join("lobby", "sender").await;
    assert_eq!(health(&gateway).await.1["clients"], 3);

    let text = "x".repeat(15_000);
    let total = 700;
    let receiving = tokio::spawn(async move {
        let mut got = 0;
        while got < total {
            reader.event("lobby", "message").await;
            got += 1;
        }
        (reader, got)
    });
    for n in 0..total {
        let ack = sender
            .say("lobby", &format!("{n} {text}"), &n.to_string())
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let (reader, received) = receiving.await.unwrap();
    let clients = eventually(WAIT, "the sleeper disconnected", || async {
        let clients = health(&gateway).await.1["clients"].as_u64().unwrap();
        (clients == 2).then_some(clients)
    })
    .await;
    report(&format!(
        "slow consumer: sent={total} reader_received={received} clients_after={clients} (queue 64, the sleeper was cut off)"
    ));
    assert_eq!(received, total);
    drop((sleeper, reader, sender));
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_flooding_client_gets_rate_limited_then_disconnected() {
    let prefix = unique_prefix("flood");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &["--rate-limit", "20", "--rate-burst", "10"]).await;
    let mut flooder = Client::connect(&gateway).await;
    for n in 0..100 {
        flooder
            .send(json!({"type": "leave", "room": "lobby", "ref": n.to_string()}))
            .await;
    }
    let mut codes: HashMap<String, usize> = HashMap::new();
    let close = loop {
        match tokio::time::timeout(WAIT, flooder.recv_or_close())
            .await
            .expect("an answer")
        {
            Ok(frame) => {
                *codes
                    .entry(frame["code"].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1
            }
            Err(code) => break code,
        }
    };
    report(&format!(
        "flood: sent=100 answered={codes:?} close_code={close}"
    ));
    assert!(
        codes.get("rate_limited").copied().unwrap_or(0) >= 1,
        "{codes:?}"
    );
    assert_eq!(close, 1008);
    // A well-behaved client on the same gateway is unaffected.
    let mut calm = Client::connect(&gateway).await;
    calm.join("lobby", "calm").await;
    assert_eq!(calm.say("lobby", "hello", "c").await["type"], "ack");
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_websocket_from_a_foreign_origin_is_refused() {
    let prefix = unique_prefix("origin");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &["--allowed-origins", "https://chat.example.com"]).await;
    let host = gateway.addr().to_string();
    let own = format!("http://{host}");
    assert_eq!(
        connect_with_headers(&gateway, &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        connect_with_headers(&gateway, &[("origin", "null")])
            .await
            .err(),
        Some(403)
    );
    for origin in [
        own.as_str(),
        "https://chat.example.com",
        "http://localhost:8080",
    ] {
        assert!(
            connect_with_headers(&gateway, &[("origin", origin)])
                .await
                .is_ok(),
            "{origin}"
        );
    }
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_gateway_full_of_connections_refuses_more_with_503() {
    let prefix = unique_prefix("full");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &["--max-connections", "2"]).await;
    let _a = Client::connect(&gateway).await;
    let _b = Client::connect(&gateway).await;
    assert_eq!(connect_with_headers(&gateway, &[]).await.err(), Some(503));
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_amqp_password_never_appears_in_the_logs() {
    let prefix = unique_prefix("secret");
    let output = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(support::binary("gateway"))
            .env("AMQP_URL", "amqp://chat:hunter2-s3cret@127.0.0.1:1/%2f")
            .env("CHAT_PREFIX", &prefix)
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let _ = child.kill();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let logs = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(logs.contains("cannot connect to the broker"), "{logs}");
    assert!(logs.contains("chat:***@127.0.0.1:1"), "{logs}");
    assert!(!logs.contains("hunter2"), "{logs}");
}
