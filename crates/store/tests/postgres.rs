//! The conformance battery on the PostgreSQL backend, against a real server (Debian's
//! `postgresql`, a private cluster started by the test): every check on a database of its own.

mod conformance;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use conformance::Backend;
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
        Arc::new(Postgres::open(&url, 8, "n0").await.unwrap())
    }

    async fn reopen(&self, s: Arc<dyn Spool>) -> Arc<dyn Spool> {
        drop(s);
        let url = self.current.lock().unwrap().clone();
        Arc::new(Postgres::open(&url, 8, "n0").await.unwrap())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let server = testbed::Postgres::start();
    server.create_db("newer");
    let url = server.url("newer");
    drop(Postgres::open(&url, 2, "n0").await.unwrap());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute("UPDATE mmsrelay_schema SET version = version + 1", &[])
        .await
        .unwrap();
    let Err(e) = Postgres::open(&url, 2, "n0").await else {
        panic!("a node must refuse a newer schema")
    };
    assert!(e.to_string().contains("newer than this build"), "{e}");
}
