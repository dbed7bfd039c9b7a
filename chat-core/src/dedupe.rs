//! A bounded memory of recently seen event ids. Delivery is at-least-once (a publish retried
//! after a lost confirm, a batch redelivered after a crash), so consumers that cannot dedupe
//! by a database key (gateways forwarding to clients, the log file) drop repeats they have
//! seen recently. It bounds memory, not correctness: a repeat older than the window passes.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// The last `capacity` distinct ids.
#[derive(Debug)]
pub struct RecentIds {
    set: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
    capacity: usize,
}

impl RecentIds {
    /// Remembers up to `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// Records `id`; returns false if it was seen within the window (a repeat).
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        let id: Arc<str> = Arc::from(id);
        self.set.insert(id.clone());
        self.order.push_back(id);
        true
    }

    /// Whether `id` is within the window, without recording it.
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// Forgets ids recorded by a batch that then failed, so its retry is not dropped.
    pub fn forget(&mut self, ids: &[&str]) {
        for id in ids {
            self.set.remove(*id);
        }
        self.order.retain(|id| self.set.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_caught_and_old_ids_are_forgotten() {
        let mut recent = RecentIds::new(2);
        assert!(recent.first_time("a"));
        assert!(!recent.first_time("a"));
        assert!(recent.first_time("b"));
        assert!(recent.first_time("c")); // "a" falls out of the window
        assert!(recent.first_time("a"));
        assert!(!recent.first_time("c"));
    }
}
