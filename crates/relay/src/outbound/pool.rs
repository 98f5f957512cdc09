//! Idle SMTP connections per peer, reused for the next transaction to the same next hop.
//!
//! A connection is only worth reusing while the peer still holds it open: peers close idle
//! sessions (often with a `421` first). So a connection is checked before reuse — without
//! waiting — and one idle longer than the limit is closed instead: either way the transaction
//! gets a fresh connection at once rather than a failure and a retry after back-off.
//!
//! Every open connection holds one of its peer's connection slots (a peer's `max_connections`
//! counts the connections of every node); the slot travels with the connection into the pool
//! and out, and is given back when the connection is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use smtp::client_driver::Connection;
use store::Slot;

/// An open connection and the slot it holds.
pub struct Held {
    pub conn: Connection,
    pub slot: Slot,
}

struct Idle {
    held: Held,
    /// Unix ms when it went idle.
    since: i64,
}

pub struct Pool {
    max_idle: Duration,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl Pool {
    pub fn new(max_idle: Duration) -> Self {
        Pool {
            max_idle,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// A live idle connection to `hop` for `peer`, if there is one; and the stale or closed
    /// ones met on the way, for the caller to close.
    pub fn take(&self, peer: &str, hop: SocketAddr, now: i64) -> (Option<Held>, Vec<Held>) {
        let mut stale = Vec::new();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = idle.get_mut(peer) else {
            return (None, stale);
        };
        while let Some(i) = list.iter().rposition(|c| c.held.conn.addr == hop) {
            let mut c = list.swap_remove(i);
            let fresh = now - c.since <= self.max_idle.as_millis() as i64;
            if fresh && c.held.conn.is_alive() {
                return (Some(c.held), stale);
            }
            stale.push(c.held);
        }
        (None, stale)
    }

    /// Keeps a connection for reuse, up to `limit` idle ones for `peer`; what it cannot keep
    /// comes back, to be closed.
    pub fn put(&self, peer: &str, held: Held, limit: usize, now: i64) -> Option<Held> {
        if !held.conn.reusable() {
            return Some(held);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(peer.to_string()).or_default();
        if list.len() >= limit {
            return Some(held);
        }
        list.push(Idle { held, since: now });
        None
    }

    /// The longest idle connection of `peer`, to close so that its slot serves another hop.
    pub fn evict_one(&self, peer: &str) -> Option<Held> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(peer)?;
        let i = (0..list.len()).min_by_key(|i| list[*i].since)?;
        Some(list.swap_remove(i).held)
    }

    /// The idle connections beyond `keep(peer, idle)` per peer (the longest idle first), taken
    /// out to be closed.
    pub fn trim(&self, keep: impl Fn(&str, usize) -> usize) -> Vec<Held> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (peer, list) in idle.iter_mut() {
            let keep = keep(peer, list.len());
            if list.len() > keep {
                list.sort_by_key(|i| std::cmp::Reverse(i.since));
                out.extend(list.drain(keep..).map(|i| i.held));
            }
        }
        out
    }

    /// The connections idle longer than the limit, taken out to be closed: an idle connection
    /// holds one of its peer's slots, which another node may be waiting for.
    pub fn expired(&self, now: i64) -> Vec<Held> {
        let limit = self.max_idle.as_millis() as i64;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for list in idle.values_mut() {
            let mut i = 0;
            while i < list.len() {
                if now - list[i].since > limit {
                    out.push(list.swap_remove(i).held);
                } else {
                    i += 1;
                }
            }
        }
        out
    }

    /// Every idle connection (to close them at shutdown).
    pub fn drain(&self) -> Vec<Held> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.drain()
            .flat_map(|(_, v)| v.into_iter().map(|i| i.held))
            .collect()
    }
}
