//! A client's send queue: a bounded single-consumer queue that allocates nothing until it
//! is used. tokio's mpsc channel allocates a block of 32 slots (and a cache-padded channel
//! header) for every queue up front, which for thousands of idle clients is most of what
//! they cost; this queue is a `VecDeque` behind a mutex that is never held across an
//! `.await`. The writer swaps the whole queue out per burst, so two small buffers take
//! turns, and it drops one that a burst grew large (see `connection::write_loop`). The
//! wake-up protocol (two `Notify`s and a `receiver_waiting` flag) is proven by a stress
//! test of concurrent push, close and drain on several threads, which fails when either
//! wake-up is removed.
//!
//! A receiver that waits on an empty queue may leave a *bypass* (for a client's writer: its
//! socket): a sender that finds the bypass hands its item straight to it, under the lock,
//! instead of queuing it and waking the receiver's task. Handing over never reorders: the
//! bypass exists only while the queue is empty and the receiver has nothing in hand, the
//! first item queued revokes it, and so does the receiver when it stops waiting for any
//! reason, its wait cancelled included. A second stress test proves that order holds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// Why an item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds `capacity` items already.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// The receiver is gone (or, for a timed send, the queue stayed full).
#[derive(Debug, PartialEq, Eq)]
pub struct SendError<T>(pub T);

struct Shared<T, B> {
    state: Mutex<State<T, B>>,
    capacity: usize,
    /// Wakes the receiver: an item arrived or the last sender left.
    item: Notify,
    /// Wakes blocked senders: room was made or the receiver left.
    room: Notify,
}

struct State<T, B> {
    items: VecDeque<T>,
    senders: usize,
    receiver_alive: bool,
    /// The receiver found the queue empty and waits: the next push must wake it.
    receiver_waiting: bool,
    /// Left by the waiting receiver: senders may hand items to it instead of queuing. Only
    /// ever set while `receiver_waiting` and `items` is empty.
    bypass: Option<B>,
}

/// Queues items; cheap to clone.
pub struct Sender<T, B = ()> {
    shared: Arc<Shared<T, B>>,
}

/// Takes items off the queue, in order.
pub struct Receiver<T, B = ()> {
    shared: Arc<Shared<T, B>>,
}

/// A queue of at most `capacity` items, whose receiver may leave a bypass of type `B`.
pub fn channel<T, B>(capacity: usize) -> (Sender<T, B>, Receiver<T, B>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver_alive: true,
            receiver_waiting: false,
            bypass: None,
        }),
        capacity: capacity.max(1),
        item: Notify::new(),
        room: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl<T, B> Shared<T, B> {
    fn lock(&self) -> MutexGuard<'_, State<T, B>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T, B> Sender<T, B> {
    /// Queues `item` now, or says why not.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let state = self.shared.lock();
        self.queue(state, item)
    }

    /// Hands `item` to the receiver's bypass if it left one (the receiver waits on an empty
    /// queue), else queues it as [`Sender::try_send`]. `via` runs under the queue's lock and
    /// returns what it could not deliver (all of `item`, or the rest of it), which is then
    /// queued ahead of anything sent after.
    pub fn try_send_via(
        &self,
        item: T,
        via: impl FnOnce(&B, T) -> Option<T>,
    ) -> Result<(), TrySendError<T>> {
        let mut state = self.shared.lock();
        let item = match &state.bypass {
            Some(bypass) => match via(bypass, item) {
                None => return Ok(()),
                Some(rest) => rest,
            },
            None => item,
        };
        // The bypass is revoked by queuing: with something queued it would reorder.
        state.bypass = None;
        self.queue(state, item)
    }

    fn queue(
        &self,
        mut state: MutexGuard<'_, State<T, B>>,
        item: T,
    ) -> Result<(), TrySendError<T>> {
        if !state.receiver_alive {
            return Err(TrySendError::Closed(item));
        }
        if state.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        state.items.push_back(item);
        state.bypass = None;
        let wake = std::mem::take(&mut state.receiver_waiting);
        drop(state);
        if wake {
            self.shared.item.notify_one();
        }
        Ok(())
    }

    /// Queues `item`, waiting for room; fails only if the receiver is gone.
    pub async fn send(&self, mut item: T) -> Result<(), SendError<T>> {
        loop {
            // Registered before looking, so room made in between is not missed.
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(SendError(back)),
                Err(TrySendError::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// [`Sender::send`], giving up after `timeout`.
    pub async fn send_timeout(&self, item: T, timeout: Duration) -> Result<(), ()> {
        match tokio::time::timeout(timeout, self.send(item)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }
}

impl<T, B> Clone for Sender<T, B> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T, B> Drop for Sender<T, B> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            let last = state.senders == 0 && std::mem::take(&mut state.receiver_waiting);
            if last {
                state.bypass = None;
            }
            last
        };
        if last {
            self.shared.item.notify_one();
        }
    }
}

