//! Where a reader of the event log is, as a pure state machine (`chat_core::replay`'s
//! subtlest part, table-tested here): which entries it hands on (not those behind the offset
//! it is at, stamped before its start time, or repeating an id it saw), and where a new
//! session attaches. Entries of a batch count provisionally until the sink has them.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::dedupe::RecentIds;
use crate::event::Event;
use crate::log_stream::{StartAt, TIME_MARGIN};

use super::{DEDUPE_WINDOW, WARM_UP};

/// What the cursor makes of one entry of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// A new event: to the sink.
    New,
    /// At an offset before the one the reader is at (the head of a chunk, or a batch the
    /// broker sends again): already handled.
    Behind,
    /// Stamped before the start time.
    BeforeStart,
    /// An id seen recently: a copy a gateway published again.
    Repeat,
}

impl Admit {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Behind => "behind",
            Self::BeforeStart => "before_start",
            Self::Repeat => "repeat",
        }
    }
}

/// Where a reader is in the log, as a pure state machine: what it admits, and where a new
/// session resumes. Entries of a batch are admitted provisionally; [`Cursor::commit`] makes
/// them count once the sink has them, [`Cursor::abort`] forgets them.
#[derive(Debug)]
pub(super) struct Cursor {
    /// Where the first session starts.
    start: StartAt,
    /// The offset after the last committed batch, where a new session resumes.
    next: Option<u64>,
    /// For a start at a time: events stamped before it are skipped, until one stamped
    /// [`TIME_MARGIN`] after it shows the reader is past the time by every clock.
    not_before: Option<DateTime<Utc>>,
    /// Ids of committed events, to drop republished copies.
    seen: RecentIds,
    /// The batch in hand: its last offset, its ids, whether it passed the start time.
    pending_last: Option<u64>,
    pending_ids: HashSet<Arc<str>>,
    pending_past_time: bool,
}

impl Cursor {
    pub(super) fn new(start: StartAt) -> Self {
        Self {
            start,
            next: None,
            not_before: match start {
                StartAt::Time(at) => Some(at),
                _ => None,
            },
            seen: RecentIds::new(DEDUPE_WINDOW),
            pending_last: None,
            pending_ids: HashSet::new(),
            pending_past_time: false,
        }
    }

    /// Where a session attaches: after the last committed batch, or at the start; a start
    /// at a stored offset attaches [`WARM_UP`] entries earlier, to remember their ids.
    pub(super) fn resume_at(&self) -> StartAt {
        match (self.next, self.start) {
            (Some(next), _) => StartAt::Offset(next),
            (None, StartAt::Offset(offset)) => StartAt::Offset(offset.saturating_sub(WARM_UP)),
            (None, start) => start,
        }
    }

    /// The lowest offset not yet handled.
    fn expected(&self) -> u64 {
        match (self.pending_last, self.next, self.start) {
            (Some(last), _, _) => last + 1,
            (None, Some(next), _) => next,
            (None, None, StartAt::Offset(offset)) => offset,
            (None, None, _) => 0,
        }
    }

    /// Decides about the event at `offset`. Every id read is remembered, also of the
    /// events it does not hand on, so that a later copy is known as one.
    pub(super) fn admit(&mut self, offset: u64, event: &Event) -> Admit {
        let fresh =
            !self.seen.contains(&event.id) && self.pending_ids.insert(Arc::from(event.id.as_str()));
        if offset < self.expected() {
            return Admit::Behind;
        }
        self.pending_last = Some(offset);
        if let (Some(at), false) = (self.not_before, self.pending_past_time) {
            if event.at < at {
                return Admit::BeforeStart;
            }
            if event.at >= at + TIME_MARGIN {
                self.pending_past_time = true;
            }
        }
        if fresh {
            Admit::New
        } else {
            Admit::Repeat
        }
    }

    /// Passes over an entry that is not an event.
    pub(super) fn skip(&mut self, offset: u64) {
        if offset >= self.expected() {
            self.pending_last = Some(offset);
        }
    }

    /// The batch in hand is handled.
    pub(super) fn commit(&mut self) {
        if let Some(last) = self.pending_last.take() {
            self.next = Some(last + 1);
        }
        for id in self.pending_ids.drain() {
            self.seen.first_time(&id);
        }
        if std::mem::take(&mut self.pending_past_time) {
            self.not_before = None;
        }
    }

