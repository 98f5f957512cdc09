//! Delivery: the scheduler (due-time driven from the store), per-peer concurrency and connection
//! reuse, the SMTP transaction, and what each result does to each recipient.
//!
//! The decisions are pure functions of (state, outcome, now) — [`backoff`], [`apply`] — so retry
//! and expiry are tested with an injected clock, without sleeping. A recipient stays in the due
//! index while it is being delivered: if the process dies mid-delivery, it is simply due again
//! after the restart (the in-memory in-flight set is the lease of a single-node spool).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mm4::mapping::{self, Outcome, Stage};
use mm4::{Domain, RequestStatus};
use smtp::client::{Capabilities, OutEnvelope, OutRcpt, PlanError, RcptResult};
use smtp::client_driver::{ClientConfig, Connection, SessionError};
use store::{MsgId, Op, Spool};
use tokio::sync::{watch, Notify, Semaphore};

use crate::records::{to_bytes, RcptState, RecipientState, StoredMessage};
use crate::routing::{Route, Router};

/// Time, injectable so that retry and expiry logic is tested without sleeping.
pub trait Clock: Send + Sync {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::inbound::now_ms()
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(pub AtomicI64);

impl ManualClock {
    pub fn new(ms: i64) -> Self {
        ManualClock(AtomicI64::new(ms))
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Exponential back-off bounds.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

/// The wait before attempt `attempts + 1`: `initial · 2^(attempts-1)`, capped at `max`, with
/// ±10 % jitter derived from `key` (deterministic, so tests can check it; different keys spread
/// a burst of deferrals).
pub fn backoff(p: RetryPolicy, attempts: u32, key: u64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = p.initial.saturating_mul(1u32 << exp.min(20)).min(p.max);
    let mut h = key ^ (attempts as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    let permille = (h % 201) as i64 - 100; // -100..=100 → ±10 %
    let ms = base.as_millis() as i64;
    Duration::from_millis((ms + ms * permille / 1000).max(1) as u64)
}

/// What one delivery attempt did for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The next hop took it; `acknowledged` when an XMM4 server folded the RES `Ok` in.
    Accepted {
        acknowledged: bool,
        evidence: String,
    },
    /// Transient: try again later.
    Retry { evidence: String },
    /// Permanent, with the MM4 status.
    Fail {
        status: RequestStatus,
        evidence: String,
    },
}

impl Attempt {
    /// From the SMTP client's per-recipient result (the one mapping of EXTENSIONS §3).
    pub fn from_result(r: &RcptResult) -> Attempt {
        let evidence = r.reply.to_string();
        match r.outcome {
            Outcome::Accepted => Attempt::Accepted {
                acknowledged: r.mm4_verdict == Some(RequestStatus::Ok),
                evidence,
            },
            Outcome::Retry => Attempt::Retry { evidence },
            Outcome::Fail(status) => Attempt::Fail { status, evidence },
        }
    }

    /// A session-level failure (no per-recipient reply).
    pub fn from_session(e: &SessionError) -> Attempt {
        match e.reply() {
            Some(r) => {
                let text = smtp::client::reply_text(r);
                match mapping::smtp_reply(Stage::Greeting, r.code, &text, false) {
                    Outcome::Fail(status) => Attempt::Fail {
                        status,
                        evidence: r.to_string(),
                    },
                    _ => Attempt::Retry {
                        evidence: r.to_string(),
                    },
                }
            }
            None => Attempt::Retry {
                evidence: e.to_string(),
            },
        }
    }
}

/// Applies an attempt's result to a recipient: the new state, its status, its next due time.
/// Returns the new due time (`None`: out of the queue).
pub fn apply(
    st: &mut RecipientState,
    attempt: &Attempt,
    now: i64,
    expires_at: Option<i64>,
    policy: RetryPolicy,
    key: u64,
) -> Option<u64> {
    apply_with_ack(st, attempt, now, expires_at, policy, key, None)
}

/// [`apply`], for a REQ whose RES we wait for: a forwarded recipient stays due at
/// `now + ack_timeout`, when the same REQ is sent again unless the RES came.
pub fn apply_with_ack(
    st: &mut RecipientState,
    attempt: &Attempt,
    now: i64,
    expires_at: Option<i64>,
    policy: RetryPolicy,
    key: u64,
    ack_timeout: Option<Duration>,
) -> Option<u64> {
    st.attempts += 1;
    let due = match attempt {
        Attempt::Accepted {
            acknowledged,
            evidence,
        } => {
            let (state, code) = if *acknowledged {
                (
                    RcptState::Acknowledged,
                    Some(RequestStatus::Ok.as_str().to_string()),
                )
            } else {
                (RcptState::Forwarded, None)
            };
            st.status_code = code;
            st.status_text = Some(evidence.clone());
            st.set(state, now, evidence.clone());
            match ack_timeout {
                Some(t) if !*acknowledged => Some((now + t.as_millis() as i64).max(0) as u64),
                _ => None,
            }
        }
        Attempt::Fail { status, evidence } => {
            st.status_code = Some(status.as_str().into());
            st.status_text = Some(evidence.clone());
            st.set(RcptState::Failed, now, evidence.clone());
            None
        }
        Attempt::Retry { evidence } => {
            let next = now + backoff(policy, st.attempts, key).as_millis() as i64;
            match expires_at {
                Some(exp) if now >= exp => {
                    expire(st, now, evidence);
                    None
                }
                Some(exp) => {
                    st.status_text = Some(evidence.clone());
                    st.set(RcptState::Deferred, now, evidence.clone());
                    // One last attempt at the expiry time rather than none after it.
                    Some(next.min(exp).max(0) as u64)
                }
                None => {
                    st.status_text = Some(evidence.clone());
                    st.set(RcptState::Deferred, now, evidence.clone());
                    Some(next.max(0) as u64)
                }
            }
        }
    };
    st.due = due;
    due
}

/// The recipient's lifetime is over (EXTENSIONS §3: `Error-network-problem` at expiry).
pub fn expire(st: &mut RecipientState, now: i64, evidence: &str) {
    st.status_code = Some(RequestStatus::ErrorNetworkProblem.as_str().into());
    st.status_text = Some(format!("expired: {evidence}"));
    st.set(
        RcptState::Expired,
        now,
        format!("lifetime over; last: {evidence}"),
    );
    st.due = None;
}

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
    in_flight: Mutex<HashSet<(MsgId, u32)>>,
    semaphores: HashMap<String, Arc<Semaphore>>,
    pool: Mutex<HashMap<String, Vec<Connection>>>,
    pub capabilities: Mutex<HashMap<String, SeenCapabilities>>,
    /// The last transient failure per peer (time, evidence), for `GET /v1/peers`.
    pub last_error: Mutex<HashMap<String, (i64, String)>>,
    pub cdr: Option<Arc<crate::cdr::CdrWriter>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Most recipients being delivered at once (beyond the per-peer connection limits, this bounds
/// memory and the scheduler's scans of the due index).
const MAX_IN_FLIGHT: usize = 512;

/// A group of due recipients of one message for one peer: one transaction.
struct Group {
    id: MsgId,
    peer: Option<String>,
    idxs: Vec<(u32, RecipientState)>,
    /// The stored bytes of each recipient when the delivery began (for compare-and-set).
    seen: HashMap<u32, Vec<u8>>,
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
        cdr: Option<Arc<crate::cdr::CdrWriter>>,
    ) -> Arc<Self> {
        let semaphores = router
            .dir
            .peers
            .iter()
            .map(|p| {
                (
                    p.cfg.name.clone(),
                    Arc::new(Semaphore::new(p.cfg.max_connections)),
                )
            })
            .collect();
        Arc::new(Outbound {
            store,
            router,
            clock,
            cfg,
            wake: Arc::new(Notify::new()),
            in_flight: Mutex::new(HashSet::new()),
            semaphores,
            pool: Mutex::new(HashMap::new()),
            capabilities: Mutex::new(HashMap::new()),
            last_error: Mutex::new(HashMap::new()),
            cdr,
            metrics: Arc::new(crate::metrics::Metrics::default()),
        })
    }

    /// The scheduler: delivers what is due until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
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
        // that stalls) is abandoned: its recipients are still due, so it is retried after the
        // restart.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.shutdown().await;
        let conns: Vec<Connection> = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.drain().flat_map(|(_, v)| v).collect()
        };
        for c in conns {
            c.quit().await;
        }
    }

