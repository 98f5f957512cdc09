//! One group of claimed recipients (one message, one peer, one transaction id) from claim to
//! committed result. Every write is guarded by the claim: a RES, report or operator action that
//! landed meanwhile wins, and a claim that expired and was taken over cannot be undone by its
//! late first owner. Charging records are written after the commit, for what it applied.

use crate::traffic::Outcome as Traffic;
use store::{Guard, MsgId, Op, OpResult, StoreError};

use crate::cdr::Cdr;

use super::policy::{apply_with_ack, expire, Attempt};
use super::Outbound;
use crate::records::{from_bytes, RcptState, RecipientState, StoredMessage};

/// A claimed recipient.
pub struct Member {
    pub idx: u32,
    pub st: RecipientState,
    /// The guard of the write that finishes the claim.
    pub guard: Guard,
}

/// Claimed recipients of one message that go in one transaction.
pub struct Group {
    pub id: MsgId,
    pub peer: Option<String>,
    pub members: Vec<Member>,
}

/// A recipient's new state and next due time, ready to commit under its claim.
struct Outcome {
    member: Member,
    due: Option<u64>,
}

/// Every member changed by `change` and taken out of the queue.
fn out_of_queue(members: Vec<Member>, change: impl Fn(&mut RecipientState)) -> Vec<Outcome> {
    members
        .into_iter()
        .map(|mut member| {
            change(&mut member.st);
            Outcome { member, due: None }
        })
        .collect()
}

impl Outbound {
    /// Writes results, each under its claim; which ones were applied.
    async fn commit_outcomes(
        &self,
        id: MsgId,
        outcomes: &[Outcome],
    ) -> Result<Vec<bool>, StoreError> {
        self.commit_outcomes_with(id, outcomes, Vec::new()).await
    }

    /// [`Self::commit_outcomes`] with `more` ops (charging records) in the same commit.
    async fn commit_outcomes_with(
        &self,
        id: MsgId,
        outcomes: &[Outcome],
        more: Vec<Op>,
    ) -> Result<Vec<bool>, StoreError> {
        let mut ops: Vec<Op> = outcomes
            .iter()
            .map(|o| o.member.st.op(id, o.member.idx, o.due, o.member.guard))
            .collect();
        ops.extend(more);
        let results = self.store.commit(ops).await?;
        let applied: Vec<bool> = results
            .into_iter()
            .take(outcomes.len())
            .map(|r| r != OpResult::Conflict)
            .collect();
        for (o, _) in outcomes.iter().zip(&applied).filter(|(_, a)| **a) {
            crate::maillog::transition(id, o.member.idx, &o.member.st, o.due);
        }
        Ok(applied)
    }

    /// One transaction for a group, and its results written back.
    pub(super) async fn deliver(&self, g: Group) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let meta: Option<StoredMessage> = match self.store.message(g.id).await? {
            Some(b) => Some(from_bytes("message", &b)?),
            None => None,
        };
        let Some(meta) = meta else {
            // Recipients without their message: nothing can ever be sent; say so on them.
            let outcomes = out_of_queue(g.members, |st| {
                st.conclude(
                    RcptState::Failed,
                    mm4::RequestStatus::ErrorUnspecified.as_str(),
                    "the stored message is missing",
                    now,
                )
            });
            self.commit_outcomes(g.id, &outcomes).await?;
            return Ok(());
        };

        // Expired while queued: no attempt.
        if meta.expires_at.is_some_and(|e| now >= e) {
            let outcomes = out_of_queue(g.members, |st| {
                expire(st, now, "not delivered before expiry")
            });
            self.commit_outcomes(g.id, &outcomes).await?;
            return Ok(());
        }

