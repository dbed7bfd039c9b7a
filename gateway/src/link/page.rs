//! A room's history as a join needs it: the events already encoded for the `joined` frame,
//! their ids, and the fingerprints of its messages. A history reply is shared by every
//! join that asked at once (single flight) and kept for those of the next second
//! ([`super::reuse`]): decoded events would be re-encoded by each of those joins and, kept,
//! hold several hundred bytes each in their separate strings. Encoded once when the reply
//! arrives, a page costs every join that uses it a copy of one string, and a kept one
//! about a third of the memory (BENCHMARKS.md, "Connect and join").

use std::sync::Arc;

use chat_core::history::HistoryReply;
use chat_core::EventKind;
use serde_json::value::RawValue;

use crate::idempotency::fingerprint;

/// One history reply, ready to be sent to any number of joins.
#[derive(Debug)]
pub struct Page {
    /// The events, oldest first, as the JSON array the `joined` frame carries.
    events: Box<RawValue>,
    /// The events' ids, in the same order: what the join's catch-up leaves out.
    ids: Arc<[Box<str>]>,
    /// The id and say-fingerprint of each message with a text, for the resend check
    /// (`idempotency::Says::observe`).
    messages: Box<[(Box<str>, u64)]>,
    /// Why the reply is the latest history instead of what followed `since`.
    pub since_error: Option<String>,
    /// Whether the archive knows the room as private.
    pub private: bool,
}

impl Page {
    /// Encodes a reply's events once; the events themselves are dropped with the reply.
    pub fn new(reply: HistoryReply) -> Self {
        let events =
            serde_json::value::to_raw_value(&reply.events).expect("events always serialise");
        let ids = reply
            .events
            .iter()
            .map(|event| event.id.as_str().into())
            .collect();
        let messages = reply
            .events
            .iter()
            .filter(|event| event.kind == EventKind::Message)
            .filter_map(|event| {
                let text = event.text.as_deref()?;
                let print = fingerprint(&event.room, &event.user, text);
                Some((event.id.as_str().into(), print))
            })
            .collect();
        Self {
            events,
            ids,
            messages,
            since_error: reply.since_error,
            private: reply.private,
        }
    }

    /// No events: what a join whose history could not be loaded gets.
    pub fn empty() -> Self {
        Self::new(HistoryReply {
            events: Vec::new(),
            since_error: None,
            error: None,
            private: false,
        })
    }

    /// The events as a JSON array, for the `joined` frame.
    pub fn events_json(&self) -> &RawValue {
        &self.events
    }

    /// The events' ids, oldest first.
    pub fn ids(&self) -> &Arc<[Box<str>]> {
        &self.ids
    }

    /// The id of the newest event; `None` for an empty history.
    pub fn last_id(&self) -> Option<&str> {
        self.ids.last().map(|id| &**id)
    }

    /// Each message's id and fingerprint (see [`crate::idempotency::fingerprint`]).
    pub fn messages(&self) -> impl Iterator<Item = (&str, u64)> {
        self.messages.iter().map(|(id, print)| (&**id, *print))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::Event;

    #[test]
    fn a_page_carries_the_events_as_the_archive_sent_them_with_their_ids_and_message_prints() {
        let join = Event::new(EventKind::Join, "lobby", "alice", None, "gw");
        let say = Event::new(
            EventKind::Message,
            "lobby",
            "alice",
            Some("hi".into()),
            "gw",
        );
        let page = Page::new(HistoryReply {
            events: vec![join.clone(), say.clone()],
            since_error: None,
            error: None,
            private: true,
        });
        let decoded: Vec<Event> = serde_json::from_str(page.events_json().get()).unwrap();
        assert_eq!(decoded, vec![join.clone(), say.clone()]);
        let ids: Vec<&str> = page.ids().iter().map(|id| &**id).collect();
        assert_eq!(ids, [join.id.as_str(), say.id.as_str()]);
        assert_eq!(page.last_id(), Some(say.id.as_str()));
        let prints: Vec<(&str, u64)> = page.messages().collect();
        assert_eq!(
            prints,
            [(say.id.as_str(), fingerprint("lobby", "alice", "hi"))]
        );
        assert!(page.private);
    }
}
