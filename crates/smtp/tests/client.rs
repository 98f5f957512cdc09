//! The sans-IO client, byte-exact: what goes on the wire for each capability combination, and
//! how the replies are read back into one outcome per recipient.

use mm4::mapping::Outcome;
use mm4::RequestStatus;
use smtp::client::{
    interpret, plan, Capabilities, DataMode, OutEnvelope, OutRcpt, PlanError, ReplyReader,
};
use smtp::server::notify;
use smtp::Reply;

fn caps(ehlo: &str) -> Capabilities {
    let mut r = ReplyReader::new();
    r.feed(ehlo.as_bytes());
    Capabilities::from_ehlo(&r.next_reply().unwrap().unwrap())
}

fn env(sync: bool) -> OutEnvelope {
    OutEnvelope {
        mail_from: "mm4-bounce@mms.mnc001.mcc001.gprs".into(),
        envid: Some("T-1+x".into()),
        ret_hdrs: true,
        xmm4_sync: sync,
        rcpts: vec![
            OutRcpt {
                address: "+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs".into(),
                orcpt: None,
                notify: notify::FAILURE | notify::DELAY,
            },
            OutRcpt {
                address: "+491722222222/TYPE=PLMN@mms.mnc002.mcc262.gprs".into(),
                orcpt: Some("+491722222222/TYPE=PLMN@mms.mnc002.mcc262.gprs".into()),
                notify: 0,
            },
        ],
    }
}

fn text(v: &[Vec<u8>]) -> Vec<String> {
    v.iter()
        .map(|c| String::from_utf8(c.clone()).unwrap())
        .collect()
}

const BODY: &[u8] = b"Subject: x\r\n\r\n.leading dot\r\nline\r\n";

#[test]
fn no_extensions_lockstep_data() {
    let c = caps("250 peer.test\r\n");
    let p = plan(&env(true), BODY, &c).unwrap();
    assert!(!p.pipelined);
    assert_eq!(p.mode, DataMode::Data);
    assert_eq!(
        text(&p.commands),
        [
            "MAIL FROM:<mm4-bounce@mms.mnc001.mcc001.gprs>\r\n",
            "RCPT TO:<+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs>\r\n",
            "RCPT TO:<+491722222222/TYPE=PLMN@mms.mnc002.mcc262.gprs>\r\n",
            "DATA\r\n",
        ]
    );
    assert_eq!(
        p.payload,
        b"Subject: x\r\n\r\n..leading dot\r\nline\r\n.\r\n"
    );
}

#[test]
fn pipelining_size_dsn_and_xmm4() {
    let c = caps("250-peer.test\r\n250-SIZE 500000\r\n250-PIPELINING\r\n250-DSN\r\n250 XMM4 V=6.16.0 SYNC\r\n");
    let p = plan(&env(true), BODY, &c).unwrap();
    assert!(p.pipelined);
    assert_eq!(
        text(&p.commands),
        [
            format!("MAIL FROM:<mm4-bounce@mms.mnc001.mcc001.gprs> SIZE={} RET=HDRS ENVID=T-1+2Bx XMM4-RES=SYNC\r\n", BODY.len()),
            "RCPT TO:<+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs> NOTIFY=FAILURE,DELAY ORCPT=rfc822;+2B491721111111/TYPE+3DPLMN@mms.mnc002.mcc262.gprs\r\n".into(),
            "RCPT TO:<+491722222222/TYPE=PLMN@mms.mnc002.mcc262.gprs> ORCPT=rfc822;+2B491722222222/TYPE+3DPLMN@mms.mnc002.mcc262.gprs\r\n".into(),
            "DATA\r\n".into(),
        ]
    );
    // Without XMM4 SYNC on the server, the parameter is never sent.
    let c = caps("250-peer.test\r\n250-DSN\r\n250 XMM4 V=6.16.0\r\n");
    let p = plan(&env(true), BODY, &c).unwrap();
    assert!(!String::from_utf8_lossy(&p.commands[0]).contains("XMM4-RES"));
}

