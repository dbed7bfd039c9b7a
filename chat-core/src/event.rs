//! The chat event: the one record every service exchanges and the source of truth from
//! which history, logs and room lists are derived. Its JSON form is a public contract
//! (see docs/protocol.md); [`Event::decode`] is the single gate every consumer passes
//! deliveries through, so whatever another producer publishes, no service acts on an event
//! that breaks the schema.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::normalize::{self, Invalid, Limits};

/// Schema version carried in every event as `v`. Version 2 added the speaker's `name`, the
/// `guest` marking and the membership events; version 1 events (every event made before
/// identities existed) still decode, as guests' events, and are upgraded to version 2. The
/// kinds that act on a message (`edit`, `delete`, `react`) and the roles (`role_granted`,
/// `role_revoked`) are version 2 kinds: a consumer that does not know them refuses them by
/// kind, so they needed no new version.
pub const SCHEMA_VERSION: u8 = 2;

/// The first schema version, still accepted on decode.
const SCHEMA_V1: u8 = 1;

/// Longest event id or gateway id a consumer accepts.
const MAX_ID: usize = 64;

/// What happened in a room. Each kind has a fixed set of fields beyond the common ones
/// ([`EventKind::need`]): required, optional, or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A user said something.
    Message,
    /// A user entered the room.
    Join,
    /// A user left the room (on request or by disconnecting).
    Leave,
    /// A verified user created the room with a `visibility`; they own it.
    RoomCreated,
    /// The owner let `member` into a private room.
    MemberAdded,
    /// The owner took `member` out of a private room.
    MemberRemoved,
    /// The author replaced the whole text of message `target` with `text`.
    Edit,
    /// The author, the room's owner or a moderator deleted message `target` (with an
    /// optional `reason`).
    Delete,
    /// Someone added (`op: add`) or took back (`op: remove`) the reaction `key` on message
    /// `target`.
    React,
    /// The owner gave `member` the `role` (`moderator`) in a created room.
    RoleGranted,
    /// The owner took `role` back from `member`.
    RoleRevoked,
}

/// The optional fields that some kinds carry and all others must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindField {
    /// `text`: what was said (a message), or the whole new text (an edit).
    Text,
    /// `visibility`: who may read the room.
    Visibility,
    /// `member`: whose membership or role changed.
    Member,
    /// `target`: the id of the message an edit, deletion or reaction acts on.
    Target,
    /// `reason`: why a message was deleted.
    Reason,
    /// `key`: the reaction (an emoji).
    Key,
    /// `op`: whether a reaction is added or removed.
    Op,
    /// `role`: the role granted or revoked.
    Role,
}

/// Whether a kind requires a field, allows it, or refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The field must be present.
    Required,
    /// The field may be present.
    Optional,
    /// The field must be absent.
    Refused,
}

impl KindField {
    /// Every kind-specific field.
    pub const ALL: [KindField; 8] = [
        KindField::Text,
        KindField::Visibility,
        KindField::Member,
        KindField::Target,
        KindField::Reason,
        KindField::Key,
        KindField::Op,
        KindField::Role,
    ];

    /// The field's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            KindField::Text => "text",
            KindField::Visibility => "visibility",
            KindField::Member => "member",
            KindField::Target => "target",
            KindField::Reason => "reason",
            KindField::Key => "key",
            KindField::Op => "op",
            KindField::Role => "role",
        }
    }
}

impl EventKind {
    /// Every kind, in the order docs/protocol.md lists them.
    pub const ALL: [EventKind; 11] = [
        EventKind::Message,
        EventKind::Join,
        EventKind::Leave,
        EventKind::RoomCreated,
        EventKind::MemberAdded,
        EventKind::MemberRemoved,
        EventKind::Edit,
        EventKind::Delete,
        EventKind::React,
        EventKind::RoleGranted,
        EventKind::RoleRevoked,
    ];

