//! How long `archiver rebuild` takes on a big archive (BENCHMARKS.md): fills an archive with
//! generated events through the archiver's own `Store::insert` (so the projections are
//! maintained as the service maintains them), then times `Store::rebuild` and checks that
//! the rebuilt history of a room is byte for byte the incremental one.
//!
//! ```text
//! cargo run --release -p archiver --example rebuild_bench -- [EVENTS] [DATABASE_URL]
//! ```
//!
//! EVENTS defaults to 1 000 000; DATABASE_URL to a new SQLite file in a temporary
//! directory (a PostgreSQL URL must name a database that does not exist yet). Of the events,
//! about 70% are messages, 15% reactions (added, sometimes taken back), 10% edits and 5%
//! deletions, spread over 20 rooms and 50 guests, each acting on a recent message.

use std::time::Instant;

use anyhow::Context;
use archiver::store::Store;
use chat_core::event::ReactOp;
use chat_core::{Event, EventKind};

const ROOMS: usize = 20;
const USERS: usize = 50;
const BATCH: usize = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = match args.next() {
        Some(n) => n.parse().context("EVENTS must be a number")?,
        None => 1_000_000,
    };
    let dir = tempfile::tempdir()?;
    let url = match args.next() {
        Some(url) => url,
        None => format!("sqlite://{}", dir.path().join("archive.db").display()),
    };
    let store = Store::open(&url).await?;
    let started = Instant::now();
    let mut generator = Generator::default();
    let mut batch = Vec::with_capacity(BATCH);
    for _ in 0..total {
        batch.push(generator.next());
        if batch.len() == BATCH {
            store.insert(&batch).await?;
            batch.clear();
        }
    }
    store.insert(&batch).await?;
    let filled = started.elapsed();
    println!(
        "inserted {total} events in {:.1} s ({:.0} events/s, projections kept as they arrive)",
        filled.as_secs_f64(),
        total as f64 / filled.as_secs_f64()
    );
    let before = store.page("room-0", 1000, None).await?;
    let started = Instant::now();
    let rebuilt = store.rebuild().await?;
    let took = started.elapsed();
    let after = store.page("room-0", 1000, None).await?;
    anyhow::ensure!(
        serde_json::to_string(&before)? == serde_json::to_string(&after)?,
        "the rebuilt history differs from the incremental one"
    );
    println!(
        "rebuild: {} events, {} membership events, {} messages folded in {:.2} s; \
         history of room-0 identical before and after",
        rebuilt.events,
        rebuilt.membership,
        rebuilt.messages,
        took.as_secs_f64()
    );
    store.close().await;
    Ok(())
}

/// A deterministic conversation: every event acts on a message of the last 200.
#[derive(Default)]
struct Generator {
    n: u64,
    state: u64,
    messages: Vec<Event>,
}

impl Generator {
    fn random(&mut self, below: usize) -> usize {
        self.state = self
            .state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.state >> 33) as usize % below
    }

    fn next(&mut self) -> Event {
        self.n += 1;
        let user = format!("user{}", self.random(USERS));
        let roll = self.random(100);
        let mut event = if roll < 70 || self.messages.is_empty() {
            let room = format!("room-{}", self.random(ROOMS));
            let topic = self.random(1000);
            let text = format!("message {} about topic {topic}", self.n);
            let message = Event::new(EventKind::Message, &room, &user, Some(text), "gw-bench");
            self.messages.push(message.clone());
            if self.messages.len() > 200 {
                self.messages.remove(0);
            }
            message
        } else {
            let pick = self.random(self.messages.len());
            let target = self.messages[pick].clone();
            let (kind, actor) = match roll {
                70..=84 => (EventKind::React, user.as_str()),
                85..=94 => (EventKind::Edit, target.user.as_str()),
                _ => (EventKind::Delete, target.user.as_str()),
            };
            let mut action = Event::new(kind, &target.room, actor, None, "gw-bench");
            action.target = Some(target.id.clone());
            match kind {
                EventKind::React => {
                    action.key = Some(["👍", "🎉", "❤️", "😂"][self.random(4)].to_owned());
                    action.op = Some(if self.random(5) == 0 {
                        ReactOp::Remove
                    } else {
                        ReactOp::Add
                    });
                }
                EventKind::Edit => action.text = Some(format!("edited {}", self.n)),
                _ => {}
            }
            action
        };
        // Distinct, increasing times, as a busy gateway would stamp them.
        event.at = chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + self.n as i64)
            .unwrap_or(event.at);
        event
    }
}
