//! Fault tests: each injects its fault for real (the broker stopped, killed or cutting the
//! gateway's connection, a service SIGKILLed) and checks the promise by counting acked,
//! archived, logged and received events. They stop and start the one shared broker, so they
//! take a lock and run one at a time; each prints its counts and appends them to the
//! reliability report. Client policy tests, which leave the broker alone, are in
//! `policy.rs` and run in parallel.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chat_core::testkit::{eventually, unique_prefix, Broker};
use serde_json::{json, Value};
use support::{
    archived, health, report, start_archiver, start_gateway, start_logger, Client, Process, WAIT,
};
use tokio::sync::Mutex;

/// One fault test at a time: they stop and start the shared broker.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// How the broker is taken down.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// `rabbitmqctl stop_app`, later `start_app`.
    Graceful,
    /// SIGKILL of the broker's Erlang VM, later `rabbitmq-server -detached`.
    Crash,
}

fn run(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The OS pid of the default RabbitMQ node, from the node itself.
fn broker_pid() -> Option<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["eval", "os:getpid()."])
        .output()
        .ok()?;
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_matches('"')
        .to_owned();
    pid.bytes()
        .all(|b| b.is_ascii_digit())
        .then_some(pid)
        .filter(|p| !p.is_empty())
}

/// Has the broker write down the quorum queues it has just created, as it does by itself
/// within seconds. RabbitMQ 3.10 saves which Raft servers it runs (`ra_directory_reverse`,
/// after 0.5 s without change) and their terms (`ra_log_meta`, 5 s) lazily: a quorum queue
/// declared a moment before the node is SIGKILLed comes back as a follower with no log
/// that never elects a leader, and every publish routed to it then goes unconfirmed
/// (RELIABILITY.md, "Known limits"). These tests crash a system that has been running, so
/// they let the broker catch up first rather than wait seconds each time; a RabbitMQ that
/// renames the tables fails here, loudly.
fn settle_quorum_queues() {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "eval",
            "[dets:sync(T) || T <- [ra_directory_reverse, ra_log_meta]].",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.trim(), "[ok,ok]", "the broker saved its Raft registry");
}

fn amqp_port_open() -> bool {
    std::net::TcpStream::connect("127.0.0.1:5672").is_ok()
}

/// Restarts the broker if a test ends (or panics) while it is down: tests must leave it
/// running.
struct BrokerOutage(Outage);

impl BrokerOutage {
    async fn begin(outage: Outage) -> Self {
        let guard = Self(outage);
        tokio::task::spawn_blocking(move || match outage {
            Outage::Graceful => assert!(run("rabbitmqctl", &["stop_app"])),
            Outage::Crash => {
                settle_quorum_queues();
                // The node on 5672 only: other RabbitMQ nodes on this machine (a benchmark's
                // private broker) are not ours to kill.
                let pid = broker_pid().expect("the broker's OS pid");
                assert!(run("kill", &["-KILL", &pid]));
            }
        })
        .await
        .unwrap();
        eventually(WAIT, "the broker down", || async {
            (!amqp_port_open()).then_some(())
        })
        .await;
        guard
    }

    /// Brings the broker back; returns when it accepts connections.
    async fn end(self) -> Instant {
        let outage = self.0;
        std::mem::forget(self);
        tokio::task::spawn_blocking(move || restart(outage))
            .await
            .unwrap();
        Instant::now()
    }
}

