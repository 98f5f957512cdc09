//! The crash test: the real binary under load from parallel clients, killed with SIGKILL at
//! random moments and restarted, several times. Clients behave like real peers: a message
//! without a `250` is sent again (same ids) once the relay is back. At the end every message
//! that got a `250` is in the mailbox exactly once, its body whole; duplicate arrivals (the crash fell between
//! the commit and the reply) are counted, and MM4 de-duplication kept them out of the mailbox.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use store::Spool;

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 250;
const KILLS: usize = 5;

/// One SMTP connection that reports failure instead of panicking.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Option<Conn> {
        let w = try_connect_from("127.0.0.2", addr)?;
        w.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let r = BufReader::new(w.try_clone().ok()?);
        let mut c = Conn { w, r };
        c.reply().filter(|g| g.starts_with("220"))?;
        c.cmd("EHLO crash.test").filter(|r| r.starts_with("250"))?;
        Some(c)
    }

    fn reply(&mut self) -> Option<String> {
        let mut last;
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            last = line;
            if last.as_bytes().get(3) != Some(&b'-') {
                return Some(last);
            }
        }
    }

    fn cmd(&mut self, line: &str) -> Option<String> {
        self.w.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        self.reply()
    }

    /// Sends one forward; `Some(true)` only for a 250 after the data.
    fn send(&mut self, rcpt: &str, data: &[u8]) -> Option<bool> {
        // Pipelined like a real MTA: MAIL, RCPT, DATA in one write.
        let cmds = format!("MAIL FROM:<{}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n", sender_b());
        self.w.write_all(cmds.as_bytes()).ok()?;
        let (a, b, c) = (self.reply()?, self.reply()?, self.reply()?);
        if !(a.starts_with("250") && b.starts_with("250") && c.starts_with("354")) {
            return Some(false);
        }
        self.w.write_all(&dot_stuff(data)).ok()?;
        self.w.write_all(b".\r\n").ok()?;
        Some(self.reply()?.starts_with("250"))
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn sigkill_under_load_loses_nothing_acknowledged() {
    let dir = TempDir::new("crash");
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let cfg = config(&dir.0, smtp, "max_connections = 100", "");
    let mut relay = Relay::start(&dir.0, &cfg, smtp);

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..CLIENTS {
        let (acked, attempts) = (acked.clone(), attempts.clone());
        threads.push(std::thread::spawn(move || {
            let number = format!("+155500001{t:02}");
            let rcpt = local(&number);
            let mut conn: Option<Conn> = None;
            for n in 0..PER_CLIENT {
                let tid = format!("K-{t}-{n}");
                let data = forward(&tid, &number, 2048);
                let deadline = Instant::now() + Duration::from_secs(60);
                // Until this message has its 250: a peer never gives up on a message.
                loop {
                    assert!(Instant::now() < deadline, "{tid}: relay never came back");
                    if conn.is_none() {
                        conn = Conn::open(smtp);
                        if conn.is_none() {
                            std::thread::sleep(Duration::from_millis(30));
                            continue;
                        }
                    }
                    attempts.fetch_add(1, Ordering::Relaxed);
                    match conn.as_mut().and_then(|c| c.send(&rcpt, &data)) {
                        Some(true) => {
                            acked.lock().unwrap().push((tid.clone(), number.clone()));
                            break;
                        }
                        Some(false) => {
                            // A refusal: start over on a fresh connection.
                            conn = None;
                        }
                        None => conn = None,
                    }
                }
            }
        }));
    }

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64);
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(200 + rng.next(800)));
        relay.kill9();
        std::thread::sleep(Duration::from_millis(50));
        relay.restart();
    }
    for t in threads {
        t.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(relay.terminate().success());

    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), CLIENTS * PER_CLIENT);
    let s = store::Embedded::open(&relay.store_path()).unwrap();
    // Every acknowledged message is in its subscriber's mailbox exactly once.
    let mut filed: HashMap<String, usize> = HashMap::new();
    for t in 0..CLIENTS {
        let number = format!("+155500001{t:02}");
        for id in wait(s.mailbox(&number)).unwrap() {
            let meta: serde_json::Value =
                serde_json::from_slice(&wait(s.message(id)).unwrap().unwrap()).unwrap();
            let tid = meta["transaction_id"].as_str().unwrap().to_string();
            *filed.entry(tid).or_default() += 1;
        }
    }
    for (tid, _) in &acked {
        assert_eq!(
            filed.get(tid),
            Some(&1),
            "{tid}: acknowledged but filed {:?} times",
            filed.get(tid)
        );
    }
    assert_eq!(
        filed.len(),
        acked.len(),
        "nothing filed that was never sent"
    );
    // Arrivals beyond one per message: resends after a crash between commit and reply.
    // Every stored forward is an arrival (ids are sequential and shared with the RES mails the
    // relay wrote itself and the charging records; the store's next id is above them all).
    let mut arrivals = 0;
    let end = wait(s.next_id()).unwrap();
    for id in 1..end {
        let Some(m) = wait(s.message(id)).unwrap() else {
            continue;
        };
        let meta: serde_json::Value = serde_json::from_slice(&m).unwrap();
        let is_forward = meta["kind"]["mm4"]["message_type"] == "MM4_forward.REQ";
        if is_forward
            && meta["transaction_id"]
                .as_str()
                .is_some_and(|t| t.starts_with("K-"))
        {
            arrivals += 1;
        }
    }
    let duplicates = arrivals - acked.len();
    eprintln!(
        "crash test: {} messages acknowledged, {} attempts, {KILLS} kills, {duplicates} duplicate arrivals (deduplicated)",
        acked.len(),
        attempts.load(Ordering::Relaxed)
    );
    assert!(
        duplicates <= KILLS * CLIENTS,
        "at most one duplicate per connection per crash"
    );
}
