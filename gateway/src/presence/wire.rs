//! What gateways tell each other on the transient `<prefix>.presence` exchange: who is
//! connected to which room through them. Never archived, never logged: the logger and the
//! archiver have no queue on that exchange. Every message is validated like any delivery,
//! since anyone who can publish on the broker can publish there; a bad one is dropped and
//! counted (`chat_presence_dropped_total`), never applied.

use std::collections::BTreeMap;

use chat_core::normalize::{self, Limits};
use serde::{Deserialize, Serialize};

/// The version of these messages.
pub const VERSION: u8 = 1;
/// Largest message accepted (a full state of a gateway with many rooms).
pub const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Most room entries (room, user) in one message.
pub const MAX_ENTRIES: usize = 200_000;
/// Most connections one user may claim through one gateway.
pub const MAX_CONNECTIONS: u32 = 100_000;
/// Longest gateway id or boot id.
const MAX_ID: usize = 128;

/// One user's presence in a room through one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The user id (a verified `sub`, or a guest's name).
    pub user: String,
    /// The display name.
    pub name: String,
    /// Open connections of this user in the room through this gateway.
    pub connections: u32,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Body {
    /// Everything the gateway has: replaces all it said before. Sent at start, as the
    /// heartbeat, and when a gateway it does not know yet appears.
    State {
        rooms: BTreeMap<String, Vec<Member>>,
    },
    /// The members of these rooms changed: replaces what it said of them before (an
    /// empty list: nobody there through this gateway any more).
    Rooms {
        rooms: BTreeMap<String, Vec<Member>>,
    },
    /// Someone started or stopped typing in a room.
    Typing {
        room: String,
        user: String,
        name: String,
        typing: bool,
    },
}

/// One message on the presence exchange. (Unknown fields are refused by [`Body`]: serde's
/// `flatten` hands it every field the envelope does not know.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Always [`VERSION`].
    pub v: u8,
    /// The gateway's id (`GATEWAY_ID`).
    pub gateway: String,
    /// Made anew at every start: a message with a new boot replaces all the gateway said
    /// under the old one at once.
    pub boot: String,
    #[serde(flatten)]
    pub body: Body,
}

/// Why a presence message was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    #[error("larger than {MAX_BYTES} bytes")]
    TooLarge,
    #[error("not a presence message: {0}")]
    Malformed(String),
    #[error("unknown version {0}")]
    Version(u8),
    #[error("bad gateway or boot id")]
    Id,
    #[error("bad room {0:?}")]
    Room(String),
    #[error("bad user or name in room {0:?}")]
    User(String),
    #[error("bad connection count")]
    Connections,
    #[error("more than {MAX_ENTRIES} entries")]
    TooMany,
}

impl Invalid {
    /// The `reason` label of `chat_presence_dropped_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::TooLarge | Invalid::TooMany => "too_large",
            Invalid::Malformed(_) | Invalid::Version(_) => "malformed",
            Invalid::Id | Invalid::Room(_) | Invalid::User(_) | Invalid::Connections => "invalid",
        }
    }
}

impl Announcement {
    /// The JSON body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("presence messages serialise")
    }

    /// Parses and validates one delivery: every room and name as strictly as a client's.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, Invalid> {
        if bytes.len() > MAX_BYTES {
            return Err(Invalid::TooLarge);
        }
        let message: Self =
            serde_json::from_slice(bytes).map_err(|e| Invalid::Malformed(e.to_string()))?;
        if message.v != VERSION {
            return Err(Invalid::Version(message.v));
        }
        let id_ok =
            |id: &str| !id.is_empty() && id.len() <= MAX_ID && id.chars().all(|c| !c.is_control());
        if !id_ok(&message.gateway) || !id_ok(&message.boot) {
            return Err(Invalid::Id);
        }
        match &message.body {
            Body::State { rooms } | Body::Rooms { rooms } => {
                let mut entries = 0usize;
                for (room, members) in rooms {
                    valid_room(room)?;
                    entries += members.len().max(1);
                    if entries > MAX_ENTRIES {
                        return Err(Invalid::TooMany);
                    }
                    for member in members {
                        valid_user(room, &member.user, &member.name, limits)?;
                        if !(1..=MAX_CONNECTIONS).contains(&member.connections) {
                            return Err(Invalid::Connections);
                        }
                    }
                }
            }
            Body::Typing {
                room, user, name, ..
            } => {
                valid_room(room)?;
                valid_user(room, user, name, limits)?;
            }
        }
        Ok(message)
    }
}

