//! The history request/reply carried over the broker: a gateway sends a [`HistoryRequest`]
//! to the `<prefix>.history` queue with `reply_to` set (RabbitMQ direct reply-to) and a
//! `correlation_id`; the archiver answers with a [`HistoryReply`]. Gateways never learn the
//! archiver's address, only the broker's.
//!
//! The same queue carries the replay of the membership events a gateway folds into its
//! access projection at start: a [`MembershipRequest`], told apart by the AMQP `type`
//! property [`MEMBERSHIP_TYPE`], answered page by page with a [`MembershipReply`]; and the
//! look-up of one message before an edit, deletion or reaction: a [`TargetRequest`], type
//! [`TARGET_TYPE`], answered with a [`TargetReply`].

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// Most events a gateway may ask for in one history request.
pub const MAX_HISTORY: u32 = 1000;

/// "Give me the recent events of this room", or with `since`, "everything after this id".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Whether the archive knows the room as private. A gateway whose own access
    /// projection does not (it has not folded the room's `room_created` yet, while the
    /// archive has) must not hand these events to a reader it has not checked against the
    /// room's members: it waits for its projection to catch up first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

/// The AMQP `type` property of a [`MembershipRequest`] on the history queue.
pub const MEMBERSHIP_TYPE: &str = "membership";

/// Most membership events in one page of the replay.
pub const MAX_MEMBERSHIP_PAGE: u32 = 5000;

/// "Give me the membership events archived after position `after`" (0: from the start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRequest {
    /// The archive position to continue after: the `next` of the previous page.
    pub after: i64,
    /// How many events at most, up to [`MAX_MEMBERSHIP_PAGE`].
    pub limit: u32,
}

/// One page of the membership replay, oldest first. Fewer events than asked for means the
/// replay has reached the end of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipReply {
    /// The events, in archive order.
    pub events: Vec<Event>,
    /// The position to ask after for the next page.
    pub next: i64,
    /// Set when the request could not be answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The AMQP `type` property of a [`TargetRequest`] on the history queue.
pub const TARGET_TYPE: &str = "target";

/// "Tell me about message `id` of room `room`": what a gateway asks before it publishes an
/// edit, a deletion or a reaction, to check the rules against the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRequest {
    /// The room the target must be in.
    pub room: String,
    /// The target message's id.
    pub id: String,
}

/// The archiver's answer: the message, if `room` has a message with that id. A message of
/// another room is not found, so that a request cannot learn what another room holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetReply {
    /// The message, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<TargetMessage>,
    /// Set when the request could not be answered (bad request, database error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the rules ([`crate::projection::check`]) need of a target message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetMessage {
    /// Its author: a verified id, or a guest's name.
    pub user: String,
    /// Whether the author was a guest.
    #[serde(default)]
    pub guest: bool,
    /// Whether it was deleted.
    #[serde(default)]
    pub deleted: bool,
}
