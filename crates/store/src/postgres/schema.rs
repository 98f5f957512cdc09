//! The PostgreSQL schema, versioned: created at the first start, migrated forward at later ones,
//! and a node refuses to start on a schema newer than it knows.
//!
//! Small state rows (recipients, events) are updated in place; bodies are written once in their
//! own table, stored out of line and uncompressed (media are compressed already). Queue depths
//! are counted per node (each node adds its own deltas, so nodes never wait on one another's
//! counter row); a queue's depth is the sum over nodes.

use tokio_postgres::Client;

use crate::contract::StoreError;

/// The schema this build knows.
pub const VERSION: i32 = 4;

/// An arbitrary constant: the advisory lock that serializes migrations between nodes.
const MIGRATION_LOCK: i64 = 0x6d6d_7372_656c_6179;

const V1: &str = r#"
CREATE SEQUENCE msg_ids INCREMENT BY 1024 START WITH 1;
CREATE SEQUENCE tokens;
CREATE TABLE messages (id bigint PRIMARY KEY, meta bytea NOT NULL);
CREATE TABLE bodies (id bigint PRIMARY KEY, body bytea NOT NULL);
ALTER TABLE bodies ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE recipients (
    id bigint NOT NULL,
    idx integer NOT NULL,
    version bigint NOT NULL,
    due_at bigint,
    queue text NOT NULL,
    state bytea NOT NULL,
    lease_owner text,
    lease_until bigint,
    lease_token bigint,
    PRIMARY KEY (id, idx)
);
CREATE INDEX recipients_due ON recipients (queue, due_at) WHERE due_at IS NOT NULL;
CREATE INDEX recipients_leased ON recipients (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE TABLE mailbox (address text NOT NULL, id bigint NOT NULL, PRIMARY KEY (address, id));
CREATE TABLE dedupe (key text PRIMARY KEY, id bigint NOT NULL);
CREATE TABLE events (
    id bigint PRIMARY KEY,
    event bytea NOT NULL,
    lease_owner text,
    lease_until bigint,
    lease_token bigint
);
CREATE TABLE capabilities (key text PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE named_index (key text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE peer_slots (peer text NOT NULL, slot integer NOT NULL, owner text NOT NULL, until bigint NOT NULL, token bigint NOT NULL, PRIMARY KEY (peer, slot));
CREATE TABLE jobs (name text PRIMARY KEY, owner text NOT NULL, until bigint NOT NULL, token bigint NOT NULL);
CREATE TABLE queue_depth (queue text NOT NULL, node text NOT NULL, depth bigint NOT NULL, PRIMARY KEY (queue, node));
CREATE TABLE nodes (name text PRIMARY KEY, owner text NOT NULL, heartbeat bigint NOT NULL);
"#;

/// Version 2: the charging-record outbox. A record is claimed by an exporter (a node name) and
/// deleted once that node's files hold it.
const V2: &str = r#"
CREATE TABLE cdrs (id bigint PRIMARY KEY, record bytea NOT NULL, exporter text, marked_at bigint);
CREATE INDEX cdrs_exporter ON cdrs (exporter) WHERE exporter IS NOT NULL;
"#;

/// Version 3: spacing of work per key (a peer's `max_rate`, shared by every node).
const V3: &str = "CREATE TABLE pace (key text PRIMARY KEY, next bigint NOT NULL);";

/// Version 4: the messages a number is a party of (search by MSISDN), read newest first.
const V4: &str =
    "CREATE TABLE parties (party text NOT NULL, id bigint NOT NULL, PRIMARY KEY (party, id));";

/// Each version's statements, in order: a database at version `n` runs the ones after `n`.
const STEPS: [&str; VERSION as usize] = [V1, V2, V3, V4];

fn err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Db(format!("schema: {e}"))
}

/// Brings the database to [`VERSION`] (one node at a time), or refuses a newer one.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS mmsrelay_schema (version integer NOT NULL)")
        .await
        .map_err(err)?;
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    let found: Option<i32> = tx
        .query_opt("SELECT version FROM mmsrelay_schema", &[])
        .await
        .map_err(err)?
        .map(|r| r.get(0));
    match found {
        Some(v) if v > VERSION => {
            return Err(StoreError::Db(format!(
                "the database schema is version {v}, newer than this build knows ({VERSION}): \
                 upgrade this node"
            )))
        }
        Some(v) if v == VERSION => {}
        Some(v) => {
            for step in &STEPS[v.max(0) as usize..] {
                tx.batch_execute(step).await.map_err(err)?;
            }
            tx.execute("UPDATE mmsrelay_schema SET version = $1", &[&VERSION])
                .await
                .map_err(err)?;
        }
        None => {
            for step in &STEPS {
                tx.batch_execute(step).await.map_err(err)?;
            }
            tx.execute(
                "INSERT INTO mmsrelay_schema (version) VALUES ($1)",
                &[&VERSION],
            )
            .await
            .map_err(err)?;
        }
    }
    tx.commit().await.map_err(err)
}
