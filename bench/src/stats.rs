//! Counting what a measured window produced: a latency histogram that many client tasks
//! record into at once (atomic buckets, about 1.5% precision) and the counters of one
//! window (sent, received, duplicates, errors), from which loss and percentiles are derived.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Values below this are counted exactly, one bucket each.
const EXACT: u64 = 128;
/// Sub-buckets per power of two above `EXACT`.
const SUB: u64 = 64;
/// Highest power of two tracked (2^40 µs is about 12 days); larger values are clamped.
const MAX_MSB: u64 = 40;
const BUCKETS: usize = (EXACT + (MAX_MSB - 6) * SUB) as usize;

/// Microseconds since this process started: the clock that send times carried inside
/// messages use, so latency is a difference of two readings of one monotonic clock.
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn bucket_of(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let msb = u64::from(63 - value.leading_zeros()).min(MAX_MSB);
    let value = value.min((1 << (MAX_MSB + 1)) - 1);
    let shift = msb - 6;
    let sub = (value >> shift) & (SUB - 1);
    (EXACT + (msb - 7) * SUB + sub) as usize
}

/// The middle of a bucket: the value reported for everything counted in it.
fn bucket_value(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT {
        return index;
    }
    let k = index - EXACT;
    let msb = 7 + k / SUB;
    let sub = k % SUB;
    let width = 1u64 << (msb - 6);
    ((SUB + sub) << (msb - 6)) + width / 2
}

/// A histogram that any number of tasks record into without locks.
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub fn record(&self, value: u64) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// A plain copy to compute percentiles on.
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// A copy of an [`AtomicHistogram`].
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            max: 0,
        }
    }
}

impl Histogram {
    #[cfg(test)]
    pub fn record(&mut self, value: u64) {
        self.buckets[bucket_of(value)] += 1;
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The largest value recorded, exactly.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value below or at which a fraction `q` (0..=1) of the recorded values lie, or 0
    /// when nothing was recorded. Never above the exact maximum.
    pub fn percentile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_value(index).min(self.max);
            }
        }
        self.max
    }
}

/// Counters of one measured window, shared by every client task.
pub struct WindowStats {
    /// Messages sent, per sender (a sender only ever touches its own slot).
    pub sent: Box<[AtomicU64]>,
    /// Senders that finished their schedule for this window.
    pub senders_done: AtomicU64,
    /// Deliveries of this window's messages to receivers in the message's room.
    pub received: AtomicU64,
    /// Deliveries of a (sender, sequence) a receiver had already seen, or out of order.
    pub duplicates: AtomicU64,
    /// Deliveries of messages of a room the receiver is not in (a system without rooms
    /// sends everything to everyone; the client drops them).
    pub foreign: AtomicU64,
    /// Acks the senders got (chat dialect).
    pub acks: AtomicU64,
    /// Error frames and dropped connections during the window.
    pub errors: AtomicU64,
    /// Receive time minus send time of each delivery, in µs.
    pub latency: AtomicHistogram,
    /// How late each send was against its schedule, in µs.
    pub send_lag: AtomicHistogram,
}

impl WindowStats {
    pub fn new(senders: usize) -> Self {
        Self {
            sent: (0..senders).map(|_| AtomicU64::new(0)).collect(),
            senders_done: AtomicU64::new(0),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: AtomicHistogram::default(),
            send_lag: AtomicHistogram::default(),
        }
    }

    pub fn sent_by(&self, sender: usize) -> u64 {
        self.sent[sender].load(Ordering::Relaxed)
    }

    pub fn total_sent(&self) -> u64 {
        self.sent.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Microseconds as milliseconds with two decimals, for reports.
pub fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

/// A ratio with a zero denominator reported as 0 rather than infinity.
pub fn per(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(0.5), 50);
        assert_eq!(h.percentile(0.9), 90);
        assert_eq!(h.percentile(0.99), 99);
        assert_eq!(h.percentile(1.0), 100);
        assert_eq!(h.max(), 100);
    }

    #[test]
    fn large_values_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        for (q, exact) in [(0.5, 500_000.0), (0.9, 900_000.0), (0.99, 990_000.0)] {
            let got = h.percentile(q) as f64;
            assert!((got - exact).abs() / exact < 0.02, "p{q}: {got} vs {exact}");
        }
        assert_eq!(h.percentile(1.0), 1_000_000);
    }

    #[test]
    fn percentiles_never_exceed_the_maximum_and_empty_is_zero() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(0.99), 0);
        h.record(1_000_001);
        assert_eq!(h.percentile(0.5), 1_000_001);
        h.record(u64::MAX);
        assert_eq!(h.max(), u64::MAX);
        assert!(h.percentile(0.5) >= 1_000_001);
    }

    #[test]
    fn every_value_lands_in_a_bucket_that_contains_it() {
        for v in [
            127u64,
            128,
            129,
            255,
            256,
            1000,
            65_535,
            1 << 30,
            (1 << 41) - 1,
        ] {
            let mid = bucket_value(bucket_of(v)) as f64;
            assert!((mid - v as f64).abs() / (v as f64) < 0.02, "{v} -> {mid}");
        }
    }

    #[test]
    fn the_atomic_histogram_matches_the_plain_one() {
        let a = AtomicHistogram::default();
        let mut h = Histogram::default();
        for v in [5u64, 500, 5000, 50_000] {
            a.record(v);
            h.record(v);
        }
        let s = a.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.percentile(0.75), h.percentile(0.75));
        assert_eq!(s.max(), 50_000);
    }
}
