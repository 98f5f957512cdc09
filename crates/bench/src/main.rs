//! `mmsrelay-bench`: the load side of the benchmarks.
//!
//! * `send`: MM4 forwards of a given size (a JPEG-like base64 part) over N concurrent SMTP
//!   connections (pipelined, connections reused), for a count; prints accepted msg/s and the
//!   latency of each transaction (p50/p90/p99/max) as one `key=value` line.
//! * `sink`: an SMTP server that answers like a fast MMSE (nothing stored), optionally folding
//!   the MM4 RES into its reply (XMM4 SYNC).
//! * `idle`: opens N connections, reads each greeting and holds them (for memory per session).
//! * `submit`: MMs originated through the API, over N keep-alive HTTP connections.

mod submit;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use clap::{Parser, Subcommand};
use smtp::client::{OutEnvelope, OutRcpt};
use smtp::client_driver::{unverified_connector, ClientConfig, Connection, Timeouts, TlsMode};

#[derive(Parser)]
#[command(
    name = "mmsrelay-bench",
    about = "MM4 load generator and sink for mmsrelay benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send MM4 forwards and measure.
    Send {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 10)]
        connections: usize,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 102_400)]
        size: usize,
        #[arg(long, default_value = "+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs")]
        from: String,
        #[arg(long, default_value = "+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs")]
        to: String,
        /// Ask for acknowledgements (X-Mms-Ack-Request: Yes, XMM4-RES=SYNC when offered).
        #[arg(long)]
        ack: bool,
        /// Local address to connect from.
        #[arg(long)]
        source: Option<std::net::IpAddr>,
        /// Offered load in messages per second over all connections (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Accept everything, store nothing.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
        /// Advertise XMM4 SYNC and fold the RES into the reply.
        #[arg(long)]
        xmm4: bool,
    },
    /// Submit MMs through the API (`POST /v1/messages`) and measure.
    Submit {
        /// The API's address (host:port).
        #[arg(long)]
        api: SocketAddr,
        #[arg(long, default_value_t = 10)]
        connections: usize,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 102_400)]
        size: usize,
        #[arg(long, default_value = "+15550000001")]
        from: String,
        #[arg(long, default_value = "+491790000001")]
        to: String,
    },
    /// Hold N idle connections open.
    Idle {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds to hold them after all are open.
        #[arg(long, default_value_t = 10)]
        hold: u64,
    },
}

/// An MM4 forward of about `size` octets with a unique transaction and message id.
pub fn forward(tid: &str, to: &str, size: usize, ack: bool, part: &str) -> Vec<u8> {
    let to_hdr = to.split('@').next().unwrap_or(to);
    let mut m = format!(
        "X-Mms-3GPP-MMS-Version: 6.16.0\r\nX-Mms-Message-Type: MM4_forward.REQ\r\n\
X-Mms-Transaction-ID: \"{tid}\"\r\nX-Mms-Message-ID: \"{tid}@mms.mnc002.mcc262.gprs\"\r\n\
Date: Wed, 25 Nov 2026 12:34:56 +0100\r\nFrom: +491721234567/TYPE=PLMN\r\nTo: {to_hdr}\r\n\
X-Mms-Ack-Request: {}\r\nX-Mms-Originator-System: system-user@mms.mnc002.mcc262.gprs\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/related; type=\"image/jpeg\"; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        if ack { "Yes" } else { "No" }
    )
    .into_bytes();
    let want = size.saturating_sub(m.len() + 10);
    m.extend_from_slice(&part.as_bytes()[..want.min(part.len())]);
    m.extend_from_slice(b"\r\n--b1--\r\n");
    m
}

/// Base64 lines of pseudo-random (incompressible, JPEG-like) bytes.
fn jpeg_like(size: usize) -> String {
    let raw: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    b64.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The result of a `send` run.
pub struct Report {
    pub accepted: usize,
    pub refused: usize,
    pub failed: usize,
    pub seconds: f64,
    pub latencies: Vec<Duration>,
}

/// What one connection's task counted: accepted, refused, failed, and each latency.
pub type Counts = (usize, usize, usize, Vec<Duration>);

impl Report {
    /// The sum of the connections' counts, timed from `start` to the last one's end.
    pub async fn gather(tasks: Vec<tokio::task::JoinHandle<Counts>>, start: Instant) -> Report {
        let mut r = Report {
            accepted: 0,
            refused: 0,
            failed: 0,
            seconds: 0.0,
            latencies: Vec::new(),
        };
        for t in tasks {
            if let Ok((a, b, c, l)) = t.await {
                r.accepted += a;
                r.refused += b;
                r.failed += c;
                r.latencies.extend(l);
            }
        }
        r.seconds = start.elapsed().as_secs_f64();
        r
    }

    pub fn line(&self) -> String {
        let mut l = self.latencies.clone();
        l.sort();
        format!(
            "accepted={} refused={} failed={} seconds={:.3} msg_per_s={:.1} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            self.accepted,
            self.refused,
            self.failed,
            self.seconds,
            self.accepted as f64 / self.seconds.max(1e-9),
            percentile(&l, 0.5),
            percentile(&l, 0.9),
            percentile(&l, 0.99),
            l.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        )
    }
}

/// Sends `count` forwards over `connections` connections.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    target: SocketAddr,
    connections: usize,
    count: usize,
    size: usize,
    from: String,
    to: String,
    ack: bool,
    source: Option<std::net::IpAddr>,
    rate: f64,
) -> Report {
    let part = Arc::new(jpeg_like(size));
    let next = Arc::new(AtomicUsize::new(0));
    let cfg = ClientConfig {
        helo: "bench.mmsrelay.invalid".into(),
        timeouts: Timeouts::default(),
        tls: TlsMode::None,
        tls_server_name: "bench".into(),
        connector: unverified_connector(),
        source,
        auth: None,
    };
    let start = Instant::now();
    let run = std::process::id();
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (next, part, cfg, from, to) = (
            next.clone(),
            part.clone(),
            cfg.clone(),
            from.clone(),
            to.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused, mut failed, mut lat) = (0, 0, 0, Vec::new());
            let mut conn: Option<Connection> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                // Open-loop pacing: message i is due at i / rate seconds after the start, so a
                // slow reply shows up as latency, not as a lower offered load.
                if rate > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = forward(&format!("B{run}-{i}"), &to, size, ack, &part);
                let env = OutEnvelope {
                    mail_from: from.clone(),
                    envid: None,
                    ret_hdrs: false,
                    xmm4_sync: ack,
                    rcpts: vec![OutRcpt {
                        address: to.clone(),
                        orcpt: None,
                        notify: 0,
                    }],
                };
                let t = Instant::now();
                if conn.as_ref().is_none_or(|c| !c.reusable()) {
                    conn = Connection::open(target, &cfg).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    failed += 1;
                    continue;
                };
                match c.send(&env, &body).await {
                    Ok(Ok(r)) if r.iter().all(|x| x.reply.is_positive()) => {
                        ok += 1;
                        lat.push(t.elapsed());
                    }
                    Ok(_) => refused += 1,
                    Err(_) => {
                        failed += 1;
                        conn = None;
                    }
                }
            }
            if let Some(c) = conn {
                c.quit().await;
            }
            (ok, refused, failed, lat)
        }));
    }
    Report::gather(tasks, start).await
}

