//! Group commit: one writer thread takes every commit that queued up while the previous batch
//! was being made durable, applies them in one transaction (one fsync), and only then answers
//! each caller. Under load, many sessions share one fsync; alone, a commit waits for nobody.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;

use tokio::sync::oneshot;

use crate::contract::{CommitHandle, Op, OpResult, Stats, StoreError};

/// One caller's commit.
pub struct Job {
    pub ops: Vec<Op>,
    /// A failed guard refuses the whole job ([`crate::Spool::commit_all`]).
    pub all_or_nothing: bool,
    pub reply: oneshot::Sender<Result<Vec<OpResult>, StoreError>>,
}

/// What a backend does with one batch: one durable transaction.
pub trait Batch: Send + 'static {
    /// The outer error fails every job of the batch (nothing was made durable); the inner one
    /// answers a single job (an all-or-nothing job refused by a guard).
    #[allow(clippy::type_complexity)]
    fn apply(&mut self, jobs: &[Job])
        -> Result<Vec<Result<Vec<OpResult>, StoreError>>, StoreError>;

    /// Called once the batch is durable, before its callers are answered, with each job's
    /// result: the ops are no longer needed, so what they own may be taken (their bodies).
    fn committed(&mut self, _jobs: &mut [Job], _results: &[Result<Vec<OpResult>, StoreError>]) {}
}

/// The writer thread and the queue in front of it.
pub struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl Writer {
    /// Starts the writer; at most `max_batch` commits share one transaction (bounds latency and
    /// transaction size under a flood).
    pub fn spawn<B: Batch>(
        backend: B,
        stats: Arc<Stats>,
        max_batch: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let wstats = stats.clone();
        let thread = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(backend, rx, wstats, max_batch.max(1)))?;
        Ok(Writer {
            jobs: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    pub fn submit(&self, ops: Vec<Op>, all_or_nothing: bool) -> CommitHandle {
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let job = Job {
            ops,
            all_or_nothing,
            reply,
        };
        match &self.jobs {
            Some(jobs) if jobs.send(job).is_ok() => CommitHandle(rx),
            _ => CommitHandle::failed(StoreError::WriterGone),
        }
    }

    /// Finishes what was queued, then stops.
    pub fn close(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

fn run<B: Batch>(mut backend: B, rx: mpsc::Receiver<Job>, stats: Arc<Stats>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let results = backend.apply(&batch);
        if let Ok(r) = &results {
            backend.committed(&mut batch, r);
        }
        answer(batch, results, &stats);
    }
}

/// Answers every caller of a batch: each its own result once the transaction is durable, or
/// the transaction's error to all.
#[allow(clippy::type_complexity)]
pub fn answer(
    batch: Vec<Job>,
    results: Result<Vec<Result<Vec<OpResult>, StoreError>>, StoreError>,
    stats: &Stats,
) {
    match results {
        Ok(results) => {
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            for (job, r) in batch.into_iter().zip(results) {
                let _ = job.reply.send(r);
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
