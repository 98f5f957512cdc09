//! The embedded backend: one `redb` file and the body segment files beside it
//! ([`crate::segments`]), one writer thread (group commit), claims in memory.
//!
//! Tables: messages and small bodies (each written once), the place of each larger body in the
//! segments with its first 4 KiB, recipients (version, due, queue, state in
//! one row), the due index per queue, mailboxes, de-duplication keys, events, capability records
//! and small named index records. Queue depths are counted as commits land, so the API never
//! scans the queue.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::contract::*;
use crate::lease::Leases;
use crate::recent::{self, Recent};
use crate::segments::{self, BodyAt};
use crate::writer::{Batch, Job, Writer};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Bodies of at most [`INLINE`] octets (and every body stored before segment files existed).
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
/// Larger bodies: where each is in the segment files ([`BodyAt`]), then the first octets that
/// are read back while it is acted on (its `head`, at most [`INLINE`]; earlier builds kept
/// [`INLINE`] octets of every body, which read the same).
const BODY_AT: TableDefinition<u64, &[u8]> = TableDefinition::new("body_at");
/// Bodies up to this size stay in the B-tree: RES mails, reports and DSNs are read back by the
/// event processor at once, from cached pages. Of larger ones (MMs) up to this much of their
/// `head` is kept with their place: the event processor acts on an MM's header section
/// without touching the disk.
const INLINE: usize = 4096;
const RECIPIENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("recipients.v2");
/// (queue, due at, message, recipient).
const DUE: TableDefinition<(&str, u64, u64, u32), ()> = TableDefinition::new("due.v2");
const MAILBOX: TableDefinition<(&str, u64), ()> = TableDefinition::new("mailbox");
/// (party, message): the messages a number is a party of, in id order.
const PARTIES: TableDefinition<(&str, u64), ()> = TableDefinition::new("parties");
const DEDUPE: TableDefinition<&str, u64> = TableDefinition::new("dedupe");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const CAPABILITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("capabilities");
const INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("index");
/// Charging records not yet written to the node's files.
const CDRS: TableDefinition<u64, &[u8]> = TableDefinition::new("cdrs");

type RcptKey = (u64, u32);
type Claims = Leases<RcptKey, MsgId>;

/// redb's page cache: bodies are written once and read once, caching them buys little, and an
/// MMSC shares its box.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Most commits one fsync carries.
const MAX_BATCH: usize = 512;

/// What the reader side and the writer thread share.
struct Shared {
    db: Database,
    leases: Mutex<Claims>,
    /// Recipients in each queue's due index.
    depth: Mutex<HashMap<String, u64>>,
    /// The last heartbeat of each node: its owner name then, and when.
    heartbeats: Mutex<HashMap<String, (String, u64)>>,
    /// Charging records claimed by an exporter: who, and when (unix ms). In memory: one
    /// process uses this store, and its exporter re-checks its files after a restart.
    cdr_marks: Mutex<HashMap<MsgId, (String, u64)>>,
    /// Spacing of work per key (one process: in memory).
    pacer: crate::pace::Pacer,
    bodies: segments::Reader,
    /// The bodies just queued for delivery: what outbound delivery reads next.
    recent: Recent,
}

impl Shared {
    fn leases(&self) -> MutexGuard<'_, Claims> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cdr_marks(&self) -> MutexGuard<'_, HashMap<MsgId, (String, u64)>> {
        self.cdr_marks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The embedded backend.
pub struct Embedded {
    shared: Arc<Shared>,
    dir: PathBuf,
    writer: Writer,
    next_id: AtomicU64,
    stats: Arc<Stats>,
}

impl Drop for Embedded {
    /// Closing: the writer finishes what was queued, then the file is released.
    fn drop(&mut self) {
        self.writer.close();
    }
}

/// A recipient row on disk: version, due time (`u64::MAX`: none), queue, state.
fn encode_row(version: u64, due: Option<&DueAt>, state: &[u8]) -> Vec<u8> {
    let queue = due.map_or("", |d| d.queue.as_str()).as_bytes();
    let mut v = Vec::with_capacity(18 + queue.len() + state.len());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&due.map_or(u64::MAX, |d| d.at).to_le_bytes());
    v.extend_from_slice(&(queue.len() as u16).to_le_bytes());
    v.extend_from_slice(queue);
    v.extend_from_slice(state);
    v
}

fn decode_row(idx: u32, b: &[u8]) -> Result<RecipientRow, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: format!("recipient {idx}"),
        reason: "short row".into(),
    };
    if b.len() < 18 {
        return Err(corrupt());
    }
    let version = u64::from_le_bytes(b[0..8].try_into().map_err(|_| corrupt())?);
    let at = u64::from_le_bytes(b[8..16].try_into().map_err(|_| corrupt())?);
    let qlen = u16::from_le_bytes(b[16..18].try_into().map_err(|_| corrupt())?) as usize;
    let queue = b.get(18..18 + qlen).ok_or_else(corrupt)?;
    let queue = std::str::from_utf8(queue).map_err(|_| corrupt())?;
    Ok(RecipientRow {
        idx,
        version,
        due: (at != u64::MAX).then(|| DueAt::new(at, queue)),
        state: b[18 + qlen..].to_vec(),
    })
}

