//! The MMS Relay/Server semantics between real instances on loopback, each with its own store:
//! RES (separate mail and folded into the reply), duplicates, lost RES and re-send, delivery and
//! read reports with their RES, a DSN, charging records, restarts mid-scenario.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use store::Spool;

const B_DOMAIN: &str = "mms.mnc002.mcc262.gprs";

struct Op {
    dir: TempDir,
    relay: Relay,
    api: String,
}

fn port() -> u16 {
    free_port("127.0.0.1")
}

/// A: +1555, sends to B (+49172, or `prefix`) at `b_hosts`. B: +49172, RES to A at `a_hosts`.
fn operator_a(b_hosts: &str, extra: &str) -> Op {
    operator_a_with(b_hosts, extra, "+49172", "")
}

fn operator_a_with(b_hosts: &str, extra: &str, prefix: &str, api_extra: &str) -> Op {
    start_a(
        port(),
        ASpec {
            b_hosts,
            prefix,
            queue: &format!("retry_initial = \"1s\"\nretry_max = \"1s\"\n{extra}"),
            api: api_extra,
            ..ASpec::default()
        },
    )
}

/// Operator A's configuration beyond the fixed part: peer B's hosts and prefix, and lines for
/// `[queue]`, `[api]`, peer B's table, and after everything (more peers).
#[derive(Default)]
struct ASpec<'a> {
    b_hosts: &'a str,
    prefix: &'a str,
    queue: &'a str,
    api: &'a str,
    b: &'a str,
    more: &'a str,
    /// Arguments of `serve` beyond the configuration.
    args: &'a [&'a str],
}

