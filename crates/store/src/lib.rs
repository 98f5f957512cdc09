//! mmsrelay's spool: what must survive a crash.
//!
//! One small trait, [`Spool`], and its embedded backend, [`Embedded`], on `redb`. Records are
//! opaque bytes here (the relay owns their meaning); the store owns atomicity, durability and the
//! indexes: messages and bodies (written once, never rewritten), per-recipient state, the due-time
//! index, mailboxes, de-duplication keys, inbound events for the relay to act on, and peer
//! capability records.
//!
//! **Group commit.** Every change goes through [`Spool::commit`]: a single writer thread takes
//! all commits that queued up while the previous one was being made durable, applies them in one
//! write transaction and one fsync, and only then answers each caller. A session therefore gets
//! its `250` after the commit that holds its message, and a burst of sessions shares one fsync.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::thread;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

/// Our id of a stored message.
pub type MsgId = u64;

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const RECIPIENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("recipients");
const DUE: TableDefinition<(u64, u64, u32), ()> = TableDefinition::new("due");
const MAILBOX: TableDefinition<(&str, u64), ()> = TableDefinition::new("mailbox");
const DEDUPE: TableDefinition<&str, u64> = TableDefinition::new("dedupe");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const CAPABILITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("capabilities");
const INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("index");

/// Why the store failed. Any of these means "not stored": the caller answers `451 4.3.0`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(String),
    #[error("store: the writer has stopped")]
    WriterGone,
    #[error("store: cannot open {path}: {reason}")]
    Open { path: PathBuf, reason: String },
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// One change. A commit is a list of these, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new message: its metadata and its body, each written once.
    PutMessage {
        id: MsgId,
        meta: Vec<u8>,
        body: Vec<u8>,
    },
    /// Replaces a message's metadata (never its body).
    UpdateMessage {
        id: MsgId,
        meta: Vec<u8>,
    },
    /// Sets one recipient's state and moves it in the due index (`None`: not due).
    SetRecipient {
        id: MsgId,
        idx: u32,
        state: Vec<u8>,
        due: Option<u64>,
        old_due: Option<u64>,
    },
    /// [`Op::SetRecipient`] only if the stored state is still `expected` (compare and set): a
    /// delivery that took long must not overwrite what a RES, a report or an operator wrote
    /// meanwhile. The result says `Conflict` when it was not applied.
    SetRecipientIf {
        id: MsgId,
        idx: u32,
        expected: Vec<u8>,
        state: Vec<u8>,
        due: Option<u64>,
        old_due: Option<u64>,
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
    /// The event was acted on.
    DeleteEvent {
        id: MsgId,
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
}

/// The result of one [`Op`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult {
    Done,
    /// `Deliver`: filed in the mailbox.
    Delivered,
    /// `Deliver`: the key was known; the message it first came with.
    Duplicate(MsgId),
    /// `SetRecipientIf`: the state had changed; nothing written.
    Conflict,
}

/// An entry of the due index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub at: u64,
    pub id: MsgId,
    pub idx: u32,
}

/// Counters of the writer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Commits requested.
    pub commits: AtomicU64,
    /// Write transactions made durable (each one fsync).
    pub syncs: AtomicU64,
}

/// A pending commit; resolves once the changes are durable.
pub struct CommitHandle(oneshot::Receiver<Result<Vec<OpResult>, StoreError>>);

impl Future for CommitHandle {
    type Output = Result<Vec<OpResult>, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::WriterGone)))
    }
}

