//! The tokio side of the SMTP client: connect, greeting, EHLO, STARTTLS per policy, one or many
//! transactions on the same connection (pipelined when offered), RFC 5321 §4.5.3.2 timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::client::{
    self, Capabilities, DataMode, OutEnvelope, PlanError, RcptResult, ReplyReader,
};
use crate::driver::Stream;
use crate::reply::Reply;

/// RFC 5321 §4.5.3.2 timeouts (defaults), and the connect timeout.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub greeting: Duration,
    pub command: Duration,
    pub data_init: Duration,
    pub data_block: Duration,
    pub final_dot: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            final_dot: Duration::from_secs(600),
        }
    }
}

/// When to use STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Never.
    None,
    /// When offered; plaintext when not offered.
    Opportunistic,
    /// Always; a server that does not offer it is never sent a message in plaintext.
    Required,
    /// TLS from the first byte (a dedicated port); no STARTTLS.
    Implicit,
}

#[derive(Clone)]
pub struct ClientConfig {
    pub helo: String,
    pub timeouts: Timeouts,
    pub tls: TlsMode,
    /// Server name for SNI.
    pub tls_server_name: String,
    pub connector: tokio_rustls::TlsConnector,
    /// The local address to connect from (peers' allow lists name it); the system's choice when
    /// `None`.
    pub source: Option<std::net::IpAddr>,
    /// SMTP AUTH once TLS is up (never over plaintext).
    pub auth: Option<Credentials>,
}

/// A secret that never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// What we authenticate with (RFC 4954): PLAIN, or LOGIN when only that is offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// Why a session with a server failed (every one of these is a reason to try again later).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
    #[error("connection closed by the server")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(#[from] client::ReplyError),
    #[error("server refused the session: {0}")]
    Refused(Reply),
    #[error("TLS required but the server does not offer STARTTLS")]
    TlsNotOffered,
    #[error("STARTTLS failed: {0}")]
    Tls(String),
    /// The server's certificate did not verify (nothing was sent).
    #[error("certificate: {0}")]
    Certificate(String),
    /// AUTH could not be done (no TLS, no mechanism we speak).
    #[error("AUTH: {0}")]
    Auth(String),
    /// The server refused our credentials.
    #[error("AUTH refused: {0}")]
    AuthRefused(Reply),
}

impl From<std::io::Error> for SessionError {
    /// An I/O error — unless it is the peer refusing our client certificate, which TLS 1.3
    /// reports only on the first read after the handshake: that is said as such.
    fn from(e: std::io::Error) -> SessionError {
        use rustls::AlertDescription as A;
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(
                a @ (A::UnknownCA
                | A::BadCertificate
                | A::CertificateRequired
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied),
            )) => SessionError::Certificate(format!(
                "the peer refused our client certificate ({a:?})"
            )),
            _ => SessionError::Io(e),
        }
    }
}

/// A failed TLS handshake: a certificate that does not verify says so; anything else is a TLS
/// failure.
fn handshake_error(e: std::io::Error) -> SessionError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => SessionError::Certificate(match c {
            rustls::CertificateError::Other(o) => o.to_string(),
            other => format!("{other:?}"),
        }),
        _ => SessionError::Tls(e.to_string()),
    }
}

impl SessionError {
    /// The reply a refusal carried, for error mapping.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SessionError::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// The name the server's certificate is checked against and sent as SNI (an IP address as
/// such; anything unusable as a name checks against a name nothing carries).
fn server_name(cfg: &ClientConfig) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(cfg.tls_server_name.clone()).unwrap_or_else(|_| {
        rustls::pki_types::ServerName::try_from("mmsc.invalid").expect("literal")
    })
}

/// One open SMTP connection, ready for transactions.
pub struct Connection {
    stream: Box<dyn Stream>,
    reader: ReplyReader,
    pub caps: Capabilities,
    pub tls: bool,
    pub addr: SocketAddr,
    timeouts: Timeouts,
    /// Set when the connection cannot carry another transaction.
    broken: bool,
}

