//! The message projection: what a message looks like after the edits, deletions and
//! reactions that target it. The rules live here once, in [`check`]: a gateway checks a
//! request with them before publishing (against what the archive says of the target), and
//! the archiver applies them again when it folds each message ([`fold`]), so an action
//! that breaks a rule (an edit by someone else, a reaction to a deleted message) changes
//! nothing, whoever published it.
//!
//! [`fold`] is deterministic: it sorts a message's actions by time, then id, before
//! applying them, so the same events give the same state whatever order the broker
//! delivered them in, and an action seen twice counts once (by id).

use std::cmp::Ordering;

use chrono::{DateTime, Utc};

use crate::event::{Event, EventKind, ReactOp, Reaction};

/// Why an action on a message changes nothing; the message is shown to the requester.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("only the author of a message may edit it")]
    NotAuthor,
    #[error("only the author of a message, the room's owner or a moderator may delete it")]
    NotAllowedToDelete,
    #[error("the message was deleted")]
    Deleted,
    #[error("the message is in another room")]
    OtherRoom,
    #[error("a {0} event does not act on a message")]
    NotAnAction(&'static str),
}

/// What the rules need to know of the target message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The room the message was said in.
    pub room: &'a str,
    /// Its author: a verified id, or a guest's name.
    pub user: &'a str,
    /// Whether the author was a guest.
    pub guest: bool,
    /// Whether it was deleted.
    pub deleted: bool,
}

/// Whether `actor` (a user id or guest name, and its guest marking) wrote the message. In
/// open mode (guests) the same name is the same author; a guest never passes for a
/// verified user of the same id, nor the other way round.
pub fn is_author(target: &Target<'_>, user: &str, guest: bool) -> bool {
    target.user == user && target.guest == guest
}

/// The rules: whether `action` (an edit, delete or react) may act on `target`.
/// `privileged` says whether its author owns the room or moderates it at that moment.
pub fn check(target: &Target<'_>, action: &Event, privileged: bool) -> Result<(), Refusal> {
    if !action.kind.is_action() {
        return Err(Refusal::NotAnAction(action.kind.as_str()));
    }
    if target.room != action.room {
        return Err(Refusal::OtherRoom);
    }
    if target.deleted {
        return Err(Refusal::Deleted);
    }
    let author = is_author(target, &action.user, action.guest);
    match action.kind {
        EventKind::Edit if !author => Err(Refusal::NotAuthor),
        EventKind::Delete if !author && !privileged => Err(Refusal::NotAllowedToDelete),
        _ => Ok(()),
    }
}

/// A message's state after its actions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageState {
    /// The current text; `None` once deleted.
    pub text: Option<String>,
    /// How many edits were applied.
    pub edits: u32,
    /// When the latest applied edit was made.
    pub edited_at: Option<DateTime<Utc>>,
    /// Whether the message was deleted: then it has no text, no edit time, no reactions.
    pub deleted: bool,
    /// Reactions, by key in the order keys were first used, users in the order they reacted.
    pub reactions: Vec<Reaction>,
}

impl MessageState {
    /// The projection fields of `message` (an event of the archive) set to this state.
    pub fn project(&self, message: &mut Event) {
        message.text.clone_from(&self.text);
        message.edited_at = self.edited_at;
        message.deleted = self.deleted;
        message.reactions.clone_from(&self.reactions);
    }
}

/// One action to fold, with whether its author was privileged (owner or moderator of the
/// room) when it was made: only a deletion by someone else needs it.
#[derive(Debug, Clone)]
pub struct Action<'a> {
    /// The `edit`, `delete` or `react` event.
    pub event: &'a Event,
    /// Whether the author owned or moderated the room at the time.
    pub privileged: bool,
}

/// The order actions are applied in: by time, then by id.
pub fn action_order(a: &Event, b: &Event) -> Ordering {
    a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id))
}

