//! The sans-IO ESMTP server session: bytes in, replies and events out.
//!
//! The driver feeds what it read ([`Session::input_buffer`]), then calls [`Session::poll`] until
//! it returns [`Step::NeedInput`], writing [`Session::take_output`] before each read: replies to
//! pipelined commands therefore leave in one write per command group. A complete message comes
//! out as [`Step::Message`]; the driver stores it and hands the verdict back with
//! [`Session::message_done`] — the `250` is never produced by the session itself.
//!
//! The defences of the reliability bar live here, so that each can be tested byte by byte:
//! strict end of data (only CRLF.CRLF; bare CR or LF refuses the message), bounded command and
//! data lines, recipient and size limits, pipelining synchronisation, STARTTLS buffer discard and
//! state reset, NUL in commands, non-ASCII addresses without SMTPUTF8, hop count, error count.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::{Error as ProtoError, Request};

use crate::reply::{codes, Reply};

/// The longest command line RFC 5321 allows (§4.5.3.1.4), CRLF included.
const COMMAND_LINE: usize = 512;

/// Limits and identity of a listener. Every limit has a safe default.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Name in the greeting and the EHLO answer.
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Command lines up to this length are accepted (RFC 5321 says 512; peers send longer).
    pub max_command_line: usize,
    /// Data lines longer than this refuse the message (RFC 5321 §4.5.3.1.6).
    pub max_data_line: usize,
    /// Errors after which the session is closed.
    pub max_errors: u32,
    /// `Received:` headers beyond this refuse the message as a loop.
    pub max_received: usize,
    /// STARTTLS is offered (a certificate is configured).
    pub tls_available: bool,
    /// `AUTH PLAIN LOGIN` is offered once TLS is up (some peers must authenticate).
    pub auth_available: bool,
    /// Versions advertised in `XMM4 V=…`; empty disables the XMM4 extension.
    pub xmm4_versions: Vec<String>,
    /// Put our `Received:` line on top of every message, with the time from this clock
    /// (RFC 5321 §4.4: a server must); `None` only for tools that measure the protocol.
    pub trace: Option<crate::trace::Now>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            max_message_size: 2 * 1024 * 1024,
            max_recipients: 100,
            max_command_line: 2048,
            max_data_line: 998,
            max_errors: 20,
            max_received: 50,
            tls_available: false,
            auth_available: false,
            xmm4_versions: vec!["6.16.0".into(), "6.10.0".into(), "5.5.0".into()],
            trace: Some(crate::trace::Now::system()),
        }
    }
}

/// Who is on the other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub tls: bool,
    /// The identity it proved with AUTH (as the policy named it).
    pub authenticated: Option<String>,
    /// The certificate chain it presented in the TLS handshake (DER, its own first); checked
    /// against a CA by the handshake only when one is configured.
    pub client_certs: Vec<Vec<u8>>,
}

impl PeerInfo {
    pub fn new(addr: SocketAddr, tls: bool) -> PeerInfo {
        PeerInfo {
            addr,
            tls,
            authenticated: None,
            client_certs: Vec::new(),
        }
    }
}

/// `BODY=` of MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// `RET=` of MAIL FROM (RFC 3461).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// The reverse path and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// Empty for the null reverse path `<>`.
    pub address: String,
    pub size: Option<usize>,
    pub body: BodyType,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub smtputf8: bool,
    /// `XMM4-RES=SYNC`: fold the MM4 RES into the final reply (EXTENSIONS §1).
    pub xmm4_sync: bool,
}

/// `NOTIFY=` of RCPT TO (RFC 3461), as bit flags.
pub mod notify {
    pub const SUCCESS: u8 = 1;
    pub const FAILURE: u8 = 2;
    pub const DELAY: u8 = 4;
    pub const NEVER: u8 = 8;
}

/// One accepted forward path and its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub address: String,
    pub notify: u8,
    /// `ORCPT=` as sent (`rfc822;` prefix removed, xtext decoded).
    pub orcpt: Option<String>,
}

