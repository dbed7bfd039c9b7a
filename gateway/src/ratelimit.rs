//! Per-connection rate limiting: a token bucket for the frames a client may send, and a
//! second bucket for how many it has had refused, so that a client that keeps flooding after
//! being told `rate_limited` is disconnected instead of costing the gateway forever.

use std::time::Instant;

/// What to do with one incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: process it.
    Allow,
    /// Over the limit: answer `rate_limited` and drop it.
    Limited,
    /// Still sending after many refusals: disconnect.
    Flooding,
}

/// A token bucket refilled continuously at `rate` per second, holding at most `burst`.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The limiter of one connection.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    frames: Bucket,
    refusals: Bucket,
}

impl RateLimiter {
    /// `rate` frames per second with bursts of `burst`; a client may have `burst` frames
    /// refused in a row (refilling at `rate`) before it counts as flooding.
    pub fn new(rate: u32, burst: u32) -> Self {
        let now = Instant::now();
        let (rate, burst) = (f64::from(rate.max(1)), f64::from(burst.max(1)));
        Self {
            frames: Bucket::new(rate, burst, now),
            refusals: Bucket::new(rate, burst, now),
        }
    }

    /// Judges one frame arriving now.
    pub fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Verdict {
        if self.frames.take(now) {
            Verdict::Allow
        } else if self.refusals.take(now) {
            Verdict::Limited
        } else {
            Verdict::Flooding
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_frames_are_limited_then_flooding_is_detected() {
        let mut limiter = RateLimiter::new(10, 5);
        let t = Instant::now();
        let verdicts: Vec<Verdict> = (0..12).map(|_| limiter.check_at(t)).collect();
        assert_eq!(&verdicts[..5], &[Verdict::Allow; 5]);
        assert_eq!(&verdicts[5..10], &[Verdict::Limited; 5]);
        assert_eq!(verdicts[10], Verdict::Flooding);
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate() {
        let mut limiter = RateLimiter::new(10, 1);
        let t = Instant::now();
        assert_eq!(limiter.check_at(t), Verdict::Allow);
        assert_eq!(limiter.check_at(t), Verdict::Limited);
        assert_eq!(
            limiter.check_at(t + Duration::from_millis(100)),
            Verdict::Allow
        );
        assert_eq!(
            limiter.check_at(t + Duration::from_millis(150)),
            Verdict::Limited
        );
    }
}
