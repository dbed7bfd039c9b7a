//! The chat event: the one record every service exchanges and the source of truth from
//! which history, logs and room lists are derived. Its JSON form is a public contract
//! (see docs/protocol.md); [`Event::decode`] is the single gate every consumer passes
//! deliveries through, so whatever another producer publishes, no service acts on an event
//! that breaks the schema.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::normalize::{self, Invalid, Limits};

/// Schema version carried in every event as `v`.
pub const SCHEMA_VERSION: u8 = 1;

/// Longest event id or gateway id a consumer accepts.
const MAX_ID: usize = 64;

/// What happened in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A user said something; the only kind with text.
    Message,
    /// A user entered the room.
    Join,
    /// A user left the room (on request or by disconnecting).
    Leave,
}

impl EventKind {
    /// The name used on the wire, in the AMQP `type` property and in the archive.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
        }
    }

    /// Parses the wire name back; `None` for anything this version does not know.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(EventKind::Message),
            "join" => Some(EventKind::Join),
            "leave" => Some(EventKind::Leave),
            _ => None,
        }
    }
}

/// One chat event, exactly as it travels on the exchange and to clients.
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
    /// Who did it.
    pub user: String,
    /// What was said; present on messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// When the gateway accepted it, UTC with millisecond precision.
    #[serde(with = "millis")]
    pub at: DateTime<Utc>,
    /// Which gateway accepted it.
    pub gateway: String,
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
    #[error("{0}")]
    Field(#[from] Invalid),
    #[error("a {0} event must not carry text")]
    UnexpectedText(&'static str),
    #[error("a message event must carry text")]
    MissingText,
    #[error("field was not normalised")]
    NotNormalised,
}

impl Event {
    /// Creates a new event stamped now, with a fresh time-ordered id. The caller has already
    /// validated `room`, `user` and `text` with [`crate::normalize`].
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
            text,
            at: now_millis(),
            gateway: gateway.to_owned(),
        }
    }

    /// Serialises the event; it cannot fail for this type, whose fields are all plain data.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Event always serialises")
    }

    /// Parses and validates bytes from the broker. The limits used are the protocol's
    /// outer bounds, so that events from a gateway with more generous settings still pass.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let event: Event = serde_json::from_slice(bytes)?;
        event.validate()?;
        Ok(event)
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
        let limits = decode_limits();
        normalize::room(&self.room)?;
        if !normalize::is_normal_name(&self.user, &limits)? {
            return Err(DecodeError::NotNormalised);
        }
        match (self.kind, &self.text) {
            (EventKind::Message, Some(text)) => {
                if !normalize::is_normal_text(text, &limits)? {
                    return Err(DecodeError::NotNormalised);
                }
            }
            (EventKind::Message, None) => return Err(DecodeError::MissingText),
            (kind, Some(_)) => return Err(DecodeError::UnexpectedText(kind.as_str())),
            (_, None) => {}
        }
        Ok(())
    }
}

/// The bounds consumers enforce: generous enough for any sane gateway configuration, tight
/// enough that one delivery cannot make a consumer allocate without limit.
fn decode_limits() -> Limits {
    Limits {
        max_name: 128,
        max_text: 64 * 1024,
        max_frame: 0,
    }
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
    fn the_documented_example_decodes() {
        let raw = r#"{"v":1,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","type":"message","room":"lobby","user":"alice","text":"hello","at":"2026-11-28T15:03:15.123Z","gateway":"gw-1"}"#;
        let event = Event::decode(raw.as_bytes()).unwrap();
        assert_eq!(format_time(&event.at), "2026-11-28T15:03:15.123Z");
        assert_eq!(event.to_json(), raw);
    }

    #[test]
    fn join_events_have_no_text() {
        let join = Event::new(EventKind::Join, "lobby", "bob", None, "gw-1");
        assert!(!join.to_json().contains("text"));
        assert!(Event::decode(join.to_json().as_bytes()).is_ok());
        let mut bad = join;
        bad.text = Some("x".into());
        assert!(matches!(
            Event::decode(bad.to_json().as_bytes()),
            Err(DecodeError::UnexpectedText("join"))
        ));
    }

    #[test]
    fn deliveries_that_break_the_schema_are_refused() {
        let cases = [
            "not json",
            "{}",
            r#"{"v":2,"id":"a","type":"message","room":"r","user":"u","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"shout","room":"r","user":"u","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a b","type":"message","room":"r","user":"u","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"message","room":"no room","user":"u","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"message","room":"r","user":"u\n","text":"t","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"message","room":"r","user":"u","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"message","room":"r","user":"u","text":"t","at":"yesterday","gateway":"g"}"#,
            r#"{"v":1,"id":"a","type":"message","room":"r","user":"u","text":"a\u0007b","at":"2026-11-28T15:03:15.123Z","gateway":"g"}"#,
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