/// The spool interface the relay works against.
pub trait Spool: Send + Sync {
    /// A fresh message id.
    fn next_id(&self) -> MsgId;
    /// Applies `ops` atomically and durably (group-committed with concurrent callers).
    fn commit(&self, ops: Vec<Op>) -> CommitHandle;
    fn message(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError>;
    fn body(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError>;
    fn recipients(&self, id: MsgId) -> Result<Vec<(u32, Vec<u8>)>, StoreError>;
    /// Entries due at or before `until`, earliest first.
    fn due(&self, until: u64, limit: usize) -> Result<Vec<Due>, StoreError>;
    fn mailbox(&self, address: &str) -> Result<Vec<MsgId>, StoreError>;
    fn dedupe(&self, key: &str) -> Result<Option<MsgId>, StoreError>;
    fn events(&self, limit: usize) -> Result<Vec<(MsgId, Vec<u8>)>, StoreError>;
    fn capability(&self, peer: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn index(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Free bytes on the file system holding the store.
    fn free_space(&self) -> u64;
    fn stats(&self) -> &Stats;
}

struct Job {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<OpResult>, StoreError>>,
}

/// The embedded backend: one `redb` file, one writer thread.
pub struct Embedded {
    db: Arc<Database>,
    dir: PathBuf,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<thread::JoinHandle<()>>,
    next_id: AtomicU64,
    stats: Arc<Stats>,
}

impl Drop for Embedded {
    /// Closing: the writer finishes what was queued, then the file is released.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// redb's page cache.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Most commits one fsync carries (bounds latency and transaction size under a flood).
const MAX_BATCH: usize = 512;

impl Embedded {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        // A bounded page cache: bodies are written once and read once, caching them buys little,
        // and an MMSC shares its box.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("spool.redb"))
            .map_err(|e| open_err(e.to_string()))?;
        // Create every table once so readers never meet a missing one.
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(MESSAGES).map_err(db_err)?;
            txn.open_table(BODIES).map_err(db_err)?;
            txn.open_table(RECIPIENTS).map_err(db_err)?;
            txn.open_table(DUE).map_err(db_err)?;
            txn.open_table(MAILBOX).map_err(db_err)?;
            txn.open_table(DEDUPE).map_err(db_err)?;
            txn.open_table(EVENTS).map_err(db_err)?;
            txn.open_table(CAPABILITIES).map_err(db_err)?;
            txn.open_table(INDEX).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let last = {
            let r = db.begin_read().map_err(db_err)?;
            let t = r.open_table(MESSAGES).map_err(db_err)?;
            let last = t.last().map_err(db_err)?.map(|(k, _)| k.value());
            last.unwrap_or(0)
        };
        let db = Arc::new(db);
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let (wdb, wstats) = (db.clone(), stats.clone());
        let handle = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(wdb, rx, wstats))
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Embedded {
            db,
            dir: dir.to_path_buf(),
            jobs: Some(tx),
            writer: Some(handle),
            next_id: AtomicU64::new(last + 1),
            stats,
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let r = self.db.begin_read().map_err(db_err)?;
        f(&r)
    }
}

/// The writer thread: batches whatever queued up, one durable transaction per batch.
fn writer(db: Arc<Database>, rx: mpsc::Receiver<Job>, stats: Arc<Stats>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        match apply(&db, &batch) {
            Ok(results) => {
                stats.syncs.fetch_add(1, Ordering::Relaxed);
                for (job, r) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "store commit failed");
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Db(e.to_string())));
                }
            }
        }
    }
}

/// Writes a recipient's state and moves its entry in the due index.
fn put_recipient(
    recipients: &mut redb::Table<'_, (u64, u32), &'static [u8]>,
    due: &mut redb::Table<'_, (u64, u64, u32), ()>,
    (id, idx): (u64, u32),
    state: &[u8],
    at: Option<u64>,
    old_due: Option<u64>,
) -> Result<(), StoreError> {
    recipients.insert((id, idx), state).map_err(db_err)?;
    if let Some(old) = old_due {
        due.remove((old, id, idx)).map_err(db_err)?;
    }
    if let Some(at) = at {
        due.insert((at, id, idx), ()).map_err(db_err)?;
    }
    Ok(())
}