        // Forwarded recipients that are due again waited in vain for their RES: the same REQ
        // goes again (same ids; the peer de-duplicates), up to the limit, then Indeterminate.
        let mut g = g;
        let mut finished = Vec::new();
        let mut sending = Vec::new();
        for mut m in std::mem::take(&mut g.members) {
            if m.st.state != RcptState::Forwarded {
                sending.push(m);
                continue;
            }
            if m.st.resends < self.cfg.ack_resends {
                m.st.resends += 1;
                let n = m.st.resends;
                m.st.set(
                    RcptState::Queued,
                    now,
                    format!("no RES within the ack timeout: re-send {n}"),
                );
                sending.push(m);
                continue;
            }
            m.st.status_code = Some(mm4::MmStatus::Indeterminate.as_str().into());
            m.st.status_text = Some("no RES after the last re-send".into());
            m.st.set(
                RcptState::Failed,
                now,
                "no RES after the last re-send: Indeterminate",
            );
            finished.push(Outcome {
                member: m,
                due: None,
            });
        }
        if !finished.is_empty() {
            self.commit_outcomes(g.id, &finished).await?;
        }
        if sending.is_empty() {
            return Ok(());
        }
        g.members = sending;
        let results = self.attempt(&g, &meta).await;
        self.record(g, &meta, results).await
    }

    /// Applies the transaction's results, commits them, then counts and charges what landed.
    async fn record(
        &self,
        g: Group,
        meta: &StoredMessage,
        results: super::transaction::Results,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let gid = g.id;
        let key = move |idx: u32| gid.wrapping_mul(1_000_003) ^ idx as u64;
        let mut outcomes = Vec::with_capacity(g.members.len());
        let mut attempts = Vec::with_capacity(g.members.len());
        for (mut m, (attempt, peer, waits_ack)) in g.members.into_iter().zip(results) {
            if m.st.peer.is_none() {
                m.st.peer = peer;
            }
            let wait = waits_ack.then_some(self.cfg.ack_timeout);
            let due = apply_with_ack(
                &mut m.st,
                &attempt,
                now,
                meta.expires_at,
                self.cfg.retry,
                key(m.idx),
                wait,
            );
            attempts.push(attempt);
            outcomes.push(Outcome { member: m, due });
        }
        let charge = self.charge_sent(meta, &outcomes, &attempts, now).await?;
        let charged = !charge.is_empty();
        let applied = self.commit_outcomes_with(gid, &outcomes, charge).await?;
        if let (Some(c), true) = (&self.cdr, charged) {
            c.committed();
        }
        for ((o, attempt), applied) in outcomes.iter().zip(&attempts).zip(applied) {
            let st = &o.member.st;
            let peer = st.peer.as_deref().unwrap_or("-");
            if let Attempt::Retry { evidence } = attempt {
                self.note_error(peer, now, evidence);
            }
            let outcome = match attempt {
                Attempt::Accepted { .. } => Traffic::Sent,
                Attempt::Retry { .. } => Traffic::Deferred,
                Attempt::Fail { status, .. } => Traffic::Failed {
                    status: status.as_str(),
                },
            };
            self.metrics.message_out(peer, outcome, now);
            if !applied {
                tracing::info!(
                    id = gid,
                    idx = o.member.idx,
                    "delivery result superseded meanwhile"
                );
                continue;
            }
            if matches!(attempt, Attempt::Accepted { .. }) {
                self.metrics
                    .observe_latency((now - meta.received_at).max(0) as f64 / 1000.0);
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The charging record of a REQ we sent that the next hop accepted, as an op committed with
    /// the delivery state — stored only if one of the recipient writes applies: when a RES
    /// settled them first (our write lost), the RES handler charged the REQ. Charged once per
    /// REQ: a re-send after a lost RES is the same REQ.
    async fn charge_sent(
        &self,
        meta: &StoredMessage,
        outcomes: &[Outcome],
        attempts: &[Attempt],
        now: i64,
    ) -> Result<Vec<Op>, StoreError> {
        let Some(charging) = &self.cdr else {
            return Ok(Vec::new());
        };
        let (ops, sent_to): (Vec<usize>, Vec<String>) = outcomes
            .iter()
            .zip(attempts)
            .enumerate()
            .filter(|(_, (o, a))| matches!(a, Attempt::Accepted { .. }) && o.member.st.resends == 0)
            .map(|(i, (o, _))| (i, o.member.st.address.clone()))
            .unzip();
        let first = &outcomes[0].member.st;
        let record = Cdr::sent(
            meta,
            &self.cfg.our_domain.to_string(),
            first.peer.clone(),
            first.tid.clone(),
            sent_to,
            now,
        );
        match record {
            Some(r) => charging.ops(&*self.store, &[r], &ops).await,
            None => Ok(Vec::new()),
        }
    }
}