    /// The name used on the wire, in the AMQP `type` property and in the archive.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::RoomCreated => "room_created",
            EventKind::MemberAdded => "member_added",
            EventKind::MemberRemoved => "member_removed",
            EventKind::Edit => "edit",
            EventKind::Delete => "delete",
            EventKind::React => "react",
            EventKind::RoleGranted => "role_granted",
            EventKind::RoleRevoked => "role_revoked",
        }
    }

    /// Parses the wire name back; `None` for anything this version does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s)
    }

    /// Whether this kind requires, allows or refuses `field`.
    pub fn need(self, field: KindField) -> Need {
        use EventKind as K;
        use KindField as F;
        match (self, field) {
            (K::Message, F::Text)
            | (K::RoomCreated, F::Visibility)
            | (K::MemberAdded | K::MemberRemoved, F::Member)
            | (K::Edit, F::Target | F::Text)
            | (K::Delete, F::Target)
            | (K::React, F::Target | F::Key | F::Op)
            | (K::RoleGranted | K::RoleRevoked, F::Member | F::Role) => Need::Required,
            (K::Delete, F::Reason) => Need::Optional,
            _ => Need::Refused,
        }
    }

    /// Whether the event changes a room's access projection ([`crate::access`]): who may
    /// read it (`room_created`, `member_added`, `member_removed`) and who moderates it
    /// (`role_granted`, `role_revoked`). The projection is folded from exactly these.
    pub fn is_membership(self) -> bool {
        matches!(
            self,
            EventKind::RoomCreated
                | EventKind::MemberAdded
                | EventKind::MemberRemoved
                | EventKind::RoleGranted
                | EventKind::RoleRevoked
        )
    }

    /// Whether the event acts on an earlier message (`target`): the message projection
    /// ([`crate::projection`]) is folded from exactly these.
    pub fn is_action(self) -> bool {
        matches!(self, EventKind::Edit | EventKind::Delete | EventKind::React)
    }

    /// Whether a version 1 event (from before identities) can be of this kind.
    fn in_version1(self) -> bool {
        matches!(
            self,
            EventKind::Message | EventKind::Join | EventKind::Leave
        )
    }
}

/// Who may read a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Anyone may join and read it (every room that was never created explicitly).
    Public,
    /// Only its members (the owner and those the owner added).
    Private,
}

impl Visibility {
    /// The name on the wire and in the archive.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }

    /// Parses the wire name back.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Visibility::Public),
            "private" => Some(Visibility::Private),
            _ => None,
        }
    }
}

/// Whether a reaction is added or taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReactOp {
    /// The user now reacts with the key (again: nothing changes).
    Add,
    /// The user no longer reacts with the key.
    Remove,
}

impl ReactOp {
    /// The name on the wire and in the archive.
    pub fn as_str(self) -> &'static str {
        match self {
            ReactOp::Add => "add",
            ReactOp::Remove => "remove",
        }
    }

    /// Parses the wire name back.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "add" => Some(ReactOp::Add),
            "remove" => Some(ReactOp::Remove),
            _ => None,
        }
    }
}

/// A role the owner of a created room can give; only `moderator` so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May delete anyone's messages in the room.
    Moderator,
}

impl Role {
    /// The name on the wire and in the archive.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Moderator => "moderator",
        }
    }

    /// Parses the wire name back.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "moderator" => Some(Role::Moderator),
            _ => None,
        }
    }
}

/// One reaction key on a message as history shows it: how many reacted, and who, in the
/// order they first reacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The reaction (an emoji).
    pub key: String,
    /// How many users react with it (the length of `users`).
    pub count: u32,
    /// Who reacts with it.
    pub users: Vec<String>,
}

