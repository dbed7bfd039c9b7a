//! The client protocol on `/ws` (docs/protocol.md): parsing and validating client frames
//! into commands, and encoding server frames. Every way a frame can be wrong maps to one
//! machine-readable error code; nothing here panics on any input.

use chat_core::normalize::{self, Limits};

use crate::idempotency;
use chat_core::event::{ReactOp, Role};
use chat_core::{Event, Visibility};
use serde::Serialize;
use serde_json::{Map, Value};

/// Longest `ref` a client may attach to a request.
const MAX_REF: usize = 64;
/// Longest `since` event id.
const MAX_SINCE: usize = 64;

/// Every machine-readable code an `error` frame can carry; serialised as its snake_case
/// name, as docs/protocol.md lists them ("Error codes"), which a test checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A text frame longer than `MAX_FRAME` bytes.
    TooLarge,
    /// Not JSON, or not a JSON object.
    InvalidJson,
    /// A binary frame.
    UnsupportedFrame,
    /// Over `RATE_LIMIT` / `RATE_BURST`.
    RateLimited,
    /// A required field is absent or `null`.
    MissingField,
    /// A field has the wrong JSON type or an invalid value.
    InvalidField,
    /// `type` is none of the known requests.
    UnknownType,
    /// Not a valid room name.
    InvalidRoom,
    /// Not a valid user name after normalisation.
    InvalidName,
    /// Not a valid message text after normalisation.
    InvalidText,
    /// `say` or `leave` in a room the connection has not joined.
    NotJoined,
    /// Surely not published: the broker never got it.
    Unavailable,
    /// Published, but not confirmed: the outcome is unknown.
    Unconfirmed,
    /// A message id already used for another message.
    Conflict,
    /// The archive cannot resume from `since`; the latest history follows instead.
    BadSince,
    /// The history could not be loaded; an empty one follows.
    HistoryUnavailable,
    /// The request needs a right the speaker lacks: a private room's membership, a room's
    /// ownership, a verified identity, or the authorship of a message.
    Forbidden,
    /// An edit, deletion or reaction names a message the room does not have.
    UnknownTarget,
    /// An edit, deletion or reaction names a message that was deleted.
    Deleted,
}

