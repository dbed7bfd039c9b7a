//! Exactly once from the user's view. A client may choose a `say`'s event id itself (a
//! UUIDv7) and resend it as often as it likes — after `unavailable`, after `unconfirmed`,
//! after a reconnect, on another gateway — and the message exists once.
//!
//! Each gateway remembers, for the ids it has seen lately, a fingerprint of the message
//! (room, speaker, text) and whether the broker confirmed it. It learns them from its own
//! publishes, from every message event it consumes (routed by room, those of the rooms it
//! serves) and from the histories its joins load (a resend comes from a client that joined
//! the room here), so a resend that reaches another gateway is recognised too:
//! - a confirmed id with the same fingerprint is acked again without publishing;
//! - an id whose publish is in flight here waits for that publish's outcome;
//! - an id seen with another fingerprint is a `conflict` and changes nothing;
//! - an unknown id is published under that id. Should the original exist beyond this
//!   memory (a gateway restarted, or more than [`REMEMBERED`] messages since), every
//!   consumer still keeps one event per id: the archive stores the first, the logger and
//!   the gateways drop repeats they remember.
//!
//! Client ids must carry a timestamp within [`ID_WINDOW`] of the gateway's clock, so a
//! resend can only ever concern a message from the last few minutes.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// How far a client-made id's timestamp may be from the gateway's clock, either way.
pub const ID_WINDOW: Duration = Duration::from_secs(300);
/// How many message ids a gateway remembers (about 4 MB at most: ids are kept as 128-bit
/// numbers).
pub const REMEMBERED: usize = 65_536;

/// How a publish ended, as the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The broker confirmed it: `ack`.
    Confirmed,
    /// The broker never got it: `unavailable`.
    NotPublished,
    /// Published, but no confirm came: `unconfirmed`; it may or may not exist.
    Unknown,
}

/// What a `say` with this id should do.
#[derive(Debug)]
pub enum Claim {
    /// Never seen: publish it, then [`Says::settle`] it.
    New,
    /// Already confirmed with the same content: ack it again.
    Confirmed,
    /// Being published here right now: wait for that outcome.
    InFlight(watch::Receiver<Option<Outcome>>),
    /// The id is taken by another message.
    Conflict,
}

enum State {
    InFlight(watch::Sender<Option<Outcome>>),
    Confirmed,
}

struct Remembered {
    fingerprint: u64,
    state: State,
    /// The event came back from the exchange: it exists, whatever its publish's outcome.
    seen: bool,
}

/// The ids this gateway has seen lately, oldest first.
#[derive(Default)]
pub struct Says {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    ids: HashMap<u128, Remembered>,
    order: VecDeque<u128>,
}

/// An event id as a number. Gateways only make and accept UUIDs; an id of another shape
/// (another producer's) cannot be resent through a gateway and is not remembered.
fn key(id: &str) -> Option<u128> {
    uuid::Uuid::try_parse(id).ok().map(|u| u.as_u128())
}

/// The fingerprint of a message's content: what a resend must repeat exactly.
pub fn fingerprint(room: &str, user: &str, text: &str) -> u64 {
    // SipHash with fixed keys: the same on every gateway of one build, which is all we
    // need (fingerprints are compared only within one process).
    let mut hasher = DefaultHasher::new();
    (room, user, text).hash(&mut hasher);
    hasher.finish()
}

/// Checks a client-made event id: a canonical (lowercase, hyphenated) UUIDv7 whose time
/// is within [`ID_WINDOW`] of `now`. The error says what is wrong.
pub fn check_client_id(id: &str, now: chrono::DateTime<chrono::Utc>) -> Result<(), String> {
    let uuid = uuid::Uuid::parse_str(id).map_err(|_| "\"id\" must be a UUID".to_owned())?;
    if uuid.hyphenated().to_string() != id {
        return Err("\"id\" must be written in lowercase with hyphens".to_owned());
    }
    if uuid.get_version_num() != 7 || uuid.get_variant() != uuid::Variant::RFC4122 {
        return Err("\"id\" must be a UUIDv7 (RFC 9562)".to_owned());
    }
    let at = chat_core::event::id_time(id).ok_or("\"id\" has no timestamp")?;
    let skew = (now - at).abs().to_std().unwrap_or(Duration::MAX);
    if skew > ID_WINDOW {
        return Err(format!(
            "\"id\" was made {} from the gateway's clock; at most {} s either way",
            if at < now {
                "too long ago"
            } else {
                "too far ahead"
            },
            ID_WINDOW.as_secs()
        ));
    }
    Ok(())
}

impl Says {
    /// Decides what a `say` with `id` and `fingerprint` does; a [`Claim::New`] id is
    /// recorded as in flight here until [`Says::settle`].
    pub fn claim(&self, id: &str, fingerprint: u64) -> Claim {
        let Some(id) = key(id) else {
            // Not a UUID: never accepted from clients, so never resent either.
            return Claim::New;
        };
        let mut inner = self.lock();
        match inner.ids.get(&id) {
            Some(known) if known.fingerprint != fingerprint => Claim::Conflict,
            Some(Remembered {
                state: State::Confirmed,
                ..
            }) => Claim::Confirmed,
            Some(Remembered {
                state: State::InFlight(sender),
                ..
            }) => Claim::InFlight(sender.subscribe()),
            None => {
                let (sender, _) = watch::channel(None);
                inner.remember(
                    id,
                    Remembered {
                        fingerprint,
                        state: State::InFlight(sender),
                        seen: false,
                    },
                );
                Claim::New
            }
        }
    }

