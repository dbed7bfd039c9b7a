//! Single flight: callers asking the same question while it is already being asked wait
//! for that answer instead of asking again. A join storm into one room is thousands of
//! clients asking the archive the same question (the room's latest history) within a
//! second; asked once per gateway, the archive answers a handful of requests instead of a
//! queue of thousands that outlives the history timeout.
//!
//! Sharing is sound for history because a join does not need an answer computed after it
//! registered: the joiner's live events are buffered from its registration on, and what
//! the gateway received between the history's last event and then is added from the
//! gateway's memory of recent events (`connection::catch_up`), whichever moment the archive
//! answered at.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// The calls in flight, by key, each with the callers waiting for its answer.
#[derive(Debug)]
pub(crate) struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, Vec<oneshot::Sender<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            calls: Mutex::default(),
        }
    }
}

/// Whether a caller made the call or shared another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// It made the call (first to ask, or the call it waited for was abandoned).
    Made,
    /// It got the answer of a call already in flight.
    Shared,
}

/// Removes the key when the caller that makes the call is done or is dropped midway; in
/// the second case the waiters' senders drop with it and they make the call themselves.
struct Leader<'a, K: Hash + Eq, V> {
    flight: &'a SingleFlight<K, V>,
    key: Option<K>,
}

impl<K: Hash + Eq, V> Drop for Leader<'_, K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.flight.lock().remove(&key);
        }
    }
}

impl<K, V> SingleFlight<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Vec<oneshot::Sender<V>>>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `call` for `key`, unless a call for the same key is in flight: then waits for
    /// its answer. Every caller waiting when the call ends gets a clone of its answer.
    pub(crate) async fn run<F, Fut>(&self, key: K, call: F) -> (V, Role)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let waiting = {
            let mut calls = self.lock();
            match calls.get_mut(&key) {
                Some(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    calls.insert(key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(answer) = waiting {
            return match answer.await {
                Ok(value) => (value, Role::Shared),
                // The caller making the call was dropped before it answered: ask alone
                // rather than wait for nobody.
                Err(_) => (call().await, Role::Made),
            };
        }
        let mut leader = Leader {
            flight: self,
            key: Some(key),
        };
        let value = call().await;
        let key = leader
            .key
            .take()
            .expect("the key is taken only here or on drop");
        let waiters = self.lock().remove(&key).unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(value.clone());
        }
        (value, Role::Made)
    }

    /// How many keys have a call in flight.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn callers_arriving_during_a_call_share_its_answer() {
        let flight = Arc::new(SingleFlight::<&str, u32>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let first = tokio::spawn({
            let (flight, calls, release) = (flight.clone(), calls.clone(), release.clone());
            async move {
                flight
                    .run("lobby", || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        7
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        let others: Vec<_> = (0..5)
            .map(|_| {
                let (flight, calls) = (flight.clone(), calls.clone());
                tokio::spawn(async move {
                    flight
                        .run("lobby", || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            99
                        })
                        .await
                })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        assert_eq!(first.await.unwrap(), (7, Role::Made));
        for other in others {
            assert_eq!(other.await.unwrap(), (7, Role::Shared));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one call for six callers");
        assert_eq!(flight.in_flight(), 0);
    }

    #[tokio::test]
    async fn different_keys_and_later_callers_make_their_own_calls() {
        let flight = SingleFlight::<&str, &str>::default();
        assert_eq!(
            flight.run("a", || async { "one" }).await,
            ("one", Role::Made)
        );
        assert_eq!(
            flight.run("a", || async { "two" }).await,
            ("two", Role::Made),
            "a call that ended is not an answer for the next caller"
        );
        assert_eq!(
            flight.run("b", || async { "three" }).await,
            ("three", Role::Made)
        );
        assert_eq!(flight.in_flight(), 0);
    }

    #[tokio::test]
    async fn waiters_of_an_abandoned_call_make_it_themselves() {
        let flight = Arc::new(SingleFlight::<&str, u32>::default());
        let started = Arc::new(Notify::new());
        let abandoned = tokio::spawn({
            let (flight, started) = (flight.clone(), started.clone());
            async move {
                flight
                    .run("lobby", || async move {
                        started.notify_one();
                        std::future::pending::<u32>().await
                    })
                    .await
            }
        });
        started.notified().await;
        let waiter = tokio::spawn({
            let flight = flight.clone();
            async move { flight.run("lobby", || async { 3 }).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        assert_eq!(waiter.await.unwrap(), (3, Role::Made));
        assert_eq!(flight.in_flight(), 0);
    }
}