impl ErrorCode {
    /// Every code, in the order docs/protocol.md lists them.
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::TooLarge,
        ErrorCode::InvalidJson,
        ErrorCode::UnsupportedFrame,
        ErrorCode::RateLimited,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::UnknownType,
        ErrorCode::InvalidRoom,
        ErrorCode::InvalidName,
        ErrorCode::InvalidText,
        ErrorCode::NotJoined,
        ErrorCode::Unavailable,
        ErrorCode::Unconfirmed,
        ErrorCode::Conflict,
        ErrorCode::BadSince,
        ErrorCode::HistoryUnavailable,
        ErrorCode::Forbidden,
        ErrorCode::UnknownTarget,
        ErrorCode::Deleted,
    ];

    /// The code as clients see it.
    pub const fn as_str(self) -> &'static str {
        // No wildcard: a new code does not compile until it has its name (and, through
        // the tests, its place in `ALL` and in the docs).
        match self {
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidText => "invalid_text",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unconfirmed => "unconfirmed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::BadSince => "bad_since",
            ErrorCode::HistoryUnavailable => "history_unavailable",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownTarget => "unknown_target",
            ErrorCode::Deleted => "deleted",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A valid client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Present a token (`AUTH_MODE=token`): first, and again before it expires.
    Auth { token: String },
    /// Enter a room (again), optionally catching up after `since`. `name` is the guest's
    /// chosen name (required in open mode); in token mode it is ignored.
    Join {
        room: String,
        name: Option<String>,
        since: Option<String>,
        r#ref: Option<String>,
    },
    /// Say something in a joined room, optionally under an event id the client made
    /// (a recent UUIDv7), so that resending it can never post it twice.
    Say {
        room: String,
        text: String,
        id: Option<String>,
        r#ref: Option<String>,
    },
    /// Leave a joined room.
    Leave { room: String, r#ref: Option<String> },
    /// Started (`state: "start"`, resent while typing) or stopped typing in a joined
    /// room. Never acked; relayed to the room's members as `typing`, never stored.
    Typing { room: String, typing: bool },
    /// An application-level heartbeat: browsers cannot see websocket pings, so a page
    /// checks its connection with this and gets `pong`.
    Ping { r#ref: Option<String> },
    /// Create a room with a visibility; the speaker owns it.
    CreateRoom {
        room: String,
        visibility: Visibility,
        r#ref: Option<String>,
    },
    /// Add a member to (or remove one from) a private room the speaker owns.
    Membership {
        room: String,
        user: String,
        added: bool,
        r#ref: Option<String>,
    },
    /// Grant a role to (or revoke it from) a user in a room the speaker owns.
    Role {
        room: String,
        user: String,
        role: Role,
        granted: bool,
        r#ref: Option<String>,
    },
    /// Replace the whole text of one's own message `target`.
    Edit {
        room: String,
        target: String,
        text: String,
        r#ref: Option<String>,
    },
    /// Delete message `target` (one's own, or any as the room's owner or a moderator).
    Delete {
        room: String,
        target: String,
        reason: Option<String>,
        r#ref: Option<String>,
    },
    /// Add or take back a reaction on message `target`.
    React {
        room: String,
        target: String,
        key: String,
        op: ReactOp,
        r#ref: Option<String>,
    },
}

/// A refused client frame: what to put in the `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The request's `ref`, when it could be read.
    pub r#ref: Option<String>,
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl Rejection {
    pub fn new(r#ref: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            r#ref,
            code,
            message: message.into(),
        }
    }
}

/// Parses and validates one text frame.
pub fn parse(frame: &str, limits: &Limits) -> Result<Command, Rejection> {
    if frame.len() > limits.max_frame {
        return Err(Rejection::new(
            None,
            ErrorCode::TooLarge,
            format!("frames are limited to {} bytes", limits.max_frame),
        ));
    }
    let value: Value = serde_json::from_str(frame).map_err(|e| {
        Rejection::new(None, ErrorCode::InvalidJson, format!("not valid JSON: {e}"))
    })?;
    let Value::Object(fields) = value else {
        return Err(Rejection::new(
            None,
            ErrorCode::InvalidJson,
            "a frame must be a JSON object",
        ));
    };
    let r#ref = optional_string(&fields, "ref", MAX_REF, None)?;
    let fields = Fields {
        map: &fields,
        r#ref: &r#ref,
    };
    let kind = fields.required("type")?;
    match kind {
        "auth" => Ok(Command::Auth {
            token: fields.required("token")?.to_owned(),
        }),
        "join" => {
            let room = fields.room()?;
            let name = match fields.map.get("name") {
                None | Some(Value::Null) => None,
                Some(_) => Some(
                    normalize::name(fields.required("name")?, limits)
                        .map_err(|e| fields.reject(ErrorCode::InvalidName, e.to_string()))?,
                ),
            };
            let since = optional_string(fields.map, "since", MAX_SINCE, r#ref.as_ref())?;
            Ok(Command::Join {
                room,
                name,
                since,
                r#ref,
            })
        }
        "say" => {
            let room = fields.room()?;
            let text = normalize::text(fields.required("text")?, limits)
                .map_err(|e| fields.reject(ErrorCode::InvalidText, e.to_string()))?;
            let id = optional_string(fields.map, "id", MAX_SINCE, r#ref.as_ref())?;
            if let Some(id) = &id {
                idempotency::check_client_id(id, chrono::Utc::now())
                    .map_err(|reason| fields.reject(ErrorCode::InvalidField, reason))?;
            }
            Ok(Command::Say {
                room,
                text,
                id,
                r#ref,
            })
        }
        "leave" => Ok(Command::Leave {
            room: fields.room()?,
            r#ref,
        }),
        "ping" => Ok(Command::Ping { r#ref }),
        "typing" => {
            let room = fields.room()?;
            let typing = match fields.required("state")? {
                "start" => true,
                "stop" => false,
                _ => {
                    return Err(fields.reject(
                        ErrorCode::InvalidField,
                        "state must be \"start\" or \"stop\"",
                    ))
                }
            };
            Ok(Command::Typing { room, typing })
        }
        "create_room" => {
            let room = fields.room()?;
            let visibility =
                Visibility::parse(fields.required("visibility")?).ok_or_else(|| {
                    fields.reject(
                        ErrorCode::InvalidField,
                        "visibility must be \"public\" or \"private\"",
                    )
                })?;
            Ok(Command::CreateRoom {
                room,
                visibility,
                r#ref,
            })
        }
        "add_member" | "remove_member" => {
            let room = fields.room()?;
            let user = fields.user_id()?;
            Ok(Command::Membership {
                room,
                user,
                added: kind == "add_member",
                r#ref,
            })
        }
        "grant_role" | "revoke_role" => {
            let room = fields.room()?;
            let user = fields.user_id()?;
            let role = Role::parse(fields.required("role")?).ok_or_else(|| {
                fields.reject(ErrorCode::InvalidField, "role must be \"moderator\"")
            })?;
            Ok(Command::Role {
                room,
                user,
                role,
                granted: kind == "grant_role",
                r#ref,
            })
        }
        "edit" => {
            let room = fields.room()?;
            let target = fields.target()?;
            let text = normalize::text(fields.required("text")?, limits)
                .map_err(|e| fields.reject(ErrorCode::InvalidText, e.to_string()))?;
            Ok(Command::Edit {
                room,
                target,
                text,
                r#ref,
            })
        }
        "delete" => {
            let room = fields.room()?;
            let target = fields.target()?;
            let reason = match fields.map.get("reason") {
                None | Some(Value::Null) => None,
                Some(_) => Some(
                    normalize::reason(fields.required("reason")?)
                        .map_err(|e| fields.reject(ErrorCode::InvalidField, e.to_string()))?,
                ),
            };
            Ok(Command::Delete {
                room,
                target,
                reason,
                r#ref,
            })
        }
        "react" => {
            let room = fields.room()?;
            let target = fields.target()?;
            let key = normalize::reaction_key(fields.required("key")?)
                .map_err(|e| fields.reject(ErrorCode::InvalidField, e.to_string()))?;
            let op = ReactOp::parse(fields.required("op")?).ok_or_else(|| {
                fields.reject(ErrorCode::InvalidField, "op must be \"add\" or \"remove\"")
            })?;
            Ok(Command::React {
                room,
                target,
                key,
                op,
                r#ref,
            })
        }
        other => Err(fields.reject(
            ErrorCode::UnknownType,
            format!(
                "unknown type {other:?}; expected auth, join, say, edit, delete, react, leave, \
                 typing, ping, create_room, add_member, remove_member, grant_role or revoke_role"
            ),
        )),
    }
}

/// The frame's fields with its `ref`, so every error can carry the ref.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    r#ref: &'a Option<String>,
}

impl<'a> Fields<'a> {
    fn reject(&self, code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection::new(self.r#ref.clone(), code, message)
    }

    fn required(&self, key: &str) -> Result<&'a str, Rejection> {
        match self.map.get(key) {
            None | Some(Value::Null) => {
                Err(self.reject(ErrorCode::MissingField, format!("missing field {key:?}")))
            }
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.reject(
                ErrorCode::InvalidField,
                format!("field {key:?} must be a string"),
            )),
        }
    }

    /// A user id as tokens carry it (`sub`): validated like names, at the bound every
    /// consumer enforces, and never rewritten.
    fn user_id(&self) -> Result<String, Rejection> {
        let user = self.required("user")?;
        if !normalize::is_normal_name(user, &Limits::DECODE).unwrap_or(false) {
            return Err(self.reject(
                ErrorCode::InvalidField,
                "user must be a user id: 1 to 128 characters without control characters",
            ));
        }
        Ok(user.to_owned())
    }

    /// The id of the message an edit, deletion or reaction acts on.
    fn target(&self) -> Result<String, Rejection> {
        let target = self.required("target")?;
        if !chat_core::event::is_id(target) {
            return Err(self.reject(
                ErrorCode::InvalidField,
                "target must be a message id: 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', \
                 ':' or '-'",
            ));
        }
        Ok(target.to_owned())
    }

    fn room(&self) -> Result<String, Rejection> {
        let room = self.required("room")?;
        normalize::room(room)
            .map(str::to_owned)
            .map_err(|e| self.reject(ErrorCode::InvalidRoom, e.to_string()))
    }
}

fn optional_string(
    map: &Map<String, Value>,
    key: &str,
    max: usize,
    r#ref: Option<&String>,
) -> Result<Option<String>, Rejection> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(Rejection::new(
            r#ref.cloned(),
            ErrorCode::InvalidField,
            format!("field {key:?} must be a string of 1 to {max} characters"),
        )),
    }
}

/// A frame the gateway sends; `event` frames are built by [`event_message`] instead, once per
/// event for all its recipients.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage<'a> {
    /// First frame on every connection; `auth` says whether a token is expected first
    /// (`"token"`) or names are self-chosen (`"open"`).
    Hello {
        gateway: &'a str,
        auth: &'a str,
        limits: LimitsView,
    },
    /// A valid token was presented: who the connection speaks as, until when.
    Authenticated {
        user: &'a str,
        name: &'a str,
        expires_at: &'a str,
    },
    /// The connection may no longer read `room` (its membership was removed): no more of
    /// its events follow.
    Removed { room: &'a str, message: &'a str },
    /// Answer to `join`: the room's history, oldest first.
    Joined {
        room: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The events, oldest first, encoded once per history reply (`link::Page`).
        history: &'a serde_json::value::RawValue,
        /// Set when the room is private (the page shows a lock); absent for public rooms.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        private: bool,
    },
    /// The broker confirmed a `say` (or an edit, deletion, reaction, room or membership
    /// change); `id` is the new event's id.
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        id: &'a str,
    },
    /// Answer to `ping`.
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    /// Answer to `leave`.
    Left {
        room: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    /// A request failed; the connection stays usable.
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        code: ErrorCode,
        message: &'a str,
    },
}

