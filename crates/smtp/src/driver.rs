//! The thin tokio driver of a server [`Session`], generic over the stream (tests use memory
//! pipes), and the listener: allow list, connection limits, graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};

use crate::reply::{codes, Reply};
use crate::server::{PeerInfo, Policy, ReceivedMessage, ServerConfig, Session, Step};

/// Any byte stream a session can run on (TCP, TLS over TCP, an in-memory pipe).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Stores a complete message and says what to answer: `250` only once it is durable.
pub trait MessageHandler: Send + Sync + 'static {
    fn commit(&self, msg: ReceivedMessage) -> impl Future<Output = Reply> + Send;
}

/// Timeouts and TLS of the driver.
#[derive(Clone)]
pub struct DriverConfig {
    /// Longest wait for one complete command (also bounds a client dribbling bytes).
    pub idle_timeout: Duration,
    /// Longest time for the data of one message.
    pub data_timeout: Duration,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// TLS from the first byte (an implicit-TLS listener): the handshake comes before the
    /// greeting, and STARTTLS is not offered.
    pub implicit_tls: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            tls: None,
            implicit_tls: false,
        }
    }
}

async fn write_out(
    stream: &mut Box<dyn Stream>,
    session: &mut Session,
    limit: Duration,
) -> io::Result<()> {
    if session.has_output() {
        let out = session.take_output();
        timeout(limit, stream.write_all(&out))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
        timeout(limit, stream.flush())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "flush timed out"))??;
    }
    Ok(())
}

/// Runs one session to its end. `shutdown` turning `true` ends it at the next point between
/// transactions (with `421 4.3.2`); a transaction in flight is finished first.
pub async fn run_session<H: MessageHandler>(
    stream: Box<dyn Stream>,
    mut session: Session,
    cfg: &DriverConfig,
    handler: &H,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut stream = stream;
    session.greet();
    let mut deadline = Instant::now() + cfg.idle_timeout;
    let mut last_progress = session.progress();
    let mut stopping = *shutdown.borrow();
    loop {
        match session.poll() {
            Step::NeedInput => {
                write_out(&mut stream, &mut session, cfg.idle_timeout).await?;
                if stopping && !session.in_transaction() {
                    session.close_with(codes::shutting_down());
                    continue;
                }
                if session.progress() != last_progress {
                    last_progress = session.progress();
                    let limit = if session.in_data() {
                        cfg.data_timeout
                    } else {
                        cfg.idle_timeout
                    };
                    deadline = Instant::now() + limit;
                }
                tokio::select! {
                    r = timeout_at(deadline, stream.read_buf(session.input_buffer())) => match r {
                        Err(_) => session.close_with(codes::timeout()),
                        Ok(Ok(0)) => return Ok(()),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e),
                    },
                    // `read_buf` is cancel-safe: nothing read is lost when shutdown wins.
                    _ = shutdown.changed(), if !stopping => {
                        stopping = true;
                    }
                }
            }
            Step::Message(msg) => {
                let reply = handler.commit(*msg).await;
                session.message_done(reply);
            }
            Step::StartTls => {
                write_out(&mut stream, &mut session, cfg.idle_timeout).await?;
                let Some(acceptor) = cfg.tls.clone() else {
                    return Err(io::Error::other("STARTTLS without a TLS configuration"));
                };
                let tls = timeout(cfg.idle_timeout, acceptor.accept(stream))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
                let certs = client_certs(tls.get_ref().1);
                stream = Box::new(tls);
                session.tls_established_with(certs);
                deadline = Instant::now() + cfg.idle_timeout;
            }
            Step::Close => {
                let _ = write_out(&mut stream, &mut session, cfg.idle_timeout).await;
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// Who may connect and how many at once.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Sources allowed to connect at all; empty allows everyone.
    pub allow: Vec<IpNet>,
    pub max_connections: usize,
    pub max_per_source: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            allow: Vec::new(),
            max_connections: 1000,
            max_per_source: 100,
        }
    }
}

/// Counts connections per source address; the guard gives the slot back.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

struct SourceGuard {
    map: Arc<PerSource>,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut m = self.map.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl PerSource {
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceGuard> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            map: self.clone(),
            ip,
        })
    }
}

/// Sends one reply and closes (refusals before a session exists).
async fn refuse(mut stream: tokio::net::TcpStream, reply: Reply) {
    let _ = timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(&reply.to_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Accepts connections until `shutdown` turns `true`, then waits for the sessions to end.
pub async fn serve<H: MessageHandler>(
    listener: TcpListener,
    server: Arc<ServerConfig>,
    driver: Arc<DriverConfig>,
    limits: ListenerLimits,
    policy: Arc<dyn Policy>,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_source = Arc::new(PerSource::default());
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, addr): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let _ = tcp.set_nodelay(true);
        let ip = canonical_ip(addr.ip());
        if !limits.allow.is_empty() && !limits.allow.iter().any(|n| n.contains(&ip)) {
            tracing::info!(%addr, "connection refused: source not allowed");
            tasks.spawn(refuse(tcp, codes::access_denied()));
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tasks.spawn(refuse(tcp, codes::too_many_connections()));
            continue;
        };
        let Some(source) = per_source.enter(ip, limits.max_per_source) else {
            tasks.spawn(refuse(tcp, codes::too_many_connections()));
            continue;
        };
        // The session keeps the policy of its start to its end.
        let policy = policy.for_session().unwrap_or_else(|| policy.clone());
        let server = server.clone();
        let (driver, handler, rx) = (driver.clone(), handler.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _slot = slot;
            let _source = source;
            let (stream, session) = match open_stream(tcp, &driver).await {
                Ok((s, certs)) => {
                    let mut peer = PeerInfo::new(addr, driver.implicit_tls);
                    peer.client_certs = certs;
                    (s, Session::new(server, policy, peer))
                }
                Err(e) => {
                    tracing::info!(%addr, error = %e, "TLS handshake failed");
                    return;
                }
            };
            if let Err(e) = run_session(stream, session, &driver, &*handler, rx).await {
                tracing::debug!(%addr, error = %e, "session ended with an error");
            }
        });
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The certificate chain a TLS client presented (DER, its own first).
fn client_certs(conn: &rustls::ServerConnection) -> Vec<Vec<u8>> {
    conn.peer_certificates()
        .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
        .unwrap_or_default()
}

/// The stream a session runs on: the connection itself, or (implicit TLS) the TLS session
/// negotiated on it first, within the idle timeout, with the client's certificates.
async fn open_stream(
    tcp: tokio::net::TcpStream,
    driver: &DriverConfig,
) -> io::Result<(Box<dyn Stream>, Vec<Vec<u8>>)> {
    if !driver.implicit_tls {
        return Ok((Box::new(tcp), Vec::new()));
    }
    let Some(acceptor) = driver.tls.clone() else {
        return Err(io::Error::other("implicit TLS without a TLS configuration"));
    };
    let tls = timeout(driver.idle_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let certs = client_certs(tls.get_ref().1);
    Ok((Box::new(tls), certs))
}

/// IPv4-mapped IPv6 addresses compare as IPv4 against allow lists.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
