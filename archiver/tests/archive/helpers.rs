//! What every archiver test needs: an archiver started in-process against the real broker
//! with a unique prefix and a fresh SQLite file, events to publish, and the `archiver`
//! binary to run commands against the archive it leaves.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use chat_core::testkit::{amqp_url, eventually, http_get, unique_prefix, Broker};
use chat_core::{Event, EventKind};
use clap::Parser;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub database_url: String,
}

/// Starts an archiver on `prefix` with its database in `dir` and waits until it is healthy.
pub async fn start(prefix: &str, dir: &Path) -> Running {
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
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = http_get(self.addr, path).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub async fn wait_for_count(&self, room: &str, count: i64) {
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

/// An archiver that has archived `events` (published in order), with its broker.
pub struct Archived {
    pub archiver: Running,
    pub broker: Broker,
    /// Holds the database; deleted on drop.
    pub dir: tempfile::TempDir,
}

impl Archived {
    pub async fn new(name: &str, events: &[Event]) -> Self {
        let prefix = unique_prefix(name);
        let broker = Broker::connect(&prefix).await;
        let dir = tempfile::tempdir().unwrap();
        let archiver = start(&prefix, dir.path()).await;
        for event in events {
            broker.publish_event(event).await;
        }
        let mut rooms: Vec<&str> = events.iter().map(|e| e.room.as_str()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        for room in rooms {
            let count = events.iter().filter(|e| e.room == room).count();
            archiver.wait_for_count(room, count as i64).await;
        }
        Self {
            archiver,
            broker,
            dir,
        }
    }

    /// Stops the archiver and cleans the broker up, keeping the database for commands.
    pub async fn stop(self) -> Archive {
        let database_url = self.archiver.database_url.clone();
        self.archiver.stop().await;
        self.broker.cleanup().await;
        Archive {
            database_url,
            _dir: self.dir,
        }
    }
}

/// An archive file left by a stopped archiver.
pub struct Archive {
    pub database_url: String,
    _dir: tempfile::TempDir,
}

impl Archive {
    /// Runs `archiver <args> --database-url <this archive>`.
    pub fn command(&self, args: &[&str]) -> Output {
        archiver_command(args, &self.database_url)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn stdout(&self, args: &[&str]) -> String {
        let output = self.command(args);
        assert!(
            output.status.success(),
            "archiver {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

pub fn archiver_command(args: &[&str], database_url: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_archiver"))
        .args(args)
        .args(["--database-url", database_url])
        .output()
        .unwrap()
}

pub fn message(room: &str, text: &str) -> Event {
    Event::new(
        EventKind::Message,
        room,
        "alice",
        Some(text.to_owned()),
        "gw-test",
    )
}

/// A message stamped `at` (RFC 3339).
pub fn message_at(room: &str, text: &str, at: &str) -> Event {
    let mut event = message(room, text);
    event.at = at.parse().unwrap();
    event
}

/// Percent-encodes every byte but ASCII letters and digits, for query strings.
pub fn encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The ids of an `events` array.
pub fn ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}
