//! Claims kept in memory: owner, expiry, fencing token.
//!
//! For a store used by one process, a claim needs no durability: when the process dies its
//! claims die with it and all its work is claimable at the restart — exactly what an expired
//! claim means. The writer *pins* a claim while the commit that finishes it is being made
//! durable, so an expiry in that window cannot hand the same work to a second owner.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::contract::Token;

#[derive(Debug, Clone)]
pub struct Lease {
    pub owner: Arc<str>,
    /// Unix ms.
    pub until: u64,
    pub token: Token,
    /// A commit finishing this claim is under way: not claimable, whatever the time.
    pub pinned: bool,
}

/// The claims of one kind of work, by key.
#[derive(Debug)]
pub struct Claims<K> {
    held: HashMap<K, Lease>,
}

impl<K> Default for Claims<K> {
    fn default() -> Self {
        Claims {
            held: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> Claims<K> {
    /// Whether nobody holds `key` at `now`.
    pub fn is_free(&self, key: &K, now: u64) -> bool {
        self.held
            .get(key)
            .is_none_or(|l| !l.pinned && l.until <= now)
    }

    pub fn grant(&mut self, key: K, lease: Lease) {
        self.held.insert(key, lease);
    }

    pub fn get(&self, key: &K) -> Option<&Lease> {
        self.held.get(key)
    }

    /// The writer is about to commit the write that finishes `token`'s claim on `key`: true
    /// (and pinned) when the claim is still that one.
    pub fn pin(&mut self, key: &K, token: Token) -> bool {
        match self.held.get_mut(key) {
            Some(l) if l.token == token => {
                l.pinned = true;
                true
            }
            _ => false,
        }
    }

    /// The commit is durable (or the write was refused): the claim is over.
    pub fn finish(&mut self, key: &K, token: Token) {
        if self.held.get(key).is_some_and(|l| l.token == token) {
            self.held.remove(key);
        }
    }

    /// The owner gave the claim up: nobody's heartbeat keeps it, no write finishes it (its
    /// token is gone), and it is claimable from `until`.
    pub fn release(&mut self, key: &K, token: Token, until: u64) {
        if let Some(l) = self.held.get_mut(key) {
            if l.token == token && !l.pinned {
                l.owner = Arc::from("");
                l.token = 0;
                l.until = until;
            }
        }
    }

    /// The commit failed: the claim stands as before (it expires as usual).
    pub fn unpin(&mut self, key: &K, token: Token) {
        if let Some(l) = self.held.get_mut(key) {
            if l.token == token {
                l.pinned = false;
            }
        }
    }

    pub fn renew(&mut self, owner: &str, until: u64) {
        for l in self.held.values_mut() {
            if &*l.owner == owner && l.until < until {
                l.until = until;
            }
        }
    }

    /// How many claims `owner` holds.
    pub fn held_by(&self, owner: &str) -> usize {
        self.held.values().filter(|l| &*l.owner == owner).count()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Every claim of one store.
#[derive(Debug)]
pub struct Leases<R, E> {
    pub recipients: Claims<R>,
    pub events: Claims<E>,
    pub jobs: Claims<String>,
    /// Connection slots: (peer, slot number).
    pub slots: Claims<(String, u32)>,
    next: Token,
}

impl<R: Eq + Hash + Clone, E: Eq + Hash + Clone> Leases<R, E> {
    /// Tokens start from the clock, so they keep growing across restarts.
    pub fn new(start: Token) -> Self {
        Leases {
            recipients: Claims::default(),
            events: Claims::default(),
            jobs: Claims::default(),
            slots: Claims::default(),
            next: start.max(1),
        }
    }

    /// A fresh claim for `owner` from `now` for `lease`.
    pub fn lease(&mut self, owner: &str, now: u64, lease: Duration) -> Lease {
        self.next += 1;
        Lease {
            owner: owner.into(),
            until: now.saturating_add(lease.as_millis() as u64),
            token: self.next,
            pinned: false,
        }
    }

    /// Recipients and events `owner` holds.
    pub fn held_by(&self, owner: &str) -> usize {
        self.recipients.held_by(owner) + self.events.held_by(owner)
    }

    pub fn renew(&mut self, owner: &str, until: u64) {
        self.recipients.renew(owner, until);
        self.events.renew(owner, until);
        self.jobs.renew(owner, until);
        self.slots.renew(owner, until);
    }

    /// The first free one of `limit` slots of `peer`, claimed for `owner`.
    pub fn slot(
        &mut self,
        peer: &str,
        limit: usize,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Option<(u32, Token)> {
        let n = (0..limit as u32).find(|n| self.slots.is_free(&(peer.to_string(), *n), now))?;
        let l = self.lease(owner, now, lease);
        let token = l.token;
        self.slots.grant((peer.to_string(), n), l);
        Some((n, token))
    }

    /// A named job's claim: granted when free or already `owner`'s (then extended).
    pub fn job(&mut self, name: &str, owner: &str, now: u64, lease: Duration) -> Option<Token> {
        let key = name.to_string();
        match self.jobs.get(&key) {
            Some(l) if &*l.owner == owner => {
                let token = l.token;
                self.jobs
                    .renew(owner, now.saturating_add(lease.as_millis() as u64));
                Some(token)
            }
            Some(l) if l.until > now => None,
            _ => {
                let l = self.lease(owner, now, lease);
                let token = l.token;
                self.jobs.grant(key, l);
                Some(token)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_claim_is_never_free_and_an_expired_one_is() {
        let mut l: Leases<u32, u32> = Leases::new(10);
        let a = l.lease("a", 1000, Duration::from_secs(1));
        let t = a.token;
        l.recipients.grant(7, a);
        assert!(!l.recipients.is_free(&7, 1999));
        assert!(l.recipients.is_free(&7, 2000), "expired");
        assert!(l.recipients.pin(&7, t));
        assert!(!l.recipients.is_free(&7, 5000), "pinned while committing");
        l.recipients.unpin(&7, t);
        assert!(l.recipients.is_free(&7, 5000));
        assert!(
            !l.recipients.pin(&7, t + 1),
            "another token is not the claim"
        );
        l.recipients.finish(&7, t);
        assert!(l.recipients.is_empty());
    }

    #[test]
    fn tokens_grow_and_jobs_have_one_owner() {
        let mut l: Leases<u32, u32> = Leases::new(10);
        let t1 = l.lease("a", 0, Duration::from_secs(1)).token;
        let t2 = l.lease("a", 0, Duration::from_secs(1)).token;
        assert!(t2 > t1);
        let j = l.job("sweep", "a", 0, Duration::from_secs(10)).unwrap();
        assert_eq!(l.job("sweep", "b", 5_000, Duration::from_secs(10)), None);
        assert_eq!(
            l.job("sweep", "a", 5_000, Duration::from_secs(10)),
            Some(j),
            "renewed by its owner"
        );
        assert_eq!(l.job("sweep", "b", 14_000, Duration::from_secs(10)), None);
        let k = l
            .job("sweep", "b", 15_000, Duration::from_secs(10))
            .unwrap();
        assert!(k > j, "taken over after expiry with a larger token");
    }
}
