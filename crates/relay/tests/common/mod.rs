//! Test support: scripted SMTP peers on loopback that behave like real ones (and like broken
//! ones), and a relay outbound engine wired to them.
#![allow(dead_code)]

use std::net::SocketAddr;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How a test peer behaves.
#[derive(Debug, Clone)]
pub enum Behaviour {
    Accept,
    /// The first `n` transactions get `451 4.3.0` after the data, then accepted.
    TempFailFirst(usize),
    /// RCPT for this address gets `550 5.1.1`.
    RejectRcpt(String),
    /// `552 5.3.4` after the data.
    TooBig,
    /// Advertises `SIZE <n>`.
    SizeLimit(usize),
    /// Closes the connection halfway through the data.
    CloseMidData,
    /// Never answers the final dot.
    StallAfterData,
    /// Sends replies one octet at a time, and several at once where allowed.
    OddWrites,
    /// Advertises XMM4 SYNC and folds the RES.
    Xmm4Sync,
    /// Advertises no 8BITMIME.
    SevenBitOnly,
    /// Closes the connection right after answering each message (as peers that drop idle
    /// sessions do).
    CloseAfterEach,
    /// Takes the connection and never says anything (a stalled peer).
    Silent,
}

/// One message a peer received.
#[derive(Debug, Clone)]
pub struct Got {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    /// When its MAIL command arrived.
    pub at: std::time::Instant,
}

pub struct Peer {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Got>>>,
    pub transactions: Arc<Mutex<usize>>,
    pub data_started: Arc<Mutex<usize>>,
    /// Connections accepted.
    pub connections: Arc<Mutex<usize>>,
}

async fn write_odd(w: &mut tokio::net::tcp::OwnedWriteHalf, s: &str, odd: bool) {
    if odd {
        for b in s.as_bytes() {
            let _ = w.write_all(&[*b]).await;
            let _ = w.flush().await;
        }
    } else {
        let _ = w.write_all(s.as_bytes()).await;
    }
}

/// Starts a peer on `ip` (port chosen by the system).
pub async fn peer(ip: &str, b: Behaviour) -> Peer {
    let l = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let transactions = Arc::new(Mutex::new(0usize));
    let data_started = Arc::new(Mutex::new(0usize));
    let connections = Arc::new(Mutex::new(0usize));
    let (g, t, d, n) = (
        got.clone(),
        transactions.clone(),
        data_started.clone(),
        connections.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            *n.lock().unwrap() += 1;
            let (b, g, t, d) = (b.clone(), g.clone(), t.clone(), d.clone());
            tokio::spawn(async move {
                if matches!(b, Behaviour::Silent) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(s);
                    return;
                }
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let odd = matches!(b, Behaviour::OddWrites);
                write_odd(&mut w, "220 peer.test ESMTP test\r\n", odd).await;
                let mut mail_from = String::new();
                let mut mail_at = std::time::Instant::now();
                let mut rcpts: Vec<String> = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    if upper.starts_with("EHLO") {
                        let size = match &b {
                            Behaviour::SizeLimit(n) => format!("250-SIZE {n}\r\n"),
                            _ => "250-SIZE 10485760\r\n".into(),
                        };
                        let xmm4 = if matches!(b, Behaviour::Xmm4Sync) {
                            "250-XMM4 V=6.16.0 SYNC\r\n"
                        } else {
                            ""
                        };
                        let eight = if matches!(b, Behaviour::SevenBitOnly) {
                            ""
                        } else {
                            "250-8BITMIME\r\n"
                        };
                        let resp = format!("250-peer.test\r\n{size}250-PIPELINING\r\n{eight}{xmm4}250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n");
                        write_odd(&mut w, &resp, odd).await;
                    } else if upper.starts_with("MAIL FROM:") {
                        mail_from = line.trim_end().to_string();
                        mail_at = std::time::Instant::now();
                        rcpts.clear();
                        write_odd(&mut w, "250 2.1.0 ok\r\n", odd).await;
                    } else if upper.starts_with("RCPT TO:") {
                        let addr = line[8..]
                            .trim()
                            .trim_start_matches('<')
                            .split('>')
                            .next()
                            .unwrap_or("")
                            .to_string();
                        if let Behaviour::RejectRcpt(bad) = &b {
                            if addr == *bad {
                                write_odd(&mut w, "550 5.1.1 <no such user>\r\n", odd).await;
                                continue;
                            }
                        }
                        rcpts.push(line.trim_end().to_string());
                        write_odd(&mut w, "250 2.1.5 ok\r\n", odd).await;
                    } else if upper.starts_with("DATA") {
                        if rcpts.is_empty() {
                            write_odd(&mut w, "554 5.5.1 no valid recipients\r\n", odd).await;
                            continue;
                        }
                        *d.lock().unwrap() += 1;
                        write_odd(&mut w, "354 go ahead\r\n", odd).await;
                        let mut data = Vec::new();
                        loop {
                            let mut l2 = Vec::new();
                            if r.read_until(b'\n', &mut l2).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if l2 == b".\r\n" {
                                break;
                            }
                            if matches!(b, Behaviour::CloseMidData) && data.len() > 200 {
                                return;
                            }
                            let l2 = if l2.starts_with(b"..") {
                                l2[1..].to_vec()
                            } else {
                                l2
                            };
                            data.extend_from_slice(&l2);
                        }
                        let n = {
                            let mut t = t.lock().unwrap();
                            *t += 1;
                            *t
                        };
                        let reply = match &b {
                            Behaviour::TempFailFirst(k) if n <= *k => {
                                "451 4.3.0 try again later\r\n".to_string()
                            }
                            Behaviour::TooBig => "552 5.3.4 message too big\r\n".to_string(),
                            Behaviour::StallAfterData => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            Behaviour::Xmm4Sync if mail_from.contains("XMM4-RES=SYNC") => {
                                "250 2.0.0 [MM4 Ok] \"T\" accepted\r\n".to_string()
                            }
                            _ => "250 2.0.0 queued\r\n".to_string(),
                        };
                        if reply.starts_with("250") {
                            g.lock().unwrap().push(Got {
                                mail_from: mail_from.clone(),
                                rcpts: rcpts.clone(),
                                data,
                                at: mail_at,
                            });
                        }
                        write_odd(&mut w, &reply, odd).await;
                        if matches!(b, Behaviour::CloseAfterEach) {
                            let _ = w.shutdown().await;
                            return;
                        }
                    } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                        write_odd(&mut w, "250 2.0.0 ok\r\n", odd).await;
                    } else if upper.starts_with("QUIT") {
                        write_odd(&mut w, "221 2.0.0 bye\r\n", odd).await;
                        return;
                    } else {
                        write_odd(&mut w, "502 5.5.1 not implemented\r\n", odd).await;
                    }
                }
            });
        }
    });
    Peer {
        addr,
        got,
        transactions,
        data_started,
        connections,
    }
}

#[allow(unused_imports)]
pub use testbed::TempDir;

/// Drains a TcpStream-ish reader fully (unused helper kept for symmetry).
pub async fn read_all<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v).await;
    v
}
