//! The history request/reply carried over the broker: a gateway sends a [`HistoryRequest`]
//! to the `<prefix>.history` queue with `reply_to` set (RabbitMQ direct reply-to) and a
//! `correlation_id`; the archiver answers with a [`HistoryReply`]. Gateways never learn the
//! archiver's address, only the broker's.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// Most events a gateway may ask for in one history request.
pub const MAX_HISTORY: u32 = 1000;

/// "Give me the recent events of this room", or with `since`, "everything after this id".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// The room to read.
    pub room: String,
    /// How many of the latest events to return (without `since`), at most [`MAX_HISTORY`].
    pub limit: u32,
    /// Return every event after this one instead (a client catching up after a reconnect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// The archiver's answer. `events` are oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryReply {
    /// The events asked for; with a failed `since`, the normal latest-`limit` history.
    pub events: Vec<Event>,
    /// Set when `since` could not be honoured (unknown id, another room's id, or more
    /// missed events than [`MAX_HISTORY`]): the client must not assume it has no gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_error: Option<String>,
    /// Set when the request could not be answered at all (bad request, database error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
