//! Storage and the HTTP history API: idempotent storage, paging with its errors, and a
//! storage failure that is retried.

use std::time::Duration;

use chat_core::testkit::{unique_prefix, Broker};
use chat_core::Event;
use serde_json::Value;
use sqlx::Connection;

use crate::helpers::{message, start, Backend, TestDatabase};

on_both_backends! {
    async fn an_event_delivered_twice_is_archived_once(backend) {
        let prefix = unique_prefix("dup");
        let broker = Broker::connect(&prefix).await;
        let db = TestDatabase::new(backend, &prefix).await;
        let archiver = start(&prefix, &db.url).await;

        let event = message("lobby", "only once");
        broker.publish_event(&event).await;
        broker.publish_event(&event).await;
        let marker = message("lobby", "marker");
        broker.publish_event(&marker).await;
        archiver.wait_for_count("lobby", 2).await;

        let (_, page) = archiver.get("/api/rooms/lobby/events").await;
        let ids: Vec<&str> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [event.id.as_str(), marker.id.as_str()]);
        assert_eq!(
            page["events"][0],
            serde_json::to_value(&event).unwrap(),
            "stored as published"
        );

        archiver.stop().await;
        broker.cleanup().await;
    }
}

on_both_backends! {
    async fn the_http_api_lists_rooms_and_pages_back_through_a_room(backend) {
        let prefix = unique_prefix("api");
        let broker = Broker::connect(&prefix).await;
        let db = TestDatabase::new(backend, &prefix).await;
        let archiver = start(&prefix, &db.url).await;
        let events: Vec<Event> = (0..7).map(|n| message("lobby", &format!("m{n}"))).collect();
        for event in &events {
            broker.publish_event(event).await;
        }
        broker.publish_event(&message("kitchen", "tea?")).await;
        archiver.wait_for_count("lobby", 7).await;
        archiver.wait_for_count("kitchen", 1).await;

        let (status, rooms) = archiver.get("/api/rooms").await;
        assert_eq!(status, 200);
        let lobby = rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["room"] == "lobby")
            .unwrap();
        assert_eq!(lobby["last_id"], events[6].id.as_str());

        let texts = |page: &Value| -> Vec<String> {
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["text"].as_str().unwrap().to_owned())
                .collect()
        };
        let (status, page) = archiver.get("/api/rooms/lobby/events?limit=3").await;
        assert_eq!(status, 200);
        assert_eq!(texts(&page), ["m4", "m5", "m6"]);
        let before = page["before"].as_str().unwrap().to_owned();
        let (_, page) = archiver
            .get(&format!("/api/rooms/lobby/events?limit=3&before={before}"))
            .await;
        assert_eq!(texts(&page), ["m1", "m2", "m3"]);
        let (_, page) = archiver
            .get(&format!(
                "/api/rooms/lobby/events?limit=3&before={}",
                events[1].id
            ))
            .await;
        assert_eq!(texts(&page), ["m0"]);
        let (_, page) = archiver.get("/api/rooms/empty/events").await;
        assert_eq!(page["events"], Value::Array(vec![]));

        for (path, status, code) in [
            ("/api/rooms/lobby/events?limit=0", 400, "invalid_limit"),
            ("/api/rooms/lobby/events?limit=1001", 400, "invalid_limit"),
            ("/api/rooms/lobby/events?limit=ten", 400, "invalid_limit"),
            ("/api/rooms/lobby/events?before=nope", 400, "unknown_event"),
            ("/api/rooms/lobby/events?colour=red", 400, "invalid_query"),
            ("/api/rooms/bad%20room/events", 400, "invalid_room"),
            ("/api/nothing", 404, "not_found"),
        ] {
            let (got, body) = archiver.get(path).await;
            assert_eq!(
                (got, body["error"]["code"].as_str()),
                (status, Some(code)),
                "{path}: {body}"
            );
        }

        archiver.stop().await;
        broker.cleanup().await;
    }
}

on_both_backends! {
    async fn a_storage_failure_is_retried_and_loses_nothing(backend) {
        let prefix = unique_prefix("storage");
        let broker = Broker::connect(&prefix).await;
        let db = TestDatabase::new(backend, &prefix).await;
        let archiver = start(&prefix, &db.url).await;

        // Another connection holds a lock on the events longer than the archiver waits for one
        // (SQLite's 5 s busy timeout, PostgreSQL's 5 s lock_timeout), so its inserts fail until
        // the lock goes away.
        let locker = Locker::lock(backend, &archiver.database_url).await;
        let events: Vec<Event> = (0..5)
            .map(|n| message("lobby", &format!("blocked-{n}")))
            .collect();
        for event in &events {
            broker.publish_event(event).await;
        }
        tokio::time::sleep(Duration::from_millis(6500)).await;
        let (_, rooms) = archiver.get("/api/rooms").await;
        assert_eq!(
            rooms["rooms"],
            Value::Array(vec![]),
            "nothing stored while locked"
        );
        locker.release().await;

        archiver.wait_for_count("lobby", 5).await;
        let (_, page) = archiver.get("/api/rooms/lobby/events").await;
        let ids: Vec<&str> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, want);
        archiver.stop().await;
        broker.cleanup().await;
    }
}

on_both_backends! {
    async fn a_batch_is_stored_in_order_once_per_id_with_the_room_summary_counting_new_rows(backend) {
        let db = TestDatabase::new(backend, "batch").await;
        let store = archiver::Store::open(&db.url).await.unwrap();
        let first = message("kitchen", r#"quotes " and \ backslash, café, 🍕"#);
        let join = Event::new(
            chat_core::EventKind::Join,
            "kitchen",
            "bob",
            None,
            "gw-test",
        );
        let third = message("hall", "elsewhere");
        // A repeat inside the batch and, next time, one already archived: each stored once.
        let inserted = store
            .insert(&[first.clone(), join.clone(), first.clone(), third.clone()])
            .await
            .unwrap();
        assert_eq!(inserted, 3);
        let last = message("kitchen", "last");
        let inserted = store.insert(&[join.clone(), last.clone()]).await.unwrap();
        assert_eq!(inserted, 1);

        let page = store.page("kitchen", 10, None).await.unwrap();
        assert_eq!(
            page,
            [first, join, last.clone()],
            "arrival order, stored as given"
        );
        let rooms = store.rooms().await.unwrap();
        let kitchen = rooms.iter().find(|r| r.room == "kitchen").unwrap();
        assert_eq!(
            (kitchen.events, kitchen.last_id.as_str()),
            (3, last.id.as_str())
        );
        let hall = rooms.iter().find(|r| r.room == "hall").unwrap();
        assert_eq!((hall.events, hall.last_id.as_str()), (1, third.id.as_str()));
    }
}

/// A transaction of another connection that holds the archive's write lock.
enum Locker {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Locker {
    async fn lock(backend: Backend, database_url: &str) -> Self {
        match backend {
            Backend::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(database_url).await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                Self::Sqlite(connection)
            }
            Backend::Postgres => {
                let mut connection = sqlx::PgConnection::connect(database_url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut connection).await.unwrap();
                sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                Self::Postgres(connection)
            }
        }
    }

    async fn release(self) {
        match self {
            Self::Sqlite(mut connection) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .unwrap();
            }
            Self::Postgres(mut connection) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .unwrap();
            }
        }
    }
}
