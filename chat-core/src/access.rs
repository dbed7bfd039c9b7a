//! Who may read which room, and who moderates it: the access-control projection, folded
//! from the membership events (`room_created`, `member_added`, `member_removed`,
//! `role_granted`, `role_revoked`) in the order they were archived. The rules live here once, in [`decide`]: a gateway checks a request with
//! them before publishing, and every consumer re-checks each event with them when folding
//! it, so an event that breaks a rule (a guest creating a room, someone who neither owns
//! nor moderates a room adding a member) changes nothing anywhere, whoever published it.
//!
//! Who may do what: any verified user creates a room (and owns it); its owner and its
//! moderators add and remove members of a private room (nobody removes the owner); only
//! its owner grants and revokes the moderator role.
//!
//! The gateway keeps an [`Access`] in memory; the archiver keeps the same state in its
//! database, applying [`decide`] to one room's row at a time. Both are derived from the
//! events alone, so both can be rebuilt from the archive and must agree.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::event::{Event, EventKind, Role, Visibility};

/// Why a membership event changes nothing; the message is shown to the requester as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("only verified users (AUTH_MODE=token) may create rooms or change membership")]
    Guest,
    #[error("room {0:?} exists already")]
    RoomExists(String),
    #[error("room {0:?} was never created, so it has no members to change")]
    NoSuchRoom(String),
    #[error("only the owner or a moderator of room {0:?} may change its members")]
    NotModerator(String),
    #[error("only the owner of room {0:?} may grant or revoke roles")]
    NotOwner(String),
    #[error("room {0:?} is public: anyone may join it, it has no member list")]
    PublicRoom(String),
    #[error("the owner of room {0:?} cannot be removed from it")]
    OwnerStays(String),
    #[error("a {0} event does not change membership")]
    NotMembership(&'static str),
}

/// What a membership event does to a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The room now exists with this visibility, owned (and, if private, joined) by `owner`.
    Created {
        visibility: Visibility,
        owner: String,
    },
    /// `member` may now read the private room (already could: nothing changes).
    Added(String),
    /// `member` may no longer read the private room.
    Removed(String),
    /// `member` now has `role` in the room (already had: nothing changes).
    Granted(String, Role),
    /// `member` no longer has `role` in the room.
    Revoked(String, Role),
}

/// What [`decide`] needs to know of a room: whether it was created, how, and by whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomInfo<'a> {
    /// Who may read it.
    pub visibility: Visibility,
    /// Who created it (a verified user id).
    pub owner: &'a str,
    /// Whether the event's author moderates the room (holds the moderator role now).
    pub author_moderates: bool,
}

/// The rules: what `event` does to a room in state `room` (`None`: never created), or why
/// it does nothing. Pure, so that the gateway's memory and the archive's tables, which
/// both call it, cannot disagree.
pub fn decide(room: Option<RoomInfo<'_>>, event: &Event) -> Result<Change, Refusal> {
    if !event.kind.is_membership() {
        return Err(Refusal::NotMembership(event.kind.as_str()));
    }
    if event.guest {
        return Err(Refusal::Guest);
    }
    let name = || event.room.clone();
    let member = || event.member.clone().unwrap_or_default();
    match (event.kind, room) {
        (EventKind::RoomCreated, Some(_)) => Err(Refusal::RoomExists(name())),
        (EventKind::RoomCreated, None) => Ok(Change::Created {
            visibility: event.visibility.unwrap_or(Visibility::Public),
            owner: event.user.clone(),
        }),
        (_, None) => Err(Refusal::NoSuchRoom(name())),
        (EventKind::MemberAdded | EventKind::MemberRemoved, Some(info))
            if info.visibility == Visibility::Public =>
        {
            Err(Refusal::PublicRoom(name()))
        }
        (EventKind::RoleGranted | EventKind::RoleRevoked, Some(info))
            if info.owner != event.user =>
        {
            Err(Refusal::NotOwner(name()))
        }
        (EventKind::MemberAdded | EventKind::MemberRemoved, Some(info))
            if info.owner != event.user && !info.author_moderates =>
        {
            Err(Refusal::NotModerator(name()))
        }
        // Roles exist in public and private created rooms alike.
        (EventKind::RoleGranted, Some(_)) => Ok(Change::Granted(
            member(),
            event.role.unwrap_or(Role::Moderator),
        )),
        (EventKind::RoleRevoked, Some(_)) => Ok(Change::Revoked(
            member(),
            event.role.unwrap_or(Role::Moderator),
        )),
        (kind, Some(info)) => {
            if kind == EventKind::MemberAdded {
                Ok(Change::Added(member()))
            } else if member() == info.owner {
                Err(Refusal::OwnerStays(name()))
            } else {
                Ok(Change::Removed(member()))
            }
        }
    }
}