/// One chat event, exactly as it travels on the exchange and to clients.
///
/// The last three fields (`edited_at`, `deleted`, `reactions`) are not part of an event:
/// they are the message projection that history (on join, over HTTP) adds to the messages
/// it returns. [`Event::decode`] refuses them on deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Schema version, always [`SCHEMA_VERSION`].
    pub v: u8,
    /// Time-ordered unique id (UUIDv7, so ids sort by creation time).
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The room it happened in.
    pub room: String,
    /// Who did it: a verified user's stable id (the token's `sub`), or a guest's
    /// self-chosen name.
    pub user: String,
    /// The verified user's display name (the token's `name`); absent for guests, whose
    /// `user` is their name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Set when nobody vouched for `user`: a self-chosen name (`AUTH_MODE=open`). Absent
    /// (false) means the gateway verified a token whose subject is `user`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub guest: bool,
    /// What was said (messages), or the whole new text (edits). In history, a message's
    /// current text; absent when it was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Who may read the room; present on `room_created` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    /// Whose membership or role changed (a user id); present on `member_added`,
    /// `member_removed`, `role_granted` and `role_revoked` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The id of the message acted on; present on `edit`, `delete` and `react` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Why a message was deleted; optional on `delete` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reaction; present on `react` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Whether the reaction is added or removed; present on `react` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<ReactOp>,
    /// The role granted or revoked; present on `role_granted` and `role_revoked` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// When the gateway accepted it, UTC with millisecond precision.
    #[serde(with = "millis")]
    pub at: DateTime<Utc>,
    /// Which gateway accepted it.
    pub gateway: String,
    /// History only: when the message's text was last edited.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "millis_option"
    )]
    pub edited_at: Option<DateTime<Utc>>,
    /// History only: the message (or, on an edit, its target) was deleted; its text is gone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// History only: the message's reactions, in the order their keys were first used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
}

/// Why bytes are not an event; consumers dead-letter such deliveries.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a JSON event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported schema version {0}")]
    Version(u8),
    #[error("invalid event id")]
    Id,
    #[error("invalid gateway id")]
    Gateway,
    #[error("invalid target id")]
    Target,
    #[error("{0}")]
    Field(#[from] Invalid),
    #[error("a {0} event must not carry {1}")]
    UnexpectedField(&'static str, &'static str),
    #[error("a {0} event must carry {1}")]
    MissingField(&'static str, &'static str),
    #[error("a version 1 event cannot be a {0} event")]
    NotInVersion1(&'static str),
    #[error("field was not normalised")]
    NotNormalised,
    #[error("{0} is a field of history, not of an event")]
    ProjectionField(&'static str),
}

impl Event {
    /// Creates a new guest's event stamped now, with a fresh time-ordered id (see
    /// [`Event::verified`] for a verified user's). The caller has already validated `room`,
    /// `user` and `text` with [`crate::normalize`].
    pub fn new(
        kind: EventKind,
        room: &str,
        user: &str,
        text: Option<String>,
        gateway: &str,
    ) -> Self {
        Self {
            v: SCHEMA_VERSION,
            id: new_id(),
            kind,
            room: room.to_owned(),
            user: user.to_owned(),
            name: None,
            guest: true,
            text,
            visibility: None,
            member: None,
            target: None,
            reason: None,
            key: None,
            op: None,
            role: None,
            at: now_millis(),
            gateway: gateway.to_owned(),
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
        }
    }

    /// The same event by a verified user: `user` is the token's subject, `name` its display
    /// name, and the guest marking goes.
    pub fn verified(mut self, name: &str) -> Self {
        self.guest = false;
        self.name = Some(name.to_owned());
        self
    }

    /// What a reader should call the speaker: the verified display name, else `user`.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.user)
    }

    /// Serialises the event; it cannot fail for this type, whose fields are all plain data.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Event always serialises")
    }

    /// Parses and validates bytes from the broker. The limits used are the protocol's
    /// outer bounds, so that events from a gateway with more generous settings still pass.
    /// A version 1 event (made before identities existed) is upgraded: it becomes a guest's
    /// event of the current version, since nobody vouched for its `user`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut event: Event = serde_json::from_slice(bytes)?;
        if event.v == SCHEMA_V1 {
            if !event.kind.in_version1() {
                return Err(DecodeError::NotInVersion1(event.kind.as_str()));
            }
            event.v = SCHEMA_VERSION;
            event.guest = true;
        }
        event.validate()?;
        Ok(event)
    }

    /// Whether the kind-specific `field` is present.
    fn has(&self, field: KindField) -> bool {
        match field {
            KindField::Text => self.text.is_some(),
            KindField::Visibility => self.visibility.is_some(),
            KindField::Member => self.member.is_some(),
            KindField::Target => self.target.is_some(),
            KindField::Reason => self.reason.is_some(),
            KindField::Key => self.key.is_some(),
            KindField::Op => self.op.is_some(),
            KindField::Role => self.role.is_some(),
        }
    }

    /// Checks every field against the schema: consumers must not trust producers.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.v != SCHEMA_VERSION {
            return Err(DecodeError::Version(self.v));
        }
        if !is_token(&self.id) {
            return Err(DecodeError::Id);
        }
        if !is_token(&self.gateway) {
            return Err(DecodeError::Gateway);
        }
        if self.edited_at.is_some() {
            return Err(DecodeError::ProjectionField("edited_at"));
        }
        if self.deleted {
            return Err(DecodeError::ProjectionField("deleted"));
        }
        if !self.reactions.is_empty() {
            return Err(DecodeError::ProjectionField("reactions"));
        }
        let limits = Limits::DECODE;
        normalize::room(&self.room)?;
        if !normalize::is_normal_name(&self.user, &limits)? {
            return Err(DecodeError::NotNormalised);
        }
        if let Some(name) = &self.name {
            if !normalize::is_normal_name(name, &limits)? {
                return Err(DecodeError::NotNormalised);
            }
        }
        let kind = self.kind.as_str();
        for field in KindField::ALL {
            match (self.kind.need(field), self.has(field)) {
                (Need::Required, false) => {
                    return Err(DecodeError::MissingField(kind, field.as_str()))
                }
                (Need::Refused, true) => {
                    return Err(DecodeError::UnexpectedField(kind, field.as_str()))
                }
                _ => {}
            }
        }
        if let Some(text) = &self.text {
            if !normalize::is_normal_text(text, &limits)? {
                return Err(DecodeError::NotNormalised);
            }
        }
        if let Some(member) = &self.member {
            if !normalize::is_normal_name(member, &limits)? {
                return Err(DecodeError::NotNormalised);
            }
        }
        if let Some(target) = &self.target {
            if !is_token(target) {
                return Err(DecodeError::Target);
            }
        }
        if let Some(reason) = &self.reason {
            if normalize::reason(reason)? != *reason {
                return Err(DecodeError::NotNormalised);
            }
        }
        if let Some(key) = &self.key {
            if normalize::reaction_key(key)? != *key {
                return Err(DecodeError::NotNormalised);
            }
        }
        Ok(())
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Whether `s` has the shape of an event id (a `target`, a `since`): printable ASCII
/// without spaces, at most 64 bytes.
pub fn is_id(s: &str) -> bool {
    is_token(s)
}

