//! The conformance battery on the PostgreSQL backend, against a real server (Debian's
//! `postgresql`, a private cluster started by the test): every check on a database of its own.

mod conformance;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use conformance::Backend;
use store::{MsgId, Op, OpResult};
use store::{Postgres, Spool};

struct Pg {
    server: testbed::Postgres,
    n: AtomicUsize,
    current: Mutex<String>,
}

impl Backend for Pg {
    async fn fresh(&self) -> Arc<dyn Spool> {
        let db = format!("conformance{}", self.n.fetch_add(1, Ordering::SeqCst));
        self.server.create_db(&db);
        let url = self.server.url(&db);
        *self.current.lock().unwrap() = url.clone();
        Arc::new(Postgres::open(&url, 8, "n0", None).await.unwrap())
    }

    async fn reopen(&self, s: Arc<dyn Spool>) -> Arc<dyn Spool> {
        drop(s);
        let url = self.current.lock().unwrap().clone();
        Arc::new(Postgres::open(&url, 8, "n0", None).await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_meets_the_contract() {
    let pg = Pg {
        server: testbed::Postgres::start(),
        n: AtomicUsize::new(0),
        current: Mutex::new(String::new()),
    };
    conformance::run_all(&pg).await;
}

/// Two nodes commit changes to the same two recipients, locking them in crossed order: when
/// PostgreSQL breaks the deadlock by aborting one transaction, that batch is written again —
/// both callers get their commit, neither an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_crossing_another_nodes_locks_are_written_again_not_failed() {
    use store::{Guard, Health};
    let server = testbed::Postgres::start();
    server.create_db("crossed");
    let url = server.url("crossed");
    let a = Postgres::open(&url, 4, "n1", None).await.unwrap();
    let b = Postgres::open(&url, 4, "n2", None).await.unwrap();
    let set = |idx: u32, state: &str| Op::SetRecipient {
        id: 1,
        idx,
        state: state.as_bytes().to_vec(),
        due: None,
        guard: Guard::None,
    };
    a.commit(vec![set(0, "new"), set(1, "new")]).await.unwrap();
    let retried = |s: &Postgres| s.stats().retries.load(Ordering::Relaxed);
    // Each deadlock costs PostgreSQL's deadlock_timeout (1 s) to find: stop at the first.
    for round in 0..200 {
        let (ra, rb) = tokio::join!(
            a.commit(vec![set(0, "a"), set(1, "a")]),
            b.commit(vec![set(1, "b"), set(0, "b")])
        );
        assert_eq!(
            ra.unwrap(),
            [OpResult::Done, OpResult::Done],
            "round {round}"
        );
        assert_eq!(
            rb.unwrap(),
            [OpResult::Done, OpResult::Done],
            "round {round}"
        );
        if retried(&a) + retried(&b) > 0 {
            return;
        }
    }
    panic!("no deadlock in 200 rounds: the test did not test what it says");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let server = testbed::Postgres::start();
    server.create_db("newer");
    let url = server.url("newer");
    drop(Postgres::open(&url, 2, "n0", None).await.unwrap());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute("UPDATE mmsrelay_schema SET version = version + 1", &[])
        .await
        .unwrap();
    let Err(e) = Postgres::open(&url, 2, "n0", None).await else {
        panic!("a node must refuse a newer schema")
    };
    assert!(e.to_string().contains("newer than this build"), "{e}");
}

#[tokio::test]
async fn an_older_schema_is_migrated_forward() {
    let server = testbed::Postgres::start();
    server.create_db("older");
    let url = server.url("older");
    drop(Postgres::open(&url, 2, "n0", None).await.unwrap());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // A version-1 database: before the charging-record outbox, the pacing table and the parties.
    client
        .batch_execute(
            "DROP TABLE cdrs; DROP TABLE pace; DROP TABLE parties; \
             UPDATE mmsrelay_schema SET version = 1",
        )
        .await
        .unwrap();
    let s = Postgres::open(&url, 2, "n0", None).await.unwrap();
    let id = s.next_id().await.unwrap();
    let r = s
        .commit(vec![Op::PutCdr {
            id,
            record: b"x".to_vec(),
            if_applied: vec![],
        }])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Done]);
    let m = s.next_id().await.unwrap();
    s.commit(vec![Op::PutMessage {
        id: m,
        meta: b"m".to_vec(),
        body: b"b".to_vec(),
        parties: vec!["+15550001".into()],
        head: 0,
    }])
    .await
    .unwrap();
    assert_eq!(s.by_party("+15550001", MsgId::MAX, 5).await.unwrap(), [m]);
    let v: i32 = client
        .query_one("SELECT version FROM mmsrelay_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, store::postgres::schema::VERSION);
}

/// A CA, and a certificate it issued for 127.0.0.1 (the host of the test URLs).
fn ca_and_server() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), server.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified_against_the_configured_ca() {
    let (ca, cert, key) = ca_and_server();
    let server = testbed::Postgres::start_tls(&cert, &key);
    server.create_db("tls");
    let dir = testbed::TempDir::new("pg-ca");
    let good = dir.0.join("ca.pem");
    std::fs::write(&good, &ca).unwrap();
    let url = format!("{}?sslmode=require", server.url("tls"));
    let s = Postgres::open(&url, 2, "n0", Some(&good)).await.unwrap();
    let id = s.next_id().await.unwrap();
    s.commit(vec![store::Op::PutIndex {
        key: "k".into(),
        value: vec![1],
    }])
    .await
    .unwrap();
    assert!(id > 0);
    // The session is encrypted (asked of the server itself).
    let (client, conn) = tokio_postgres::connect(&server.url("tls"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let encrypted: i64 = client
        .query_one("SELECT count(*) FROM pg_stat_ssl WHERE ssl", &[])
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "the store's sessions use TLS");
    drop(s);
    // A CA that did not issue the server's certificate: refused, nothing in plaintext instead.
    let (other_ca, _, _) = ca_and_server();
    let bad = dir.0.join("other.pem");
    std::fs::write(&bad, &other_ca).unwrap();
    let Err(e) = Postgres::open(&url, 2, "n0", Some(&bad)).await else {
        panic!("a server the CA does not vouch for must be refused")
    };
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // require without a CA: refused rather than encrypting to whoever answers.
    assert!(Postgres::open(&url, 2, "n0", None).await.is_err());
}
