//! What a benchmark message says. Its text carries the window it belongs to, the sender,
//! the sender's sequence number, the send time and the room, so a receiver can compute
//! latency on the same clock and count loss, duplicates and stale deliveries exactly,
//! whatever system carried it. The text is plain ASCII, so no system rewrites it.

use std::fmt::Write;

/// Every benchmark text starts with this.
pub const PREFIX: &str = "bench:";

/// The fields a benchmark message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The measured window (step) the message was sent in.
    pub window: u32,
    pub sender: u32,
    pub seq: u64,
    /// Send time, µs on [`crate::stats::now_us`]'s clock.
    pub sent_us: u64,
    /// Room index (the room name itself is the system's business).
    pub room: u32,
}

impl Marker {
    /// The text: the fields, then `x` padding up to `size` bytes in all (never shorter than
    /// the fields themselves).
    pub fn encode(&self, size: usize) -> String {
        let mut text = String::with_capacity(size.max(64));
        let _ = write!(
            text,
            "{PREFIX}{}:{}:{}:{}:{}:",
            self.window, self.sender, self.seq, self.sent_us, self.room
        );
        while text.len() < size {
            text.push('x');
        }
        text
    }

    /// Finds a marker anywhere in `frame` (a whole websocket frame or broker body), or
    /// `None` if the frame carries no benchmark message.
    pub fn find(frame: &str) -> Option<Self> {
        let start = frame.find(PREFIX)? + PREFIX.len();
        let mut fields = frame[start..].splitn(6, ':');
        let mut next = || fields.next()?.parse::<u64>().ok();
        Some(Self {
            window: u32::try_from(next()?).ok()?,
            sender: u32::try_from(next()?).ok()?,
            seq: next()?,
            sent_us: next()?,
            room: u32::try_from(next()?).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_survives_any_frame_around_it() {
        let m = Marker {
            window: 3,
            sender: 17,
            seq: 12_345,
            sent_us: 987_654_321,
            room: 199,
        };
        let text = m.encode(100);
        assert_eq!(text.len(), 100);
        assert!(text.ends_with("xx"));
        let chat = format!(r#"{{"type":"event","event":{{"v":1,"text":"{text}","at":"…"}}}}"#);
        assert_eq!(Marker::find(&chat), Some(m));
        let socketio = format!(r#"42["message",{{"text":"{text}","date":"2026"}}]"#);
        assert_eq!(Marker::find(&socketio), Some(m));
        assert!(m.encode(10).len() > 10, "never truncated");
    }

    #[test]
    fn frames_without_a_marker_are_not_messages() {
        assert_eq!(Marker::find(r#"{"type":"ack","id":"x"}"#), None);
        assert_eq!(Marker::find("bench:1:2:x:4:5:"), None);
    }
}
