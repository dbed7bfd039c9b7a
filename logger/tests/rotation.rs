//! logrotate support through the real binary and broker: after the log is renamed and the
//! logger gets SIGHUP, new lines go to a new file at the configured path.

use std::time::Duration;

use chat_core::testkit::{amqp_url, eventually, http_get, unique_prefix, Broker};
use chat_core::{Event, EventKind};

const WAIT: Duration = Duration::from_secs(10);

fn message(text: &str) -> Event {
    Event::new(
        EventKind::Message,
        "lobby",
        "alice",
        Some(text.to_owned()),
        "gw",
    )
}

async fn file_contains(path: std::path::PathBuf, text: &'static str) -> String {
    eventually(WAIT, text, || {
        let path = path.clone();
        async move {
            let log = tokio::fs::read_to_string(&path).await.ok()?;
            log.contains(text).then_some(log)
        }
    })
    .await
}

#[tokio::test]
async fn sighup_makes_the_logger_reopen_its_file_after_a_rotation() {
    let prefix = unique_prefix("hup");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chat.log");
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_logger"))
        .env("AMQP_URL", amqp_url())
        .env("CHAT_PREFIX", &prefix)
        .env("LOG_FILE", &log)
        .env("LOGGER_STDOUT", "false")
        .env("LOGGER_LISTEN", http.to_string())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    eventually(WAIT, "a ready logger", || async move {
        (http_get(http, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    broker.publish_event(&message("first")).await;
    file_contains(log.clone(), "<~alice> first").await;
    let rotated = dir.path().join("chat.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    // Let the signal land before the next event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.publish_event(&message("second")).await;
    let new = file_contains(log.clone(), "<~alice> second").await;
    assert!(!new.contains("first"), "{new}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("first") && !old.contains("second"), "{old}");

    // The logger survived the signal and stops cleanly.
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    broker.cleanup().await;
}
