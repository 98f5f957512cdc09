//! The store's contract: what every backend stores, how changes are made, and how work is
//! claimed so that exactly one owner acts on it at a time.
//!
//! Records are opaque bytes here (the relay owns their meaning); the store owns atomicity,
//! durability and its indexes. A recipient's due time is stored once, with the recipient: callers
//! say where it is due next, the store moves its index entry.
//!
//! **Ownership.** Delivery work (a due recipient) and events are *claimed*: the claim records an
//! owner, an expiry and a fencing token that grows with every claim. The owner finishes with a
//! write guarded by [`Guard::Lease`]; the store applies it only while the claim is still the
//! owner's and nobody else has written the record since the claim. An expired claim makes the
//! work claimable again, so a dead owner's work is taken over, and a slow owner's late write is
//! refused instead of undoing what the new owner did.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

/// Our id of a stored message. Allocated by the store ([`Spool::next_id`]).
pub type MsgId = u64;

/// A fencing token: grows with every claim the store hands out.
pub type Token = u64;

/// Why the store failed. Any of these means "not stored": the caller answers `451 4.3.0` or
/// tries again later; nothing was half-written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(String),
    #[error("store: the writer has stopped")]
    WriterGone,
    #[error("store: cannot open {path}: {reason}")]
    Open {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A record read back does not decode (a bug or a damaged store, never silently skipped).
    #[error("store: damaged record {what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// An all-or-nothing commit met a guard that no longer holds: nothing was applied.
    #[error("store: conflict (the work changed hands or the record changed meanwhile)")]
    Conflict,
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// What a write to a recipient requires of the stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Nothing: a new record, or one nobody else can touch.
    None,
    /// Compare and set: the record is still at this version.
    Version(u64),
    /// The writer's claim: it still holds it (`token`) and the record is still at the version it
    /// claimed (`version`). The claim ends with this write, applied or not.
    Lease { token: Token, version: u64 },
}

/// Where a recipient is due next: at `at` (unix ms) in queue `queue` (the peer it goes to;
/// empty while unrouted). Claims are made per queue, so one slow peer's backlog never stands in
/// front of another peer's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueAt {
    pub at: u64,
    pub queue: String,
}

impl DueAt {
    pub fn new(at: u64, queue: impl Into<String>) -> Self {
        DueAt {
            at,
            queue: queue.into(),
        }
    }
}

/// One change. A commit is a list of these, applied atomically and durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new message: its metadata and its body, each written once, and the parties it is
    /// found by (the numbers of its sender and recipients: [`Spool::by_party`]).
    PutMessage {
        id: MsgId,
        meta: Vec<u8>,
        body: Vec<u8>,
        parties: Vec<String>,
        /// How many first octets of the body are read back while the message is acted on (an
        /// MM's header section: [`Spool::head`]); a store may keep them where they are cheap
        /// to read. 0: none in particular.
        head: usize,
    },
    /// Replaces a message's metadata (never its body).
    UpdateMessage {
        id: MsgId,
        meta: Vec<u8>,
    },
    /// Sets one recipient's state and where it is due next (`None`: out of the queue), if
    /// `guard` holds (else the result is [`OpResult::Conflict`] and nothing is written).
    SetRecipient {
        id: MsgId,
        idx: u32,
        state: Vec<u8>,
        due: Option<DueAt>,
        guard: Guard,
    },
    /// Files a message in a local subscriber's mailbox unless `dedupe_key` was seen before;
    /// the result says which (MM4 de-duplication: message id + originator system + recipient).
    Deliver {
        dedupe_key: String,
        address: String,
        id: MsgId,
    },
    /// Something for the relay to act on (a RES, a report, a DSN, a RES to send).
    PutEvent {
        id: MsgId,
        event: Vec<u8>,
    },
    /// The event was acted on. With `token`, only by the holder of that claim.
    DeleteEvent {
        id: MsgId,
        token: Option<Token>,
    },
    PutCapability {
        peer: String,
        record: Vec<u8>,
    },
    /// A small named record (lookups the relay needs, e.g. transaction id → message).
    PutIndex {
        key: String,
        value: Vec<u8>,
    },
    DeleteIndex {
        key: String,
    },
    /// A charging record, committed with the event it charges; written to a node's files
    /// later by whoever claims it ([`Spool::claim_cdrs`]). `id` comes from [`Spool::next_id`]
    /// and becomes the record's id in the files. With `if_applied` (indices of earlier ops of
    /// the same commit) it is stored only if one of those applied, else the result is
    /// [`OpResult::Conflict`]: a REQ is charged by whichever write records it as sent.
    PutCdr {
        id: MsgId,
        record: Vec<u8>,
        if_applied: Vec<usize>,
    },
    /// Charging records `exporter` has written to its files: gone from the store. A record
    /// another exporter took over meanwhile stays; the result is then [`OpResult::Conflict`].
    DeleteCdrs {
        exporter: String,
        ids: Vec<MsgId>,
    },
}