/// Who is asking to read a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader<'a> {
    /// A self-chosen name: may read public rooms only, whatever name it chose.
    Guest,
    /// A verified user; an `admin` (the token's `admin` claim) may read every room.
    User { id: &'a str, admin: bool },
}

/// One created room's access state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomAccess {
    /// Who may read it.
    pub visibility: Visibility,
    /// Who created it.
    pub owner: String,
    /// Who may read it if private: the owner and every member added and not removed since.
    pub members: HashSet<String>,
    /// Who moderates it (may delete anyone's messages there).
    pub moderators: HashSet<String>,
}

/// The access-control projection in memory: every created room's state, and the ids of
/// the events folded in so far, so that an event seen twice (live and in a replay) counts
/// once.
#[derive(Debug, Clone, Default)]
pub struct Access {
    rooms: HashMap<String, RoomAccess>,
    applied: HashSet<String>,
}

/// A projection in a comparable form: room → (visibility, owner, members, moderators),
/// sorted.
pub type Snapshot = BTreeMap<String, (Visibility, String, BTreeSet<String>, BTreeSet<String>)>;

impl Access {
    /// Folds one event in; what it changed, `Ok(None)` for an event folded in already or
    /// not about membership, or why the rules refuse it (then nothing changed).
    pub fn apply(&mut self, event: &Event) -> Result<Option<Change>, Refusal> {
        if !event.kind.is_membership() || self.applied.contains(&event.id) {
            return Ok(None);
        }
        let change = decide(self.info(&event.room, &event.user), event)?;
        self.applied.insert(event.id.clone());
        match &change {
            Change::Created { visibility, owner } => {
                let members = match visibility {
                    Visibility::Private => HashSet::from([owner.clone()]),
                    Visibility::Public => HashSet::new(),
                };
                self.rooms.insert(
                    event.room.clone(),
                    RoomAccess {
                        visibility: *visibility,
                        owner: owner.clone(),
                        members,
                        moderators: HashSet::new(),
                    },
                );
            }
            Change::Added(member) => {
                if let Some(room) = self.rooms.get_mut(&event.room) {
                    room.members.insert(member.clone());
                }
            }
            Change::Removed(member) => {
                if let Some(room) = self.rooms.get_mut(&event.room) {
                    room.members.remove(member);
                }
            }
            Change::Granted(member, Role::Moderator) => {
                if let Some(room) = self.rooms.get_mut(&event.room) {
                    room.moderators.insert(member.clone());
                }
            }
            Change::Revoked(member, Role::Moderator) => {
                if let Some(room) = self.rooms.get_mut(&event.room) {
                    room.moderators.remove(member);
                }
            }
        }
        Ok(Some(change))
    }

