//! Byte-exact dialogues with the sans-IO server session: every command and every row of the
//! reliability bar's "bad input" table that does not depend on time or sockets.

use std::sync::Arc;

use smtp::{
    codes, MailFrom, PeerInfo, Policy, RcptTo, ReceivedMessage, Reply, ServerConfig, Session, Step,
};

/// Accepts recipients at `ok.test`, refuses everything else as a relay attempt.
struct TestPolicy;

impl Policy for TestPolicy {
    fn check_mail(&self, _: &PeerInfo, mail: &MailFrom) -> Result<(), Reply> {
        if mail.address == "full@disk.test" {
            return Err(codes::storage_full());
        }
        Ok(())
    }
    fn check_rcpt(&self, _: &PeerInfo, _: &MailFrom, rcpt: &RcptTo) -> Result<(), Reply> {
        if rcpt.address.ends_with("@ok.test") {
            Ok(())
        } else {
            Err(Reply::new(550, (5, 7, 1), "Relaying denied"))
        }
    }
    fn authenticate(&self, _: &PeerInfo, user: &str, password: &str) -> Option<String> {
        (user == "peer-b" && password == "s3cret").then(|| "operator-b".to_string())
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        hostname: "mx.test".into(),
        max_message_size: 10_000,
        tls_available: true,
        trace: Some(smtp::trace::Now::from_fn(
            || time::macros::datetime!(2026-12-04 12:00:00 UTC),
        )),
        ..ServerConfig::default()
    }
}

/// Our trace line on a message from the harness's client (EHLO client.test, one recipient).
const TRACE: &[u8] = b"Received: from client.test ([127.0.0.2])\r\n\
    \tby mx.test (mmsrelay) with ESMTP\r\n\
    \tfor <u@ok.test>;\r\n\
    \tFri, 04 Dec 2026 12:00:00 +0000\r\n";

fn traced(data: &[u8]) -> Vec<u8> {
    [TRACE, data].concat()
}

fn session_with(cfg: ServerConfig) -> Session {
    Session::new(
        Arc::new(cfg),
        Arc::new(TestPolicy),
        PeerInfo::new("127.0.0.2:40000".parse().unwrap(), false),
    )
}

/// A session and what came out of it.
struct Harness {
    s: Session,
    messages: Vec<ReceivedMessage>,
    closed: bool,
    starttls: bool,
    /// The reply given to each stored message.
    verdict: Reply,
}

impl Harness {
    fn new() -> Self {
        Self::with(config())
    }

    fn with(cfg: ServerConfig) -> Self {
        let mut s = session_with(cfg);
        s.greet();
        let mut h = Harness {
            s,
            messages: Vec::new(),
            closed: false,
            starttls: false,
            verdict: codes::ok("Queued"),
        };
        let greeting = h.out();
        assert_eq!(greeting, "220 mx.test ESMTP mmsrelay\r\n");
        h
    }

    fn out(&mut self) -> String {
        String::from_utf8(self.s.take_output()).unwrap()
    }

    /// Feeds one packet and runs the session until it needs input; returns the output.
    fn send(&mut self, bytes: &[u8]) -> String {
        self.s.feed(bytes);
        self.run()
    }

    fn run(&mut self) -> String {
        loop {
            match self.s.poll() {
                Step::NeedInput => break,
                Step::Message(m) => {
                    self.messages.push(*m);
                    self.s.message_done(self.verdict.clone());
                }
                Step::StartTls => {
                    self.starttls = true;
                    break;
                }
                Step::Close => {
                    self.closed = true;
                    break;
                }
            }
        }
        self.out()
    }

    fn ehlo(&mut self) {
        let out = self.send(b"EHLO client.test\r\n");
        assert!(
            out.starts_with("250-mx.test greets client.test\r\n"),
            "{out}"
        );
    }

