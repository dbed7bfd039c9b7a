//! A join's history load: ask the archive for the room's history (or what followed
//! `since`), add what this gateway received that the archive may not have yet, and hand
//! the whole answer to the writer, which sends it before the live events it buffered. A
//! room routed here moments ago is asked again until the archive has caught up with its
//! binding ([`catch_up::reaches`]). A reply received in the last second for the same room
//! answers without asking when the events after it are still in the gateway's memory
//! ([`reuse`], `link::reuse`).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chat_core::history::HistoryRequest;
use tokio::time::Instant;

use super::catch_up;
use super::commands::{error_message, forbidden_message};
use crate::link::{HistoryError, Page};
use crate::protocol::{ErrorCode, ServerMessage};
use crate::rooms::{Joined, Outbound, Outbox, SharedEvent};
use crate::State;

/// First pause before asking again for a history that does not reach the room's binding
/// yet; it doubles up to [`MAX_PAUSE`]. The archive trails the exchange by milliseconds.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(160);

/// Loads the history of a room the client is joining and queues the answer: `joined`,
/// preceded by an `error` when the history is missing (`history_unavailable`) or is the
/// latest instead of what followed `since` (`bad_since`). `mark`: the room's binding, when
/// this join is the first into a room routed by room. Run as a task tracked by
/// `state.background`, so shutdown waits for it before closing the broker link.
pub(super) async fn load(
    state: Arc<State>,
    outbox: Outbox,
    room: Arc<str>,
    request: HistoryRequest,
    r#ref: Option<String>,
    mark: Option<u64>,
) {
    let mut messages = Vec::with_capacity(2);
    // With a reused reply, what followed it is taken at once, while known to be complete.
    let (asked, followed) = match reuse(&state, &request, mark) {
        Some((reply, followed)) => (Ok(reply), Some(followed)),
        None => (ask(&state, &request, mark).await, None),
    };
    let asked = match asked {
        Ok(reply) if reply.private && !caught_up_with(&state, &room).await => {
            Err(HistoryError::AccessBehind)
        }
        other => other,
    };
    let reply = match asked {
        Ok(reply) => {
            if let Some(reason) = &reply.since_error {
                messages.push(error_message(
                    r#ref.as_deref(),
                    ErrorCode::BadSince,
                    &format!(
                        "cannot resume after {:?} ({reason}); here is the latest history instead",
                        request.since.as_deref().unwrap_or_default()
                    ),
                ));
            }
            Some(reply)
        }
        Err(err) => {
            tracing::warn!(error = %err, room = %request.room, "history unavailable");
            messages.push(error_message(
                r#ref.as_deref(),
                ErrorCode::HistoryUnavailable,
                &format!("the history could not be loaded: {err}"),
            ));
            None
        }
    };
    // Shared with every join that asked the same question at the same time, and with
    // those that reuse it.
    static EMPTY: LazyLock<Page> = LazyLock::new(Page::empty);
    let history = reply.as_deref().unwrap_or(&EMPTY);
    // With routing by room this gateway sees only its rooms' messages go by: it learns
    // those of a room it starts serving from the room's history, so that a resend of a
    // recent one here is still recognised (acked again, or refused as a conflict).
    for (id, print) in history.messages() {
        state.says.observe(id, print);
    }
    let joined = ServerMessage::Joined {
        room: &request.room,
        r#ref: r#ref.as_deref(),
        history: history.events_json(),
        private: state.projection.is_private(&room),
    };
    // The error explaining an empty or fallback history comes first, then `joined`, then
    // who is online: the view the room's other local clients have, so the batched
    // `presence_diff`s that follow (held back with the live events until now) apply to it.
    messages.push(joined.encode());
    messages.push(state.presence.joined_message(&room));
    // Events this gateway received just before the client was registered may not be
    // archived yet: those after the history's last event (or after `since`) follow it.
    let anchor = catch_up::anchor(history.last_id(), request.since.as_deref());
    let unarchived = followed.unwrap_or_else(|| {
        anchor
            .and_then(|id| state.rooms.received_after(&room, id))
            .unwrap_or_default()
    });
    let history_ids = history.ids().clone();
    let refused = forbidden_message(r#ref.as_deref(), &room);
    let _ = outbox
        .send(Outbound::Joined(Box::new(Joined {
            room,
            messages,
            history_ids,
            unarchived,
            refused,
        })))
        .await;
}

/// Waits, up to the history timeout, until this gateway's access projection knows `room`
/// as private, as the archive that answered does: until then it cannot tell who may read
/// the history. By then the fold has removed every member who may not (the writer then
/// answers their join `forbidden`). False if the projection did not catch up in time.
async fn caught_up_with(state: &State, room: &str) -> bool {
    let deadline = Instant::now() + state.config.history_timeout();
    let mut pause = FIRST_PAUSE;
    while !state.projection.is_private(room) {
        if Instant::now() + pause >= deadline {
            metrics::counter!("chat_history_access_behind_total").increment(1);
            tracing::warn!(%room, "the archive knows this room as private, the access projection not yet: its history is withheld");
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
    true
}

/// A reply to the same request received in the last second on this broker session, while
/// the room stayed bound (`link::reuse`), with the events of the room this gateway received
/// after its last event: `None` unless that event is still in the gateway's memory (then
/// every event after it is too), unless an edit, deletion or reaction came since, and, for
/// a first join into the room's binding (`mark`), unless the reply reaches past it as
/// [`ask`] requires of a fresh one.
fn reuse(
    state: &State,
    request: &HistoryRequest,
    mark: Option<u64>,
) -> Option<(Arc<Page>, Vec<Arc<SharedEvent>>)> {
    if request.since.is_some() {
        return None;
    }
    let reply = state.link.recent_history(request)?;
    let last = reply.last_id()?;
    if mark.is_some_and(|mark| !state.rooms.reaches(Some(last), mark)) {
        return None;
    }
    let followed = state.rooms.received_after(&request.room, last)?;
    if followed.iter().any(|event| event.acts) {
        // An edit, deletion or reaction since: the archive's history shows its message as
        // it is now (a deleted one without its text), which the kept one does not.
        return None;
    }
    metrics::counter!("chat_history_asks_total", "role" => "reused").increment(1);
    Some((reply, followed))
}

/// Asks the archive for the history. When `mark` is set (the first join into a room routed
/// here), asks again, with growing pauses, until the history reaches an event received
/// since the binding, or the history timeout has passed: then the last answer is used, and
/// counted (`chat_history_behind_total`), as the archive may lack events published just
/// before the binding.
async fn ask(
    state: &State,
    request: &HistoryRequest,
    mark: Option<u64>,
) -> Result<Arc<Page>, HistoryError> {
    let deadline = Instant::now() + state.config.history_timeout();
    let mut pause = FIRST_PAUSE;
    loop {
        let reply = state.link.page(request).await?;
        let Some(mark) = mark else {
            return Ok(reply);
        };
        let anchor = catch_up::anchor(reply.last_id(), request.since.as_deref());
        if state.rooms.reaches(anchor, mark) {
            return Ok(reply);
        }
        if Instant::now() + pause >= deadline {
            metrics::counter!("chat_history_behind_total").increment(1);
            tracing::warn!(room = %request.room, "the archive did not catch up with a newly routed room in time");
            return Ok(reply);
        }
        metrics::counter!("chat_history_asks_total", "role" => "again").increment(1);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}
