//! Delivery: what is due is claimed from the store, sent in one SMTP transaction per message
//! and peer, and its result written back under the claim.
//!
//! - [`policy`]: what an attempt's result means for a recipient (pure: retry, expiry, ack wait);
//! - [`scheduler`]: claims due work per peer queue within the in-flight limits, renews claims;
//! - [`delivery`]: one group of recipients from claim to committed result;
//! - [`transaction`]: routing, the envelope, the SMTP transaction over the peer's next hops;
//! - [`render`]: the bytes a peer gets (a transit forward as received, ours in its profile);
//! - [`pool`]: idle connections per peer, checked before reuse and closed when stale.

pub mod delivery;
pub mod policy;
pub mod pool;
pub mod render;
pub mod scheduler;
pub mod transaction;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mm4::Domain;
use smtp::client::Capabilities;
use smtp::client_driver::ClientConfig;
use store::Spool;
use tokio::sync::{Notify, Semaphore};

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use policy::{apply, apply_with_ack, backoff, expire, Attempt, RetryPolicy};
pub use transaction::{qualify, qualify_onwards};

use crate::routing::Router;

/// What the delivery engine needs to know.
#[derive(Clone)]
pub struct OutboundConfig {
    pub retry: RetryPolicy,
    pub bounce_address: String,
    /// Envelope sender of the reports we send (SPEC §5).
    pub system_address: String,
    /// How long a forward we originated waits for its RES, and how often it is re-sent.
    pub ack_timeout: Duration,
    pub ack_resends: u32,
    pub client: ClientConfig,
    pub our_domain: Domain,
    /// The owner name of this node's claims.
    pub node: String,
    /// How long a claim lasts without renewal (renewed every third of it).
    pub lease: Duration,
    /// Recipients being delivered at once, in all.
    pub max_in_flight: usize,
    /// Recipients being delivered at once to one peer: a stalled peer holds no more than this.
    pub max_in_flight_per_peer: usize,
    /// An idle pooled connection older than this is closed rather than reused.
    pub pool_idle: Duration,
}

impl OutboundConfig {
    /// The limits' defaults (what the configuration file's defaults are too).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
    pub const DEFAULT_MAX_IN_FLIGHT_PER_PEER: usize = 128;
    pub const DEFAULT_POOL_IDLE: Duration = Duration::from_secs(30);
}

/// The EHLO record of a peer, time-stamped (capability negotiation, direct model).
#[derive(Debug, Clone)]
pub struct SeenCapabilities {
    pub at: i64,
    pub host: SocketAddr,
    pub caps: Capabilities,
    pub tls: bool,
}

pub struct Outbound {
    pub store: Arc<dyn Spool>,
    pub router: Arc<Router>,
    pub clock: Arc<dyn Clock>,
    pub cfg: OutboundConfig,
    /// Wakes the scheduler (new work).
    pub wake: Arc<Notify>,
    /// Recipients in flight per queue (this node's claims being worked on).
    in_flight: Mutex<HashMap<String, usize>>,
    /// Per peer: this node's connections at once (its share of `max_connections`), made when
    /// first needed and made again when a reload or the cluster's size changes the share.
    semaphores: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    /// The nodes that share the store (this one included), as the last heartbeat saw them.
    live_nodes: AtomicUsize,
    /// Per peer: the connection slots this node holds (busy and idle connections).
    held: Mutex<HashMap<String, usize>>,
    pool: pool::Pool,
    pub capabilities: Mutex<HashMap<String, SeenCapabilities>>,
    /// The last transient failure per peer (time, evidence), for `GET /v1/peers`.
    pub last_error: Mutex<HashMap<String, (i64, String)>>,
    /// Charging records of the REQs we send (committed with their delivery state).
    pub cdr: Option<crate::cdr::Charging>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Claims given up after a store error, to be released.
    abandoned: crate::abandoned::Abandoned,
}