    /// Starts deliveries for what is due; returns the next due time seen.
    async fn dispatch(
        self: &Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Result<Option<i64>, store::StoreError> {
        let now = self.clock.now_ms();
        let busy = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if busy >= MAX_IN_FLIGHT {
            // Enough work is under way; a completion wakes us again.
            return Ok(None);
        }
        // In-flight entries stay in the index (that is the lease); read past them.
        let due = self.store.due(now.max(0) as u64, MAX_IN_FLIGHT + busy)?;
        let mut by_msg: HashMap<MsgId, HashSet<u32>> = HashMap::new();
        {
            let inflight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for d in &due {
                if !inflight.contains(&(d.id, d.idx)) {
                    by_msg.entry(d.id).or_default().insert(d.idx);
                }
            }
        }
        for (id, idxs) in by_msg {
            let mut groups: HashMap<Option<String>, Vec<(u32, RecipientState)>> = HashMap::new();
            let mut seen: HashMap<u32, Vec<u8>> = HashMap::new();
            for (idx, bytes) in self.store.recipients(id)? {
                if !idxs.contains(&idx) {
                    continue;
                }
                let Ok(st) = serde_json::from_slice::<RecipientState>(&bytes) else {
                    continue;
                };
                groups.entry(st.peer.clone()).or_default().push((idx, st));
                seen.insert(idx, bytes);
            }
            for (peer, idxs) in groups {
                {
                    let mut inflight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                    for (idx, _) in &idxs {
                        inflight.insert((id, *idx));
                    }
                }
                let me = self.clone();
                let group_seen: HashMap<u32, Vec<u8>> = idxs
                    .iter()
                    .filter_map(|(i, _)| Some((*i, seen.get(i)?.clone())))
                    .collect();
                tasks.spawn(async move {
                    let keys: Vec<(MsgId, u32)> = idxs.iter().map(|(i, _)| (id, *i)).collect();
                    let seen = group_seen;
                    let g = Group {
                        id,
                        peer,
                        idxs,
                        seen,
                    };
                    if let Err(e) = me.clone().deliver(g).await {
                        tracing::error!(error = %e, id, "delivery: store error");
                    }
                    let mut inflight = me.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                    for k in keys {
                        inflight.remove(&k);
                    }
                });
            }
        }
        // The next entry beyond what is due now, to sleep until it.
        let later = self
            .store
            .due(i64::MAX as u64, 1)
            .ok()
            .and_then(|v| v.first().map(|d| d.at as i64));
        Ok(later)
    }

    /// Writes delivery results, each only over the state the delivery started from: whatever a
    /// RES, a report or the operator wrote meanwhile wins.
    fn commit_states(
        &self,
        id: MsgId,
        seen: &HashMap<u32, Vec<u8>>,
        states: Vec<(u32, RecipientState, Option<u64>)>,
    ) -> store::CommitHandle {
        let ops = states
            .into_iter()
            .map(|(idx, st, old_due)| match seen.get(&idx) {
                Some(expected) => Op::SetRecipientIf {
                    id,
                    idx,
                    expected: expected.clone(),
                    due: st.due,
                    state: to_bytes(&st),
                    old_due,
                },
                None => Op::SetRecipient {
                    id,
                    idx,
                    due: st.due,
                    state: to_bytes(&st),
                    old_due,
                },
            })
            .collect();
        self.store.commit(ops)
    }

    /// One transaction for a group, and its results written back.
    async fn deliver(self: Arc<Self>, g: Group) -> Result<(), store::StoreError> {
        let now = self.clock.now_ms();
        let Some(meta) = self.store.message(g.id)? else {
            return Ok(());
        };
        let Ok(meta) = serde_json::from_slice::<StoredMessage>(&meta) else {
            return Ok(());
        };
        let policy = self.cfg.retry;
        let gid = g.id;
        let key = move |idx: u32| gid.wrapping_mul(1_000_003) ^ idx as u64;

        // Expired while queued: no attempt.
        if meta.expires_at.is_some_and(|e| now >= e) {
            let states = g
                .idxs
                .into_iter()
                .map(|(idx, mut st)| {
                    let old = st.due;
                    expire(&mut st, now, "not delivered before expiry");
                    (idx, st, old)
                })
                .collect();
            self.commit_states(g.id, &g.seen, states).await?;
            return Ok(());
        }

        // Forwarded recipients that are due again waited in vain for their RES: the same REQ
        // goes again (same ids; the peer de-duplicates), up to the limit, then Indeterminate.
        let mut g = g;
        let mut finished = Vec::new();
        g.idxs.retain_mut(|(idx, st)| {
            if st.state != RcptState::Forwarded {
                return true;
            }
            if st.resends < self.cfg.ack_resends {
                st.resends += 1;
                let n = st.resends;
                st.set(
                    RcptState::Queued,
                    now,
                    format!("no RES within the ack timeout: re-send {n}"),
                );
                return true;
            }
            let old = st.due;
            st.status_code = Some(mm4::MmStatus::Indeterminate.as_str().into());
            st.status_text = Some("no RES after the last re-send".into());
            st.set(
                RcptState::Failed,
                now,
                "no RES after the last re-send: Indeterminate",
            );
            st.due = None;
            finished.push((*idx, st.clone(), old));
            false
        });
        if !finished.is_empty() {
            self.commit_states(g.id, &g.seen, finished).await?;
        }
        if g.idxs.is_empty() {
            return Ok(());
        }
        let results = self.attempt(&g, &meta).await;
        let now = self.clock.now_ms();
        let mut sent_to = Vec::new();
        let states: Vec<(u32, RecipientState, Option<u64>)> = g
            .idxs
            .into_iter()
            .zip(results)
            .map(|((idx, mut st), (attempt, peer, waits_ack))| {
                let old = st.due;
                if st.peer.is_none() {
                    st.peer = peer;
                }
                if let Attempt::Retry { evidence } = &attempt {
                    if let Some(p) = &st.peer {
                        let mut le = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
                        le.insert(p.clone(), (now, evidence.clone()));
                    }
                }
                if matches!(attempt, Attempt::Accepted { .. }) {
                    sent_to.push(st.address.clone());
                    self.metrics
                        .observe_latency((now - meta.received_at).max(0) as f64 / 1000.0);
                }
                let result = match &attempt {
                    Attempt::Accepted { .. } => "Ok".to_string(),
                    Attempt::Retry { .. } => "retry".to_string(),
                    Attempt::Fail { status, .. } => status.as_str().to_string(),
                };
                self.metrics.inc(
                    "mmsrelay_messages_out_total",
                    &[
                        ("peer", st.peer.as_deref().unwrap_or("-")),
                        ("result", &result),
                    ],
                );
                let wait = waits_ack.then_some(self.cfg.ack_timeout);
                apply_with_ack(
                    &mut st,
                    &attempt,
                    now,
                    meta.expires_at,
                    policy,
                    key(idx),
                    wait,
                );
                (idx, st, old)
            })
            .collect();
        let peer = states.first().and_then(|(_, s, _)| s.peer.clone());
        let tid = states.first().and_then(|(_, s, _)| s.tid.clone());
        self.commit_states(g.id, &g.seen, states).await?;
        if !sent_to.is_empty() && meta.originated {
            self.cdr_sent(&meta, peer, tid, sent_to, now);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Routes (if needed), builds the message for the peer and runs the transaction. One
    /// result per recipient of the group, in order, with the peer it was routed to.
    async fn attempt(
        &self,
        g: &Group,
        meta: &StoredMessage,
    ) -> Vec<(Attempt, Option<String>, bool)> {
        let n = g.idxs.len();
        let all = |a: Attempt| vec![(a, g.peer.clone(), false); n];
        let dir = &self.router.dir;
        // The peer (routing again when it was not known at submission: a DNS failure then).
        let (peer_idx, domain) = match g.peer.as_deref().and_then(|p| dir.peer_by_name(p)) {
            Some(p) => match dir.peers[p].domains.first() {
                Some(d) => (p, d.clone()),
                None => {
                    return all(Attempt::Fail {
                        status: RequestStatus::ErrorSendingAddressUnresolved,
                        evidence: "peer has no domain".into(),
                    })
                }
            },
            None => {
                let Ok(addr) = g.idxs[0].1.address.parse::<mm4::Address>() else {
                    return all(Attempt::Fail {
                        status: RequestStatus::ErrorSendingAddressUnresolved,
                        evidence: "not an MMS address".into(),
                    });
                };
                match self.router.route(&addr).await {
                    Ok(Route::Peer { peer, domain, .. }) => (peer, domain),
                    Ok(_) => {
                        return all(Attempt::Fail {
                            status: RequestStatus::ErrorSendingAddressUnresolved,
                            evidence: "no route to the recipient's MMSE".into(),
                        })
                    }
                    Err(e) => {
                        return all(Attempt::Retry {
                            evidence: e.to_string(),
                        })
                    }
                }
            }
        };
        let peer = &dir.peers[peer_idx];
        let peer_name = Some(peer.cfg.name.clone());
        let with_peer = |a: Attempt| vec![(a, peer_name.clone(), false); n];

        let Some(body) = self.store.body(g.id).ok().flatten() else {
            return with_peer(Attempt::Retry {
                evidence: "message body unreadable".into(),
            });
        };
        let tid = g.idxs[0].1.tid.clone().or(meta.transaction_id.clone());
        let (bytes, ack, mt) = match self.render(&body, meta, peer, tid.as_deref()) {
            Ok(x) => x,
            Err(e) => {
                return with_peer(Attempt::Fail {
                    status: RequestStatus::ErrorMessageFormatCorrupt,
                    evidence: e,
                })
            }
        };
        // The bilateral size limit: refused before anything is sent.
        if let Some(limit) = peer.cfg.max_message_size {
            if bytes.len() > limit {
                return with_peer(Attempt::Fail {
                    status: RequestStatus::ErrorContentNotAccepted,
                    evidence: format!(
                        "{} octets exceed {}'s limit of {limit}",
                        bytes.len(),
                        peer.cfg.name
                    ),
                });
            }
        }
        // SPEC §5: a forward from our bounce address (every bounce must reach the relay), a
        // RES from <> (no bounce loops), a report from our system mailbox.
        let mail_from = match mt {
            mm4::MessageType::ForwardReq => self.cfg.bounce_address.clone(),
            m if m.is_response() => String::new(),
            _ => self.cfg.system_address.clone(),
        };
        let is_forward = mt == mm4::MessageType::ForwardReq;
        // We wait for the RES of forwards we originated (a transit forward's RES goes to its
        // originator, not to us).
        let waits_ack = is_forward && ack && meta.originated;
        let env = OutEnvelope {
            mail_from,
            envid: tid.clone(),
            ret_hdrs: true,
            // Only the originator may take the RES in the reply: a transit hop asking for it
            // would swallow the RES that belongs to the originator R/S.
            xmm4_sync: is_forward && ack && meta.originated,
            rcpts: g
                .idxs
                .iter()
                .map(|(_, st)| OutRcpt {
                    address: qualify_onwards(&st.address, &domain, &self.cfg.our_domain),
                    orcpt: Some(qualify_onwards(&st.address, &domain, &self.cfg.our_domain)),
                    notify: smtp::server::notify::FAILURE | smtp::server::notify::DELAY,
                })
                .collect(),
        };
        let hops = match self.router.next_hops(peer_idx, &domain).await {
            Ok(h) if !h.is_empty() => h,
            Ok(_) => {
                return with_peer(Attempt::Retry {
                    evidence: format!("no next hop for {domain}"),
                })
            }
            Err(e) => {
                return with_peer(Attempt::Retry {
                    evidence: e.to_string(),
                })
            }
        };
        let sem = self.semaphores.get(&peer.cfg.name).cloned();
        let _permit = match &sem {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        let mut last = Attempt::Retry {
            evidence: "no next hop answered".into(),
        };
        for hop in hops {
            let mut conn = match self.connection(&peer.cfg.name, hop, peer.cfg.tls).await {
                Ok(c) => c,
                Err(e) => {
                    let a = Attempt::from_session(&e);
                    if matches!(a, Attempt::Fail { .. }) {
                        return with_peer(a);
                    }
                    tracing::info!(peer = %peer.cfg.name, %hop, error = %e, "next hop failed");
                    last = a;
                    continue;
                }
            };
            let mut sent = conn.send(&env, &bytes).await;
            if let Ok(Err(PlanError::NeedsDowngrade)) = sent {
                // No 8BITMIME at the next hop: 8-bit parts go as base64 (RFC 6152 §3).
                match mm4::mime::downgrade_8bit(&bytes) {
                    Ok(seven) => sent = conn.send(&env, &seven).await,
                    Err(e) => {
                        self.release(&peer.cfg.name, conn);
                        return with_peer(Attempt::Fail {
                            status: RequestStatus::ErrorContentNotAccepted,
                            evidence: format!(
                                "next hop lacks 8BITMIME and the message cannot be made 7-bit: {e}"
                            ),
                        });
                    }
                }
            }
            match sent {
                Ok(Ok(results)) => {
                    if conn.reusable() {
                        self.release(&peer.cfg.name, conn);
                    }
                    return results
                        .iter()
                        .map(|r| {
                            let a = Attempt::from_result(r);
                            let wait = waits_ack
                                && matches!(
                                    a,
                                    Attempt::Accepted {
                                        acknowledged: false,
                                        ..
                                    }
                                );
                            (a, peer_name.clone(), wait)
                        })
                        .collect();
                }
                Ok(Err(PlanError::TooBig { size, limit })) => {
                    self.release(&peer.cfg.name, conn);
                    return with_peer(Attempt::Fail {
                        status: RequestStatus::ErrorContentNotAccepted,
                        evidence: format!(
                            "{size} octets exceed the server's SIZE {limit} (not sent)"
                        ),
                    });
                }
                Ok(Err(e)) => {
                    self.release(&peer.cfg.name, conn);
                    return with_peer(Attempt::Fail {
                        status: RequestStatus::ErrorContentNotAccepted,
                        evidence: e.to_string(),
                    });
                }
                Err(e) => {
                    // The connection broke mid-transaction: the next host, else later.
                    last = Attempt::from_session(&e);
                    if matches!(last, Attempt::Fail { .. }) {
                        last = Attempt::Retry {
                            evidence: e.to_string(),
                        };
                    }
                }
            }
        }
        with_peer(last)
    }

    /// The bytes for a peer: a transit forward goes as received; a forward we originated is
    /// written for the peer's profile with the transaction id of its recipient MMSE.
    fn render(
        &self,
        body: &[u8],
        meta: &StoredMessage,
        peer: &crate::directory::Peer,
        tid: Option<&str>,
    ) -> Result<(Vec<u8>, bool, mm4::MessageType), String> {
        let pdu = mm4::parse(body).map_err(|e| e.to_string())?;
        let ack = pdu.ack_requested();
        let mt = pdu.message_type();
        if !meta.originated {
            return Ok((body.to_vec(), ack, mt));
        }
        let mut pdu = pdu;
        if let Some(t) = tid {
            pdu.transaction_id = t.to_string();
        }
        if !peer.cfg.ack_request {
            pdu.ack_request = None;
        }
        // The version: configured (bilateral agreement), else what the peer was seen or said
        // to speak (capability records), else the default.
        let learned = || -> Option<mm4::Version> {
            let d = peer.domains.first()?;
            ["exchange", "seen"].iter().find_map(|k| {
                let b = self.store.capability(&format!("{k}:{d}")).ok()??;
                let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
                let text = v["version"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| v["versions"][0].as_str().map(str::to_string))?;
                text.parse::<mm4::Version>()
                    .ok()
                    .filter(|v| v.is_supported())
            })
        };
        let profile = mm4::Profile {
            version: peer
                .cfg
                .mms_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .or_else(learned)
                .or(Some(mm4::Version::V6_16_0)),
            ..mm4::Profile::default()
        };
        let out = mm4::emit(&pdu, &profile).map_err(|e| e.to_string())?;
        Ok((out, pdu.ack_requested(), mt))
    }

    async fn connection(
        &self,
        peer: &str,
        hop: SocketAddr,
        tls: crate::config::TlsPolicy,
    ) -> Result<Connection, SessionError> {
        let pooled = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.get_mut(peer).and_then(|v| {
                let i = v.iter().position(|c| c.addr == hop)?;
                Some(v.swap_remove(i))
            })
        };
        if let Some(c) = pooled {
            return Ok(c);
        }
        let mut cfg = self.cfg.client.clone();
        cfg.tls = match tls {
            crate::config::TlsPolicy::None => smtp::client_driver::TlsMode::None,
            crate::config::TlsPolicy::Opportunistic => smtp::client_driver::TlsMode::Opportunistic,
            crate::config::TlsPolicy::Required => smtp::client_driver::TlsMode::Required,
        };
        let c = Connection::open(hop, &cfg).await?;
        let mut caps = self.capabilities.lock().unwrap_or_else(|e| e.into_inner());
        caps.insert(
            peer.to_string(),
            SeenCapabilities {
                at: self.clock.now_ms(),
                host: hop,
                caps: c.caps.clone(),
                tls: c.tls,
            },
        );
        Ok(c)
    }

    /// The charging record of a REQ we sent that the next hop accepted.
    fn cdr_sent(
        &self,
        meta: &StoredMessage,
        peer: Option<String>,
        tid: Option<String>,
        rcpts: Vec<String>,
        now: i64,
    ) {
        use crate::cdr::{Cdr, RecordType};
        let Some(w) = &self.cdr else { return };
        let record_type = match &meta.kind {
            crate::records::MessageKind::Mm4 { message_type } => {
                match message_type.parse::<mm4::MessageType>() {
                    Ok(mm4::MessageType::ForwardReq) => RecordType::MMO4FRq,
                    Ok(mm4::MessageType::DeliveryReportReq) => RecordType::MMR4DRq,
                    Ok(mm4::MessageType::ReadReplyReq) => RecordType::MMR4RRq,
                    _ => return,
                }
            }
            _ => return,
        };
        w.write(&Cdr {
            record_type,
            time: crate::cdr::now_rfc3339(now),
            local_rs: self.cfg.our_domain.to_string(),
            peer,
            originator: meta.from.clone(),
            recipients: rcpts,
            message_id: meta.mm_message_id.clone(),
            transaction_id: tid,
            size: Some(meta.size),
            content_types: Vec::new(),
            status: None,
        });
    }

    fn release(&self, peer: &str, conn: Connection) {
        // As many idle connections as the peer allows concurrent ones: reopening costs a TCP
        // handshake, a greeting and an EHLO per message.
        let limit = self
            .router
            .dir
            .peer_by_name(peer)
            .map_or(4, |p| self.router.dir.peers[p].cfg.max_connections);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let v = pool.entry(peer.to_string()).or_default();
        if v.len() < limit {
            v.push(conn);
        }
    }
}

/// The envelope form of a recipient at `domain` (PLMN addresses without a domain get it).
pub fn qualify(address: &str, domain: &Domain) -> String {
    match address.parse::<mm4::Address>() {
        Ok(a) if a.domain().is_none() => a
            .envelope(Some(domain))
            .unwrap_or_else(|_| address.to_string()),
        _ => address.to_string(),
    }
}

/// [`qualify`] for a hop onwards: an address handed to us at our own domain (we are a hub)
/// goes on at the next MMSE's domain.
pub fn qualify_onwards(address: &str, domain: &Domain, ours: &Domain) -> String {
    match address.parse::<mm4::Address>() {
        Ok(a) if a.domain() == Some(ours) && a.e164().is_some() => a
            .without_domain()
            .envelope(Some(domain))
            .unwrap_or_else(|_| address.to_string()),
        _ => qualify(address, domain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(1800),
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_with_bounded_jitter() {
        let p = policy();
        let within = |d: Duration, base: u64| {
            let ms = d.as_millis() as u64;
            ms >= base * 900 && ms <= base * 1100
        };
        assert!(within(backoff(p, 1, 7), 30));
        assert!(within(backoff(p, 2, 7), 60));
        assert!(within(backoff(p, 3, 7), 120));
        assert!(within(backoff(p, 10, 7), 1800), "capped");
        assert!(within(backoff(p, 1000, 7), 1800), "no overflow");
        // Deterministic per key, different across keys.
        assert_eq!(backoff(p, 3, 7), backoff(p, 3, 7));
        let spread: HashSet<Duration> = (0..50).map(|k| backoff(p, 3, k)).collect();
        assert!(spread.len() > 10);
    }

    fn st() -> RecipientState {
        RecipientState::new(
            "+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs".into(),
            RcptState::Queued,
            None,
            0,
        )
    }

    #[test]
    fn transient_failures_defer_then_expire_on_an_injected_clock() {
        let clock = ManualClock::new(1_000_000);
        let expires = 1_000_000 + 3_600_000; // one hour
        let mut s = st();
        let retry = Attempt::Retry {
            evidence: "451 4.3.0 try later".into(),
        };
        let mut due = apply(&mut s, &retry, clock.now_ms(), Some(expires), policy(), 1).unwrap();
        assert_eq!(s.state, RcptState::Deferred);
        assert!((due as i64 - clock.now_ms()) >= 27_000 && (due as i64 - clock.now_ms()) <= 33_000);
        let mut attempts = 1;
        // Keep failing at each due time: the waits grow, never beyond the expiry.
        while s.state == RcptState::Deferred {
            clock.0.store(due as i64, Ordering::SeqCst);
            match apply(&mut s, &retry, clock.now_ms(), Some(expires), policy(), 1) {
                Some(d) => {
                    assert!(d as i64 <= expires, "never scheduled after expiry");
                    assert!(d > due);
                    due = d;
                }
                None => break,
            }
            attempts += 1;
            assert!(attempts < 100);
        }
        assert_eq!(s.state, RcptState::Expired);
        assert_eq!(s.status_code.as_deref(), Some("Error-network-problem"));
        assert_eq!(
            clock.now_ms(),
            expires,
            "expired exactly at the expiry, not before"
        );
        assert!(
            s.events.iter().any(|e| e.detail.contains("451 4.3.0")),
            "evidence on the timeline"
        );
    }

    #[test]
    fn accepted_failed_acknowledged() {
        let mut s = st();
        let a = Attempt::Accepted {
            acknowledged: false,
            evidence: "250 2.0.0 ok".into(),
        };
        assert_eq!(apply(&mut s, &a, 5, None, policy(), 1), None);
        assert_eq!(s.state, RcptState::Forwarded);
        let mut s = st();
        let a = Attempt::Accepted {
            acknowledged: true,
            evidence: "250 2.0.0 [MM4 Ok] \"T\" accepted".into(),
        };
        apply(&mut s, &a, 5, None, policy(), 1);
        assert_eq!(s.state, RcptState::Acknowledged);
        assert_eq!(s.status_code.as_deref(), Some("Ok"));
        let mut s = st();
        let f = Attempt::Fail {
            status: RequestStatus::ErrorSendingAddressUnresolved,
            evidence: "550 5.1.1 unknown".into(),
        };
        apply(&mut s, &f, 5, None, policy(), 1);
        assert_eq!(s.state, RcptState::Failed);
        assert_eq!(
            s.status_code.as_deref(),
            Some("Error-sending-address-unresolved")
        );
        assert_eq!(s.due, None);
    }

    #[test]
    fn qualify_adds_the_peer_domain() {
        let d: Domain = "mms.mnc002.mcc262.gprs".parse().unwrap();
        assert_eq!(
            qualify("+491721234567/TYPE=PLMN", &d),
            "+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs"
        );
        assert_eq!(qualify("a@b.c", &d), "a@b.c");
    }
}
