//! The merge that makes a join gap-free, as pure functions. While a joining room's history
//! loads, the writer holds the room's live events back in a [`JoinBuffer`]. The archive
//! trails the exchange a little, so the history may end before events this gateway already
//! received: [`received_after`] finds those in the gateway's memory of recent events, from
//! the [`anchor`] on. After the history the client gets [`after_history`]: those events,
//! then the buffered ones, each once and without what the history already had. Kept apart
//! from the writer so that every case (duplicates, reordering, `since`, a lagging history,
//! an overflowing buffer) is tested here and not only end to end.

use std::collections::HashSet;
use std::sync::Arc;

use crate::rooms::SharedEvent;

/// Most live events buffered for a room while its history is fetched.
pub(crate) const MAX_JOIN_BUFFER: usize = 10_000;

/// A room's live events held back while its history loads, at most `LIMIT`.
#[derive(Debug)]
pub(crate) struct JoinBuffer<const LIMIT: usize = MAX_JOIN_BUFFER> {
    events: Vec<Arc<SharedEvent>>,
}

impl<const LIMIT: usize> JoinBuffer<LIMIT> {
    pub(crate) fn new() -> Self {
        Self { events: Vec::new() }
    }

    /// Keeps `event` for after the history. False when the buffer is full: the event is
    /// dropped and the client can no longer be caught up without a gap, so the caller
    /// disconnects it (it resumes with `since`).
    #[must_use]
    pub(crate) fn push(&mut self, event: Arc<SharedEvent>) -> bool {
        if self.events.len() < LIMIT {
            self.events.push(event);
            true
        } else {
            false
        }
    }

    /// The buffered events, in the order they arrived.
    pub(crate) fn into_events(self) -> Vec<Arc<SharedEvent>> {
        self.events
    }
}

/// Where the events the history may lack begin: after the history's last event or, when
/// the history is empty, after the client's `since`. `None`: nothing to look for.
pub(crate) fn anchor<'a>(history_last: Option<&'a str>, since: Option<&'a str>) -> Option<&'a str> {
    history_last.or(since)
}

/// The events of `room` among `latest` (this gateway's recent events, every room, oldest
/// first) that came after the event `after`. `None` if `after` is not among them: for a
/// history just fetched, the archive, which trails the exchange by far less than the
/// memory holds, had them all; a reused one is not used then (`link::reuse`).
pub(crate) fn received_after<'a>(
    latest: impl IntoIterator<Item = &'a Arc<SharedEvent>>,
    room: &str,
    after: &str,
) -> Option<Vec<Arc<SharedEvent>>> {
    let mut latest = latest.into_iter();
    if !latest.by_ref().any(|event| &*event.id == after) {
        return None;
    }
    Some(
        latest
            .filter(|event| &*event.room == room)
            .cloned()
            .collect(),
    )
}

/// Whether a join's history reaches past the moment its room was routed to this gateway.
/// With routing by room (`ROUTE_BY_ROOM`), a gateway receives a room's events only from
/// its binding on, which it made moments before the join asked the archive; the archive
/// trails the exchange, so the history may still lack events published just before the
/// binding, which the gateway never received either: a gap. The history proves it has them
/// when it reaches an event this gateway received at or after `mark` (the position its
/// memory had when the room was bound): the archive stores events in the order its queue
/// got them, which for events published before and after a binding is that order. The
/// history reaches such an event when its `anchor` (its last event, or the `since` it
/// followed, [`anchor`]) is in memory at or after `mark`. If the memory has moved past
/// `mark` altogether (`oldest` is the position of its oldest event), the binding is older
/// than the last [`crate::rooms`] `RECENT_EVENTS` events: as without routing, the archive
/// is taken to have caught up with it.
pub(crate) fn reaches<'a>(
    oldest: u64,
    latest: impl IntoIterator<Item = &'a Arc<SharedEvent>>,
    anchor: Option<&str>,
    mark: u64,
) -> bool {
    if mark < oldest {
        return true;
    }
    let Some(anchor) = anchor else {
        return false;
    };
    latest
        .into_iter()
        .position(|event| &*event.id == anchor)
        .is_some_and(|at| oldest + at as u64 >= mark)
}

