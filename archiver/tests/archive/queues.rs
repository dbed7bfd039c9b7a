//! Queues left by a version before quorum queues: the archiver refuses them with a message
//! that says how to migrate, and `archiver migrate-queues` rebuilds them as quorum queues,
//! while events keep being published, without losing one.

use std::collections::HashSet;
use std::time::Duration;

use chat_core::testkit::{amqp_url, unique_prefix, Broker};
use chat_core::topology::Topology;
use chat_core::Event;
use clap::Parser;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::helpers::{archiver_command, ids, message, report, start, Backend, TestDatabase, WAIT};

/// Publishes an event as a gateway does and waits for the broker's confirm.
async fn publish(channel: &Channel, topology: &Topology, event: &Event) {
    channel
        .basic_publish(
            topology.events_exchange().into(),
            "".into(),
            BasicPublishOptions::default(),
            event.to_json().as_bytes(),
            chat_core::broker::event_properties(event),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The queues as the version before quorum queues declared them.
async fn declare_classic(channel: &Channel, topology: &Topology) {
    topology.declare_base_exchanges(channel).await.unwrap();
    let bind = |queue: String, exchange: String| async move {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    };
    let dead = topology.dead_queue();
    channel
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    bind(dead, topology.dead_letter_exchange()).await;
    for name in ["logger", "archiver"] {
        let queue = topology.subscriber_queue(name);
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(topology.dead_letter_exchange().into()),
        );
        channel
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
            .await
            .unwrap();
        bind(queue, topology.events_exchange()).await;
    }
}

#[tokio::test]
async fn classic_queues_of_an_older_version_are_refused_then_migrated_without_losing_an_event() {
    let prefix = unique_prefix("migrate");
    let topology = Topology::new(&prefix).unwrap();
    let url = amqp_url();
    let connection = chat_core::broker::connect(&url, "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    declare_classic(&channel, &topology).await;
    let events: Vec<Event> = (0..400)
        .map(|n| message("lobby", &format!("m{n}")))
        .collect();
    for event in &events[..100] {
        publish(&channel, &topology, event).await;
    }
    // Something for the dead-letter queue to carry over.
    channel
        .basic_publish(
            topology.dead_letter_exchange().into(),
            "".into(),
            BasicPublishOptions::default(),
            b"not an event",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // The archiver refuses the classic queues, saying what to do, and stops.
    let db = TestDatabase::new(Backend::Sqlite, "migrate").await;
    let cli = archiver::cli::Cli::try_parse_from([
        "archiver",
        "--prefix",
        &prefix,
        "--amqp-url",
        &url,
        "--database-url",
        &db.url,
    ])
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = tokio::time::timeout(
        WAIT,
        archiver::run(listener, cli.config, CancellationToken::new()),
    )
    .await
    .expect("the archiver stops by itself")
    .expect_err("the archiver refuses a classic queue");
    let said = format!("{refused:#}");
    assert!(
        said.contains("archiver migrate-queues") && said.contains(&format!("{prefix}.dead")),
        "{said}"
    );

    // Migrated while a gateway keeps publishing.
    let talker = {
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(Default::default()).await.unwrap();
        let (topology, later) = (topology.clone(), events[100..].to_vec());
        tokio::spawn(async move {
            for event in &later {
                publish(&channel, &topology, event).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let migrate = |prefix: String, url: String, db: String| {
        tokio::task::spawn_blocking(move || {
            let out = archiver_command(
                &["--prefix", &prefix, "--amqp-url", &url, "migrate-queues"],
                &db,
            );
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        })
    };
    let first = migrate(prefix.clone(), url.clone(), db.url.clone())
        .await
        .unwrap();
    talker.await.unwrap();
    for queue in ["dead", "logger", "archiver"] {
        assert!(
            first.contains(&format!(
                "{prefix}.{queue}: declared again as a quorum queue"
            )),
            "{first}"
        );
    }
    let again = migrate(prefix.clone(), url.clone(), db.url.clone())
        .await
        .unwrap();
    assert_eq!(again.matches("already up to date").count(), 3, "{again}");

    // Every event reaches the archive, the backlog first and in order.
    let broker = Broker::connect(&prefix).await;
    let logger_depth = broker.depth(&topology.subscriber_queue("logger")).await;
    let dead_depth = broker.depth(&topology.dead_queue()).await;
    let archiver = start(&prefix, &db.url).await;
    archiver.wait_for_count("lobby", 400).await;
    let (_, page) = archiver.get("/api/rooms/lobby/events?limit=1000").await;
    let stored = ids(&page["events"]);
    let want: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let distinct: HashSet<&String> = stored.iter().collect();
    let missing = want.iter().filter(|id| !distinct.contains(id)).count();
    // The backlog, archived first and in publish order.
    let backlog_in_order = stored.len() >= 100 && stored[..100] == want[..100];
    report(&format!(
        "classic queues migrated to quorum while publishing: published={} archived={} missing={missing} logger_queue={logger_depth} dead_queue={dead_depth} backlog_first={backlog_in_order}",
        events.len(),
        stored.len()
    ));
    assert_eq!(
        (missing, stored.len()),
        (0, 400),
        "every event archived once"
    );
    assert!(logger_depth >= 400, "the logger's queue kept every event");
    assert_eq!(dead_depth, 1, "the dead-lettered message was carried over");
    assert!(backlog_in_order);
    archiver.stop().await;
    let _ = connection.close(200, "done".into()).await;
    broker.cleanup().await;
}
