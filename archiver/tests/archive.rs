//! The archiver against the real broker and a real SQLite file: idempotent storage, the
//! HTTP history API with its errors, and the `history` command.

use std::net::SocketAddr;
use std::time::Duration;

use chat_core::testkit::{amqp_url, eventually, http_get, unique_prefix, Broker};
use chat_core::{Event, EventKind};
use clap::Parser;
use sqlx::Connection;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    database_url: String,
}

async fn start(prefix: &str, dir: &std::path::Path) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let database_url = format!("sqlite://{}", dir.join("archive.db").display());
    let url = amqp_url();
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
    eventually(WAIT, "a healthy archiver", || async move {
        (http_get(addr, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    Running {
        addr,
        shutdown,
        task,
        database_url,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = http_get(self.addr, path).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn wait_for_count(&self, room: &str, count: i64) {
        eventually(WAIT, "the archived count", || async move {
            let (_, rooms) = self.get("/api/rooms").await;
            rooms["rooms"]
                .as_array()?
                .iter()
                .any(|r| r["room"] == room && r["events"] == count)
                .then_some(())
        })
        .await;
    }
}

fn message(room: &str, text: &str) -> Event {
    Event::new(
        EventKind::Message,
        room,
        "alice",
        Some(text.to_owned()),
        "gw-test",
    )
}

#[tokio::test]
async fn an_event_delivered_twice_is_archived_once() {
    let prefix = unique_prefix("dup");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start(&prefix, dir.path()).await;

    let event = message("lobby", "only once");
    broker.publish_event(&event).await;
    broker.publish_event(&event).await;
    let marker = message("lobby", "marker");
    broker.publish_event(&marker).await;
    archiver.wait_for_count("lobby", 2).await;

    let (_, page) = archiver.get("/api/rooms/lobby/events").await;
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [event.id.as_str(), marker.id.as_str()]);
    assert_eq!(
        page["events"][0],
        serde_json::to_value(&event).unwrap(),
        "stored as published"
    );

    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_http_api_lists_rooms_and_pages_back_through_a_room() {
    let prefix = unique_prefix("api");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start(&prefix, dir.path()).await;
    let events: Vec<Event> = (0..7).map(|n| message("lobby", &format!("m{n}"))).collect();
    for event in &events {
        broker.publish_event(event).await;
    }
    broker.publish_event(&message("kitchen", "tea?")).await;
    archiver.wait_for_count("lobby", 7).await;
    archiver.wait_for_count("kitchen", 1).await;

    let (status, rooms) = archiver.get("/api/rooms").await;
    assert_eq!(status, 200);
    let lobby = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == "lobby")
        .unwrap();
    assert_eq!(lobby["last_id"], events[6].id.as_str());

    let texts = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, page) = archiver.get("/api/rooms/lobby/events?limit=3").await;
    assert_eq!(status, 200);
    assert_eq!(texts(&page), ["m4", "m5", "m6"]);
    let before = page["before"].as_str().unwrap().to_owned();
    let (_, page) = archiver
        .get(&format!("/api/rooms/lobby/events?limit=3&before={before}"))
        .await;
    assert_eq!(texts(&page), ["m1", "m2", "m3"]);
    let (_, page) = archiver
        .get(&format!(
            "/api/rooms/lobby/events?limit=3&before={}",
            events[1].id
        ))
        .await;
    assert_eq!(texts(&page), ["m0"]);
    let (_, page) = archiver.get("/api/rooms/empty/events").await;
    assert_eq!(page["events"], Value::Array(vec![]));

    for (path, status, code) in [
        ("/api/rooms/lobby/events?limit=0", 400, "invalid_limit"),
        ("/api/rooms/lobby/events?limit=1001", 400, "invalid_limit"),
        ("/api/rooms/lobby/events?limit=ten", 400, "invalid_limit"),
        ("/api/rooms/lobby/events?before=nope", 400, "unknown_event"),
        ("/api/rooms/lobby/events?colour=red", 400, "invalid_query"),
        ("/api/rooms/bad%20room/events", 400, "invalid_room"),
        ("/api/nothing", 404, "not_found"),
    ] {
        let (got, body) = archiver.get(path).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }

    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_history_command_prints_a_room_in_the_log_format() {
    let prefix = unique_prefix("cli");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start(&prefix, dir.path()).await;
    let mut event = message("lobby", "two\nlines");
    event.at = "2026-11-28T15:03:15.123Z".parse().unwrap();
    broker.publish_event(&event).await;
    archiver.wait_for_count("lobby", 1).await;
    let database_url = archiver.database_url.clone();
    archiver.stop().await;

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_archiver"))
        .args([
            "history",
            "lobby",
            "--limit",
            "20",
            "--database-url",
            &database_url,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "2026-11-28T15:03:15.123Z #lobby <alice> two\\nlines\n"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_archiver"))
        .args(["history", "no room", "--database-url", &database_url])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("room must be"));
    broker.cleanup().await;
}

#[tokio::test]
async fn a_storage_failure_is_retried_and_loses_nothing() {
    let prefix = unique_prefix("storage");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start(&prefix, dir.path()).await;

    // Another process holds the write lock longer than the archiver's 5 s busy timeout, so
    // its inserts fail with SQLITE_BUSY until the lock goes away.
    let mut locker = sqlx::SqliteConnection::connect(&archiver.database_url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut locker).await.unwrap();
    let events: Vec<Event> = (0..5).map(|n| message("lobby", &format!("blocked-{n}"))).collect();
    for event in &events {
        broker.publish_event(event).await;
    }
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let (_, rooms) = archiver.get("/api/rooms").await;
    assert_eq!(rooms["rooms"], Value::Array(vec![]), "nothing stored while locked");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();

    archiver.wait_for_count("lobby", 5).await;
    let (_, page) = archiver.get("/api/rooms/lobby/events").await;
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, want);
    archiver.stop().await;
    broker.cleanup().await;
}