    /// What [`decide`] needs to know of `room` for an event by `author`.
    pub fn info(&self, room: &str, author: &str) -> Option<RoomInfo<'_>> {
        self.rooms.get(room).map(|r| RoomInfo {
            visibility: r.visibility,
            owner: &r.owner,
            author_moderates: r.moderators.contains(author),
        })
    }

    /// Whether the event with this id was folded in.
    pub fn has_applied(&self, id: &str) -> bool {
        self.applied.contains(id)
    }

    /// A created room's state; `None` for rooms never created (public by default).
    pub fn room(&self, room: &str) -> Option<&RoomAccess> {
        self.rooms.get(room)
    }

    /// Whether the room is private.
    pub fn is_private(&self, room: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.visibility == Visibility::Private)
    }

    /// Whether `reader` may read `room`: every public room (created or not); a private one
    /// only for its members and admins.
    pub fn can_read(&self, room: &str, reader: Reader<'_>) -> bool {
        match self.rooms.get(room) {
            None => true,
            Some(r) if r.visibility == Visibility::Public => true,
            Some(r) => match reader {
                Reader::Guest => false,
                Reader::User { admin: true, .. } => true,
                Reader::User { id, .. } => r.members.contains(id),
            },
        }
    }

    /// Whether `user` (a verified id) owns or moderates `room`: may delete anyone's
    /// messages there. Never true of a room that was never created, nor of a guest.
    pub fn is_privileged(&self, room: &str, user: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.owner == user || r.moderators.contains(user))
    }

    /// How many membership events were folded in.
    pub fn applied_count(&self) -> usize {
        self.applied.len()
    }

    /// The state in a comparable form.
    pub fn snapshot(&self) -> Snapshot {
        self.rooms
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    (
                        r.visibility,
                        r.owner.clone(),
                        r.members.iter().cloned().collect(),
                        r.moderators.iter().cloned().collect(),
                    ),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(room: &str, by: &str, visibility: Visibility) -> Event {
        let mut e = Event::new(EventKind::RoomCreated, room, by, None, "gw").verified(by);
        e.visibility = Some(visibility);
        e
    }

    fn member(kind: EventKind, room: &str, by: &str, who: &str) -> Event {
        let mut e = Event::new(kind, room, by, None, "gw").verified(by);
        e.member = Some(who.to_owned());
        e
    }

    fn alice() -> Reader<'static> {
        Reader::User {
            id: "alice",
            admin: false,
        }
    }

    fn bob() -> Reader<'static> {
        Reader::User {
            id: "bob",
            admin: false,
        }
    }

    #[test]
    fn a_private_room_is_read_by_its_owner_its_members_and_admins_only() {
        let mut access = Access::default();
        access
            .apply(&created("board", "alice", Visibility::Private))
            .unwrap();
        assert!(access.can_read("board", alice()));
        assert!(!access.can_read("board", bob()));
        assert!(!access.can_read("board", Reader::Guest));
        assert!(access.can_read(
            "board",
            Reader::User {
                id: "carol",
                admin: true
            }
        ));
        access
            .apply(&member(EventKind::MemberAdded, "board", "alice", "bob"))
            .unwrap();
        assert!(access.can_read("board", bob()));
        access
            .apply(&member(EventKind::MemberRemoved, "board", "alice", "bob"))
            .unwrap();
        assert!(!access.can_read("board", bob()));
        assert!(
            access.can_read("lobby", Reader::Guest),
            "never created: public"
        );
    }

    #[test]
    fn each_rule_refuses_what_it_should() {
        let mut access = Access::default();
        let mut by_guest = created("g", "mallory", Visibility::Private);
        by_guest.guest = true;
        assert_eq!(access.apply(&by_guest), Err(Refusal::Guest));
        access
            .apply(&created("board", "alice", Visibility::Private))
            .unwrap();
        assert!(matches!(
            access.apply(&created("board", "bob", Visibility::Private)),
            Err(Refusal::RoomExists(_))
        ));
        assert!(matches!(
            access.apply(&member(EventKind::MemberAdded, "board", "bob", "bob")),
            Err(Refusal::NotModerator(_))
        ));
        assert!(matches!(
            access.apply(&member(EventKind::MemberAdded, "nowhere", "alice", "bob")),
            Err(Refusal::NoSuchRoom(_))
        ));
        assert!(matches!(
            access.apply(&member(EventKind::MemberRemoved, "board", "alice", "alice")),
            Err(Refusal::OwnerStays(_))
        ));
        access
            .apply(&created("square", "alice", Visibility::Public))
            .unwrap();
        assert!(matches!(
            access.apply(&member(EventKind::MemberAdded, "square", "alice", "bob")),
            Err(Refusal::PublicRoom(_))
        ));
        assert!(
            !access.can_read("board", bob()),
            "nothing refused changed anything"
        );
    }

    #[test]
    fn only_the_owner_grants_and_revokes_the_moderator_role() {
        let mut access = Access::default();
        let role = |kind, by: &str, who: &str| {
            let mut e = member(kind, "square", by, who);
            e.role = Some(Role::Moderator);
            e
        };
        assert!(matches!(
            access.apply(&role(EventKind::RoleGranted, "alice", "bob")),
            Err(Refusal::NoSuchRoom(_))
        ));
        access
            .apply(&created("square", "alice", Visibility::Public))
            .unwrap();
        assert!(access.is_privileged("square", "alice"), "the owner");
        assert!(matches!(
            access.apply(&role(EventKind::RoleGranted, "bob", "bob")),
            Err(Refusal::NotOwner(_))
        ));
        access
            .apply(&role(EventKind::RoleGranted, "alice", "bob"))
            .unwrap();
        assert!(access.is_privileged("square", "bob"));
        access
            .apply(&role(EventKind::RoleRevoked, "alice", "bob"))
            .unwrap();
        assert!(!access.is_privileged("square", "bob"));
        assert!(!access.is_privileged("lobby", "alice"), "never created");
    }

    #[test]
    fn an_event_folded_in_twice_counts_once() {
        let mut access = Access::default();
        let create = created("board", "alice", Visibility::Private);
        let add = member(EventKind::MemberAdded, "board", "alice", "bob");
        let remove = member(EventKind::MemberRemoved, "board", "alice", "bob");
        for event in [&create, &add, &remove, &create, &add] {
            access.apply(event).unwrap();
        }
        assert!(
            !access.can_read("board", bob()),
            "the replayed add is not new"
        );
        assert_eq!(access.applied_count(), 3);
    }

    #[test]
    fn a_moderator_adds_and_removes_members_but_not_the_owner_and_grants_no_roles() {
        let mut access = Access::default();
        access
            .apply(&created("board", "alice", Visibility::Private))
            .unwrap();
        let mut grant = member(EventKind::RoleGranted, "board", "alice", "bob");
        grant.role = Some(Role::Moderator);
        access.apply(&grant).unwrap();
        access
            .apply(&member(EventKind::MemberAdded, "board", "bob", "carol"))
            .expect("a moderator adds a member");
        assert!(access.can_read(
            "board",
            Reader::User {
                id: "carol",
                admin: false
            }
        ));
        access
            .apply(&member(EventKind::MemberRemoved, "board", "bob", "carol"))
            .expect("a moderator removes a member");
        assert!(matches!(
            access.apply(&member(EventKind::MemberRemoved, "board", "bob", "alice")),
            Err(Refusal::OwnerStays(_))
        ));
        let mut promote = member(EventKind::RoleGranted, "board", "bob", "carol");
        promote.role = Some(Role::Moderator);
        assert!(matches!(access.apply(&promote), Err(Refusal::NotOwner(_))));
        let mut revoke = member(EventKind::RoleRevoked, "board", "alice", "bob");
        revoke.role = Some(Role::Moderator);
        access.apply(&revoke).unwrap();
        assert!(
            matches!(
                access.apply(&member(EventKind::MemberAdded, "board", "bob", "dave")),
                Err(Refusal::NotModerator(_))
            ),
            "a revoked moderator changes no members"
        );
    }
}
