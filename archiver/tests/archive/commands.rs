//! The commands that read an archive: `history`, `rooms` and `search` print what they
//! should, and every command refuses an archive that does not exist.

use chat_core::{Event, EventKind};

use crate::helpers::{admin, archiver_command, message_at, Archived, Backend, TestDatabase};

on_both_backends! {
    async fn the_history_command_prints_a_room_in_the_log_format(backend) {
        let event = message_at("lobby", "two\nlines", "2026-11-28T15:03:15.123Z");
        let archive = Archived::new(backend, "cli", &[event]).await.stop().await;

        assert_eq!(
            archive.stdout(&["history", "lobby", "--limit", "20"]),
            "2026-11-28T15:03:15.123Z #lobby <~alice> two\\nlines\n"
        );
        let output = archive.command(&["history", "no room"]);
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("room must be"));
        // An empty room is not an error, but it is said: stdout stays empty for scripts.
        let empty = archive.command(&["history", "nobody-here"]);
        assert!(empty.status.success());
        assert!(empty.stdout.is_empty());
        assert!(String::from_utf8_lossy(&empty.stderr).contains("no events in room \"nobody-here\""));
    }
}

on_both_backends! {
    async fn history_since_a_time_or_an_event_prints_what_came_after_and_json_prints_events(backend) {
        let events: Vec<Event> = (0..5)
            .map(|n| {
                message_at(
                    "lobby",
                    &format!("m{n}"),
                    &format!("2026-11-28T15:0{n}:00.000Z"),
                )
            })
            .collect();
        let archive = Archived::new(backend, "since", &events).await.stop().await;
        let texts = |args: &[&str]| -> Vec<String> {
            archive
                .stdout(args)
                .lines()
                .map(|line| line.rsplit(' ').next().unwrap().to_owned())
                .collect()
        };

        // A time: the events at or after it, whatever its offset.
        for since in [
            "2026-11-28T15:02:00Z",
            "2026-11-28T15:02:00.000Z",
            "2026-11-28T16:02:00+01:00",
            "2026-11-28T15:01:59.9995Z",
        ] {
            assert_eq!(
                texts(&["history", "lobby", "--since", since]),
                ["m2", "m3", "m4"],
                "--since {since}"
            );
        }
        for since in ["2026-11-28T15:02:00.001Z", "2026-11-28T15:02:00.0005Z"] {
            assert_eq!(
                texts(&["history", "lobby", "--since", since]),
                ["m3", "m4"],
                "--since {since}"
            );
        }
        assert_eq!(
            texts(&[
                "history",
                "lobby",
                "--since",
                "2026-11-28T15:01:00Z",
                "--limit",
                "2"
            ]),
            ["m1", "m2"],
            "the first events from --since on"
        );
        assert!(texts(&["history", "lobby", "--since", "2027-01-01T00:00:00Z"]).is_empty());
        // An event id: the events after it.
        assert_eq!(
            texts(&["history", "lobby", "--since", &events[1].id]),
            ["m2", "m3", "m4"]
        );
        assert!(texts(&["history", "lobby", "--since", &events[4].id]).is_empty());
        let unknown = archive.command(&["history", "lobby", "--since", "2026-11-28"]);
        assert_eq!(unknown.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&unknown.stderr).contains("neither an RFC 3339 time"),
            "{}",
            String::from_utf8_lossy(&unknown.stderr)
        );
        let both = archive.command(&["history", "lobby", "--since", "x", "--before", "y"]);
        assert_eq!(
            both.status.code(),
            Some(2),
            "--since and --before exclude each other"
        );

        // --json: one event per line, exactly as archived.
        let json = archive.stdout(&["history", "lobby", "--since", &events[2].id, "--json"]);
        let printed: Vec<Event> = json
            .lines()
            .map(|line| Event::decode(line.as_bytes()).unwrap())
            .collect();
        assert_eq!(printed, events[3..]);
        let latest = archive.stdout(&["history", "lobby", "--limit", "1", "--json"]);
        assert_eq!(latest, format!("{}\n", events[4].to_json()));
    }
}

