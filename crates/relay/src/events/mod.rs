//! The MM-level half of the relay: acting on what inbound stored (EXTENSIONS §2–§4, SPEC §6).
//!
//! Each stored event is claimed, handled, and deleted in the same all-or-nothing commit as its
//! effects; its charging records are written once that commit is durable. Recipient updates are
//! compare-and-set: when a delivery (or anything else) changed a recipient meanwhile, the event
//! is handled again from a fresh read. A store error leaves the event claimed until the claim
//! lapses, then it is handled again — work is retried, never dropped. Only an event that can
//! never be acted on (its record or message unreadable) is logged and deleted.
//!
//! - [`forward`]: a forward for our subscribers (RES owed, `Expired` reports prepared);
//! - [`response`]: RES, delivery and read reports, capability PDUs;
//! - [`dsn`]: RFC 3464 DSNs and plain bounces;
//! - [`capability`]: the active capability exchange (a singleton job).

pub mod capability;
pub mod dsn;
pub mod forward;
pub mod response;

use std::sync::Arc;
use std::time::Duration;

use mm4::{MessageType, Pdu, RequestStatus};
use store::{ClaimRequest, ClaimedEvent, Guard, MsgId, Op, Spool, StoreError};
use tokio::sync::{watch, Notify};

use crate::cdr::{now_rfc3339, Cdr, Charging, RecordType};
use crate::clock::Clock;
use crate::directory::Directory;
use crate::keys::IndexKey;
use crate::originate::{Answer, OriginateError, Originator};
use crate::records::{from_bytes, Event, Next, RecipientState, StoredMessage};

pub use crate::originate::{new_tid, our_capabilities};

pub struct Events {
    pub store: Arc<dyn Spool>,
    pub dir: Arc<crate::live::Live<Directory>>,
    pub clock: Arc<dyn Clock>,
    /// Charging records (stored with each event's commit); `None`: none are made.
    pub cdr: Option<Charging>,
    /// Woken by inbound after each commit.
    pub wake: Arc<Notify>,
    /// Woken when outbound work was queued.
    pub outbound_wake: Arc<Notify>,
    pub originator: Originator,
    /// Expiry of a received MM without X-Mms-Expiry (for the `Expired` report).
    pub lifetime: Duration,
    /// The owner name of this node's claims, and how long they last.
    pub node: String,
    pub lease: Duration,
    /// Most events claimed at once.
    pub batch: usize,
    /// Events given up after a store error, to be released.
    pub abandoned: crate::abandoned::Abandoned,
}

/// Why an event was not handled.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Try again later (the claim lapses, the event is handled again).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A PDU we owe could not be queued: try again later too.
    #[error(transparent)]
    Originate(#[from] OriginateError),
}

/// What handling one event does: the changes committed with its deletion, and the charging
/// records committed with them.
#[derive(Default)]
pub struct Effects {
    pub ops: Vec<Op>,
    pub cdrs: Vec<Cdr>,
}

impl Effects {
    fn queues_work(&self) -> bool {
        self.ops
            .iter()
            .any(|o| matches!(o, Op::SetRecipient { due: Some(_), .. }))
    }
}

/// How often an event whose recipients changed under it is handled again in a row.
const CONFLICT_RETRIES: usize = 5;

