//! Idle SMTP connections per peer, reused for the next transaction to the same next hop.
//!
//! A connection is only worth reusing while the peer still holds it open: peers close idle
//! sessions (often with a `421` first). So a connection is checked before reuse — without
//! waiting — and one idle longer than the limit is closed instead: either way the transaction
//! gets a fresh connection at once rather than a failure and a retry after back-off.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use smtp::client_driver::Connection;

struct Idle {
    conn: Connection,
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

    /// A live idle connection to `hop` for `peer`, if there is one. Stale or closed ones met on
    /// the way are closed.
    pub fn take(&self, peer: &str, hop: SocketAddr, now: i64) -> Option<Connection> {
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.get_mut(peer)?;
            let mut found = None;
            while let Some(i) = list.iter().rposition(|c| c.conn.addr == hop) {
                let mut c = list.swap_remove(i);
                let fresh = now - c.since <= self.max_idle.as_millis() as i64;
                if fresh && c.conn.is_alive() {
                    found = Some(c.conn);
                    break;
                }
                stale.push(c.conn);
            }
            found
        };
        for c in stale {
            tokio::spawn(c.quit());
        }
        found
    }

    /// Keeps `conn` for reuse, up to `limit` idle connections for `peer` (as many as the peer
    /// allows at once: reopening costs a handshake, a greeting and an EHLO).
    pub fn put(&self, peer: &str, conn: Connection, limit: usize, now: i64) {
        if !conn.reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(peer.to_string()).or_default();
        if list.len() < limit {
            list.push(Idle { conn, since: now });
        }
    }

    /// Every idle connection (to close them at shutdown).
    pub fn drain(&self) -> Vec<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.drain()
            .flat_map(|(_, v)| v.into_iter().map(|i| i.conn))
            .collect()
    }
}