    /// The batch in hand was not handled: forget it.
    pub(super) fn abort(&mut self) {
        self.pending_last = None;
        self.pending_ids.clear();
        self.pending_past_time = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn event(id: &str, at: &str) -> Event {
        let mut event = Event::new(
            EventKind::Message,
            "lobby",
            "alice",
            Some("hi".to_owned()),
            "gw-1",
        );
        event.id = id.to_owned();
        event.at = at.parse().unwrap();
        event
    }

    /// Feeds `(offset, id, at)` entries as one batch and commits it; returns the verdicts.
    fn batch(cursor: &mut Cursor, entries: &[(u64, &str, &str)]) -> Vec<Admit> {
        let verdicts = entries
            .iter()
            .map(|(offset, id, at)| cursor.admit(*offset, &event(id, at)))
            .collect();
        cursor.commit();
        verdicts
    }

    const T: &str = "2026-11-30T12:00:00Z";
    use Admit::*;

    #[test]
    fn a_reader_from_the_first_event_takes_each_offset_once_and_resumes_after_its_last_batch() {
        let mut cursor = Cursor::new(StartAt::First);
        assert_eq!(cursor.resume_at(), StartAt::First);
        assert_eq!(
            batch(&mut cursor, &[(0, "a", T), (1, "b", T), (2, "c", T)]),
            [New, New, New]
        );
        assert_eq!(cursor.resume_at(), StartAt::Offset(3));
        // The broker sends a chunk again from its head after a reconnect.
        assert_eq!(
            batch(&mut cursor, &[(1, "b", T), (2, "c", T), (3, "d", T)]),
            [Behind, Behind, New]
        );
        assert_eq!(cursor.resume_at(), StartAt::Offset(4));
    }

    #[test]
    fn a_copy_republished_under_the_same_id_is_dropped_in_the_batch_and_after_it() {
        let mut cursor = Cursor::new(StartAt::First);
        assert_eq!(
            batch(&mut cursor, &[(0, "a", T), (1, "a", T), (2, "b", T)]),
            [New, Repeat, New]
        );
        assert_eq!(batch(&mut cursor, &[(3, "b", T)]), [Repeat]);
        assert_eq!(cursor.resume_at(), StartAt::Offset(4));
    }

    #[test]
    fn a_batch_the_sink_never_took_is_read_again_in_full() {
        let mut cursor = Cursor::new(StartAt::First);
        batch(&mut cursor, &[(0, "a", T)]);
        assert_eq!(cursor.admit(1, &event("b", T)), New);
        assert_eq!(cursor.admit(2, &event("c", T)), New);
        cursor.abort();
        assert_eq!(cursor.resume_at(), StartAt::Offset(1));
        assert_eq!(
            batch(&mut cursor, &[(1, "b", T), (2, "c", T)]),
            [New, New],
            "neither an offset nor an id of the lost batch counts"
        );
    }

    #[test]
    fn a_reader_from_a_stored_offset_hands_on_nothing_before_it_and_no_copy_of_it() {
        let mut cursor = Cursor::new(StartAt::after(WARM_UP + 9));
        assert_eq!(
            cursor.resume_at(),
            StartAt::Offset(10),
            "attaches early to remember the ids before the offset"
        );
        assert_eq!(
            Cursor::new(StartAt::after(9)).resume_at(),
            StartAt::Offset(0)
        );
        let stored = WARM_UP + 9;
        assert_eq!(
            batch(
                &mut cursor,
                &[(10, "w", T), (stored - 1, "x", T), (stored, "y", T)]
            ),
            [Behind, Behind, Behind]
        );
        assert_eq!(
            cursor.resume_at(),
            StartAt::Offset(10),
            "nothing handed on yet: a reconnect warms up again"
        );
        assert_eq!(
            batch(&mut cursor, &[(stored + 1, "x", T), (stored + 2, "z", T)]),
            [Repeat, New],
            "a copy of an event the previous run handled is dropped"
        );
        assert_eq!(cursor.resume_at(), StartAt::Offset(stored + 3));
    }

    #[test]
    fn a_reader_from_a_time_skips_what_was_stamped_before_it_until_it_is_surely_past_it() {
        let start: DateTime<Utc> = T.parse().unwrap();
        let mut cursor = Cursor::new(StartAt::Time(start));
        assert_eq!(cursor.resume_at(), StartAt::Time(start));
        assert_eq!(
            batch(
                &mut cursor,
                &[
                    (0, "a", "2026-11-30T11:59:55Z"),
                    (1, "b", "2026-11-30T12:00:00Z"),
                    // Another gateway's clock is a little behind: still before the time.
                    (2, "c", "2026-11-30T11:59:59.500Z"),
                    (3, "d", "2026-11-30T12:00:03Z"),
                ]
            ),
            [BeforeStart, New, BeforeStart, New]
        );
        assert_eq!(cursor.resume_at(), StartAt::Offset(4));
        // Not yet surely past the time: the filter holds.
        assert_eq!(
            batch(
                &mut cursor,
                &[
                    (4, "e", "2026-11-30T12:00:05Z"),
                    (5, "f", "2026-11-30T11:59:00Z")
                ]
            ),
            [New, BeforeStart]
        );
        // Past it by the margin: from then on, no clock's stamp is held against an event.
        assert_eq!(
            batch(
                &mut cursor,
                &[
                    (6, "g", "2026-11-30T12:00:10Z"),
                    (7, "h", "2026-11-30T11:59:00Z")
                ]
            ),
            [New, New]
        );
        assert_eq!(
            batch(&mut cursor, &[(8, "i", "2026-11-30T11:58:00Z")]),
            [New]
        );
    }

    #[test]
    fn an_entry_that_is_not_an_event_is_passed_over_once() {
        let mut cursor = Cursor::new(StartAt::First);
        cursor.skip(0);
        assert_eq!(cursor.admit(1, &event("a", T)), New);
        cursor.commit();
        cursor.skip(2);
        cursor.commit();
        assert_eq!(cursor.resume_at(), StartAt::Offset(3));
    }
}
