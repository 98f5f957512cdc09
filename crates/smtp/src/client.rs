//! The sans-IO side of the SMTP client: reading replies, reading EHLO capabilities (XMM4
//! included), planning the commands of one transaction for the capabilities the server offered,
//! and reading the replies back into one outcome per recipient. The tokio driver
//! ([`crate::client_driver`]) only moves these bytes.
//!
//! What we send is never ambiguous: the body is CRLF-canonical before it leaves (no stray CR,
//! LF or NUL in any command), dot-stuffing is always applied for DATA, and parameters carry
//! only xtext.

use mm4::mapping::{self, EnhancedStatus, Outcome, Stage};

use crate::reply::Reply;

/// Longest reply line we accept from a server before calling it broken.
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply (a hostile server must not make us buffer forever).
pub const MAX_REPLY_LINES: usize = 256;

/// The server is not speaking SMTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_REPLY_LINE} octets")]
    TooLong,
    #[error("reply with more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("not an SMTP reply: {0:?}")]
    Malformed(String),
}

/// Splits the server's byte stream into replies.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
    lines: Vec<String>,
    code: Option<u16>,
}

impl ReplyReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Forgets everything buffered (after STARTTLS: nothing the server sent in plaintext after
    /// its `220` may be read as if it came under TLS).
    pub fn discard(&mut self) {
        self.buf.clear();
        self.lines.clear();
        self.code = None;
    }

    /// Whether bytes are buffered that are not a complete reply yet.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || !self.lines.is_empty()
    }

    /// The next complete reply, if buffered.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(nl) = memchr::memchr(b'\n', &self.buf) else {
                if self.buf.len() > MAX_REPLY_LINE {
                    return Err(ReplyError::TooLong);
                }
                return Ok(None);
            };
            if nl > MAX_REPLY_LINE {
                return Err(ReplyError::TooLong);
            }
            let raw: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            let bad = || ReplyError::Malformed(line.chars().take(100).collect());
            if line.len() < 3 || !line.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let code: u16 = line[..3].parse().map_err(|_| bad())?;
            if !(200..600).contains(&code) {
                return Err(bad());
            }
            if self.code.is_some_and(|c| c != code) {
                return Err(bad());
            }
            self.code = Some(code);
            let sep = line.as_bytes().get(3).copied();
            let text = line.get(4..).unwrap_or("").to_string();
            self.lines.push(text);
            if self.lines.len() > MAX_REPLY_LINES {
                return Err(ReplyError::TooManyLines);
            }
            match sep {
                Some(b'-') => continue,
                None | Some(b' ') => {
                    let lines = std::mem::take(&mut self.lines);
                    self.code = None;
                    return Ok(Some(make_reply(code, lines)));
                }
                Some(_) => return Err(bad()),
            }
        }
    }
}

/// Splits the enhanced status code off the first line when there is one.
fn make_reply(code: u16, mut lines: Vec<String>) -> Reply {
    let enhanced = lines
        .first()
        .and_then(|l| EnhancedStatus::from_reply_text(l))
        .filter(|e| e.class as u16 == code / 100);
    if enhanced.is_some() {
        for l in &mut lines {
            if let Some((first, rest)) = l.split_once(' ') {
                if first.parse::<EnhancedStatus>().is_ok() {
                    *l = rest.to_string();
                }
            } else if l.parse::<EnhancedStatus>().is_ok() {
                l.clear();
            }
        }
    }
    Reply {
        code,
        enhanced,
        lines,
    }
}

/// `XMM4` as a server advertised it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xmm4 {
    pub versions: Vec<String>,
    pub sync: bool,
}

/// What a server said it can do in its EHLO answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `SIZE` limit (`Some(0)`: SIZE without a limit).
    pub size: Option<usize>,
    pub pipelining: bool,
    pub eightbitmime: bool,
    pub binarymime: bool,
    pub chunking: bool,
    pub dsn: bool,
    pub enhanced_status_codes: bool,
    pub starttls: bool,
    pub smtputf8: bool,
    pub auth: Vec<String>,
    pub xmm4: Option<Xmm4>,
    /// The EHLO greeting line (the server's name).
    pub greeting: String,
}