fn restart(outage: Outage) {
    match outage {
        Outage::Graceful => {
            if !run("rabbitmqctl", &["start_app"]) {
                run("rabbitmq-server", &["-detached"]);
            }
        }
        Outage::Crash => {
            run("rabbitmq-server", &["-detached"]);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !amqp_port_open() {
        assert!(Instant::now() < deadline, "the broker did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    run("rabbitmqctl", &["await_startup"]);
}

impl Drop for BrokerOutage {
    fn drop(&mut self) {
        restart(self.0);
    }
}

/// Says `text` and returns the ack's id, or `None` if the gateway answered with an error.
async fn say(client: &mut Client, room: &str, text: &str) -> Option<String> {
    let answer = client.say(room, text, text).await;
    (answer["type"] == "ack").then(|| answer["id"].as_str().unwrap().to_owned())
}

/// Ids of archived messages, with how often each appears.
fn counts(events: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for event in events.iter().filter(|e| e["type"] == "message") {
        *counts
            .entry(event["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

async fn ride_out(outage: Outage) {
    let prefix = unique_prefix("outage");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chat.log");
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let logger = start_logger(&prefix, &log).await;
    let options = [
        "--publish-timeout-ms",
        "1500",
        "--history-timeout-ms",
        "1000",
    ];
    let one = start_gateway(&prefix, &options).await;
    let two = start_gateway(&prefix, &options).await;
    let mut alice = Client::connect(&one).await;
    let mut bob = Client::connect(&two).await;
    alice.join("lobby", "alice").await;
    bob.join("lobby", "bob").await;
    drop(broker);

    let mut acked = Vec::new();
    for n in 0..5 {
        acked.push(
            say(&mut alice, "lobby", &format!("before-{n}"))
                .await
                .expect("acked before"),
        );
    }

    let down = BrokerOutage::begin(outage).await;
    eventually(WAIT, "/healthz to report the outage", || async {
        (health(&one).await.0 == 503).then_some(())
    })
    .await;
    // Clients stay connected, and a say that cannot be confirmed is never acked.
    let during = alice.say("lobby", "during", "during").await;
    assert_eq!(during["type"], "error", "{during}");
    assert_eq!(during["code"], "unavailable", "{during}");
    let back = down.end().await;

    // Within 5 s of the broker being back, messages flow across gateways again.
    let mut probe = 0;
    let recovered = loop {
        probe += 1;
        if let Some(id) = say(&mut alice, "lobby", &format!("probe-{probe}")).await {
            acked.push(id);
            let arrived = tokio::time::timeout(
                Duration::from_millis(300),
                bob.recv_until(|f| {
                    f["type"] == "event"
                        && f["event"]["text"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("probe-"))
                }),
            )
            .await;
            if arrived.is_ok() {
                break back.elapsed();
            }
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "no flow 15 s after the broker came back"
        );
    };
    for n in 0..5 {
        acked.push(
            say(&mut alice, "lobby", &format!("after-{n}"))
                .await
                .expect("acked after"),
        );
    }
    assert!(health(&one).await.0 == 200 && health(&two).await.0 == 200);

    let want: HashSet<&String> = acked.iter().collect();
    let stored = eventually(WAIT, "every acked message archived", || async {
        let stored = counts(&archived(archiver.addr(), "lobby").await);
        want.iter()
            .all(|id| stored.contains_key(*id))
            .then_some(stored)
    })
    .await;
    let duplicates = stored.values().filter(|&&n| n > 1).count();
    let log_text = eventually(WAIT, "every acked message logged", || async {
        let text = tokio::fs::read_to_string(&log).await.ok()?;
        ["before-4", "after-4"]
            .iter()
            .all(|t| text.contains(*t))
            .then_some(text)
    })
    .await;
    let logged = log_text.lines().filter(|l| l.contains("<~alice>")).count();
    report(&format!(
        "broker {outage:?} outage: acked={} archived={} logged={} duplicates={duplicates} flow_back_after_ms={}",
        acked.len(),
        stored.len(),
        logged,
        recovered.as_millis()
    ));
    assert_eq!(duplicates, 0);
    assert!(
        recovered < Duration::from_secs(5),
        "messages flowed again only after {recovered:?}"
    );
    assert!(logged >= acked.len(), "{log_text}");
    for service in [one, two, archiver, logger] {
        service.stop().await;
    }
    Broker::connect(&prefix).await.cleanup().await;
}

#[tokio::test]
async fn the_system_rides_out_a_graceful_broker_restart() {
    let _serial = SERIAL.lock().await;
    ride_out(Outage::Graceful).await;
}

#[tokio::test]
async fn the_system_rides_out_a_broker_crash() {
    let _serial = SERIAL.lock().await;
    ride_out(Outage::Crash).await;
}

#[tokio::test]
async fn no_acked_message_is_lost_when_the_archiver_and_logger_are_killed_mid_stream() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("kill");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chat.log");
    let env = vec![
        ("CHAT_PREFIX", prefix.clone()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("archive.db").display()),
        ),
        ("LOG_FILE", log.display().to_string()),
        ("LOGGER_STDOUT", "false".to_owned()),
    ];
    let mut archiver = Process::start("archiver", &env, true).await;
    let mut logger = Process::start("logger", &env, true).await;
    let gateway = start_gateway(
        &prefix,
        &["--rate-limit", "100000", "--rate-burst", "100000"],
    )
    .await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;

    let total = 300;
    let mut acked = Vec::new();
    for n in 0..total {
        if n == 100 {
            archiver.signal("KILL");
            logger.signal("KILL");
            assert_eq!(archiver.wait().await, None, "killed by the signal");
            assert_eq!(logger.wait().await, None, "killed by the signal");
        }
        if n == 200 {
            archiver = Process::start("archiver", &env, true).await;
            logger = Process::start("logger", &env, true).await;
        }
        acked.push(
            say(&mut alice, "lobby", &format!("m-{n}"))
                .await
                .expect("acked"),
        );
    }

    let stored = eventually(WAIT, "all acked messages archived", || async {
        let stored = counts(&archived(archiver.addr.unwrap(), "lobby").await);
        (stored.len() >= acked.len()).then_some(stored)
    })
    .await;
    let missing = acked.iter().filter(|id| !stored.contains_key(*id)).count();
    let duplicates: usize = stored.values().map(|n| n - 1).sum();
    let log_text = eventually(WAIT, "the last message logged", || async {
        let text = tokio::fs::read_to_string(&log).await.ok()?;
        text.contains(&format!("<~alice> m-{}\n", total - 1))
            .then_some(text)
    })
    .await;
    let mut lines: HashMap<&str, usize> = HashMap::new();
    for line in log_text.lines().filter(|l| l.contains("<~alice> m-")) {
        *lines.entry(line.rsplit(' ').next().unwrap()).or_default() += 1;
    }
    let log_missing = (0..total)
        .filter(|n| !lines.contains_key(format!("m-{n}").as_str()))
        .count();
    let log_repeats: usize = lines.values().map(|n| n - 1).sum();
    let unlogged: Vec<String> = (0..total)
        .map(|n| format!("m-{n}"))
        .filter(|m| !lines.contains_key(m.as_str()))
        .collect();
    if !unlogged.is_empty() {
        eprintln!("not in the log: {unlogged:?}\n{log_text}");
    }
    report(&format!(
        "archiver and logger SIGKILLed mid-stream: acked={} archived={} missing={missing} duplicates={duplicates} logged={} log_missing={log_missing} log_repeats={log_repeats}",
        acked.len(),
        stored.len(),
        lines.len(),
    ));
    assert_eq!((missing, duplicates, log_missing), (0, 0, 0));

    archiver.signal("TERM");
    logger.signal("TERM");
    assert_eq!(archiver.wait().await, Some(0));
    assert_eq!(logger.wait().await, Some(0));
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn events_waiting_in_the_durable_queues_survive_a_broker_restart() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("durable");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("archive.db");
    // The archiver declares its queue, then stays away while events pile up in it.
    start_archiver(&prefix, &db).await.stop().await;
    let gateway = start_gateway(&prefix, &["--history-timeout-ms", "300"]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    let mut acked = Vec::new();
    for n in 0..20 {
        acked.push(
            say(&mut alice, "lobby", &format!("queued-{n}"))
                .await
                .expect("acked"),
        );
    }
    gateway.stop().await;
    BrokerOutage::begin(Outage::Graceful).await.end().await;

    let archiver = start_archiver(&prefix, &db).await;
    let stored = eventually(WAIT, "the queued events archived", || async {
        let stored = counts(&archived(archiver.addr(), "lobby").await);
        (stored.len() >= acked.len()).then_some(stored)
    })
    .await;
    let missing = acked.iter().filter(|id| !stored.contains_key(*id)).count();
    report(&format!(
        "broker restarted with events in the durable queue: acked={} archived={} missing={missing}",
        acked.len(),
        stored.len()
    ));
    assert_eq!(missing, 0);
    archiver.stop().await;
    Broker::connect(&prefix).await.cleanup().await;
}

#[tokio::test]
async fn a_client_resuming_with_since_gets_exactly_what_it_missed_then_live_events() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("resume");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let no_limit = ["--rate-limit", "100000", "--rate-burst", "100000"];
    let one = start_gateway(&prefix, &no_limit).await;
    let two = start_gateway(&prefix, &no_limit).await;
    let mut alice = Client::connect(&one).await;
    let mut bob = Client::connect(&two).await;
    alice.join("lobby", "alice").await;
    bob.join("lobby", "bob").await;

    for n in 0..10 {
        say(&mut bob, "lobby", &format!("b-{n}"))
            .await
            .expect("acked");
    }
    let mut last_seen = String::new();
    for _ in 0..10 {
        last_seen = alice.event("lobby", "message").await["id"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    drop(alice); // alice's connection dies

    for n in 10..20 {
        say(&mut bob, "lobby", &format!("b-{n}"))
            .await
            .expect("acked");
    }
    // Bob keeps talking while alice catches up on the other gateway.
    let talker = tokio::spawn(async move {
        for n in 20..40 {
            say(&mut bob, "lobby", &format!("b-{n}"))
                .await
                .expect("acked");
        }
        bob
    });
    let mut alice = Client::connect(&two).await;
    alice
        .send(json!({"type": "join", "room": "lobby", "name": "alice", "since": last_seen}))
        .await;
    let joined = alice
        .recv_until(|f| f["type"] == "joined" || f["type"] == "error")
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let mut texts: Vec<String> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    let caught_up = texts.len();
    while texts.len() < 30 {
        texts.push(
            alice.event("lobby", "message").await["text"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let bob = talker.await.unwrap();
    let expected: Vec<String> = (10..40).map(|n| format!("b-{n}")).collect();
    let unique: HashSet<&String> = texts.iter().collect();
    report(&format!(
        "resume with since: missed=10 sent_during_catch_up=20 received={} from_archive={caught_up} duplicates={} in_order={}",
        texts.len(),
        texts.len() - unique.len(),
        texts == expected
    ));
    assert_eq!(texts, expected);

    // An unknown since fails closed: an error, then the normal history (once the archive
    // has caught up, so that the history's length is known).
    eventually(WAIT, "bob's 40 messages archived", || async {
        let count = archived(archiver.addr(), "lobby")
            .await
            .iter()
            .filter(|e| e["user"] == "bob" && e["type"] == "message")
            .count();
        (count == 40).then_some(())
    })
    .await;
    let mut carol = Client::connect(&one).await;
    carol
        .send(json!({"type": "join", "room": "lobby", "name": "carol", "since": "0190aaaa-0000-7000-8000-000000000000"}))
        .await;
    let error = carol.recv().await;
    assert_eq!(error["code"], "bad_since", "{error}");
    let joined = carol.recv().await;
    assert_eq!(joined["type"], "joined");
    assert!(joined["history"].as_array().unwrap().len() >= 40);

    drop(bob);
    for service in [one, two, archiver] {
        service.stop().await;
    }
    broker.cleanup().await;
}

/// Closes the broker connection named `name` from the broker's side.
fn close_connection(name: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let pid = listing
        .lines()
        .find(|l| l.contains(&format!("\"{name}\"")))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no broker connection named {name}"))
        .to_owned();
    assert!(run(
        "rabbitmqctl",
        &["close_connection", &pid, "fault test"]
    ));
}

#[tokio::test]
async fn a_gateway_that_lost_its_broker_connection_delivers_what_it_missed() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("gap");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let no_limit = ["--rate-limit", "100000", "--rate-burst", "100000"];
    let one = start_gateway(&prefix, &no_limit).await;
    let gw_two = format!("{prefix}-two");
    let mut options = no_limit.to_vec();
    options.extend(["--gateway-id", &gw_two]);
    let two = start_gateway(&prefix, &options).await;
    let mut alice = Client::connect(&one).await;
    let mut bob = Client::connect(&two).await;
    alice.join("lobby", "alice").await;
    bob.join("lobby", "bob").await;

    // Bob's gateway loses its connection (and with it its exclusive queue) while alice
    // keeps talking on the other gateway.
    let name = format!("gateway {gw_two}");
    tokio::task::spawn_blocking(move || close_connection(&name))
        .await
        .unwrap();
    let total = 100;
    for n in 0..total {
        say(&mut alice, "lobby", &format!("gap-{n}"))
            .await
            .expect("acked");
    }
    let mut received = HashSet::new();
    let mut order = Vec::new();
    while received.len() < total {
        let text = bob.event("lobby", "message").await["text"]
            .as_str()
            .unwrap()
            .to_owned();
        order.push(text.clone());
        received.insert(text);
    }
    // Anything else that arrives shortly after would be a duplicate.
    let extra = tokio::time::timeout(Duration::from_secs(4), bob.event("lobby", "message")).await;
    report(&format!(
        "gateway lost its broker connection: sent={total} bob_received={} duplicates={} in_order={}",
        received.len(),
        order.len() - received.len() + usize::from(extra.is_ok()),
        order == (0..total).map(|n| format!("gap-{n}")).collect::<Vec<_>>(),
    ));
    assert!(extra.is_err(), "a duplicate arrived: {:?}", extra.ok());
    for service in [one, two, archiver] {
        service.stop().await;
    }
    broker.cleanup().await;
}

#[tokio::test]
async fn a_message_resent_after_a_broker_crash_is_posted_once() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("crash-resend");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chat.log");
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let logger = start_logger(&prefix, &log).await;
    let gw1 = start_gateway(&prefix, &["--publish-timeout-ms", "3000"]).await;
    let gw2 = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&gw1).await;
    alice.join("lobby", "alice").await;
    let mut bob = Client::connect(&gw2).await;
    bob.join("lobby", "bob").await;
    let id = uuid::Uuid::now_v7().to_string();
    let text = "said as the broker died";

    // Published, and the broker killed before anyone can be sure of the confirm.
    alice
        .send(json!({"type": "say", "room": "lobby", "text": text, "id": id, "ref": "m1"}))
        .await;
    let outage = BrokerOutage::begin(Outage::Crash).await;
    let first = alice
        .recv_until(|f| (f["type"] == "ack" || f["type"] == "error") && f["ref"] == "m1")
        .await;
    outage.end().await;
    for gateway in [&gw1, &gw2] {
        eventually(WAIT, "the gateway linked again", || async {
            (health(gateway).await.0 == 200).then_some(())
        })
        .await;
    }
    // Whatever the first answer was, the page resends until it gets an ack.
    let mut resends = 0;
    let ack = loop {
        resends += 1;
        let answer = alice
            .say_with_id("lobby", text, &id, &format!("r{resends}"))
            .await;
        if answer["type"] == "ack" {
            break answer;
        }
        assert!(resends < 20, "never acked: {answer}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(ack["id"], id.as_str());
    let archived_copies = eventually(WAIT, "the message archived", || async {
        let copies = archived(archiver.addr(), "lobby")
            .await
            .iter()
            .filter(|e| e["id"] == id.as_str())
            .count();
        (copies > 0).then_some(copies)
    })
    .await;
    let seen = |frames: &[Value]| {
        frames
            .iter()
            .filter(|f| f["type"] == "event" && f["event"]["id"] == id.as_str())
            .count()
    };
    // Everything bob receives for a while: the message (live or by gap repair) once.
    let bob_saw = seen(&bob.drain_for(Duration::from_secs(3)).await);
    let logged = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(text))
        .count();
    report(&format!(
        "resend after a broker crash: first answer {}, acked after {resends} resend(s); \
         archived={archived_copies} logged={logged} seen_on_other_gateway={bob_saw}",
        first["code"].as_str().unwrap_or("ack")
    ));
    assert_eq!((archived_copies, bob_saw), (1, 1));
    assert!(logged >= 1, "logged");
    for service in [gw1, gw2, archiver, logger] {
        service.stop().await;
    }
    Broker::connect(&prefix).await.cleanup().await;
}
