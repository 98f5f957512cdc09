//! A private PostgreSQL server (Debian's `postgresql` package) for tests: its own cluster in a
//! temporary directory, on 127.0.0.1 and a free port, trust authentication for the `mmsrelay`
//! role, stopped by its PID. The server refuses to run as root, so it runs as the package's
//! `postgres` user.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, TempDir};

/// Where Debian installs the server binaries (the newest major version present).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL (Debian package postgresql) is not installed")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let v = versions.last().expect("no PostgreSQL version installed");
    PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"))
}

/// Runs `program` as the `postgres` user.
fn as_postgres(program: PathBuf) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(program);
    c
}

pub struct Postgres {
    child: Option<Child>,
    pub addr: SocketAddr,
    data: PathBuf,
    /// Serving TLS with `server.crt`/`server.key` in the data directory.
    tls: bool,
    pub dir: TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Postgres {
    /// A new cluster, started; waits until it answers.
    pub fn start() -> Postgres {
        Self::start_with(None)
    }

    /// [`Postgres::start`], serving TLS (as well as plaintext) with this certificate chain and
    /// key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Postgres {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Postgres {
        let dir = TempDir::new("postgres");
        let data = dir.0.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir.0)
            .status()
            .unwrap();
        assert!(ok.success(), "chown to postgres");
        let out = as_postgres(bin_dir().join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "mmsrelay", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((cert, key)) = tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let p = data.join(name);
                std::fs::write(&p, pem).unwrap();
                let _ = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&p)
                    .status();
                let _ = Command::new("chmod").arg("600").arg(&p).status();
            }
        }
        let port = free_port("127.0.0.1");
        let mut pg = Postgres {
            child: None,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            data,
            tls: tls.is_some(),
            dir,
        };
        pg.resume();
        pg
    }

    /// The libpq URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://mmsrelay@{}/{db}", self.addr)
    }

    /// Starts the server again (after [`Postgres::stop`]) on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = as_postgres(bin_dir().join("postgres"));
        if self.tls {
            cmd.args(["-c", "ssl=on"]);
        }
        let child = cmd
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.addr.port().to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.data.display()))
            .args(["-c", "max_connections=300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: open sessions are ended) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its PID.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGINT);
            }
            let _ = c.wait();
        }
    }

    /// Creates an empty database `db`.
    pub fn create_db(&self, db: &str) {
        let out = Command::new(bin_dir().join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .args(["-U", "mmsrelay", db])
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
