//! The write path every backend shares: what storing a batch and rebuilding the projections
//! do, step by step, inside one transaction. The rules themselves live in `chat-core`
//! (`access::decide` for membership, `projection::fold` for messages); this module decides
//! which rows they read and which they change, and in what order. A backend supplies only
//! the statements, by implementing [`WriteTx`] for its transaction type: its own SQL, its
//! own types, its own locking. So SQLite and PostgreSQL cannot drift apart in what an event
//! does to the archive, only in how fast they do it.

use std::collections::HashMap;
use std::future::Future;

use chat_core::access::{self, Change, RoomInfo};
use chat_core::event::{Event, EventKind, Role, Visibility};
use chat_core::projection::{self, Action, MessageState};

use super::Rebuilt;

/// How many messages one projection query reads at once.
const REFRESH_CHUNK: usize = 500;

/// The statements of the write path, run on one open transaction of a backend. Each method
/// is one statement or one small group of them; none commits.
pub(super) trait WriteTx: Send {
    /// Serialises this transaction with every other writer, if the backend needs it (several
    /// archivers sharing one PostgreSQL database); taken before the first row is numbered.
    fn lock_writers(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Stores chat events (everything but membership events) with one statement, skipping
    /// ids already archived, in the slice's order. Returns how many rows were new.
    fn insert_chat(
        &mut self,
        events: &[&Event],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Stores a membership event in the membership log, not yet applied. Returns 0 if its id
    /// was already archived, else 1.
    fn insert_membership(
        &mut self,
        event: &Event,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// The room's visibility and owner as the access projection holds them, and whether
    /// `author` moderates it; `None` if the room was never created.
    fn room_info(
        &mut self,
        room: &str,
        author: &str,
    ) -> impl Future<Output = Result<Option<(Visibility, String, bool)>, sqlx::Error>> + Send;

    fn create_room(
        &mut self,
        room: &str,
        visibility: Visibility,
        owner: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    fn add_member(
        &mut self,
        room: &str,
        user: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    fn remove_member(
        &mut self,
        room: &str,
        user: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    fn grant(
        &mut self,
        room: &str,
        user: &str,
        role: Role,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    fn revoke(
        &mut self,
        room: &str,
        user: &str,
        role: Role,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Marks an archived membership event as one the rules let change the projection.
    fn mark_applied(&mut self, id: &str) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Which of these message ids earlier-archived actions target.
    fn awaited(
        &mut self,
        messages: &[&str],
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

    /// The stored message events with these ids (ids of other events are skipped).
    fn messages(
        &mut self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Event>, sqlx::Error>> + Send;

    /// Every edit, deletion and reaction targeting one of these ids.
    fn actions_on(
        &mut self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Event>, sqlx::Error>> + Send;

    /// Whether the action's author owned the room, or moderated it when the action was made
    /// (the latest applied role event for them before it, by time then id).
    fn privileged(
        &mut self,
        room: &str,
        action: &Event,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Writes a message's folded state; a deleted message also loses its text in the stored
    /// message and edit events (and so in the search index).
    fn write_state(
        &mut self,
        message: &Event,
        state: &MessageState,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Empties the access and message projections (and any index that does not follow the
    /// stored text by itself) and marks every membership event unapplied.
    fn reset_projections(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// The whole membership log, in archive order.
    fn membership_log(&mut self) -> impl Future<Output = Result<Vec<Event>, sqlx::Error>> + Send;

    /// Every id some action targets, sorted.
    fn acted_on(&mut self) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

    /// How many events the archive holds.
    fn count_events(&mut self) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
}

/// Whether a batch can be stored by [`WriteTx::insert_chat`] alone, one statement in its own
/// transaction: it holds no membership event, no message and no action on one.
pub(super) fn chat_only(events: &[Event]) -> bool {
    events
        .iter()
        .all(|e| !e.kind.is_membership() && !e.kind.is_action() && e.kind != EventKind::Message)
}

/// Stores a batch: chat events with one statement, then membership events one by one, each
/// folded into the access projection, then every message the batch may change folded
/// again. Returns how many events were new. The caller commits.
pub(super) async fn insert(tx: &mut impl WriteTx, events: &[Event]) -> Result<u64, sqlx::Error> {
    let (membership, chat): (Vec<&Event>, Vec<&Event>) =
        events.iter().partition(|e| e.kind.is_membership());
    tx.lock_writers().await?;
    let mut inserted = if chat.is_empty() {
        0
    } else {
        tx.insert_chat(&chat).await?
    };
    for event in membership {
        if tx.insert_membership(event).await? == 1 {
            fold_membership(tx, event).await?;
            inserted += 1;
        }
    }
    let touched = touched_messages(tx, &chat).await?;
    refresh_messages(tx, &touched).await?;
    Ok(inserted)
}

/// Drops the projections and folds them again from the logs: the access projection from
/// the membership log in archive order, the message projection from every message acted
/// on. The caller commits.
pub(super) async fn rebuild(tx: &mut impl WriteTx) -> Result<Rebuilt, sqlx::Error> {
    tx.lock_writers().await?;
    tx.reset_projections().await?;
    let membership = tx.membership_log().await?;
    for event in &membership {
        fold_membership(tx, event).await?;
    }
    let targets = tx.acted_on().await?;
    let messages = refresh_messages(tx, &targets).await?;
    Ok(Rebuilt {
        events: tx.count_events().await?,
        membership: membership.len() as u64,
        messages,
    })
}

/// Folds one archived membership event into the access projection with the shared rules,
/// and marks it applied if they let it change anything; a refused event changes nothing
/// and is logged.
async fn fold_membership(tx: &mut impl WriteTx, event: &Event) -> Result<(), sqlx::Error> {
    let room = tx.room_info(&event.room, &event.user).await?;
    let info = room
        .as_ref()
        .map(|(visibility, owner, author_moderates)| RoomInfo {
            visibility: *visibility,
            owner,
            author_moderates: *author_moderates,
        });
    let change = match access::decide(info, event) {
        Ok(change) => change,
        Err(refusal) => {
            super::refused(event, &refusal);
            return Ok(());
        }
    };
    let room = &event.room;
    match change {
        Change::Created { visibility, owner } => {
            tx.create_room(room, visibility, &owner).await?;
            if visibility == Visibility::Private {
                tx.add_member(room, &owner).await?;
            }
        }
        Change::Added(member) => tx.add_member(room, &member).await?,
        Change::Removed(member) => tx.remove_member(room, &member).await?,
        Change::Granted(member, role) => tx.grant(room, &member, role).await?,
        Change::Revoked(member, role) => tx.revoke(room, &member, role).await?,
    }
    tx.mark_applied(&event.id).await
}

/// The messages whose projection a batch may change: the targets of its actions, and its
/// messages that actions archived earlier wait for (delivered before their target).
async fn touched_messages(
    tx: &mut impl WriteTx,
    chat: &[&Event],
) -> Result<Vec<String>, sqlx::Error> {
    let mut touched: Vec<String> = chat
        .iter()
        .filter_map(|e| e.target.clone().filter(|_| e.kind.is_action()))
        .collect();
    let messages: Vec<&str> = chat
        .iter()
        .filter(|e| e.kind == EventKind::Message)
        .map(|e| e.id.as_str())
        .collect();
    if !messages.is_empty() {
        touched.extend(tx.awaited(&messages).await?);
    }
    touched.sort_unstable();
    touched.dedup();
    Ok(touched)
}

/// Folds each of these messages again from its stored message event and every action
/// targeting it (`chat_core::projection::fold`) and writes its state. Ids that are not
/// messages are skipped. Returns how many messages it folded.
async fn refresh_messages(tx: &mut impl WriteTx, ids: &[String]) -> Result<u64, sqlx::Error> {
    let mut folded = 0;
    for chunk in ids.chunks(REFRESH_CHUNK) {
        let messages = tx.messages(chunk).await?;
        if messages.is_empty() {
            continue;
        }
        let actions = tx.actions_on(chunk).await?;
        let mut by_target: HashMap<&str, Vec<&Event>> = HashMap::new();
        for action in &actions {
            if let Some(target) = action.target.as_deref() {
                by_target.entry(target).or_default().push(action);
            }
        }
        for message in &messages {
            let mut folded_actions = Vec::new();
            for action in by_target.remove(message.id.as_str()).unwrap_or_default() {
                let privileged = needs_privilege(message, action)
                    && tx.privileged(&message.room, action).await?;
                folded_actions.push(Action {
                    event: action,
                    privileged,
                });
            }
            let state = projection::fold(message, &folded_actions);
            tx.write_state(message, &state).await?;
            folded += 1;
        }
    }
    Ok(folded)
}

/// Whether the rules would ask if the action's author owns or moderates the room: only
/// for a deletion by a verified user who is not the author.
fn needs_privilege(message: &Event, action: &Event) -> bool {
    action.kind == EventKind::Delete
        && !action.guest
        && !(message.user == action.user && message.guest == action.guest)
}