fn valid_room(room: &str) -> Result<(), Invalid> {
    match normalize::room(room) {
        Ok(normal) if normal == room => Ok(()),
        _ => Err(Invalid::Room(room.to_owned())),
    }
}

fn valid_user(room: &str, user: &str, name: &str, limits: &Limits) -> Result<(), Invalid> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars().count() <= limits.max_name.max(MAX_ID)
            && s.chars().all(|c| !c.is_control())
    };
    if ok(user) && ok(name) {
        Ok(())
    } else {
        Err(Invalid::User(room.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::DEFAULT
    }

    fn state(rooms: &[(&str, &[(&str, u32)])]) -> Announcement {
        Announcement {
            v: VERSION,
            gateway: "gw-1".into(),
            boot: "b1".into(),
            body: Body::State {
                rooms: rooms
                    .iter()
                    .map(|(room, members)| {
                        let members = members
                            .iter()
                            .map(|(user, connections)| Member {
                                user: (*user).into(),
                                name: (*user).into(),
                                connections: *connections,
                            })
                            .collect();
                        ((*room).to_owned(), members)
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn a_message_survives_encoding() {
        let message = state(&[("lobby", &[("alice", 2), ("bob", 1)]), ("empty", &[])]);
        let bytes = message.encode();
        assert_eq!(Announcement::decode(&bytes, &limits()), Ok(message));
        let typing = Announcement {
            v: VERSION,
            gateway: "gw-2".into(),
            boot: "b2".into(),
            body: Body::Typing {
                room: "lobby".into(),
                user: "u1".into(),
                name: "Alice".into(),
                typing: true,
            },
        };
        assert_eq!(
            Announcement::decode(&typing.encode(), &limits()),
            Ok(typing)
        );
    }

    #[test]
    fn foreign_garbage_is_refused_with_its_reason() {
        let cases: &[(&str, &str)] = &[
            ("not json", "malformed"),
            (
                r#"{"v":1,"gateway":"g","boot":"b","kind":"state"}"#,
                "malformed",
            ),
            (
                r#"{"v":2,"gateway":"g","boot":"b","kind":"state","rooms":{}}"#,
                "malformed",
            ),
            (
                r#"{"v":1,"gateway":"","boot":"b","kind":"state","rooms":{}}"#,
                "invalid",
            ),
            (
                r#"{"v":1,"gateway":"g","boot":"b","kind":"gossip","rooms":{}}"#,
                "malformed",
            ),
            (
                r#"{"v":1,"gateway":"g","boot":"b","kind":"state","rooms":{"has space":[]}}"#,
                "invalid",
            ),
            (
                r#"{"v":1,"gateway":"g","boot":"b","kind":"state","rooms":{"lobby":[{"user":"","name":"x","connections":1}]}}"#,
                "invalid",
            ),
            (
                r#"{"v":1,"gateway":"g","boot":"b","kind":"state","rooms":{"lobby":[{"user":"a","name":"a","connections":0}]}}"#,
                "invalid",
            ),
            (
                r#"{"v":1,"gateway":"g","boot":"b","kind":"rooms","rooms":{"lobby":[{"user":"a","name":"a","connections":1,"admin":true}]}}"#,
                "malformed",
            ),
            (
                r#"{"v":1,"gateway":"g","boot":"b","kind":"typing","room":"lobby","user":"a\u0000","name":"a","typing":true}"#,
                "invalid",
            ),
        ];
        for (bytes, reason) in cases {
            let err = Announcement::decode(bytes.as_bytes(), &limits()).expect_err(bytes);
            assert_eq!(err.reason(), *reason, "{bytes}: {err}");
        }
        let huge = vec![b' '; MAX_BYTES + 1];
        assert_eq!(
            Announcement::decode(&huge, &limits()),
            Err(Invalid::TooLarge)
        );
    }
}
