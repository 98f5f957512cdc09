//! The PostgreSQL backend: the store shared by the nodes of a cluster.
//!
//! Writes are group-committed by one task per node ([`apply`]); reads and claims use a pool of
//! connections, each claim one short statement (`UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED
//! LIMIT n) RETURNING`), never a transaction held across an SMTP session. Claims live in the
//! rows (owner, expiry, token from one sequence), so they survive a node's crash exactly as
//! long as their lease: then any node takes the work over, and the dead node's late write —
//! should it come back — is fenced off by the token and the row version.

mod apply;
pub mod schema;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Runtime};
use tokio::sync::{mpsc, Mutex};
use tokio_postgres::NoTls;

use crate::contract::*;

/// Ids handed out per round trip to the `msg_ids` sequence (its increment).
const ID_BLOCK: u64 = 1024;

/// The PostgreSQL backend of one node.
pub struct Postgres {
    pool: Pool,
    jobs: mpsc::UnboundedSender<crate::writer::Job>,
    /// The rest of this node's current block of ids: (next, end).
    ids: Mutex<(u64, u64)>,
    stats: Arc<Stats>,
    /// Whether the last attempt to reach the database succeeded.
    up: Arc<std::sync::atomic::AtomicBool>,
}

fn db(e: impl std::error::Error) -> StoreError {
    StoreError::Db(chain(&e))
}

/// An error with its causes (a TLS handshake failure says which certificate problem it was).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