/// Ids are printable ASCII without spaces, so they are safe in headers, URLs and logs.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new UUIDv7: its text form sorts by creation time, and ids made in one process are
/// strictly increasing even within one millisecond.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// When an id made by [`new_id`] was created (UUIDv7 carries its millisecond timestamp);
/// `None` for ids of other shapes.
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

/// The current time truncated to milliseconds, the precision of the wire format.
pub fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// Formats a time the way events carry it: `2026-11-28T15:03:15.123Z`.
pub fn format_time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde adapter for an optional time in the millisecond RFC 3339 form.
mod millis_option {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => super::millis::serialize(at, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let raw = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        raw.map(|raw| {
            DateTime::parse_from_rfc3339(&raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

/// Serde adapter for the millisecond RFC 3339 form of `at`.
mod millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event::new(
            EventKind::Message,
            "lobby",
            "alice",
            Some("hello".into()),
            "gw-1",
        )
    }

    #[test]
    fn an_event_round_trips_through_its_json_form() {
        let event = sample();
        let json = event.to_json();
        assert!(json.contains(r#""type":"message""#), "{json}");
        assert_eq!(Event::decode(json.as_bytes()).unwrap(), event);
    }

    #[test]
    fn the_documented_examples_decode() {
        let raw = r#"{"v":2,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","type":"message","room":"lobby","user":"alice","name":"Alice","text":"hello","at":"2026-11-28T15:03:15.123Z","gateway":"gw-1"}"#;
        let event = Event::decode(raw.as_bytes()).unwrap();
        assert_eq!(format_time(&event.at), "2026-11-28T15:03:15.123Z");
        assert!(!event.guest);
        assert_eq!(event.display_name(), "Alice");
        assert_eq!(event.to_json(), raw);
        let guest = r#"{"v":2,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c","type":"join","room":"lobby","user":"bob","guest":true,"at":"2026-11-28T15:03:16.000Z","gateway":"gw-1"}"#;
        assert_eq!(Event::decode(guest.as_bytes()).unwrap().to_json(), guest);
        let created = r#"{"v":2,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d","type":"room_created","room":"board","user":"alice","name":"Alice","visibility":"private","at":"2026-11-28T15:03:17.000Z","gateway":"gw-1"}"#;
        assert_eq!(
            Event::decode(created.as_bytes()).unwrap().to_json(),
            created
        );
        let added = r#"{"v":2,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5e","type":"member_added","room":"board","user":"alice","name":"Alice","member":"bob","at":"2026-11-28T15:03:18.000Z","gateway":"gw-1"}"#;
        assert_eq!(Event::decode(added.as_bytes()).unwrap().to_json(), added);
    }

    #[test]
    fn a_version_1_event_decodes_as_a_guests_event_of_the_current_version() {
        let raw = r#"{"v":1,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","type":"message","room":"lobby","user":"alice","text":"hello","at":"2026-11-28T15:03:15.123Z","gateway":"gw-1"}"#;
        let event = Event::decode(raw.as_bytes()).unwrap();
        assert_eq!(event.v, SCHEMA_VERSION);
        assert!(event.guest, "nobody vouched for a version 1 user");
        assert_eq!(event.user, "alice");
        let claimed = r#"{"v":1,"id":"a","type":"member_added","room":"r","user":"u","member":"m","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#;
        assert!(matches!(
            Event::decode(claimed.as_bytes()),
            Err(DecodeError::NotInVersion1("member_added"))
        ));
    }

    #[test]
    fn join_events_have_no_text() {
        let join = Event::new(EventKind::Join, "lobby", "bob", None, "gw-1");
        assert!(!join.to_json().contains("text"));
        assert!(join.to_json().contains(r#""guest":true"#));
        assert!(Event::decode(join.to_json().as_bytes()).is_ok());
        let mut bad = join;
        bad.text = Some("x".into());
        assert!(matches!(
            Event::decode(bad.to_json().as_bytes()),
            Err(DecodeError::UnexpectedField("join", "text"))
        ));
    }

    #[test]
    fn each_kind_carries_exactly_its_own_field() {
        let mut created =
            Event::new(EventKind::RoomCreated, "r", "alice", None, "gw").verified("A");
        assert!(matches!(
            created.validate(),
            Err(DecodeError::MissingField("room_created", "visibility"))
        ));
        created.visibility = Some(Visibility::Private);
        assert!(created.validate().is_ok());
        created.member = Some("bob".into());
        assert!(matches!(
            created.validate(),
            Err(DecodeError::UnexpectedField("room_created", "member"))
        ));
        let mut added = Event::new(EventKind::MemberAdded, "r", "alice", None, "gw").verified("A");
        assert!(added.validate().is_err());
        added.member = Some("bob\n".into());
        assert!(
            added.validate().is_err(),
            "a member id is validated like a name"
        );
        added.member = Some("bob".into());
        assert!(added.validate().is_ok());
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
        }
    }

    #[test]
    fn edits_deletions_reactions_and_roles_have_the_documented_shapes() {
        for raw in [
            r#"{"v":2,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a60","type":"edit","room":"lobby","user":"alice","name":"Alice","text":"hello, world","target":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","at":"2026-11-28T15:04:00.000Z","gateway":"gw-1"}"#,
            r#"{"v":2,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a61","type":"delete","room":"lobby","user":"alice","name":"Alice","target":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","reason":"posted in the wrong room","at":"2026-11-28T15:04:01.000Z","gateway":"gw-1"}"#,
            r#"{"v":2,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a62","type":"react","room":"lobby","user":"bob","guest":true,"target":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","key":"👍","op":"add","at":"2026-11-28T15:04:02.000Z","gateway":"gw-2"}"#,
            r#"{"v":2,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a63","type":"role_granted","room":"board","user":"alice","name":"Alice","member":"bob","role":"moderator","at":"2026-11-28T15:04:03.000Z","gateway":"gw-1"}"#,
        ] {
            let event = Event::decode(raw.as_bytes()).unwrap_or_else(|e| panic!("{e}: {raw}"));
            assert_eq!(event.to_json(), raw);
        }
    }

    #[test]
    fn each_new_kind_carries_exactly_its_fields() {
        let mut react = Event::new(EventKind::React, "r", "bob", None, "gw");
        assert!(matches!(
            react.validate(),
            Err(DecodeError::MissingField("react", "target"))
        ));
        react.target = Some("m-1".into());
        react.key = Some("👍".into());
        assert!(matches!(
            react.validate(),
            Err(DecodeError::MissingField("react", "op"))
        ));
        react.op = Some(ReactOp::Add);
        assert!(react.validate().is_ok());
        react.text = Some("hi".into());
        assert!(matches!(
            react.validate(),
            Err(DecodeError::UnexpectedField("react", "text"))
        ));
        react.text = None;
        for bad in ["lol", "👍 👍", "👍\n", "👍".repeat(9).as_str()] {
            react.key = Some(bad.to_owned());
            assert!(react.validate().is_err(), "{bad:?}");
        }
        react.key = Some("👍".into());
        react.target = Some("not an id".into());
        assert!(matches!(react.validate(), Err(DecodeError::Target)));
        let mut delete = Event::new(EventKind::Delete, "r", "bob", None, "gw");
        delete.target = Some("m-1".into());
        assert!(delete.validate().is_ok(), "a reason is optional");
        delete.reason = Some("x".repeat(normalize::MAX_REASON + 1));
        assert!(delete.validate().is_err());
        let mut edit = Event::new(EventKind::Edit, "r", "bob", None, "gw");
        edit.target = Some("m-1".into());
        assert!(matches!(
            edit.validate(),
            Err(DecodeError::MissingField("edit", "text")),
        ));
        edit.text = Some("a\u{7}b".into());
        assert!(edit.validate().is_err(), "an edit's text is normalised");
    }

    #[test]
    fn history_fields_never_come_from_the_exchange() {
        let mut message = sample();
        message.deleted = true;
        message.text = None;
        let raw = message.to_json();
        assert!(raw.contains(r#""deleted":true"#));
        assert!(matches!(
            Event::decode(raw.as_bytes()),
            Err(DecodeError::ProjectionField("deleted"))
        ));
        let mut edited = sample();
        edited.edited_at = Some(edited.at);
        edited.reactions = vec![Reaction {
            key: "👍".into(),
            count: 1,
            users: vec!["bob".into()],
        }];
        let raw = edited.to_json();
        assert!(raw.contains(r#""edited_at":"#), "{raw}");
        assert!(Event::decode(raw.as_bytes()).is_err());
        // History replies are read without the gate, projection fields and all.
        let back: Event = serde_json::from_str(&raw).unwrap();
        assert_eq!(back, edited);
    }

    #[test]
    fn a_version_1_event_cannot_be_one_of_the_new_kinds() {
        let raw = r#"{"v":1,"id":"a","type":"delete","room":"r","user":"u","target":"m","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#;
        assert!(matches!(
            Event::decode(raw.as_bytes()),
            Err(DecodeError::NotInVersion1("delete"))
        ));
    }

    #[test]
    fn deliveries_that_break_the_schema_are_refused() {
        let cases = [
            "not json",
            "{}",
            r#"{"v":3,"id":"a","type":"message","room":"r","user":"u","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"shout","room":"r","user":"u","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a b","type":"message","room":"r","user":"u","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"message","room":"no room","user":"u","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"message","room":"r","user":"u\n","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"message","room":"r","user":"u","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"message","room":"r","user":"u","text":"t","at":"yesterday","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"message","room":"r","user":"u","text":"a\u0007b","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":2,"id":"a","type":"message","room":"r","user":"u","name":"x\u202Ey","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":2,"id":"a","type":"room_created","room":"r","user":"u","visibility":"secret","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":2,"id":"a","type":"member_removed","room":"r","user":"u","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
        ];
        for case in cases {
            assert!(Event::decode(case.as_bytes()).is_err(), "accepted {case}");
        }
    }

    #[test]
    fn an_ids_creation_time_can_be_read_back() {
        let before = now_millis();
        let at = id_time(&new_id()).unwrap();
        assert!(at >= before && at <= now_millis());
        assert_eq!(id_time("not-a-uuid"), None);
    }

    #[test]
    fn ids_made_in_one_process_increase() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