impl Embedded {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("spool.redb"))
            .map_err(|e| open_err(e.to_string()))?;
        // Create every table once so readers never meet a missing one.
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(MESSAGES).map_err(db_err)?;
            txn.open_table(BODIES).map_err(db_err)?;
            txn.open_table(BODY_AT).map_err(db_err)?;
            txn.open_table(RECIPIENTS).map_err(db_err)?;
            txn.open_table(DUE).map_err(db_err)?;
            txn.open_table(MAILBOX).map_err(db_err)?;
            txn.open_table(PARTIES).map_err(db_err)?;
            txn.open_table(DEDUPE).map_err(db_err)?;
            txn.open_table(EVENTS).map_err(db_err)?;
            txn.open_table(CAPABILITIES).map_err(db_err)?;
            txn.open_table(INDEX).map_err(db_err)?;
            txn.open_table(CDRS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        // The last id, and the queue depths: counted once here, then kept as commits land.
        let (last, depth) = {
            let r = db.begin_read().map_err(db_err)?;
            // Ids go to messages, events and charging records: none may be handed out twice.
            let mut last = 0;
            for table in [MESSAGES, EVENTS, CDRS] {
                let t = r.open_table(table).map_err(db_err)?;
                last = last.max(t.last().map_err(db_err)?.map_or(0, |(k, _)| k.value()));
            }
            let mut depth: HashMap<String, u64> = HashMap::new();
            for e in r.open_table(DUE).map_err(db_err)?.iter().map_err(db_err)? {
                *depth
                    .entry(e.map_err(db_err)?.0.value().0.to_string())
                    .or_default() += 1;
            }
            (last, depth)
        };
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let shared = Arc::new(Shared {
            db,
            leases: Mutex::new(Leases::new(start)),
            depth: Mutex::new(depth),
            heartbeats: Mutex::new(HashMap::new()),
            cdr_marks: Mutex::new(HashMap::new()),
            pacer: Default::default(),
            bodies: segments::Reader::new(&dir.join("bodies")),
            recent: Recent::new(recent::BUDGET),
        });
        let appender =
            segments::Appender::open(&dir.join("bodies")).map_err(|e| open_err(e.to_string()))?;
        let stats = Arc::new(Stats::default());
        let writer = Writer::spawn(
            Apply {
                shared: shared.clone(),
                bodies: appender,
            },
            stats.clone(),
            MAX_BATCH,
        )
        .map_err(|e| open_err(e.to_string()))?;
        Ok(Embedded {
            shared,
            dir: dir.to_path_buf(),
            writer,
            next_id: AtomicU64::new(last + 1),
            stats,
        })
    }

    /// Where a body is in the segment files and its first octets (`None`: not there — a small
    /// body, one stored before segment files existed, or no such message).
    fn body_at(&self, id: MsgId) -> Result<Option<(BodyAt, Vec<u8>)>, StoreError> {
        let Some(mut rec) = self.read(|r| get_bytes(r, BODY_AT, id))? else {
            return Ok(None);
        };
        let at = rec
            .get(..BodyAt::ENCODED)
            .and_then(BodyAt::decode)
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("body place of message {id}"),
                reason: "short record".into(),
            })?;
        rec.drain(..BodyAt::ENCODED);
        Ok(Some((at, rec)))
    }

    /// Reads from a segment file off the async workers: a body written with `O_DIRECT` is not
    /// in the page cache, and a worker must not wait for the disk.
    async fn read_segment(
        &self,
        f: impl FnOnce(&segments::Reader) -> Result<Vec<u8>, StoreError> + Send + 'static,
    ) -> Result<Vec<u8>, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared.bodies))
            .await
            .map_err(|e| StoreError::Db(format!("body read: {e}")))?
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let r = self.shared.db.begin_read().map_err(db_err)?;
        f(&r)
    }
}

/// The writer side of the embedded store.
struct Apply {
    shared: Arc<Shared>,
    bodies: segments::Appender,
}

