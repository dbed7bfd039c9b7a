//! Private rooms in the archive: the access projection the archiver folds from the
//! membership events equals the one folded in memory by the same rules, and in token mode
//! the HTTP API asks for a token (401) and shows a private room to its members only (403,
//! and absent from the room list and from search results, for everyone else); the read
//! commands (`history`, `rooms`, `search`, `export`) follow the same rules.

use chat_core::access::Access;
use chat_core::auth::{claims_for, mint};
use chat_core::testkit::{http_get_with, unique_prefix, Broker};
use chat_core::{Event, EventKind, Role, Visibility};
use serde_json::Value;

use crate::helpers::{archiver_command, message, start_with, Running, TestDatabase};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

fn created(room: &str, by: &str, visibility: Visibility) -> Event {
    let mut e = Event::new(EventKind::RoomCreated, room, by, None, "gw-test").verified(by);
    e.visibility = Some(visibility);
    e
}

fn membership(kind: EventKind, room: &str, by: &str, member: &str) -> Event {
    let mut e = Event::new(kind, room, by, None, "gw-test").verified(by);
    e.member = Some(member.to_owned());
    e
}

/// A history of membership events that exercises every rule, refused events included.
fn membership_history() -> Vec<Event> {
    let mut guest = created("guests", "mallory", Visibility::Private);
    guest.guest = true;
    let mut events = vec![
        created("board", "alice", Visibility::Private),
        membership(EventKind::MemberAdded, "board", "alice", "bob"),
        membership(EventKind::MemberAdded, "board", "alice", "carol"),
        membership(EventKind::MemberAdded, "board", "bob", "mallory"),
        membership(EventKind::MemberRemoved, "board", "alice", "carol"),
        membership(EventKind::MemberRemoved, "board", "alice", "alice"),
        created("board", "mallory", Visibility::Public),
        created("square", "bob", Visibility::Public),
        membership(EventKind::MemberAdded, "square", "bob", "carol"),
        membership(EventKind::MemberAdded, "nowhere", "bob", "carol"),
        guest,
    ];
    // A moderator changes members (not the owner, not roles); a revoked one no longer.
    let role = |kind, by: &str, who: &str| {
        let mut e = membership(kind, "board", by, who);
        e.role = Some(Role::Moderator);
        e
    };
    events.extend([
        role(EventKind::RoleGranted, "bob", "mallory"),
        role(EventKind::RoleGranted, "alice", "erin"),
        membership(EventKind::MemberAdded, "board", "erin", "frank"),
        membership(EventKind::MemberRemoved, "board", "erin", "bob"),
        membership(EventKind::MemberRemoved, "board", "erin", "alice"),
        role(EventKind::RoleGranted, "erin", "frank"),
        role(EventKind::RoleRevoked, "alice", "erin"),
        membership(EventKind::MemberAdded, "board", "erin", "grace"),
    ]);
    for i in 0..20 {
        let room = format!("team-{}", i % 4);
        if i < 4 {
            events.push(created(&room, "dave", Visibility::Private));
        }
        events.push(membership(
            EventKind::MemberAdded,
            &room,
            "dave",
            &format!("u{i}"),
        ));
        if i % 3 == 0 {
            events.push(membership(
                EventKind::MemberRemoved,
                &room,
                "dave",
                &format!("u{i}"),
            ));
        }
    }
    events
}