/// What follows a join's history: the `unarchived` events (from [`received_after`]), then
/// the `buffered` live ones, leaving out those whose id the history has and every repeat.
pub(crate) fn after_history(
    history_ids: &[Box<str>],
    unarchived: Vec<Arc<SharedEvent>>,
    buffered: Vec<Arc<SharedEvent>>,
) -> Vec<Arc<SharedEvent>> {
    if unarchived.is_empty() && buffered.is_empty() {
        return Vec::new();
    }
    let history: HashSet<&str> = history_ids.iter().map(|id| &**id).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut after = Vec::new();
    for event in unarchived.iter().chain(&buffered) {
        if !history.contains(&*event.id) && seen.insert(&event.id) {
            after.push(event.clone());
        }
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: &str, id: &str) -> Arc<SharedEvent> {
        Arc::new(SharedEvent {
            room: Arc::from(room),
            id: id.into(),
            frame: bytes::Bytes::copy_from_slice(id.as_bytes()),
            acts: false,
        })
    }

    /// One join in room `lobby`, as the history task and the writer see it.
    struct Case {
        what: &'static str,
        /// Ids of the history the archive answered with.
        history: &'static [&'static str],
        /// The client's `since`.
        since: Option<&'static str>,
        /// The gateway's memory of recent events: (room, id), oldest first.
        latest: &'static [(&'static str, &'static str)],
        /// Live events of `lobby` buffered while the history loaded.
        buffered: &'static [&'static str],
        /// What the client gets after the history.
        then: &'static [&'static str],
    }

    const CASES: &[Case] = &[
        Case {
            what: "a complete history is followed by nothing",
            history: &["a", "b"],
            since: None,
            latest: &[("lobby", "a"), ("lobby", "b")],
            buffered: &[],
            then: &[],
        },
        Case {
            what: "buffered events the history has are dropped",
            history: &["a", "b", "c"],
            since: None,
            latest: &[("lobby", "a"), ("lobby", "b"), ("lobby", "c")],
            buffered: &["b", "c", "d"],
            then: &["d"],
        },
        Case {
            what: "a repeated live event is sent once",
            history: &["a"],
            since: None,
            latest: &[("lobby", "a")],
            buffered: &["b", "b", "c"],
            then: &["b", "c"],
        },
        Case {
            what: "buffered events in another order than the history's are still dropped",
            history: &["a", "b"],
            since: None,
            latest: &[("lobby", "a"), ("lobby", "b")],
            buffered: &["b", "a", "c"],
            then: &["c"],
        },
        Case {
            what: "a lagging history is completed from memory, then the buffer, each once",
            history: &["a"],
            since: None,
            latest: &[("lobby", "a"), ("lobby", "b"), ("lobby", "c")],
            buffered: &["c", "d"],
            then: &["b", "c", "d"],
        },
        Case {
            what: "the events remembered after the history keep the order they arrived in",
            history: &["a"],
            since: None,
            latest: &[("lobby", "a"), ("lobby", "c"), ("lobby", "b")],
            buffered: &["b"],
            then: &["c", "b"],
        },
        Case {
            what: "other rooms' events are never sent",
            history: &["a"],
            since: None,
            latest: &[("lobby", "a"), ("kitchen", "x"), ("lobby", "b")],
            buffered: &[],
            then: &["b"],
        },
        Case {
            what: "an empty history after since is completed from since on",
            history: &[],
            since: Some("s"),
            latest: &[("lobby", "r"), ("lobby", "s"), ("lobby", "t")],
            buffered: &["u"],
            then: &["t", "u"],
        },
        Case {
            what: "a history after since is completed from its own end, not from since",
            history: &["t"],
            since: Some("s"),
            latest: &[("lobby", "s"), ("lobby", "t"), ("lobby", "u")],
            buffered: &[],
            then: &["u"],
        },
        Case {
            what: "a since the gateway no longer remembers adds nothing from memory",
            history: &[],
            since: Some("old"),
            latest: &[("lobby", "a"), ("lobby", "b")],
            buffered: &["c"],
            then: &["c"],
        },
        Case {
            what: "a history ending before the gateway's memory adds nothing from memory",
            history: &["old"],
            since: None,
            latest: &[("lobby", "a"), ("lobby", "b")],
            buffered: &["b", "c"],
            then: &["b", "c"],
        },
        Case {
            what: "a new room without since gets only the buffered events",
            history: &[],
            since: None,
            latest: &[("lobby", "a")],
            buffered: &["b"],
            then: &["b"],
        },
    ];

    #[test]
    fn a_join_sends_each_event_after_its_history_once_and_in_order() {
        for case in CASES {
            let latest: Vec<_> = case
                .latest
                .iter()
                .map(|(room, id)| event(room, id))
                .collect();
            let unarchived = anchor(case.history.last().copied(), case.since)
                .and_then(|after| received_after(&latest, "lobby", after))
                .unwrap_or_default();
            let buffered = case.buffered.iter().map(|id| event("lobby", id)).collect();
            let history: Vec<Box<str>> = case.history.iter().map(|id| (*id).into()).collect();
            let sent: Vec<_> = after_history(&history, unarchived, buffered)
                .iter()
                .map(|event| event.id.to_string())
                .collect();
            assert_eq!(sent, case.then, "{}", case.what);
        }
    }

    #[test]
    fn a_history_reaches_a_routed_room_only_once_it_has_an_event_received_since_the_binding() {
        // The memory holds positions 10..14: a (10), b (11), c (12), d (13); the room was
        // bound when the next position was `mark`.
        let latest: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| event("lobby", id))
            .collect();
        let cases: &[(&str, Option<&str>, u64, bool)] = &[
            (
                "ends at an event received after the binding",
                Some("c"),
                12,
                true,
            ),
            (
                "ends at the first event received after it",
                Some("b"),
                11,
                true,
            ),
            (
                "ends before the binding: the archive may lag",
                Some("a"),
                11,
                false,
            ),
            (
                "ends at an event this gateway never received",
                Some("x"),
                11,
                false,
            ),
            (
                "is empty, without since: nothing proves it",
                None,
                11,
                false,
            ),
            (
                "binding older than the memory: as without routing",
                None,
                9,
                true,
            ),
            (
                "binding older than the memory, unknown anchor",
                Some("x"),
                3,
                true,
            ),
            (
                "binding just now, nothing received since",
                Some("d"),
                14,
                false,
            ),
        ];
        for (what, anchor, mark, reached) in cases {
            assert_eq!(reaches(10, &latest, *anchor, *mark), *reached, "{what}");
        }
    }

    #[test]
    fn a_full_join_buffer_refuses_the_next_event_so_the_caller_kicks() {
        let mut buffer = JoinBuffer::<2>::new();
        assert!(buffer.push(event("lobby", "a")));
        assert!(buffer.push(event("lobby", "b")));
        assert!(!buffer.push(event("lobby", "c")), "over the limit");
        let kept: Vec<_> = buffer
            .into_events()
            .iter()
            .map(|e| e.id.to_string())
            .collect();
        assert_eq!(kept, ["a", "b"], "the events before the overflow are kept");
    }

    #[test]
    fn the_default_join_buffer_holds_max_join_buffer_events() {
        let mut buffer = JoinBuffer::<MAX_JOIN_BUFFER>::new();
        let shared = event("lobby", "a");
        assert!((0..MAX_JOIN_BUFFER).all(|_| buffer.push(shared.clone())));
        assert!(!buffer.push(shared));
    }
}