/// Decides who may send what. Implemented by the relay; must not block.
pub trait Policy: Send + Sync {
    /// Before `250` to MAIL FROM (e.g. free space, queue capacity).
    fn check_mail(&self, peer: &PeerInfo, mail: &MailFrom) -> Result<(), Reply>;
    /// Before `250` to RCPT TO (local, system, transit or refused).
    fn check_rcpt(&self, peer: &PeerInfo, mail: &MailFrom, rcpt: &RcptTo) -> Result<(), Reply>;
    /// SMTP AUTH (only ever asked over TLS): the identity these credentials prove, or `None`.
    fn authenticate(&self, _peer: &PeerInfo, _username: &str, _password: &str) -> Option<String> {
        None
    }
    /// Whether AUTH is offered (over TLS), besides `ServerConfig::auth_available`.
    fn offers_auth(&self) -> bool {
        false
    }
    /// The policy one new session keeps to its end (a configuration reloaded meanwhile applies
    /// to later sessions); `None`: this one.
    fn for_session(&self) -> Option<Arc<dyn Policy>> {
        None
    }
}

/// A complete message, for the driver to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub peer: PeerInfo,
    pub helo: String,
    pub mail_from: MailFrom,
    pub rcpts: Vec<RcptTo>,
    /// The message as received: dot-unstuffed, CRLF line ends.
    pub data: Vec<u8>,
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Write the pending output, then read more input.
    NeedInput,
    /// Store this message and call [`Session::message_done`] with the verdict.
    Message(Box<ReceivedMessage>),
    /// Write the pending output (the `220`), run the TLS handshake, then call
    /// [`Session::tls_established`].
    StartTls,
    /// Write the pending output and close the connection.
    Close,
}

/// Why a message is refused once its data has been read (reported after the end of data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataFault {
    BareLineEnd,
    LineTooLong,
    TooBig,
}

impl DataFault {
    fn reply(self) -> Reply {
        match self {
            DataFault::BareLineEnd => codes::bare_line_end(),
            DataFault::LineTooLong => codes::data_line_too_long(),
            DataFault::TooBig => codes::message_too_big(),
        }
    }
}

#[derive(Debug)]
struct Transaction {
    mail: MailFrom,
    rcpts: Vec<RcptTo>,
    data: Vec<u8>,
    fault: Option<DataFault>,
    /// Octets of our `Received:` line at the start of `data` (not counted against SIZE).
    trace_len: usize,
    /// A BDAT chunk was received: DATA is no longer allowed in this transaction.
    bdat: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Command,
    /// Reading DATA; `mid_line` is set while a line too long to buffer is being skipped.
    Data {
        mid_line: bool,
    },
    /// Reading a BDAT chunk of `remaining` octets; `discard` when the chunk is refused.
    Bdat {
        remaining: usize,
        last: bool,
        discard: bool,
    },
    /// A message was handed to the driver; waiting for `message_done`.
    AwaitCommit,
    /// AUTH in progress: the next line is the client's (base64) answer to our `334`.
    Auth(AuthStep),
    Closed,
}

/// Where an AUTH exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthStep {
    /// `AUTH PLAIN` without an initial response: the credentials come next.
    Plain,
    /// `AUTH LOGIN`: the user name comes next.
    LoginUser,
    /// `AUTH LOGIN`: the password comes next (the user name is in `Session::auth_user`).
    LoginPassword,
}

/// One SMTP server session.
pub struct Session {
    cfg: Arc<ServerConfig>,
    policy: Arc<dyn Policy>,
    peer: PeerInfo,
    state: State,
    input: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    helo: Option<String>,
    /// The client said EHLO (not HELO): the trace line says ESMTP.
    extended: bool,
    tx: Option<Transaction>,
    errors: u32,
    /// Skipping the rest of an over-long command line.
    discarding_line: bool,
    /// Counts completed commands, for the driver's per-command deadline.
    progress: u64,
    /// Set once QUIT or a fatal error closed the session.
    closing: bool,
    /// `AUTH LOGIN`: the user name, while its password is awaited.
    auth_user: Option<String>,
}

/// Room for one read while message data flows: the reads of a 100 KB message are a few
/// instead of 25 (one `recv` per 4 KiB was the largest syscall count per MM in the profile).
const DATA_READ: usize = 64 * 1024;
/// Room for one read of commands, and about what an idle session keeps.
const COMMAND_READ: usize = 4096;

impl Session {
    pub fn new(cfg: Arc<ServerConfig>, policy: Arc<dyn Policy>, peer: PeerInfo) -> Self {
        Session {
            cfg,
            policy,
            peer,
            state: State::Command,
            input: Vec::new(),
            pos: 0,
            out: Vec::new(),
            helo: None,
            extended: false,
            tx: None,
            errors: 0,
            discarding_line: false,
            progress: 0,
            closing: false,
            auth_user: None,
        }
    }

    /// The greeting (`220 <hostname> ESMTP mmsrelay`), queued as output.
    pub fn greet(&mut self) {
        Reply::plain(220, vec![format!("{} ESMTP mmsrelay", self.cfg.hostname)])
            .write_to(&mut self.out);
    }

