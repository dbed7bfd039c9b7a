//! The message projection: edits, deletions and reactions as history shows them, deletion
//! that really removes the text (history, search, export, the stored event), and
//! `archiver rebuild`, which recomputes the projections from the stored events to the same
//! bytes, whatever order the broker delivered the events in.

use chat_core::event::{ReactOp, Role};
use chat_core::testkit::{http_get, unique_prefix, Broker};
use chat_core::{Event, EventKind, Visibility};
use serde_json::Value;
use sqlx::Connection;

use crate::helpers::{archiver_command, encode, start, Backend, Running, TestDatabase};

fn said(user: &str, text: &str, ms: i64) -> Event {
    let mut event = Event::new(
        EventKind::Message,
        "lobby",
        user,
        Some(text.to_owned()),
        "gw-test",
    );
    event.at = at(ms);
    event
}

fn at(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
}

fn action(kind: EventKind, user: &str, target: &Event, ms: i64) -> Event {
    let mut event = Event::new(kind, &target.room, user, None, "gw-test");
    event.target = Some(target.id.clone());
    event.at = at(ms);
    event
}

fn edit(user: &str, target: &Event, text: &str, ms: i64) -> Event {
    let mut event = action(EventKind::Edit, user, target, ms);
    event.text = Some(text.to_owned());
    event
}

fn react(user: &str, target: &Event, key: &str, op: ReactOp, ms: i64) -> Event {
    let mut event = action(EventKind::React, user, target, ms);
    event.key = Some(key.to_owned());
    event.op = Some(op);
    event
}

/// Publishes `events` and waits until the archive holds `count` events of the lobby, with
/// a marker published last so that repeats (which add nothing) are known to be processed.
async fn deliver(broker: &Broker, archiver: &Running, events: &[Event], count: i64) {
    for event in events {
        broker.publish_event(event).await;
    }
    let marker = said("marker", &format!("marker {count}"), 900_000 + count);
    broker.publish_event(&marker).await;
    archiver.wait_for_count("lobby", count + 1).await;
}