/// Tables of one write transaction.
struct Tables<'t> {
    messages: redb::Table<'t, u64, &'static [u8]>,
    bodies: redb::Table<'t, u64, &'static [u8]>,
    body_at: redb::Table<'t, u64, &'static [u8]>,
    recipients: redb::Table<'t, RcptKey, &'static [u8]>,
    due: redb::Table<'t, (&'static str, u64, u64, u32), ()>,
    mailbox: redb::Table<'t, (&'static str, u64), ()>,
    parties: redb::Table<'t, (&'static str, u64), ()>,
    dedupe: redb::Table<'t, &'static str, u64>,
    events: redb::Table<'t, u64, &'static [u8]>,
    caps: redb::Table<'t, &'static str, &'static [u8]>,
    index: redb::Table<'t, &'static str, &'static [u8]>,
    cdrs: redb::Table<'t, u64, &'static [u8]>,
}

/// What a batch does to memory once it is durable.
#[derive(Default)]
struct AfterCommit {
    /// Claims pinned by this batch: (key, token).
    recipients: Vec<(RcptKey, Token)>,
    events: Vec<(MsgId, Token)>,
    depth: HashMap<String, i64>,
    /// Charging records written out and deleted: their marks end.
    cdrs_done: Vec<MsgId>,
    /// Where this batch's bodies were written (durable before the transaction begins).
    bodies: HashMap<MsgId, BodyAt>,
}