on_both_backends! {
    /// The archive folds membership events with the same rules as a gateway's memory: the
    /// two projections, each built from the same events (in batches, with repeats), agree.
    async fn the_archives_access_projection_equals_the_one_folded_in_memory(backend) {
        let db = TestDatabase::new(backend, "access-fold").await;
        let store = archiver::Store::open(&db.url).await.unwrap();
        let events = membership_history();
        let mut memory = Access::default();
        for event in &events {
            let _ = memory.apply(event);
        }
        for batch in events.chunks(7) {
            let mut batch = batch.to_vec();
            batch.push(message("board", "a chat event in the same batch"));
            store.insert(&batch).await.unwrap();
        }
        // Every event again: repeats change nothing.
        assert_eq!(store.insert(&events).await.unwrap(), 0);
        let archived = store.access_snapshot().await.unwrap();
        assert_eq!(archived, memory.snapshot());
        let board = &archived["board"];
        assert!(!board.2.contains("mallory"), "bob does not own board");
        assert!(!board.2.contains("bob"), "removed by erin, a moderator");
        assert!(board.2.contains("frank"), "added by erin, a moderator");
        assert!(board.2.contains("alice"), "nobody removes the owner");
        assert!(!board.2.contains("grace"), "erin no longer moderates");
        assert!(board.3.is_empty(), "only alice grants; she revoked erin");
        assert!(!archived.contains_key("guests"), "guests create nothing");
        // A replay of the log, folded again, gives the same state.
        let mut replayed = Access::default();
        let mut after = 0;
        loop {
            let page = store.membership_after(after, 5).await.unwrap();
            for (seq, event) in &page {
                let _ = replayed.apply(event);
                after = *seq;
            }
            if page.len() < 5 {
                break;
            }
        }
        assert_eq!(replayed.snapshot(), memory.snapshot());
        store.close().await;
    }

    /// Token mode on the HTTP API: 401 without a valid token, 403 for a private room's
    /// history or search to a non-member, private rooms listed to their members only, and
    /// an admin reads everything.
    async fn the_http_api_shows_a_private_room_to_its_members_only(backend) {
        let prefix = unique_prefix("access-api");
        let broker = Broker::connect(&prefix).await;
        let db = TestDatabase::new(backend, "access-api").await;
        let archiver = start_with(
            &prefix,
            &db.url,
            &["--auth-mode", "token", "--auth-secret", SECRET],
        )
        .await;
        let mut secret = message("board", "the secret plan");
        secret.user = "alice".into();
        secret = secret.verified("Alice");
        for event in [
            created("board", "alice", Visibility::Private),
            membership(EventKind::MemberAdded, "board", "alice", "bob"),
            secret,
            message("lobby", "the public plan"),
        ] {
            broker.publish_event(&event).await;
        }
        let alice = token("alice", false);
        let bob = token("bob", false);
        let mallory = token("mallory", false);
        let admin = token("root", true);
        chat_core::testkit::eventually(crate::helpers::WAIT, "both rooms archived", || {
            let archiver = &archiver;
            let alice = alice.clone();
            async move {
                let (_, body) = get(archiver, "/api/rooms", Some(&alice)).await;
                (body["rooms"].as_array()?.len() == 2).then_some(())
            }
        })
        .await;

        // No token, a garbage token, an expired token: 401 with a JSON body.
        let expired = {
            let mut claims = claims_for("alice", None, std::time::Duration::from_secs(60));
            claims.exp = chrono::Utc::now().timestamp() - 10;
            mint(SECRET, &claims).unwrap()
        };
        for (token, code) in [
            (None, "unauthorized"),
            (Some("not-a-token"), "unauthorized"),
            (Some(expired.as_str()), "token_expired"),
        ] {
            for path in ["/api/rooms", "/api/rooms/lobby/events", "/api/search?q=plan"] {
                let (status, body) = get(&archiver, path, token).await;
                assert_eq!(status, 401, "{path} {token:?}");
                assert_eq!(body["error"]["code"], code, "{path} {token:?}: {body}");
            }
        }

        // Mallory: the private room is not listed, its history and a search in it are
        // forbidden, and a search everywhere does not find its messages.
        let (status, body) = get(&archiver, "/api/rooms", Some(mallory.as_str())).await;
        assert_eq!(status, 200);
        assert_eq!(rooms(&body), ["lobby"]);
        let (status, body) = get(&archiver, "/api/rooms/board/events", Some(mallory.as_str())).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "forbidden");
        let (status, _) = get(&archiver, "/api/search?q=plan&room=board", Some(mallory.as_str())).await;
        assert_eq!(status, 403);
        let (status, body) = get(&archiver, "/api/search?q=plan", Some(mallory.as_str())).await;
        assert_eq!(status, 200);
        assert_eq!(texts(&body), ["the public plan"]);

        // Alice, Bob (a member) and an admin read it.
        for who in [&alice, &bob, &admin] {
            let (_, body) = get(&archiver, "/api/rooms", Some(who)).await;
            let mut listed = rooms(&body);
            listed.sort();
            assert_eq!(listed, ["board", "lobby"]);
            let (status, body) = get(&archiver, "/api/rooms/board/events", Some(who)).await;
            assert_eq!(status, 200);
            assert_eq!(texts(&body), ["the secret plan"]);
            let (_, body) = get(&archiver, "/api/search?q=secret", Some(who)).await;
            assert_eq!(texts(&body), ["the secret plan"]);
        }
        // The OpenAPI document and the probes need no token.
        assert_eq!(get(&archiver, "/api/openapi.json", None).await.0, 200);
        assert_eq!(get(&archiver, "/healthz", None).await.0, 200);
        archiver.stop().await;
        broker.cleanup().await;
    }
}