impl Capabilities {
    /// Reads an EHLO reply (a HELO fallback gives the default: no extensions).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut c = Capabilities {
            greeting: reply.lines.first().cloned().unwrap_or_default(),
            ..Capabilities::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "SIZE" => c.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "PIPELINING" => c.pipelining = true,
                "8BITMIME" => c.eightbitmime = true,
                "BINARYMIME" => c.binarymime = true,
                "CHUNKING" => c.chunking = true,
                "DSN" => c.dsn = true,
                "ENHANCEDSTATUSCODES" => c.enhanced_status_codes = true,
                "STARTTLS" => c.starttls = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "AUTH" => c.auth = words.map(str::to_string).collect(),
                "XMM4" => {
                    let mut x = Xmm4::default();
                    for w in words {
                        if let Some(v) = w.strip_prefix("V=").or_else(|| w.strip_prefix("v=")) {
                            x.versions = v.split(',').map(str::to_string).collect();
                        } else if w.eq_ignore_ascii_case("SYNC") {
                            x.sync = true;
                        }
                    }
                    c.xmm4 = Some(x);
                }
                _ => {}
            }
        }
        c
    }

    /// Whether the server folds the MM4 RES into its reply on request.
    pub fn xmm4_sync(&self) -> bool {
        self.xmm4.as_ref().is_some_and(|x| x.sync)
    }
}

/// One recipient of an outgoing transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRcpt {
    pub address: String,
    /// The original recipient for `ORCPT=rfc822;…` (always sent when the server has DSN).
    pub orcpt: Option<String>,
    /// `NOTIFY=` flags ([`crate::server::notify`]); 0 for the server default.
    pub notify: u8,
}

/// The envelope of an outgoing transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutEnvelope {
    /// Empty for `<>`.
    pub mail_from: String,
    /// `ENVID=` (our transaction id), sent when the server has DSN.
    pub envid: Option<String>,
    /// `RET=HDRS` when the server has DSN.
    pub ret_hdrs: bool,
    /// Ask an XMM4 SYNC server to fold the RES into the final reply.
    pub xmm4_sync: bool,
    pub rcpts: Vec<OutRcpt>,
}

/// How the body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMode {
    /// `DATA`, dot-stuffed.
    Data,
    /// `BDAT <n> LAST`, raw.
    Bdat,
}

/// Why a transaction is not even attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("message of {size} octets exceeds the server's SIZE {limit}")]
    TooBig { size: usize, limit: usize },
    #[error("8-bit message for a server without 8BITMIME")]
    NeedsDowngrade,
    #[error("{0}: CR, LF, NUL or space in an envelope address")]
    BadAddress(String),
}

/// The commands of one transaction, in wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mode: DataMode,
    /// MAIL, each RCPT, and DATA or BDAT <n> LAST, one line each.
    pub commands: Vec<Vec<u8>>,
    /// The body as it goes on the wire after the DATA reply (dot-stuffed with the final
    /// `.\r\n`), or as the BDAT chunk.
    pub payload: Vec<u8>,
    /// Send all commands in one write (PIPELINING).
    pub pipelined: bool,
}

/// Whether the bytes contain any octet above 127.
pub fn is_8bit(body: &[u8]) -> bool {
    // OR-ing a block at a time vectorises; a byte-wise `any` does not (it runs on every
    // octet of every message we send).
    body.chunks(64)
        .any(|c| c.iter().fold(0u8, |acc, b| acc | b) >= 0x80)
}

/// Whether the body needs BINARYMIME: NUL, bare CR or bare LF, or lines over 998 octets.
pub fn is_binary(body: &[u8]) -> bool {
    if memchr::memchr(0, body).is_some() {
        return true;
    }
    // Only line ends are visited (memchr), not every octet.
    let mut line_start = 0;
    for i in memchr::memchr2_iter(b'\r', b'\n', body) {
        if body[i] == b'\r' {
            if body.get(i + 1) != Some(&b'\n') {
                return true;
            }
            continue;
        }
        if i == 0 || body[i - 1] != b'\r' {
            return true;
        }
        if i - 1 - line_start > 998 {
            return true;
        }
        line_start = i + 1;
    }
    body.len() - line_start > 998
}

fn check_addr(a: &str) -> Result<(), PlanError> {
    if a.bytes()
        .any(|b| b == b'\r' || b == b'\n' || b == 0 || b == b' ' || b == b'<' || b == b'>')
    {
        return Err(PlanError::BadAddress(a.escape_debug().to_string()));
    }
    Ok(())
}