impl Outbound {
    pub fn new(
        store: Arc<dyn Spool>,
        router: Arc<Router>,
        clock: Arc<dyn Clock>,
        cfg: OutboundConfig,
    ) -> Arc<Self> {
        Self::with_cdr(store, router, clock, cfg, None)
    }

    pub fn with_cdr(
        store: Arc<dyn Spool>,
        router: Arc<Router>,
        clock: Arc<dyn Clock>,
        cfg: OutboundConfig,
        cdr: Option<crate::cdr::Charging>,
    ) -> Arc<Self> {
        let pool = pool::Pool::new(cfg.pool_idle);
        Arc::new(Outbound {
            store,
            router,
            clock,
            cfg,
            wake: Arc::new(Notify::new()),
            in_flight: Mutex::new(HashMap::new()),
            semaphores: Mutex::new(HashMap::new()),
            live_nodes: AtomicUsize::new(1),
            held: Mutex::new(HashMap::new()),
            pool,
            capabilities: Mutex::new(HashMap::new()),
            last_error: Mutex::new(HashMap::new()),
            cdr,
            metrics: Arc::new(crate::metrics::Metrics::default()),
            abandoned: Default::default(),
        })
    }

    /// The peers were reloaded: idle connections made under the old settings (another CA,
    /// pin, client certificate or credentials) are closed rather than reused.
    pub fn reloaded(self: &Arc<Self>) {
        let idle = self.pool.drain();
        if idle.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            for h in idle {
                me.close(h).await;
            }
        });
    }

    /// This node's share of a peer's `max_connections`: the limit counts every node's
    /// connections, and a node that took them all (idle in its pool, or busy with its own
    /// backlog) would starve the others — their transactions waiting for a slot until the
    /// connect timeout, then deferred. So each of the live nodes keeps to an equal part (at
    /// least one; the slots claimed in the store still hold the sum to the limit).
    fn connection_share(&self, max_connections: usize) -> usize {
        let nodes = self.live_nodes.load(Ordering::Relaxed).max(1);
        (max_connections / nodes).max(1)
    }

    /// The cluster's size as the heartbeat found it. When it grew, idle connections beyond
    /// this node's new share are closed now, giving their slots to the nodes that joined.
    pub(super) async fn cluster_size(&self, nodes: usize) {
        let before = self.live_nodes.swap(nodes.max(1), Ordering::Relaxed);
        if nodes <= before {
            return;
        }
        let dir = self.router.dir.get();
        let excess = self.pool.trim(|peer, idle| {
            let share = dir.peer_by_name(peer).map_or(0, |p| {
                self.connection_share(dir.peers[p].cfg.max_connections)
            });
            let busy = self.held(peer).saturating_sub(idle);
            share.saturating_sub(busy)
        });
        for h in excess {
            self.close(h).await;
        }
    }

    /// The connection slots this node holds for `peer`.
    fn held(&self, peer: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(peer).copied().unwrap_or(0)
    }

    /// Counts a slot this node took for `peer`.
    fn slot_taken(&self, peer: &str) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        *held.entry(peer.to_string()).or_insert(0) += 1;
    }

    /// Counts a slot this node gave back.
    fn slot_given_back(&self, peer: &str) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(peer) {
            *n = n.saturating_sub(1);
        }
    }

    /// The semaphore of `peer`'s connections on this node, for its current share.
    fn semaphore(&self, peer: &crate::directory::Peer) -> Arc<Semaphore> {
        let limit = self.connection_share(peer.cfg.max_connections);
        let mut all = self.semaphores.lock().unwrap_or_else(|e| e.into_inner());
        let entry = all
            .entry(peer.cfg.name.clone())
            .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
        if entry.0 != limit {
            // Reloaded with another limit: new connections count against the new one.
            *entry = (limit, Arc::new(Semaphore::new(limit)));
        }
        entry.1.clone()
    }

    /// Notes a transient failure towards `peer` for `GET /v1/peers`.
    fn note_error(&self, peer: &str, at: i64, evidence: &str) {
        let mut le = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        le.insert(peer.to_string(), (at, evidence.to_string()));
    }
}
