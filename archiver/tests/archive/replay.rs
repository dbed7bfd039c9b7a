//! The event log stream `<prefix>.log`, which the archiver declares: a subscriber started
//! after 1 000 events, while chat goes on, ends with exactly the archive's events in the
//! archive's order (with a restart from the offset it stored on the way); one that starts
//! at a time gets the events stamped from then on; the Python example does the same; a
//! lost archive is refilled from the stream; a stream declared with other retention stops
//! the archiver with what to do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::broker::event_properties;
use chat_core::replay::{self, LogEvent, LogSink, ReplayConfig, StartAt};
use chat_core::testkit::{amqp_url, eventually, unique_prefix, Broker};
use chat_core::topology::Topology;
use chat_core::Event;
use clap::Parser;
use futures_util::TryStreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    archiver_command, message, message_at, report, start, Backend, TestDatabase, WAIT,
};

const ROOMS: [&str; 3] = ["lobby", "den", "attic"];

/// What a subscriber stored: the events and their offsets, in the order it got them.
#[derive(Clone, Default)]
struct Kept(Arc<Mutex<Vec<LogEvent>>>);

impl Kept {
    fn events(&self) -> Vec<LogEvent> {
        self.0.lock().unwrap().clone()
    }

    fn has(&self, id: &str) -> bool {
        self.0.lock().unwrap().iter().any(|e| e.event.id == id)
    }
}

