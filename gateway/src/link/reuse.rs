//! Recent history replies, kept for the joins that follow: in a room this gateway serves,
//! every join asks the archive the same question (the room's latest history), and each
//! answer costs two broker messages, an archive query and a JSON round trip, about a
//! third of a join's CPU (BENCHMARKS.md, "Connect and join"). Single flight shares an
//! answer among the joins asking at once; this keeps it for a moment after it came
//! (`HISTORY_REUSE_MS`, a second by default), for the joins that follow.
//!
//! A kept reply is as good as a fresh one for the same reason single flight is sound: a
//! join does not need an answer computed after it registered, because what the gateway
//! received after the history's last event is added from its memory of recent events
//! (`connection::catch_up`). That holds only while every event of the room published since
//! the reply reached this gateway, so a reply is kept per broker session (a new session
//! starts with none: events may have been missed in between) and only while its room stays
//! bound (an unbind forgets the room's replies, and a reply fetched across an unbind is not
//! kept: see [`Recent::ticket`]). The join then uses a kept reply only if its last event is
//! still in that memory, which is what makes the events after it known, and if none of
//! those edits, deletes or reacts to a message: the archive's history shows each message
//! as it is now (a deleted one without its text), a kept one as it was
//! (`connection::history`). Otherwise it asks the archive, as without reuse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::history::HistoryRequest;
use tokio::time::Instant;

use super::page::Page;

/// Most replies kept at once: a storm into many distinct rooms gains nothing from reuse
/// (each room is asked once anyway) and must not hold thousands of histories. A kept
/// reply is a [`Page`]: its events encoded as JSON (a few hundred bytes each), their ids
/// and their messages' fingerprints; at 50 events, some tens of KB at most per reply.
const MOST_KEPT: usize = 256;

/// One session's recent replies.
#[derive(Debug)]
pub(super) struct Recent {
    /// How long a reply answers further joins (`HISTORY_REUSE_MS`; zero: none is kept).
    /// Short: a reused history is that much older, and what came since follows it as
    /// catch-up events instead of being part of it.
    reuse_for: Duration,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// Counts the unbinds: a reply is kept only if none happened while it was fetched.
    epoch: u64,
    replies: HashMap<HistoryRequest, (Arc<Page>, Instant)>,
}

impl Recent {
    pub(super) fn new(reuse_for: Duration) -> Self {
        Self {
            reuse_for,
            kept: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Taken before a request is sent, and handed to [`Recent::keep`] with its reply: a
    /// room unbound meanwhile may have missed events the reply's follow-up relies on.
    pub(super) fn ticket(&self) -> u64 {
        self.lock().epoch
    }

    /// Keeps a reply for the joins that follow, unless an unbind happened since `ticket`.
    /// Only latest-history replies with at least one event are kept: an empty history has
    /// no last event to find the events after it by, and a `since` is a client's own.
    pub(super) fn keep(&self, ticket: u64, request: &HistoryRequest, reply: &Arc<Page>) {
        if self.reuse_for.is_zero()
            || request.since.is_some()
            || reply.last_id().is_none()
            || reply.since_error.is_some()
        {
            return;
        }
        let mut kept = self.lock();
        if kept.epoch != ticket {
            return;
        }
        if kept.replies.len() >= MOST_KEPT {
            let reuse_for = self.reuse_for;
            kept.replies.retain(|_, (_, at)| at.elapsed() < reuse_for);
            if kept.replies.len() >= MOST_KEPT {
                return;
            }
        }
        kept.replies
            .insert(request.clone(), (reply.clone(), Instant::now()));
    }

    /// A reply to `request` kept less than `HISTORY_REUSE_MS` ago.
    pub(super) fn get(&self, request: &HistoryRequest) -> Option<Arc<Page>> {
        let mut kept = self.lock();
        let (reply, at) = kept.replies.get(request)?;
        if at.elapsed() < self.reuse_for {
            return Some(reply.clone());
        }
        kept.replies.remove(request);
        None
    }

    /// The room's binding is gone: its events no longer reach this gateway, so no reply of
    /// it may be reused, nor kept from a request sent before now. Called under the room's
    /// binding lock, before a join can bind it again.
    pub(super) fn forget(&self, room: &str) {
        let mut kept = self.lock();
        kept.epoch += 1;
        kept.replies.retain(|request, _| request.room != room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::history::HistoryReply;
    use chat_core::{Event, EventKind};

    fn request(room: &str) -> HistoryRequest {
        HistoryRequest {
            room: room.into(),
            limit: 50,
            since: None,
        }
    }

    fn reply(events: usize) -> Arc<Page> {
        let event = Event::new(EventKind::Join, "lobby", "alice", None, "gw");
        Arc::new(Page::new(HistoryReply {
            events: vec![event; events],
            since_error: None,
            error: None,
            private: false,
        }))
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_reply_answers_the_same_request_until_it_is_as_old_as_the_setting() {
        let recent = Recent::new(SECOND);
        recent.keep(recent.ticket(), &request("lobby"), &reply(3));
        assert!(recent.get(&request("lobby")).is_some());
        assert!(recent.get(&request("other")).is_none());
        tokio::time::advance(SECOND).await;
        assert!(recent.get(&request("lobby")).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_setting_keeps_nothing() {
        let recent = Recent::new(Duration::ZERO);
        recent.keep(recent.ticket(), &request("lobby"), &reply(3));
        assert!(recent.get(&request("lobby")).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unbind_forgets_the_room_and_spoils_requests_in_flight() {
        let recent = Recent::new(SECOND);
        recent.keep(recent.ticket(), &request("lobby"), &reply(3));
        recent.keep(recent.ticket(), &request("other"), &reply(3));
        let in_flight = recent.ticket();
        recent.forget("lobby");
        assert!(recent.get(&request("lobby")).is_none());
        assert!(recent.get(&request("other")).is_some(), "other rooms stay");
        recent.keep(in_flight, &request("lobby"), &reply(3));
        assert!(
            recent.get(&request("lobby")).is_none(),
            "fetched across the unbind"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn empty_histories_and_resumes_are_not_kept() {
        let recent = Recent::new(SECOND);
        recent.keep(recent.ticket(), &request("lobby"), &reply(0));
        assert!(recent.get(&request("lobby")).is_none());
        let mut since = request("lobby");
        since.since = Some("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into());
        recent.keep(recent.ticket(), &since, &reply(3));
        assert!(recent.get(&since).is_none());
    }
}
