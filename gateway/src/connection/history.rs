//! A join's history load: ask the archive for the room's history (or what followed
//! `since`), add what this gateway received that the archive may not have yet, and hand
//! the whole answer to the writer, which sends it before the live events it buffered.

use std::sync::Arc;

use chat_core::history::HistoryRequest;

use super::catch_up;
use super::commands::error_frame_text;
use crate::outbox;
use crate::protocol::{ErrorCode, ServerFrame};
use crate::rooms::{Joined, Outbound};
use crate::State;

/// Loads the history of a room the client is joining and queues the answer: `joined`,
/// preceded by an `error` when the history is missing (`history_unavailable`) or is the
/// latest instead of what followed `since` (`bad_since`). Run as a task tracked by
/// `state.background`, so shutdown waits for it before closing the broker link.
pub(super) async fn load(
    state: Arc<State>,
    outbox: outbox::Sender<Outbound>,
    room: Arc<str>,
    request: HistoryRequest,
    r#ref: Option<String>,
) {
    let mut frames = Vec::with_capacity(2);
    let history = match state.link.history(&request).await {
        Ok(reply) => {
            if let Some(reason) = &reply.since_error {
                frames.push(error_frame_text(
                    r#ref.as_deref(),
                    ErrorCode::BadSince,
                    &format!(
                        "cannot resume after {:?} ({reason}); here is the latest history instead",
                        request.since.as_deref().unwrap_or_default()
                    ),
                ));
            }
            reply.events
        }
        Err(err) => {
            tracing::warn!(error = %err, room = %request.room, "history unavailable");
            frames.push(error_frame_text(
                r#ref.as_deref(),
                ErrorCode::HistoryUnavailable,
                &format!("the history could not be loaded: {err}"),
            ));
            Vec::new()
        }
    };
    let joined = ServerFrame::Joined {
        room: &request.room,
        r#ref: r#ref.as_deref(),
        history: &history,
    };
    // The error explaining an empty or fallback history comes first, then `joined`.
    frames.push(joined.encode());
    // Events this gateway received just before the client was registered may not be
    // archived yet: those after the history's last event (or after `since`) follow it.
    let anchor = catch_up::anchor(
        history.last().map(|e| e.id.as_str()),
        request.since.as_deref(),
    );
    let unarchived = anchor.map_or_else(Vec::new, |id| state.rooms.received_after(&room, id));
    let history_ids = history.into_iter().map(|e| e.id).collect();
    let _ = outbox
        .send(Outbound::Joined(Box::new(Joined {
            room,
            frames,
            history_ids,
            unarchived,
        })))
        .await;
}
