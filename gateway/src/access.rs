//! The gateway's access-control projection: who may read which private room, folded in
//! memory from the membership events by the shared rules (`chat_core::access`). At start,
//! and again whenever the broker link comes back (its exclusive queue died with the old
//! connection, so events may have been missed), [`run`] replays the membership log from the
//! archive over the broker, page by page, into a fresh projection; membership events that
//! arrive live meanwhile go into the current one and are kept aside, then folded into the
//! fresh one (repeats counted once by id) before it replaces the current one. After each
//! change, local members who may no longer read a room are removed from it at once.
//!
//! Between a new broker session and the end of the replay that follows it, the projection
//! is *stale*: a member removed while the link was down still looks like a member. Nothing
//! of a private room is then delivered live (the events are acked and left to the gap
//! repair, which runs once the projection is current again and asks the archive for them),
//! and joins wait for the replay, so a stale answer never lets anyone in or anything out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chat_core::access::{Access, Change, Reader, Refusal};
use chat_core::history::{MembershipRequest, MAX_MEMBERSHIP_PAGE};
use chat_core::Event;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::link::Link;
use crate::rooms::Rooms;

/// The projection and its rebuilding state.
#[derive(Debug)]
pub struct Projection {
    inner: RwLock<Inner>,
    /// True while the projection holds every membership event up to the live queue: from
    /// the end of a replay that began after the latest broker session started, until the
    /// next session starts.
    current: watch::Sender<bool>,
    /// The same as `current`, read on every delivery without a lock.
    current_now: AtomicBool,
    /// Counts broker sessions: a replay that began before the latest one does not make the
    /// projection current.
    sessions: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    access: Access,
    /// While a replay runs: the live membership events seen meanwhile.
    pending: Option<Vec<Event>>,
    /// The session count when the running replay began.
    replay_session: u64,
}

impl Default for Projection {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            current: watch::channel(false).0,
            current_now: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
        }
    }
}

impl Projection {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `reader` may read `room` now.
    pub fn can_read(&self, room: &str, reader: Reader<'_>) -> bool {
        self.read().access.can_read(room, reader)
    }

    /// Whether the room is private.
    pub fn is_private(&self, room: &str) -> bool {
        self.read().access.is_private(room)
    }

    /// Whether `user` (a verified id) owns or moderates `room` now.
    pub fn is_privileged(&self, room: &str, user: &str) -> bool {
        self.read().access.is_privileged(room, user)
    }

    /// What the rules say of `event` now, without folding it in.
    pub fn check(&self, event: &Event) -> Result<Change, Refusal> {
        let inner = self.read();
        chat_core::access::decide(inner.access.info(&event.room, &event.user), event)
    }

    /// Folds a membership event in (from the queue, or one this gateway just published);
    /// returns what changed. A refused event changes nothing and is counted.
    pub fn apply(&self, event: &Event) -> Option<Change> {
        let mut inner = self.write();
        if let Some(pending) = &mut inner.pending {
            pending.push(event.clone());
        }
        match inner.access.apply(event) {
            Ok(change) => change,
            Err(refusal) => {
                metrics::counter!("chat_membership_refused_total", "consumer" => "gateway")
                    .increment(1);
                tracing::warn!(id = %event.id, room = %event.room, reason = %refusal,
                    "a membership event breaks the rules; it changes nothing");
                None
            }
        }
    }

    /// A new broker session is about to consume: events may have been missed since the
    /// last one, so the projection is stale until the replay that follows.
    pub fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        self.current_now.store(false, Ordering::SeqCst);
        self.current.send_replace(false);
    }

    /// Whether an event of `room` must not be delivered live now: the room is private and
    /// the projection stale (see the module's comment). Costs one atomic load otherwise.
    pub fn holds_back(&self, room: &str) -> bool {
        !self.current_now.load(Ordering::SeqCst) && self.is_private(room)
    }

    /// Whether the projection is current (see [`Projection::session_started`]).
    pub fn is_current(&self) -> bool {
        self.current_now.load(Ordering::SeqCst)
    }

    /// Waits up to `limit` for the projection to be current; whether it is.
    pub async fn wait_current(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.until_current())
            .await
            .is_ok()
    }

    /// Waits until the projection is current.
    pub async fn until_current(&self) {
        let mut current = self.current.subscribe();
        let _ = current.wait_for(|c| *c).await;
    }

    /// The state in a comparable form (tests compare it with the archive's).
    pub fn snapshot(&self) -> chat_core::access::Snapshot {
        self.read().access.snapshot()
    }

    fn begin_replay(&self) {
        let mut inner = self.write();
        inner.pending = Some(Vec::new());
        inner.replay_session = self.sessions.load(Ordering::SeqCst);
    }

    /// Replaces the projection with the replayed one plus the live events seen meanwhile.
    fn finish_replay(&self, mut replayed: Access) {
        let mut inner = self.write();
        for event in inner.pending.take().unwrap_or_default() {
            let _ = replayed.apply(&event);
        }
        inner.access = replayed;
    }

    /// After a replay, once its evictions are done: the projection is current, unless
    /// another session started during the replay (then the next replay makes it so).
    fn mark_current(&self) {
        let inner = self.read();
        if inner.replay_session == self.sessions.load(Ordering::SeqCst) {
            self.current_now.store(true, Ordering::SeqCst);
            self.current.send_replace(true);
        }
    }

    fn abandon_replay(&self) {
        self.write().pending = None;
    }
}

/// How long to wait before asking again after a failed replay (no archiver yet).
const RETRY: Duration = Duration::from_secs(1);

/// Replays the membership log whenever the link comes up, until `shutdown`.
pub async fn run(
    mut link: Link,
    projection: Arc<Projection>,
    rooms: Arc<Rooms>,
    shutdown: CancellationToken,
) {
    loop {
        if link.is_ready() {
            loop {
                match replay(&link, &projection).await {
                    Ok(count) => {
                        tracing::info!(
                            events = count,
                            "access projection rebuilt from the archive"
                        );
                        // Evicted before it counts as current: no live event of the
                        // room reaches a member removed while the link was down.
                        rooms.evict_unreadable(&projection);
                        projection.mark_current();
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot replay the membership log yet");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(RETRY) => {}
                        }
                        if !link.is_ready() {
                            break;
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = link.changed() => if !changed { return },
        }
    }
}

/// One replay of the whole membership log; how many events it folded.
async fn replay(link: &Link, projection: &Projection) -> Result<usize, crate::link::HistoryError> {
    let started = std::time::Instant::now();
    projection.begin_replay();
    let mut replayed = Access::default();
    let mut after = 0;
    let mut count = 0;
    loop {
        let request = MembershipRequest {
            after,
            limit: MAX_MEMBERSHIP_PAGE,
        };
        let page = match link.membership(&request).await {
            Ok(page) => page,
            Err(err) => {
                projection.abandon_replay();
                return Err(err);
            }
        };
        for event in &page.events {
            // Whatever another producer put there: refused events change nothing.
            let _ = replayed.apply(event);
        }
        count += page.events.len();
        after = page.next;
        if page.events.len() < MAX_MEMBERSHIP_PAGE as usize {
            break;
        }
    }
    projection.finish_replay(replayed);
    metrics::histogram!("chat_access_replay_seconds").record(started.elapsed().as_secs_f64());
    Ok(count)
}
