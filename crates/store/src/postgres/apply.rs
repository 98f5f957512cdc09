//! Group commit on PostgreSQL: a writer task takes every commit that queued up while it was
//! last writing and applies them in one transaction — one WAL flush for many sessions'
//! messages. [`WRITERS`] such tasks share the queue, so one batch is built and sent while
//! another waits on its statements' round trips and its commit. An all-or-nothing commit runs
//! inside a savepoint, rolled back when one of its guards fails. A batch the database aborted
//! for another transaction's sake (crossed locks: a deadlock) is written again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use deadpool_postgres::Pool;
use deadpool_postgres::Transaction;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};

use crate::contract::{Guard, Op, OpResult, Stats, StoreError};
use crate::writer::{answer, Job};

/// Most commits one transaction carries.
const MAX_BATCH: usize = 512;

/// Queue depth changes, by queue: sorted, so that concurrent transactions lock the depth rows
/// in one order (and never deadlock on them).
type Deltas = std::collections::BTreeMap<String, i64>;

fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Transactions one node has under way at once: with one, the database sat waiting on our
/// round trips between statements while the next batch queued. Each holds one of the pool's
/// connections while it writes.
pub const WRITERS: usize = 2;

/// A writer task (one of [`WRITERS`], sharing `rx`): runs until every sender is gone.
pub async fn run(
    pool: Pool,
    node: String,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>,
    stats: Arc<Stats>,
    up: Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            batch
        };
        let written = write_retrying(&pool, &node, &batch, &stats).await;
        up.store(written.is_ok(), Ordering::Relaxed);
        answer(batch, written, &stats);
    }
}

/// How often a batch whose transaction PostgreSQL chose to abort is written again.
const RETRIES: usize = 3;

/// Why a batch's transaction did not commit.
#[derive(Debug)]
enum WriteError {
    /// No connection to write with.
    Pool(String),
    Db(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Db(e)
    }
}

impl WriteError {
    /// Aborted for what another transaction did meanwhile (locks taken in crossed order —
    /// our other writer, or another node —, or a serialization failure): nothing of it was
    /// applied, and the same batch can commit on its own.
    fn retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        matches!(self, WriteError::Db(e) if matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
        ))
    }
}

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Pool(e) => StoreError::Db(e),
            WriteError::Db(e) => db(e),
        }
    }
}

type Written = Vec<Result<Vec<OpResult>, StoreError>>;

/// [`write`], again when PostgreSQL aborted it for another transaction's sake.
async fn write_retrying(
    pool: &Pool,
    node: &str,
    batch: &[Job],
    stats: &Stats,
) -> Result<Written, StoreError> {
    let mut tries = 0;
    loop {
        match write(pool, node, batch).await {
            Err(e) if e.retryable() && tries < RETRIES => {
                tries += 1;
                stats.retries.fetch_add(1, Ordering::Relaxed);
                let error = StoreError::from(e);
                tracing::warn!(%error, tries, "commit aborted by the database; written again");
            }
            r => return r.map_err(StoreError::from),
        }
    }
}

async fn write(pool: &Pool, node: &str, batch: &[Job]) -> Result<Written, WriteError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| WriteError::Pool(e.to_string()))?;
    let mut tx = client.transaction().await?;
    let mut all = Vec::with_capacity(batch.len());
    let mut deltas = Deltas::new();
    for job in batch {
        if job.all_or_nothing {
            let sp = tx.savepoint("job").await?;
            let mut mine = Deltas::new();
            let mut results = Vec::with_capacity(job.ops.len());
            let mut refused = false;
            for op in &job.ops {
                let r = if op.depends_on_nothing_applied(&results) {
                    OpResult::Conflict
                } else {
                    op_apply(&sp, op, &mut mine).await?
                };
                if r == OpResult::Conflict {
                    refused = true;
                    break;
                }
                results.push(r);
            }
            if refused {
                sp.rollback().await?;
                all.push(Err(StoreError::Conflict));
            } else {
                sp.commit().await?;
                merge(&mut deltas, mine);
                all.push(Ok(results));
            }
        } else {
            let mut results = Vec::with_capacity(job.ops.len());
            for op in &job.ops {
                let r = if op.depends_on_nothing_applied(&results) {
                    OpResult::Conflict
                } else {
                    op_apply(&tx, op, &mut deltas).await?
                };
                results.push(r);
            }
            all.push(Ok(results));
        }
    }
    for (queue, d) in deltas.into_iter().filter(|(_, d)| *d != 0) {
        exec(
            &tx,
            "INSERT INTO queue_depth (queue, node, depth) VALUES ($1, $2, $3) \
             ON CONFLICT (queue, node) DO UPDATE SET depth = queue_depth.depth + EXCLUDED.depth",
            &[&queue, &node, &d],
        )
        .await?;
    }
    // Claims live in the rows: a claim ends in the same commit as the write that finishes it.
    tx.commit().await?;
    Ok(all)
}

