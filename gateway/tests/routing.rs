//! Routing by room (`ROUTE_BY_ROOM`, on by default), end to end against the real RabbitMQ
//! and SQLite: a gateway takes from the broker only the events of the rooms it has members
//! in (counted by its own `chat_events_consumed_total`, so the gateways run as separate
//! processes), a join into a room newly routed to its gateway still gets every message
//! once and in order while the room is busy, a room's binding goes with its last local
//! member, membership events reach every gateway whatever rooms it serves, and joins that
//! take a history reply kept from a moment before miss nothing (`HISTORY_REUSE_MS`).

mod support;

use std::time::Duration;

use chat_core::auth::{claims_for, mint};
use chat_core::testkit::{eventually, http_get, unique_prefix, Broker};
use serde_json::{json, Value};
use support::{start_archiver, start_gateway, Client, Process, Service, WAIT};

/// A gateway as a child process of its own, so that its metrics are its own.
async fn gateway_process(prefix: &str, id: &str, env: &[(&str, &str)]) -> (Process, Service) {
    let mut vars = vec![
        ("CHAT_PREFIX", prefix.to_owned()),
        ("GATEWAY_ID", id.to_owned()),
    ];
    vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let process = Process::start("gateway", &vars, true).await;
    let service = Service::external(process.addr.unwrap()).await;
    (process, service)
}

/// The value of the gateway's metric line that starts with `series` (0 if absent).
async fn counter(gateway: &Service, series: &str) -> u64 {
    let (status, metrics) = http_get(gateway.addr(), "/metrics").await;
    assert_eq!(status, 200);
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .map_or(0, |l| {
            l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
        })
}

/// The gateway's `chat_events_consumed_total`: deliveries it took from its queue.
async fn consumed(gateway: &Service) -> u64 {
    counter(gateway, "chat_events_consumed_total").await
}

