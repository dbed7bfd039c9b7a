//! The chat log's line format, shared by the logger (which writes it) and the archiver's
//! `history` command (which prints archived events the same way), so a reader sees one
//! format wherever the chat is shown as text.
//!
//! One event is always exactly one line: newlines and every other control or line-separator
//! character in user text are escaped (`\n`, `\\`, `\u{…}`), so `tail -f` and `grep` work
//! and no user can forge a line that looks like someone else's.

use std::fmt::Write;

use crate::event::{format_time, Event, EventKind, ReactOp};

/// Formats one event as a log line, without the trailing newline:
/// `2026-11-28T15:03:15.123Z #lobby <alice> hello`, `… #lobby * ~bob joined` (a guest),
/// `… #board * alice created the room (private)`, `… #board * alice added bob`,
/// `… #lobby * alice edited <id>: new text`, `… #lobby * alice deleted <id> (reason)`,
/// `… #lobby * bob reacted 👍 to <id>`, `… #lobby * bob took back 👍 from <id>`,
/// `… #board * alice made bob a moderator`, `… #board * alice took moderator from bob`.
pub fn format(event: &Event) -> String {
    let mut line = String::with_capacity(64 + event.text.as_deref().map_or(0, str::len));
    line.push_str(&format_time(&event.at));
    line.push_str(" #");
    line.push_str(&event.room);
    if event.kind == EventKind::Message {
        line.push_str(" <");
        speaker_into(&mut line, event);
        line.push_str("> ");
        escape_into(&mut line, event.text.as_deref().unwrap_or_default());
        return line;
    }
    line.push_str(" * ");
    speaker_into(&mut line, event);
    match event.kind {
        EventKind::Message => {}
        EventKind::Join => line.push_str(" joined"),
        EventKind::Leave => line.push_str(" left"),
        EventKind::RoomCreated => {
            line.push_str(" created the room (");
            line.push_str(event.visibility.map_or("public", |v| v.as_str()));
            line.push(')');
        }
        EventKind::MemberAdded | EventKind::MemberRemoved => {
            line.push_str(if event.kind == EventKind::MemberAdded {
                " added "
            } else {
                " removed "
            });
            escape_into(&mut line, event.member.as_deref().unwrap_or_default());
        }
        EventKind::Edit => {
            line.push_str(" edited ");
            escape_into(&mut line, event.target.as_deref().unwrap_or_default());
            line.push_str(": ");
            escape_into(&mut line, event.text.as_deref().unwrap_or_default());
        }
        EventKind::Delete => {
            line.push_str(" deleted ");
            escape_into(&mut line, event.target.as_deref().unwrap_or_default());
            if let Some(reason) = &event.reason {
                line.push_str(" (");
                escape_into(&mut line, reason);
                line.push(')');
            }
        }
        EventKind::React => {
            let (verb, preposition) = match event.op {
                Some(ReactOp::Remove) => (" took back ", " from "),
                _ => (" reacted ", " to "),
            };
            line.push_str(verb);
            escape_into(&mut line, event.key.as_deref().unwrap_or_default());
            line.push_str(preposition);
            escape_into(&mut line, event.target.as_deref().unwrap_or_default());
        }
        EventKind::RoleGranted | EventKind::RoleRevoked => {
            let role = event.role.map_or("moderator", |r| r.as_str());
            if event.kind == EventKind::RoleGranted {
                line.push_str(" made ");
                escape_into(&mut line, event.member.as_deref().unwrap_or_default());
                line.push_str(" a ");
                line.push_str(role);
            } else {
                line.push_str(" took ");
                line.push_str(role);
                line.push_str(" from ");
                escape_into(&mut line, event.member.as_deref().unwrap_or_default());
            }
        }
    }
    line
}

/// The speaker's id, `~`-prefixed for a guest.
fn speaker_into(line: &mut String, event: &Event) {
    if event.guest {
        line.push('~');
    }
    escape_into(line, &event.user);
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
        let mut e =
            Event::new(kind, "lobby", "alice", text.map(str::to_owned), "gw").verified("Alice");
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
        let mut created = event(EventKind::RoomCreated, None);
        created.visibility = Some(crate::event::Visibility::Private);
        assert_eq!(
            format(&created),
            "2026-11-28T15:03:15.123Z #lobby * alice created the room (private)"
        );
        let mut added = event(EventKind::MemberAdded, None);
        added.member = Some("bob".into());
        assert_eq!(
            format(&added),
            "2026-11-28T15:03:15.123Z #lobby * alice added bob"
        );
    }

    #[test]
    fn edits_deletions_reactions_and_roles_have_the_documented_form() {
        let mut edit = event(EventKind::Edit, Some("fixed\ntypo"));
        edit.target = Some("m-1".into());
        assert_eq!(
            format(&edit),
            r"2026-11-28T15:03:15.123Z #lobby * alice edited m-1: fixed\ntypo"
        );
        let mut delete = event(EventKind::Delete, None);
        delete.target = Some("m-1".into());
        assert_eq!(
            format(&delete),
            "2026-11-28T15:03:15.123Z #lobby * alice deleted m-1"
        );
        delete.reason = Some("spam".into());
        assert!(format(&delete).ends_with("* alice deleted m-1 (spam)"));
        let mut react = event(EventKind::React, None);
        react.target = Some("m-1".into());
        react.key = Some("👍".into());
        react.op = Some(ReactOp::Add);
        assert!(format(&react).ends_with("* alice reacted 👍 to m-1"));
        react.op = Some(ReactOp::Remove);
        assert!(format(&react).ends_with("* alice took back 👍 from m-1"));
        let mut granted = event(EventKind::RoleGranted, None);
        granted.member = Some("bob".into());
        granted.role = Some(crate::event::Role::Moderator);
        assert!(format(&granted).ends_with("* alice made bob a moderator"));
        granted.kind = EventKind::RoleRevoked;
        assert!(format(&granted).ends_with("* alice took moderator from bob"));
    }

    #[test]
    fn a_guest_is_marked_so_it_cannot_pass_for_a_verified_user() {
        let mut guest = event(EventKind::Message, Some("hi"));
        guest.guest = true;
        guest.name = None;
        assert_eq!(
            format(&guest),
            "2026-11-28T15:03:15.123Z #lobby <~alice> hi"
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
