//! The logger against a real disk-full error (`/dev/full`) and the real broker: a batch it
//! cannot write is never acked, so it waits in the durable queue and is logged once the
//! logger can write again.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use chat_core::testkit::{amqp_url, eventually, unique_prefix, Broker};
use chat_core::{Event, EventKind};
use clap::Parser;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn start(
    prefix: &str,
    file: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let url = amqp_url();
    let cli = logger::cli::Cli::try_parse_from([
        "logger",
        "--prefix",
        prefix,
        "--amqp-url",
        &url,
        "--log-file",
        file,
        "--stdout",
        "false",
    ])
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let shutdown = CancellationToken::new();
    let reopen = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(logger::run(listener, cli.config, reopen, shutdown.clone()));
    (shutdown, task)
}

#[tokio::test]
async fn a_batch_that_cannot_be_written_stays_queued_and_is_logged_later() {
    let prefix = unique_prefix("full");
    let broker = Broker::connect(&prefix).await;
    let queue = broker.topology.subscriber_queue("logger");

    // Every write to /dev/full fails with "no space left on device".
    let (shutdown, task) = start(&prefix, "/dev/full");
    // Consuming, so its queue is bound too: an event published between the queue's
    // declaration and its binding would never reach it.
    eventually(WAIT, "the logger consuming its queue", || async {
        (broker.queue_exists(&queue).await && broker.consumers(&queue).await == 1).then_some(())
    })
    .await;
    let events: Vec<Event> = (0..3)
        .map(|n| {
            Event::new(
                EventKind::Message,
                "lobby",
                "alice",
                Some(format!("full-{n}")),
                "gw",
            )
        })
        .collect();
    for event in &events {
        broker.publish_event(event).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    // Nothing was acked while the disk was full: all three are back in the queue once the
    // stopped consumer's channel has returned them (a quorum queue counts them again
    // shortly after the close, not at once).
    eventually(WAIT, "the three events back in the queue", || async {
        (broker.depth(&queue).await == 3).then_some(())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.log");
    let (shutdown, task) = start(&prefix, file.to_str().unwrap());
    let log = eventually(WAIT, "the lines logged", || {
        let file = file.clone();
        async move {
            let log = tokio::fs::read_to_string(&file).await.ok()?;
            (log.lines().count() >= 3).then_some(log)
        }
    })
    .await;
    for n in 0..3 {
        assert_eq!(
            log.matches(&format!("<~alice> full-{n}\n")).count(),
            1,
            "{log}"
        );
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    broker.cleanup().await;
}
