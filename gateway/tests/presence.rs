//! Presence and typing end to end against the real RabbitMQ: who is online spans gateways
//! through the transient `<prefix>.presence` exchange, a gateway killed without a word
//! expires, typing is relayed and expires, a foreign producer's garbage is dropped and
//! counted, a private room's presence reaches only its members, and a big room gets counts
//! instead of a join event per member. Short heartbeat, TTL, flush and grace settings keep
//! the waits short; nothing here asserts a duration.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chat_core::auth::{claims_for, mint};
use chat_core::testkit::{amqp_url, eventually, http_get, unique_prefix, Broker};
use chat_core::EventKind;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use serde_json::{json, Value};
use support::{start_gateway, Client, Process, Service, Spy, WAIT};

/// Fast presence: flush every 100 ms, heartbeat every 300 ms, a silent gateway forgotten
/// after 1.5 s, a leave told after 300 ms.
const FAST: &[&str] = &[
    "--presence-flush-ms",
    "100",
    "--presence-heartbeat-ms",
    "300",
    "--presence-ttl-ms",
    "1500",
    "--presence-grace-ms",
    "300",
    "--typing-ttl-ms",
    "1000",
];

/// An archiver, so that joins get their history (and `joined` is not preceded by
/// `history_unavailable`); dropped with the test.
struct Archive {
    service: Service,
    _dir: tempfile::TempDir,
}

async fn archive(prefix: &str) -> Archive {
    let dir = tempfile::tempdir().unwrap();
    let service = support::start_archiver(prefix, &dir.path().join("archive.db")).await;
    Archive { service, _dir: dir }
}

/// A gateway with the [`FAST`] settings, except those `extra` sets itself.
async fn gateway(prefix: &str, id: &str, extra: &[&str]) -> Service {
    let mut args = vec!["--gateway-id", id];
    for pair in FAST.chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    start_gateway(prefix, &args).await
}

/// A client's picture of a room's presence, built only from the frames it gets.
#[derive(Debug, Default)]
struct Seen {
    members: BTreeMap<String, u64>,
    count: Option<u64>,
}

impl Seen {
    /// Applies a `presence` or `presence_diff` frame of `room`; false for other frames.
    fn apply(&mut self, room: &str, frame: &Value) -> bool {
        if frame["room"] != room {
            return false;
        }
        let member = |m: &Value| {
            (
                m["user"].as_str().unwrap().to_owned(),
                m["connections"].as_u64().unwrap(),
            )
        };
        match frame["type"].as_str() {
            Some("presence") => {
                self.count = frame["count"].as_u64();
                self.members = frame["members"]
                    .as_array()
                    .map(|list| list.iter().map(member).collect())
                    .unwrap_or_default();
                true
            }
            Some("presence_diff") => {
                for m in frame["joins"].as_array().unwrap() {
                    let (user, n) = member(m);
                    self.members.insert(user, n);
                }
                for user in frame["leaves"].as_array().unwrap() {
                    self.members.remove(user.as_str().unwrap());
                }
                true
            }
            _ => false,
        }
    }

    fn users(&self) -> Vec<&str> {
        self.members.keys().map(String::as_str).collect()
    }
}

/// Reads `client`'s frames into `seen` until `done` holds (at most [`WAIT`]).
async fn watch_until(
    client: &mut Client,
    room: &str,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never became what was expected; last seen {seen:?}"
        );
        let frame = client
            .recv_until(|f| f["type"] == "presence" || f["type"] == "presence_diff")
            .await;
        seen.apply(room, &frame);
    }
}

/// Joins and returns what it saw: `joined` is followed at once by `presence`.
async fn join_seeing(client: &mut Client, room: &str, name: &str) -> Seen {
    client.join(room, name).await;
    let presence = client.recv().await;
    assert_eq!(
        presence["type"], "presence",
        "right after joined: {presence}"
    );
    let mut seen = Seen::default();
    assert!(seen.apply(room, &presence));
    seen
}

