//! Edits, deletions and reactions end to end, against the real RabbitMQ and SQLite: the
//! gateway checks each against the archive before publishing (author, owner, moderator,
//! deleted, same room), refuses with `unavailable` when the archive cannot answer, clients
//! on every gateway get the events live, and history shows the archive's projection.

mod support;

use std::time::Duration;

use chat_core::auth::{claims_for, mint};
use chat_core::testkit::{eventually, unique_prefix, Broker};
use chat_core::EventKind;
use serde_json::{json, Value};
use support::{archived, start_archiver, start_gateway, Client, Service, Spy};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes";
const WAIT: Duration = Duration::from_secs(10);

/// Connects to a token-mode gateway as `sub`.
async fn signed_in(gateway: &Service, sub: &str) -> Client {
    let mut client = Client::connect(gateway).await;
    let token = mint(SECRET, &claims_for(sub, None, Duration::from_secs(600))).unwrap();
    client.authenticate(&token).await;
    client
}

/// Says `text` and returns the new message's id.
async fn said(client: &mut Client, room: &str, text: &str, r#ref: &str) -> String {
    let ack = client.say(room, text, r#ref).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["id"].as_str().unwrap().to_owned()
}

fn edit(room: &str, target: &str, text: &str) -> Value {
    json!({"type": "edit", "room": room, "target": target, "text": text})
}

fn delete(room: &str, target: &str) -> Value {
    json!({"type": "delete", "room": room, "target": target})
}

fn react(room: &str, target: &str, key: &str, op: &str) -> Value {
    json!({"type": "react", "room": room, "target": target, "key": key, "op": op})
}

/// The archived message `id` of `room`, as history shows it.
async fn in_history(archiver: &Service, room: &str, id: &str) -> Value {
    archived(archiver.addr(), room)
        .await
        .into_iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not in the history of {room}"))
}

#[tokio::test]
async fn an_edit_by_someone_else_is_refused_and_nothing_is_published() {
    let prefix = unique_prefix("edit-other");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let gateway = start_gateway(&prefix, &["--gateway-id", "gw-edit"]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    let mut bob = Client::connect(&gateway).await;
    bob.join("lobby", "bob").await;
    let id = said(&mut alice, "lobby", "hello", "s").await;
    let spy = Spy::bind(&broker).await;

    let refused = bob.request(edit("lobby", &id, "pwned"), "e").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = bob.request(delete("lobby", &id), "d").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // The author's own edit goes through and reaches bob live.
    let ack = alice.request(edit("lobby", &id, "hello, world"), "e").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let live = bob.event("lobby", "edit").await;
    assert_eq!(live["target"], id.as_str());
    assert_eq!(live["text"], "hello, world");
    assert_eq!(live["id"], ack["id"]);

    let published = spy.published(&broker).await;
    let edits: Vec<_> = published
        .iter()
        .filter(|e| e.kind != EventKind::Join)
        .collect();
    assert_eq!(edits.len(), 1, "only alice's edit was published: {edits:?}");
    assert_eq!(edits[0].user, "alice");
    let (archiver_ref, id_ref) = (&archiver, &id);
    eventually(WAIT, "the edit in history", || async move {
        let message = in_history(archiver_ref, "lobby", id_ref).await;
        (message["text"] == "hello, world" && message["edited_at"].is_string()).then_some(())
    })
    .await;

    spy.close(&broker).await;
    gateway.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn live_clients_on_the_other_gateway_get_edits_deletions_and_reactions() {
    let prefix = unique_prefix("edit-live");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let one = start_gateway(&prefix, &["--gateway-id", "gw-one"]).await;
    let two = start_gateway(&prefix, &["--gateway-id", "gw-two"]).await;
    let mut alice = Client::connect(&one).await;
    alice.join("lobby", "alice").await;
    let mut bob = Client::connect(&two).await;
    bob.join("lobby", "bob").await;
    let id = said(&mut alice, "lobby", "typo here", "s").await;

    let ack = bob.request(react("lobby", &id, "👍", "add"), "r").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let live = alice.event("lobby", "react").await;
    assert_eq!(
        (&live["user"], &live["key"], &live["op"]),
        (&json!("bob"), &json!("👍"), &json!("add"))
    );
    alice.request(edit("lobby", &id, "no typo"), "e").await;
    let live = bob.event("lobby", "edit").await;
    assert_eq!(live["text"], "no typo");
    let ack = alice
        .request(
            json!({"type": "delete", "room": "lobby", "target": id, "reason": "never mind"}),
            "d",
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let live = bob.event("lobby", "delete").await;
    assert_eq!(live["reason"], "never mind");

    // Nothing acts on a deleted message any more (once the archive has the deletion).
    let (archiver_ref, id_ref) = (&archiver, &id);
    eventually(WAIT, "the tombstone", || async move {
        let message = in_history(archiver_ref, "lobby", id_ref).await;
        (message["deleted"] == true).then_some(message)
    })
    .await;
    let refused = alice.request(edit("lobby", &id, "back"), "x").await;
    assert_eq!(refused["code"], "deleted", "{refused}");
    let refused = bob.request(react("lobby", &id, "🎉", "add"), "x").await;
    assert_eq!(refused["code"], "deleted", "{refused}");
    let refused = alice.request(delete("lobby", &id), "x").await;
    assert_eq!(refused["code"], "deleted", "{refused}");
    // A fresh join's history shows the tombstone: no text, no reactions.
    let mut carol = Client::connect(&two).await;
    let joined = carol.join("lobby", "carol").await;
    let message = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(message["deleted"], true, "{message}");
    assert!(message.get("text").is_none(), "{message}");
    assert!(message.get("reactions").is_none(), "{message}");

    one.stop().await;
    two.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn an_unknown_target_or_one_in_another_room_gets_a_clear_error() {
    let prefix = unique_prefix("edit-target");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    alice.join("den", "alice").await;
    let in_den = said(&mut alice, "den", "over here", "s").await;
    let addr = archiver.addr();
    let join_id = eventually(WAIT, "the join archived", || async move {
        archived(addr, "lobby")
            .await
            .into_iter()
            .find(|e| e["type"] == "join")
            .map(|e| e["id"].as_str().unwrap().to_owned())
    })
    .await;

    for (frame, what) in [
        (edit("lobby", &in_den, "x"), "a message of another room"),
        (
            react("lobby", "no-such-message", "👍", "add"),
            "an unknown id",
        ),
        (delete("lobby", &join_id), "a join, not a message"),
    ] {
        let refused = alice.request(frame, "t").await;
        assert_eq!(refused["code"], "unknown_target", "{what}: {refused}");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("has no message"),
            "{refused}"
        );
    }
    let refused = alice.request(edit("hall", &in_den, "x"), "n").await;
    assert_eq!(refused["code"], "not_joined", "{refused}");
    let refused = alice
        .request(react("den", &in_den, "lol", "add"), "k")
        .await;
    assert_eq!(refused["code"], "invalid_field", "{refused}");

    gateway.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_archive_unreachable_gives_unavailable_and_publishes_nothing() {
    let prefix = unique_prefix("edit-noarchive");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &["--history-timeout-ms", "400"]).await;
    let mut alice = Client::connect(&gateway).await;
    alice.join("lobby", "alice").await;
    let id = said(&mut alice, "lobby", "no archiver to ask", "s").await;
    let spy = Spy::bind(&broker).await;

    for frame in [
        edit("lobby", &id, "changed"),
        delete("lobby", &id),
        react("lobby", &id, "👍", "add"),
    ] {
        let refused = alice.request(frame, "u").await;
        assert_eq!(refused["code"], "unavailable", "{refused}");
        assert!(
            refused["message"].as_str().unwrap().contains("nothing was"),
            "{refused}"
        );
    }
    let published = spy.published(&broker).await;
    assert!(published.is_empty(), "nothing published: {published:?}");

    spy.close(&broker).await;
    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_owner_or_a_moderator_deletes_anyones_message_and_nobody_else() {
    let prefix = unique_prefix("edit-moderator");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let gateway = start_gateway(&prefix, &["--auth-mode", "token", "--auth-secret", SECRET]).await;
    let mut alice = signed_in(&gateway, "alice").await;
    let created = alice
        .request(
            json!({"type": "create_room", "room": "square", "visibility": "public"}),
            "c",
        )
        .await;
    assert_eq!(created["type"], "ack", "{created}");
    alice.join("square", "alice").await;
    let mut bob = signed_in(&gateway, "bob").await;
    bob.join("square", "bob").await;
    let mut carol = signed_in(&gateway, "carol").await;
    carol.join("square", "carol").await;
    let first = said(&mut bob, "square", "first", "1").await;
    let second = said(&mut bob, "square", "second", "2").await;

    let refused = carol.request(delete("square", &first), "d").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = carol
        .request(
            json!({"type": "grant_role", "room": "square", "user": "carol", "role": "moderator"}),
            "g",
        )
        .await;
    assert_eq!(
        refused["code"], "forbidden",
        "only the owner grants: {refused}"
    );
    let granted = alice
        .request(
            json!({"type": "grant_role", "room": "square", "user": "carol", "role": "moderator"}),
            "g",
        )
        .await;
    assert_eq!(granted["type"], "ack", "{granted}");
    let ack = carol.request(delete("square", &first), "d").await;
    assert_eq!(ack["type"], "ack", "a moderator deletes: {ack}");
    let ack = alice.request(delete("square", &second), "d").await;
    assert_eq!(ack["type"], "ack", "the owner deletes: {ack}");
    // Even the owner does not edit someone else's message.
    let third = said(&mut bob, "square", "third", "3").await;
    let refused = alice.request(edit("square", &third, "x"), "e").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    let addr = archiver.addr();
    eventually(WAIT, "both tombstones", || async move {
        let history = archived(addr, "square").await;
        let gone = history
            .iter()
            .filter(|e| e["deleted"] == true && e["type"] == "message")
            .count();
        (gone == 2).then_some(())
    })
    .await;

    gateway.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}