impl Op {
    /// Whether this op is skipped because none of the earlier ops it depends on applied
    /// (`earlier`: the results of the commit's ops before it).
    pub fn depends_on_nothing_applied(&self, earlier: &[OpResult]) -> bool {
        match self {
            Op::PutCdr { if_applied, .. } if !if_applied.is_empty() => !if_applied
                .iter()
                .any(|i| earlier.get(*i).is_some_and(|r| *r != OpResult::Conflict)),
            _ => false,
        }
    }
}

/// The result of one [`Op`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult {
    Done,
    /// `Deliver`: filed in the mailbox.
    Delivered,
    /// `Deliver`: the key was known; the message it first came with.
    Duplicate(MsgId),
    /// A guard did not hold; nothing written for this op.
    Conflict,
}

/// One recipient as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientRow {
    pub idx: u32,
    /// Grows with every write of this recipient (for [`Guard::Version`]).
    pub version: u64,
    pub due: Option<DueAt>,
    pub state: Vec<u8>,
}

/// A due recipient handed to one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: MsgId,
    pub row: RecipientRow,
    pub token: Token,
}

impl Claimed {
    /// The guard of the write that finishes this claim.
    pub fn guard(&self) -> Guard {
        Guard::Lease {
            token: self.token,
            version: self.row.version,
        }
    }
}

/// An event handed to one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedEvent {
    pub id: MsgId,
    pub event: Vec<u8>,
    pub token: Token,
}

/// A claim its owner gives up without finishing it (a store error stopped the work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRef {
    Recipient { id: MsgId, idx: u32, token: Token },
    Event { id: MsgId, token: Token },
}

/// A charging record waiting to be written to a node's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrRow {
    pub id: MsgId,
    pub record: Vec<u8>,
}

/// An entry of a queue's due index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub at: u64,
    pub id: MsgId,
    pub idx: u32,
}

/// A queue as the API and metrics see it, kept as work happens (never a scan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSummary {
    pub queue: String,
    /// Recipients in the queue's due index.
    pub depth: u64,
    /// The earliest due time.
    pub next_due: Option<u64>,
}

/// One of a peer's connection slots, held by one owner while its connection is open: a peer's
/// `max_connections` counts the connections of every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub peer: String,
    pub n: u32,
    pub token: Token,
}

/// A node as the store knows it: its last heartbeat ([`Spool::renew`]) and the work it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Unix ms.
    pub heartbeat: u64,
    /// Recipients and events it has claimed and not finished.
    pub claimed: u64,
}

/// The node part of an owner name `<node>/<incarnation>`: a restarted node claims under a new
/// incarnation, so its heartbeat never keeps the claims of the process that died alive.
pub fn node_of(owner: &str) -> &str {
    owner.split('/').next().unwrap_or(owner)
}

/// Who claims, for how long.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// `<node>/<incarnation>` (or any name unique to one running process).
    pub owner: &'a str,
    /// Unix ms.
    pub now: u64,
    pub lease: Duration,
    pub limit: usize,
}

/// Counters of the writer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Commits requested.
    pub commits: AtomicU64,
    /// Write transactions made durable (each one fsync on the embedded store).
    pub syncs: AtomicU64,
    /// Write transactions the database aborted for another one's sake (crossed locks) and
    /// that were written again (PostgreSQL).
    pub retries: AtomicU64,
}

/// What only a backend on a local disk can say about itself.
pub trait Health: Send + Sync {
    /// Free bytes on the file system holding the store (`u64::MAX` when it does not apply).
    fn free_space(&self) -> u64;
    fn stats(&self) -> &Stats;
    /// Whether the store answered its last request (a networked store can be away for a
    /// while; the relay then refuses new mail at MAIL instead of after its data).
    fn available(&self) -> bool {
        true
    }
}

/// A pending commit; resolves once the changes are durable.
pub struct CommitHandle(pub(crate) oneshot::Receiver<Result<Vec<OpResult>, StoreError>>);

impl CommitHandle {
    /// A commit that failed before it was queued.
    pub fn failed(e: StoreError) -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(e));
        CommitHandle(rx)
    }
}

impl Future for CommitHandle {
    type Output = Result<Vec<OpResult>, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::WriterGone)))
    }
}