/// Folds `actions` (those targeting `message`, in any order, repeats allowed) into the
/// message's state. Actions the rules refuse at their turn change nothing.
pub fn fold(message: &Event, actions: &[Action<'_>]) -> MessageState {
    let mut sorted: Vec<&Action<'_>> = actions.iter().collect();
    sorted.sort_by(|a, b| action_order(a.event, b.event));
    sorted.dedup_by(|a, b| a.event.id == b.event.id);
    let mut state = MessageState {
        text: message.text.clone(),
        ..MessageState::default()
    };
    for action in sorted {
        let target = Target {
            room: &message.room,
            user: &message.user,
            guest: message.guest,
            deleted: state.deleted,
        };
        let event = action.event;
        if event.target.as_deref() != Some(message.id.as_str())
            || check(&target, event, action.privileged).is_err()
        {
            continue;
        }
        match event.kind {
            EventKind::Edit => {
                state.text.clone_from(&event.text);
                state.edits += 1;
                state.edited_at = Some(event.at);
            }
            EventKind::Delete => {
                state = MessageState {
                    deleted: true,
                    ..MessageState::default()
                };
            }
            EventKind::React => react(&mut state.reactions, event),
            _ => {}
        }
    }
    state
}

fn react(reactions: &mut Vec<Reaction>, event: &Event) {
    let (Some(key), Some(op)) = (event.key.as_deref(), event.op) else {
        return;
    };
    let position = reactions.iter().position(|r| r.key == key);
    match (op, position) {
        (ReactOp::Add, None) => reactions.push(Reaction {
            key: key.to_owned(),
            count: 1,
            users: vec![event.user.clone()],
        }),
        (ReactOp::Add, Some(i)) => {
            let reaction = &mut reactions[i];
            if !reaction.users.contains(&event.user) {
                reaction.users.push(event.user.clone());
                reaction.count += 1;
            }
        }
        (ReactOp::Remove, Some(i)) => {
            let reaction = &mut reactions[i];
            if let Some(j) = reaction.users.iter().position(|u| *u == event.user) {
                reaction.users.remove(j);
                reaction.count -= 1;
            }
            if reaction.users.is_empty() {
                reactions.remove(i);
            }
        }
        (ReactOp::Remove, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn message(user: &str) -> Event {
        let mut e = Event::new(
            EventKind::Message,
            "lobby",
            user,
            Some("hello".into()),
            "gw",
        );
        e.id = "m".into();
        e.at = at(0);
        e
    }

    fn action(kind: EventKind, user: &str, ms: i64, id: &str) -> Event {
        let mut e = Event::new(kind, "lobby", user, None, "gw");
        e.id = id.into();
        e.at = at(ms);
        e.target = Some("m".into());
        e
    }

    fn edit(user: &str, ms: i64, id: &str, text: &str) -> Event {
        let mut e = action(EventKind::Edit, user, ms, id);
        e.text = Some(text.into());
        e
    }

    fn react(user: &str, ms: i64, id: &str, key: &str, op: ReactOp) -> Event {
        let mut e = action(EventKind::React, user, ms, id);
        e.key = Some(key.into());
        e.op = Some(op);
        e
    }

    fn plain(events: &[Event]) -> Vec<Action<'_>> {
        events
            .iter()
            .map(|event| Action {
                event,
                privileged: false,
            })
            .collect()
    }

    #[test]
    fn the_latest_edit_by_the_author_wins_and_others_edits_change_nothing() {
        let events = [
            edit("alice", 20, "e2", "second"),
            edit("alice", 10, "e1", "first"),
            edit("mallory", 30, "e3", "pwned"),
        ];
        let state = fold(&message("alice"), &plain(&events));
        assert_eq!(state.text.as_deref(), Some("second"));
        assert_eq!(state.edits, 2);
        assert_eq!(state.edited_at, Some(at(20)));
    }

    #[test]
    fn a_guest_is_not_the_verified_user_of_the_same_name() {
        let mut by_verified = edit("alice", 10, "e1", "x");
        by_verified.guest = false;
        let state = fold(&message("alice"), &plain(&[by_verified]));
        assert_eq!(state.text.as_deref(), Some("hello"));
    }

    #[test]
    fn a_deletion_leaves_a_tombstone_and_nothing_acts_on_it_afterwards() {
        let events = [
            react("bob", 5, "r1", "👍", ReactOp::Add),
            edit("alice", 10, "e1", "first"),
            action(EventKind::Delete, "alice", 20, "d1"),
            edit("alice", 30, "e2", "after"),
            react("bob", 40, "r2", "🎉", ReactOp::Add),
        ];
        let state = fold(&message("alice"), &plain(&events));
        assert_eq!(
            state,
            MessageState {
                deleted: true,
                ..MessageState::default()
            }
        );
    }

    #[test]
    fn only_the_author_or_a_privileged_user_deletes() {
        let by_bob = action(EventKind::Delete, "bob", 10, "d1");
        assert!(!fold(&message("alice"), &plain(std::slice::from_ref(&by_bob))).deleted);
        let privileged = [Action {
            event: &by_bob,
            privileged: true,
        }];
        assert!(fold(&message("alice"), &privileged).deleted);
    }

    #[test]
    fn reactions_count_each_user_once_per_key_in_first_use_order() {
        let events = [
            react("bob", 10, "r1", "👍", ReactOp::Add),
            react("carol", 11, "r2", "🎉", ReactOp::Add),
            react("carol", 12, "r3", "👍", ReactOp::Add),
            react("bob", 13, "r4", "👍", ReactOp::Add),
            react("carol", 14, "r5", "🎉", ReactOp::Remove),
            react("dave", 15, "r6", "❤️", ReactOp::Remove),
        ];
        let state = fold(&message("alice"), &plain(&events));
        assert_eq!(
            state.reactions,
            vec![Reaction {
                key: "👍".into(),
                count: 2,
                users: vec!["bob".into(), "carol".into()],
            }]
        );
    }

    #[test]
    fn any_delivery_order_and_any_repeat_give_the_same_state() {
        let events = vec![
            edit("alice", 10, "e1", "one"),
            react("bob", 10, "r1", "👍", ReactOp::Add),
            react("bob", 10, "r0", "👍", ReactOp::Remove),
            edit("alice", 20, "e2", "two"),
            react("carol", 25, "r2", "🎉", ReactOp::Add),
        ];
        let expected = fold(&message("alice"), &plain(&events));
        assert_eq!(expected.text.as_deref(), Some("two"));
        let mut shuffled = events.clone();
        for round in 0..20 {
            shuffled.rotate_left(round % events.len());
            shuffled.swap(0, round % events.len());
            let mut twice = shuffled.clone();
            twice.extend(events.iter().cloned());
            assert_eq!(fold(&message("alice"), &plain(&twice)), expected);
        }
    }

    #[test]
    fn an_action_from_another_room_or_on_another_target_is_ignored() {
        let mut elsewhere = edit("alice", 10, "e1", "x");
        elsewhere.room = "other".into();
        let mut other_target = edit("alice", 11, "e2", "y");
        other_target.target = Some("n".into());
        let state = fold(&message("alice"), &plain(&[elsewhere, other_target]));
        assert_eq!(state.text.as_deref(), Some("hello"));
        assert_eq!(state.edits, 0);
    }

    #[test]
    fn the_gateway_check_refuses_what_the_fold_ignores() {
        let target = Target {
            room: "lobby",
            user: "alice",
            guest: true,
            deleted: false,
        };
        let by_bob = edit("bob", 1, "e", "x");
        assert_eq!(check(&target, &by_bob, true), Err(Refusal::NotAuthor));
        let delete = action(EventKind::Delete, "bob", 1, "d");
        assert_eq!(
            check(&target, &delete, false),
            Err(Refusal::NotAllowedToDelete)
        );
        assert_eq!(check(&target, &delete, true), Ok(()));
        let gone = Target {
            deleted: true,
            ..target
        };
        let thumbs = react("bob", 1, "r", "👍", ReactOp::Add);
        assert_eq!(check(&gone, &thumbs, false), Err(Refusal::Deleted));
        let elsewhere = Target {
            room: "other",
            ..target
        };
        assert_eq!(check(&elsewhere, &thumbs, false), Err(Refusal::OtherRoom));
    }
}