impl<T, B> std::fmt::Debug for Sender<T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl<T, B> Receiver<T, B> {
    /// Waits until something is queued and swaps the whole queue, oldest first, with
    /// `batch` (which must be empty): one lock per burst, and the two buffers take turns
    /// instead of being allocated anew. Returns false, leaving `batch` empty, once every
    /// sender is gone and the queue is empty.
    pub async fn recv_all(&mut self, batch: &mut VecDeque<T>) -> bool {
        self.recv_all_or_bypass(batch, None).await
    }

    /// [`Receiver::recv_all`], leaving `bypass` for senders ([`Sender::try_send_via`])
    /// while it waits. The caller must have nothing in hand that should go before what the
    /// bypass takes. The bypass is revoked when this returns or is cancelled.
    pub async fn recv_all_or_bypass(
        &mut self,
        batch: &mut VecDeque<T>,
        mut bypass: Option<B>,
    ) -> bool {
        debug_assert!(batch.is_empty());
        let _revoke = bypass.is_some().then(|| Revoke(&self.shared));
        loop {
            {
                let mut state = self.shared.lock();
                if !state.items.is_empty() {
                    let was_full = state.items.len() >= self.shared.capacity;
                    std::mem::swap(&mut state.items, batch);
                    drop(state);
                    if was_full {
                        self.shared.room.notify_waiters();
                    }
                    return true;
                }
                if state.senders == 0 {
                    return false;
                }
                state.receiver_waiting = true;
                // Left once: only queuing (which wakes this) or the last sender leaving
                // (which ends it) takes it away again.
                if state.bypass.is_none() {
                    state.bypass = bypass.take();
                }
            }
            // A push after the lock was released leaves a permit, so it is not missed.
            self.shared.item.notified().await;
        }
    }
}

/// Takes the bypass back when the receiver stops waiting, however it stops.
struct Revoke<'a, T, B>(&'a Shared<T, B>);

impl<T, B> Drop for Revoke<'_, T, B> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_waiting = false;
        state.bypass = None;
    }
}

impl<T, B> Receiver<T, B> {
    /// Appends whatever is queued now to `batch`, without waiting: the writer's second
    /// look after its write delay.
    pub fn take_queued(&mut self, batch: &mut VecDeque<T>) {
        let mut state = self.shared.lock();
        if state.items.is_empty() {
            return;
        }
        let was_full = state.items.len() >= self.shared.capacity;
        batch.append(&mut state.items);
        drop(state);
        if was_full {
            self.shared.room.notify_waiters();
        }
    }
}

