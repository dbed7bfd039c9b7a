//! Cluster fault tests: the whole system on a real three-node RabbitMQ cluster on this
//! machine (`scripts/cluster.sh`: nodes chat-c1..3@localhost on 127.0.0.1:5701..5703, their
//! own data and Erlang cookie; the machine's default node on 5672 is never touched), with
//! every service given the three nodes in `AMQP_URL`. The faults are real: `kill -9` of a
//! node's Erlang VM, and graceful stops of one node after another. Each scenario prints its
//! counts and appends them to the reliability report, like `faults.rs`.
//!
//! Starting a cluster takes 30 to 70 s, so the scenarios run one after another in one test,
//! on one cluster, which is stopped (and its data deleted) at the end, even on failure.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chat_core::testkit::{unique_prefix, Broker};
use serde_json::Value;
use support::{archived, report, start_archiver, start_gateway, start_logger, Client, Service};

/// How long a cluster-wide condition may take: a node restart and a quorum election fit.
const SLOW: Duration = Duration::from_secs(60);

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

/// Runs `scripts/cluster.sh ARGS` and returns its stdout; panics with its output on failure.
fn cluster(args: &[&str]) -> String {
    let out = Command::new(cluster_script())
        .args(args)
        .output()
        .expect("scripts/cluster.sh runs");
    assert!(
        out.status.success(),
        "scripts/cluster.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn cluster_async(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        cluster(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

/// The running cluster; stopped, with its data deleted, when dropped.
struct Cluster {
    url: String,
}

impl Cluster {
    fn start() -> Self {
        // A cluster left by an aborted run is stopped first.
        let _ = Command::new(cluster_script()).arg("stop").output();
        cluster(&["start"]);
        Self {
            url: cluster(&["url"]).trim().to_owned(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(cluster_script()).arg("stop").output();
    }
}

/// The node (1..3) whose AMQP port serves the broker connection named `name`, from
/// `rabbitmqctl list_connections port client_properties` on a live node.
fn node_of_connection(name: &str) -> Option<u8> {
    for n in ["1", "2", "3"] {
        let out = Command::new(cluster_script())
            .args(["ctl", n, "list_connections", "port", "client_properties"])
            .output()
            .ok()?;
        if !out.status.success() {
            continue;
        }
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        return listing
            .lines()
            .find(|l| l.contains(&format!("\"{name}\"")))
            .and_then(|l| l.split('\t').next())
            .and_then(|port| port.trim().parse::<u16>().ok())
            .map(|port| (port - 5700) as u8);
    }
    None
}

/// The node (1..3) that leads the quorum queue `queue`.
fn leader_of(queue: &str) -> Option<u8> {
    for n in ["1", "2", "3"] {
        let out = Command::new(cluster_script())
            .args(["ctl", n, "list_queues", "name", "leader"])
            .output()
            .ok()?;
        if !out.status.success() {
            continue;
        }
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        return listing
            .lines()
            .find(|l| l.split('\t').next() == Some(queue))
            .and_then(|l| l.split('\t').nth(1))
            .and_then(|leader| leader.trim().strip_prefix("chat-c"))
            .and_then(|rest| rest.chars().next())
            .and_then(|c| c.to_digit(10))
            .map(|d| d as u8);
    }
    None
}

/// Says `text`; the ack's id, or `None` if the gateway answered with an error.
async fn say(client: &mut Client, room: &str, text: &str) -> Option<String> {
    let answer = client.say(room, text, text).await;
    (answer["type"] == "ack").then(|| answer["id"].as_str().unwrap().to_owned())
}

/// Archived messages by id, with how often each appears.
fn counts(events: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for event in events.iter().filter(|e| e["type"] == "message") {
        *counts
            .entry(event["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

/// The services of one scenario, all on the cluster: an archiver, a logger and two
/// gateways with alice on the first and bob on the second, both in `lobby`.
struct System {
    prefix: String,
    dir: tempfile::TempDir,
    archiver: Service,
    logger: Service,
    one: Service,
    two: Service,
    alice: Client,
    bob: Client,
}

impl System {
    async fn start(name: &str) -> Self {
        let prefix = unique_prefix(name);
        let dir = tempfile::tempdir().unwrap();
        let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
        let logger = start_logger(&prefix, &dir.path().join("chat.log")).await;
        let (one_id, two_id) = (format!("{prefix}-one"), format!("{prefix}-two"));
        let no_limit = ["--rate-limit", "100000", "--rate-burst", "100000"];
        let one = start_gateway(
            &prefix,
            &[&no_limit[..], &["--gateway-id", &one_id]].concat(),
        )
        .await;
        let two = start_gateway(
            &prefix,
            &[&no_limit[..], &["--gateway-id", &two_id]].concat(),
        )
        .await;
        let mut alice = Client::connect(&one).await;
        let mut bob = Client::connect(&two).await;
        alice.join("lobby", "alice").await;
        bob.join("lobby", "bob").await;
        Self {
            prefix,
            dir,
            archiver,
            logger,
            one,
            two,
            alice,
            bob,
        }
    }

    /// Waits until every id in `acked` is archived, or [`SLOW`] has passed (then it prints
    /// the broker's view of the queues); returns the archive's counts.
    async fn archived(&self, acked: &[String]) -> HashMap<String, usize> {
        let want: HashSet<&String> = acked.iter().collect();
        let deadline = Instant::now() + SLOW;
        loop {
            let stored = counts(&archived(self.archiver.addr(), "lobby").await);
            if want.iter().all(|id| stored.contains_key(*id)) || Instant::now() > deadline {
                if Instant::now() > deadline {
                    let prefix = self.prefix.clone();
                    let queues = tokio::task::spawn_blocking(move || {
                        cluster(&[
                            "ctl",
                            "1",
                            "list_queues",
                            "name",
                            "leader",
                            "messages_ready",
                            "messages_unacknowledged",
                            "consumers",
                        ])
                        .lines()
                        .filter(|l| l.contains(&prefix))
                        .collect::<Vec<_>>()
                        .join("\n")
                    })
                    .await
                    .unwrap();
                    eprintln!("not all archived after {SLOW:?}; the queues:\n{queues}");
                }
                return stored;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every text in `said` is in the chat log, or [`SLOW`] has passed; returns
    /// how many of them are missing from it.
    async fn log_missing(&self, said: &[String]) -> usize {
        let log = self.dir.path().join("chat.log");
        let deadline = Instant::now() + SLOW;
        loop {
            let text = tokio::fs::read_to_string(&log).await.unwrap_or_default();
            let lines: HashSet<&str> = text
                .lines()
                // `<~alice>`: an open-mode guest (chat-core logline).
                .filter_map(|l| l.split("alice> ").nth(1))
                .collect();
            let missing = said.iter().filter(|t| !lines.contains(t.as_str())).count();
            if missing == 0 || Instant::now() > deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        drop(self.alice);
        drop(self.bob);
        for service in [self.one, self.two, self.archiver, self.logger] {
            service.stop().await;
        }
        Broker::connect(&self.prefix).await.cleanup().await;
    }
}

/// Says numbered messages as fast as they are acked until told to stop; returns the acked
/// ids and texts, and how many says were refused (the broker briefly unavailable).
async fn talk(
    mut client: Client,
    tag: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Client, Vec<(String, String)>, usize) {
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut n = 0;
    while !*stop.borrow() {
        let text = format!("{tag}-{n}");
        n += 1;
        match say(&mut client, "lobby", &text).await {
            Some(id) => acked.push((id, text)),
            None => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (client, acked, refused)
}

/// Kill -9 of the node that alice's gateway is connected to, mid-chat.
async fn a_gateways_node_is_killed() {
    let mut system = System::start("node-kill").await;
    let mut acked = Vec::new();
    let mut said = Vec::new();
    for n in 0..20 {
        let text = format!("before-{n}");
        acked.push(say(&mut system.alice, "lobby", &text).await.expect("acked"));
        said.push(text);
    }
    let connection = format!("gateway {}-one", system.prefix);
    let node = tokio::task::spawn_blocking(move || node_of_connection(&connection))
        .await
        .unwrap()
        .expect("the gateway's node");
    let killed = Instant::now();
    cluster_async(vec!["kill".into(), node.to_string()]).await;

    // Clients stay connected; a say every 0.5 s until one is acked and bob sees it.
    let mut probe = 0;
    let mut refused = 0;
    let flow_back = loop {
        probe += 1;
        let text = format!("probe-{probe}");
        if let Some(id) = say(&mut system.alice, "lobby", &text).await {
            acked.push(id);
            said.push(text.clone());
            let arrived = tokio::time::timeout(
                Duration::from_millis(500),
                system.bob.recv_until(|f| {
                    f["type"] == "event" && f["event"]["text"].as_str() == Some(text.as_str())
                }),
            )
            .await;
            if arrived.is_ok() {
                break killed.elapsed();
            }
        } else {
            refused += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(killed.elapsed() < SLOW, "no flow {SLOW:?} after the kill");
    };
    for n in 0..20 {
        let text = format!("after-{n}");
        acked.push(say(&mut system.alice, "lobby", &text).await.expect("acked"));
        said.push(text);
    }
    let stored = system.archived(&acked).await;
    let missing = acked.iter().filter(|id| !stored.contains_key(*id)).count();
    let duplicates: usize = stored.values().map(|n| n - 1).sum();
    let log_missing = system.log_missing(&said).await;
    report(&format!(
        "cluster: kill -9 of the gateway's node (chat-c{node}): acked={} archived={} missing={missing} duplicates={duplicates} log_missing={log_missing} refused_during={refused} flow_back_after_kill_ms={}",
        acked.len(),
        stored.len(),
        flow_back.as_millis()
    ));
    assert_eq!((missing, duplicates, log_missing), (0, 0, 0));
    system.stop().await;
    cluster_async(vec!["start-node".into(), node.to_string()]).await;
}

/// Kill -9 of the node that leads the archiver's quorum queue, under steady chat.
async fn the_archiver_queues_leader_is_killed() {
    let system = System::start("leader-kill").await;
    let queue = format!("{}.archiver", system.prefix);
    let leader = {
        let queue = queue.clone();
        tokio::task::spawn_blocking(move || leader_of(&queue))
            .await
            .unwrap()
            .expect("the queue's leader")
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let System {
        prefix,
        dir,
        archiver,
        logger,
        one,
        two,
        alice,
        bob,
    } = system;
    let talker = tokio::spawn(talk(alice, "steady", stopped));
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster_async(vec!["kill".into(), leader.to_string()]).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.send_replace(true);
    let (alice, acked, refused) = talker.await.unwrap();
    let system = System {
        prefix,
        dir,
        archiver,
        logger,
        one,
        two,
        alice,
        bob,
    };
    let ids: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    let texts: Vec<String> = acked.iter().map(|(_, t)| t.clone()).collect();
    let stored = system.archived(&ids).await;
    let missing = ids.iter().filter(|id| !stored.contains_key(*id)).count();
    let duplicates: usize = stored.values().map(|n| n - 1).sum();
    let log_missing = system.log_missing(&texts).await;
    let new_leader = tokio::task::spawn_blocking(move || leader_of(&queue))
        .await
        .unwrap();
    report(&format!(
        "cluster: kill -9 of the archiver queue's leader (chat-c{leader}, then chat-c{}): acked={} archived={} missing={missing} duplicates={duplicates} log_missing={log_missing} refused_during={refused}",
        new_leader.map_or("?".to_owned(), |n| n.to_string()),
        ids.len(),
        stored.len(),
    ));
    assert_eq!((missing, duplicates, log_missing), (0, 0, 0));
    system.stop().await;
    cluster_async(vec!["start-node".into(), leader.to_string()]).await;
}

/// Each node stopped gracefully and started again, one after another, under steady chat.
async fn the_nodes_restart_one_after_another() {
    let system = System::start("rolling").await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let System {
        prefix,
        dir,
        archiver,
        logger,
        one,
        two,
        alice,
        bob,
    } = system;
    let talker = tokio::spawn(talk(alice, "rolling", stopped));
    let started = Instant::now();
    for n in ["1", "2", "3"] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster_async(vec!["stop-node".into(), n.into()]).await;
        cluster_async(vec!["start-node".into(), n.into()]).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send_replace(true);
    let (alice, acked, refused) = talker.await.unwrap();
    let took = started.elapsed();
    let system = System {
        prefix,
        dir,
        archiver,
        logger,
        one,
        two,
        alice,
        bob,
    };
    let ids: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    let texts: Vec<String> = acked.iter().map(|(_, t)| t.clone()).collect();
    let stored = system.archived(&ids).await;
    let missing = ids.iter().filter(|id| !stored.contains_key(*id)).count();
    let duplicates: usize = stored.values().map(|n| n - 1).sum();
    let log_missing = system.log_missing(&texts).await;
    report(&format!(
        "cluster: rolling restart of the three nodes under steady chat ({} s): acked={} archived={} missing={missing} duplicates={duplicates} log_missing={log_missing} refused_during={refused}",
        took.as_secs(),
        ids.len(),
        stored.len(),
    ));
    assert_eq!((missing, duplicates, log_missing), (0, 0, 0));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_rides_out_node_crashes_and_a_rolling_restart_of_a_three_node_cluster() {
    if std::env::var_os("RUST_LOG").is_some() {
        // The services' logs, to see a failure's cause: `RUST_LOG=info cargo test …`.
        chat_core::telemetry::init();
    }
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    // Every helper (services, raw broker access) connects to `AMQP_URL`: the cluster's
    // three nodes. This test binary runs nothing else.
    std::env::set_var("AMQP_URL", &cluster.url);
    a_gateways_node_is_killed().await;
    the_archiver_queues_leader_is_killed().await;
    the_nodes_restart_one_after_another().await;
    drop(cluster);
}
