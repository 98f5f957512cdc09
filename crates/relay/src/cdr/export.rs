//! The charging-record exporter: claims records from the store in batches, appends them to the
//! node's day files with their `record_id`, makes the files durable, then deletes the records
//! from the store.
//!
//! Exactly once: a record leaves the store only after its line is on disk, so nothing is lost.
//! A crash between the file write and the delete leaves the batch claimed by this node (the
//! store hands a node its unfinished batch first); after a start, or after any failed export,
//! the exporter reads the end of the files the batch belongs in, cuts a torn last line, and
//! skips the records already there. What it cannot see is another node's disk: a node that died
//! in that window and did not come back within the lease may leave its last batch (at most
//! `batch` records) in two nodes' files, with the same `record_id`.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use store::{CdrRow, Op, OpResult, Spool, StoreError};
use tokio::sync::watch;

use super::Charging;
use crate::clock::Clock;

/// How much of a day file's end is read to find the records of an unfinished batch: far more
/// than a batch of lines.
const TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// How often the exporter looks for records when nothing woke it (records committed by another
/// node, or a store that was away).
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("charging records: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes this node's share of the charging records to its files.
pub struct Exporter {
    store: Arc<dyn Spool>,
    dir: PathBuf,
    /// The node name (stable across restarts: the store gives a node back its unfinished batch).
    node: String,
    /// A batch another node claimed and did not finish within this is taken over.
    stale: Duration,
    batch: usize,
    clock: Arc<dyn Clock>,
    charging: Charging,
    /// The day files' counts, brought up to date after each append (the console reads them).
    summaries: Arc<super::summary::Summaries>,
    /// Whether the files may already hold records still in the store: after a start, and after
    /// an export that failed once it began writing.
    suspect: AtomicBool,
}

impl Exporter {
    /// An exporter writing to `<data_dir>/cdr`.
    pub fn new(
        store: Arc<dyn Spool>,
        data_dir: &Path,
        node: impl Into<String>,
        stale: Duration,
        batch: usize,
        clock: Arc<dyn Clock>,
    ) -> Exporter {
        let dir = data_dir.join("cdr");
        Exporter {
            store,
            summaries: Arc::new(super::summary::Summaries::new(
                &dir,
                data_dir.join("cdr-counts"),
            )),
            dir,
            node: node.into(),
            stale,
            batch: batch.max(1),
            clock,
            charging: Charging::default(),
            suspect: AtomicBool::new(true),
        }
    }

    /// What the event processor and the scheduler use to store records and wake this exporter.
    pub fn charging(&self) -> Charging {
        self.charging.clone()
    }

    /// The counts of this node's day files.
    pub fn summaries(&self) -> Arc<super::summary::Summaries> {
        self.summaries.clone()
    }

    /// Exports until `shutdown`, then writes what is left.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stopping = *shutdown.borrow();
            match self.export_once().await {
                Ok(n) if n >= self.batch => continue,
                Ok(_) if stopping => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "charging records not exported; will retry");
                    if stopping {
                        return;
                    }
                }
            }
            tokio::select! {
                _ = self.charging.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Exports one batch; how many records it held.
    pub async fn export_once(&self) -> Result<usize, ExportError> {
        let now = self.clock.now_ms().max(0) as u64;
        let rows = self
            .store
            .claim_cdrs(&self.node, now, self.stale, self.batch)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let n = rows.len();
        let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
        let mut by_day: BTreeMap<String, Vec<CdrRow>> = BTreeMap::new();
        for r in rows {
            by_day.entry(day_of(&r.record)).or_default().push(r);
        }
        // From here a failure may leave lines behind: the next attempt checks the files.
        let check = self.suspect.swap(true, Ordering::SeqCst);
        let dir = self.dir.clone();
        let summaries = self.summaries.clone();
        // File writes and fsyncs block: off the async workers.
        tokio::task::spawn_blocking(move || {
            by_day.into_iter().try_for_each(|(day, rows)| {
                append(&dir, &day, rows, check)?;
                // What was just appended, counted while it is in the page cache.
                if let Err(e) = summaries.counts(&day) {
                    tracing::warn!(day, error = %e, "charging counts not updated");
                }
                Ok::<(), ExportError>(())
            })
        })
        .await
        .map_err(|e| ExportError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let done = Op::DeleteCdrs {
            exporter: self.node.clone(),
            ids,
        };
        if let Some(OpResult::Conflict) = self.store.commit(vec![done]).await?.first() {
            tracing::warn!(
                "charging records taken over by another node meanwhile: they may appear in two \
                 nodes' files with the same record_id"
            );
        }
        self.suspect.store(false, Ordering::SeqCst);
        Ok(n)
    }
}

/// Appends `rows` to the day's file in `dir` (skipping those already in it when `check`) and
/// makes it durable.
fn append(dir: &Path, day: &str, rows: Vec<CdrRow>, check: bool) -> Result<(), ExportError> {
    let path = dir.join(format!("{day}.jsonl"));
    let io = |source| ExportError::Io {
        path: path.clone(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io)?;
        if let Some(parent) = dir.parent() {
            File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
        }
    }
    let created = !path.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    let written = if check {
        written_ids(&mut f).map_err(io)?
    } else {
        HashSet::new()
    };
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.record.len() + 32).sum());
    for r in rows.iter().filter(|r| !written.contains(&r.id)) {
        line(&mut out, r);
    }
    f.write_all(&out).map_err(io)?;
    f.sync_data().map_err(io)?;
    if created {
        // A new file is durable once its directory entry is.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// The day (`YYYY-MM-DD`) of a stored record, from its `time`.
fn day_of(record: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Stamp<'a> {
        #[serde(borrow)]
        time: &'a str,
    }
    serde_json::from_slice::<Stamp<'_>>(record)
        .ok()
        .and_then(|s| s.time.get(..10).map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

/// One line: the stored record with its `record_id` first.
fn line(out: &mut Vec<u8>, r: &CdrRow) {
    let id = format!("{{\"record_id\":\"{}\"", r.id);
    out.extend_from_slice(id.as_bytes());
    match r.record.strip_prefix(b"{") {
        Some(rest) if rest.iter().any(|b| !b.is_ascii_whitespace() && *b != b'}') => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        Some(_) => out.push(b'}'),
        // Not a JSON object (never made by this relay): kept, as a string, not dropped.
        None => {
            let raw = serde_json::to_string(&String::from_utf8_lossy(&r.record))
                .unwrap_or_else(|_| "\"\"".into());
            out.extend_from_slice(format!(",\"raw\":{raw}}}").as_bytes());
        }
    }
    out.push(b'\n');
}

/// The record ids at the end of a day file, after cutting a torn last line (a write the crash
/// interrupted: its record is still in the store and is written again whole).
fn written_ids(f: &mut File) -> std::io::Result<HashSet<u64>> {
    let len = f.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    f.read_to_end(&mut tail)?;
    let whole = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if whole < tail.len() {
        f.set_len(start + whole as u64)?;
        f.sync_data()?;
        tail.truncate(whole);
    }
    const KEY: &[u8] = b"{\"record_id\":\"";
    Ok(tail
        .split(|b| *b == b'\n')
        .filter_map(|l| l.strip_prefix(KEY))
        .filter_map(|rest| {
            let end = rest.iter().position(|b| *b == b'"')?;
            std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
        })
        .collect())
}
