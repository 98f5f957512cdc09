//! mmsrelay's spool: what must survive a crash, and who owns which piece of work.
//!
//! - [`contract`]: the records, operations, guards, claims and errors every backend offers, and
//!   the [`Spool`] trait the relay works against (reads are async so a networked backend fits).
//! - [`writer`]: group commit — one thread applies every commit that queued up while the
//!   previous one was being made durable, in one transaction and one fsync, and only then answers
//!   each caller. A session gets its `250` after the commit that holds its message.
//! - [`lease`]: the claim table (owner, expiry, fencing token) for backends that keep claims in
//!   memory (one node: the claims die with the process that holds them).
//! - [`embedded`]: the backend on `redb`, one file, one writer thread.
//! - [`segments`]: the embedded backend's message bodies, appended a commit batch at a time to
//!   segment files (`O_DIRECT` where the file system takes it) and synced before the batch's
//!   metadata commits.
//! - [`recent`]: the embedded backend's last stored bodies in memory (delivery reads them next).
//! - [`postgres`]: the backend shared by the nodes of a cluster, claims in the rows.
//!
//! The conformance battery in `tests/conformance` states the contract as tests and runs against
//! every backend.

pub mod contract;
pub mod embedded;
pub mod lease;
pub mod pace;
pub mod postgres;
pub mod recent;
pub mod segments;
pub mod writer;

pub use contract::*;
pub use embedded::{free_space, Embedded};
pub use postgres::Postgres;