/// Operator A (+1555) on `smtp_port`.
fn start_a(smtp_port: u16, spec: ASpec<'_>) -> Op {
    let dir = TempDir::new("rel-a");
    let api = port();
    let prefix = if spec.prefix.is_empty() {
        "+49172"
    } else {
        spec.prefix
    };
    let cfg = format!(
        r#"
[mmse]
domain = "{DOMAIN}"
local_prefixes = ["+1555"]
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
[api]
listen = "127.0.0.1:{api}"
{api_extra}
[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[store]
path = "{store}"
[queue]
{queue}
[[peer]]
name = "operator-b"
domains = ["{B_DOMAIN}"]
prefixes = ["{prefix}"]
hosts = [{b_hosts}]
tls = "none"
allow = ["127.0.0.1/32"]
{b}
{more}
"#,
        api_extra = spec.api,
        queue = spec.queue,
        b_hosts = spec.b_hosts,
        b = spec.b,
        more = spec.more,
        store = dir.0.join("data").display()
    );
    let smtp: SocketAddr = format!("127.0.0.1:{smtp_port}").parse().unwrap();
    let relay = Relay::start_with(&dir.0, &cfg, smtp, spec.args);
    Op {
        dir,
        relay,
        api: format!("http://127.0.0.1:{api}"),
    }
}

fn operator_b(smtp: SocketAddr, a_hosts: &str, smtp_extra: &str) -> Op {
    let dir = TempDir::new("rel-b");
    let api = port();
    let cfg = format!(
        r#"
[mmse]
domain = "{B_DOMAIN}"
local_prefixes = ["+49172"]
[smtp]
listen = ["{smtp}"]
{smtp_extra}
[api]
listen = "127.0.0.1:{api}"
[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[store]
path = "{store}"
[queue]
retry_initial = "1s"
retry_max = "1s"
[[peer]]
name = "operator-a"
domains = ["{DOMAIN}"]
prefixes = ["+1555"]
hosts = [{a_hosts}]
tls = "none"
allow = ["127.0.0.1/32"]
"#,
        store = dir.0.join("data").display()
    );
    let relay = Relay::start(&dir.0, &cfg, smtp);
    Op {
        dir,
        relay,
        api: format!("http://127.0.0.1:{api}"),
    }
}

fn submit(a: &Op, to: &str, dr: bool, rr: bool) -> String {
    let body = json!({
        "from": "+15550000001", "to": [to], "subject": "hello",
        "delivery_report": dr, "read_reply": rr,
        "parts": [{"content_type": "text/plain", "text": "hi there"}],
    });
    let (code, v) = http("POST", &a.api, "/v1/messages", Some(&body.to_string()));
    assert_eq!(code, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// The id of the one MM in `number`'s mailbox at `b`, once it is there.
fn only_in_mailbox(b: &Op, number: &str) -> String {
    let mbox = wait_api(&b.api, &format!("/v1/mailbox/{number}"), |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    });
    mbox[0]["id"].as_str().unwrap().to_string()
}

/// `number`'s report on MM `mid` at `b` (a delivery report or a read reply, as JSON).
fn report(b: &Op, number: &str, mid: &str, body: &str) -> (u16, Value) {
    http(
        "POST",
        &b.api,
        &format!("/v1/mailbox/{number}/{mid}/report"),
        Some(body),
    )
}

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["recipients"][0]["state"] == want
}

fn cdr_types(data: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(data.join("cdr")).into_iter().flatten() {
        for line in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            out.push(v["record_type"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Waits until the charging records of `data` hold every type of `want` (the exporter writes
/// them shortly after their events' commits); what they hold then.
fn wait_cdr_types(data: &Path, want: &[&str]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = cdr_types(data);
        if want.iter().all(|t| got.iter().any(|x| x == t)) {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{want:?} not in {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pair where B answers with separate RES mails (XMM4 off) or folds them (XMM4 on).
fn pair(xmm4: bool) -> (Op, Op) {
    pair_with(xmm4, &[])
}

/// [`pair`], A's `serve` given `a_args` too.
fn pair_with(xmm4: bool, a_args: &[&str]) -> (Op, Op) {
    let b_smtp: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
    let a_smtp_port = port();
    let b = operator_b(
        b_smtp,
        &format!("\"127.0.0.1:{a_smtp_port}\""),
        if xmm4 { "" } else { "xmm4 = false" },
    );
    // A on the port B sends its RES to.
    let a = start_a(
        a_smtp_port,
        ASpec {
            b_hosts: &format!("\"{b_smtp}\""),
            args: a_args,
            ..ASpec::default()
        },
    );
    (a, b)
}

/// The mail log's events for message `id` in `log`, in order (text or JSON lines).
fn mail_log_events(log: &str, id: &str, json: bool) -> Vec<String> {
    let mut out = Vec::new();
    for line in log.lines() {
        if json {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["target"] == "mail" && v["fields"]["id"].as_u64() == id.parse().ok() {
                out.push(v["fields"]["event"].as_str().unwrap_or("").to_string());
            }
        } else if line.contains(" mail: ") {
            let mut tokens = line.split_whitespace();
            if tokens.clone().any(|t| t == format!("id={id}")) {
                if let Some(e) = tokens.find_map(|t| t.strip_prefix("event=")) {
                    out.push(e.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn the_mail_log_follows_an_mm_by_its_id_in_text_and_json() {
    for json in [false, true] {
        let args: &[&str] = if json { &["--log-format", "json"] } else { &[] };
        let (a, b) = pair_with(false, args);
        let id = submit(&a, "+491721111111", true, false);
        wait_message(&a.api, &id, state_is("acknowledged"));
        let mid = only_in_mailbox(&b, "+491721111111");
        let (code, r) = report(&b, "+491721111111", &mid, r#"{"status":"Retrieved"}"#);
        assert_eq!(code, 202, "{r}");
        wait_message(&a.api, &id, state_is("delivered"));
        // Written right after the commit the API has already shown.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = mail_log_events(&a.relay.log(), &id, json);
            if events.last().map(String::as_str) == Some("delivered") {
                assert_eq!(
                    events,
                    [
                        "received",
                        "queued",
                        "forwarded",
                        "acknowledged",
                        "delivered"
                    ],
                    "json: {json}"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "json: {json}: {events:?}\n{}",
                a.relay.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if json {
            let log = a.relay.log();
            let received = log
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| {
                    v["fields"]["event"] == "received"
                        && v["fields"]["id"].as_u64() == id.parse().ok()
                })
                .unwrap();
            assert_eq!(received["fields"]["source"], "api", "{received}");
            assert_eq!(
                received["fields"]["from"],
                "+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs"
            );
        }
    }
}

#[test]
fn forward_res_delivery_report_and_read_reply_round_trips() {
    let (mut a, mut b) = pair(false);
    let id = submit(&a, "+491721111111", true, true);
    // A separate MM4_forward.RES mail from B acknowledges it.
    let v = wait_message(&a.api, &id, state_is("acknowledged"));
    let events = timeline(&v, 0, "event");
    assert_eq!(events, ["queued", "forwarded", "acknowledged"], "{v:#}");
    assert!(v["recipients"][0]["events"][2]["detail"]
        .as_str()
        .unwrap()
        .starts_with("MM4_forward.RES Ok"));

    // A restarts in the middle: state survives.
    a.relay.terminate();
    a.relay.restart();

    // B's subscriber retrieves and reads it: reports travel back, answered by RES.
    let mid = only_in_mailbox(&b, "+491721111111");
    let mbox = wait_api(&b.api, "/v1/mailbox/+491721111111", |_| true);
    assert_eq!(mbox[0]["delivery_report"], true);
    // B prepared an `Expired` report for the MM's expiry: shown apart, not as queue depth
    // (once its RES mail to A has gone, nothing waits at B).
    let q = wait_api(&b.api, "/v1/queue", |q| q["depth"] == 0);
    assert_eq!(q["scheduled"], json!({"operator-a": 1}), "{q:#}");
    assert_eq!(q["oldest"], json!([]), "{q:#}");
    let (code, r) = report(&b, "+491721111111", &mid, r#"{"status":"Retrieved"}"#);
    assert_eq!(code, 202, "{r}");
    let v = wait_message(&a.api, &id, state_is("delivered"));
    // The report B sent shows A's RES on its own timeline (found by its transaction id too).
    let dr = wait_message(&b.api, r["id"].as_str().unwrap(), state_is("acknowledged"));
    let by_tid = wait_message(&b.api, r["transaction_id"].as_str().unwrap(), |_| true);
    assert_eq!(by_tid["id"], r["id"], "{by_tid:#}");
    assert_eq!(
        timeline(&dr, 0, "event"),
        ["queued", "forwarded", "acknowledged"],
        "{dr:#}"
    );
    assert!(timeline(&dr, 0, "detail")[2].starts_with("MM4_delivery_report.RES Ok"));
    // The text follows the code (it said "MM4_forward.RES Ok" after a report `Retrieved`).
    assert_eq!(v["recipients"][0]["status_code"], "Retrieved");
    assert_eq!(
        v["recipients"][0]["status_text"],
        "delivery report: Retrieved"
    );
    let (code, _) = report(&b, "+491721111111", &mid, r#"{"read_status":"Read"}"#);
    assert_eq!(code, 202);
    let v = wait_message(&a.api, &id, state_is("read"));
    assert_eq!(v["recipients"][0]["status_code"], "Read");
    assert_eq!(v["recipients"][0]["status_text"], "read reply: Read");

    // Charging records on both sides (B's RES for the reports arrive back at B).
    let a_cdr = wait_cdr_types(
        &a.dir.0.join("data"),
        &["MMO4FRq", "MMO4FRs", "MMO4D", "MMO4R"],
    );
    let b_cdr = wait_cdr_types(
        &b.dir.0.join("data"),
        &["MMR4F", "MMR4DRq", "MMR4DRs", "MMR4RRq", "MMR4RRs"],
    );
    // Each event charged once (A restarted meanwhile).
    for cdrs in [&a_cdr, &b_cdr] {
        let mut types = cdrs.clone();
        types.sort();
        let n = types.len();
        types.dedup();
        assert_eq!(types.len(), n, "{cdrs:?}");
    }
    b.relay.terminate();
}

#[test]
fn reports_the_mm_did_not_ask_for_are_409() {
    let (a, b) = pair(true);
    let _ = submit(&a, "+491721111111", false, false);
    let mid = only_in_mailbox(&b, "+491721111111");
    let (code, v) = report(&b, "+491721111111", &mid, r#"{"status":"Retrieved"}"#);
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"]["code"], "report_not_requested");
    let (code, _) = http(
        "GET",
        &b.api,
        &format!("/v1/mailbox/+491721111111/{mid}/raw"),
        None,
    );
    assert_eq!(code, 200);
}

#[test]
fn a_delivered_mm_shows_its_return_path_and_our_trace_line() {
    let (a, b) = pair(false);
    let _ = submit(&a, "+491721111111", false, false);
    let mid = only_in_mailbox(&b, "+491721111111");
    let (code, raw) = http(
        "GET",
        &b.api,
        &format!("/v1/mailbox/+491721111111/{mid}/raw"),
        None,
    );
    assert_eq!(code, 200);
    let raw = raw.as_str().unwrap();
    let lines: Vec<&str> = raw.split("\r\n").take(6).collect();
    assert_eq!(
        lines[..4],
        [
            "Return-Path: <+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs>",
            "Received: from mmsc.mms.mnc001.mcc001.gprs ([127.0.0.1])",
            "\tby mmsc.mms.mnc002.mcc262.gprs (mmsrelay) with ESMTP",
            "\tfor <+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs>;",
        ],
        "{raw}"
    );
    assert!(lines[5].starts_with("X-Mms-3GPP-MMS-Version: "), "{raw}");
}

#[test]
fn long_lines_utf8_and_binary_reach_an_8bitmime_peer_and_end_acknowledged() {
    let (a, b) = pair(true);
    let (parts, want) = awkward_parts();
    let body = json!({"from": "+15550000001", "to": ["+491721111111"], "parts": parts});
    let (code, v) = http("POST", &a.api, "/v1/messages", Some(&body.to_string()));
    assert_eq!(code, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    wait_message(&a.api, &id, state_is("acknowledged"));
    let mid = only_in_mailbox(&b, "+491721111111");
    let (_, raw) = http(
        "GET",
        &b.api,
        &format!("/v1/mailbox/+491721111111/{mid}/raw"),
        None,
    );
    assert_eq!(decoded_parts(raw.as_str().unwrap()), want);
}

#[test]
fn xmm4_sync_folds_the_res_and_no_res_mail_is_sent() {
    let (a, mut b) = pair(true);
    let id = submit(&a, "+491721111111", false, false);
    let v = wait_message(&a.api, &id, state_is("acknowledged"));
    assert!(v["recipients"][0]["status_text"]
        .as_str()
        .unwrap()
        .contains("[MM4 Ok]"));
    std::thread::sleep(Duration::from_millis(500));
    b.relay.terminate();
    let s = store::Embedded::open(&b.relay.store_path()).unwrap();
    // B queued nothing outbound: no RES mail for a folded RES.
    assert!(
        wait(s.queues()).unwrap().is_empty(),
        "nothing left in any queue"
    );
    let mut res_mails = 0;
    for id in 1..20 {
        if let Some(m) = wait(s.message(id)).unwrap() {
            let m: Value = serde_json::from_slice(&m).unwrap();
            if m["kind"]["mm4"]["message_type"] == "MM4_forward.RES" {
                res_mails += 1;
            }
        }
    }
    assert_eq!(res_mails, 0);
    // The EHLO record shows B's XMM4 on A's side.
    let (_, peers) = http("GET", &a.api, "/v1/peers", None);
    assert_eq!(peers[0]["ehlo"]["xmm4"]["sync"], true, "{peers:#}");
    assert_eq!(peers[0]["effective"]["xmm4_sync"]["source"], "ehlo");
}

#[test]
fn a_duplicate_forward_is_filed_once_and_answered_twice() {
    let (a, mut b) = pair(false);
    // The same forward twice (a resend after a lost RES), straight into B.
    let mut c = Client::connect(b.relay.smtp);
    c.hello();
    let fwd = String::from_utf8(forward("DUP-1", "+491721111111", 500))
        .unwrap()
        .replace(
            "system-user@mms.mnc002.mcc262.gprs",
            "system-user@mms.mnc001.mcc001.gprs",
        )
        .replace("mms.mnc002.mcc262.gprs\"", "mms.mnc001.mcc001.gprs\"");
    for _ in 0..2 {
        let r = c.transaction(
            "+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs",
            &["+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs"],
            fwd.as_bytes(),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (_, mbox) = http("GET", &b.api, "/v1/mailbox/+491721111111", None);
    assert_eq!(mbox.as_array().unwrap().len(), 1, "filed once");
    b.relay.terminate();
    let s = store::Embedded::open(&b.relay.store_path()).unwrap();
    let mut res = 0;
    for id in 1..20 {
        if let Some(m) = wait(s.message(id)).unwrap() {
            let m: Value = serde_json::from_slice(&m).unwrap();
            if m["kind"]["mm4"]["message_type"] == "MM4_forward.RES" {
                res += 1;
                assert_eq!(m["transaction_id"], "DUP-1");
            }
        }
    }
    assert_eq!(res, 2, "answered twice");
    drop(a);
}

#[test]
fn a_lost_res_means_the_same_req_again_then_acknowledged_once() {
    // B's RES go first to a host that takes one mail and loses it, then dies.
    let swallower = TcpListener::bind("127.0.0.1:0").unwrap();
    let sw_addr = swallower.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        if let Ok((s, _)) = swallower.accept() {
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let _ = w.write_all(b"220 blackhole ESMTP\r\n");
            let mut in_data = false;
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if in_data {
                    if line == ".\r\n" {
                        let _ = w.write_all(b"250 2.0.0 swallowed\r\n");
                        break;
                    }
                } else if line.starts_with("DATA") {
                    let _ = w.write_all(b"354 go\r\n");
                    in_data = true;
                } else if line.starts_with("EHLO") {
                    let _ = w.write_all(b"250-blackhole\r\n250 PIPELINING\r\n");
                } else {
                    let _ = w.write_all(b"250 2.0.0 ok\r\n");
                }
                line.clear();
            }
        }
        // The listener is dropped here: later connections are refused.
    });
    let b_smtp: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
    let a_smtp_port = port();
    let b = operator_b(
        b_smtp,
        &format!("\"{sw_addr}\", \"127.0.0.1:{a_smtp_port}\""),
        "xmm4 = false",
    );
    let a = start_a(
        a_smtp_port,
        ASpec {
            b_hosts: &format!("\"{b_smtp}\""),
            queue: "ack_timeout = \"2s\"\nack_resends = 3",
            ..ASpec::default()
        },
    );
    let id = submit(&a, "+491721111111", false, false);
    let v = wait_message(&a.api, &id, state_is("acknowledged"));
    let details = timeline(&v, 0, "detail");
    assert!(
        details.iter().any(|d| d.contains("re-send 1")),
        "{details:#?}"
    );
    let (_, mbox) = http("GET", &b.api, "/v1/mailbox/+491721111111", None);
    assert_eq!(
        mbox.as_array().unwrap().len(),
        1,
        "one mailbox entry despite the re-send"
    );
}

#[test]
fn a_dsn_from_an_mta_fails_the_recipient_with_the_mapped_code() {
    // B accepts but its RES can never reach A: A waits in "forwarded".
    let b_smtp: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
    let _b = operator_b(b_smtp, "\"127.0.0.1:9\"", "xmm4 = false");
    let a = operator_a(&format!("\"{b_smtp}\""), "");
    let id = submit(&a, "+491721111111", false, false);
    let v = wait_message(&a.api, &id, state_is("forwarded"));
    let (_, m) = http("GET", &a.api, &format!("/v1/messages/{id}"), None);
    let tid = m["transaction_id"].as_str().unwrap().to_string();
    let rcpt = "+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs";
    let _ = v;
    // A DSN as Postfix writes them (the vector), for our transaction and recipient.
    let dsn = String::from_utf8(vector("dsn/postfix-failed.eml"))
        .unwrap()
        .replace("A-20261125-000099", &tid)
        .replace("+491790000000/TYPE=PLMN@mms.mnc007.mcc262.gprs", rcpt)
        .replace(
            "+2B491790000000/TYPE=PLMN@mms.mnc007.mcc262.gprs",
            &format!("+2B{}", &rcpt[1..]),
        );
    let mut c = Client::connect(a.relay.smtp);
    c.hello();
    let r = c.transaction("", &["mm4-bounce@mms.mnc001.mcc001.gprs"], dsn.as_bytes());
    assert!(r.starts_with("250"), "{r}");
    let v = wait_message(&a.api, &id, state_is("failed"));
    assert_eq!(
        v["recipients"][0]["status_code"],
        "Error-sending-address-unresolved"
    );
    assert!(
        v["recipients"][0]["status_text"]
            .as_str()
            .unwrap()
            .contains("5.1.1"),
        "{v:#}"
    );
}

#[test]
fn queue_control_and_metrics() {
    // B is not there: the message waits; the operator retries, then gives up.
    let a = operator_a("\"127.0.0.1:9\"", "");
    let id = submit(&a, "+491721111111", true, false);
    wait_message(&a.api, &id, state_is("deferred"));
    let (code, q) = http("GET", &a.api, "/v1/queue", None);
    assert_eq!(code, 200);
    assert_eq!(q["peers"]["operator-b"], 1, "{q:#}");
    let (code, r) = http("POST", &a.api, &format!("/v1/queue/{id}/retry"), None);
    assert_eq!((code, r["retried"].as_u64()), (200, Some(1)));
    let (_, peers) = http("GET", &a.api, "/v1/peers", None);
    assert!(
        peers[0]["last_error"]["error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{peers:#}"
    );
    let (code, r) = http("DELETE", &a.api, &format!("/v1/queue/{id}"), None);
    assert_eq!((code, r["failed"].as_u64()), (200, Some(1)));
    let v = wait_message(&a.api, &id, state_is("failed"));
    assert!(v["recipients"][0]["status_text"]
        .as_str()
        .unwrap()
        .contains("operator"));
    let (code, _) = http("GET", &a.api, "/v1/queue", None);
    assert_eq!(code, 200);
    let addr = a.api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(
        text.contains("mmsrelay_messages_out_total{peer=\"operator-b\",result=\"retry\"}"),
        "{text}"
    );
    assert!(text.contains("mmsrelay_store_fsyncs"));
    assert!(text.contains("mmsrelay_delivery_latency_seconds_bucket"));
}

#[test]
fn an_unretrieved_mm_expires_with_a_report() {
    let (a, b) = pair(true);
    let body = json!({
        "from": "+15550000001", "to": ["+491721111111", "+491722222222"], "delivery_report": true,
        "expiry": "2s", "parts": [{"content_type": "text/plain", "text": "short-lived"}],
    });
    let (code, v) = http("POST", &a.api, "/v1/messages", Some(&body.to_string()));
    assert_eq!(code, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // The second recipient retrieves it in time: no Expired report for that one.
    let mbox = wait_api(&b.api, "/v1/mailbox/+491722222222", |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    });
    let mid = mbox[0]["id"].as_str().unwrap();
    let (code, _) = http(
        "POST",
        &b.api,
        &format!("/v1/mailbox/+491722222222/{mid}/report"),
        Some(r#"{"status":"Retrieved"}"#),
    );
    assert_eq!(code, 202);
    let v = wait_message(&a.api, &id, |v| {
        v["recipients"][0]["state"] == "expired" && v["recipients"][1]["state"] == "delivered"
    });
    assert_eq!(v["recipients"][0]["status_code"], "Expired");
    std::thread::sleep(Duration::from_millis(500));
    let v = wait_message(&a.api, &id, |_| true);
    assert_eq!(
        v["recipients"][1]["state"], "delivered",
        "the cancelled Expired report never came"
    );
}

#[test]
fn capability_exchange_with_an_mmsrelay_and_with_a_peer_that_does_not_know_it() {
    let b_smtp: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
    let a_smtp_port = port();
    let b = operator_b(b_smtp, &format!("\"127.0.0.1:{a_smtp_port}\""), "");
    let (hole, taken) = blackhole();
    let peer_c = format!(
        "[[peer]]\nname = \"operator-c\"\ndomains = [\"mms.mnc007.mcc262.gprs\"]\nprefixes = [\"+49179\"]\n\
hosts = [\"{hole}\"]\ntls = \"none\"\ncapabilities = \"exchange\"\nmax_message_size = 307200\n"
    );
    let a = start_a(
        a_smtp_port,
        ASpec {
            b_hosts: &format!("\"{b_smtp}\""),
            b: "capabilities = \"exchange\"",
            more: &peer_c,
            ..ASpec::default()
        },
    );
    // B (an mmsrelay) answers the exchange.
    let peers = wait_api(&a.api, "/v1/peers", |v| {
        v[0]["exchanged"]["versions"].is_array()
    });
    assert_eq!(peers[0]["exchanged"]["status"], "Ok");
    assert!(peers[0]["exchanged"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "6.16.0"));
    assert!(peers[0]["exchanged"]["reports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "delivery"));
    // C knows nothing of it: it takes the REQ and never answers; traffic is not held up and the
    // static profile rules.
    let id = submit(&a, "+491791111111", false, false);
    wait_message(&a.api, &id, state_is("forwarded"));
    assert!(
        taken.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the exchange REQ and the forward"
    );
    let (_, peers) = http("GET", &a.api, "/v1/peers", None);
    assert!(peers[1]["exchanged"].is_null(), "{:#}", peers[1]);
    assert_eq!(peers[1]["effective"]["max_message_size"]["value"], 307200);
    assert_eq!(
        peers[1]["effective"]["max_message_size"]["source"],
        "static"
    );
    // Passive learning on B's side: the exchange REQ showed A's version.
    let (_, b_peers) = http("GET", &b.api, "/v1/peers", None);
    assert_eq!(b_peers[0]["learned"]["version"], "6.16.0", "{b_peers:#}");
    assert_eq!(b_peers[0]["effective"]["mms_version"]["source"], "learned");
}

#[test]
fn bearer_token_guards_the_api() {
    let a = operator_a_with("\"127.0.0.1:9\"", "", "+49172", "token = \"s3cret\"");
    let (code, v) = http("GET", &a.api, "/v1/queue", None);
    assert_eq!(code, 401);
    assert_eq!(v["error"]["code"], "unauthorized");
    let addr = a.api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(format!("GET /v1/queue HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // Liveness needs no token.
    let (code, _) = http("GET", &a.api, "/healthz", None);
    assert_eq!(code, 200);
}

#[test]
fn a_number_the_peer_does_not_serve_fails_unresolved() {
    // A routes all of +4917 to B; B serves only +49172.
    let b_smtp: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
    let _b = operator_b(b_smtp, "\"127.0.0.1:9\"", "");
    let a = operator_a_with(&format!("\"{b_smtp}\""), "", "+4917", "");
    let id = submit(&a, "+491791111111", false, false);
    let v = wait_message(&a.api, &id, state_is("failed"));
    assert_eq!(
        v["recipients"][0]["status_code"],
        "Error-sending-address-unresolved"
    );
    assert!(
        v["recipients"][0]["status_text"]
            .as_str()
            .unwrap()
            .contains("[MM4 Error-sending-address-unresolved]"),
        "{v:#}"
    );
}

#[test]
fn a_plain_bounce_is_correlated_through_the_returned_headers() {
    let b_smtp: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
    let _b = operator_b(b_smtp, "\"127.0.0.1:9\"", "xmm4 = false");
    let a = operator_a(&format!("\"{b_smtp}\""), "");
    let id = submit(&a, "+491721111111", false, false);
    wait_message(&a.api, &id, state_is("forwarded"));
    let (_, m) = http("GET", &a.api, &format!("/v1/messages/{id}"), None);
    let tid = m["transaction_id"].as_str().unwrap();
    let bounce = format!(
        "From: MAILER-DAEMON@old.mta\r\nTo: mm4-bounce@mms.mnc001.mcc001.gprs\r\nSubject: failure notice\r\n\r\n\
Hi. This is the mail program. Sorry, your message could not be delivered.\r\n\
<+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs>: 550 mailbox unavailable\r\n\r\n\
--- Below this line is a copy of the message.\r\n\r\nX-Mms-Transaction-ID: \"{tid}\"\r\nX-Mms-Message-Type: MM4_forward.REQ\r\n"
    );
    let mut c = Client::connect(a.relay.smtp);
    c.hello();
    let r = c.transaction(
        "",
        &["mm4-bounce@mms.mnc001.mcc001.gprs"],
        bounce.as_bytes(),
    );
    assert!(r.starts_with("250"), "{r}");
    let v = wait_message(&a.api, &id, state_is("failed"));
    assert_eq!(v["recipients"][0]["status_code"], "Error-unspecified");
    assert!(
        v["recipients"][0]["status_text"]
            .as_str()
            .unwrap()
            .contains("550 mailbox unavailable"),
        "{v:#}"
    );
}

#[test]
fn pausing_a_peer_through_the_api_holds_its_deliveries_until_resumed() {
    let (a, b) = pair(true);
    let (code, v) = http("POST", &a.api, "/v1/peers/operator-b/pause", None);
    assert_eq!((code, &v["paused"]), (200, &json!(true)), "{v}");
    let (_, peers) = http("GET", &a.api, "/v1/peers", None);
    assert_eq!(peers[0]["paused"], true, "{peers:#}");
    let (code, v) = http("POST", &a.api, "/v1/peers/nobody/pause", None);
    assert_eq!(
        (code, &v["error"]["code"]),
        (404, &json!("not_found")),
        "{v}"
    );
    let id = submit(&a, "+491721111112", false, false);
    let v = wait_message(&a.api, &id, state_is("queued"));
    assert_eq!(v["recipients"][0]["attempts"], 0, "{v:#}");
    let (code, v) = http("POST", &a.api, "/v1/peers/operator-b/resume", None);
    assert_eq!((code, &v["paused"]), (200, &json!(false)), "{v}");
    wait_message(&a.api, &id, state_is("acknowledged"));
    let (_, peers) = http("GET", &a.api, "/v1/peers", None);
    assert_eq!(peers[0]["paused"], false);
    drop(b);
}

#[test]
fn every_api_error_is_the_json_error_object() {
    let a = operator_a("\"127.0.0.1:9\"", "");
    // A method the route does not have.
    let (code, v) = http("DELETE", &a.api, "/v1/messages", None);
    assert_eq!(
        (code, &v["error"]["code"]),
        (405, &json!("method_not_allowed")),
        "{v}"
    );
    // An unknown path.
    let (code, v) = http("GET", &a.api, "/v1/nothing", None);
    assert_eq!(
        (code, &v["error"]["code"]),
        (404, &json!("not_found")),
        "{v}"
    );
    // Bad JSON.
    let (code, v) = http("POST", &a.api, "/v1/messages", Some("{not json"));
    assert_eq!(code, 400, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    // A body over the limit (written by a thread: the relay may answer before taking it all).
    use std::io::{Read, Write};
    let addr = a.api.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let big = 8 * 1024 * 1024;
    let writer = std::thread::spawn(move || {
        let head = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
Content-Type: application/json\r\nContent-Length: {big}\r\n\r\n"
        );
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&vec![b' '; big]);
    });
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: Value = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    assert_eq!(v["error"]["code"], "too_large", "{resp}");
    let _ = writer.join();
}

/// `GET /v1/messages?q=`: a subscriber's MMs, sent or received, newest first and a page at a
/// time; an MM by its message id or transaction id; never our control traffic (RES mails,
/// reports), which shows on its MM's timeline instead.
#[test]
fn messages_are_found_by_msisdn_a_page_at_a_time_without_control_traffic() {
    let (a, b) = pair(false);
    let to = "+491721111111";
    let ids: Vec<String> = (0..3).map(|_| submit(&a, to, true, false)).collect();
    let other = submit(&a, "+491722222222", false, false);
    for id in ids.iter().chain([&other]) {
        wait_message(&a.api, id, state_is("acknowledged"));
    }
    // B's subscriber retrieves the first: a delivery report comes back to A, answered by RES.
    let mid = wait_api(&b.api, &format!("/v1/mailbox/{to}"), |m| {
        m.as_array().is_some_and(|m| m.len() == 3)
    })[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, r) = report(&b, to, &mid, r#"{"status":"Retrieved"}"#);
    assert_eq!(code, 202, "{r}");
    wait_message(&a.api, &ids[0], state_is("delivered"));
    wait_message(&b.api, r["id"].as_str().unwrap(), state_is("acknowledged"));
    // The mailbox too is read a page at a time, oldest first.
    let (_, page) = http("GET", &b.api, &format!("/v1/mailbox/{to}?limit=2"), None);
    let page: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!((page.len(), page[0]), (2, mid.as_str()));
    let (_, rest) = http(
        "GET",
        &b.api,
        &format!("/v1/mailbox/{to}?limit=2&after={}", page[1]),
        None,
    );
    assert_eq!(rest.as_array().unwrap().len(), 1, "{rest}");

    let search = |op: &Op, query: &str| -> Value {
        let (code, v) = http("GET", &op.api, &format!("/v1/messages?{query}"), None);
        assert_eq!(code, 200, "{query}: {v}");
        v
    };
    let listed = |v: &Value| -> Vec<String> {
        let list = v["messages"].as_array().unwrap();
        list.iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    // Newest first, two to a page; the last page says there is no next.
    let q = format!("q={}&limit=2", to.replace('+', "%2B"));
    let page1 = search(&a, &q);
    assert_eq!(listed(&page1), [ids[2].as_str(), &ids[1]], "{page1:#}");
    let next = page1["next"].as_u64().expect("a next page");
    let page2 = search(&a, &format!("{q}&before={next}"));
    assert_eq!(listed(&page2), [ids[0].as_str()], "{page2:#}");
    assert_eq!(page2["next"], Value::Null);
    let first = &page2["messages"][0];
    assert_eq!(first["recipients"][0]["state"], "delivered", "{first:#}");
    assert_eq!(first["recipients"][0]["address"], format!("{to}/TYPE=PLMN"));
    // The sender finds all four, and nothing else: no RES, no report.
    let sent = search(&a, "q=%2B15550000001/TYPE=PLMN");
    assert_eq!(
        listed(&sent),
        [other.as_str(), &ids[2], &ids[1], &ids[0]],
        "{sent:#}"
    );
    // By the MM4 message id, by our transaction id.
    let mm_id = first["message_id"].as_str().unwrap();
    let by_mm_id = search(&a, &format!("q={}", mm_id.replace('@', "%40")));
    assert_eq!(listed(&by_mm_id), [ids[0].as_str()], "{by_mm_id:#}");
    let tid = first["transaction_id"].as_str().unwrap();
    assert_eq!(listed(&search(&a, &format!("q={tid}"))), [ids[0].as_str()]);
    // B lists what its subscriber received, filed locally, and not the report it sent.
    let received = search(&b, &format!("q={}", to.replace('+', "%2B")));
    let list = received["messages"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{received:#}");
    assert!(list
        .iter()
        .all(|m| m["recipients"][0]["state"] == "delivered_local"
            && m["from"].as_str().unwrap().starts_with("+15550000001")));
    assert!(listed(&received)
        .iter()
        .all(|id| id != r["id"].as_str().unwrap()));
    // A number no one used finds nothing; a bad page size is the JSON error.
    assert_eq!(search(&a, "q=%2B4930000000")["messages"], json!([]));
    let (code, v) = http("GET", &a.api, "/v1/messages?q=%2B1&limit=0", None);
    assert_eq!(
        (code, &v["error"]["code"]),
        (400, &json!("invalid_request")),
        "{v}"
    );
    let (code, v) = http("GET", &a.api, "/v1/messages", None);
    assert_eq!(
        (code, &v["error"]["code"]),
        (400, &json!("bad_request")),
        "{v}"
    );
}