/// Dot-stuffs a CRLF body and appends the end-of-data marker.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut line_start = true;
    let mut rest = body;
    while !rest.is_empty() {
        if line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                out.extend_from_slice(&rest[..=i]);
                rest = &rest[i + 1..];
                line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                rest = &[];
                line_start = false;
            }
        }
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Plans one transaction for what the server offered. The body must be CRLF-canonical unless
/// the server offers BINARYMIME + CHUNKING.
pub fn plan(env: &OutEnvelope, body: &[u8], caps: &Capabilities) -> Result<Plan, PlanError> {
    check_addr(&env.mail_from)?;
    for r in &env.rcpts {
        check_addr(&r.address)?;
    }
    if let Some(limit) = caps.size.filter(|l| *l > 0) {
        if body.len() > limit {
            return Err(PlanError::TooBig {
                size: body.len(),
                limit,
            });
        }
    }
    let eight = is_8bit(body);
    let binary = is_binary(body);
    let bdat = caps.chunking;
    let body_param = if binary && bdat && caps.binarymime {
        Some("BINARYMIME")
    } else if eight {
        if !caps.eightbitmime {
            return Err(PlanError::NeedsDowngrade);
        }
        Some("8BITMIME")
    } else {
        None
    };
    if binary && body_param != Some("BINARYMIME") {
        // The caller canonicalises bodies; a binary one for a server without BINARYMIME is a
        // downgrade case too.
        return Err(PlanError::NeedsDowngrade);
    }
    let mut mail = format!("MAIL FROM:<{}>", env.mail_from);
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", body.len()));
    }
    if let Some(b) = body_param {
        mail.push_str(" BODY=");
        mail.push_str(b);
    }
    if caps.dsn {
        if env.ret_hdrs {
            mail.push_str(" RET=HDRS");
        }
        if let Some(e) = &env.envid {
            mail.push_str(" ENVID=");
            mail.push_str(&mm4::xtext::encode(e.as_bytes()));
        }
    }
    if env.xmm4_sync && caps.xmm4_sync() {
        mail.push_str(" XMM4-RES=SYNC");
    }
    mail.push_str("\r\n");
    let mut commands = vec![mail.into_bytes()];
    for r in &env.rcpts {
        let mut rcpt = format!("RCPT TO:<{}>", r.address);
        if caps.dsn {
            if r.notify != 0 {
                use crate::server::notify::*;
                let mut n = Vec::new();
                if r.notify & NEVER != 0 {
                    n.push("NEVER");
                } else {
                    if r.notify & SUCCESS != 0 {
                        n.push("SUCCESS");
                    }
                    if r.notify & FAILURE != 0 {
                        n.push("FAILURE");
                    }
                    if r.notify & DELAY != 0 {
                        n.push("DELAY");
                    }
                }
                rcpt.push_str(" NOTIFY=");
                rcpt.push_str(&n.join(","));
            }
            // Always ORCPT: the DSN then names the address we sent to, whatever rewriting
            // happens downstream.
            let orcpt = r.orcpt.as_deref().unwrap_or(&r.address);
            rcpt.push_str(" ORCPT=rfc822;");
            rcpt.push_str(&mm4::xtext::encode(orcpt.as_bytes()));
        }
        rcpt.push_str("\r\n");
        commands.push(rcpt.into_bytes());
    }
    let (mode, payload) = if bdat {
        commands.push(format!("BDAT {} LAST\r\n", body.len()).into_bytes());
        (DataMode::Bdat, body.to_vec())
    } else {
        commands.push(b"DATA\r\n".to_vec());
        (DataMode::Data, dot_stuff(body))
    };
    Ok(Plan {
        mode,
        commands,
        payload,
        pipelined: caps.pipelining,
    })
}

/// The outcome of a transaction for each recipient, with the reply that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    pub outcome: Outcome,
    pub reply: Reply,
    /// The MM4 verdict an XMM4 server folded into its final reply (`[MM4 Ok]` = the RES).
    pub mm4_verdict: Option<mm4::RequestStatus>,
}