/// Statements are prepared once per connection: one round trip per statement, not two.
async fn exec(tx: &Transaction<'_>, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
    let st = tx.prepare_cached(sql).await?;
    tx.execute(&st, p).await
}

async fn opt(
    tx: &Transaction<'_>,
    sql: &str,
    p: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, Error> {
    let st = tx.prepare_cached(sql).await?;
    tx.query_opt(&st, p).await
}

async fn one(tx: &Transaction<'_>, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
    let st = tx.prepare_cached(sql).await?;
    tx.query_one(&st, p).await
}

fn merge(into: &mut Deltas, from: Deltas) {
    for (q, d) in from {
        *into.entry(q).or_default() += d;
    }
}

fn moved(deltas: &mut Deltas, old: Option<(i64, String)>, new: Option<(i64, &str)>) {
    if let Some((_, q)) = old {
        *deltas.entry(q).or_default() -= 1;
    }
    if let Some((_, q)) = new {
        *deltas.entry(q.to_string()).or_default() += 1;
    }
}

/// One op inside the batch's transaction (or a job's savepoint).
async fn op_apply(tx: &Transaction<'_>, op: &Op, deltas: &mut Deltas) -> Result<OpResult, Error> {
    Ok(match op {
        Op::PutMessage {
            id,
            meta,
            body,
            parties,
            // The body is one value here, its first octets read with `substring`.
            head: _,
        } => {
            let id = *id as i64;
            exec(
                tx,
                "INSERT INTO messages (id, meta) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET meta = EXCLUDED.meta",
                &[&id, meta],
            )
            .await?;
            exec(
                tx,
                "INSERT INTO bodies (id, body) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                &[&id, body],
            )
            .await?;
            if !parties.is_empty() {
                exec(
                    tx,
                    "INSERT INTO parties (party, id) SELECT unnest($1::text[]), $2 \
                     ON CONFLICT DO NOTHING",
                    &[parties, &id],
                )
                .await?;
            }
            OpResult::Done
        }
        Op::UpdateMessage { id, meta } => {
            exec(
                tx,
                "UPDATE messages SET meta = $2 WHERE id = $1",
                &[&(*id as i64), meta],
            )
            .await?;
            OpResult::Done
        }
        Op::SetRecipient {
            id,
            idx,
            state,
            due,
            guard,
        } => {
            let (id, idx) = (*id as i64, *idx as i32);
            let row = opt(
                tx,
                "SELECT version, due_at, queue, lease_token FROM recipients \
                     WHERE id = $1 AND idx = $2 FOR UPDATE",
                &[&id, &idx],
            )
            .await?;
            let current = row.as_ref().map(|r| {
                let version: i64 = r.get(0);
                let due_at: Option<i64> = r.get(1);
                let queue: String = r.get(2);
                let token: Option<i64> = r.get(3);
                (version, due_at.map(|d| (d, queue)), token)
            });
            let (holds, lease_token) = match guard {
                Guard::None => (true, None),
                Guard::Version(v) => (current.as_ref().is_some_and(|c| c.0 == *v as i64), None),
                Guard::Lease { token, version } => {
                    let mine = current.as_ref().is_some_and(|c| c.2 == Some(*token as i64));
                    let same = current.as_ref().is_some_and(|c| c.0 == *version as i64);
                    (mine && same, mine.then_some(*token as i64))
                }
            };
            if !holds {
                // The claim ends with this write, applied or not.
                if let Some(t) = lease_token {
                    exec(
                        tx,
                        "UPDATE recipients SET lease_owner = NULL, lease_until = NULL, \
                         lease_token = NULL WHERE id = $1 AND idx = $2 AND lease_token = $3",
                        &[&id, &idx, &t],
                    )
                    .await?;
                }
                return Ok(OpResult::Conflict);
            }
            let due_at = due.as_ref().map(|d| d.at as i64);
            let queue = due.as_ref().map_or("", |d| d.queue.as_str());
            let ends_claim = matches!(guard, Guard::Lease { .. });
            exec(
                tx,
                "INSERT INTO recipients (id, idx, version, due_at, queue, state) \
                 VALUES ($1, $2, 1, $3, $4, $5) \
                 ON CONFLICT (id, idx) DO UPDATE SET version = recipients.version + 1, \
                 due_at = EXCLUDED.due_at, queue = EXCLUDED.queue, state = EXCLUDED.state, \
                 lease_owner = CASE WHEN $6 THEN NULL ELSE recipients.lease_owner END, \
                 lease_until = CASE WHEN $6 THEN NULL ELSE recipients.lease_until END, \
                 lease_token = CASE WHEN $6 THEN NULL ELSE recipients.lease_token END",
                &[&id, &idx, &due_at, &queue, state, &ends_claim],
            )
            .await?;
            moved(
                deltas,
                current.and_then(|c| c.1),
                due_at.map(|d| (d, queue)),
            );
            OpResult::Done
        }
        Op::Deliver {
            dedupe_key,
            address,
            id,
        } => {
            let id = *id as i64;
            let inserted = opt(
                tx,
                "INSERT INTO dedupe (key, id) VALUES ($1, $2) \
                     ON CONFLICT (key) DO NOTHING RETURNING id",
                &[dedupe_key, &id],
            )
            .await?;
            if inserted.is_some() {
                exec(
                    tx,
                    "INSERT INTO mailbox (address, id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[address, &id],
                )
                .await?;
                OpResult::Delivered
            } else {
                let first: i64 = one(tx, "SELECT id FROM dedupe WHERE key = $1", &[dedupe_key])
                    .await?
                    .get(0);
                OpResult::Duplicate(first as u64)
            }
        }
        Op::PutEvent { id, event } => {
            exec(
                tx,
                "INSERT INTO events (id, event) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE \
                 SET event = EXCLUDED.event, lease_owner = NULL, lease_until = NULL, \
                 lease_token = NULL",
                &[&(*id as i64), event],
            )
            .await?;
            OpResult::Done
        }
        Op::DeleteEvent { id, token } => {
            let n = tx
                .execute(
                    "DELETE FROM events WHERE id = $1 AND ($2::bigint IS NULL OR lease_token = $2)",
                    &[&(*id as i64), &token.map(|t| t as i64)],
                )
                .await?;
            if n == 0 && token.is_some() {
                OpResult::Conflict
            } else {
                OpResult::Done
            }
        }
        Op::PutCapability { peer, record } => {
            exec(
                tx,
                "INSERT INTO capabilities (key, record) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record",
                &[peer, record],
            )
            .await?;
            OpResult::Done
        }
        Op::PutIndex { key, value } => {
            exec(
                tx,
                "INSERT INTO named_index (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[key, value],
            )
            .await?;
            OpResult::Done
        }
        Op::DeleteIndex { key } => {
            exec(tx, "DELETE FROM named_index WHERE key = $1", &[key]).await?;
            OpResult::Done
        }
        Op::PutCdr { id, record, .. } => {
            exec(
                tx,
                "INSERT INTO cdrs (id, record) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                &[&(*id as i64), record],
            )
            .await?;
            OpResult::Done
        }
        Op::DeleteCdrs { exporter, ids } => {
            let ids: Vec<i64> = ids.iter().map(|i| *i as i64).collect();
            let n = exec(
                tx,
                "DELETE FROM cdrs WHERE id = ANY($1) AND exporter = $2",
                &[&ids, exporter],
            )
            .await?;
            if (n as usize) < ids.len() {
                OpResult::Conflict
            } else {
                OpResult::Done
            }
        }
    })
}