impl LogSink for Kept {
    async fn write(&mut self, events: &[LogEvent]) -> anyhow::Result<()> {
        self.0.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

/// A running reader of the log and how to stop it.
struct Reader {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Reader {
    fn start(prefix: &str, start: StartAt, kept: &Kept) -> Self {
        let config = ReplayConfig {
            amqp_url: amqp_url(),
            topology: Topology::new(prefix).unwrap(),
            name: "test-reader".to_owned(),
            start,
            prefetch: 256,
            batch_max: 100,
            batch_linger: Duration::from_millis(5),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(replay::follow(config, kept.clone(), shutdown.clone()));
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Publishes `events` in order on one confirmed channel, as one gateway does, and waits
/// for every confirm (the stream's included: it confirms once it has written).
async fn publish(broker: &Broker, events: &[Event]) {
    let channel = broker.connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(events.len());
    for event in events {
        let confirm = channel
            .basic_publish(
                broker.topology.events_exchange().into(),
                "".into(),
                BasicPublishOptions::default(),
                event.to_json().as_bytes(),
                event_properties(event),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack(), "the broker confirms");
    }
    let _ = channel.close(200, "published".into()).await;
}

fn messages(from: usize, to: usize) -> Vec<Event> {
    (from..to)
        .map(|i| message(ROOMS[i % ROOMS.len()], &format!("message {i}")))
        .collect()
}

/// The archive's events of every room, each room oldest first (archive order).
async fn archived(database_url: &str) -> Vec<Vec<String>> {
    let store = archiver::Store::open_existing(database_url).await.unwrap();
    let mut rooms = Vec::new();
    for room in ROOMS {
        let events: Vec<Event> = store.room_events(room).try_collect().await.unwrap();
        rooms.push(events.into_iter().map(|e| e.id).collect());
    }
    store.close().await;
    rooms
}

#[tokio::test]
async fn a_subscriber_started_after_1000_events_ends_with_exactly_the_archive_in_order_while_chat_goes_on(
) {
    let prefix = unique_prefix("replay");
    let broker = Broker::connect(&prefix).await;
    let db = TestDatabase::new(Backend::Sqlite, "replay").await;
    let archiver = start(&prefix, &db.url).await;

    let past = messages(0, 1000);
    publish(&broker, &past).await;
    // A gateway that lost a confirm publishes the same event again.
    publish(&broker, &past[500..501]).await;

    // The subscriber arrives late; chat goes on meanwhile, 1 000 more events in small
    // bursts, one of them published twice.
    let kept = Kept::default();
    let first = Reader::start(&prefix, StartAt::First, &kept);
    let live = messages(1000, 2000);
    let chat = {
        let live = live.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let broker = Broker::connect(&prefix).await;
            for (i, burst) in live.chunks(25).enumerate() {
                publish(&broker, burst).await;
                if i == 10 {
                    publish(&broker, &burst[..1]).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Not `cleanup`: the test's broker deletes the prefix's objects at the end.
            let _ = broker.connection.close(200, "done".into()).await;
        })
    };

    // Stopped on the way and started again from the offset it stored.
    eventually(WAIT, "the subscriber reading the past", || async {
        (kept.events().len() >= 600).then_some(())
    })
    .await;
    first.stop().await;
    let stored = kept.events().last().unwrap().offset;
    let again = Reader::start(&prefix, StartAt::after(stored), &kept);

    chat.await.unwrap();
    // Everything before the last event is in the stream before it: once the subscriber has
    // it, it has had its chance at every other.
    let last = message("lobby", "the last one");
    publish(&broker, std::slice::from_ref(&last)).await;
    eventually(
        Duration::from_secs(30),
        "the subscriber at the end",
        || async { kept.has(&last.id).then_some(()) },
    )
    .await;
    for room in ROOMS {
        let count = past
            .iter()
            .chain(&live)
            .chain([&last])
            .filter(|e| e.room == room)
            .count();
        archiver.wait_for_count(room, count as i64).await;
    }
    again.stop().await;

    let got = kept.events();
    let archive = archived(&db.url).await;
    let distinct: std::collections::HashSet<&str> =
        got.iter().map(|e| e.event.id.as_str()).collect();
    report(&format!(
        "late subscriber from the event log stream: published={} published_twice=2 archived={} read={} distinct={} restarted_after_offset={stored}",
        past.len() + live.len() + 1,
        archive.iter().map(Vec::len).sum::<usize>(),
        got.len(),
        distinct.len()
    ));
    assert!(
        got.windows(2).all(|w| w[0].offset < w[1].offset),
        "offsets only grow"
    );
    for (room, stored) in ROOMS.iter().zip(&archive) {
        let read: Vec<String> = got
            .iter()
            .filter(|e| e.event.room == *room)
            .map(|e| e.event.id.clone())
            .collect();
        assert_eq!(stored.len(), read.len(), "as many events in {room}");
        assert!(
            &read == stored,
            "{room}: the subscriber's events are the archive's, in the archive's order"
        );
    }
    assert_eq!(got.len(), 2001, "every event once, none twice");

    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_subscriber_from_a_time_gets_exactly_the_events_stamped_from_then_on() {
    let prefix = unique_prefix("replay-time");
    let broker = Broker::connect(&prefix).await;
    let db = TestDatabase::new(Backend::Sqlite, "replay-time").await;
    let archiver = start(&prefix, &db.url).await;

    // Events carry milliseconds: a start at a whole millisecond includes the one stamped then.
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 3);
    let stamp = |seconds: i64| (now + chrono::TimeDelta::seconds(seconds)).to_rfc3339();
    let before: Vec<Event> = (0..30)
        .map(|i| message_at("lobby", &format!("old {i}"), &stamp(-60 + i)))
        .collect();
    let after: Vec<Event> = (0..30)
        .map(|i| message_at("lobby", &format!("new {i}"), &stamp(-20 + i)))
        .collect();
    publish(&broker, &before).await;
    publish(&broker, &after).await;

    let kept = Kept::default();
    let reader = Reader::start(
        &prefix,
        StartAt::Time(now - chrono::TimeDelta::seconds(20)),
        &kept,
    );
    let last = message("lobby", "live");
    publish(&broker, std::slice::from_ref(&last)).await;
    eventually(WAIT, "the live event", || async {
        kept.has(&last.id).then_some(())
    })
    .await;
    reader.stop().await;

    let got: Vec<String> = kept.events().into_iter().map(|e| e.event.id).collect();
    let expected: Vec<String> = after.iter().chain([&last]).map(|e| e.id.clone()).collect();
    assert_eq!(got, expected, "from the time on, nothing before it");

    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn an_archiver_given_other_retention_than_the_stream_has_stops_and_says_what_to_do() {
    let prefix = unique_prefix("replay-conflict");
    let broker = Broker::connect(&prefix).await;
    let db = TestDatabase::new(Backend::Sqlite, "replay-conflict").await;
    start(&prefix, &db.url).await.stop().await;

    let url = amqp_url();
    let args = [
        "archiver",
        "--prefix",
        &prefix,
        "--amqp-url",
        &url,
        "--database-url",
        &db.url,
        "--log-stream-max-age",
        "1D",
    ];
    let cli = archiver::cli::Cli::try_parse_from(args).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outcome = tokio::time::timeout(
        WAIT,
        archiver::run(listener, cli.config, CancellationToken::new()),
    )
    .await
    .expect("the archiver stops by itself");
    let said = format!("{:#}", outcome.unwrap_err());
    assert!(
        said.contains(&format!("{prefix}.log")) && said.contains("policy"),
        "names the stream and the way out: {said}"
    );

    // A retention the broker would refuse is refused before anything is declared.
    for (flag, bad) in [
        ("--log-stream-max-age", "7d"),
        ("--log-stream-max-age", "0D"),
    ] {
        let refused = archiver::cli::Cli::try_parse_from(["archiver", flag, bad]).unwrap_err();
        assert!(
            refused.to_string().contains("LOG_STREAM_MAX_AGE"),
            "{refused}"
        );
    }
    broker.cleanup().await;
}

/// The Python interpreter for the example: `CHAT_PYTHON`, or `python3`. It needs pika; the
/// test fails, saying how to get it, rather than skip.
fn python() -> String {
    let python = std::env::var("CHAT_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let has_pika = std::process::Command::new(&python)
        .args(["-c", "import pika"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_pika,
        "{python} cannot import pika: run `pip install -r examples/python-subscriber/requirements.txt`, \
         or set CHAT_PYTHON to an interpreter that has it (scripts/test.sh makes one)"
    );
    python
}

/// The Python example (examples/python-subscriber) running with `--from`, its lines read
/// by a thread of their own.
struct Printer {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Printer {
    fn start(python: &str, prefix: &str, offset_file: &std::path::Path, from: &str) -> Self {
        use std::io::BufRead;
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/python-subscriber/subscriber.py"
        );
        let mut child = std::process::Command::new(python)
            .arg(script)
            .args(["--from", from, "--offset-file"])
            .arg(offset_file)
            .env("AMQP_URL", amqp_url())
            .env("CHAT_PREFIX", prefix)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next `n` lines it prints.
    async fn next(&self, n: usize) -> Vec<String> {
        let got = std::cell::RefCell::new(Vec::new());
        eventually(
            WAIT,
            &format!("{n} lines from the Python example"),
            || async {
                got.borrow_mut().extend(self.lines.try_iter());
                (got.borrow().len() >= n).then_some(())
            },
        )
        .await;
        got.into_inner()
    }

    /// Stops it as Ctrl-C or SIGTERM would.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap();
    }
}

/// Whether `line` is the example's line for `event`.
fn printed(line: &str, event: &Event) -> bool {
    line.contains(&format!("#{} ", event.room))
        && line.ends_with(&format!(": {}", event.text.as_deref().unwrap()))
}

#[tokio::test]
async fn the_python_example_catches_up_from_the_stream_and_goes_on_after_the_offset_it_stored() {
    let python = python();
    let prefix = unique_prefix("replay-py");
    let broker = Broker::connect(&prefix).await;
    let db = TestDatabase::new(Backend::Sqlite, "replay-py").await;
    let archiver = start(&prefix, &db.url).await;
    let dir = tempfile::tempdir().unwrap();
    let offset_file = dir.path().join("pyprinter.offset");

    // Offsets 0..=39, a copy of the eighth event at 40, then the live ones at 41..=50.
    let past = messages(0, 40);
    publish(&broker, &past).await;
    publish(&broker, &past[7..8]).await;
    let printer = Printer::start(&python, &prefix, &offset_file, "first");
    let lines = printer.next(40).await;
    let live = messages(40, 50);
    publish(&broker, &live).await;
    let lines = [lines, printer.next(10).await].concat();
    let expected: Vec<&Event> = past.iter().chain(&live).collect();
    assert_eq!(lines.len(), expected.len());
    for (line, event) in lines.iter().zip(&expected) {
        assert!(printed(line, event), "{line:?} is {:?}", event.text);
    }
    eventually(WAIT, "the last offset stored", || async {
        let stored = std::fs::read_to_string(&offset_file).ok()?;
        (stored.trim() == "50").then_some(())
    })
    .await;
    printer.stop();

    // Events while it is away; started again, it goes on after its offset (`--from first`
    // does not apply once an offset is stored): each once, in order, then live.
    let missed = messages(50, 55);
    publish(&broker, &missed).await;
    let printer = Printer::start(&python, &prefix, &offset_file, "first");
    let last = message("lobby", "the last one");
    publish(&broker, std::slice::from_ref(&last)).await;
    let lines = printer.next(missed.len() + 1).await;
    printer.stop();
    for (line, event) in lines.iter().zip(missed.iter().chain([&last])) {
        assert!(printed(line, event), "{line:?} is {:?}", event.text);
    }

    // A start that is none of the three is refused with the usage.
    let refused = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/python-subscriber/subscriber.py"
        ))
        .args(["--from", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("must be first, an RFC 3339 time"));

    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn an_archive_lost_within_the_streams_retention_is_refilled_from_it() {
    let prefix = unique_prefix("restore");
    let broker = Broker::connect(&prefix).await;
    let lost = TestDatabase::new(Backend::Sqlite, "restore-lost").await;
    let archiver = start(&prefix, &lost.url).await;
    let events = messages(0, 300);
    publish(&broker, &events).await;
    publish(&broker, &events[100..101]).await;
    for room in ROOMS {
        archiver.wait_for_count(room, 100).await;
    }

    let fresh = TestDatabase::new(Backend::Sqlite, "restore-new").await;
    let restore = |database_url: String| {
        let (prefix, url) = (prefix.clone(), amqp_url());
        tokio::task::spawn_blocking(move || {
            let args = [
                "--prefix",
                &prefix,
                "--amqp-url",
                &url,
                "restore-from-log",
                "--from",
                "first",
            ];
            let output = archiver_command(&args, &database_url);
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        })
    };
    let (ok, _, said) = restore(fresh.url.clone()).await.unwrap();
    assert!(!ok && said.contains("stop every archiver first"), "{said}");

    archiver.stop().await;
    let (ok, printed, said) = restore(fresh.url.clone()).await.unwrap();
    assert!(ok, "{said}");
    assert!(
        printed.contains("300 event(s) read") && printed.contains("300 of them new"),
        "{printed}"
    );
    assert_eq!(
        archived(&fresh.url).await,
        archived(&lost.url).await,
        "the refilled archive is the lost one, room by room, in order"
    );
    let (ok, printed, said) = restore(fresh.url.clone()).await.unwrap();
    assert!(ok, "{said}");
    assert!(
        printed.contains("0 of them new"),
        "again: nothing twice: {printed}"
    );

    broker.cleanup().await;
}