/// The history API's raw body for the lobby: the bytes a client gets.
async fn history_body(archiver: &Running) -> String {
    let (status, body) = http_get(archiver.addr, "/api/rooms/lobby/events?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The stored `text` of every event, straight from the database.
async fn stored_texts(backend: Backend, url: &str) -> Vec<(String, Option<String>)> {
    let sql = "SELECT id, text FROM events ORDER BY seq";
    match backend {
        Backend::Sqlite => {
            let mut db = sqlx::SqliteConnection::connect(url).await.unwrap();
            let rows = sqlx::query_as(sql).fetch_all(&mut db).await.unwrap();
            db.close().await.unwrap();
            rows
        }
        Backend::Postgres => {
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            let rows = sqlx::query_as(sql).fetch_all(&mut db).await.unwrap();
            db.close().await.unwrap();
            rows
        }
    }
}

on_both_backends! {
    async fn history_shows_the_current_text_the_edit_time_and_the_reactions(backend) {
        let prefix = unique_prefix("projected");
        let broker = Broker::connect(&prefix).await;
        let db = TestDatabase::new(backend, &prefix).await;
        let archiver = start(&prefix, &db.url).await;
        let hello = said("alice", "helo", 0);
        let events = [
            hello.clone(),
            edit("alice", &hello, "hello", 10),
            edit("mallory", &hello, "pwned", 20),
            react("bob", &hello, "👍", ReactOp::Add, 30),
            react("carol", &hello, "👍", ReactOp::Add, 31),
            react("carol", &hello, "🎉", ReactOp::Add, 32),
            react("carol", &hello, "🎉", ReactOp::Remove, 33),
        ];
        deliver(&broker, &archiver, &events, events.len() as i64).await;

        let (_, page) = archiver.get("/api/rooms/lobby/events").await;
        let message = &page["events"][0];
        assert_eq!(message["id"], hello.id.as_str());
        assert_eq!(message["text"], "hello", "mallory's edit changes nothing: {message}");
        assert_eq!(message["edited_at"], chat_core::event::format_time(&at(10)));
        assert_eq!(
            message["reactions"],
            serde_json::json!([{"key": "👍", "count": 2, "users": ["bob", "carol"]}])
        );
        assert!(message.get("deleted").is_none(), "{message}");
        // The actions themselves are events of the room, in archive order.
        assert_eq!(page["events"][1]["type"], "edit");
        assert_eq!(page["events"][1]["target"], hello.id.as_str());
        // The history RPC answers the same.
        let store = archiver::store::Store::open_existing(&db.url).await.unwrap();
        let reply = archiver::rpc::answer(
            &store,
            &chat_core::history::HistoryRequest { room: "lobby".into(), limit: 50, since: None },
        )
        .await;
        store.close().await;
        assert_eq!(reply.events[0].text.as_deref(), Some("hello"));
        assert_eq!(reply.events[0].reactions.len(), 1);

        archiver.stop().await;
        broker.cleanup().await;
    }
}

on_both_backends! {
    async fn a_delete_removes_the_text_from_history_search_export_and_the_stored_event(backend) {
        let prefix = unique_prefix("deleted");
        let broker = Broker::connect(&prefix).await;
        let db = TestDatabase::new(backend, &prefix).await;
        let archiver = start(&prefix, &db.url).await;
        let secret = said("alice", "the launch code is zebra", 0);
        let kept = said("bob", "zebra crossing ahead", 1);
        let events = [
            secret.clone(),
            kept.clone(),
            edit("alice", &secret, "the launch code is zebra two", 10),
            react("bob", &secret, "👍", ReactOp::Add, 11),
            action(EventKind::Delete, "alice", &secret, 20),
        ];
        deliver(&broker, &archiver, &events, events.len() as i64).await;

        let body = history_body(&archiver).await;
        assert!(!body.contains("launch code"), "history: {body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        let tombstone = &page["events"][0];
        assert_eq!(tombstone["id"], secret.id.as_str());
        assert_eq!(tombstone["deleted"], true);
        assert_eq!(tombstone["user"], "alice");
        assert!(tombstone.get("text").is_none() && tombstone.get("reactions").is_none());
        assert_eq!(page["events"][2]["deleted"], true, "the edit lost its text too");
        let (_, found) = archiver.get(&format!("/api/search?q={}", encode("zebra"))).await;
        let ids: Vec<&str> = found["events"].as_array().unwrap().iter()
            .map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [kept.id.as_str()], "search finds only what was not deleted");
        let (_, found) = archiver.get("/api/search?q=launch").await;
        assert_eq!(found["events"], serde_json::json!([]));
        let texts = stored_texts(backend, &db.url).await;
        assert!(texts.iter().all(|(_, t)| !t.as_deref().unwrap_or_default().contains("launch")),
            "stored: {texts:?}");
        assert!(texts.iter().any(|(id, t)| *id == secret.id && t.is_none()), "envelope kept");

        archiver.stop().await;
        broker.cleanup().await;
        for format in ["jsonl", "csv"] {
            let output = archiver_command(&["export", "lobby", "--format", format], &db.url);
            assert!(output.status.success());
            let out = String::from_utf8(output.stdout).unwrap();
            assert!(!out.contains("launch"), "{format}: {out}");
            assert!(out.contains(&secret.id), "{format}: the envelope stays");
        }
    }
}

/// A conversation with edits (some by the wrong user), deletions (by the author, by the
/// owner, by a moderator, by someone without the right), reactions added and taken back,
/// and actions on deleted messages; every event with its own time.
fn conversation() -> Vec<Event> {
    let mut events = Vec::new();
    let mut owner =
        Event::new(EventKind::RoomCreated, "lobby", "olga", None, "gw-test").verified("Olga");
    owner.visibility = Some(Visibility::Public);
    owner.at = at(0);
    events.push(owner);
    let mut grant =
        Event::new(EventKind::RoleGranted, "lobby", "olga", None, "gw-test").verified("Olga");
    grant.member = Some("mod".into());
    grant.role = Some(Role::Moderator);
    grant.at = at(1);
    events.push(grant);
    let users = ["alice", "bob", "carol"];
    let keys = ["👍", "🎉", "❤️"];
    let verified = |mut e: Event| {
        let name = e.user.clone();
        e = e.verified(&name);
        e
    };
    let mut ms = 10;
    let mut messages = Vec::new();
    for n in 0..40 {
        ms += 10;
        let message = verified(said(users[n % 3], &format!("message {n} words"), ms));
        messages.push(message.clone());
        events.push(message);
    }
    for (n, message) in messages.iter().enumerate() {
        ms += 3;
        let author = message.user.clone();
        let other = users[(n + 1) % 3];
        if n % 2 == 0 {
            events.push(verified(edit(&author, message, &format!("edited {n}"), ms)));
        }
        if n % 5 == 0 {
            events.push(verified(edit(other, message, "not yours", ms + 1)));
        }
        for (k, key) in keys.iter().enumerate().take(n % 4) {
            events.push(verified(react(
                users[k],
                message,
                key,
                ReactOp::Add,
                ms + 1,
            )));
        }
        if n % 6 == 1 {
            events.push(verified(react(
                users[0],
                message,
                keys[0],
                ReactOp::Remove,
                ms + 2,
            )));
        }
        let deleter = match n % 9 {
            0 => Some(author.as_str()),
            3 => Some("olga"),
            5 => Some("mod"),
            7 => Some(other),
            _ => None,
        };
        if let Some(deleter) = deleter {
            events.push(verified(action(
                EventKind::Delete,
                deleter,
                message,
                ms + 2,
            )));
            events.push(verified(edit(&author, message, "too late", ms + 3)));
            events.push(verified(react(other, message, "👍", ReactOp::Add, ms + 3)));
        }
    }
    events
}

/// A fixed shuffle (a linear congruential generator), so a failure can be replayed.
fn shuffled(events: &[Event], seed: u64) -> Vec<Event> {
    let mut out = events.to_vec();
    let mut state = seed;
    for i in (1..out.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.swap(i, (state >> 33) as usize % (i + 1));
    }
    out
}

/// The history's events sorted by id: comparable across archives that stored them in
/// different orders.
fn by_id(body: &str) -> Vec<Value> {
    let page: Value = serde_json::from_str(body).unwrap();
    let mut events = page["events"].as_array().unwrap().clone();
    events.retain(|e| !e["text"].as_str().unwrap_or_default().starts_with("marker"));
    events.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    events
}

on_both_backends! {
    async fn a_rebuild_gives_the_same_history_byte_for_byte_and_replays_change_nothing(backend) {
        let events = conversation();
        // Roles go through the membership log: deliver them first, as they happened.
        let (membership, chat): (Vec<Event>, Vec<Event>) =
            events.iter().cloned().partition(|e| e.kind.is_membership());
        let count = chat.len() as i64;
        let mut archives = Vec::new();
        for seed in [1, 2] {
            let prefix = unique_prefix("rebuild");
            let broker = Broker::connect(&prefix).await;
            let db = TestDatabase::new(backend, &prefix).await;
            let archiver = start(&prefix, &db.url).await;
            for event in &membership {
                broker.publish_event(event).await;
            }
            deliver(&broker, &archiver, &shuffled(&chat, seed), count).await;
            let incremental = history_body(&archiver).await;
            assert!(incremental.contains(r#""deleted":true"#), "{incremental}");
            assert!(incremental.contains(r#""reactions":["#), "{incremental}");
            archiver.stop().await;

            for _ in 0..2 {
                let output = archiver_command(&["rebuild"], &db.url);
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                assert!(String::from_utf8_lossy(&output.stdout).contains("rebuilt from"));
            }
            let archiver = start(&prefix, &db.url).await;
            let rebuilt = history_body(&archiver).await;
            assert_eq!(rebuilt, incremental, "rebuilt twice, byte for byte");
            // Every event delivered again (another replay): nothing changes.
            deliver(&broker, &archiver, &shuffled(&chat, seed + 10), count + 1).await;
            let replayed = history_body(&archiver).await;
            assert_eq!(by_id(&replayed), by_id(&incremental), "a replay changes nothing");
            archiver.stop().await;
            broker.cleanup().await;
            archives.push((incremental, db));
        }
        // Two delivery orders, one projection: the same messages, edits and reactions.
        assert_eq!(by_id(&archives[0].0), by_id(&archives[1].0));
    }
}