/// A TLS client configuration that encrypts without checking the certificate: GRX peers use
/// self-signed certificates, and opportunistic TLS must not fail on them (RFC 7435).
pub fn unverified_connector() -> tokio_rustls::TlsConnector {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

impl Connection {
    async fn read_reply(
        &mut self,
        limit: Duration,
        what: &'static str,
    ) -> Result<Reply, SessionError> {
        let fut = async {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(r) = self.reader.next_reply()? {
                    return Ok(r);
                }
                let n = self.stream.read(&mut buf).await?;
                if n == 0 {
                    return Err(SessionError::Closed);
                }
                self.reader.feed(&buf[..n]);
            }
        };
        match timeout(limit, fut).await {
            Ok(r) => {
                if r.is_err() {
                    self.broken = true;
                }
                r
            }
            Err(_) => {
                self.broken = true;
                Err(SessionError::Timeout(what))
            }
        }
    }

    async fn write(&mut self, bytes: &[u8], limit: Duration) -> Result<(), SessionError> {
        let r = timeout(limit, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.broken = true;
                Err(e.into())
            }
            Err(_) => {
                self.broken = true;
                Err(SessionError::Timeout("write"))
            }
        }
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), SessionError> {
        let t = self.timeouts.command;
        self.write(format!("EHLO {helo}\r\n").as_bytes(), t).await?;
        let r = self.read_reply(t, "EHLO reply").await?;
        if r.is_positive() {
            self.caps = Capabilities::from_ehlo(&r);
            return Ok(());
        }
        // An old server: HELO, no extensions.
        self.write(format!("HELO {helo}\r\n").as_bytes(), t).await?;
        let r = self.read_reply(t, "HELO reply").await?;
        if !r.is_positive() {
            return Err(SessionError::Refused(r));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    /// Connects, reads the greeting, says EHLO and negotiates TLS per `cfg.tls`.
    pub async fn open(addr: SocketAddr, cfg: &ClientConfig) -> Result<Connection, SessionError> {
        let connect = async {
            match cfg.source {
                None => TcpStream::connect(addr).await,
                Some(ip) => {
                    let sock = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    sock.bind(SocketAddr::new(ip, 0))?;
                    sock.connect(addr).await
                }
            }
        };
        let tcp = match timeout(cfg.timeouts.connect, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(SessionError::Connect {
                    addr,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(SessionError::Connect {
                    addr,
                    reason: "timed out".into(),
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        if cfg.tls == TlsMode::Implicit {
            let tls = timeout(
                cfg.timeouts.greeting,
                cfg.connector.connect(server_name(cfg), tcp),
            )
            .await
            .map_err(|_| SessionError::Timeout("TLS handshake"))?
            .map_err(handshake_error)?;
            return Self::handshake(Box::new(tls), addr, cfg).await;
        }
        Self::handshake(Box::new(tcp), addr, cfg).await
    }

    /// The greeting/EHLO/STARTTLS part of [`Connection::open`] over any stream.
    pub async fn handshake(
        stream: Box<dyn Stream>,
        addr: SocketAddr,
        cfg: &ClientConfig,
    ) -> Result<Connection, SessionError> {
        let mut c = Connection {
            stream,
            reader: ReplyReader::new(),
            caps: Capabilities::default(),
            tls: false,
            addr,
            timeouts: cfg.timeouts.clone(),
            broken: false,
        };
        let g = c.read_reply(cfg.timeouts.greeting, "greeting").await?;
        if g.code != 220 {
            return Err(SessionError::Refused(g));
        }
        c.ehlo(&cfg.helo).await?;
        c.negotiate_tls(cfg).await?;
        if let Some(creds) = &cfg.auth {
            c.authenticate(creds).await?;
        }
        Ok(c)
    }

    /// STARTTLS per `cfg.tls` (implicit TLS is up already).
    async fn negotiate_tls(&mut self, cfg: &ClientConfig) -> Result<(), SessionError> {
        match cfg.tls {
            TlsMode::None => return Ok(()),
            TlsMode::Implicit => {
                self.tls = true;
                return Ok(());
            }
            TlsMode::Opportunistic | TlsMode::Required => {}
        }
        if !self.caps.starttls {
            if cfg.tls == TlsMode::Required {
                let _ = self.write(b"QUIT\r\n", Duration::from_secs(5)).await;
                return Err(SessionError::TlsNotOffered);
            }
            return Ok(());
        }
        let t = cfg.timeouts.command;
        self.write(b"STARTTLS\r\n", t).await?;
        let r = self.read_reply(t, "STARTTLS reply").await?;
        if r.code != 220 {
            if cfg.tls == TlsMode::Required {
                return Err(SessionError::Tls(format!("STARTTLS refused: {r}")));
            }
            return Ok(());
        }
        // Anything the server sent after its 220 was sent in plaintext: never read it.
        self.reader.discard();
        let plain = std::mem::replace(&mut self.stream, Box::new(empty::EmptyDuplex));
        let tls = timeout(t, cfg.connector.connect(server_name(cfg), plain))
            .await
            .map_err(|_| SessionError::Timeout("TLS handshake"))?
            .map_err(handshake_error)?;
        self.stream = Box::new(tls);
        self.tls = true;
        self.ehlo(&cfg.helo).await
    }

    /// AUTH PLAIN, else LOGIN (RFC 4954) — only over TLS: a password never crosses in
    /// plaintext, whatever the server offers.
    async fn authenticate(&mut self, creds: &Credentials) -> Result<(), SessionError> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        if !self.tls {
            let _ = self.write(b"QUIT\r\n", Duration::from_secs(5)).await;
            return Err(SessionError::Auth(
                "the connection is not encrypted: credentials are never sent in plaintext".into(),
            ));
        }
        let offers = |m: &str| self.caps.auth.iter().any(|a| a.eq_ignore_ascii_case(m));
        let (plain, login) = (offers("PLAIN"), offers("LOGIN"));
        let t = self.timeouts.command;
        let pass = creds.password.expose();
        let r = if plain {
            let token = b64(&format!("\0{}\0{pass}", creds.username));
            self.write(format!("AUTH PLAIN {token}\r\n").as_bytes(), t)
                .await?;
            self.read_reply(t, "AUTH reply").await?
        } else if login {
            self.write(b"AUTH LOGIN\r\n", t).await?;
            let mut r = self.read_reply(t, "AUTH reply").await?;
            for answer in [b64(&creds.username), b64(pass)] {
                if r.code != 334 {
                    break;
                }
                self.write(format!("{answer}\r\n").as_bytes(), t).await?;
                r = self.read_reply(t, "AUTH reply").await?;
            }
            r
        } else {
            let offered = if self.caps.auth.is_empty() {
                "none".to_string()
            } else {
                self.caps.auth.join(" ")
            };
            let _ = self.write(b"QUIT\r\n", Duration::from_secs(5)).await;
            return Err(SessionError::Auth(format!(
                "the server offers no AUTH PLAIN or LOGIN (offers: {offered})"
            )));
        };
        if r.code != 235 {
            let _ = self.write(b"QUIT\r\n", Duration::from_secs(5)).await;
            return Err(SessionError::AuthRefused(r));
        }
        Ok(())
    }

    /// Whether another transaction may use this connection.
    pub fn reusable(&self) -> bool {
        !self.broken
    }

    /// Whether an idle connection is still open: the server has neither closed it nor said
    /// anything unasked (a `421` idle timeout notice). Looks without waiting.
    pub fn is_alive(&mut self) -> bool {
        if self.broken {
            return false;
        }
        use tokio::io::AsyncRead;
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf) {
            std::task::Poll::Pending => true,
            // Closed, failed, or spoke out of turn: either way not a connection to use.
            std::task::Poll::Ready(_) => {
                self.broken = true;
                false
            }
        }
    }

    /// Runs one transaction. `Err(PlanError)` means it was not attempted (too big for the
    /// server's SIZE, or a body the server cannot take); `Err(SessionError)` means the
    /// connection failed and every recipient must be tried again.
    pub async fn send(
        &mut self,
        env: &OutEnvelope,
        body: &[u8],
    ) -> Result<Result<Vec<RcptResult>, PlanError>, SessionError> {
        let plan = match client::plan(env, body, &self.caps) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let t = self.timeouts.clone();
        let n = env.rcpts.len();
        let (data_cmd, mut front) = plan
            .commands
            .split_last()
            .map(|(d, f)| (d.clone(), f.to_vec()))
            .expect("MAIL and DATA");
        let mut rcpt_replies = Vec::with_capacity(n);
        let mail_reply;
        let mut data_reply = None;
        let mut final_reply = None;
        if plan.pipelined {
            // MAIL, every RCPT and DATA/BDAT in one write (RFC 2920); BDAT's chunk with them.
            front.push(data_cmd.clone());
            let mut flight: Vec<u8> = front.concat();
            if plan.mode == DataMode::Bdat {
                flight.extend_from_slice(&plan.payload);
            }
            self.write(&flight, t.command).await?;
            mail_reply = self.read_reply(t.command, "MAIL reply").await?;
            for _ in 0..n {
                rcpt_replies.push(self.read_reply(t.command, "RCPT reply").await?);
            }
            match plan.mode {
                DataMode::Bdat => {
                    let r = self.read_reply(t.final_dot, "BDAT reply").await?;
                    data_reply = Some(r.clone());
                    final_reply = Some(r);
                }
                DataMode::Data => {
                    let r = self.read_reply(t.data_init, "DATA reply").await?;
                    if r.code == 354 {
                        let any =
                            rcpt_replies.iter().any(Reply::is_positive) && mail_reply.is_positive();
                        // No valid recipient but the server wants data anyway: end it empty.
                        let payload: &[u8] = if any { &plan.payload } else { b".\r\n" };
                        self.write(payload, t.data_block).await?;
                        final_reply = Some(self.read_reply(t.final_dot, "final reply").await?);
                    }
                    data_reply = Some(r);
                }
            }
        } else {
            self.write(&front[0], t.command).await?;
            mail_reply = self.read_reply(t.command, "MAIL reply").await?;
            if mail_reply.is_positive() {
                for cmd in &front[1..] {
                    self.write(cmd, t.command).await?;
                    rcpt_replies.push(self.read_reply(t.command, "RCPT reply").await?);
                }
                if rcpt_replies.iter().any(Reply::is_positive) {
                    match plan.mode {
                        DataMode::Bdat => {
                            let mut chunk = data_cmd.clone();
                            chunk.extend_from_slice(&plan.payload);
                            self.write(&chunk, t.data_block).await?;
                            let r = self.read_reply(t.final_dot, "BDAT reply").await?;
                            data_reply = Some(r.clone());
                            final_reply = Some(r);
                        }
                        DataMode::Data => {
                            self.write(&data_cmd, t.command).await?;
                            let r = self.read_reply(t.data_init, "DATA reply").await?;
                            if r.code == 354 {
                                self.write(&plan.payload, t.data_block).await?;
                                final_reply =
                                    Some(self.read_reply(t.final_dot, "final reply").await?);
                            }
                            data_reply = Some(r);
                        }
                    }
                } else {
                    self.rset().await?;
                }
            } else {
                rcpt_replies = vec![mail_reply.clone(); n];
            }
        }
        while rcpt_replies.len() < n {
            rcpt_replies.push(mail_reply.clone());
        }
        Ok(Ok(client::interpret(
            &mail_reply,
            &rcpt_replies,
            data_reply.as_ref(),
            final_reply.as_ref(),
            &self.caps,
        )))
    }

    pub async fn rset(&mut self) -> Result<(), SessionError> {
        let t = self.timeouts.command;
        self.write(b"RSET\r\n", t).await?;
        let r = self.read_reply(t, "RSET reply").await?;
        if !r.is_positive() {
            self.broken = true;
        }
        Ok(())
    }

    /// Ends the session politely (errors do not matter any more).
    pub async fn quit(mut self) {
        let t = Duration::from_secs(5);
        if self.write(b"QUIT\r\n", t).await.is_ok() {
            let _ = self.read_reply(t, "QUIT reply").await;
        }
        let _ = self.stream.shutdown().await;
    }
}

mod empty {
    //! A placeholder stream while the real one is moved into the TLS layer.
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    pub struct EmptyDuplex;

    impl AsyncRead for EmptyDuplex {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for EmptyDuplex {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}