/// Reads the replies of a transaction: `mail`, one per RCPT, the DATA/BDAT command reply
/// (`None` when the transaction stopped before it), and the final reply after the data.
pub fn interpret(
    mail: &Reply,
    rcpts: &[Reply],
    data: Option<&Reply>,
    final_reply: Option<&Reply>,
    caps: &Capabilities,
) -> Vec<RcptResult> {
    let xmm4 = caps.xmm4_sync();
    let map = |stage: Stage, r: &Reply| RcptResult {
        outcome: mapping::smtp_reply(stage, r.code, &reply_text(r), xmm4),
        reply: r.clone(),
        mm4_verdict: if xmm4 {
            mapping::mm4_verdict(&r.lines.join(" "))
        } else {
            None
        },
    };
    if !mail.is_positive() {
        return rcpts.iter().map(|_| map(Stage::Mail, mail)).collect();
    }
    rcpts
        .iter()
        .map(|r| {
            if !r.is_positive() {
                return map(Stage::Rcpt, r);
            }
            match (data, final_reply) {
                (Some(d), _) if !d.is_positive() => map(Stage::Data, d),
                (Some(_), Some(f)) => map(Stage::Data, f),
                // The connection broke before the end: try again later.
                _ => RcptResult {
                    outcome: Outcome::Retry,
                    reply: Reply::new(451, (4, 4, 2), "connection lost during the transaction"),
                    mm4_verdict: None,
                },
            }
        })
        .collect()
}

/// The text a reply's mapping reads: the enhanced code (if any) followed by the text.
pub fn reply_text(r: &Reply) -> String {
    match &r.enhanced {
        Some(e) => format!("{e} {}", r.lines.join(" ")),
        None => r.lines.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<Reply> {
        let mut r = ReplyReader::new();
        r.feed(bytes);
        let mut out = Vec::new();
        while let Some(x) = r.next_reply().unwrap() {
            out.push(x);
        }
        out
    }

    #[test]
    fn replies_are_read_with_enhanced_codes() {
        let rs = read_all(
            b"250-mx greets\r\n250-SIZE 1000\r\n250 XMM4 V=6.16.0 SYNC\r\n550 5.1.1 unknown\r\n",
        );
        assert_eq!(rs.len(), 2);
        assert_eq!(
            rs[0].lines,
            vec!["mx greets", "SIZE 1000", "XMM4 V=6.16.0 SYNC"]
        );
        assert_eq!(rs[1].enhanced.unwrap().to_string(), "5.1.1");
        assert_eq!(rs[1].lines, vec!["unknown"]);
        let mut r = ReplyReader::new();
        r.feed(b"250-partial\r\n");
        assert_eq!(r.next_reply().unwrap(), None);
        r.feed(b"hello\r\n");
        assert!(r.next_reply().is_err());
        let mut r = ReplyReader::new();
        r.feed(&[b'2'; MAX_REPLY_LINE + 10]);
        assert_eq!(r.next_reply(), Err(ReplyError::TooLong));
    }

    #[test]
    fn ehlo_capabilities() {
        let r = &read_all(b"250-mx.peer greets us\r\n250-SIZE 307200\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 XMM4 V=6.16.0,5.5.0 SYNC\r\n")[0];
        let c = Capabilities::from_ehlo(r);
        assert_eq!(c.size, Some(307200));
        assert!(c.pipelining && c.eightbitmime && c.binarymime && c.chunking && c.dsn);
        assert!(c.enhanced_status_codes && c.starttls && !c.smtputf8);
        assert_eq!(c.auth, vec!["PLAIN", "LOGIN"]);
        assert_eq!(
            c.xmm4,
            Some(Xmm4 {
                versions: vec!["6.16.0".into(), "5.5.0".into()],
                sync: true
            })
        );
        assert_eq!(c.greeting, "mx.peer greets us");
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(
            dot_stuff(b".a\r\nb\r\n..c\r\n"),
            b"..a\r\nb\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    #[test]
    fn binary_detection() {
        assert!(!is_binary(b"a\r\nb\r\n"));
        assert!(is_binary(b"a\nb"));
        assert!(is_binary(b"a\rb"));
        assert!(is_binary(b"a\0b"));
        assert!(is_binary(&[b'x'; 999]));
        assert!(!is_binary(&[b'x'; 998]));
        let line = |n: usize| [vec![b'y'; n], b"\r\n".to_vec()].concat();
        assert!(!is_binary(&[line(998), line(998), line(0)].concat()));
        assert!(is_binary(&[line(10), line(999), line(3)].concat()));
        assert!(is_binary(b"a\r\nb\r"));
        assert!(is_binary(b"\na"));
        assert!(is_8bit("ü".as_bytes()));
        let mut long = vec![b'a'; 1000];
        assert!(!is_8bit(&long));
        long[777] = 0x80;
        assert!(is_8bit(&long));
    }
}