impl Postgres {
    /// Connects (`url`: a libpq URL), creates or migrates the schema, starts the writer.
    /// `node` names this node in the per-node counters. With `ca` (a PEM file), TLS is used
    /// and the server must present a certificate it vouches for (`sslmode=require`: always;
    /// the default `prefer`: when the server offers TLS); `sslmode=require` without `ca` is
    /// refused rather than encrypting to whoever answers.
    pub async fn open(
        url: &str,
        pool_size: usize,
        node: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, StoreError> {
        let pg: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Open {
            path: url.into(),
            reason: format!("not a PostgreSQL URL: {e}"),
        })?;
        let config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        use tokio_postgres::config::SslMode;
        let manager = match (pg.get_ssl_mode(), ca) {
            (SslMode::Disable, _) | (SslMode::Prefer, None) => {
                deadpool_postgres::Manager::from_config(pg, NoTls, config)
            }
            (_, Some(ca)) => {
                deadpool_postgres::Manager::from_config(pg, tls::connector(ca)?, config)
            }
            (_, None) => {
                return Err(StoreError::Open {
                    path: url.into(),
                    reason: "TLS (sslmode) needs the CA that vouches for the server (store.ca)"
                        .into(),
                })
            }
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Open {
                path: url.into(),
                reason: e.to_string(),
            })?;
        {
            let mut client = pool.get().await.map_err(|e| StoreError::Open {
                path: url.into(),
                reason: chain(&e),
            })?;
            schema::migrate(&mut client).await?;
        }
        let stats = Arc::new(Stats::default());
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..apply::WRITERS {
            tokio::spawn(apply::run(
                pool.clone(),
                node.to_string(),
                rx.clone(),
                stats.clone(),
                up.clone(),
            ));
        }
        Ok(Postgres {
            pool,
            jobs: tx,
            ids: Mutex::new((0, 0)),
            stats,
            up,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let c = self.pool.get().await;
        self.up
            .store(c.is_ok(), std::sync::atomic::Ordering::Relaxed);
        c.map_err(db)
    }

    fn submit(&self, ops: Vec<Op>, all_or_nothing: bool) -> CommitHandle {
        self.stats
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = crate::writer::Job {
            ops,
            all_or_nothing,
            reply,
        };
        match self.jobs.send(job) {
            Ok(()) => CommitHandle(rx),
            Err(_) => CommitHandle::failed(StoreError::WriterGone),
        }
    }

    async fn bytes(
        &self,
        sql: &str,
        key: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.client().await?;
        Ok(q_opt(&c, sql, &[key]).await.map_err(db)?.map(|r| r.get(0)))
    }

    /// The message ids a query's first column lists, in its order.
    async fn ids(&self, sql: &str, params: Params<'_>) -> Result<Vec<MsgId>, StoreError> {
        let c = self.client().await?;
        let rows = q(&c, sql, params).await.map_err(db)?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }
}

type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// Statements are prepared once per pooled connection: one round trip per request, not two.
async fn q(
    c: &deadpool_postgres::Object,
    sql: &str,
    p: Params<'_>,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query(&st, p).await
}

async fn q_opt(
    c: &deadpool_postgres::Object,
    sql: &str,
    p: Params<'_>,
) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query_opt(&st, p).await
}

async fn q_exec(
    c: &deadpool_postgres::Object,
    sql: &str,
    p: Params<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.execute(&st, p).await
}

fn row_of(r: &tokio_postgres::Row) -> RecipientRow {
    let due_at: Option<i64> = r.get("due_at");
    let queue: String = r.get("queue");
    RecipientRow {
        idx: r.get::<_, i32>("idx") as u32,
        version: r.get::<_, i64>("version") as u64,
        due: due_at.map(|at| DueAt::new(at as u64, queue)),
        state: r.get("state"),
    }
}

#[async_trait::async_trait]
impl Spool for Postgres {
    async fn next_id(&self) -> Result<MsgId, StoreError> {
        let mut ids = self.ids.lock().await;
        if ids.0 >= ids.1 {
            let c = self.client().await?;
            let start: i64 = c
                .query_one("SELECT nextval('msg_ids')", &[])
                .await
                .map_err(db)?
                .get(0);
            *ids = (start as u64, start as u64 + ID_BLOCK);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    fn commit(&self, ops: Vec<Op>) -> CommitHandle {
        self.submit(ops, false)
    }

    fn commit_all(&self, ops: Vec<Op>) -> CommitHandle {
        self.submit(ops, true)
    }

    async fn message(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError> {
        self.bytes("SELECT meta FROM messages WHERE id = $1", &(id as i64))
            .await
    }

    async fn body(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError> {
        self.bytes("SELECT body FROM bodies WHERE id = $1", &(id as i64))
            .await
    }

    async fn head(&self, id: MsgId, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        // Bodies are stored EXTERNAL (uncompressed): a substring reads only the chunks it needs.
        let len = i32::try_from(len).unwrap_or(i32::MAX);
        let c = self.client().await?;
        let row = q_opt(
            &c,
            "SELECT substring(body FROM 1 FOR $2) FROM bodies WHERE id = $1",
            &[&(id as i64), &len],
        )
        .await
        .map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn recipients(&self, id: MsgId) -> Result<Vec<RecipientRow>, StoreError> {
        let c = self.client().await?;
        let rows = q(
            &c,
            "SELECT idx, version, due_at, queue, state FROM recipients \
                 WHERE id = $1 ORDER BY idx",
            &[&(id as i64)],
        )
        .await
        .map_err(db)?;
        Ok(rows.iter().map(row_of).collect())
    }

    async fn mailbox(&self, address: &str) -> Result<Vec<MsgId>, StoreError> {
        self.ids(
            "SELECT id FROM mailbox WHERE address = $1 ORDER BY id",
            &[&address],
        )
        .await
    }

    async fn mailbox_page(
        &self,
        address: &str,
        after: MsgId,
        limit: usize,
    ) -> Result<Vec<MsgId>, StoreError> {
        let after = after.min(i64::MAX as u64) as i64;
        self.ids(
            "SELECT id FROM mailbox WHERE address = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[&address, &after, &(limit as i64)],
        )
        .await
    }

    async fn filed(&self, address: &str, id: MsgId) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let id = id.min(i64::MAX as u64) as i64;
        Ok(q_opt(
            &c,
            "SELECT 1 FROM mailbox WHERE address = $1 AND id = $2",
            &[&address, &id],
        )
        .await
        .map_err(db)?
        .is_some())
    }

    async fn by_party(
        &self,
        party: &str,
        before: MsgId,
        limit: usize,
    ) -> Result<Vec<MsgId>, StoreError> {
        let before = before.min(i64::MAX as u64) as i64;
        self.ids(
            "SELECT id FROM parties WHERE party = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            &[&party, &before, &(limit as i64)],
        )
        .await
    }

    async fn dedupe(&self, key: &str) -> Result<Option<MsgId>, StoreError> {
        let c = self.client().await?;
        Ok(q_opt(&c, "SELECT id FROM dedupe WHERE key = $1", &[&key])
            .await
            .map_err(db)?
            .map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn capability(&self, peer: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.bytes("SELECT record FROM capabilities WHERE key = $1", &peer)
            .await
    }

    async fn index(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.bytes("SELECT value FROM named_index WHERE key = $1", &key)
            .await
    }

    async fn claim_due(
        &self,
        queue: &str,
        req: &ClaimRequest<'_>,
    ) -> Result<Vec<Claimed>, StoreError> {
        let c = self.client().await?;
        let now = req.now as i64;
        let until = req.now.saturating_add(req.lease.as_millis() as u64) as i64;
        let rows = q(
            &c,
            "UPDATE recipients r SET lease_owner = $1, lease_until = $2, \
                 lease_token = nextval('tokens') \
                 FROM (SELECT id, idx FROM recipients \
                       WHERE queue = $3 AND due_at IS NOT NULL AND due_at <= $4 \
                       AND (lease_until IS NULL OR lease_until <= $4) \
                       ORDER BY due_at, id, idx LIMIT $5 FOR UPDATE SKIP LOCKED) c \
                 WHERE r.id = c.id AND r.idx = c.idx \
                 RETURNING r.id, r.idx, r.version, r.due_at, r.queue, r.state, r.lease_token",
            &[&req.owner, &until, &queue, &now, &(req.limit as i64)],
        )
        .await
        .map_err(db)?;
        let mut out: Vec<Claimed> = rows
            .iter()
            .map(|r| Claimed {
                id: r.get::<_, i64>("id") as u64,
                row: row_of(r),
                token: r.get::<_, i64>("lease_token") as u64,
            })
            .collect();
        out.sort_by_key(|c| (c.row.due.as_ref().map(|d| d.at), c.id, c.row.idx));
        Ok(out)
    }

    async fn claim_events(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedEvent>, StoreError> {
        let c = self.client().await?;
        let now = req.now as i64;
        let until = req.now.saturating_add(req.lease.as_millis() as u64) as i64;
        let rows = q(
            &c,
            "UPDATE events e SET lease_owner = $1, lease_until = $2, \
                 lease_token = nextval('tokens') \
                 FROM (SELECT id FROM events WHERE lease_until IS NULL OR lease_until <= $3 \
                       ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) c \
                 WHERE e.id = c.id RETURNING e.id, e.event, e.lease_token",
            &[&req.owner, &until, &now, &(req.limit as i64)],
        )
        .await
        .map_err(db)?;
        let mut out: Vec<ClaimedEvent> = rows
            .iter()
            .map(|r| ClaimedEvent {
                id: r.get::<_, i64>(0) as u64,
                event: r.get(1),
                token: r.get::<_, i64>(2) as u64,
            })
            .collect();
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    async fn renew(&self, owner: &str, now: u64, lease: Duration) -> Result<(), StoreError> {
        let c = self.client().await?;
        let until = now.saturating_add(lease.as_millis() as u64) as i64;
        for sql in [
            "UPDATE recipients SET lease_until = $2 WHERE lease_owner = $1 AND lease_until < $2",
            "UPDATE events SET lease_until = $2 WHERE lease_owner = $1 AND lease_until < $2",
            "UPDATE jobs SET until = $2 WHERE owner = $1 AND until < $2",
            "UPDATE peer_slots SET until = $2 WHERE owner = $1 AND until < $2",
        ] {
            q_exec(&c, sql, &[&owner, &until]).await.map_err(db)?;
        }
        q_exec(&c,
            "INSERT INTO nodes (name, owner, heartbeat) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, heartbeat = EXCLUDED.heartbeat",
            &[&node_of(owner), &owner, &(now as i64)],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn release(
        &self,
        claims: &[ClaimRef],
        now: u64,
        retry_after: Duration,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        let until = now.saturating_add(retry_after.as_millis() as u64) as i64;
        for claim in claims {
            match *claim {
                ClaimRef::Recipient { id, idx, token } => q_exec(
                    &c,
                    "UPDATE recipients SET lease_owner = '', lease_until = $4, lease_token = NULL \
                     WHERE id = $1 AND idx = $2 AND lease_token = $3",
                    &[&(id as i64), &(idx as i32), &(token as i64), &until],
                )
                .await
                .map_err(db)?,
                ClaimRef::Event { id, token } => q_exec(
                    &c,
                    "UPDATE events SET lease_owner = '', lease_until = $3, lease_token = NULL \
                     WHERE id = $1 AND lease_token = $2",
                    &[&(id as i64), &(token as i64), &until],
                )
                .await
                .map_err(db)?,
            };
        }
        Ok(())
    }

    async fn claim_slot(
        &self,
        peer: &str,
        limit: usize,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Result<Option<Slot>, StoreError> {
        let c = self.client().await?;
        let until = now.saturating_add(lease.as_millis() as u64) as i64;
        // Two nodes may pick the same free slot at once: the second finds it taken and looks
        // again.
        for _ in 0..4 {
            let row = q_opt(
                &c,
                "INSERT INTO peer_slots (peer, slot, owner, until, token) \
                 SELECT $1, s, $2, $3, nextval('tokens') FROM generate_series(0, $4 - 1) s \
                 WHERE NOT EXISTS (SELECT 1 FROM peer_slots p \
                                   WHERE p.peer = $1 AND p.slot = s AND p.until > $5) \
                 ORDER BY s LIMIT 1 \
                 ON CONFLICT (peer, slot) DO UPDATE SET owner = EXCLUDED.owner, \
                 until = EXCLUDED.until, token = EXCLUDED.token WHERE peer_slots.until <= $5 \
                 RETURNING slot, token",
                &[&peer, &owner, &until, &(limit as i32), &(now as i64)],
            )
            .await
            .map_err(db)?;
            if let Some(r) = row {
                return Ok(Some(Slot {
                    peer: peer.to_string(),
                    n: r.get::<_, i32>(0) as u32,
                    token: r.get::<_, i64>(1) as u64,
                }));
            }
            let free: i64 = q_opt(
                &c,
                "SELECT $2::bigint - count(*) FROM peer_slots \
                 WHERE peer = $1 AND until > $3 AND slot < $2",
                &[&peer, &(limit as i64), &(now as i64)],
            )
            .await
            .map_err(db)?
            .map_or(0, |r| r.get(0));
            if free <= 0 {
                return Ok(None);
            }
        }
        Ok(None)
    }

    async fn pace(&self, key: &str, now: u64, interval: u64) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let (now, interval) = (now as i64, interval as i64);
        let row = q_opt(
            &c,
            "INSERT INTO pace (key, next) VALUES ($1, $2::bigint + $3::bigint) \
             ON CONFLICT (key) DO UPDATE SET next = GREATEST(pace.next, $2::bigint) + $3::bigint \
             RETURNING next - $3::bigint",
            &[&key, &now, &interval],
        )
        .await
        .map_err(db)?;
        Ok(row.map_or(now, |r| r.get::<_, i64>(0)) as u64)
    }

    async fn release_slot(&self, slot: &Slot) -> Result<(), StoreError> {
        let c = self.client().await?;
        q_exec(
            &c,
            "DELETE FROM peer_slots WHERE peer = $1 AND slot = $2 AND token = $3",
            &[&slot.peer, &(slot.n as i32), &(slot.token as i64)],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn claim_cdrs(
        &self,
        exporter: &str,
        now: u64,
        stale: Duration,
        limit: usize,
    ) -> Result<Vec<CdrRow>, StoreError> {
        let c = self.client().await?;
        let (now, limit) = (now as i64, limit as i64);
        // What this exporter claimed before and has not finished comes first.
        let mut rows = q(
            &c,
            "UPDATE cdrs SET marked_at = $2 WHERE id IN \
             (SELECT id FROM cdrs WHERE exporter = $1 ORDER BY id LIMIT $3) \
             RETURNING id, record",
            &[&exporter, &now, &limit],
        )
        .await
        .map_err(db)?;
        if rows.is_empty() {
            let before = now.saturating_sub(stale.as_millis() as i64);
            rows = q(
                &c,
                "UPDATE cdrs SET exporter = $1, marked_at = $2 WHERE id IN \
                 (SELECT id FROM cdrs WHERE exporter IS NULL OR marked_at < $4 \
                  ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, record",
                &[&exporter, &now, &limit, &before],
            )
            .await
            .map_err(db)?;
        }
        let mut out: Vec<CdrRow> = rows
            .iter()
            .map(|r| CdrRow {
                id: r.get::<_, i64>(0) as u64,
                record: r.get(1),
            })
            .collect();
        out.sort_unstable_by_key(|r| r.id);
        Ok(out)
    }

    async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Result<Option<Token>, StoreError> {
        let c = self.client().await?;
        let until = now.saturating_add(lease.as_millis() as u64) as i64;
        let row = q_opt(
                &c,
                "INSERT INTO jobs (name, owner, until, token) VALUES ($1, $2, $3, nextval('tokens')) \
                 ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, \
                 until = GREATEST(jobs.until, EXCLUDED.until), \
                 token = CASE WHEN jobs.owner = EXCLUDED.owner THEN jobs.token ELSE EXCLUDED.token END \
                 WHERE jobs.owner = EXCLUDED.owner OR jobs.until <= $4 \
                 RETURNING token",
                &[&name, &owner, &until, &(now as i64)],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn live_nodes(&self, since: u64) -> Result<usize, StoreError> {
        let c = self.client().await?;
        let row = q_opt(
            &c,
            "SELECT count(*) FROM nodes WHERE heartbeat >= $1",
            &[&(since as i64)],
        )
        .await
        .map_err(db)?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as usize))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let c = self.client().await?;
        let rows = q(
            &c,
            "SELECT n.name, n.heartbeat, \
                 (SELECT count(*) FROM recipients r WHERE r.lease_owner = n.owner) + \
                 (SELECT count(*) FROM events e WHERE e.lease_owner = n.owner) \
                 FROM nodes n ORDER BY n.name",
            &[],
        )
        .await
        .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| NodeInfo {
                name: r.get(0),
                heartbeat: r.get::<_, i64>(1) as u64,
                claimed: r.get::<_, i64>(2) as u64,
            })
            .collect())
    }

    async fn queues(&self) -> Result<Vec<QueueSummary>, StoreError> {
        let c = self.client().await?;
        let rows = q(
                &c,
                "SELECT q.queue, q.depth, \
                 (SELECT min(due_at) FROM recipients r WHERE r.queue = q.queue AND r.due_at IS NOT NULL) \
                 FROM (SELECT queue, sum(depth)::bigint AS depth FROM queue_depth GROUP BY queue) q \
                 WHERE q.depth > 0 ORDER BY q.queue",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| QueueSummary {
                queue: r.get(0),
                depth: r.get::<_, i64>(1) as u64,
                next_due: r.get::<_, Option<i64>>(2).map(|d| d as u64),
            })
            .collect())
    }

    async fn oldest(&self, queue: &str, limit: usize) -> Result<Vec<Due>, StoreError> {
        let c = self.client().await?;
        let rows = q(
            &c,
            "SELECT due_at, id, idx FROM recipients WHERE queue = $1 AND due_at IS NOT NULL \
                 ORDER BY due_at, id, idx LIMIT $2",
            &[&queue, &(limit as i64)],
        )
        .await
        .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| Due {
                at: r.get::<_, i64>(0) as u64,
                id: r.get::<_, i64>(1) as u64,
                idx: r.get::<_, i32>(2) as u32,
            })
            .collect())
    }

    fn health(&self) -> &dyn Health {
        self
    }
}

impl Health for Postgres {
    /// Not a disk of ours: PostgreSQL answers for its own space.
    fn free_space(&self) -> u64 {
        u64::MAX
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn available(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }
}