/// Waits until the gateway has consumed exactly `expected` deliveries (and stays there
/// for a moment), failing if it consumes more.
async fn consumed_exactly(gateway: &Service, expected: u64, what: &str) {
    eventually(WAIT, what, || async {
        (consumed(gateway).await >= expected).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(consumed(gateway).await, expected, "{what}");
}

#[tokio::test]
async fn a_gateway_with_no_member_in_a_room_receives_none_of_its_events() {
    let prefix = unique_prefix("routed");
    let broker = Broker::connect(&prefix).await;
    let (_a, one) = gateway_process(&prefix, "gw-one", &[]).await;
    let (_b, two) = gateway_process(&prefix, "gw-two", &[]).await;
    // As before routing: its queue gets every event.
    let (_c, all) = gateway_process(&prefix, "gw-all", &[("ROUTE_BY_ROOM", "false")]).await;

    let mut alice = Client::connect(&one).await;
    alice.join("busy", "alice").await;
    let mut bob = Client::connect(&two).await;
    bob.join("quiet", "bob").await;
    let mut carol = Client::connect(&all).await;
    carol.join("quiet", "carol").await;
    // The join events: alice's reaches gw-one and gw-all; bob's and carol's gw-two and gw-all.
    consumed_exactly(&one, 1, "gw-one consumed alice's join").await;
    consumed_exactly(&two, 2, "gw-two consumed bob's and carol's joins").await;
    consumed_exactly(&all, 3, "gw-all consumed every join").await;

    for i in 0..20 {
        let ack = alice
            .say("busy", &format!("busy {i}"), &format!("b{i}"))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let ack = bob.say("quiet", "hello", "q").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(carol.event("quiet", "message").await["text"], "hello");

    consumed_exactly(&all, 3 + 21, "the unrouted gateway consumed every message").await;
    consumed_exactly(&one, 1 + 20, "gw-one consumed its room's 20 messages only").await;
    consumed_exactly(
        &two,
        2 + 1,
        "gw-two consumed none of the busy room's events",
    )
    .await;
    support::report(&format!(
        "routing by room: consumed gw-one={} gw-two={} unrouted={} (20 messages in a room on \
         gw-one, 1 in a room on gw-two and the unrouted gateway)",
        consumed(&one).await,
        consumed(&two).await,
        consumed(&all).await
    ));
    broker.cleanup().await;
}

/// The message texts of a `joined` history, oldest first.
fn history_texts(joined: &Value) -> Vec<String> {
    joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_join_racing_a_burst_of_messages_gets_each_message_once_and_in_order() {
    const MESSAGES: usize = 300;
    let prefix = unique_prefix("race");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let no_limit = ["--rate-limit", "100000", "--rate-burst", "100000"];
    let one = start_gateway(&prefix, &no_limit).await;
    // Histories long enough to hold the whole burst, so that every message is owed.
    let two = start_gateway(&prefix, &["--history-limit", "1000"]).await;

    // Three rounds, each in a room gw-two has never served: its join binds the room while
    // alice's burst is under way there.
    for round in 0..3 {
        let room = format!("race-{round}");
        let mut alice = Client::connect(&one).await;
        alice.join(&room, "alice").await;
        let sender = {
            let room = room.clone();
            tokio::spawn(async move {
                for i in 0..MESSAGES {
                    let text = format!("m{i:03}");
                    alice
                        .send(json!({"type": "say", "room": room, "text": text, "ref": text}))
                        .await;
                    if i % 20 == 19 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                let mut acked = 0;
                while acked < MESSAGES {
                    let frame = alice.recv().await;
                    if frame["type"] == "error" {
                        panic!("alice's message refused: {frame}");
                    }
                    if frame["type"] == "ack" {
                        acked += 1;
                    }
                }
            })
        };
        // Into the middle of the burst.
        tokio::time::sleep(Duration::from_millis(40 + 30 * round)).await;
        let mut bob = Client::connect(&two).await;
        let joined = bob.join(&room, "bob").await;
        let mut got = history_texts(&joined);
        let from_history = got.len();
        while got.len() < MESSAGES {
            let frame = tokio::time::timeout(WAIT, bob.recv())
                .await
                .unwrap_or_else(|_| panic!("round {round}: bob got {} of {MESSAGES}", got.len()));
            if frame["type"] == "event" && frame["event"]["type"] == "message" {
                got.push(frame["event"]["text"].as_str().unwrap().to_owned());
            }
        }
        sender.await.unwrap();
        let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i:03}")).collect();
        assert_eq!(
            got, expected,
            "round {round}: history ({from_history}) then live, each message once, in order"
        );
        // Nothing more arrives: no repeat after the last one.
        no_more_messages(
            &mut bob,
            Duration::from_millis(300),
            &format!("round {round}"),
        )
        .await;
        support::report(&format!(
            "join racing a burst (round {round}): {MESSAGES} messages, {from_history} from \
             the history, the rest live, none missing or repeated"
        ));
    }
    one.stop().await;
    two.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}

/// The gateway's `chat_history_asks_total` for `role` (asked, shared, reused, again).
async fn history_asks(gateway: &Service, role: &str) -> u64 {
    counter(
        gateway,
        &format!("chat_history_asks_total{{role=\"{role}\"}}"),
    )
    .await
}

/// Joins `room` and collects its messages, history then live, until it has `count`.
async fn messages_seen(client: &mut Client, room: &str, name: &str, count: usize) -> Vec<String> {
    let joined = client.join(room, name).await;
    let mut got = history_texts(&joined);
    while got.len() < count {
        let frame = tokio::time::timeout(WAIT, client.recv())
            .await
            .unwrap_or_else(|_| panic!("{name} got {} of {count}: {got:?}", got.len()));
        if frame["type"] == "event" && frame["event"]["type"] == "message" {
            got.push(frame["event"]["text"].as_str().unwrap().to_owned());
        }
    }
    no_more_messages(client, Duration::from_millis(200), name).await;
    got
}

/// Fails if a message event reaches `client` within `window`: a repeat of one it had.
async fn no_more_messages(client: &mut Client, window: Duration, who: &str) {
    let extra: Vec<Value> = client
        .drain_for(window)
        .await
        .into_iter()
        .filter(|f| f["type"] == "event" && f["event"]["type"] == "message")
        .collect();
    assert!(extra.is_empty(), "{who}: repeats {extra:?}");
}

#[tokio::test]
async fn joins_a_moment_apart_share_a_history_reply_and_each_still_gets_every_message_once() {
    let prefix = unique_prefix("reuse");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let (_one, one) = gateway_process(
        &prefix,
        "gw-one",
        &[("HISTORY_LIMIT", "1000"), ("HISTORY_REUSE_MS", "60000")],
    )
    .await;
    let two = start_gateway(
        &prefix,
        &["--rate-limit", "100000", "--rate-burst", "100000"],
    )
    .await;
    let mut alice = Client::connect(&two).await;
    alice.join("hall", "alice").await;
    let mut said = Vec::new();
    for i in 0..10 {
        let text = format!("m{i:03}");
        assert_eq!(alice.say("hall", &text, &text).await["type"], "ack");
        said.push(text);
    }
    eventually(WAIT, "the archive has the first messages", || async {
        (support::archived(archiver.addr(), "hall").await.len() >= 11).then_some(())
    })
    .await;

    // Bob's join asks; each of the next joins, with more said in between, may take his
    // reply (kept a minute here), and must still see every message once and in order.
    let mut members = Vec::new();
    for (n, name) in ["bob", "carol", "dave", "erin"].into_iter().enumerate() {
        let mut client = Client::connect(&one).await;
        assert_eq!(
            messages_seen(&mut client, "hall", name, said.len()).await,
            said,
            "{name}"
        );
        members.push(client);
        for i in 0..5 {
            let text = format!("m{:03}", 10 + 5 * n + i);
            assert_eq!(alice.say("hall", &text, &text).await["type"], "ack");
            said.push(text);
        }
        for member in &mut members {
            member
                .recv_until(|f| f["event"]["text"] == said.last().unwrap().as_str())
                .await;
        }
    }
    let reused = history_asks(&one, "reused").await;
    assert!(
        reused >= 1,
        "no join took a kept reply (asked {})",
        history_asks(&one, "asked").await
    );

    // Everyone leaves gw-one: the room is unbound, and what is said meanwhile never reaches
    // it. The next join must not take the reply kept from before: it would lack those (the
    // unbind forgets it, and the new binding's mark is past its last event anyway).
    drop(members);
    // gw-two's binding for alice stays; gw-one's goes.
    eventually(WAIT, "the room's binding on gw-one removed", || async {
        (room_bindings(&prefix)
            .iter()
            .filter(|k| *k == "hall")
            .count()
            == 1)
            .then_some(())
    })
    .await;
    for i in 0..5 {
        let text = format!("away{i}");
        assert_eq!(alice.say("hall", &text, &text).await["type"], "ack");
        said.push(text);
    }
    let mut fred = Client::connect(&one).await;
    assert_eq!(
        messages_seen(&mut fred, "hall", "fred", said.len()).await,
        said
    );
    support::report(&format!(
        "history reuse: {} messages, 5 joins on one gateway, {reused} took a kept reply, \
         none missed or repeated a message, before and after the room was unbound",
        said.len()
    ));
    two.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}

/// The routing keys by which `<prefix>.rooms` routes to queues, from `rabbitmqctl`.
fn room_bindings(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_bindings",
            "-q",
            "--no-table-headers",
            "source_name",
            "destination_kind",
            "routing_key",
        ])
        .output()
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl list_bindings failed");
    let source = format!("{prefix}.rooms");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            (fields.len() == 3 && fields[0] == source && fields[1] == "queue")
                .then(|| fields[2].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_rooms_binding_goes_with_its_last_local_member() {
    let prefix = unique_prefix("unbind");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &[]).await;
    // The membership binding (empty key) is there from the start.
    assert_eq!(room_bindings(&prefix), [""]);

    let mut bob = Client::connect(&gateway).await;
    bob.join("den", "bob").await;
    let mut dan = Client::connect(&gateway).await;
    dan.join("den", "dan").await;
    let mut bindings = room_bindings(&prefix);
    bindings.sort();
    assert_eq!(bindings, ["", "den"], "bound once for two members");

    bob.send(json!({"type": "leave", "room": "den", "ref": "l"}))
        .await;
    bob.recv_until(|f| f["type"] == "left" && f["ref"] == "l")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bindings = room_bindings(&prefix);
    bindings.sort();
    assert_eq!(bindings, ["", "den"], "dan is still there");

    // The last member goes by closing its connection.
    drop(dan);
    eventually(WAIT, "the room's binding removed", || async {
        (room_bindings(&prefix) == [""]).then_some(())
    })
    .await;

    // And it comes back with the next member.
    let mut erin = Client::connect(&gateway).await;
    erin.join("den", "erin").await;
    let mut bindings = room_bindings(&prefix);
    bindings.sort();
    assert_eq!(bindings, ["", "den"]);
    let said = erin.say("den", "back", "e").await;
    assert_eq!(said["type"], "ack");
    assert_eq!(erin.event("den", "message").await["text"], "back");
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn membership_events_reach_every_gateway_whatever_rooms_it_serves() {
    const SECRET: &str = "a-test-secret-of-at-least-32-bytes";
    let token = |sub: &str| {
        mint(
            SECRET,
            &claims_for(sub, Some(sub), Duration::from_secs(600)),
        )
        .unwrap()
    };
    let prefix = unique_prefix("membership");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let token_mode = ["--auth-mode", "token", "--auth-secret", SECRET];
    let (_one, one) = gateway_process(
        &prefix,
        "gw-one",
        &[("AUTH_MODE", "token"), ("AUTH_SECRET", SECRET)],
    )
    .await;
    let two = start_gateway(&prefix, &token_mode).await;

    let mut alice = Client::connect(&one).await;
    alice.authenticate(&token("alice")).await;
    // Bob is on gw-two, which has no member in any room.
    let mut bob = Client::connect(&two).await;
    bob.authenticate(&token("bob")).await;

    let created = alice
        .request(
            json!({"type": "create_room", "room": "club", "visibility": "private"}),
            "c",
        )
        .await;
    assert_eq!(created["type"], "ack", "{created}");
    let added = alice
        .request(
            json!({"type": "add_member", "room": "club", "user": "bob"}),
            "a",
        )
        .await;
    assert_eq!(added["type"], "ack", "{added}");

    // gw-two learns both from its queue (it replayed the archive before they existed):
    // bob is let in once the events have reached it, never refused for another reason.
    let mut joined = None;
    for attempt in 0..100 {
        let r#ref = format!("j{attempt}");
        bob.send(json!({"type": "join", "room": "club", "ref": r#ref}))
            .await;
        let answer = bob
            .recv_until(|f| {
                f["ref"] == r#ref.as_str() && (f["type"] == "joined" || f["type"] == "error")
            })
            .await;
        if answer["type"] == "joined" {
            joined = Some(answer);
            break;
        }
        assert_eq!(answer["code"], "forbidden", "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined = joined.expect("bob let into the private room on gw-two");
    assert_eq!(joined["private"], true, "{joined}");

    // The removal reaches gw-two too: bob is told and taken out of the room.
    let removed = alice
        .request(
            json!({"type": "remove_member", "room": "club", "user": "bob"}),
            "r",
        )
        .await;
    assert_eq!(removed["type"], "ack", "{removed}");
    let notice = bob.recv_until(|f| f["type"] == "removed").await;
    assert_eq!(notice["room"], "club");
    // gw-one, with alice in no room at all, took the three membership events and nothing
    // of the room itself (bob's join).
    consumed_exactly(&one, 3, "gw-one consumed the membership events only").await;
    two.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}