/// The spool interface the relay works against.
#[async_trait::async_trait]
pub trait Spool: Send + Sync {
    /// A fresh message id, never handed out before by this store (on any node).
    async fn next_id(&self) -> Result<MsgId, StoreError>;
    /// Applies `ops` atomically and durably (group-committed with concurrent callers). A guard
    /// that fails makes only its own op a [`OpResult::Conflict`].
    fn commit(&self, ops: Vec<Op>) -> CommitHandle;
    /// [`Spool::commit`], all or nothing: when any guard fails nothing is applied and the result
    /// is [`StoreError::Conflict`] (an event's effects and its deletion stand or fall together).
    fn commit_all(&self, ops: Vec<Op>) -> CommitHandle;

    async fn message(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError>;
    async fn body(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError>;
    /// The first `len` octets of a body (all of it when shorter): what acting on an MM's
    /// headers needs, without reading its content.
    async fn head(&self, id: MsgId, len: usize) -> Result<Option<Vec<u8>>, StoreError>;
    async fn recipients(&self, id: MsgId) -> Result<Vec<RecipientRow>, StoreError>;
    async fn mailbox(&self, address: &str) -> Result<Vec<MsgId>, StoreError>;
    /// One page of a mailbox, oldest first: ids above `after`, at most `limit` (an index range
    /// read; the next page starts after the last id).
    async fn mailbox_page(
        &self,
        address: &str,
        after: MsgId,
        limit: usize,
    ) -> Result<Vec<MsgId>, StoreError>;
    /// Whether message `id` is filed in `address`'s mailbox (a point read).
    async fn filed(&self, address: &str, id: MsgId) -> Result<bool, StoreError>;
    /// The messages `party` is a party of, newest first, with ids below `before`, at most
    /// `limit`: one page of an index range read (the next page starts before the last id).
    async fn by_party(
        &self,
        party: &str,
        before: MsgId,
        limit: usize,
    ) -> Result<Vec<MsgId>, StoreError>;
    async fn dedupe(&self, key: &str) -> Result<Option<MsgId>, StoreError>;
    async fn capability(&self, peer: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn index(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Claims up to `req.limit` recipients of `queue` due at or before `req.now`, earliest
    /// first, that nobody holds (or whose claim expired).
    async fn claim_due(
        &self,
        queue: &str,
        req: &ClaimRequest<'_>,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// Claims up to `req.limit` events nobody holds, oldest first.
    async fn claim_events(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedEvent>, StoreError>;
    /// Extends every claim `owner` holds to `now + lease` (the owner's heartbeat).
    async fn renew(&self, owner: &str, now: u64, lease: Duration) -> Result<(), StoreError>;
    /// Ends claims their owner gave up (still under their token): the heartbeat no longer
    /// keeps them, the old token finishes nothing, and the work is claimable again from
    /// `now + retry_after`.
    async fn release(
        &self,
        claims: &[ClaimRef],
        now: u64,
        retry_after: Duration,
    ) -> Result<(), StoreError>;
    /// A named claim for a job that must run on one owner at a time (renewed by asking again
    /// before it expires); `None` while another owner holds it.
    async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Result<Option<Token>, StoreError>;

    /// Charging records for `exporter` (a node name, stable across its restarts) to write,
    /// oldest first: the ones it claimed before and has not finished (after a crash: they may
    /// be in its files already), else up to `limit` that nobody holds or whose holder has not
    /// come back for them within `stale`. Finished by committing [`Op::DeleteCdrs`].
    async fn claim_cdrs(
        &self,
        exporter: &str,
        now: u64,
        stale: Duration,
        limit: usize,
    ) -> Result<Vec<CdrRow>, StoreError>;

    /// Claims a free one of `limit` connection slots of `peer` for `owner` (renewed with its
    /// other claims); `None` while all are held.
    async fn claim_slot(
        &self,
        peer: &str,
        limit: usize,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Result<Option<Slot>, StoreError>;
    /// Reserves the next start of work spaced by `interval` ms under `key` (a peer's
    /// `max_rate`), shared by every owner of the store: the start (unix ms, at least `now`).
    async fn pace(&self, key: &str, now: u64, interval: u64) -> Result<u64, StoreError>;

    /// Gives a slot back (its connection is closed).
    async fn release_slot(&self, slot: &Slot) -> Result<(), StoreError>;

    /// The nodes that have renewed claims (each `renew` is a node's heartbeat; a node is named
    /// by [`node_of`] its owner name, and its claims are its latest incarnation's).
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;
    /// How many nodes have renewed their claims since `since` (unix ms): the nodes a peer's
    /// connection limit is shared among.
    async fn live_nodes(&self, since: u64) -> Result<usize, StoreError>;

    /// Every queue with work, kept up to date as commits land.
    async fn queues(&self) -> Result<Vec<QueueSummary>, StoreError>;
    /// The first `limit` entries of a queue's due index.
    async fn oldest(&self, queue: &str, limit: usize) -> Result<Vec<Due>, StoreError>;

    /// Disk-level facts, where the backend has a disk of its own.
    fn health(&self) -> &dyn Health;
}
