//! How the consumer hands events to idle clients: written to their sockets by the fanout
//! itself (no task wake-up per client, the cheapest way below saturation) or queued for
//! their writers (which spreads the sends over the runtime's threads and, once the machine
//! is busy, lets each writer send several frames per write). Direct writes cost a system
//! call per frame on the consumer's thread, so they get a budget: at most a quarter of the
//! consumer's wall-clock time in each 100 ms window, and only for an event that arrived
//! alone. Past the budget, or with more events already waiting, events are queued, as
//! before direct writes existed. Measured with `scripts/bench.sh --only fanout,floor`
//! (BENCHMARKS.md): without the budget the fanout capacity fell from 931 to 305 messages/s.

use std::time::Duration;

use tokio::time::Instant;

use crate::rooms::Handoff;

/// The window over which the time spent writing directly is counted.
const WINDOW: Duration = Duration::from_millis(100);
/// The share of each window the consumer may spend writing to sockets itself.
const BUDGET: Duration = Duration::from_millis(25);

/// The consumer's direct-write budget; one per broker session's consumer loop.
#[derive(Debug)]
pub(super) struct WriteBudget {
    window_start: Instant,
    spent: Duration,
}

impl WriteBudget {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            spent: Duration::ZERO,
        }
    }

    /// How to hand over the next event, which arrived alone (`more_waiting` false) or with
    /// others right behind it.
    pub(super) fn handoff(&mut self, now: Instant, more_waiting: bool) -> Handoff {
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.spent = Duration::ZERO;
        }
        if more_waiting || self.spent >= BUDGET {
            Handoff::Queue
        } else {
            Handoff::Direct
        }
    }

    /// Counts the time a direct fanout took against the budget.
    pub(super) fn spent(&mut self, took: Duration) {
        self.spent += took;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_alone_is_written_directly_until_the_windows_budget_is_spent() {
        let start = Instant::now();
        let mut budget = WriteBudget::new(start);
        assert_eq!(budget.handoff(start, false), Handoff::Direct);
        assert_eq!(budget.handoff(start, true), Handoff::Queue, "more waiting");
        budget.spent(Duration::from_millis(20));
        assert_eq!(budget.handoff(start, false), Handoff::Direct);
        budget.spent(Duration::from_millis(5));
        let later = start + Duration::from_millis(99);
        assert_eq!(budget.handoff(later, false), Handoff::Queue, "budget spent");
        let next_window = start + Duration::from_millis(100);
        assert_eq!(budget.handoff(next_window, false), Handoff::Direct);
    }
}
