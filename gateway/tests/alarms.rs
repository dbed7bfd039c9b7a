//! The broker pushing back, for real: RabbitMQ's memory and disk alarms block every
//! publishing connection. The gateways must notice (readiness 503, `say` refused at once
//! with `unavailable`), ack nothing the broker did not confirm, and a resend of the same
//! id after the alarm must post the message exactly once everywhere: archive, log, and
//! every client of both gateways. An alarm is global to the broker, so these tests run one
//! at a time, and each restores the broker's limits even when it fails.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use chat_core::testkit::{eventually, http_get, unique_prefix, Broker};
use serde_json::Value;
use support::{
    archived, report, start_archiver, start_gateway, start_logger, Client, Service, WAIT,
};
use tokio::sync::Mutex;

/// One alarm at a time: an alarm blocks every test's publishes.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Evaluates an Erlang expression on the broker node.
fn eval(expression: &str) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "eval", expression])
        .output()
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl eval {expression} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Which resource alarm a test raises.
#[derive(Debug, Clone, Copy)]
enum Alarm {
    /// `set_vm_memory_high_watermark` far below the node's use.
    Memory,
    /// `set_disk_free_limit` far above the free space.
    Disk,
}

/// A raised alarm; dropping it (also when the test panics) restores the old limit.
struct Raised {
    restore: String,
}

impl Alarm {
    fn raise(self) -> Raised {
        let restore = match self {
            Alarm::Memory => {
                let old = eval("vm_memory_monitor:get_vm_memory_high_watermark().");
                eval("vm_memory_monitor:set_vm_memory_high_watermark(0.000001).");
                format!("vm_memory_monitor:set_vm_memory_high_watermark({old}).")
            }
            Alarm::Disk => {
                let old = eval("rabbit_disk_monitor:get_disk_free_limit().");
                eval("rabbit_disk_monitor:set_disk_free_limit(1000000000000000).");
                format!("rabbit_disk_monitor:set_disk_free_limit({old}).")
            }
        };
        Raised { restore }
    }
}

impl Raised {
    fn clear(self) {
        drop(self);
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        eval(&self.restore);
    }
}

async fn readyz(gateway: &Service) -> (u16, Value) {
    let (status, body) = http_get(gateway.addr(), "/readyz").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Lines of the chat log that contain `text`.
fn log_lines(log: &Path, text: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(text))
        .count()
}