impl Apply {
    fn row(&self, t: &Tables<'_>, key: RcptKey) -> Result<Option<RecipientRow>, StoreError> {
        match t.recipients.get(key).map_err(db_err)? {
            Some(v) => decode_row(key.1, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `guard` holds for `key`; a lease guard pins its claim (finished after commit).
    fn guard_holds(
        &self,
        t: &Tables<'_>,
        key: RcptKey,
        guard: Guard,
        after: &mut AfterCommit,
    ) -> Result<bool, StoreError> {
        Ok(match guard {
            Guard::None => true,
            Guard::Version(v) => self.row(t, key)?.is_some_and(|r| r.version == v),
            Guard::Lease { token, version } => {
                if !self.shared.leases().recipients.pin(&key, token) {
                    return Ok(false);
                }
                after.recipients.push((key, token));
                self.row(t, key)?.is_some_and(|r| r.version == version)
            }
        })
    }

    fn event_guard_holds(&self, id: MsgId, token: Option<Token>, after: &mut AfterCommit) -> bool {
        match token {
            None => true,
            Some(token) => {
                let ok = self.shared.leases().events.pin(&id, token);
                if ok {
                    after.events.push((id, token));
                }
                ok
            }
        }
    }

    /// Checks every guard of an all-or-nothing job before anything of it is written.
    fn job_guards_hold(
        &self,
        t: &Tables<'_>,
        job: &Job,
        after: &mut AfterCommit,
    ) -> Result<bool, StoreError> {
        for op in &job.ops {
            let ok = match op {
                Op::SetRecipient { id, idx, guard, .. } => {
                    self.guard_holds(t, (*id, *idx), *guard, after)?
                }
                Op::DeleteEvent { id, token } => self.event_guard_holds(*id, *token, after),
                _ => true,
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn set_recipient(
        &self,
        t: &mut Tables<'_>,
        key: RcptKey,
        state: &[u8],
        due: Option<&DueAt>,
        after: &mut AfterCommit,
    ) -> Result<(), StoreError> {
        let old = self.row(t, key)?;
        if let Some(d) = old.as_ref().and_then(|r| r.due.as_ref()) {
            t.due
                .remove((d.queue.as_str(), d.at, key.0, key.1))
                .map_err(db_err)?;
            *after.depth.entry(d.queue.clone()).or_default() -= 1;
        }
        if let Some(d) = due {
            t.due
                .insert((d.queue.as_str(), d.at, key.0, key.1), ())
                .map_err(db_err)?;
            *after.depth.entry(d.queue.clone()).or_default() += 1;
        }
        let version = old.map_or(1, |r| r.version + 1);
        t.recipients
            .insert(key, encode_row(version, due, state).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    fn op(
        &self,
        t: &mut Tables<'_>,
        op: &Op,
        checked: bool,
        after: &mut AfterCommit,
    ) -> Result<OpResult, StoreError> {
        Ok(match op {
            Op::PutMessage {
                id,
                meta,
                body,
                parties,
                head,
            } => {
                t.messages.insert(*id, meta.as_slice()).map_err(db_err)?;
                if body.len() <= INLINE {
                    t.bodies.insert(*id, body.as_slice()).map_err(db_err)?;
                } else {
                    let at = after.bodies.get(id).ok_or_else(|| StoreError::Corrupt {
                        what: format!("message {id}"),
                        reason: "body not written".into(),
                    })?;
                    // Only what is read back: a 4 KiB record per MM was a page of its own
                    // in every commit.
                    let first = &body[..(*head).min(INLINE)];
                    let mut rec = Vec::with_capacity(BodyAt::ENCODED + first.len());
                    rec.extend_from_slice(&at.encode());
                    rec.extend_from_slice(first);
                    t.body_at.insert(*id, rec.as_slice()).map_err(db_err)?;
                }
                for party in parties {
                    t.parties
                        .insert((party.as_str(), *id), ())
                        .map_err(db_err)?;
                }
                OpResult::Done
            }
            Op::UpdateMessage { id, meta } => {
                t.messages.insert(*id, meta.as_slice()).map_err(db_err)?;
                OpResult::Done
            }
            Op::SetRecipient {
                id,
                idx,
                state,
                due,
                guard,
            } => {
                let key = (*id, *idx);
                if !checked && !self.guard_holds(t, key, *guard, after)? {
                    return Ok(OpResult::Conflict);
                }
                self.set_recipient(t, key, state, due.as_ref(), after)?;
                OpResult::Done
            }
            Op::Deliver {
                dedupe_key,
                address,
                id,
            } => {
                let seen = t
                    .dedupe
                    .get(dedupe_key.as_str())
                    .map_err(db_err)?
                    .map(|v| v.value());
                match seen {
                    Some(first) => OpResult::Duplicate(first),
                    None => {
                        t.dedupe.insert(dedupe_key.as_str(), *id).map_err(db_err)?;
                        t.mailbox
                            .insert((address.as_str(), *id), ())
                            .map_err(db_err)?;
                        OpResult::Delivered
                    }
                }
            }
            Op::PutEvent { id, event } => {
                t.events.insert(*id, event.as_slice()).map_err(db_err)?;
                OpResult::Done
            }
            Op::DeleteEvent { id, token } => {
                if !checked && !self.event_guard_holds(*id, *token, after) {
                    return Ok(OpResult::Conflict);
                }
                t.events.remove(*id).map_err(db_err)?;
                OpResult::Done
            }
            Op::PutCapability { peer, record } => {
                t.caps
                    .insert(peer.as_str(), record.as_slice())
                    .map_err(db_err)?;
                OpResult::Done
            }
            Op::PutIndex { key, value } => {
                t.index
                    .insert(key.as_str(), value.as_slice())
                    .map_err(db_err)?;
                OpResult::Done
            }
            Op::DeleteIndex { key } => {
                t.index.remove(key.as_str()).map_err(db_err)?;
                OpResult::Done
            }
            Op::PutCdr { id, record, .. } => {
                t.cdrs.insert(*id, record.as_slice()).map_err(db_err)?;
                OpResult::Done
            }
            Op::DeleteCdrs { exporter, ids } => {
                let marks = self.shared.cdr_marks();
                let mut taken = false;
                for id in ids {
                    if marks.get(id).is_some_and(|(by, _)| by != exporter) {
                        taken = true;
                        continue;
                    }
                    t.cdrs.remove(*id).map_err(db_err)?;
                    after.cdrs_done.push(*id);
                }
                if taken {
                    OpResult::Conflict
                } else {
                    OpResult::Done
                }
            }
        })
    }

    /// Appends the batch's bodies to the segment files, durably, before any metadata refers to
    /// them (a failure fails the whole batch: nothing of it is committed).
    fn write_bodies(&mut self, batch: &[Job], after: &mut AfterCommit) -> Result<(), StoreError> {
        let bodies: Vec<(MsgId, &[u8])> = batch
            .iter()
            .flat_map(|job| &job.ops)
            .filter_map(|op| match op {
                Op::PutMessage { id, body, .. } if body.len() > INLINE => {
                    Some((*id, body.as_slice()))
                }
                _ => None,
            })
            .collect();
        let placed = self
            .bodies
            .append(&bodies)
            .map_err(|e| StoreError::Db(format!("writing bodies: {e}")))?;
        after.bodies.extend(placed);
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn write(
        &self,
        batch: &[Job],
        after: &mut AfterCommit,
    ) -> Result<Vec<Result<Vec<OpResult>, StoreError>>, StoreError> {
        let mut txn = self.shared.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let mut all = Vec::with_capacity(batch.len());
        {
            let mut t = Tables {
                messages: txn.open_table(MESSAGES).map_err(db_err)?,
                bodies: txn.open_table(BODIES).map_err(db_err)?,
                body_at: txn.open_table(BODY_AT).map_err(db_err)?,
                recipients: txn.open_table(RECIPIENTS).map_err(db_err)?,
                due: txn.open_table(DUE).map_err(db_err)?,
                mailbox: txn.open_table(MAILBOX).map_err(db_err)?,
                parties: txn.open_table(PARTIES).map_err(db_err)?,
                dedupe: txn.open_table(DEDUPE).map_err(db_err)?,
                events: txn.open_table(EVENTS).map_err(db_err)?,
                caps: txn.open_table(CAPABILITIES).map_err(db_err)?,
                index: txn.open_table(INDEX).map_err(db_err)?,
                cdrs: txn.open_table(CDRS).map_err(db_err)?,
            };
            for job in batch {
                if job.all_or_nothing && !self.job_guards_hold(&t, job, after)? {
                    all.push(Err(StoreError::Conflict));
                    continue;
                }
                let mut results = Vec::with_capacity(job.ops.len());
                for op in &job.ops {
                    let r = if op.depends_on_nothing_applied(&results) {
                        OpResult::Conflict
                    } else {
                        self.op(&mut t, op, job.all_or_nothing, after)?
                    };
                    results.push(r);
                }
                all.push(Ok(results));
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(all)
    }
}

impl Batch for Apply {
    fn apply(
        &mut self,
        batch: &[Job],
    ) -> Result<Vec<Result<Vec<OpResult>, StoreError>>, StoreError> {
        let mut after = AfterCommit::default();
        self.write_bodies(batch, &mut after)?;
        let r = self.write(batch, &mut after);
        let mut leases = self.shared.leases();
        // Durable: the claims these writes finished are over. Failed: they stand as before.
        for (key, token) in after.recipients {
            match r {
                Ok(_) => leases.recipients.finish(&key, token),
                Err(_) => leases.recipients.unpin(&key, token),
            }
        }
        for (id, token) in after.events {
            match r {
                Ok(_) => leases.events.finish(&id, token),
                Err(_) => leases.events.unpin(&id, token),
            }
        }
        drop(leases);
        if r.is_ok() {
            let mut marks = self.shared.cdr_marks();
            for id in &after.cdrs_done {
                marks.remove(id);
            }
            drop(marks);
            let mut depth = self.shared.depth.lock().unwrap_or_else(|e| e.into_inner());
            for (q, d) in after.depth {
                let n = depth.entry(q.clone()).or_default();
                *n = (*n as i64 + d).max(0) as u64;
                if *n == 0 {
                    depth.remove(&q);
                }
            }
        }
        r
    }

    /// Keeps the bodies that are about to be read: those of messages queued for delivery in
    /// the same commit. (An MM filed in a local mailbox is read when it is fetched, maybe much
    /// later; keeping it would only push the others out — and hold its buffer, which the
    /// allocator would otherwise hand to the next message while still in the CPU's cache.)
    fn committed(&mut self, jobs: &mut [Job], results: &[Result<Vec<OpResult>, StoreError>]) {
        for (job, result) in jobs.iter_mut().zip(results) {
            let Ok(done) = result else { continue };
            let queued: Vec<MsgId> = job
                .ops
                .iter()
                .filter_map(|op| match op {
                    Op::SetRecipient {
                        id, due: Some(_), ..
                    } => Some(*id),
                    _ => None,
                })
                .collect();
            for (op, r) in job.ops.iter_mut().zip(done) {
                if let Op::PutMessage { id, body, .. } = op {
                    // Small bodies are in the B-tree's cached pages already.
                    if body.len() > INLINE && *r == OpResult::Done && queued.contains(id) {
                        self.shared.recent.keep(*id, std::mem::take(body));
                    }
                }
            }
        }
    }
}

fn get_bytes<K: redb::Key + 'static>(
    r: &redb::ReadTransaction,
    table: TableDefinition<K, &'static [u8]>,
    key: K::SelfType<'_>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let t = r.open_table(table).map_err(db_err)?;
    Ok(t.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
}

#[async_trait::async_trait]
impl Spool for Embedded {
    async fn next_id(&self) -> Result<MsgId, StoreError> {
        Ok(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn commit(&self, ops: Vec<Op>) -> CommitHandle {
        self.writer.submit(ops, false)
    }

    fn commit_all(&self, ops: Vec<Op>) -> CommitHandle {
        self.writer.submit(ops, true)
    }

    async fn message(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|r| get_bytes(r, MESSAGES, id))
    }

    async fn body(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(b) = self.shared.recent.get(id) {
            return Ok(Some(b.to_vec()));
        }
        match self.body_at(id)? {
            Some((at, _)) => self.read_segment(move |r| r.read(id, at)).await.map(Some),
            None => self.read(|r| get_bytes(r, BODIES, id)),
        }
    }

    async fn head(&self, id: MsgId, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(b) = self.shared.recent.get(id) {
            return Ok(Some(b[..len.min(b.len())].to_vec()));
        }
        match self.body_at(id)? {
            Some((_, mut first)) if len <= first.len() => {
                first.truncate(len);
                Ok(Some(first))
            }
            Some((at, _)) => self
                .read_segment(move |r| r.read_head(id, at, len))
                .await
                .map(Some),
            None => Ok(self.read(|r| get_bytes(r, BODIES, id))?.map(|mut b| {
                b.truncate(len);
                b
            })),
        }
    }

    async fn recipients(&self, id: MsgId) -> Result<Vec<RecipientRow>, StoreError> {
        self.read(|r| {
            let t = r.open_table(RECIPIENTS).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t.range((id, 0)..=(id, u32::MAX)).map_err(db_err)? {
                let (k, v) = e.map_err(db_err)?;
                out.push(decode_row(k.value().1, v.value())?);
            }
            Ok(out)
        })
    }

    async fn mailbox(&self, address: &str) -> Result<Vec<MsgId>, StoreError> {
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

    async fn mailbox_page(
        &self,
        address: &str,
        after: MsgId,
        limit: usize,
    ) -> Result<Vec<MsgId>, StoreError> {
        if after == MsgId::MAX {
            return Ok(Vec::new());
        }
        self.read(|r| {
            let t = r.open_table(MAILBOX).map_err(db_err)?;
            let mut out = Vec::with_capacity(limit.min(1024));
            for e in t
                .range((address, after + 1)..=(address, MsgId::MAX))
                .map_err(db_err)?
                .take(limit)
            {
                out.push(e.map_err(db_err)?.0.value().1);
            }
            Ok(out)
        })
    }

    async fn filed(&self, address: &str, id: MsgId) -> Result<bool, StoreError> {
        self.read(|r| {
            let t = r.open_table(MAILBOX).map_err(db_err)?;
            Ok(t.get((address, id)).map_err(db_err)?.is_some())
        })
    }

    async fn by_party(
        &self,
        party: &str,
        before: MsgId,
        limit: usize,
    ) -> Result<Vec<MsgId>, StoreError> {
        self.read(|r| {
            let t = r.open_table(PARTIES).map_err(db_err)?;
            let mut out = Vec::with_capacity(limit.min(1024));
            for e in t
                .range((party, 0)..(party, before))
                .map_err(db_err)?
                .rev()
                .take(limit)
            {
                out.push(e.map_err(db_err)?.0.value().1);
            }
            Ok(out)
        })
    }

    async fn dedupe(&self, key: &str) -> Result<Option<MsgId>, StoreError> {
        self.read(|r| {
            let t = r.open_table(DEDUPE).map_err(db_err)?;
            Ok(t.get(key).map_err(db_err)?.map(|v| v.value()))
        })
    }

    async fn capability(&self, peer: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|r| get_bytes(r, CAPABILITIES, peer))
    }

    async fn index(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|r| get_bytes(r, INDEX, key))
    }

    async fn claim_due(
        &self,
        queue: &str,
        req: &ClaimRequest<'_>,
    ) -> Result<Vec<Claimed>, StoreError> {
        // The claim table is locked before the snapshot is taken: every write that finished a
        // claim is durable and visible before that claim is released, so a snapshot taken
        // under the lock never shows work as due that its last owner already finished.
        let mut leases = self.shared.leases();
        let r = self.shared.db.begin_read().map_err(db_err)?;
        let due = r.open_table(DUE).map_err(db_err)?;
        let rows = r.open_table(RECIPIENTS).map_err(db_err)?;
        let mut out = Vec::new();
        for e in due
            .range((queue, 0, 0, 0)..=(queue, req.now, u64::MAX, u32::MAX))
            .map_err(db_err)?
        {
            if out.len() >= req.limit {
                break;
            }
            let (k, _) = e.map_err(db_err)?;
            let (_, _, id, idx) = k.value();
            if !leases.recipients.is_free(&(id, idx), req.now) {
                continue;
            }
            let Some(v) = rows.get((id, idx)).map_err(db_err)? else {
                return Err(StoreError::Corrupt {
                    what: format!("due entry {id}/{idx}"),
                    reason: "no recipient row".into(),
                });
            };
            let row = decode_row(idx, v.value())?;
            let lease = leases.lease(req.owner, req.now, req.lease);
            let token = lease.token;
            leases.recipients.grant((id, idx), lease);
            out.push(Claimed { id, row, token });
        }
        Ok(out)
    }

    async fn claim_events(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedEvent>, StoreError> {
        let mut leases = self.shared.leases();
        let r = self.shared.db.begin_read().map_err(db_err)?;
        let t = r.open_table(EVENTS).map_err(db_err)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(db_err)? {
            if out.len() >= req.limit {
                break;
            }
            let (k, v) = e.map_err(db_err)?;
            let id = k.value();
            if !leases.events.is_free(&id, req.now) {
                continue;
            }
            let lease = leases.lease(req.owner, req.now, req.lease);
            let token = lease.token;
            leases.events.grant(id, lease);
            out.push(ClaimedEvent {
                id,
                event: v.value().to_vec(),
                token,
            });
        }
        Ok(out)
    }

    async fn renew(&self, owner: &str, now: u64, lease: Duration) -> Result<(), StoreError> {
        self.shared
            .leases()
            .renew(owner, now.saturating_add(lease.as_millis() as u64));
        self.shared
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_of(owner).to_string(), (owner.to_string(), now));
        Ok(())
    }

    async fn live_nodes(&self, since: u64) -> Result<usize, StoreError> {
        let h = self
            .shared
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(h.values().filter(|(_, t)| *t >= since).count())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let beats: Vec<(String, String, u64)> = {
            let h = self
                .shared
                .heartbeats
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            h.iter()
                .map(|(n, (o, t))| (n.clone(), o.clone(), *t))
                .collect()
        };
        let leases = self.shared.leases();
        let mut out: Vec<NodeInfo> = beats
            .into_iter()
            .map(|(name, owner, heartbeat)| NodeInfo {
                claimed: leases.held_by(&owner) as u64,
                name,
                heartbeat,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn claim_slot(
        &self,
        peer: &str,
        limit: usize,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Result<Option<Slot>, StoreError> {
        Ok(self
            .shared
            .leases()
            .slot(peer, limit, owner, now, lease)
            .map(|(n, token)| Slot {
                peer: peer.to_string(),
                n,
                token,
            }))
    }

    async fn pace(&self, key: &str, now: u64, interval: u64) -> Result<u64, StoreError> {
        Ok(self.shared.pacer.reserve(key, now, interval))
    }

    async fn release_slot(&self, slot: &Slot) -> Result<(), StoreError> {
        self.shared
            .leases()
            .slots
            .finish(&(slot.peer.clone(), slot.n), slot.token);
        Ok(())
    }

    async fn claim_cdrs(
        &self,
        exporter: &str,
        now: u64,
        stale: Duration,
        limit: usize,
    ) -> Result<Vec<CdrRow>, StoreError> {
        let stale = stale.as_millis() as u64;
        let mut marks = self.shared.cdr_marks();
        let r = self.shared.db.begin_read().map_err(db_err)?;
        let t = r.open_table(CDRS).map_err(db_err)?;
        // What this exporter claimed before and has not finished comes first.
        let mut own: Vec<MsgId> = marks
            .iter()
            .filter(|(_, (by, _))| by == exporter)
            .map(|(id, _)| *id)
            .collect();
        own.sort_unstable();
        own.truncate(limit);
        let mut rows = Vec::new();
        if !own.is_empty() {
            for id in own {
                match t.get(id).map_err(db_err)? {
                    Some(v) => rows.push(CdrRow {
                        id,
                        record: v.value().to_vec(),
                    }),
                    None => {
                        marks.remove(&id);
                        continue;
                    }
                }
                marks.insert(id, (exporter.to_string(), now));
            }
            return Ok(rows);
        }
        for e in t.iter().map_err(db_err)? {
            if rows.len() >= limit {
                break;
            }
            let (k, v) = e.map_err(db_err)?;
            let id = k.value();
            if marks
                .get(&id)
                .is_some_and(|(_, at)| at.saturating_add(stale) > now)
            {
                continue;
            }
            marks.insert(id, (exporter.to_string(), now));
            rows.push(CdrRow {
                id,
                record: v.value().to_vec(),
            });
        }
        Ok(rows)
    }

    async fn release(
        &self,
        claims: &[ClaimRef],
        now: u64,
        retry_after: Duration,
    ) -> Result<(), StoreError> {
        let until = now.saturating_add(retry_after.as_millis() as u64);
        let mut leases = self.shared.leases();
        for c in claims {
            match *c {
                ClaimRef::Recipient { id, idx, token } => {
                    leases.recipients.release(&(id, idx), token, until)
                }
                ClaimRef::Event { id, token } => leases.events.release(&id, token, until),
            }
        }
        Ok(())
    }

    async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Result<Option<Token>, StoreError> {
        Ok(self.shared.leases().job(name, owner, now, lease))
    }

    async fn queues(&self) -> Result<Vec<QueueSummary>, StoreError> {
        let depth: Vec<(String, u64)> = {
            let d = self.shared.depth.lock().unwrap_or_else(|e| e.into_inner());
            d.iter().map(|(q, n)| (q.clone(), *n)).collect()
        };
        let mut out = Vec::with_capacity(depth.len());
        for (queue, depth) in depth {
            let next_due = self.oldest(&queue, 1).await?.first().map(|d| d.at);
            out.push(QueueSummary {
                queue,
                depth,
                next_due,
            });
        }
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(out)
    }

    async fn oldest(&self, queue: &str, limit: usize) -> Result<Vec<Due>, StoreError> {
        self.read(|r| {
            let t = r.open_table(DUE).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t
                .range((queue, 0, 0, 0)..=(queue, u64::MAX, u64::MAX, u32::MAX))
                .map_err(db_err)?
                .take(limit)
            {
                let (_, at, id, idx) = e.map_err(db_err)?.0.value();
                out.push(Due { at, id, idx });
            }
            Ok(out)
        })
    }

    fn health(&self) -> &dyn Health {
        self
    }
}

impl Health for Embedded {
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

    #[tokio::test]
    async fn a_body_stored_in_the_table_before_segments_is_still_read() {
        let dir = std::env::temp_dir().join(format!("embedded-old-body-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Embedded::open(&dir).unwrap();
        // As an older version wrote it: the body in the B-tree, no place in a segment.
        let txn = s.shared.db.begin_write().unwrap();
        txn.open_table(BODIES)
            .unwrap()
            .insert(7, b"headers\r\n\r\ncontent".as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(
            s.body(7).await.unwrap().as_deref(),
            Some(b"headers\r\n\r\ncontent".as_slice())
        );
        assert_eq!(
            s.head(7, 11).await.unwrap().as_deref(),
            Some(b"headers\r\n\r\n".as_slice())
        );
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Delivery reads a body it just queued from memory: here the segment under it is damaged
    /// after the commit, the read still gives the body, and only after a reopening does the
    /// store read the segment (and find the damage). A body queued for nobody (filed in a
    /// mailbox) is read from its segment.
    #[tokio::test]
    async fn a_body_just_queued_for_delivery_is_read_from_memory() {
        let dir = std::env::temp_dir().join(format!("embedded-recent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Embedded::open(&dir).unwrap();
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let put = |id| Op::PutMessage {
            id,
            meta: b"m".to_vec(),
            body: body.clone(),
            parties: Vec::new(),
            head: 10,
        };
        let queued = vec![
            put(5),
            Op::SetRecipient {
                id: 5,
                idx: 0,
                state: b"queued".to_vec(),
                due: Some(DueAt::new(1, "peer-b")),
                guard: Guard::None,
            },
        ];
        assert_eq!(s.commit(queued).await.unwrap(), [OpResult::Done; 2]);
        assert_eq!(s.commit(vec![put(6)]).await.unwrap(), [OpResult::Done]);
        for seg in std::fs::read_dir(dir.join("bodies")).unwrap() {
            let path = seg.unwrap().path();
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            std::fs::write(&path, vec![0u8; len]).unwrap();
        }
        assert_eq!(s.body(5).await.unwrap(), Some(body.clone()));
        assert_eq!(s.head(5, 20).await.unwrap().as_deref(), Some(&body[..20]));
        assert!(matches!(s.body(6).await, Err(StoreError::Corrupt { .. })));
        drop(s);
        let s = Embedded::open(&dir).unwrap();
        assert!(matches!(s.body(5).await, Err(StoreError::Corrupt { .. })));
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rows_round_trip() {
        let d = DueAt::new(42, "peer-b");
        let b = encode_row(7, Some(&d), b"state");
        let r = decode_row(3, &b).unwrap();
        assert_eq!(
            r,
            RecipientRow {
                idx: 3,
                version: 7,
                due: Some(d),
                state: b"state".to_vec()
            }
        );
        let r = decode_row(0, &encode_row(1, None, b"")).unwrap();
        assert_eq!(r.due, None);
        assert!(decode_row(0, b"short").is_err());
    }
}