    fn open_tx(&mut self) {
        self.ehlo();
        assert_eq!(
            self.send(b"MAIL FROM:<+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
        assert_eq!(
            self.send(b"RCPT TO:<u@ok.test>\r\n"),
            "250 2.1.5 Recipient OK\r\n"
        );
    }
}

#[test]
fn ehlo_advertises_the_contract_extensions() {
    let mut h = Harness::new();
    let out = h.send(b"EHLO client.test\r\n");
    assert_eq!(
        out,
        "250-mx.test greets client.test\r\n250-SIZE 10000\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
250-BINARYMIME\r\n250-CHUNKING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n\
250 XMM4 V=6.16.0,6.10.0,5.5.0 SYNC\r\n"
    );
    let mut no_tls = Harness::with(ServerConfig {
        tls_available: false,
        ..config()
    });
    assert!(!no_tls.send(b"EHLO c\r\n").contains("STARTTLS"));
}

#[test]
fn a_whole_transaction_with_data() {
    let mut h = Harness::new();
    h.open_tx();
    assert_eq!(
        h.send(b"DATA\r\n"),
        "354 2.0.0 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(h.send(b"Subject: hi\r\n\r\n..dot\r\nline\r\n"), "");
    assert_eq!(h.send(b".\r\n"), "250 2.0.0 Queued\r\n");
    assert_eq!(h.messages.len(), 1);
    let m = &h.messages[0];
    assert_eq!(
        m.data,
        traced(b"Subject: hi\r\n\r\n.dot\r\nline\r\n"),
        "our trace line on top, dot-unstuffed, CRLF kept"
    );
    assert_eq!(m.helo, "client.test");
    assert_eq!(m.rcpts[0].address, "u@ok.test");
    assert_eq!(h.send(b"QUIT\r\n"), "221 2.0.0 Bye\r\n");
    assert!(h.closed);
}

/// Message data is read in large pieces (few `recv`s per message), commands in small ones, and
/// a session between messages keeps no more than a command's room.
#[test]
fn data_is_read_in_large_pieces_and_the_room_is_given_back_after() {
    let mut h = Harness::with(ServerConfig {
        max_message_size: 1_000_000,
        ..config()
    });
    h.open_tx();
    let room = |s: &mut Session| {
        let b = s.input_buffer();
        b.capacity() - b.len()
    };
    assert!(room(&mut h.s) < 16 * 1024, "commands: {}", room(&mut h.s));
    h.send(b"DATA\r\n");
    assert!(room(&mut h.s) >= 64 * 1024, "data: {}", room(&mut h.s));
    let line = [b"x".repeat(998), b"\r\n".to_vec()].concat();
    for _ in 0..200 {
        assert_eq!(h.send(&line), "");
        assert!(room(&mut h.s) >= 64 * 1024);
    }
    assert_eq!(h.send(b".\r\n"), "250 2.0.0 Queued\r\n");
    assert_eq!(h.messages[0].data.len(), TRACE.len() + 200 * 1000);
    assert!(
        h.s.input_buffer().capacity() <= 8 * 1024,
        "between messages"
    );
}

#[test]
fn helo_rset_noop_vrfy_help_unknown() {
    let mut h = Harness::new();
    assert_eq!(h.send(b"HELO c\r\n"), "250 2.0.0 mx.test greets c\r\n");
    assert_eq!(h.send(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    assert!(h.send(b"VRFY someone\r\n").starts_with("252 2.5.2 "));
    assert!(h.send(b"HELP\r\n").starts_with("214 2.0.0 "));
    assert_eq!(
        h.send(b"EXPN list\r\n"),
        "502 5.5.1 Command not implemented\r\n"
    );
    assert_eq!(h.send(b"FOO bar\r\n"), "500 5.5.1 Command unrecognized\r\n");
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(h.send(b"RSET\r\n"), "250 2.0.0 Reset OK\r\n");
    assert_eq!(
        h.send(b"RCPT TO:<u@ok.test>\r\n"),
        "503 5.5.1 Need MAIL before RCPT\r\n"
    );
    assert_eq!(h.send(b"DATA\r\n"), "503 5.5.1 Need MAIL command\r\n");
}

#[test]
fn sequence_errors() {
    let mut h = Harness::new();
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test>\r\n"),
        "503 5.5.1 Send EHLO/HELO first\r\n"
    );
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test>\r\n"),
        "503 5.5.1 Nested MAIL command\r\n"
    );
    assert_eq!(h.send(b"DATA\r\n"), "554 5.5.1 No valid recipients\r\n");
}

#[test]
fn bdat_chunks() {
    let mut h = Harness::new();
    h.open_tx();
    // Chunks arrive with their commands in one packet (that is what CHUNKING is for).
    let out = h.send(b"BDAT 6\r\nSubj: BDAT 10 LAST\r\n: x\r\n\r\nz\r\n");
    assert_eq!(out, "250 2.0.0 6 octets received\r\n250 2.0.0 Queued\r\n");
    assert_eq!(h.messages[0].data, traced(b"Subj: : x\r\n\r\nz\r\n"));
    // Binary content is taken as is, bare LF included.
    h.open_tx_again();
    assert_eq!(h.send(b"BDAT 3 LAST\r\na\nb"), "250 2.0.0 Queued\r\n");
    assert_eq!(h.messages[1].data, traced(b"a\nb"));
    // BDAT without a transaction: the chunk is read and dropped, the session stays in step.
    assert_eq!(
        h.send(b"BDAT 4\r\nNOOPNOOP\r\n"),
        "503 5.5.1 Need MAIL command\r\n250 2.0.0 OK\r\n"
    );
}

impl Harness {
    fn open_tx_again(&mut self) {
        assert_eq!(
            self.send(b"MAIL FROM:<a@b.test>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
        assert_eq!(
            self.send(b"RCPT TO:<u@ok.test>\r\n"),
            "250 2.1.5 Recipient OK\r\n"
        );
    }
}

#[test]
fn data_after_bdat_and_binarymime_over_data_are_refused() {
    let mut h = Harness::new();
    h.open_tx();
    assert_eq!(h.send(b"BDAT 1\r\nx"), "250 2.0.0 1 octets received\r\n");
    assert_eq!(h.send(b"DATA\r\n"), "503 5.5.1 DATA after BDAT\r\n");
    assert_eq!(h.send(b"RSET\r\n"), "250 2.0.0 Reset OK\r\n");
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        h.send(b"RCPT TO:<u@ok.test>\r\n"),
        "250 2.1.5 Recipient OK\r\n"
    );
    assert_eq!(
        h.send(b"DATA\r\n"),
        "503 5.5.1 BODY=BINARYMIME requires BDAT\r\n"
    );
}

#[test]
fn end_of_data_variants_never_make_two_messages() {
    let smuggled =
        b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@ok.test>\r\nDATA\r\nsmuggled\r\n";
    let variants: [&[u8]; 6] = [
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r\n.\0\r\n",
        b"\r\n\0.\r\n",
    ];
    for v in variants {
        let mut h = Harness::new();
        h.open_tx();
        assert!(h.send(b"DATA\r\n").starts_with("354"));
        let mut packet = b"Subject: x\r\n\r\nbody".to_vec();
        packet.extend_from_slice(v);
        packet.extend_from_slice(smuggled);
        packet.extend_from_slice(b"\r\n.\r\n");
        let out = h.send(&packet);
        assert!(h.messages.len() <= 1, "{v:?}: two messages");
        for m in &h.messages {
            assert_ne!(m.mail_from.address, "evil@attacker.test", "{v:?}");
        }
        // Exactly one reply to the one DATA: refusal for bare CR/LF, or the message stored.
        let replies = out.matches("\r\n").count();
        assert_eq!(replies, 1, "{v:?}: {out}");
        if v.contains(&0) {
            assert_eq!(out, "250 2.0.0 Queued\r\n", "{v:?}");
        } else {
            assert_eq!(
                out, "550 5.5.2 Bare CR or LF in message data: lines must end in CRLF\r\n",
                "{v:?}"
            );
            assert!(h.messages.is_empty());
        }
    }
}

#[test]
fn bare_line_ends_anywhere_refuse_the_message() {
    for body in [&b"a\nb\r\n"[..], b"a\rb\r\n", b"a\r\r\n"] {
        let mut h = Harness::new();
        h.open_tx();
        h.send(b"DATA\r\n");
        let mut p = body.to_vec();
        p.extend_from_slice(b".\r\n");
        assert!(h.send(&p).starts_with("550 5.5.2 "), "{body:?}");
        assert!(h.messages.is_empty());
        // The session goes on.
        assert_eq!(h.send(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    }
}

#[test]
fn starttls_discards_pipelined_plaintext_and_resets() {
    let mut h = Harness::new();
    h.ehlo();
    let out = h.send(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n");
    assert_eq!(out, "220 2.0.0 Ready to start TLS\r\n", "only the 220");
    assert!(h.starttls);
    h.s.tls_established();
    // State was reset: EHLO is required again, and the injected MAIL was never seen.
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test>\r\n"),
        "503 5.5.1 Send EHLO/HELO first\r\n"
    );
    let ehlo = h.send(b"EHLO c\r\n");
    assert!(!ehlo.contains("STARTTLS"), "not offered again under TLS");
    assert_eq!(h.send(b"STARTTLS\r\n"), "554 5.5.1 TLS already active\r\n");
}

#[test]
fn starttls_refused_mid_transaction_and_without_certificate() {
    let mut h = Harness::new();
    h.open_tx();
    assert!(h.send(b"STARTTLS\r\n").starts_with("503 5.5.1 "));
    let mut h = Harness::with(ServerConfig {
        tls_available: false,
        ..config()
    });
    h.ehlo();
    assert_eq!(
        h.send(b"STARTTLS\r\n"),
        "502 5.5.1 Command not implemented\r\n"
    );
}

#[test]
fn commands_sent_ahead_where_forbidden() {
    // After EHLO, before its reply.
    let mut h = Harness::new();
    let out = h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n");
    assert_eq!(
        out,
        "554 5.5.0 Protocol synchronisation error: command sent before the previous reply\r\n"
    );
    assert!(h.closed);
    // Data before the 354.
    let mut h = Harness::new();
    h.open_tx();
    let out = h.send(b"DATA\r\nSubject: early\r\n\r\n.\r\n");
    assert!(out.starts_with("554 5.5.0 "), "{out}");
    assert!(h.closed && h.messages.is_empty());
}

#[test]
fn legal_pipelining_is_answered_in_one_group() {
    let mut h = Harness::new();
    h.ehlo();
    let out = h.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u@ok.test>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<v@ok.test>\r\nDATA\r\n");
    assert_eq!(
        out,
        "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n550 5.7.1 Relaying denied\r\n250 2.1.5 Recipient OK\r\n354 2.0.0 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(
        h.send(b"x\r\n.\r\nQUIT\r\n"),
        "250 2.0.0 Queued\r\n221 2.0.0 Bye\r\n"
    );
    assert_eq!(h.messages[0].rcpts.len(), 2);
}

#[test]
fn long_command_lines() {
    let mut h = Harness::new();
    h.ehlo();
    // 512 octets with CRLF (RFC 5321 §4.5.3.1.4) ...
    let ok = format!("NOOP {}\r\n", "x".repeat(512 - 7));
    assert_eq!(h.send(ok.as_bytes()), "250 2.0.0 OK\r\n");
    // ... and not one more, for a command no extension of ours lengthens.
    let long = format!("NOOP {}\r\n", "x".repeat(512 - 6));
    assert_eq!(
        h.send(long.as_bytes()),
        "500 5.5.2 Command line too long\r\n"
    );
    let long = format!("NOOP {}\r\n", "x".repeat(511));
    assert_eq!(
        h.send(long.as_bytes()),
        "500 5.5.2 Command line too long\r\n"
    );
    // MAIL and RCPT with the parameters we offer may be longer (up to 2048 octets).
    let label = "d".repeat(60);
    let from = format!("{}@{label}.{label}.{label}.test", "l".repeat(64));
    let envid = "e".repeat(100);
    let mail = format!(
        "MAIL FROM:<{from}> SIZE=100 BODY=8BITMIME RET=HDRS ENVID={envid} XMM4-RES=SYNC\r\n"
    );
    assert!(mail.len() > 400, "{}", mail.len());
    assert_eq!(h.send(mail.as_bytes()), "250 2.1.0 Sender OK\r\n");
    // An ORCPT in xtext (each `+` written as `+2B`) makes a valid RCPT line longer than 512.
    let xlabel = "+64".repeat(60);
    let orcpt = format!(
        "rfc822;{}@{xlabel}.{xlabel}.{xlabel}.test",
        "+2B".repeat(64)
    );
    let rcpt = format!("RCPT TO:<x@ok.test> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT={orcpt}\r\n");
    assert!(rcpt.len() > 512, "{}", rcpt.len());
    assert_eq!(h.send(rcpt.as_bytes()), "250 2.1.5 Recipient OK\r\n");
    h.send(b"RSET\r\n");
    // A huge line is refused without being buffered whole, and the session continues.
    for _ in 0..50 {
        h.send(&[b'y'; 10_000]);
        assert!(
            h.s.input_buffer().len() < 20_000,
            "memory must stay bounded"
        );
    }
    assert_eq!(h.send(b"\r\n"), "500 5.5.2 Command line too long\r\n");
    assert_eq!(h.send(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
}

#[test]
fn long_data_lines_refuse_the_message() {
    let mut h = Harness::with(ServerConfig {
        max_message_size: 1_000_000,
        ..config()
    });
    h.open_tx();
    h.send(b"DATA\r\n");
    let mut p = b"Subject: x\r\n\r\n".to_vec();
    p.extend(std::iter::repeat_n(b'a', 999));
    p.extend_from_slice(b"\r\n");
    assert_eq!(h.send(&p), "");
    // A line of 100 KB arrives in pieces: never buffered whole.
    for _ in 0..10 {
        h.send(&[b'b'; 10_000]);
        assert!(h.s.input_buffer().len() < 20_000);
    }
    assert_eq!(
        h.send(b"\r\n.\r\n"),
        "550 5.6.0 Message line longer than 998 octets\r\n"
    );
    assert!(h.messages.is_empty());
}

#[test]
fn recipient_limit() {
    let mut h = Harness::new();
    h.ehlo();
    h.send(b"MAIL FROM:<a@b.test>\r\n");
    let mut cmds = String::new();
    for i in 0..101 {
        cmds.push_str(&format!("RCPT TO:<u{i}@ok.test>\r\n"));
    }
    let out = h.send(cmds.as_bytes());
    assert_eq!(
        out.matches("250 2.1.5").count(),
        100,
        "at least 100 must be allowed"
    );
    assert!(out.ends_with("452 4.5.3 Too many recipients\r\n"));
    assert_eq!(
        h.send(b"DATA\r\n").get(..3),
        Some("354"),
        "session continues"
    );
}

#[test]
fn size_declared_actual_and_malformed() {
    let mut h = Harness::new();
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test> SIZE=10001\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert!(h
        .send(b"MAIL FROM:<a@b.test> SIZE=abc\r\n")
        .starts_with("501 5.5.4 "));
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test> SIZE=100\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    h.send(b"RCPT TO:<u@ok.test>\r\nDATA\r\n");
    let mut big = Vec::new();
    for _ in 0..200 {
        big.extend_from_slice(&[b'z'; 98]);
        big.extend_from_slice(b"\r\n");
    }
    assert_eq!(h.send(&big), "", "read to the end before answering");
    assert_eq!(
        h.send(b".\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert!(h.messages.is_empty(), "nothing stored");
}

#[test]
fn too_many_errors_closes() {
    let mut h = Harness::new();
    let mut out = String::new();
    for _ in 0..25 {
        out.push_str(&h.send(b"BOGUS\r\n"));
        if h.closed {
            break;
        }
    }
    assert!(h.closed);
    assert_eq!(out.matches("500 5.5.1").count(), 21);
    assert!(out.ends_with("421 4.7.0 Too many errors, closing transmission channel\r\n"));
}

#[test]
fn nul_and_non_ascii() {
    let mut h = Harness::new();
    h.ehlo();
    assert_eq!(
        h.send(b"NOOP a\0b\r\n"),
        "501 5.5.2 NUL character in command\r\n"
    );
    assert_eq!(
        h.send("MAIL FROM:<jürgen@b.test>\r\n".as_bytes()),
        "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n"
    );
    h.send(b"MAIL FROM:<a@b.test>\r\n");
    assert_eq!(
        h.send("RCPT TO:<ü@ok.test>\r\n".as_bytes()),
        "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n"
    );
}

#[test]
fn hop_limit() {
    let mut h = Harness::with(ServerConfig {
        max_received: 3,
        ..config()
    });
    h.open_tx();
    h.send(b"DATA\r\n");
    let out = h.send(b"Received: a\r\nReceived: b\r\nReceived: c\r\nReceived: d\r\n\r\nx\r\n.\r\n");
    assert_eq!(out, "554 5.4.0 Too many Received headers: mail loop\r\n");
    assert!(h.messages.is_empty());
}

#[test]
fn policy_decides_recipients_and_senders() {
    let mut h = Harness::new();
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<full@disk.test>\r\n"),
        "452 4.3.1 Insufficient system storage, try again later\r\n"
    );
    h.send(b"MAIL FROM:<a@b.test>\r\n");
    assert_eq!(
        h.send(b"RCPT TO:<x@not-ours.test>\r\n"),
        "550 5.7.1 Relaying denied\r\n"
    );
}

#[test]
fn storage_failure_is_never_250() {
    let mut h = Harness::new();
    h.verdict = codes::storage_failed();
    h.open_tx();
    h.send(b"DATA\r\n");
    assert_eq!(
        h.send(b"x\r\n.\r\n"),
        "451 4.3.0 Local error in processing: message not stored, try again\r\n"
    );
}

#[test]
fn xmm4_sync_and_dsn_parameters() {
    let mut h = Harness::new();
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test> RET=HDRS ENVID=T+2B1 XMM4-RES=SYNC\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        h.send(b"RCPT TO:<u@ok.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;+2B4917@ok.test\r\n"),
        "250 2.1.5 Recipient OK\r\n"
    );
    h.send(b"DATA\r\n");
    h.send(b"x\r\n.\r\n");
    let m = &h.messages[0];
    assert!(m.mail_from.xmm4_sync);
    assert_eq!(m.mail_from.ret, Some(smtp::Ret::Hdrs));
    assert_eq!(m.mail_from.envid.as_deref(), Some("T+1"));
    assert_eq!(m.rcpts[0].orcpt.as_deref(), Some("+4917@ok.test"));
    assert_eq!(
        m.rcpts[0].notify,
        smtp::server::notify::FAILURE | smtp::server::notify::DELAY
    );

    let mut h = Harness::with(ServerConfig {
        xmm4_versions: vec![],
        ..config()
    });
    let ehlo = h.send(b"EHLO c\r\n");
    assert!(!ehlo.contains("XMM4"));
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test> XMM4-RES=SYNC\r\n"),
        "555 5.5.4 Unsupported parameter XMM4-RES\r\n"
    );
}

#[test]
fn mm4_envelope_addresses_are_accepted() {
    let mut h = Harness::new();
    h.ehlo();
    // Qualified and unqualified PLMN reverse paths, as deployed relays send them.
    assert_eq!(
        h.send(b"MAIL FROM:<+15551230001/TYPE=PLMN>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        h.send(b"RCPT TO:<+15551230002/TYPE=PLMN>\r\n").get(..3),
        Some("550"),
        "policy saw it"
    );
    h.send(b"RSET\r\n");
    assert_eq!(h.send(b"MAIL FROM:<>\r\n"), "250 2.1.0 Sender OK\r\n");
    assert_eq!(
        h.send(b"RCPT TO:<u@ok.test>\r\nDATA\r\n")
            .matches("\r\n")
            .count(),
        2
    );
    h.send(b"x\r\n.\r\n");
    assert_eq!(h.messages[0].mail_from.address, "");
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A session with AUTH configured, past STARTTLS and the second EHLO.
fn auth_harness() -> Harness {
    let mut h = Harness::with(ServerConfig {
        auth_available: true,
        ..config()
    });
    h.ehlo();
    assert_eq!(h.send(b"STARTTLS\r\n"), "220 2.0.0 Ready to start TLS\r\n");
    h.s.tls_established();
    let ehlo = h.send(b"EHLO client.test\r\n");
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN\r\n"), "{ehlo}");
    h
}

#[test]
fn auth_is_offered_and_accepted_only_over_tls() {
    let mut h = Harness::with(ServerConfig {
        auth_available: true,
        ..config()
    });
    let ehlo = h.send(b"EHLO client.test\r\n");
    assert!(!ehlo.contains("AUTH"), "not before TLS: {ehlo}");
    let plain = format!("AUTH PLAIN {}\r\n", b64("\0peer-b\0s3cret"));
    assert_eq!(
        h.send(plain.as_bytes()),
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    // Not configured at all: not implemented, even over TLS.
    let mut n = Harness::new();
    n.ehlo();
    n.send(b"STARTTLS\r\n");
    n.s.tls_established();
    let ehlo = n.send(b"EHLO client.test\r\n");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(n.send(plain.as_bytes()).starts_with("502 5.5.1"));
}

#[test]
fn auth_plain_with_and_without_initial_response() {
    let mut h = auth_harness();
    let wrong = format!("AUTH PLAIN {}\r\n", b64("\0peer-b\0guess"));
    assert_eq!(
        h.send(wrong.as_bytes()),
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    // Nobody acts for another.
    let other = format!("AUTH PLAIN {}\r\n", b64("admin\0peer-b\0s3cret"));
    assert!(h.send(other.as_bytes()).starts_with("535 5.7.8"));
    assert_eq!(h.send(b"AUTH PLAIN\r\n"), "334 \r\n");
    let creds = format!("{}\r\n", b64("\0peer-b\0s3cret"));
    assert_eq!(
        h.send(creds.as_bytes()),
        "235 2.7.0 Authentication succeeded\r\n"
    );
    assert!(h.send(b"AUTH PLAIN\r\n").starts_with("503 5.5.1"), "once");
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.test>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    h.send(b"RCPT TO:<x@ok.test>\r\nDATA\r\n");
    h.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    assert_eq!(
        h.messages[0].peer.authenticated.as_deref(),
        Some("operator-b"),
        "the message carries who proved it"
    );
}

#[test]
fn auth_login_and_cancel() {
    let mut h = auth_harness();
    assert_eq!(h.send(b"AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.send(b"*\r\n"), "501 5.0.0 Authentication cancelled\r\n");
    assert_eq!(h.send(b"AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(
        h.send(format!("{}\r\n", b64("peer-b")).as_bytes()),
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        h.send(format!("{}\r\n", b64("s3cret")).as_bytes()),
        "235 2.7.0 Authentication succeeded\r\n"
    );
    assert!(h.send(b"AUTH CRAM-MD5\r\n").starts_with("503"));
    let mut g = auth_harness();
    assert!(g.send(b"AUTH CRAM-MD5\r\n").starts_with("504 5.5.4"));
    assert!(g
        .send(b"AUTH LOGIN\r\n!!notbase64\r\n")
        .ends_with("501 5.5.2 Invalid base64\r\n"));
}