async fn a_message_refused_during_an_alarm_is_posted_once_when_resent(alarm: Alarm) {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix(&format!("{alarm:?}-alarm").to_lowercase());
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chat.log");
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let logger = start_logger(&prefix, &log).await;
    // A long publish timeout: a refusal that comes fast did not wait for it.
    let gw1 = start_gateway(&prefix, &["--publish-timeout-ms", "20000"]).await;
    let gw2 = start_gateway(&prefix, &["--publish-timeout-ms", "20000"]).await;
    let mut alice = Client::connect(&gw1).await;
    alice.join("lobby", "alice").await;
    let mut bob = Client::connect(&gw2).await;
    bob.join("lobby", "bob").await;
    alice.event("lobby", "join").await; // bob's

    let raised = alarm.raise();
    for gateway in [&gw1, &gw2] {
        let body = eventually(WAIT, "readyz 503 while the broker blocks", || async {
            let (status, body) = readyz(gateway).await;
            (status == 503).then_some(body)
        })
        .await;
        assert!(body["blocked"].is_string(), "{body}");
    }
    let id = uuid::Uuid::now_v7().to_string();
    let text = format!("during the {alarm:?} alarm");
    let started = Instant::now();
    let refused = alice.say_with_id("lobby", &text, &id, "m1").await;
    let refused_after = started.elapsed();
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(
        refused_after < Duration::from_secs(10),
        "refused without waiting for PUBLISH_TIMEOUT_MS (20 s): {refused_after:?}"
    );
    // Nothing acked, nothing delivered while blocked.
    let during = alice.drain_for(Duration::from_millis(500)).await;
    assert!(
        !during.iter().any(|f| f["type"] == "ack"),
        "no ack while blocked: {during:?}"
    );

    raised.clear();
    for gateway in [&gw1, &gw2] {
        eventually(WAIT, "readyz 200 after the alarm", || async {
            (readyz(gateway).await.0 == 200).then_some(())
        })
        .await;
    }
    let ack = alice.say_with_id("lobby", &text, &id, "m2").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], id.as_str());
    // A second resend, as an impatient page might: acked again, posted once.
    let again = alice.say_with_id("lobby", &text, &id, "m3").await;
    assert_eq!(again["type"], "ack", "{again}");

    let archived_copies = eventually(WAIT, "the message archived", || async {
        let events = archived(archiver.addr(), "lobby").await;
        let copies = events.iter().filter(|e| e["id"] == id.as_str()).count();
        (copies > 0).then_some(copies)
    })
    .await;
    eventually(WAIT, "the message logged", || async {
        (log_lines(&log, &text) > 0).then_some(())
    })
    .await;
    // Time for any second copy to arrive anywhere.
    let alice_frames = alice.drain_for(Duration::from_millis(1500)).await;
    let bob_frames = bob.drain_for(Duration::from_millis(100)).await;
    let seen = |frames: &[Value]| {
        frames
            .iter()
            .filter(|f| f["type"] == "event" && f["event"]["id"] == id.as_str())
            .count()
    };
    let (alice_saw, bob_saw) = (seen(&alice_frames), seen(&bob_frames));
    let logged = log_lines(&log, &text);
    let archived_copies = archived_copies.max(
        archived(archiver.addr(), "lobby")
            .await
            .iter()
            .filter(|e| e["id"] == id.as_str())
            .count(),
    );
    report(&format!(
        "{alarm:?} alarm: say refused after {} ms with unavailable, readyz 503 on both \
         gateways; resent twice after the alarm: archived={archived_copies} logged={logged} \
         seen_on_gw1={alice_saw} seen_on_gw2={bob_saw}",
        refused_after.as_millis()
    ));
    assert_eq!(
        (archived_copies, logged, alice_saw, bob_saw),
        (1, 1, 1, 1),
        "exactly once in the archive, the log and on each gateway"
    );
    for service in [gw1, gw2, archiver, logger] {
        service.stop().await;
    }
    broker.cleanup().await;
}

#[tokio::test]
async fn a_message_refused_during_a_memory_alarm_is_posted_once_when_resent() {
    a_message_refused_during_an_alarm_is_posted_once_when_resent(Alarm::Memory).await;
}

#[tokio::test]
async fn a_message_refused_during_a_disk_alarm_is_posted_once_when_resent() {
    a_message_refused_during_an_alarm_is_posted_once_when_resent(Alarm::Disk).await;
}

#[tokio::test]
async fn the_archiver_reports_a_blocked_broker_and_the_logger_keeps_consuming() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("blocked-subscribers");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let logger = start_logger(&prefix, &dir.path().join("chat.log")).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    let raised = Alarm::Memory.raise();
    let archiver_body = eventually(WAIT, "the archiver reports the block", || async {
        let (status, body) = http_get(archiver.addr(), "/readyz").await;
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status == 503 && body["blocked"].is_string()).then_some(body)
    })
    .await;
    let (_, metrics) = http_get(gateway.addr(), "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chat_broker_blocked") && l.ends_with(" 1")),
        "{metrics}"
    );
    // The logger never publishes: the broker does not block it, and it stays ready.
    assert_eq!(http_get(logger.addr(), "/readyz").await.0, 200);
    raised.clear();
    eventually(WAIT, "the archiver ready again", || async {
        (http_get(archiver.addr(), "/readyz").await.0 == 200).then_some(())
    })
    .await;
    eventually(WAIT, "the logger ready again", || async {
        (http_get(logger.addr(), "/readyz").await.0 == 200).then_some(())
    })
    .await;
    report(&format!(
        "blocked broker: archiver readyz said {archiver_body}"
    ));
    for service in [gateway, archiver, logger] {
        service.stop().await;
    }
    broker.cleanup().await;
}
