//! The conformance battery on the embedded (redb) backend: one test per check.

mod conformance;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use conformance::Backend;
use store::{Embedded, Spool};

/// Each fresh store in its own directory (removed when the test ends); reopening finds it.
#[derive(Default)]
struct Redb {
    dirs: Mutex<Vec<PathBuf>>,
}

impl Backend for Redb {
    async fn fresh(&self) -> Arc<dyn Spool> {
        let dir = std::env::temp_dir().join(format!(
            "store-conformance-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        self.dirs.lock().unwrap().push(dir.clone());
        Arc::new(Embedded::open(&dir).unwrap())
    }

    async fn reopen(&self, s: Arc<dyn Spool>) -> Arc<dyn Spool> {
        drop(s);
        let dir = self.dirs.lock().unwrap().last().unwrap().clone();
        Arc::new(Embedded::open(&dir).unwrap())
    }
}

impl Drop for Redb {
    fn drop(&mut self) {
        for d in self.dirs.lock().unwrap().drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

battery!(Redb::default());
