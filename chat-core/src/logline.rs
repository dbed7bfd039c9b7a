//! The chat log's line format, shared by the logger (which writes it) and the archiver's
//! `history` command (which prints archived events the same way), so a reader sees one
//! format wherever the chat is shown as text.
//!
//! One event is always exactly one line: newlines and every other control or line-separator
//! character in user text are escaped (`\n`, `\\`, `\u{…}`), so `tail -f` and `grep` work
//! and no user can forge a line that looks like someone else's.

use std::fmt::Write;

use crate::event::{format_time, Event, EventKind};

/// Formats one event as a log line, without the trailing newline:
/// `2026-11-28T15:03:15.123Z #lobby <alice> hello` or `… #lobby * alice joined`.
pub fn format(event: &Event) -> String {
    let mut line = String::with_capacity(64 + event.text.as_deref().map_or(0, str::len));
    line.push_str(&format_time(&event.at));
    line.push_str(" #");
    line.push_str(&event.room);
    match event.kind {
        EventKind::Message => {
            line.push_str(" <");
            escape_into(&mut line, &event.user);
            line.push_str("> ");
            escape_into(&mut line, event.text.as_deref().unwrap_or_default());
        }
        EventKind::Join | EventKind::Leave => {
            line.push_str(" * ");
            escape_into(&mut line, &event.user);
            line.push_str(if event.kind == EventKind::Join {
                " joined"
            } else {
                " left"
            });
        }
    }
    line
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, text: Option<&str>) -> Event {
        let mut e = Event::new(kind, "lobby", "alice", text.map(str::to_owned), "gw");
        e.at = "2026-11-28T15:03:15.123Z".parse().unwrap();
        e
    }

    #[test]
    fn messages_and_notices_have_the_documented_form() {
        assert_eq!(
            format(&event(EventKind::Message, Some("hello"))),
            "2026-11-28T15:03:15.123Z #lobby <alice> hello"
        );
        assert_eq!(
            format(&event(EventKind::Join, None)),
            "2026-11-28T15:03:15.123Z #lobby * alice joined"
        );
        assert_eq!(
            format(&event(EventKind::Leave, None)),
            "2026-11-28T15:03:15.123Z #lobby * alice left"
        );
    }

    #[test]
    fn one_event_never_spans_two_lines() {
        let line = format(&event(
            EventKind::Message,
            Some("a\nb\r\n2026 #lobby <mallory> fake\u{2028}x\\n"),
        ));
        assert!(!line.contains('\n') && !line.contains('\r') && !line.contains('\u{2028}'));
        assert!(line.ends_with(r"a\nb\r\n2026 #lobby <mallory> fake\u{2028}x\\n"));
    }
}
