//! The bodies most recently stored, kept in memory up to a budget of octets.
//!
//! A body written with `O_DIRECT` leaves nothing in the page cache, and the relay sends an MM
//! on within moments of its `250`: reading each back from its segment was 30 % of the relay's
//! CPU on the store-and-forward path (`perf`, BENCHMARKS.md 2026-12-05). The embedded writer
//! moves the bodies of messages queued for delivery here once their batch is durable (no
//! copy); readers take a copy. Bodies
//! never change once stored, so a kept body is never stale; the oldest go first when the budget
//! is exceeded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::contract::MsgId;

/// What the embedded store keeps: ~650 MMs of 100 KB, a tenth of a second of relaying at full
/// speed here — far more than delivery lags behind intake (it is woken by the commit).
pub const BUDGET: usize = 64 << 20;

pub struct Recent {
    inner: Mutex<Inner>,
    budget: usize,
}

#[derive(Default)]
struct Inner {
    bodies: HashMap<MsgId, Arc<Vec<u8>>>,
    /// Insertion order, oldest first.
    order: VecDeque<MsgId>,
    octets: usize,
}

impl Recent {
    pub fn new(budget: usize) -> Self {
        Recent {
            inner: Mutex::new(Inner::default()),
            budget,
        }
    }

    /// Keeps `body` (a body larger than the budget is not kept).
    pub fn keep(&self, id: MsgId, body: Vec<u8>) {
        if body.len() > self.budget {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.octets += body.len();
        if let Some(old) = inner.bodies.insert(id, Arc::new(body)) {
            // Stored twice (a retried commit): the same octets, counted once.
            inner.octets -= old.len();
        } else {
            inner.order.push_back(id);
        }
        while inner.octets > self.budget {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(b) = inner.bodies.remove(&oldest) {
                inner.octets -= b.len();
            }
        }
    }

    /// The body, if it is kept: shared, so the lock is not held while the caller copies it.
    pub fn get(&self, id: MsgId) -> Option<Arc<Vec<u8>>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.bodies.get(&id).cloned()
    }

    /// Octets kept now.
    #[cfg(test)]
    fn octets(&self) -> usize {
        self.inner.lock().unwrap().octets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_bodies_go_first_once_the_budget_is_exceeded() {
        let r = Recent::new(1000);
        r.keep(1, vec![1; 400]);
        r.keep(2, vec![2; 400]);
        assert_eq!(r.get(1).as_deref(), Some(&vec![1; 400]));
        r.keep(3, vec![3; 400]);
        assert!(r.get(1).is_none(), "the oldest went");
        assert_eq!(r.get(2).as_deref(), Some(&vec![2; 400]));
        assert_eq!(r.get(3).as_deref(), Some(&vec![3; 400]));
        assert_eq!(r.octets(), 800);
        r.keep(4, vec![4; 1000]);
        assert!(r.get(2).is_none() && r.get(3).is_none());
        assert_eq!(r.octets(), 1000);
    }

    #[test]
    fn a_body_over_the_budget_is_not_kept_and_a_second_keep_counts_once() {
        let r = Recent::new(1000);
        r.keep(1, vec![0; 300]);
        r.keep(9, vec![0; 1001]);
        assert!(r.get(9).is_none());
        assert!(r.get(1).is_some(), "nothing was evicted for it");
        r.keep(1, vec![0; 300]);
        assert_eq!(r.octets(), 300);
        r.keep(2, vec![0; 700]);
        assert!(r.get(1).is_some() && r.get(2).is_some());
    }
}
