//! The scheduler: claims due recipients per peer queue — never more than a peer's share of the
//! in-flight limit, so a stalled peer cannot hold up the others — groups them into
//! transactions and runs each as a task; renews this node's claims while they run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use store::{ClaimRef, ClaimRequest, Claimed, Guard, StoreError};
use tokio::sync::watch;

use super::delivery::{Group, Member};
use super::Outbound;
use crate::records::{from_bytes, Queue, RecipientState};

/// How soon to look again at a queue whose due work is all held by claims.
const HELD_POLL_MS: i64 = 250;

/// Releases a task's share of the in-flight count when the task ends, however it ends.
struct InFlight {
    out: Arc<Outbound>,
    queue: String,
    n: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut f = self.out.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = f.get_mut(&self.queue) {
            *c = c.saturating_sub(self.n);
        }
    }
}

impl Outbound {
    /// Delivers what is due until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        let heartbeat = tokio::spawn(self.clone().heartbeat());
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = self.clock.now_ms();
            for h in self.pool.expired(now) {
                self.close(h).await;
            }
            self.abandoned.release(&*self.store, now).await;
            let next = match self.dispatch(&mut tasks).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler: store error");
                    Some(self.clock.now_ms() + 1000)
                }
            };
            let wait = next
                .map(|t| (t - self.clock.now_ms()).clamp(10, 1000) as u64)
                .unwrap_or(1000);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = shutdown.changed() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Deliveries under way get a moment to finish; one stuck (a slow DNS server, a peer
        // that stalls) is abandoned: its claim lapses and its recipients are due again.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.shutdown().await;
        for h in self.pool.drain() {
            self.close(h).await;
        }
        heartbeat.abort();
    }

    /// Renews every claim of this node every third of the lease, in a task of its own: a slow
    /// pass of the scheduler (a busy database) must never let the claims of work under way
    /// lapse, or another node would send it too. It runs until the scheduler has seen its last
    /// deliveries finish (then it is stopped). It also counts the live nodes, every second at
    /// most: a node that joins waits for its share of a peer's connections no longer than that.
    async fn heartbeat(self: Arc<Self>) {
        let renew_every = (self.cfg.lease / 3).max(Duration::from_millis(1));
        let look_every = renew_every.min(Duration::from_secs(1));
        let mut next_renew = tokio::time::Instant::now();
        loop {
            let now = self.clock.now_ms().max(0) as u64;
            if tokio::time::Instant::now() >= next_renew {
                if let Err(e) = self.store.renew(&self.cfg.node, now, self.cfg.lease).await {
                    tracing::error!(error = %e, "heartbeat: claims not renewed");
                }
                next_renew = tokio::time::Instant::now() + renew_every;
            }
            // Alive: renewed within a lease (a node that stopped has lapsed by then).
            let since = now.saturating_sub(self.cfg.lease.as_millis() as u64);
            match self.store.live_nodes(since).await {
                Ok(n) => self.cluster_size(n).await,
                Err(e) => tracing::warn!(error = %e, "heartbeat: cluster size unknown"),
            }
            tokio::time::sleep(look_every).await;
        }
    }

    /// Whether the operator holds deliveries to `peer` (`POST /v1/peers/{name}/pause`, any
    /// node): asked of the store on each pass that finds the peer's work due.
    pub async fn is_paused(&self, peer: &str) -> Result<bool, StoreError> {
        let key = crate::keys::IndexKey::PeerPaused(peer).to_string();
        Ok(self.store.index(&key).await?.is_some())
    }

    /// How many more recipients of `queue` may be claimed now.
    fn room(&self, queue: &str) -> usize {
        let f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = f.values().sum();
        let mine = f.get(queue).copied().unwrap_or(0);
        self.cfg
            .max_in_flight
            .saturating_sub(total)
            .min(self.cfg.max_in_flight_per_peer.saturating_sub(mine))
    }

    /// Claims and starts what is due in every queue; returns the next due time seen.
    async fn dispatch(
        self: &Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Result<Option<i64>, StoreError> {
        let now = self.clock.now_ms();
        let mut next: Option<i64> = None;
        for q in self.store.queues().await? {
            let Some(at) = q.next_due else { continue };
            if at as i64 > now {
                next = Some(next.map_or(at as i64, |n| n.min(at as i64)));
                continue;
            }
            // Named for its peer (or that peer's scheduled reports, or not routed yet).
            let queue = Queue::parse(&q.queue);
            let peer = queue.peer().unwrap_or(crate::records::UNROUTED);
            if self.is_paused(peer).await? {
                // Held by the operator: looked at again on the next pass.
                continue;
            }
            let room = self.room(&q.queue);
            if room == 0 {
                // Full: a finishing task wakes us.
                continue;
            }
            let req = ClaimRequest {
                owner: &self.cfg.node,
                now: now.max(0) as u64,
                lease: self.cfg.lease,
                limit: room,
            };
            let claimed = self.store.claim_due(&q.queue, &req).await?;
            if claimed.len() == room {
                // Maybe more is due: look again soon.
                next = Some(now);
            } else if claimed.is_empty() {
                // Due, but held by another owner (or by us): its claim may lapse (a node died)
                // at any moment — look again shortly rather than at the next full pass.
                next = Some(next.map_or(now + HELD_POLL_MS, |n| n.min(now + HELD_POLL_MS)));
            }
            let dir = self.router.dir.get();
            let max = dir
                .peer_by_name(peer)
                .and_then(|i| dir.peers[i].cfg.max_recipients)
                .unwrap_or(usize::MAX);
            for g in groups(queue, claimed, max)? {
                self.spawn(tasks, &q.queue, g);
            }
        }
        Ok(next)
    }

    fn spawn(self: &Arc<Self>, tasks: &mut tokio::task::JoinSet<()>, queue: &str, g: Group) {
        let n = g.members.len();
        {
            let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            *f.entry(queue.to_string()).or_default() += n;
        }
        let guard = InFlight {
            out: self.clone(),
            queue: queue.to_string(),
            n,
        };
        let me = self.clone();
        tasks.spawn(async move {
            let _guard = guard;
            let id = g.id;
            let claims: Vec<ClaimRef> = g
                .members
                .iter()
                .filter_map(|m| match m.guard {
                    Guard::Lease { token, .. } => Some(ClaimRef::Recipient {
                        id,
                        idx: m.idx,
                        token,
                    }),
                    _ => None,
                })
                .collect();
            if let Err(e) = me.deliver(g).await {
                // Given up: released now (else on the next pass), the work is due again (claims
                // this task finished before the error are not touched: their tokens are spent).
                tracing::error!(error = %e, id, "delivery: store error");
                me.abandoned.push(claims);
                me.abandoned.release(&*me.store, me.clock.now_ms()).await;
            }
        });
    }
}