fn apply(db: &Database, batch: &[Job]) -> Result<Vec<Vec<OpResult>>, StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    let mut all = Vec::with_capacity(batch.len());
    {
        let mut messages = txn.open_table(MESSAGES).map_err(db_err)?;
        let mut bodies = txn.open_table(BODIES).map_err(db_err)?;
        let mut recipients = txn.open_table(RECIPIENTS).map_err(db_err)?;
        let mut due = txn.open_table(DUE).map_err(db_err)?;
        let mut mailbox = txn.open_table(MAILBOX).map_err(db_err)?;
        let mut dedupe = txn.open_table(DEDUPE).map_err(db_err)?;
        let mut events = txn.open_table(EVENTS).map_err(db_err)?;
        let mut caps = txn.open_table(CAPABILITIES).map_err(db_err)?;
        let mut index = txn.open_table(INDEX).map_err(db_err)?;
        for job in batch {
            let mut results = Vec::with_capacity(job.ops.len());
            for op in &job.ops {
                let r = match op {
                    Op::PutMessage { id, meta, body } => {
                        messages.insert(*id, meta.as_slice()).map_err(db_err)?;
                        bodies.insert(*id, body.as_slice()).map_err(db_err)?;
                        OpResult::Done
                    }
                    Op::UpdateMessage { id, meta } => {
                        messages.insert(*id, meta.as_slice()).map_err(db_err)?;
                        OpResult::Done
                    }
                    Op::SetRecipient {
                        id,
                        idx,
                        state,
                        due: at,
                        old_due,
                    } => {
                        put_recipient(
                            &mut recipients,
                            &mut due,
                            (*id, *idx),
                            state,
                            *at,
                            *old_due,
                        )?;
                        OpResult::Done
                    }
                    Op::SetRecipientIf {
                        id,
                        idx,
                        expected,
                        state,
                        due: at,
                        old_due,
                    } => {
                        let current = recipients
                            .get((*id, *idx))
                            .map_err(db_err)?
                            .map(|v| v.value().to_vec());
                        if current.as_deref() != Some(expected.as_slice()) {
                            OpResult::Conflict
                        } else {
                            put_recipient(
                                &mut recipients,
                                &mut due,
                                (*id, *idx),
                                state,
                                *at,
                                *old_due,
                            )?;
                            OpResult::Done
                        }
                    }
                    Op::Deliver {
                        dedupe_key,
                        address,
                        id,
                    } => {
                        let seen = dedupe
                            .get(dedupe_key.as_str())
                            .map_err(db_err)?
                            .map(|v| v.value());
                        match seen {
                            Some(first) => OpResult::Duplicate(first),
                            None => {
                                dedupe.insert(dedupe_key.as_str(), *id).map_err(db_err)?;
                                mailbox
                                    .insert((address.as_str(), *id), ())
                                    .map_err(db_err)?;
                                OpResult::Delivered
                            }
                        }
                    }
                    Op::PutEvent { id, event } => {
                        events.insert(*id, event.as_slice()).map_err(db_err)?;
                        OpResult::Done
                    }
                    Op::DeleteEvent { id } => {
                        events.remove(*id).map_err(db_err)?;
                        OpResult::Done
                    }
                    Op::PutCapability { peer, record } => {
                        caps.insert(peer.as_str(), record.as_slice())
                            .map_err(db_err)?;
                        OpResult::Done
                    }
                    Op::PutIndex { key, value } => {
                        index
                            .insert(key.as_str(), value.as_slice())
                            .map_err(db_err)?;
                        OpResult::Done
                    }
                    Op::DeleteIndex { key } => {
                        index.remove(key.as_str()).map_err(db_err)?;
                        OpResult::Done
                    }
                };
                results.push(r);
            }
            all.push(results);
        }
    }
    txn.commit().map_err(db_err)?;
    Ok(all)
}

fn get_bytes<K: redb::Key + 'static>(
    r: &redb::ReadTransaction,
    table: TableDefinition<K, &'static [u8]>,
    key: K::SelfType<'_>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let t = r.open_table(table).map_err(db_err)?;
    Ok(t.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
}