impl<T, B> Drop for Receiver<T, B> {
    fn drop(&mut self) {
        let (items, bypass) = {
            let mut state = self.shared.lock();
            state.receiver_alive = false;
            (std::mem::take(&mut state.items), state.bypass.take())
        };
        drop(bypass);
        // Dropped outside the lock: items may own senders of this very queue.
        drop(items);
        self.shared.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn recv(rx: &mut Receiver<i32>) -> Option<Vec<i32>> {
        let mut batch = VecDeque::new();
        rx.recv_all(&mut batch)
            .await
            .then(|| batch.into_iter().collect())
    }

    #[tokio::test]
    async fn items_arrive_in_order_and_the_end_is_reported_after_the_last_one() {
        let (tx, mut rx) = channel::<_, ()>(4);
        let other = tx.clone();
        tx.try_send(1).unwrap();
        other.send(2).await.unwrap();
        drop(tx);
        drop(other);
        assert_eq!(recv(&mut rx).await, Some(vec![1, 2]));
        assert_eq!(recv(&mut rx).await, None);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_try_send_and_makes_send_wait_for_room() {
        let (tx, mut rx) = channel::<_, ()>(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(3).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(recv(&mut rx).await, Some(vec![1, 2]));
        waiting.await.unwrap().unwrap();
        assert_eq!(recv(&mut rx).await, Some(vec![3]));
        assert!(tx.send_timeout(4, Duration::from_millis(10)).await.is_ok());
    }

    #[tokio::test]
    async fn senders_learn_that_the_receiver_is_gone_even_while_waiting() {
        let (tx, rx) = channel::<_, ()>(1);
        tx.try_send(1).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(SendError(2)));
        assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
    }

    #[tokio::test]
    async fn a_receiver_waiting_on_an_empty_queue_wakes_for_a_push_from_another_task() {
        let (tx, mut rx) = channel::<_, ()>(8);
        let receiving = tokio::spawn(async move { recv(&mut rx).await });
        tokio::task::yield_now().await;
        tokio::spawn(async move { tx.try_send(7).unwrap() });
        assert_eq!(receiving.await.unwrap(), Some(vec![7]));
    }

    /// The wake-up protocol under real concurrency: producers on several threads push
    /// (with `try_send` and with a waiting `send`) while the receiver drains and, in half the
    /// rounds, goes away mid-stream. Every item ends either received once, in its
    /// producer's order, or handed back to its sender; nobody waits forever (a lost wake-up
    /// would hang a round until the timeout fails it).
    #[test]
    fn concurrent_push_close_and_drain_lose_nothing_and_never_hang() {
        const PRODUCERS: u64 = 4;
        const ITEMS: u64 = 500;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        for round in 0..60u64 {
            let close_early = round % 2 == 1;
            runtime.block_on(async move {
                let (tx, mut rx) = channel::<(u64, u64), ()>(8);
                let producers: Vec<_> = (0..PRODUCERS)
                    .map(|p| {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let mut returned = 0u64;
                            for n in 0..ITEMS {
                                let sent = if (n + p + round) % 3 == 0 {
                                    tx.send((p, n)).await.map_err(|_| ())
                                } else {
                                    loop {
                                        match tx.try_send((p, n)) {
                                            Ok(()) => break Ok(()),
                                            Err(TrySendError::Full(_)) => {
                                                tokio::task::yield_now().await
                                            }
                                            Err(TrySendError::Closed(_)) => break Err(()),
                                        }
                                    }
                                };
                                if sent.is_err() {
                                    returned += 1;
                                }
                            }
                            returned
                        })
                    })
                    .collect();
                drop(tx);
                let consumer = tokio::spawn(async move {
                    let mut next = [0u64; PRODUCERS as usize];
                    let mut received = 0u64;
                    let mut batch = VecDeque::new();
                    while rx.recv_all(&mut batch).await {
                        for (p, n) in batch.drain(..) {
                            assert_eq!(n, next[p as usize], "producer {p}'s order");
                            next[p as usize] += 1;
                            received += 1;
                        }
                        if close_early && received >= ITEMS {
                            break; // drops the receiver with producers mid-stream
                        }
                    }
                    received
                });
                let limit = Duration::from_secs(20);
                let received = tokio::time::timeout(limit, consumer)
                    .await
                    .expect("the receiver never hangs")
                    .unwrap();
                let mut returned = 0;
                for producer in producers {
                    returned += tokio::time::timeout(limit, producer)
                        .await
                        .expect("no sender hangs")
                        .unwrap();
                }
                // An item queued but not yet taken when the receiver left is dropped with
                // the queue: neither received nor returned.
                let sent = PRODUCERS * ITEMS;
                if close_early {
                    assert!(received + returned <= sent && received + returned + 8 >= sent);
                } else {
                    assert_eq!((received, returned), (sent, 0));
                }
            });
        }
    }

