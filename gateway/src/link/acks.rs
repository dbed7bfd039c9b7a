//! The consumer's lazy multiple-ack. Every ack is a hand-off to the AMQP client's I/O
//! task, and a gateway consumes every event of the rooms it serves, so deliveries are
//! acked together: one
//! multiple-ack of the last delivery once a quarter of the prefetch window is unacked, or
//! `delay` after the first unacked one when no more arrive. The gateway's queue is its own
//! and dies with its connection, so a late ack risks nothing. A pure state machine, given
//! the time, so that its decisions are tested without a broker.

use std::time::Duration;

use tokio::time::Instant;

/// What to do after a delivery was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Ack now: enough deliveries are unacked.
    AckNow,
    /// The first unacked delivery: ack by this instant at the latest.
    AckBy(Instant),
    /// Keep collecting; the deadline already set stands.
    Wait,
}

/// Unacked deliveries: how many, the last one (whose multiple-ack covers them all), and
/// when they must be acked at the latest.
#[derive(Debug)]
pub(super) struct LazyAck<D> {
    /// Ack once this many deliveries are unacked.
    every: usize,
    /// Longest the first unacked delivery waits.
    delay: Duration,
    /// How many deliveries are unacked.
    count: usize,
    /// The last unacked delivery.
    last: Option<D>,
    /// When the unacked deliveries are due, if any are.
    deadline: Option<Instant>,
}

impl<D> LazyAck<D> {
    /// Acks every quarter of `prefetch` (every 256 for an unlimited prefetch) or `delay`
    /// after the first unacked delivery.
    pub(super) fn new(prefetch: u16, delay: Duration) -> Self {
        let every = match prefetch {
            0 => 256,
            p => usize::from(p / 4).max(1),
        };
        Self {
            every,
            delay,
            count: 0,
            last: None,
            deadline: None,
        }
    }

    /// Records a delivery received at `now`, to be acked later.
    pub(super) fn record(&mut self, delivery: D, now: Instant) -> Next {
        let first = self.last.replace(delivery).is_none();
        self.count += 1;
        if first {
            self.deadline = Some(now + self.delay);
        }
        match (self.is_full(), first) {
            (true, _) => Next::AckNow,
            (false, true) => Next::AckBy(now + self.delay),
            (false, false) => Next::Wait,
        }
    }

    /// Whether enough deliveries are unacked to ack them now.
    pub(super) fn is_full(&self) -> bool {
        self.count >= self.every
    }

    /// When the unacked deliveries must be acked at the latest; `None` if none are.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The delivery to ack with `multiple`, covering every one recorded; starts afresh.
    pub(super) fn take(&mut self) -> Option<D> {
        self.count = 0;
        self.deadline = None;
        self.last.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(25);

    #[test]
    fn a_quarter_of_the_prefetch_is_acked_at_once() {
        let mut acks = LazyAck::new(16, DELAY);
        let now = Instant::now();
        assert_eq!(acks.record(1, now), Next::AckBy(now + DELAY));
        assert_eq!(acks.record(2, now), Next::Wait);
        assert_eq!(acks.record(3, now), Next::Wait);
        assert!(!acks.is_full());
        assert_eq!(acks.record(4, now), Next::AckNow);
        assert!(acks.is_full());
        assert_eq!(
            acks.take(),
            Some(4),
            "the last delivery's multiple-ack covers all"
        );
        assert_eq!(acks.deadline(), None);
        assert!(!acks.is_full(), "nothing is left to ack");
        assert_eq!(acks.take(), None);
    }

    #[test]
    fn the_window_is_counted_again_after_an_ack() {
        let mut acks = LazyAck::new(8, DELAY);
        let now = Instant::now();
        assert_eq!(acks.record('a', now), Next::AckBy(now + DELAY));
        assert_eq!(acks.record('b', now), Next::AckNow);
        assert_eq!(acks.take(), Some('b'));
        let later = now + Duration::from_millis(3);
        assert_eq!(acks.record('c', later), Next::AckBy(later + DELAY));
        assert_eq!(acks.record('d', later), Next::AckNow);
    }

    #[test]
    fn tiny_and_unlimited_prefetch_windows_still_ack() {
        let now = Instant::now();
        let mut tiny = LazyAck::new(1, DELAY);
        assert_eq!(
            tiny.record((), now),
            Next::AckNow,
            "prefetch 1: every delivery"
        );
        let mut unlimited = LazyAck::new(0, DELAY);
        for _ in 0..255 {
            assert_ne!(unlimited.record((), now), Next::AckNow);
        }
        assert_eq!(
            unlimited.record((), now),
            Next::AckNow,
            "prefetch 0: every 256"
        );
    }

    #[test]
    fn the_deadline_is_set_by_the_first_unacked_delivery_only() {
        let mut acks = LazyAck::new(1024, DELAY);
        let start = Instant::now();
        acks.record(1, start);
        acks.record(2, start + Duration::from_millis(20));
        assert_eq!(
            acks.deadline(),
            Some(start + DELAY),
            "not moved by the second"
        );
        assert_eq!(acks.take(), Some(2));
        assert_eq!(
            acks.record(3, start + DELAY),
            Next::AckBy(start + DELAY * 2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_delivery_is_acked_when_its_timer_fires() {
        let mut acks = LazyAck::new(1024, DELAY);
        let Next::AckBy(deadline) = acks.record("only", Instant::now()) else {
            panic!("the first delivery sets the deadline");
        };
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        tokio::time::advance(Duration::from_millis(24)).await;
        assert!(
            futures_util::poll!(timer.as_mut()).is_pending(),
            "not before the delay"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        timer.await;
        assert_eq!(acks.deadline(), Some(Instant::now()));
        assert_eq!(acks.take(), Some("only"));
        assert_eq!(acks.deadline(), None, "no timer until the next delivery");
    }
}
