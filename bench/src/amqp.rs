//! Publishing straight to a fanout exchange the way the gateways do (persistent, JSON
//! events, publisher confirms awaited beside the publishing loop, so many are in flight), at
//! a paced rate. Shared by the broker-only baseline and the archiver ingest measurement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_core::broker::event_properties;
use chat_core::{Event, EventKind};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Channel;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::marker::Marker;
use crate::stats::{now_us, AtomicHistogram};

/// What the publishers got back from the broker.
#[derive(Default)]
pub struct Confirms {
    pub sent: AtomicU64,
    pub confirmed: AtomicU64,
    /// Nacked, failed or unconfirmed within the limit.
    pub failed: AtomicU64,
    /// When the latest publish was handed to the broker (µs on `now_us`'s clock).
    pub last_sent_us: AtomicU64,
}

/// One publisher's share of a paced run.
pub struct Pace {
    pub start: Instant,
    pub end: Instant,
    /// Time between two of this publisher's messages.
    pub interval: Duration,
    /// Offset of this publisher's first message.
    pub offset: Duration,
}

impl Pace {
    /// The shares of `publishers` publishers sending `rate` messages per second in all.
    pub fn split(rate: f64, start: Instant, duration: Duration, publishers: usize) -> Vec<Pace> {
        let publishers = publishers.max(1);
        let interval = Duration::from_secs_f64(publishers as f64 / rate.max(0.001));
        (0..publishers)
            .map(|p| Pace {
                start,
                end: start + duration,
                interval,
                offset: interval.mul_f64(p as f64 / publishers as f64),
            })
            .collect()
    }

    fn due(&self, seq: u64) -> Option<Instant> {
        let at = self.start + self.offset + self.interval.mul_f64(seq as f64);
        (at < self.end).then_some(at)
    }
}

/// An event whose text carries a marker, as a gateway would publish it.
pub fn event(room: &str, marker: Marker, payload: usize) -> Event {
    Event::new(
        EventKind::Message,
        room,
        "bench",
        Some(marker.encode(payload)),
        "chat-bench",
    )
}

/// Puts a channel in confirm mode.
pub async fn confirming(channel: &Channel) -> lapin::Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
}

/// Publishes on `channel` (in confirm mode) to `exchange` on the schedule `pace`, event
/// `seq` built by `make`, and waits for every confirm (at most 30 s each). `lag` records
/// how late each publish was against its schedule.
pub async fn publish_paced(
    channel: Channel,
    exchange: String,
    pace: Pace,
    mut make: impl FnMut(u64, u64) -> Event,
    confirms: Arc<Confirms>,
    lag: Arc<AtomicHistogram>,
) {
    let mut waiting = JoinSet::new();
    let mut seq = 0;
    while let Some(at) = pace.due(seq) {
        tokio::time::sleep_until(at).await;
        lag.record(Instant::now().saturating_duration_since(at).as_micros() as u64);
        let event = make(seq, now_us());
        seq += 1;
        let published = channel
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                event.to_json().as_bytes(),
                event_properties(&event),
            )
            .await;
        confirms.sent.fetch_add(1, Ordering::Relaxed);
        confirms.last_sent_us.store(now_us(), Ordering::Relaxed);
        match published {
            Ok(confirm) => {
                let confirms = confirms.clone();
                waiting.spawn(async move {
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(30), confirm).await,
                        Ok(Ok(c)) if c.is_ack()
                    );
                    let counter = if ok {
                        &confirms.confirmed
                    } else {
                        &confirms.failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            }
            Err(_) => {
                confirms.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Reap finished confirm waits so the set stays small.
        while waiting.try_join_next().is_some() {}
    }
    while waiting.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_share_the_rate() {
        let start = Instant::now();
        let paces = Pace::split(1000.0, start, Duration::from_secs(1), 2);
        let total: usize = paces
            .iter()
            .map(|p| (0..).map_while(|q| p.due(q)).count())
            .sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn events_carry_the_marker_and_are_valid() {
        let m = Marker {
            window: 1,
            sender: 0,
            seq: 7,
            sent_us: 42,
            room: 0,
        };
        let e = event("bench-room", m, 100);
        let json = e.to_json();
        assert!(Event::decode(json.as_bytes()).is_ok());
        assert_eq!(Marker::find(&json), Some(m));
    }
}