impl Spool for Embedded {
    fn next_id(&self) -> MsgId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn commit(&self, ops: Vec<Op>) -> CommitHandle {
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(Job { ops, reply: tx }).is_ok(),
            None => false,
        };
        if !sent {
            let (dead_tx, dead_rx) = oneshot::channel();
            let _ = dead_tx.send(Err(StoreError::WriterGone));
            return CommitHandle(dead_rx);
        }
        CommitHandle(rx)
    }

    fn message(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|r| get_bytes(r, MESSAGES, id))
    }

    fn body(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|r| get_bytes(r, BODIES, id))
    }

    fn recipients(&self, id: MsgId) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        self.read(|r| {
            let t = r.open_table(RECIPIENTS).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t.range((id, 0)..=(id, u32::MAX)).map_err(db_err)? {
                let (k, v) = e.map_err(db_err)?;
                out.push((k.value().1, v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn due(&self, until: u64, limit: usize) -> Result<Vec<Due>, StoreError> {
        self.read(|r| {
            let t = r.open_table(DUE).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t
                .range((0, 0, 0)..=(until, u64::MAX, u32::MAX))
                .map_err(db_err)?
            {
                let (k, _) = e.map_err(db_err)?;
                let (at, id, idx) = k.value();
                out.push(Due { at, id, idx });
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn mailbox(&self, address: &str) -> Result<Vec<MsgId>, StoreError> {
        self.read(|r| {
            let t = r.open_table(MAILBOX).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t
                .range((address, 0)..=(address, u64::MAX))
                .map_err(db_err)?
            {
                out.push(e.map_err(db_err)?.0.value().1);
            }
            Ok(out)
        })
    }

    fn dedupe(&self, key: &str) -> Result<Option<MsgId>, StoreError> {
        self.read(|r| {
            let t = r.open_table(DEDUPE).map_err(db_err)?;
            Ok(t.get(key).map_err(db_err)?.map(|v| v.value()))
        })
    }

    fn events(&self, limit: usize) -> Result<Vec<(MsgId, Vec<u8>)>, StoreError> {
        self.read(|r| {
            let t = r.open_table(EVENTS).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t.iter().map_err(db_err)?.take(limit) {
                let (k, v) = e.map_err(db_err)?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn capability(&self, peer: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|r| get_bytes(r, CAPABILITIES, peer))
    }

    fn index(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|r| get_bytes(r, INDEX, key))
    }

    fn free_space(&self) -> u64 {
        free_space(&self.dir)
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Free bytes available to us on the file system holding `dir` (`u64::MAX` if unknown).
pub fn free_space(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return u64::MAX;
    };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return u64::MAX;
        }
        (s.f_bavail as u64).saturating_mul(s.f_frsize as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "store-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn commit_read_dedupe_and_reopen() {
        let dir = tmp();
        let s = Embedded::open(&dir).unwrap();
        let id = s.next_id();
        let r = s
            .commit(vec![
                Op::PutMessage {
                    id,
                    meta: b"m".to_vec(),
                    body: b"body".to_vec(),
                },
                Op::Deliver {
                    dedupe_key: "k1".into(),
                    address: "+1555".into(),
                    id,
                },
                Op::SetRecipient {
                    id,
                    idx: 0,
                    state: b"queued".to_vec(),
                    due: Some(100),
                    old_due: None,
                },
                Op::PutEvent {
                    id,
                    event: b"e".to_vec(),
                },
            ])
            .await
            .unwrap();
        assert_eq!(
            r,
            vec![
                OpResult::Done,
                OpResult::Delivered,
                OpResult::Done,
                OpResult::Done
            ]
        );
        let id2 = s.next_id();
        let r = s
            .commit(vec![Op::Deliver {
                dedupe_key: "k1".into(),
                address: "+1555".into(),
                id: id2,
            }])
            .await
            .unwrap();
        assert_eq!(r, vec![OpResult::Duplicate(id)]);
        assert_eq!(s.mailbox("+1555").unwrap(), vec![id]);
        assert_eq!(s.due(99, 10).unwrap(), vec![]);
        assert_eq!(
            s.due(100, 10).unwrap(),
            vec![Due {
                at: 100,
                id,
                idx: 0
            }]
        );
        // Moving in the due index removes the old entry.
        s.commit(vec![Op::SetRecipient {
            id,
            idx: 0,
            state: b"deferred".to_vec(),
            due: Some(500),
            old_due: Some(100),
        }])
        .await
        .unwrap();
        assert_eq!(
            s.due(1000, 10).unwrap(),
            vec![Due {
                at: 500,
                id,
                idx: 0
            }]
        );
        assert_eq!(s.recipients(id).unwrap(), vec![(0, b"deferred".to_vec())]);
        // Compare and set: applied only over the expected state.
        let r = s
            .commit(vec![Op::SetRecipientIf {
                id,
                idx: 0,
                expected: b"queued".to_vec(),
                state: b"stale".to_vec(),
                due: None,
                old_due: Some(500),
            }])
            .await
            .unwrap();
        assert_eq!(r, vec![OpResult::Conflict]);
        assert_eq!(
            s.due(1000, 10).unwrap().len(),
            1,
            "a conflict leaves the due index alone"
        );
        let r = s
            .commit(vec![Op::SetRecipientIf {
                id,
                idx: 0,
                expected: b"deferred".to_vec(),
                state: b"forwarded".to_vec(),
                due: None,
                old_due: Some(500),
            }])
            .await
            .unwrap();
        assert_eq!(r, vec![OpResult::Done]);
        assert_eq!(s.due(1000, 10).unwrap().len(), 0);
        drop(s);
        // After reopening, everything is there and ids keep growing.
        let s = Embedded::open(&dir).unwrap();
        assert_eq!(s.body(id).unwrap().as_deref(), Some(&b"body"[..]));
        assert_eq!(s.events(10).unwrap(), vec![(id, b"e".to_vec())]);
        assert!(s.next_id() > id);
        assert!(s.free_space() > 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_fsyncs() {
        let dir = tmp();
        let s = Arc::new(Embedded::open(&dir).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let id = s.next_id();
                s.commit(vec![Op::PutMessage {
                    id,
                    meta: vec![1],
                    body: vec![0; 10_000],
                }])
                .await
                .unwrap();
                id
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        for id in ids {
            assert!(
                s.message(id).unwrap().is_some(),
                "acknowledged commit missing"
            );
        }
        let commits = s.stats().commits.load(Ordering::Relaxed);
        let syncs = s.stats().syncs.load(Ordering::Relaxed);
        assert_eq!(commits, 200);
        assert!(
            syncs < commits,
            "group commit must batch: {syncs} syncs for {commits} commits"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