#[tokio::test]
async fn presence_spans_two_gateways_and_a_leave_is_told_after_the_grace() {
    let prefix = unique_prefix("presence");
    let broker = Broker::connect(&prefix).await;
    let archive = archive(&prefix).await;
    let one = gateway(&prefix, "gw-one", &[]).await;
    let two = gateway(&prefix, "gw-two", &[]).await;
    let mut alice = Client::connect(&one).await;
    let mut alice_again = Client::connect(&one).await;
    let mut bob = Client::connect(&two).await;

    let mut alice_seen = join_seeing(&mut alice, "lobby", "alice").await;
    join_seeing(&mut alice_again, "lobby", "alice").await;
    let mut bob_seen = join_seeing(&mut bob, "lobby", "bob").await;

    watch_until(&mut bob, "lobby", &mut bob_seen, |s| {
        s.members.get("alice") == Some(&2) && s.members.contains_key("bob")
    })
    .await;
    watch_until(&mut alice, "lobby", &mut alice_seen, |s| {
        s.users() == ["alice", "bob"]
    })
    .await;
    assert_eq!(alice_seen.members["alice"], 2, "two connections of alice");

    // Bob leaves for good: alice, on the other gateway, is told after the grace.
    bob.send(json!({"type": "leave", "room": "lobby"})).await;
    watch_until(&mut alice, "lobby", &mut alice_seen, |s| {
        s.users() == ["alice"]
    })
    .await;

    one.stop().await;
    two.stop().await;
    archive.service.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_gateway_killed_without_a_word_expires_from_presence() {
    let prefix = unique_prefix("presence-kill");
    let broker = Broker::connect(&prefix).await;
    let archive = archive(&prefix).await;
    let survivor = gateway(&prefix, "gw-survivor", &[]).await;
    // The same fast settings, as the environment variables of a child process.
    let mut settings: Vec<(String, String)> = FAST
        .chunks(2)
        .map(|pair| {
            let key = pair[0].trim_start_matches("--").replace('-', "_");
            (key.to_uppercase(), pair[1].to_owned())
        })
        .collect();
    settings.push(("CHAT_PREFIX".into(), prefix.clone()));
    settings.push(("GATEWAY_ID".into(), "gw-doomed".into()));
    settings.push(("AMQP_URL".into(), amqp_url()));
    let env: Vec<(&str, String)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let mut doomed = Process::start("gateway", &env, true).await;
    let doomed_service = Service::external(doomed.addr.unwrap()).await;
    let mut carol = Client::connect(&doomed_service).await;
    join_seeing(&mut carol, "lobby", "carol").await;
    let mut dave = Client::connect(&survivor).await;
    let mut seen = join_seeing(&mut dave, "lobby", "dave").await;
    watch_until(&mut dave, "lobby", &mut seen, |s| {
        s.users() == ["carol", "dave"]
    })
    .await;

    doomed.signal("KILL");
    doomed.wait().await;
    // No leave event, no goodbye: carol disappears when gw-doomed's state expires.
    watch_until(&mut dave, "lobby", &mut seen, |s| s.users() == ["dave"]).await;
    let (_, metrics) = http_get(survivor.addr(), "/metrics").await;
    assert!(metrics.contains("chat_presence_expired_total"), "{metrics}");

    survivor.stop().await;
    archive.service.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_gateway_stopped_cleanly_takes_its_members_out_of_presence_at_once() {
    let prefix = unique_prefix("presence-stop");
    let broker = Broker::connect(&prefix).await;
    let archive = archive(&prefix).await;
    // A TTL far beyond the test's patience: only the goodbye can remove carol in time.
    let long_ttl = ["--presence-ttl-ms", "600000"];
    let leaving = gateway(&prefix, "gw-leaving", &long_ttl).await;
    let staying = gateway(&prefix, "gw-staying", &long_ttl).await;
    let mut carol = Client::connect(&leaving).await;
    join_seeing(&mut carol, "lobby", "carol").await;
    let mut dave = Client::connect(&staying).await;
    let mut seen = join_seeing(&mut dave, "lobby", "dave").await;
    watch_until(&mut dave, "lobby", &mut seen, |s| {
        s.users() == ["carol", "dave"]
    })
    .await;

    leaving.stop().await;
    watch_until(&mut dave, "lobby", &mut seen, |s| s.users() == ["dave"]).await;

    staying.stop().await;
    archive.service.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn typing_is_relayed_across_gateways_never_published_as_an_event_and_expires() {
    let prefix = unique_prefix("typing");
    let broker = Broker::connect(&prefix).await;
    let archive = archive(&prefix).await;
    let spy = Spy::bind(&broker).await;
    let one = gateway(&prefix, "gw-one", &[]).await;
    let two = gateway(&prefix, "gw-two", &[]).await;
    let mut alice = Client::connect(&one).await;
    let mut bob = Client::connect(&two).await;
    alice.join("lobby", "alice").await;
    bob.join("lobby", "bob").await;
    // Both gateways know each other before the notice is sent.
    let mut seen = Seen::default();
    watch_until(&mut bob, "lobby", &mut seen, |s| {
        s.users() == ["alice", "bob"]
    })
    .await;

    alice
        .send(json!({"type": "typing", "room": "lobby", "state": "start"}))
        .await;
    let typing = bob
        .recv_until(|f| f["type"] == "typing" && f["users"] == json!(["alice"]))
        .await;
    assert_eq!(typing["room"], "lobby");
    assert_eq!(typing["ttl_ms"], 1000);
    alice
        .send(json!({"type": "typing", "room": "lobby", "state": "stop"}))
        .await;
    bob.recv_until(|f| f["type"] == "typing" && f["users"] == json!([]))
        .await;

    // A start that is never stopped expires by itself: the gateways send the empty list
    // when its time to live ends (clients also expire it on their own).
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the relay interval
    alice
        .send(json!({"type": "typing", "room": "lobby", "state": "start"}))
        .await;
    bob.recv_until(|f| f["type"] == "typing" && f["users"] == json!(["alice"]))
        .await;
    bob.recv_until(|f| f["type"] == "typing" && f["users"] == json!([]))
        .await;

    // Typing in a room not joined, or with a bad state, is refused.
    alice
        .send(json!({"type": "typing", "room": "elsewhere", "state": "start"}))
        .await;
    let refused = alice.recv_until(|f| f["type"] == "error").await;
    assert_eq!(refused["code"], "not_joined", "{refused}");
    alice
        .send(json!({"type": "typing", "room": "lobby", "state": "maybe", "ref": "t"}))
        .await;
    let refused = alice.recv_until(|f| f["type"] == "error").await;
    assert_eq!(refused["code"], "invalid_field", "{refused}");
    assert_eq!(refused["ref"], "t");

    // Only the two joins were published as events: typing never reaches the exchange
    // the logger and the archiver read.
    let published = spy.published(&broker).await;
    assert!(
        published.len() == 2 && published.iter().all(|e| e.kind == EventKind::Join),
        "{published:?}"
    );

    one.stop().await;
    two.stop().await;
    spy.close(&broker).await;
    archive.service.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_foreign_producers_bad_presence_message_is_dropped_and_counted() {
    let prefix = unique_prefix("presence-foreign");
    let broker = Broker::connect(&prefix).await;
    let archive = archive(&prefix).await;
    let one = gateway(&prefix, "gw-one", &[]).await;
    let mut alice = Client::connect(&one).await;
    let mut seen = join_seeing(&mut alice, "lobby", "alice").await;
    watch_until(&mut alice, "lobby", &mut seen, |s| s.users() == ["alice"]).await;

    let channel = broker.connection.create_channel().await.unwrap();
    let exchange = broker.topology.presence_exchange();
    for body in [
        &b"not json at all"[..],
        br#"{"v":1,"gateway":"evil","boot":"b","kind":"state","rooms":{"lobby":[{"user":"mallory","name":"m","connections":0}]}}"#,
        br#"{"v":1,"gateway":"evil","boot":"b","kind":"state","rooms":{"lobby":[{"user":"mallory","name":"m","connections":1,"admin":true}]}}"#,
    ] {
        channel
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    let metrics = eventually(WAIT, "the drops counted", || async {
        let (_, metrics) = http_get(one.addr(), "/metrics").await;
        (metrics.contains(r#"chat_presence_dropped_total{reason="malformed"} 2"#)
            && metrics.contains(r#"chat_presence_dropped_total{reason="invalid"} 1"#))
        .then_some(metrics)
    })
    .await;
    assert!(!metrics.is_empty());
    // Nothing changed: a message from a real gateway still gets through after them.
    let mut bob = Client::connect(&one).await;
    bob.join("lobby", "bob").await;
    watch_until(&mut alice, "lobby", &mut seen, |s| {
        s.users() == ["alice", "bob"]
    })
    .await;
    assert!(!seen.members.contains_key("mallory"));

    one.stop().await;
    archive.service.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_big_room_gets_counts_and_no_join_event_per_member() {
    let prefix = unique_prefix("presence-big");
    let broker = Broker::connect(&prefix).await;
    let archive = archive(&prefix).await;
    let one = gateway(&prefix, "gw-one", &["--presence-max-list", "2"]).await;
    let mut first = Client::connect(&one).await;
    let mut seen = join_seeing(&mut first, "hall", "u1").await;
    let mut others = Vec::new();
    for i in 2..=4 {
        let mut client = Client::connect(&one).await;
        client.join("hall", &format!("u{i}")).await;
        others.push(client);
    }
    watch_until(&mut first, "hall", &mut seen, |s| s.count == Some(4)).await;
    assert!(seen.members.is_empty(), "counts only: {seen:?}");
    // The fourth join went to the archive and the log like any event, but not to each
    // member: with more than 2 local members they learn it from presence.
    let frames = first.drain_for(Duration::from_millis(300)).await;
    assert!(
        !frames
            .iter()
            .any(|f| f["type"] == "event" && f["event"]["user"] == "u4"),
        "{frames:?}"
    );

    one.stop().await;
    archive.service.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn presence_of_a_private_room_reaches_only_its_members() {
    const SECRET: &str = "a-test-secret-of-at-least-32-bytes";
    let token = |sub: &str| {
        mint(
            SECRET,
            &claims_for(sub, Some(sub), Duration::from_secs(600)),
        )
        .unwrap()
    };
    let prefix = unique_prefix("presence-private");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = support::start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let auth = ["--auth-mode", "token", "--auth-secret", SECRET];
    let one = gateway(&prefix, "gw-one", &auth).await;
    let two = gateway(&prefix, "gw-two", &auth).await;
    let mut alice = Client::connect(&one).await;
    alice.authenticate(&token("alice")).await;
    let mut mallory = Client::connect(&two).await;
    mallory.authenticate(&token("mallory")).await;
    let created = alice
        .request(
            json!({"type": "create_room", "room": "board", "visibility": "private"}),
            "c1",
        )
        .await;
    assert_eq!(created["type"], "ack", "{created}");
    let mut seen = join_seeing(&mut alice, "board", "alice").await;
    watch_until(&mut alice, "board", &mut seen, |s| s.users() == ["alice"]).await;

    // Mallory is refused and, listening on the other gateway, hears nothing of the room.
    let refusal = mallory
        .request(json!({"type": "join", "room": "board"}), "j")
        .await;
    assert_eq!(refusal["code"], "forbidden", "{refusal}");
    alice
        .send(json!({"type": "typing", "room": "board", "state": "start"}))
        .await;
    let frames = mallory.drain_for(Duration::from_millis(500)).await;
    assert!(
        frames.iter().all(|f| f["room"] != "board"),
        "a non-member got {frames:?}"
    );

    one.stop().await;
    two.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}