/// The limits a client should respect, announced in `hello`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LimitsView {
    pub max_text: usize,
    pub max_name: usize,
    pub max_frame: usize,
}

impl ServerMessage<'_> {
    /// The JSON text of the frame.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

/// `{"type":"event","event":<event>}`, encoded once and shared by every recipient.
pub fn event_message(event: &Event) -> String {
    let event = event.to_json();
    let mut frame = String::with_capacity(event.len() + 26);
    frame.push_str(r#"{"type":"event","event":"#);
    frame.push_str(&event);
    frame.push('}');
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_default(frame: &str) -> Result<Command, Rejection> {
        parse(frame, &Limits::default())
    }

    fn code(frame: &str) -> ErrorCode {
        parse_default(frame).unwrap_err().code
    }

    #[test]
    fn valid_frames_become_commands() {
        assert_eq!(
            parse_default(r#"{"type":"join","room":"lobby","name":" alice ","ref":"j1"}"#),
            Ok(Command::Join {
                room: "lobby".into(),
                name: Some("alice".into()),
                since: None,
                r#ref: Some("j1".into())
            })
        );
        assert_eq!(
            parse_default(r#"{"type":"say","room":"lobby","text":"hi\r\nthere"}"#),
            Ok(Command::Say {
                room: "lobby".into(),
                text: "hi\nthere".into(),
                id: None,
                r#ref: None
            })
        );
        let id = uuid::Uuid::now_v7().to_string();
        let frame = serde_json::json!({"type":"say","room":"lobby","text":"hi","id":id});
        assert!(matches!(
            parse_default(&frame.to_string()),
            Ok(Command::Say { id: Some(given), .. }) if given == id
        ));
        assert_eq!(
            code(
                r#"{"type":"say","room":"lobby","text":"hi","id":"550e8400-e29b-41d4-a716-446655440000"}"#
            ),
            "invalid_field",
            "not a UUIDv7"
        );
        assert!(matches!(
            parse_default(r#"{"type":"leave","room":"lobby"}"#),
            Ok(Command::Leave { .. })
        ));
    }

    #[test]
    fn each_kind_of_bad_frame_has_its_own_code() {
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_json");
        assert_eq!(code(r#"{"room":"lobby"}"#), "missing_field");
        assert_eq!(code(r#"{"type":7}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"shout"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"say","text":"x"}"#), "missing_field");
        assert_eq!(
            code(r#"{"type":"say","room":"a b","text":"x"}"#),
            "invalid_room"
        );
        assert_eq!(
            code(r#"{"type":"join","room":"lobby","name":""}"#),
            "invalid_name"
        );
        assert_eq!(
            code(r#"{"type":"say","room":"lobby","text":"  "}"#),
            "invalid_text"
        );
        assert_eq!(
            code(r#"{"type":"say","room":"lobby","text":"x","ref":5}"#),
            "invalid_field"
        );
        let big = format!(
            r#"{{"type":"say","room":"lobby","text":"{}"}}"#,
            "a".repeat(17_000)
        );
        assert_eq!(code(&big), "too_large");
    }

    #[test]
    fn every_error_code_serialises_to_its_documented_name() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                Value::from(code.as_str()),
                "{code:?}"
            );
        }
        let names: std::collections::HashSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names.len(),
            ErrorCode::ALL.len(),
            "ALL lists each code once"
        );
    }

    #[test]
    fn the_protocol_docs_list_exactly_the_error_codes() {
        let docs = include_str!("../../docs/protocol.md");
        let section = docs
            .split("\n## Error codes\n")
            .nth(1)
            .expect("docs/protocol.md has an \"Error codes\" section");
        let section = section.split("\n## ").next().unwrap_or_default();
        let documented: Vec<&str> = section
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split('`').next())
            .collect();
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(documented, codes);
    }

    #[test]
    fn identity_and_membership_requests_have_their_documented_shapes() {
        assert_eq!(
            parse_default(r#"{"type":"auth","token":"a.b.c"}"#),
            Ok(Command::Auth {
                token: "a.b.c".into()
            })
        );
        assert_eq!(
            parse_default(r#"{"type":"create_room","room":"r","visibility":"private","ref":"c"}"#),
            Ok(Command::CreateRoom {
                room: "r".into(),
                visibility: Visibility::Private,
                r#ref: Some("c".into())
            })
        );
        assert_eq!(
            parse_default(r#"{"type":"remove_member","room":"r","user":"bob","ref":"m"}"#),
            Ok(Command::Membership {
                room: "r".into(),
                user: "bob".into(),
                added: false,
                r#ref: Some("m".into())
            })
        );
        assert_eq!(
            code(r#"{"type":"create_room","room":"r","visibility":"secret"}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"type":"add_member","room":"r","user":"b\nob"}"#),
            "invalid_field"
        );
        assert_eq!(code(r#"{"type":"auth"}"#), "missing_field");
        // A `user` field in a join or say is not a field of theirs: it is ignored.
        assert!(matches!(
            parse_default(r#"{"type":"say","room":"lobby","text":"hi","user":"alice"}"#),
            Ok(Command::Say { .. })
        ));
    }

    #[test]
    fn edits_deletions_and_reactions_have_their_documented_shapes() {
        assert_eq!(
            parse_default(
                r#"{"type":"edit","room":"r","target":"m-1","text":"new\r\ntext","ref":"e"}"#
            ),
            Ok(Command::Edit {
                room: "r".into(),
                target: "m-1".into(),
                text: "new\ntext".into(),
                r#ref: Some("e".into())
            })
        );
        assert_eq!(
            parse_default(r#"{"type":"delete","room":"r","target":"m-1","ref":"d"}"#),
            Ok(Command::Delete {
                room: "r".into(),
                target: "m-1".into(),
                reason: None,
                r#ref: Some("d".into())
            })
        );
        assert_eq!(
            parse_default(r#"{"type":"react","room":"r","target":"m-1","key":"👍","op":"add"}"#),
            Ok(Command::React {
                room: "r".into(),
                target: "m-1".into(),
                key: "👍".into(),
                op: ReactOp::Add,
                r#ref: None
            })
        );
        assert_eq!(
            parse_default(r#"{"type":"grant_role","room":"r","user":"bob","role":"moderator"}"#),
            Ok(Command::Role {
                room: "r".into(),
                user: "bob".into(),
                role: Role::Moderator,
                granted: true,
                r#ref: None
            })
        );
        assert_eq!(
            code(r#"{"type":"edit","room":"r","text":"x"}"#),
            "missing_field"
        );
        assert_eq!(
            code(r#"{"type":"edit","room":"r","target":"a b","text":"x"}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"type":"edit","room":"r","target":"m","text":" "}"#),
            "invalid_text"
        );
        for key in ["lol", "👍👍👍👍👍👍👍👍👍", "👍 ", "\u{202e}👍", ""] {
            let frame =
                serde_json::json!({"type":"react","room":"r","target":"m","key":key,"op":"add"});
            assert_eq!(code(&frame.to_string()), "invalid_field", "{key:?}");
        }
        assert_eq!(
            code(r#"{"type":"react","room":"r","target":"m","key":"👍","op":"toggle"}"#),
            "invalid_field"
        );
        let long =
            serde_json::json!({"type":"delete","room":"r","target":"m","reason":"x".repeat(201)});
        assert_eq!(code(&long.to_string()), "invalid_field");
        assert_eq!(
            code(r#"{"type":"grant_role","room":"r","user":"bob","role":"admin"}"#),
            "invalid_field"
        );
    }

    #[test]
    fn errors_carry_the_requests_ref() {
        let err =
            parse_default(r#"{"type":"say","room":"lobby","text":"","ref":"c-1"}"#).unwrap_err();
        assert_eq!(err.r#ref.as_deref(), Some("c-1"));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Every code `parse` may answer with (docs/protocol.md).
        const CODES: [ErrorCode; 8] = [
            ErrorCode::TooLarge,
            ErrorCode::InvalidJson,
            ErrorCode::MissingField,
            ErrorCode::InvalidField,
            ErrorCode::UnknownType,
            ErrorCode::InvalidRoom,
            ErrorCode::InvalidName,
            ErrorCode::InvalidText,
        ];

        fn frame_like() -> impl Strategy<Value = String> {
            let field = prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                ".{0,80}".prop_map(Value::from),
                "[A-Za-z0-9_-]{1,64}".prop_map(Value::from),
                Just(serde_json::json!([1, "a"])),
            ];
            (
                prop_oneof![
                    Just(Value::from("join")),
                    Just(Value::from("say")),
                    Just(Value::from("leave")),
                    Just(Value::from("typing")),
                    Just(Value::from("edit")),
                    Just(Value::from("delete")),
                    Just(Value::from("react")),
                    field.clone()
                ],
                field.clone(),
                field.clone(),
                field.clone(),
                field.clone(),
                field,
            )
                .prop_map(|(kind, room, name, text, since, r)| {
                    serde_json::json!({"type": kind, "room": room, "name": name,
                                       "text": text, "since": since, "ref": r,
                                       "state": name, "target": since, "key": name,
                                       "op": text, "reason": name})
                    .to_string()
                })
        }

        fn check(frame: &str) {
            let limits = Limits::default();
            match parse(frame, &limits) {
                Err(rejection) => {
                    assert!(CODES.contains(&rejection.code), "{}", rejection.code);
                    assert!(!rejection.message.is_empty());
                }
                Ok(Command::Join { room, name, .. }) => {
                    assert!(normalize::room(&room).is_ok());
                    if let Some(name) = name {
                        assert_eq!(
                            normalize::name(&name, &limits).as_deref(),
                            Ok(name.as_str())
                        );
                    }
                }
                Ok(Command::Say { room, text, .. }) => {
                    assert!(normalize::room(&room).is_ok());
                    assert_eq!(
                        normalize::text(&text, &limits).as_deref(),
                        Ok(text.as_str())
                    );
                }
                Ok(Command::Edit {
                    room, target, text, ..
                }) => {
                    assert!(normalize::room(&room).is_ok());
                    assert!(chat_core::event::is_id(&target));
                    assert_eq!(
                        normalize::text(&text, &limits).as_deref(),
                        Ok(text.as_str())
                    );
                }
                Ok(Command::Delete {
                    room,
                    target,
                    reason,
                    ..
                }) => {
                    assert!(normalize::room(&room).is_ok());
                    assert!(chat_core::event::is_id(&target));
                    if let Some(reason) = reason {
                        assert_eq!(normalize::reason(&reason).as_ref(), Ok(&reason));
                    }
                }
                Ok(Command::React {
                    room, target, key, ..
                }) => {
                    assert!(normalize::room(&room).is_ok());
                    assert!(chat_core::event::is_id(&target));
                    assert_eq!(normalize::reaction_key(&key).as_ref(), Ok(&key));
                }
                Ok(Command::Leave { room, .. })
                | Ok(Command::Typing { room, .. })
                | Ok(Command::CreateRoom { room, .. })
                | Ok(Command::Role { room, .. })
                | Ok(Command::Membership { room, .. }) => assert!(normalize::room(&room).is_ok()),
                Ok(Command::Ping { .. }) | Ok(Command::Auth { .. }) => {}
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn any_text_frame_is_a_valid_command_or_a_documented_error(frame in ".{0,300}") {
                check(&frame);
            }

            #[test]
            fn frame_like_json_is_a_valid_command_or_a_documented_error(frame in frame_like()) {
                check(&frame);
            }
        }
    }

    #[test]
    fn the_event_message_wraps_the_event_json() {
        let event = Event::new(chat_core::EventKind::Join, "lobby", "a", None, "gw");
        let frame: Value = serde_json::from_str(&event_message(&event)).unwrap();
        assert_eq!(frame["type"], "event");
        assert_eq!(frame["event"]["id"], event.id.as_str());
    }
}