on_both_backends! {
    async fn the_rooms_command_lists_rooms_in_aligned_columns_or_as_json(backend) {
        let events = [
            message_at("lobby", "hi", "2026-11-28T15:00:00.000Z"),
            message_at("a-much-longer-room", "hello", "2026-11-28T15:01:00.000Z"),
            message_at("lobby", "again", "2026-11-28T15:02:00.000Z"),
        ];
        let mut join = Event::new(EventKind::Join, "lobby", "bob", None, "gw-test");
        join.at = "2026-11-28T15:03:00.000Z".parse().unwrap();
        let mut events = events.to_vec();
        events.extend((0..9).map(|n| message_at("lobby", &format!("{n}"), "2026-11-28T15:04:00.000Z")));
        events.push(join);
        let archive = Archived::new(backend, "rooms", &events).await.stop().await;

        assert_eq!(
            archive.stdout(&["rooms"]),
            "ROOM                EVENTS  LAST ACTIVITY\n\
             lobby                   12  2026-11-28T15:03:00.000Z\n\
             a-much-longer-room       1  2026-11-28T15:01:00.000Z\n"
        );
        let json = archive.stdout(&["rooms", "--json"]);
        let rooms: Vec<serde_json::Value> = json
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(rooms.len(), 2);
        assert_eq!(rooms[0]["room"], "lobby");
        assert_eq!(rooms[0]["events"], 12);
        assert_eq!(rooms[0]["last_id"], events[12].id.as_str());
        assert_eq!(rooms[1]["first_at"], "2026-11-28T15:01:00.000Z");
    }
}

on_both_backends! {
    async fn the_search_command_prints_matching_messages_newest_first(backend) {
        let events = [
            message_at("lobby", "tea at five", "2026-11-28T15:00:00.000Z"),
            message_at("kitchen", "more tea", "2026-11-28T15:01:00.000Z"),
            message_at("lobby", "coffee", "2026-11-28T15:02:00.000Z"),
        ];
        let archive = Archived::new(backend, "search-cli", &events).await.stop().await;

        assert_eq!(
            archive.stdout(&["search", "tea"]),
            "2026-11-28T15:01:00.000Z #kitchen <~alice> more tea\n\
             2026-11-28T15:00:00.000Z #lobby <~alice> tea at five\n"
        );
        assert_eq!(
            archive.stdout(&["search", "TEA", "five", "--room", "lobby", "--json"]),
            format!("{}\n", events[0].to_json())
        );
        assert_eq!(
            archive
                .stdout(&["search", "tea", "--limit", "1"])
                .lines()
                .count(),
            1
        );
        assert_eq!(archive.stdout(&["search", "\"", "NEAR("]), "");
        let empty = archive.command(&["search", " "]);
        assert_eq!(empty.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&empty.stderr).contains("at least one word"));
    }
}

on_both_backends! {
    async fn every_command_refuses_an_archive_that_does_not_exist(backend) {
        let missing = TestDatabase::unused(backend, "missing");
        for args in [
            &["history", "lobby"][..],
            &["rooms"],
            &["search", "tea"],
            &["export", "lobby", "--format", "jsonl"],
        ] {
            let output = archiver_command(args, &missing.url);
            assert_eq!(output.status.code(), Some(1), "{args:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains("no archive at"), "{args:?}: {stderr}");
        }
        assert!(!exists(&missing).await, "no archive was created");
    }
}

#[tokio::test]
async fn the_commands_refuse_a_postgres_database_that_holds_no_archive() {
    // A database never migrated may be someone else's: the commands do not make it an
    // archive. (An empty SQLite file cannot be told from a new archive.)
    let empty = TestDatabase::new(Backend::Postgres, "empty").await;
    let output = archiver_command(&["rooms"], &empty.url);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds no archive"), "{stderr}");
}

/// Whether anything exists where `db` points.
async fn exists(db: &TestDatabase) -> bool {
    match db.url.strip_prefix("sqlite://") {
        Some(path) => std::path::Path::new(path).exists(),
        None => {
            let name = db.url.rsplit('/').next().unwrap();
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)",
            )
            .bind(name)
            .fetch_one(&mut admin().await)
            .await
            .unwrap()
        }
    }
}