    #[tokio::test]
    async fn take_queued_appends_what_is_queued_without_waiting_and_makes_room() {
        let (tx, mut rx) = channel::<_, ()>(2);
        let mut batch = VecDeque::from([0]);
        rx.take_queued(&mut batch);
        assert_eq!(batch, [0], "nothing queued: nothing taken, no waiting");
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(3).await }
        });
        tokio::task::yield_now().await;
        rx.take_queued(&mut batch);
        assert_eq!(batch, [0, 1, 2]);
        waiting.await.unwrap().unwrap();
        assert_eq!(recv(&mut rx).await, Some(vec![3]));
    }

    /// The bypass under real concurrency: producers on several threads hand items to the
    /// bypass (a "socket" that sometimes takes only nothing, so the item is queued) or queue
    /// them plainly, while the receiver drains to the same socket and now and then stops
    /// waiting (its wait cancelled, as a writer's is by a kick) and checks that nothing
    /// reaches the socket until it waits again. Every item reaches the socket once, in its
    /// producer's order.
    #[test]
    fn items_handed_to_the_bypass_and_items_queued_reach_the_socket_once_in_order() {
        type Socket = Arc<Mutex<Vec<(u64, u64)>>>;
        const PRODUCERS: u64 = 4;
        const ITEMS: u64 = 2000;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        for round in 0..20u64 {
            runtime.block_on(async move {
                let socket: Socket = Arc::default();
                let (tx, mut rx) = channel::<(u64, u64), Socket>(16);
                let producers: Vec<_> = (0..PRODUCERS)
                    .map(|p| {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            for n in 0..ITEMS {
                                let mut item = (p, n);
                                loop {
                                    let sent = if (n + p + round) % 5 == 0 {
                                        tx.try_send(item)
                                    } else {
                                        tx.try_send_via(item, |socket, item| {
                                            if (item.1 + round) % 7 == 0 {
                                                return Some(item); // the socket is full
                                            }
                                            socket.lock().unwrap().push(item);
                                            None
                                        })
                                    };
                                    match sent {
                                        Ok(()) => break,
                                        Err(TrySendError::Full(back)) => {
                                            item = back;
                                            tokio::task::yield_now().await
                                        }
                                        Err(TrySendError::Closed(_)) => panic!("closed"),
                                    }
                                }
                                if n % 64 == 0 {
                                    tokio::task::yield_now().await;
                                }
                            }
                        })
                    })
                    .collect();
                drop(tx);
                let consumer = tokio::spawn({
                    let socket = socket.clone();
                    async move {
                        let mut batch = VecDeque::new();
                        let mut waits = 0u64;
                        loop {
                            waits += 1;
                            let wait = rx.recv_all_or_bypass(&mut batch, Some(socket.clone()));
                            let received = if waits.is_multiple_of(3) {
                                tokio::select! {
                                    received = wait => received,
                                    _ = tokio::task::yield_now() => {
                                        // Cancelled: the bypass must be gone already.
                                        let before = socket.lock().unwrap().len();
                                        for _ in 0..3 {
                                            tokio::task::yield_now().await;
                                        }
                                        assert_eq!(socket.lock().unwrap().len(), before);
                                        continue;
                                    }
                                }
                            } else {
                                wait.await
                            };
                            if !received {
                                break;
                            }
                            socket.lock().unwrap().extend(batch.drain(..));
                        }
                    }
                });
                let limit = Duration::from_secs(20);
                for producer in producers {
                    tokio::time::timeout(limit, producer)
                        .await
                        .expect("no sender hangs")
                        .unwrap();
                }
                tokio::time::timeout(limit, consumer)
                    .await
                    .expect("the receiver never hangs")
                    .unwrap();
                let mut next = [0u64; PRODUCERS as usize];
                for &(p, n) in socket.lock().unwrap().iter() {
                    assert_eq!(n, next[p as usize], "producer {p}'s order");
                    next[p as usize] += 1;
                }
                assert_eq!(next, [ITEMS; PRODUCERS as usize], "every item, once");
            });
        }
    }
}