/// Claimed recipients grouped into transactions: one per message and transaction id (one REQ
/// per recipient MMSE), at most `max` recipients each (the peer's `max_recipients`: a
/// transit REQ, whose transaction id is its originator's, is split here; ours were given a
/// transaction id per `max` at submission). Unrouted recipients go one by one: each is routed
/// by its own address.
fn groups(queue: Queue<'_>, claimed: Vec<Claimed>, max: usize) -> Result<Vec<Group>, StoreError> {
    let mut by_key: HashMap<(u64, Option<String>, Option<u32>), Group> = HashMap::new();
    let mut order = Vec::new();
    for c in claimed {
        let st: RecipientState = from_bytes("recipient", &c.row.state)?;
        let one_by_one = (queue == Queue::Unrouted).then_some(c.row.idx);
        let key = (c.id, st.tid.clone(), one_by_one);
        let guard = c.guard();
        let member = Member {
            idx: c.row.idx,
            st,
            guard,
        };
        match by_key.get_mut(&key) {
            Some(g) => g.members.push(member),
            None => {
                order.push(key.clone());
                let peer = queue.peer().map(str::to_string);
                by_key.insert(
                    key,
                    Group {
                        id: c.id,
                        peer,
                        members: vec![member],
                    },
                );
            }
        }
    }
    let mut out = Vec::new();
    for g in order.into_iter().filter_map(|k| by_key.remove(&k)) {
        if g.members.len() <= max {
            out.push(g);
            continue;
        }
        let Group { id, peer, members } = g;
        let mut members = members.into_iter().peekable();
        while members.peek().is_some() {
            out.push(Group {
                id,
                peer: peer.clone(),
                members: members.by_ref().take(max.max(1)).collect(),
            });
        }
    }
    Ok(out)
}