    /// Records how the publish of a [`Claim::New`] id ended and tells those waiting. An id
    /// that was not confirmed is forgotten, so that a resend publishes it again.
    pub fn settle(&self, id: &str, outcome: Outcome) {
        let Some(id) = key(id) else {
            return;
        };
        let mut inner = self.lock();
        let Some(known) = inner.ids.get_mut(&id) else {
            return;
        };
        let state = std::mem::replace(&mut known.state, State::Confirmed);
        let was_in_flight = matches!(state, State::InFlight(_));
        if let State::InFlight(sender) = state {
            sender.send_replace(Some(outcome));
        }
        // Forget an id whose publish failed, so a resend publishes it again; unless the
        // event is known to exist (consumed here, or confirmed before).
        if outcome != Outcome::Confirmed && was_in_flight && !known.seen {
            inner.ids.remove(&id);
        }
    }

    /// Records a message event consumed from the exchange: it exists, confirmed.
    pub fn observe(&self, id: &str, fingerprint: u64) {
        let Some(id) = key(id) else {
            return;
        };
        let mut inner = self.lock();
        match inner.ids.entry(id) {
            // In flight here: our own publish settles it, but it exists now whatever the
            // confirm says. Otherwise known already.
            Entry::Occupied(mut known) => {
                if known.get().fingerprint == fingerprint {
                    known.get_mut().seen = true;
                }
            }
            Entry::Vacant(_) => inner.remember(
                id,
                Remembered {
                    fingerprint,
                    state: State::Confirmed,
                    seen: true,
                },
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn remember(&mut self, id: u128, remembered: Remembered) {
        while self.order.len() >= REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        self.order.push_back(id);
        self.ids.insert(id, remembered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn a_new_id_is_published_once_and_then_acked_again() {
        let says = Says::default();
        let fp = fingerprint("lobby", "alice", "hi");
        assert!(matches!(says.claim(ID, fp), Claim::New));
        let Claim::InFlight(mut waiting) = says.claim(ID, fp) else {
            panic!("a resend during the publish waits for it");
        };
        says.settle(ID, Outcome::Confirmed);
        assert_eq!(*waiting.borrow_and_update(), Some(Outcome::Confirmed));
        assert!(matches!(says.claim(ID, fp), Claim::Confirmed));
    }

    #[test]
    fn an_id_that_was_not_confirmed_can_be_published_again() {
        let says = Says::default();
        let fp = fingerprint("lobby", "alice", "hi");
        assert!(matches!(says.claim(ID, fp), Claim::New));
        says.settle(ID, Outcome::Unknown);
        assert!(matches!(says.claim(ID, fp), Claim::New));
        says.settle(ID, Outcome::NotPublished);
        assert!(matches!(says.claim(ID, fp), Claim::New));
    }

    #[test]
    fn an_unconfirmed_publish_that_came_back_on_the_exchange_is_known_to_exist() {
        let says = Says::default();
        let fp = fingerprint("lobby", "alice", "hi");
        assert!(matches!(says.claim(ID, fp), Claim::New));
        says.observe(ID, fp); // delivered, but the confirm is lost
        says.settle(ID, Outcome::Unknown);
        assert!(matches!(says.claim(ID, fp), Claim::Confirmed));
    }

    #[test]
    fn an_id_used_for_other_content_is_a_conflict() {
        let says = Says::default();
        says.observe(ID, fingerprint("lobby", "alice", "hi"));
        for (room, user, text) in [
            ("lobby", "mallory", "hi"),
            ("other", "alice", "hi"),
            ("lobby", "alice", "hi!"),
        ] {
            assert!(
                matches!(
                    says.claim(ID, fingerprint(room, user, text)),
                    Claim::Conflict
                ),
                "{room} {user} {text}"
            );
        }
        assert!(matches!(
            says.claim(ID, fingerprint("lobby", "alice", "hi")),
            Claim::Confirmed
        ));
    }

    #[test]
    fn memory_is_bounded_oldest_first() {
        let says = Says::default();
        let id = |n: usize| uuid::Uuid::from_u128(n as u128).to_string();
        for n in 0..REMEMBERED + 10 {
            says.observe(&id(n), 1);
        }
        let inner = says.lock();
        assert_eq!(inner.ids.len(), REMEMBERED);
        assert!(!inner.ids.contains_key(&0));
        assert!(inner.ids.contains_key(&((REMEMBERED + 9) as u128)));
    }

    #[test]
    fn client_ids_must_be_recent_canonical_uuidv7s() {
        let now = chrono::Utc::now();
        let fresh = uuid::Uuid::now_v7().to_string();
        assert_eq!(check_client_id(&fresh, now), Ok(()));
        assert!(check_client_id(&fresh.to_uppercase(), now).is_err());
        assert!(check_client_id("550e8400-e29b-41d4-a716-446655440000", now).is_err());
        assert!(check_client_id("not-a-uuid", now).is_err());
        let later = now + chrono::Duration::minutes(6);
        assert!(check_client_id(&fresh, later)
            .unwrap_err()
            .contains("too long ago"));
        let earlier = now - chrono::Duration::minutes(6);
        assert!(check_client_id(&fresh, earlier)
            .unwrap_err()
            .contains("too far ahead"));
    }
}