/// Accepts every recipient and message and stores nothing.
struct AcceptAll;

impl smtp::Policy for AcceptAll {
    fn check_mail(&self, _: &smtp::PeerInfo, _: &smtp::MailFrom) -> Result<(), smtp::Reply> {
        Ok(())
    }
    fn check_rcpt(
        &self,
        _: &smtp::PeerInfo,
        _: &smtp::MailFrom,
        _: &smtp::RcptTo,
    ) -> Result<(), smtp::Reply> {
        Ok(())
    }
}

impl smtp::driver::MessageHandler for AcceptAll {
    async fn commit(&self, msg: smtp::ReceivedMessage) -> smtp::Reply {
        if msg.mail_from.xmm4_sync {
            smtp::codes::ok("[MM4 Ok] \"sink\" accepted")
        } else {
            smtp::codes::ok("queued")
        }
    }
}

/// Runs the sink until the process ends.
pub async fn sink(listen: SocketAddr, xmm4: bool) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    let server = Arc::new(smtp::ServerConfig {
        hostname: "sink.mmsrelay.invalid".into(),
        max_message_size: 64 * 1024 * 1024,
        xmm4_versions: if xmm4 { vec!["6.16.0".into()] } else { vec![] },
        // The sink measures the protocol: no trace line.
        trace: None,
        ..smtp::ServerConfig::default()
    });
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let limits = smtp::driver::ListenerLimits {
        max_connections: 100_000,
        max_per_source: 100_000,
        ..Default::default()
    };
    smtp::driver::serve(
        l,
        server,
        Arc::new(smtp::driver::DriverConfig::default()),
        limits,
        Arc::new(AcceptAll),
        Arc::new(AcceptAll),
        rx,
    )
    .await
}

/// Opens `n` connections and reads each greeting; how long that took.
pub async fn idle(target: SocketAddr, n: usize) -> (Vec<tokio::net::TcpStream>, Duration, usize) {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut js = tokio::task::JoinSet::new();
        for _ in chunk {
            js.spawn(async move {
                let mut s = tokio::net::TcpStream::connect(target).await.ok()?;
                let mut buf = [0u8; 256];
                let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                (n > 3 && &buf[..3] == b"220").then_some(s)
            });
        }
        while let Some(r) = js.join_next().await {
            match r.ok().flatten() {
                Some(s) => held.push(s),
                None => failed += 1,
            }
        }
    }
    (held, start.elapsed(), failed)
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match cli.cmd {
        Cmd::Send {
            target,
            connections,
            count,
            size,
            from,
            to,
            ack,
            source,
            rate,
        } => {
            let r = rt.block_on(send(
                target,
                connections,
                count,
                size,
                from,
                to,
                ack,
                source,
                rate,
            ));
            println!("{}", r.line());
            if r.accepted == 0 {
                std::process::exit(1);
            }
        }
        Cmd::Submit {
            api,
            connections,
            count,
            size,
            from,
            to,
        } => {
            let r = rt.block_on(submit::submit(api, connections, count, size, &from, &to));
            println!("{}", r.line());
            if r.accepted == 0 {
                std::process::exit(1);
            }
        }
        Cmd::Sink { listen, xmm4 } => {
            if let Err(e) = rt.block_on(sink(listen, xmm4)) {
                eprintln!("mmsrelay-bench sink: {e}");
                std::process::exit(1);
            }
        }
        Cmd::Idle {
            target,
            connections,
            hold,
        } => {
            let (held, took, failed) = rt.block_on(idle(target, connections));
            println!(
                "open={} failed={} seconds={:.3}",
                held.len(),
                failed,
                took.as_secs_f64()
            );
            std::thread::sleep(Duration::from_secs(hold));
            drop(held);
        }
    }
}
