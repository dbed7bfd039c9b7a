//! The backend is chosen by `DATABASE_URL`'s scheme: a URL of any other scheme is refused at
//! start, naming the scheme and never showing the password, and a `postgres://` URL is
//! never taken as a file name (it once was).

use std::process::Command;

use archiver::Store;
use chat_core::testkit::amqp_url;

use crate::helpers::{archiver_command, message, postgres_server, TestDatabase};

#[test]
fn an_unsupported_database_url_is_refused_at_start_naming_its_scheme() {
    let cwd = tempfile::tempdir().unwrap();
    for (url, scheme) in [
        ("mysql://chat:s3cret@127.0.0.1/chat", "\"mysql\""),
        ("postgre://chat:s3cret@127.0.0.1/chat", "\"postgre\""),
        ("file:///tmp/archive.db", "\"file\""),
        ("data/archive.db", "has no scheme"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_archiver"))
            .current_dir(cwd.path())
            .args(["--listen", "127.0.0.1:0", "--amqp-url", &amqp_url()])
            .env("DATABASE_URL", url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{url}: {stderr}");
        assert!(stderr.contains("DATABASE_URL"), "{url}: {stderr}");
        assert!(stderr.contains(scheme), "{url}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{url}: {stderr}");
        // The read commands refuse it too.
        let output = archiver_command(&["rooms"], url);
        assert_eq!(output.status.code(), Some(1), "{url}");
        assert!(String::from_utf8_lossy(&output.stderr).contains(scheme));
    }
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "no file was created"
    );
}

#[test]
fn a_postgres_url_is_never_taken_as_a_file_name() {
    let cwd = tempfile::tempdir().unwrap();
    // A role that does not exist: PostgreSQL itself refuses, at once.
    let url = postgres_server().replacen("://postgres@", "://nobody-here:s3cret@", 1) + "/db";
    let amqp = amqp_url();
    for args in [
        &["--listen", "127.0.0.1:0", "--amqp-url", &amqp][..],
        &["rooms"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_archiver"))
            .current_dir(cwd.path())
            .args(args)
            .args(["--database-url", &url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("nobody-here"), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
}

on_both_backends! {
    async fn an_archive_reopened_keeps_its_events_and_its_migrations(backend) {
        let db = TestDatabase::new(backend, "reopen").await;
        let store = Store::open(&db.url).await.unwrap();
        assert_eq!(store.backend(), backend);
        let event = message("lobby", "kept");
        assert_eq!(store.insert(std::slice::from_ref(&event)).await.unwrap(), 1);
        store.close().await;

        // Applied migrations are recorded with their checksums and validated, not rerun.
        let store = Store::open_existing(&db.url).await.unwrap();
        assert_eq!(
            store.page("lobby", 10, None).await.unwrap(),
            std::slice::from_ref(&event)
        );
        assert_eq!(store.insert(&[event]).await.unwrap(), 0);
        store.close().await;
    }
}

#[test]
fn the_sqlite_migrations_are_the_ones_existing_archives_recorded() {
    // Existing archives hold these versions with these files' checksums; moving the files
    // to migrations/sqlite/ must not change either. A new migration is added at the end.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "20261128000001_events.sql",
            "20261201000001_events_fts.sql",
            "20261205000001_rooms_trigger.sql",
            "20261229000001_identities.sql",
            "20261230000001_message_projection.sql",
            "20261231000001_projection_indexes.sql"
        ]
    );
}
