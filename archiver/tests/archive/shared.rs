//! Several archivers sharing one PostgreSQL database, consuming the same durable queue as
//! competing consumers: every event is stored once, whichever archiver got it (and however
//! often), and every archiver's HTTP API answers the same.

use std::collections::HashSet;

use chat_core::testkit::{unique_prefix, Broker};
use chat_core::Event;
use serde_json::Value;
use sqlx::Connection;

use crate::helpers::{ids, message, report, start, Backend, Running, TestDatabase};

const ROOMS: [&str; 3] = ["lobby", "kitchen", "hall"];

#[tokio::test]
async fn two_archivers_on_one_postgres_database_store_every_event_once_and_answer_the_same() {
    let prefix = unique_prefix("shared");
    let broker = Broker::connect(&prefix).await;
    // Started together on a database that does not exist yet: both create it (one wins)
    // and migrate it (sqlx serialises that) at once.
    let db = TestDatabase::unused(Backend::Postgres, "shared");
    let (first, second) = tokio::join!(start(&prefix, &db.url), start(&prefix, &db.url));
    let queue = broker.topology.subscriber_queue("archiver");
    assert_eq!(broker.consumers(&queue).await, 2, "both consume {queue}");

    let events: Vec<Event> = (0..300)
        .map(|n| message(ROOMS[n % ROOMS.len()], &format!("m{n}")))
        .collect();
    for (n, event) in events.iter().enumerate() {
        broker.publish_event(event).await;
        // Every tenth event again, as a republish after a lost confirm would.
        if n % 10 == 0 {
            broker.publish_event(event).await;
        }
    }
    for room in ROOMS {
        let count = events.iter().filter(|e| e.room == room).count() as i64;
        first.wait_for_count(room, count).await;
        second.wait_for_count(room, count).await;
    }

    let mut archive = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM events")
            .fetch_one(&mut archive)
            .await
            .unwrap();
    archive.close().await.unwrap();
    let want: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    let mut got = HashSet::new();
    for room in ROOMS {
        let (_, page) = first
            .get(&format!("/api/rooms/{room}/events?limit=1000"))
            .await;
        got.extend(ids(&page["events"]));
    }
    report(&format!(
        "two archivers on one PostgreSQL archive: consumers=2 published={} deliveries={} stored={rows} distinct={distinct} duplicates={} missing={}",
        events.len(),
        events.len() + events.len().div_ceil(10),
        rows - distinct,
        want.difference(&got).count()
    ));
    assert_eq!((rows, distinct), (300, 300), "every event stored once");
    assert_eq!(got, want);
    assert_eq!(answers(&first).await, answers(&second).await);

    // One archiver stops; the other takes the whole queue, and a third started later on
    // the same database answers the same.
    first.stop().await;
    let late = message("lobby", "after the first archiver stopped");
    broker.publish_event(&late).await;
    let lobby = events.iter().filter(|e| e.room == "lobby").count() as i64 + 1;
    second.wait_for_count("lobby", lobby).await;
    let third = start(&prefix, &db.url).await;
    assert_eq!(answers(&second).await, answers(&third).await);
    let (_, found) = third.get("/api/search?q=stopped").await;
    assert_eq!(ids(&found["events"]), std::slice::from_ref(&late.id));

    second.stop().await;
    third.stop().await;
    broker.cleanup().await;
}

/// What an archiver's HTTP API says: the rooms, each room's history and a search.
async fn answers(archiver: &Running) -> Vec<Value> {
    let mut answers = vec![archiver.get("/api/rooms").await.1];
    for room in ROOMS {
        let path = format!("/api/rooms/{room}/events?limit=1000");
        answers.push(archiver.get(&path).await.1);
    }
    answers.push(archiver.get("/api/search?q=m7&limit=200").await.1);
    answers
}