#[test]
fn chunking_and_binarymime() {
    let c = caps(
        "250-peer.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250 CHUNKING\r\n",
    );
    let binary = b"Subject: x\r\n\r\n\x00\xff\nraw\r.";
    let p = plan(&env(false), binary, &c).unwrap();
    assert_eq!(p.mode, DataMode::Bdat);
    assert_eq!(
        text(&p.commands)[0],
        "MAIL FROM:<mm4-bounce@mms.mnc001.mcc001.gprs> BODY=BINARYMIME\r\n"
    );
    assert_eq!(
        text(&p.commands)[3],
        format!("BDAT {} LAST\r\n", binary.len())
    );
    assert_eq!(
        p.payload, binary,
        "BDAT carries the octets unchanged, no dot-stuffing"
    );
    // 8-bit text over DATA needs 8BITMIME.
    let c = caps("250-peer.test\r\n250 8BITMIME\r\n");
    let eight = "Subject: x\r\n\r\nGrüße\r\n".as_bytes();
    let p = plan(&env(false), eight, &c).unwrap();
    assert_eq!(
        text(&p.commands)[0],
        "MAIL FROM:<mm4-bounce@mms.mnc001.mcc001.gprs> BODY=8BITMIME\r\n"
    );
    // No 8BITMIME: not sent as is.
    assert_eq!(
        plan(&env(false), eight, &caps("250 peer.test\r\n")),
        Err(PlanError::NeedsDowngrade)
    );
    // Binary without BINARYMIME+CHUNKING: not sent as is either.
    assert_eq!(
        plan(&env(false), binary, &caps("250-p\r\n250 8BITMIME\r\n")),
        Err(PlanError::NeedsDowngrade)
    );
}

#[test]
fn size_limit_is_checked_before_sending() {
    let c = caps("250-peer.test\r\n250 SIZE 10\r\n");
    assert_eq!(
        plan(&env(false), BODY, &c),
        Err(PlanError::TooBig {
            size: BODY.len(),
            limit: 10
        })
    );
}

#[test]
fn nothing_ambiguous_reaches_the_wire() {
    let mut e = env(false);
    e.rcpts[0].address = "a@b.c>\r\nRCPT TO:<evil@x".into();
    assert!(matches!(
        plan(&e, BODY, &caps("250 p\r\n")),
        Err(PlanError::BadAddress(_))
    ));
}

fn r(code: u16, text: &str) -> Reply {
    let mut rr = ReplyReader::new();
    rr.feed(format!("{code} {text}\r\n").as_bytes());
    rr.next_reply().unwrap().unwrap()
}

#[test]
fn replies_become_per_recipient_outcomes() {
    let plain = caps("250-p\r\n250 PIPELINING\r\n");
    let out = interpret(
        &r(250, "2.1.0 ok"),
        &[r(250, "2.1.5 ok"), r(550, "5.1.1 unknown user")],
        Some(&r(354, "go")),
        Some(&r(250, "2.0.0 queued")),
        &plain,
    );
    assert_eq!(out[0].outcome, Outcome::Accepted);
    assert_eq!(
        out[1].outcome,
        Outcome::Fail(RequestStatus::ErrorSendingAddressUnresolved)
    );
    // A temporary refusal of MAIL applies to everyone.
    let out = interpret(
        &r(451, "4.3.0 later"),
        &[r(250, "x"), r(250, "x")],
        None,
        None,
        &plain,
    );
    assert!(out.iter().all(|o| o.outcome == Outcome::Retry));
    // The final reply decides for every accepted recipient.
    let out = interpret(
        &r(250, "ok"),
        &[r(250, "ok")],
        Some(&r(354, "go")),
        Some(&r(552, "5.3.4 too big")),
        &plain,
    );
    assert_eq!(
        out[0].outcome,
        Outcome::Fail(RequestStatus::ErrorContentNotAccepted)
    );
    // Connection lost before the final reply: retry.
    let out = interpret(
        &r(250, "ok"),
        &[r(250, "ok")],
        Some(&r(354, "go")),
        None,
        &plain,
    );
    assert_eq!(out[0].outcome, Outcome::Retry);
    // An XMM4 server's folded RES.
    let x = caps("250-p\r\n250 XMM4 V=6.16.0 SYNC\r\n");
    let out = interpret(
        &r(250, "ok"),
        &[r(250, "ok")],
        Some(&r(354, "go")),
        Some(&r(250, "2.0.0 [MM4 Ok] \"T\" accepted")),
        &x,
    );
    assert_eq!(out[0].mm4_verdict, Some(RequestStatus::Ok));
    let out = interpret(
        &r(250, "ok"),
        &[r(
            550,
            "5.1.1 [MM4 Error-sending-address-unresolved] not served here",
        )],
        None,
        None,
        &x,
    );
    assert_eq!(
        out[0].outcome,
        Outcome::Fail(RequestStatus::ErrorSendingAddressUnresolved)
    );
}
