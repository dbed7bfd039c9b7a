//! Counters of a pool that outlive measured windows (connections, drops, stale deliveries,
//! error codes), and a plain snapshot of them with subtraction, so that what a window
//! added is `after - before`.

use std::collections::BTreeMap;
use std::ops::Sub;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::stats::AtomicHistogram;

/// Counters every client task of a pool updates.
#[derive(Default)]
pub(super) struct Shared {
    /// Time from opening the TCP connection to the end of the handshake (chat: `joined`
    /// received, so it includes the join's broker confirm and the history lookup), µs.
    pub handshake: AtomicHistogram,
    /// Clients connected right now.
    pub live: AtomicU64,
    pub connect_errors: AtomicU64,
    pub disconnects: AtomicU64,
    /// Every text frame received, to see when traffic has died down.
    pub frames: AtomicU64,
    /// Deliveries of a message from another window than the current one.
    pub stale: AtomicU64,
    /// Presence and typing frames received (`presence`, `presence_diff`, `typing`).
    pub ambient_frames: AtomicU64,
    /// `typing` frames the ambient typists sent.
    pub typing_sent: AtomicU64,
    /// Messages the ambient clients received (they are members of the room too).
    pub ambient_deliveries: AtomicU64,
    /// Times an ambient churner left (and then joined again).
    pub rejoins: AtomicU64,
    /// Error codes seen, with counts (errors are rare: a mutex is fine).
    error_codes: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    /// Counts one occurrence of an error code.
    pub fn error(&self, code: &str) {
        let mut codes = self.error_codes.lock().unwrap_or_else(|e| e.into_inner());
        *codes.entry(code.to_owned()).or_default() += 1;
    }

    /// The cumulative counters now.
    pub fn snapshot(&self) -> Counters {
        Counters {
            stale: self.stale.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            ambient_frames: self.ambient_frames.load(Ordering::Relaxed),
            typing_sent: self.typing_sent.load(Ordering::Relaxed),
            ambient_deliveries: self.ambient_deliveries.load(Ordering::Relaxed),
            rejoins: self.rejoins.load(Ordering::Relaxed),
            error_codes: self
                .error_codes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Cumulative counters at one moment; `later - earlier` is what happened in between.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Deliveries of a message from another window than the current one.
    pub stale: u64,
    /// Clients whose connection dropped.
    pub disconnects: u64,
    /// Failed connection attempts.
    pub connect_errors: u64,
    /// Presence and typing frames received.
    pub ambient_frames: u64,
    /// `typing` frames sent by the ambient typists.
    pub typing_sent: u64,
    /// Messages delivered to the ambient clients.
    pub ambient_deliveries: u64,
    /// Ambient churners' leaves (each followed by a join).
    pub rejoins: u64,
    /// Error codes seen, with counts; codes with no new occurrence are left out of a
    /// difference.
    pub error_codes: BTreeMap<String, u64>,
}

impl Sub for &Counters {
    type Output = Counters;

    fn sub(self, earlier: &Counters) -> Counters {
        Counters {
            stale: self.stale.saturating_sub(earlier.stale),
            disconnects: self.disconnects.saturating_sub(earlier.disconnects),
            connect_errors: self.connect_errors.saturating_sub(earlier.connect_errors),
            ambient_frames: self.ambient_frames.saturating_sub(earlier.ambient_frames),
            typing_sent: self.typing_sent.saturating_sub(earlier.typing_sent),
            ambient_deliveries: self
                .ambient_deliveries
                .saturating_sub(earlier.ambient_deliveries),
            rejoins: self.rejoins.saturating_sub(earlier.rejoins),
            error_codes: self
                .error_codes
                .iter()
                .filter_map(|(code, &n)| {
                    let new = n.saturating_sub(earlier.error_codes.get(code).copied().unwrap_or(0));
                    (new > 0).then(|| (code.clone(), new))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_difference_keeps_only_what_happened_in_between() {
        let shared = Shared::default();
        shared.error("rate_limited");
        shared.error("disconnected:eof");
        shared.stale.fetch_add(3, Ordering::Relaxed);
        let before = shared.snapshot();
        shared.error("rate_limited");
        shared.error("connect:refused");
        shared.disconnects.fetch_add(2, Ordering::Relaxed);
        shared.stale.fetch_add(1, Ordering::Relaxed);
        shared.typing_sent.fetch_add(4, Ordering::Relaxed);
        let window = &shared.snapshot() - &before;
        assert_eq!(
            window,
            Counters {
                stale: 1,
                disconnects: 2,
                connect_errors: 0,
                typing_sent: 4,
                error_codes: [("connect:refused".into(), 1), ("rate_limited".into(), 1)]
                    .into_iter()
                    .collect(),
                ..Counters::default()
            }
        );
        assert_eq!(&before - &before, Counters::default());
    }
}