on_both_backends! {
    /// The read commands act for the caller the API would see: in token mode the user of
    /// `--token` (or `ARCHIVER_TOKEN`), refused without a valid one; a private room's
    /// history, export and search only for its members and admins, and absent from the
    /// room list and from searches everywhere for anyone else; in open mode, a guest.
    async fn the_read_commands_show_a_private_room_to_its_members_only(backend) {
        let db = TestDatabase::new(backend, "access-cli").await;
        let store = archiver::Store::open(&db.url).await.unwrap();
        let mut secret = message("board", "the secret plan");
        secret.user = "alice".into();
        secret = secret.verified("Alice");
        store
            .insert(&[
                created("board", "alice", Visibility::Private),
                membership(EventKind::MemberAdded, "board", "alice", "bob"),
                secret,
                message("lobby", "the public plan"),
            ])
            .await
            .unwrap();
        store.close().await;
        let run = |token: Option<&str>, args: &[&str]| {
            let mut all = args.to_vec();
            all.extend(["--auth-mode", "token", "--auth-secret", SECRET]);
            if let Some(token) = token {
                all.extend(["--token", token]);
            }
            archiver_command(&all, &db.url)
        };
        let reads: [&[&str]; 5] = [
            &["history", "board"],
            &["rooms"],
            &["search", "plan"],
            &["search", "plan", "--room", "board"],
            &["export", "board", "--format", "jsonl"],
        ];
        let expired = {
            let mut claims = claims_for("bob", None, std::time::Duration::from_secs(60));
            claims.exp = chrono::Utc::now().timestamp() - 10;
            mint(SECRET, &claims).unwrap()
        };

        // No token, a garbage one, an expired one: refused before the archive is read.
        for (token, said) in [
            (None, "--token or ARCHIVER_TOKEN"),
            (Some("not-a-token"), "the token is refused"),
            (Some(expired.as_str()), "expired"),
        ] {
            for args in reads {
                let output = run(token, args);
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert_eq!(output.status.code(), Some(1), "{args:?} {token:?}: {stderr}");
                assert!(stderr.contains(said), "{args:?} {token:?}: {stderr}");
                assert!(output.stdout.is_empty(), "{args:?} {token:?}");
            }
        }

        // Mallory: forbidden, and nothing of the room in any output.
        let mallory = token("mallory", false);
        for args in [reads[0], reads[3], reads[4]] {
            let output = run(Some(mallory.as_str()), args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains("forbidden"), "{args:?}: {stderr}");
            assert!(!stderr.contains("secret"), "{args:?}: {stderr}");
            assert!(output.stdout.is_empty(), "{args:?}");
        }
        let listed = stdout(run(Some(mallory.as_str()), &["rooms", "--json"]));
        assert_eq!(listed.lines().count(), 1, "{listed}");
        assert!(listed.contains("\"lobby\""), "{listed}");
        let found = stdout(run(Some(mallory.as_str()), &["search", "plan"]));
        assert!(found.contains("the public plan") && !found.contains("secret"), "{found}");

        // Alice (the owner), Bob (a member) and an admin read everything.
        for who in [token("alice", false), token("bob", false), token("root", true)] {
            assert!(stdout(run(Some(who.as_str()), &["history", "board"])).contains("the secret plan"));
            assert!(stdout(run(Some(who.as_str()), reads[4])).contains("the secret plan"));
            assert!(stdout(run(Some(who.as_str()), &["search", "secret"])).contains("the secret plan"));
            assert_eq!(stdout(run(Some(who.as_str()), &["rooms", "--json"])).lines().count(), 2);
        }
        // The token may come from the environment, as in a script.
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_archiver"))
            .args(["history", "board", "--auth-mode", "token", "--auth-secret", SECRET])
            .args(["--database-url", &db.url])
            .env("ARCHIVER_TOKEN", token("bob", false))
            .output()
            .unwrap();
        assert!(stdout(output).contains("the secret plan"));

        // Open mode: the caller is a guest, as on the API: public rooms only.
        let output = archiver_command(&["history", "board"], &db.url);
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("forbidden"));
        assert!(output.stdout.is_empty());
        assert!(stdout(archiver_command(&["history", "lobby"], &db.url)).contains("the public plan"));
        assert_eq!(stdout(archiver_command(&["rooms", "--json"], &db.url)).lines().count(), 1);
    }
}

/// The stdout of a command that must succeed.
fn stdout(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn token(sub: &str, admin: bool) -> String {
    let mut claims = claims_for(sub, None, std::time::Duration::from_secs(600));
    claims.admin = admin;
    mint(SECRET, &claims).unwrap()
}

async fn get(archiver: &Running, path: &str, token: Option<&str>) -> (u16, Value) {
    let header = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = header
        .iter()
        .map(|h| ("Authorization", h.as_str()))
        .collect();
    let (status, body) = http_get_with(archiver.addr, path, &headers).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn rooms(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap().to_owned())
        .collect()
}

fn texts(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}