impl Events {
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A charging record of `pdu` (committed with the event's effects).
    fn cdr(
        &self,
        fx: &mut Effects,
        record_type: RecordType,
        peer: Option<String>,
        pdu: &Pdu<'_>,
        status: Option<String>,
        size: usize,
    ) {
        if self.cdr.is_none() {
            return;
        }
        fx.cdrs.push(Cdr {
            record_type,
            time: now_rfc3339(self.now()),
            local_rs: self.dir.get().domain.to_string(),
            peer,
            originator: pdu.from.as_ref().map(ToString::to_string),
            recipients: pdu.recipients().map(ToString::to_string).collect(),
            message_id: pdu.mm_message_id().map(str::to_string),
            transaction_id: Some(pdu.transaction_id.clone()),
            size: Some(size),
            content_types: pdu
                .body
                .as_ref()
                .and_then(|b| b.content_type.clone())
                .into_iter()
                .collect(),
            status,
        });
    }

    /// Processes stored events until `shutdown`.
    ///
    /// Events are handled concurrently — up to `batch` at once, more claimed as soon as some
    /// finish — so that their commits share fsyncs (group commit) instead of paying one each in
    /// a row, and one slow event never holds up the next ones. Events that touch the same
    /// recipients are kept apart by compare-and-set: a conflict means read again.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut next_exchange = 0i64;
        let mut running = tokio::task::JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.now() >= next_exchange {
                next_exchange = self.now() + 60_000;
                if let Err(e) = self.exchange_capabilities().await {
                    tracing::error!(error = %e, "capability exchange not queued; will retry");
                }
            }
            self.release_abandoned().await;
            let room = self.batch.saturating_sub(running.len());
            let mut full = false;
            if room > 0 {
                let req = ClaimRequest {
                    owner: &self.node,
                    now: self.now().max(0) as u64,
                    lease: self.lease,
                    limit: room,
                };
                match self.store.claim_events(&req).await {
                    Ok(evs) => {
                        full = evs.len() == room;
                        for ev in evs {
                            let me = self.clone();
                            running.spawn(async move { me.process(ev).await });
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "events: store error"),
                }
            }
            if full {
                // There may be more: claim again once some have finished.
                if let Some(Err(e)) = running.join_next().await {
                    tracing::error!(error = %e, "event task failed; its claim lapses");
                }
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "event task failed; its claim lapses");
                    }
                }
            }
        }
        // Events under way get a moment to commit; one that does not is handled again once
        // its claim lapses.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while running.join_next().await.is_some() {}
        })
        .await;
        running.shutdown().await;
    }

    /// Gives up an event's claim (released now, else on the next pass): it is handled again
    /// soon.
    async fn abandon(&self, ev: &ClaimedEvent) {
        self.abandoned.push([store::ClaimRef::Event {
            id: ev.id,
            token: ev.token,
        }]);
        self.release_abandoned().await;
    }

    /// Releases the events given up since the last pass.
    pub async fn release_abandoned(&self) {
        self.abandoned.release(&*self.store, self.now()).await;
    }

    /// Handles one claimed event and commits its effects with its deletion.
    pub async fn process(&self, ev: ClaimedEvent) {
        let id = ev.id;
        let delete = Op::DeleteEvent {
            id,
            token: Some(ev.token),
        };
        let event = match from_bytes::<Event>("event", &ev.event) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(id, error = %e, "unreadable event deleted");
                let _ = self.store.commit(vec![delete]).await;
                return;
            }
        };
        for _ in 0..CONFLICT_RETRIES {
            let fx = match self.handle(id, event.clone()).await {
                Ok(fx) => fx,
                Err(e) => {
                    tracing::error!(id, error = %e, "event not handled; will retry");
                    self.abandon(&ev).await;
                    return;
                }
            };
            let queued = fx.queues_work();
            let mut ops = fx.ops;
            ops.push(delete.clone());
            let charged = !fx.cdrs.is_empty();
            if let (Some(c), true) = (&self.cdr, charged) {
                match c.ops(&*self.store, &fx.cdrs, &[]).await {
                    Ok(cdrs) => ops.extend(cdrs),
                    Err(e) => {
                        tracing::error!(id, error = %e, "event not handled; will retry");
                        self.abandon(&ev).await;
                        return;
                    }
                }
            }
            let log = crate::maillog::Pending::of(&ops);
            match self.store.commit_all(ops).await {
                Ok(_) => {
                    log.emit();
                    if let (Some(c), true) = (&self.cdr, charged) {
                        c.committed();
                    }
                    if queued {
                        self.outbound_wake.notify_one();
                    }
                    return;
                }
                // A recipient changed under us (or the claim was lost): read again.
                Err(StoreError::Conflict) => continue,
                Err(e) => {
                    tracing::error!(id, error = %e, "event not processed; will retry");
                    self.abandon(&ev).await;
                    return;
                }
            }
        }
        tracing::warn!(id, "event kept conflicting; left for a later pass");
    }

    /// The changes one event causes (committed together with its deletion).
    pub async fn handle(&self, id: MsgId, ev: Event) -> Result<Effects, EventError> {
        let mut fx = Effects::default();
        let Some(meta) = self.store.message(id).await? else {
            tracing::error!(id, "event for a message that is not stored: deleted");
            return Ok(fx);
        };
        let meta: StoredMessage = from_bytes("message", &meta)?;
        // A forward is acted on by its headers: its content (most of its size) stays unread.
        let body = match (&ev, meta.head_len) {
            (Event::ForwardReceived { .. }, Some(len)) => self.store.head(id, len).await?,
            _ => self.store.body(id).await?,
        };
        let Some(body) = body else {
            tracing::error!(id, "event for a message without a body: deleted");
            return Ok(fx);
        };
        match ev {
            Event::ForwardReceived {
                ack_request,
                res_in_reply,
                local,
                ..
            } => {
                self.forward_received(
                    &mut fx,
                    id,
                    &meta,
                    &body,
                    ack_request && !res_in_reply,
                    &local,
                )
                .await?
            }
            Event::Refused {
                message_type,
                transaction_id,
                status,
                reason,
                reply_to,
            } => match message_type.parse::<MessageType>() {
                Ok(mt) => {
                    let status = status.parse().unwrap_or(RequestStatus::ErrorUnspecified);
                    self.queue_res(
                        &mut fx,
                        Answer {
                            req: mt,
                            tid: &transaction_id,
                            mm_id: None,
                            status,
                            text: &reason,
                            reply_to: &reply_to,
                        },
                    )
                    .await?
                }
                Err(_) => tracing::warn!(id, %message_type, "refused REQ of unknown type: no RES"),
            },
            Event::Pdu { .. } => match mm4::parse(&body) {
                Ok(pdu) => self.pdu(&mut fx, &meta, &pdu, body.len()).await?,
                Err(e) => tracing::warn!(id, error = %e, "stored PDU no longer parses"),
            },
            Event::Dsn => self.dsn(&mut fx, &body).await?,
            Event::Bounce => self.plain_bounce(&mut fx, id, &body).await?,
        }
        Ok(fx)
    }

    /// Queues the `.RES` of `answer`.
    pub async fn queue_res(&self, fx: &mut Effects, answer: Answer<'_>) -> Result<(), EventError> {
        // A peer may want its RES mails elsewhere than its originator system (`res_to`).
        let (to, peer) = self.originator.res_address(answer.reply_to);
        let answer = Answer {
            reply_to: &to,
            ..answer
        };
        let Some(pdu) = self.originator.res(&answer) else {
            return Ok(());
        };
        match self.originator.queue(&pdu, &to, peer, None).await {
            Ok((_, ops)) => fx.ops.extend(ops),
            // Nobody to send it to: configuration, not a passing failure.
            Err(OriginateError::NoPeer(to)) => {
                tracing::warn!(%to, pdu = %pdu.message_type(), "no peer serves this address: not sent")
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Our message a RES or report is about: by transaction id (quoted or not), else MM id.
    async fn correlate(
        &self,
        tid: Option<&str>,
        mm_id: Option<&str>,
    ) -> Result<Option<MsgId>, StoreError> {
        let lookup = |k: String| async move {
            Ok::<_, StoreError>(
                self.store
                    .index(&k)
                    .await?
                    .and_then(|b| String::from_utf8(b).ok()?.parse().ok()),
            )
        };
        if let Some(t) = tid {
            if let Some(id) = lookup(IndexKey::Transaction(t).to_string()).await? {
                return Ok(Some(id));
            }
        }
        match mm_id {
            Some(m) => lookup(IndexKey::MmId(m).to_string()).await,
            None => Ok(None),
        }
    }

    /// Rewrites the recipients of `id` that `select` picks with `change`, each only over the
    /// version it was read at.
    pub async fn update_recipients(
        &self,
        id: MsgId,
        select: impl Fn(&RecipientState) -> bool,
        change: impl Fn(&mut RecipientState) -> Next,
    ) -> Result<Vec<Op>, StoreError> {
        let mut ops = Vec::new();
        for row in self.store.recipients(id).await? {
            let mut st: RecipientState = from_bytes("recipient", &row.state)?;
            if !select(&st) {
                continue;
            }
            let due = match change(&mut st) {
                Next::Keep => row.due.as_ref().map(|d| d.at),
                Next::Out => None,
                Next::At(at) => Some(at),
            };
            ops.push(st.op(id, row.idx, due, Guard::Version(row.version)));
        }
        Ok(ops)
    }
}
