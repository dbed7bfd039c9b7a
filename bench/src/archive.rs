//! The archiver's ingest: valid events are published straight to the running system's
//! exchange at a fixed rate (in a room of their own), while the archiver's `GET /api/rooms`
//! is polled. Reported: the events/s committed to SQLite, the lag from the last send until
//! the archive holds every event, and the count deficit sampled during the run.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chat_core::broker;
use chat_core::topology::Topology;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::amqp::{self, Confirms, Pace};
use crate::baseline::random_prefix;
use crate::cli::ArchiveArgs;
use crate::marker::Marker;
use crate::procfs::{CpuUsed, Watched};
use crate::stats::{now_us, AtomicHistogram};

/// How often the archive is polled.
const POLL: Duration = Duration::from_millis(200);

/// What an ingest run measured.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub room: String,
    pub sent: u64,
    pub confirmed: u64,
    pub archived: u64,
    /// From the first send until the archive held every event (or the limit).
    pub total: Duration,
    /// From the last send until the archive held every event.
    pub lag: Option<Duration>,
    /// Events sent but not yet archived, at each poll during sending.
    pub deficit_max: u64,
    pub deficit_mean: f64,
    pub deficit_at_last_send: u64,
    pub cpu: CpuUsed,
}

/// `GET path` on a loopback HTTP server; returns the status and the body.
pub async fn http_get(base: &str, path: &str) -> anyhow::Result<(u16, String)> {
    crate::client::check_loopback(base)?;
    let authority = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").context("not an HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// Joins the chunks of a chunked HTTP body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// How many events the archive holds for `room` (0 if the room is not there yet).
pub fn room_count(body: &str, room: &str) -> anyhow::Result<u64> {
    let value: serde_json::Value = serde_json::from_str(body).context("rooms are not JSON")?;
    let rooms = value["rooms"].as_array().context("no rooms array")?;
    Ok(rooms
        .iter()
        .find(|r| r["room"] == room)
        .and_then(|r| r["events"].as_u64())
        .unwrap_or(0))
}

async fn archived(archiver: &str, room: &str) -> anyhow::Result<u64> {
    let (status, body) = http_get(archiver, "/api/rooms").await?;
    if status != 200 {
        bail!("GET /api/rooms answered {status}");
    }
    room_count(&body, room)
}

/// Publishes at `rate` for `duration` and follows the archive until it has caught up.
pub async fn run(args: &ArchiveArgs, watched: &Watched) -> anyhow::Result<Ingest> {
    let (archiver, prefix) = (args.archiver.as_str(), args.prefix.as_str());
    let (rate, duration, payload) = (args.rate, args.duration, args.payload);
    let topology = Topology::new(prefix)?;
    let exchange = topology.events_exchange();
    let room = format!("ingest-{}", random_prefix().trim_start_matches("bench-"));
    let connection = broker::connect(&args.amqp.amqp_url, "chat-bench-archive").await?;
    let channel = connection.create_channel().await?;
    // Passive: the system under test declared its exchange; fail clearly if it did not.
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!("no exchange {exchange}: is the system running with CHAT_PREFIX={prefix}?")
        })?;
    amqp::confirming(&channel).await?;
    archived(archiver, &room).await?;

    let confirms = Arc::new(Confirms::default());
    let cpu_before = watched.cpu();
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + duration;
    let pace = Pace::split(rate, start, duration, 1).remove(0);
    let publisher = {
        let room = room.clone();
        tokio::spawn(amqp::publish_paced(
            channel.clone(),
            exchange,
            pace,
            move |seq, sent_us| {
                let marker = Marker {
                    window: 1,
                    sender: 0,
                    seq,
                    sent_us,
                    room: 0,
                };
                amqp::event(&room, marker, payload)
            },
            confirms.clone(),
            Arc::new(AtomicHistogram::default()),
        ))
    };
    let mut deficits = Vec::new();
    let mut deficit_at_last_send = 0;
    let mut count = 0;
    let mut lag = None;
    let limit = end + args.catch_up_limit;
    tokio::time::sleep_until(start).await;
    loop {
        let pause = if publisher.is_finished() {
            Duration::from_millis(50)
        } else {
            POLL
        };
        tokio::time::sleep(pause).await;
        count = archived(archiver, &room).await.unwrap_or(count);
        let sent = confirms.sent.load(Ordering::Relaxed);
        let publishing = !publisher.is_finished();
        if publishing {
            deficits.push(sent.saturating_sub(count));
            deficit_at_last_send = sent.saturating_sub(count);
        } else if count >= sent {
            let last = confirms.last_sent_us.load(Ordering::Relaxed);
            lag = Some(Duration::from_micros(now_us().saturating_sub(last)));
            break;
        }
        if Instant::now() >= limit {
            break;
        }
    }
    let sent = confirms.sent.load(Ordering::Relaxed);
    let last_count = count;
    let total = start.elapsed();
    let cpu = cpu_before.until(&watched.cpu());
    let _ = connection.close(200, "done".into()).await;
    Ok(Ingest {
        room,
        sent,
        confirmed: confirms.confirmed.load(Ordering::Relaxed),
        archived: last_count,
        total,
        lag,
        deficit_max: deficits.iter().copied().max().unwrap_or(0),
        deficit_mean: if deficits.is_empty() {
            0.0
        } else {
            deficits.iter().sum::<u64>() as f64 / deficits.len() as f64
        },
        deficit_at_last_send,
        cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_the_room_list() {
        let body = r#"{"rooms":[{"room":"a","events":3},{"room":"ingest-x","events":1200}]}"#;
        assert_eq!(room_count(body, "ingest-x").unwrap(), 1200);
        assert_eq!(room_count(body, "missing").unwrap(), 0);
        assert!(room_count("nope", "a").is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"), "Wikipedia");
    }
}
