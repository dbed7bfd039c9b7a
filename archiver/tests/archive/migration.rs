//! Upgrading a SQLite archive made before full-text search: its messages become searchable;
//! and made before identities: its events read back as guests' events.
//! (The PostgreSQL schema was born with search; it has no such history.)

use archiver::search::Query;
use archiver::Store;
use sqlx::Connection;

#[tokio::test]
async fn messages_archived_before_the_search_migration_are_found_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("archive.db").display());
    // The archive as the first release left it: only the first migration applied.
    let first = tempfile::tempdir().unwrap();
    let migrations = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite");
    let name = "20261128000001_events.sql";
    std::fs::copy(format!("{migrations}/{name}"), first.path().join(name)).unwrap();
    let mut db = sqlx::SqliteConnection::connect(&format!("{database_url}?mode=rwc"))
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(first.path())
        .await
        .unwrap()
        .run(&mut db)
        .await
        .unwrap();
    for (id, kind, text) in [
        ("e1", "message", Some("an old message")),
        ("e2", "join", None),
        ("e3", "message", Some("another one")),
    ] {
        sqlx::query(
            "INSERT INTO events (id, type, room, user, text, at, gateway)
             VALUES (?, ?, 'lobby', 'alice', ?, '2026-11-28T15:03:15.123Z', 'gw-1')",
        )
        .bind(id)
        .bind(kind)
        .bind(text)
        .execute(&mut db)
        .await
        .unwrap();
    }
    db.close().await.unwrap();

    let store = Store::open_existing(&database_url).await.unwrap();
    assert_eq!(found(&store, "old").await, ["e1"]);
    assert_eq!(found(&store, "message").await, ["e1"]);
    assert_eq!(found(&store, "one").await, ["e3"]);
    assert!(
        found(&store, "lobby").await.is_empty(),
        "rooms are not searched as text"
    );
    let old = store.page("lobby", 10, None).await.unwrap();
    assert_eq!(old.len(), 3);
    assert!(
        old.iter().all(|e| e.guest && e.name.is_none()),
        "nobody vouched for a name archived before identities"
    );
    store.close().await;
}

/// The ids of the messages a search finds.
async fn found(store: &Store, words: &str) -> Vec<String> {
    let query = Query::parse(words).unwrap();
    let events = store.search(&query, None, 10).await.unwrap();
    events.into_iter().map(|e| e.id).collect()
}