    /// Queues a reply that ends the session (timeouts, shutdown, limits decided by the driver).
    pub fn close_with(&mut self, reply: Reply) {
        reply.write_to(&mut self.out);
        self.closing = true;
        self.state = State::Closed;
    }

    /// The buffer to read into: bytes appended to it are input for the next `poll`.
    pub fn input_buffer(&mut self) -> &mut Vec<u8> {
        let data = self.in_data();
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
            // Give memory back between messages: idle sessions must stay small.
            if !data && self.input.capacity() > 2 * COMMAND_READ {
                self.input.shrink_to(COMMAND_READ);
            }
        } else if self.pos > 0 && self.pos >= self.input.len() / 2 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input
            .reserve(if data { DATA_READ } else { COMMAND_READ });
        &mut self.input
    }

    /// Appends input (for tests and drivers that read elsewhere).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input_buffer().extend_from_slice(bytes);
    }

    /// Replies produced so far; the driver writes them in one go.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Completed commands so far (the driver resets its per-command deadline when it moves).
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// Whether message data is being read (the driver applies the data deadline then).
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data { .. } | State::Bdat { .. })
    }

    /// Whether a transaction is open (MAIL given, not yet finished): shutdown waits for it.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some() || self.state == State::AwaitCommit
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    fn reply(&mut self, r: Reply) {
        if r.code >= 400 {
            self.errors += 1;
        }
        r.write_to(&mut self.out);
        if self.errors > self.cfg.max_errors && !self.closing {
            codes::too_many_errors().write_to(&mut self.out);
            self.closing = true;
            self.state = State::Closed;
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.input[self.pos..]
    }

    /// Processes buffered input until the driver has something to do.
    pub fn poll(&mut self) -> Step {
        loop {
            if self.closing || self.state == State::Closed {
                self.state = State::Closed;
                return Step::Close;
            }
            match self.state {
                State::Closed => return Step::Close,
                State::AwaitCommit => return Step::NeedInput,
                State::Auth(step) => match self.next_line() {
                    None => return Step::NeedInput,
                    Some(Err(())) => self.state = State::Command,
                    Some(Ok((start, end))) => self.auth_answer(step, start, end),
                },
                State::Command => match self.next_line() {
                    None => return Step::NeedInput,
                    Some(Err(())) => continue,
                    Some(Ok((start, end))) => {
                        if let Some(step) = self.command(start, end) {
                            return step;
                        }
                    }
                },
                State::Data { mid_line } => match self.data(mid_line) {
                    Some(step) => return step,
                    None => {
                        if matches!(self.state, State::Data { .. }) {
                            return Step::NeedInput;
                        }
                    }
                },
                State::Bdat {
                    remaining,
                    last,
                    discard,
                } => {
                    if let Some(step) = self.bdat(remaining, last, discard) {
                        return step;
                    }
                    if matches!(self.state, State::Bdat { .. }) {
                        return Step::NeedInput;
                    }
                }
            }
        }
    }

    /// The next complete command line as a range of `input`, `Err` when a line was refused
    /// (too long), `None` when more input is needed. Over-long lines are never buffered whole.
    fn next_line(&mut self) -> Option<Result<(usize, usize), ()>> {
        let buf = self.buffered();
        match memchr::memchr(b'\n', buf) {
            Some(i) => {
                let (start, end) = (self.pos, self.pos + i + 1);
                self.pos = end;
                if self.discarding_line || end - start > self.cfg.max_command_line {
                    self.discarding_line = false;
                    self.progress += 1;
                    self.reply(codes::line_too_long());
                    return Some(Err(()));
                }
                Some(Ok((start, end)))
            }
            None => {
                if buf.len() > self.cfg.max_command_line {
                    // Drop what we have; the reply goes out when the line finally ends.
                    self.discarding_line = true;
                    self.pos = self.input.len();
                }
                None
            }
        }
    }

    fn command(&mut self, start: usize, end: usize) -> Option<Step> {
        self.progress += 1;
        let line: Vec<u8> = self.input[start..end].to_vec();
        if line.contains(&0) {
            self.reply(codes::nul_in_command());
            return None;
        }
        // RFC 5321 §4.5.3.1.4: 512 octets, CRLF included. Only MAIL and RCPT may be longer —
        // the extensions we offer (SIZE, DSN's ENVID and ORCPT, BODY, SMTPUTF8) raise their
        // limit — up to `max_command_line`.
        if line.len() > COMMAND_LINE {
            let verb = line.get(..4).map(<[u8]>::to_ascii_uppercase);
            if !matches!(verb.as_deref(), Some(b"MAIL" | b"RCPT")) {
                self.reply(codes::line_too_long());
                return None;
            }
        }
        // Our private MAIL parameter, taken out before the standard parser sees the line.
        let (line, xmm4_sync) = take_xmm4_param(&line);
        // Unqualified MM4 paths (`<+1555…/TYPE=PLMN>`) are qualified with a placeholder the
        // standard parser accepts, and the placeholder is removed again after parsing.
        let (line, unqualified) = qualify_path(&line);
        let parsed = Request::parse(&mut line.iter()).map(|r| match r {
            Request::Mail { mut from } if unqualified => {
                from.address = Cow::Owned(strip_placeholder(&from.address));
                Request::Mail { from }
            }
            Request::Rcpt { mut to } if unqualified => {
                to.address = Cow::Owned(strip_placeholder(&to.address));
                Request::Rcpt { to }
            }
            other => other,
        });
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                let verb = line
                    .split(|b| b.is_ascii_whitespace())
                    .next()
                    .map(|v| String::from_utf8_lossy(v).to_ascii_uppercase())
                    .unwrap_or_default();
                let r = self.parse_error(&verb, e);
                self.reply(r);
                return None;
            }
        };
        let more_input = !self.buffered().is_empty();
        match req {
            Request::Ehlo { host } => {
                if more_input {
                    return Some(self.desync());
                }
                self.ehlo(host.into_owned(), true);
            }
            Request::Helo { host } => {
                if more_input {
                    return Some(self.desync());
                }
                self.ehlo(host.into_owned(), false);
            }
            Request::Lhlo { .. } => self.reply(codes::unknown_command()),
            Request::Mail { from } => self.mail(from, xmm4_sync),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => {
                if more_input {
                    return Some(self.desync());
                }
                self.data_command();
            }
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat_command(chunk_size, is_last),
            Request::Rset => {
                self.tx = None;
                self.reply(codes::ok("Reset OK"));
            }
            Request::Noop { .. } => self.reply(codes::ok("OK")),
            Request::Quit => {
                self.reply(codes::closing());
                self.closing = true;
                return Some(Step::Close);
            }
            Request::Vrfy { .. } => self.reply(codes::vrfy()),
            Request::Help { .. } => self.reply(codes::help()),
            Request::StartTls => return self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.reply(codes::not_implemented()),
        }
        None
    }

    fn desync(&mut self) -> Step {
        self.close_with(codes::sync_error());
        Step::Close
    }

    fn parse_error(&self, verb: &str, e: ProtoError) -> Reply {
        match e {
            ProtoError::UnknownCommand => codes::unknown_command(),
            ProtoError::InvalidSenderAddress => {
                Reply::new(501, (5, 1, 7), "Bad sender address syntax")
            }
            ProtoError::InvalidRecipientAddress => {
                Reply::new(501, (5, 1, 3), "Bad recipient address syntax")
            }
            ProtoError::InvalidParameter { param } => {
                codes::syntax(format!("Invalid value of parameter {param}"))
            }
            ProtoError::UnsupportedParameter { param } => codes::unsupported_param(&param),
            ProtoError::SyntaxError { syntax } => codes::syntax(format!("Syntax: {syntax}")),
            ProtoError::NeedsMoreData { .. }
            | ProtoError::ResponseTooLong
            | ProtoError::InvalidResponse { .. } => {
                codes::syntax(format!("Syntax error in {verb}"))
            }
        }
    }

    fn ehlo(&mut self, host: String, extended: bool) {
        self.tx = None;
        let greet = format!("{} greets {}", self.cfg.hostname, host);
        self.helo = Some(host);
        self.extended = extended;
        if !extended {
            self.reply(Reply::new(250, (2, 0, 0), greet));
            return;
        }
        let mut lines = vec![
            greet,
            format!("SIZE {}", self.cfg.max_message_size),
            "PIPELINING".into(),
            "8BITMIME".into(),
            "BINARYMIME".into(),
            "CHUNKING".into(),
            "DSN".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.cfg.tls_available && !self.peer.tls {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() && self.peer.tls {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        if !self.cfg.xmm4_versions.is_empty() {
            lines.push(format!("XMM4 V={} SYNC", self.cfg.xmm4_versions.join(",")));
        }
        self.reply(Reply::plain(250, lines));
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<Cow<'_, str>>, xmm4_sync: bool) {
        if self.helo.is_none() {
            return self.reply(codes::bad_sequence("Send EHLO/HELO first"));
        }
        if self.tx.is_some() {
            return self.reply(codes::bad_sequence("Nested MAIL command"));
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !from.address.is_ascii() && !smtputf8 {
            return self.reply(codes::non_ascii_address());
        }
        if smtputf8 {
            // Not advertised: MM4 addresses are ASCII.
            return self.reply(codes::unsupported_param("SMTPUTF8"));
        }
        if xmm4_sync && self.cfg.xmm4_versions.is_empty() {
            return self.reply(codes::unsupported_param("XMM4-RES"));
        }
        if from.size > self.cfg.max_message_size {
            return self.reply(codes::message_too_big());
        }
        let body = if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            BodyType::BinaryMime
        } else if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        };
        let ret = if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some(Ret::Hdrs)
        } else if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some(Ret::Full)
        } else {
            None
        };
        let mail = MailFrom {
            address: from.address.into_owned(),
            size: (from.size > 0).then_some(from.size),
            body,
            ret,
            envid: from.env_id.map(Cow::into_owned),
            smtputf8,
            xmm4_sync,
        };
        if let Err(r) = self.policy.check_mail(&self.peer, &mail) {
            return self.reply(r);
        }
        // Sized from SIZE= when the client declared it: a 100 KB message then lands in one
        // allocation instead of a chain of doubling copies (the profile's memmove).
        // (+ room for our trace line.)
        let capacity = mail.size.unwrap_or(0).min(self.cfg.max_message_size) + 512;
        self.tx = Some(Transaction {
            mail,
            rcpts: Vec::new(),
            data: Vec::with_capacity(capacity),
            fault: None,
            trace_len: 0,
            bdat: false,
        });
        self.reply(codes::sender_ok());
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<Cow<'_, str>>) {
        let Some(tx) = &self.tx else {
            return self.reply(codes::bad_sequence("Need MAIL before RCPT"));
        };
        if !to.address.is_ascii() {
            return self.reply(codes::non_ascii_address());
        }
        if tx.rcpts.len() >= self.cfg.max_recipients {
            return self.reply(codes::too_many_recipients());
        }
        let mut n = 0u8;
        if to.flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0 {
            n |= notify::SUCCESS;
        }
        if to.flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0 {
            n |= notify::FAILURE;
        }
        if to.flags & smtp_proto::RCPT_NOTIFY_DELAY != 0 {
            n |= notify::DELAY;
        }
        if to.flags & smtp_proto::RCPT_NOTIFY_NEVER != 0 {
            n |= notify::NEVER;
        }
        let rcpt = RcptTo {
            address: to.address.into_owned(),
            notify: n,
            orcpt: to.orcpt.map(|o| {
                let o = o.into_owned();
                match o.split_once(';') {
                    Some((_, a)) => mm4::xtext::decode_lenient(a.trim()),
                    None => o,
                }
            }),
        };
        if let Err(r) = self.policy.check_rcpt(&self.peer, &tx.mail, &rcpt) {
            return self.reply(r);
        }
        if let Some(tx) = &mut self.tx {
            tx.rcpts.push(rcpt);
        }
        self.reply(codes::recipient_ok());
    }

    fn data_command(&mut self) {
        match &self.tx {
            None => self.reply(codes::bad_sequence("Need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() => self.reply(codes::no_recipients()),
            Some(tx) if tx.bdat => self.reply(codes::bad_sequence("DATA after BDAT")),
            Some(tx) if tx.mail.body == BodyType::BinaryMime => {
                self.reply(codes::bad_sequence("BODY=BINARYMIME requires BDAT"))
            }
            Some(_) => {
                self.reply(codes::start_data());
                self.state = State::Data { mid_line: false };
                self.put_trace();
            }
        }
    }

    /// Our `Received:` line, first in the data of the transaction (before any octet of the
    /// client's), so the message is never copied to prepend it.
    fn put_trace(&mut self) {
        let Some(now) = &self.cfg.trace else {
            return;
        };
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        if !tx.data.is_empty() {
            return;
        }
        let for_rcpt = match tx.rcpts.as_slice() {
            [only] => Some(only.address.as_str()),
            _ => None,
        };
        let line = crate::trace::Trace {
            helo: self.helo.as_deref().unwrap_or(""),
            addr: crate::driver::canonical_ip(self.peer.addr.ip()),
            by: &self.cfg.hostname,
            protocol: crate::trace::Protocol::of(
                self.extended,
                self.peer.tls,
                self.peer.authenticated.is_some(),
            ),
            for_rcpt,
            at: now.get(),
        }
        .header();
        tx.trace_len = line.len();
        tx.data.extend_from_slice(line.as_bytes());
    }

    /// Reads DATA lines. Returns a step when the message is complete (or refused).
    fn data(&mut self, mut mid_line: bool) -> Option<Step> {
        let max_line = self.cfg.max_data_line;
        let max_size = self.cfg.max_message_size;
        loop {
            let buf = &self.input[self.pos..];
            let Some(i) = memchr::memchr(b'\n', buf) else {
                // No complete line: a line this long is refused without buffering it whole.
                if buf.len() > max_line + 2 {
                    let tx = self.tx.as_mut().expect("transaction in DATA");
                    tx.fault.get_or_insert(DataFault::LineTooLong);
                    // Keep the last octet: it may be the CR of the line end.
                    self.pos = self.input.len() - 1;
                    mid_line = true;
                }
                self.state = State::Data { mid_line };
                return None;
            };
            let line_start = self.pos;
            let line_end = self.pos + i + 1;
            self.pos = line_end;
            let tx = self.tx.as_mut().expect("transaction in DATA");
            let line = &self.input[line_start..line_end];
            let crlf = line.len() >= 2 && line[line.len() - 2] == b'\r';
            let content = &line[..line.len() - if crlf { 2 } else { 1 }];
            if mid_line {
                // The tail of an over-long line: the message is already refused.
                mid_line = false;
                continue;
            }
            if !crlf || memchr::memchr(b'\r', content).is_some() {
                tx.fault.get_or_insert(DataFault::BareLineEnd);
            }
            if crlf && content == b"." {
                // End of data: exactly CRLF "." CRLF.
                self.state = State::Command;
                self.progress += 1;
                return Some(self.finish_message());
            }
            if content.len() > max_line {
                tx.fault.get_or_insert(DataFault::LineTooLong);
            }
            if tx.fault.is_some() {
                continue;
            }
            let unstuffed = content.strip_prefix(b".").unwrap_or(content);
            if tx.data.len() - tx.trace_len + unstuffed.len() + 2 > max_size {
                tx.fault = Some(DataFault::TooBig);
                tx.data = Vec::new();
                tx.trace_len = 0;
                continue;
            }
            tx.data.extend_from_slice(unstuffed);
            tx.data.extend_from_slice(b"\r\n");
        }
    }

    fn bdat_command(&mut self, size: usize, last: bool) {
        let refusal = match &self.tx {
            None => Some(codes::bad_sequence("Need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() => Some(codes::no_recipients()),
            Some(_) => None,
        };
        if let Some(r) = refusal {
            // The chunk follows the command on the wire: read and drop it to stay in step.
            self.state = State::Bdat {
                remaining: size,
                last,
                discard: true,
            };
            self.reply(r);
            return;
        }
        if let Some(tx) = &mut self.tx {
            tx.bdat = true;
        }
        self.put_trace();
        self.state = State::Bdat {
            remaining: size,
            last,
            discard: false,
        };
    }

    fn bdat(&mut self, remaining: usize, last: bool, discard: bool) -> Option<Step> {
        let avail = self.input.len() - self.pos;
        let take = avail.min(remaining);
        let chunk_start = self.pos;
        self.pos += take;
        let left = remaining - take;
        if !discard {
            let max = self.cfg.max_message_size;
            let tx = self.tx.as_mut().expect("transaction in BDAT");
            if tx.fault.is_none() {
                if tx.data.len() - tx.trace_len + take > max {
                    tx.fault = Some(DataFault::TooBig);
                    tx.data = Vec::new();
                    tx.trace_len = 0;
                } else {
                    tx.data
                        .extend_from_slice(&self.input[chunk_start..chunk_start + take]);
                }
            }
        }
        if left > 0 {
            self.state = State::Bdat {
                remaining: left,
                last,
                discard,
            };
            return None;
        }
        self.state = State::Command;
        self.progress += 1;
        if discard {
            return None;
        }
        if last {
            return Some(self.finish_message());
        }
        let size = self.tx.as_ref().map_or(0, |t| t.data.len() - t.trace_len);
        self.reply(codes::ok(format!("{size} octets received")));
        None
    }

    /// The end of a message: refuse it for what the data showed, or hand it to the driver.
    fn finish_message(&mut self) -> Step {
        let tx = self.tx.take().expect("transaction at end of data");
        if let Some(fault) = tx.fault {
            self.reply(fault.reply());
            return Step::NeedInput;
        }
        if count_received(&tx.data) > self.cfg.max_received {
            self.reply(codes::too_many_hops());
            return Step::NeedInput;
        }
        self.state = State::AwaitCommit;
        Step::Message(Box::new(ReceivedMessage {
            peer: self.peer.clone(),
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: tx.mail,
            rcpts: tx.rcpts,
            data: tx.data,
        }))
    }

    /// The verdict on a message from [`Step::Message`]: `250` only once it is stored.
    pub fn message_done(&mut self, reply: Reply) {
        if self.state == State::AwaitCommit {
            self.state = State::Command;
        }
        // Not counted towards the error limit: a verdict on the content or our own storage
        // trouble is no misbehaviour of the client.
        reply.write_to(&mut self.out);
    }

    fn starttls(&mut self) -> Option<Step> {
        if self.peer.tls {
            self.reply(codes::tls_already_active());
            return None;
        }
        if !self.cfg.tls_available {
            self.reply(codes::not_implemented());
            return None;
        }
        if self.tx.is_some() {
            self.reply(codes::bad_sequence(
                "STARTTLS not allowed during a mail transaction",
            ));
            return None;
        }
        self.reply(codes::tls_ready());
        // Plaintext sent after STARTTLS is discarded, never read as if it came under TLS.
        self.pos = self.input.len();
        self.helo = None;
        self.tx = None;
        Some(Step::StartTls)
    }

    /// The TLS handshake succeeded: the session starts over (EHLO required again).
    /// `AUTH <mechanism> [initial-response]` (RFC 4954): only over TLS, once per session,
    /// outside a transaction.
    fn auth_offered(&self) -> bool {
        self.cfg.auth_available || self.policy.offers_auth()
    }

    fn auth(&mut self, mechanism: u64, initial: &str) {
        if !self.auth_offered() {
            return self.reply(codes::not_implemented());
        }
        if !self.peer.tls {
            return self.reply(codes::auth_needs_tls());
        }
        if self.helo.is_none() {
            return self.reply(codes::bad_sequence("Send EHLO first"));
        }
        if self.peer.authenticated.is_some() || self.tx.is_some() {
            return self.reply(codes::bad_sequence(
                "Already authenticated or in a transaction",
            ));
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.reply(Reply::plain(334, vec![String::new()]));
                self.state = State::Auth(AuthStep::Plain);
            }
            smtp_proto::AUTH_PLAIN => self.plain(initial.as_bytes()),
            smtp_proto::AUTH_LOGIN => {
                // "Username:" and "Password:", base64 (the prompts every LOGIN client expects).
                self.reply(Reply::plain(334, vec!["VXNlcm5hbWU6".into()]));
                self.state = State::Auth(AuthStep::LoginUser);
            }
            _ => self.reply(codes::auth_mechanism()),
        }
    }

    /// The client's answer to a `334`.
    fn auth_answer(&mut self, step: AuthStep, start: usize, end: usize) {
        self.progress += 1;
        self.state = State::Command;
        let line = self.input[start..end].to_vec();
        let answer = trim_line_end(&line);
        if answer == b"*" {
            return self.reply(codes::auth_cancelled());
        }
        match step {
            AuthStep::Plain => self.plain(answer),
            AuthStep::LoginUser => match decode64(answer) {
                Some(user) => {
                    self.reply(Reply::plain(334, vec!["UGFzc3dvcmQ6".into()]));
                    self.auth_user = Some(user);
                    self.state = State::Auth(AuthStep::LoginPassword);
                }
                None => self.reply(codes::auth_bad_base64()),
            },
            AuthStep::LoginPassword => match decode64(answer) {
                Some(password) => {
                    let user = self.auth_user.take().unwrap_or_default();
                    self.check_credentials(&user, &password)
                }
                None => self.reply(codes::auth_bad_base64()),
            },
        }
    }

    /// PLAIN: `authzid NUL authcid NUL password`, base64; an authzid other than the authcid
    /// is refused (nobody acts for another).
    fn plain(&mut self, b64: &[u8]) {
        let Some(text) = decode64(b64) else {
            return self.reply(codes::auth_bad_base64());
        };
        let mut parts = text.split('\0');
        let (Some(authz), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.reply(codes::syntax("Invalid PLAIN credentials"));
        };
        if !authz.is_empty() && authz != user {
            return self.reply(codes::auth_failed());
        }
        self.check_credentials(user, password);
    }

    fn check_credentials(&mut self, user: &str, password: &str) {
        match self.policy.authenticate(&self.peer, user, password) {
            Some(identity) => {
                self.peer.authenticated = Some(identity);
                self.reply(codes::auth_ok());
            }
            None => self.reply(codes::auth_failed()),
        }
    }

    /// [`Session::tls_established`], with the certificate chain the client presented.
    pub fn tls_established_with(&mut self, client_certs: Vec<Vec<u8>>) {
        self.peer.client_certs = client_certs;
        self.tls_established();
    }

    pub fn tls_established(&mut self) {
        self.peer.tls = true;
        self.helo = None;
        self.tx = None;
        self.input.clear();
        self.pos = 0;
        self.state = State::Command;
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Base64 text as UTF-8 (`None`: not base64, or not UTF-8).
fn decode64(b64: &[u8]) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// Removes an `XMM4-RES=SYNC` parameter from a MAIL line, reporting whether it was there.
fn take_xmm4_param(line: &[u8]) -> (Cow<'_, [u8]>, bool) {
    const PARAM: &[u8] = b"XMM4-RES=SYNC";
    if line.len() < 4 || !line[..4].eq_ignore_ascii_case(b"MAIL") {
        return (Cow::Borrowed(line), false);
    }
    let mut out = Vec::with_capacity(line.len());
    let mut found = false;
    let mut i = 0;
    while i < line.len() {
        let at_word_start = i > 0 && line[i - 1] == b' ';
        let rest = &line[i..];
        if at_word_start
            && rest.len() >= PARAM.len()
            && rest[..PARAM.len()].eq_ignore_ascii_case(PARAM)
            && rest
                .get(PARAM.len())
                .is_none_or(|b| b.is_ascii_whitespace())
        {
            found = true;
            i += PARAM.len();
            // Drop the separator before it as well.
            if out.last() == Some(&b' ') {
                out.pop();
            }
            continue;
        }
        out.push(line[i]);
        i += 1;
    }
    if found {
        (Cow::Owned(out), true)
    } else {
        (Cow::Borrowed(line), false)
    }
}

const PLACEHOLDER: &str = "@unqualified.invalid";

/// Adds [`PLACEHOLDER`] to a MAIL/RCPT path without a domain.
fn qualify_path(line: &[u8]) -> (Cow<'_, [u8]>, bool) {
    let is_path_cmd = line.len() >= 4
        && (line[..4].eq_ignore_ascii_case(b"MAIL") || line[..4].eq_ignore_ascii_case(b"RCPT"));
    if !is_path_cmd {
        return (Cow::Borrowed(line), false);
    }
    let (Some(l), Some(r)) = (memchr::memchr(b'<', line), memchr::memchr(b'>', line)) else {
        return (Cow::Borrowed(line), false);
    };
    let inner = &line[l + 1..r.max(l + 1)];
    if r <= l + 1 || inner.contains(&b'@') || inner.contains(&b' ') {
        return (Cow::Borrowed(line), false);
    }
    let mut out = Vec::with_capacity(line.len() + PLACEHOLDER.len());
    out.extend_from_slice(&line[..r]);
    out.extend_from_slice(PLACEHOLDER.as_bytes());
    out.extend_from_slice(&line[r..]);
    (Cow::Owned(out), true)
}

fn strip_placeholder(addr: &str) -> String {
    addr.strip_suffix(PLACEHOLDER).unwrap_or(addr).to_string()
}

/// Counts `Received:` fields in the header section.
fn count_received(data: &[u8]) -> usize {
    let mut n = 0;
    for line in data.split(|&b| b == b'\n') {
        if line == b"\r" || line.is_empty() {
            break;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmm4_param_is_taken_out() {
        let (l, f) = take_xmm4_param(b"MAIL FROM:<a@b.c> XMM4-RES=SYNC SIZE=10\r\n");
        assert!(f);
        assert_eq!(&*l, b"MAIL FROM:<a@b.c> SIZE=10\r\n");
        let (l, f) = take_xmm4_param(b"MAIL FROM:<a@b.c> xmm4-res=sync\r\n");
        assert!(f);
        assert_eq!(&*l, b"MAIL FROM:<a@b.c>\r\n");
        let (_, f) = take_xmm4_param(b"MAIL FROM:<XMM4-RES=SYNC@b.c>\r\n");
        assert!(!f);
        let (_, f) = take_xmm4_param(b"RCPT TO:<a@b.c> XMM4-RES=SYNC\r\n");
        assert!(!f);
    }

    #[test]
    fn received_headers_are_counted_in_the_header_only() {
        assert_eq!(
            count_received(b"Received: a\r\nreceived: b\r\nX: y\r\n\r\nReceived: body\r\n"),
            2
        );
    }
}
