//! End to end between operators, with the real components of an interworking path: three
//! mmsrelay operators on their own loopback addresses (A 127.0.0.2, B 127.0.0.3, C 127.0.0.4,
//! each with its own store and config, outgoing connections from its own address so that allow
//! lists are real), a real authoritative DNS server (NSD) serving the GRX zone (MX) and
//! e164.arpa (E2U+mms:mailto NAPTR), and a real Postfix as the MTA of the indirect model.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http, timeline, wait_api, wait_message, Client, Relay};
use serde_json::{json, Value};
use testbed::{free_port, Nsd, Postfix, TempDir};

const A_DOM: &str = "mms.mnc002.mcc262.gprs";
const B_DOM: &str = "mms.mnc007.mcc262.gprs";
const C_DOM: &str = "mms.mnc001.mcc208.gprs";

const GPRS: &str = r#"$ORIGIN gprs.
$TTL 60
@ IN SOA ns.gprs. host.gprs. 1 3600 600 86400 60
@ IN NS ns.gprs.
ns IN A 127.0.0.1
mms.mnc002.mcc262     IN MX 10 mx.mms.mnc002.mcc262
mx.mms.mnc002.mcc262  IN A  127.0.0.2
mms.mnc007.mcc262     IN MX 10 mx.mms.mnc007.mcc262
mx.mms.mnc007.mcc262  IN A  127.0.0.3
mms.mnc001.mcc208     IN MX 10 mx.mms.mnc001.mcc208
mx.mms.mnc001.mcc208  IN A  127.0.0.4
"#;

/// NAPTR records for the numbers the scenarios use (B's range, one unknown number in it, A's
/// subscriber, C's subscriber).
fn enum_zone() -> String {
    let rr = |n: &str, dom: &str| {
        let name: String = n
            .trim_start_matches('+')
            .chars()
            .rev()
            .map(|c| format!("{c}."))
            .collect();
        format!(
            "{}e164.arpa. IN NAPTR 10 10 \"u\" \"E2U+mms:mailto\" \"!^\\\\+?(.*)$!mailto:+\\\\1/TYPE=PLMN@{dom}!\" .\n",
            name
        )
    };
    let mut z = String::from(
        "$ORIGIN e164.arpa.\n$TTL 60\n@ IN SOA ns.e164.arpa. host.e164.arpa. 1 3600 600 86400 60\n@ IN NS ns.gprs.\n",
    );
    for n in ["+491791111111", "+491792222222", "+491799999999"] {
        z.push_str(&rr(n, B_DOM));
    }
    z.push_str(&rr("+491721111111", A_DOM));
    z.push_str(&rr("+33612345678", C_DOM));
    z
}

struct Operator {
    _dir: TempDir,
    relay: Relay,
    api: String,
}

/// How the world is wired.
#[derive(Default, Clone, Copy)]
struct Setup {
    /// A ↔ B through Postfix (indirect model) instead of directly (MX).
    postfix: bool,
    /// A reaches B's numbers through C (a transit hub).
    hub: bool,
    /// A's bilateral size limit for B.
    b_limit: Option<usize>,
    /// A exchanges capabilities with B.
    exchange: bool,
}

struct World {
    _nsd: Nsd,
    postfix: Option<Postfix>,
    a: Operator,
    b: Operator,
    c: Operator,
}

fn operator(
    ip: &str,
    port: u16,
    dns: SocketAddr,
    domain: &str,
    local: &[&str],
    peers: &str,
) -> Operator {
    let dir = TempDir::new(&format!("e2e-{ip}"));
    let api = free_port("127.0.0.1");
    let locals: Vec<String> = local.iter().map(|p| format!("\"{p}\"")).collect();
    let cfg = format!(
        r#"
[mmse]
domain = "{domain}"
local_prefixes = [{locals}]
[smtp]
listen = ["{ip}:{port}"]
source_address = "{ip}"
[api]
listen = "127.0.0.1:{api}"
[store]
path = "{store}"
[dns]
servers = ["{dns}"]
enum_suffixes = ["e164.arpa"]
mx_port = {port}
[queue]
retry_initial = "1s"
retry_max = "2s"
{peers}
"#,
        locals = locals.join(", "),
        store = dir.0.join("data").display()
    );
    let smtp: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let relay = Relay::start(&dir.0, &cfg, smtp);
    Operator {
        _dir: dir,
        relay,
        api: format!("http://127.0.0.1:{api}"),
    }
}

fn world(s: Setup) -> World {
    let nsd = Nsd::start(&[("gprs", GPRS), ("e164.arpa", &enum_zone())]);
    let port = free_port("127.0.0.2");
    let hop = |ip: &str| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let postfix = s
        .postfix
        .then(|| Postfix::start(&[(A_DOM, hop("127.0.0.2")), (B_DOM, hop("127.0.0.3"))]));
    let via = |p: &Option<Postfix>| match p {
        Some(p) => format!("mode = \"relay\"\nhosts = [\"{}\"]", p.addr),
        None => "mode = \"direct\"".to_string(),
    };
    // A: +49172. B's numbers by ENUM (or, with the hub, by a static prefix to C).
    let a_peers = format!(
        r#"
[[peer]]
name = "operator-b"
domains = ["{B_DOM}"]
{via}
allow = ["127.0.0.3/32", "127.0.0.1/32"]
tls = "none"
{limit}
{exchange}
[[peer]]
name = "operator-c"
domains = ["{C_DOM}"]
{hub}
allow = ["127.0.0.4/32"]
tls = "none"
"#,
        via = via(&postfix),
        limit = s
            .b_limit
            .map(|l| format!("max_message_size = {l}"))
            .unwrap_or_default(),
        exchange = if s.exchange {
            "capabilities = \"exchange\""
        } else {
            ""
        },
        hub = if s.hub {
            "prefixes = [\"+49179\", \"+336\"]"
        } else {
            "prefixes = [\"+336\"]"
        },
    );
    let b_peers = format!(
        r#"
[[peer]]
name = "operator-a"
domains = ["{A_DOM}"]
{via}
allow = ["127.0.0.2/32", "127.0.0.1/32", "127.0.0.4/32"]
tls = "none"
[[peer]]
name = "operator-c"
domains = ["{C_DOM}"]
allow = ["127.0.0.4/32"]
tls = "none"
"#,
        via = via(&postfix),
    );
    let c_peers = format!(
        r#"
[[peer]]
name = "operator-a"
domains = ["{A_DOM}"]
allow = ["127.0.0.2/32"]
transit = true
tls = "none"
[[peer]]
name = "operator-b"
domains = ["{B_DOM}"]
prefixes = ["+49179"]
allow = ["127.0.0.3/32"]
tls = "none"
"#
    );
    let dns = nsd.addr;
    let b = operator(
        "127.0.0.3",
        port,
        dns,
        B_DOM,
        &["+491791", "+491792"],
        &b_peers,
    );
    let c = operator("127.0.0.4", port, dns, C_DOM, &["+336"], &c_peers);
    let a = operator("127.0.0.2", port, dns, A_DOM, &["+49172"], &a_peers);
    World {
        _nsd: nsd,
        postfix,
        a,
        b,
        c,
    }
}

fn submit(op: &Operator, body: Value) -> String {
    let (code, v) = http("POST", &op.api, "/v1/messages", Some(&body.to_string()));
    assert_eq!(code, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

fn mm(to: &[&str], dr: bool, rr: bool) -> Value {
    json!({
        "from": "+491721111111", "to": to, "subject": "Grüße", "delivery_report": dr, "read_reply": rr,
        "parts": [{"content_type": "text/plain", "text": "hello from A"},
                  {"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRgABAQ==", "name": "p.jpg"}],
    })
}

fn rcpt_state(i: usize, want: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["recipients"][i]["state"] == want
}

/// A subscriber's mailbox as it is now.
fn mailbox_now(op: &Operator, n: &str) -> Value {
    let (code, v) = http("GET", &op.api, &format!("/v1/mailbox/{n}"), None);
    assert_eq!(code, 200, "{v}");
    v
}

fn mailbox(op: &Operator, n: &str, count: usize) -> Value {
    wait_api(&op.api, &format!("/v1/mailbox/{n}"), |v| {
        v.as_array().is_some_and(|a| a.len() == count)
    })
}

fn report(op: &Operator, n: &str, id: &str, body: &str) {
    let (code, v) = http(
        "POST",
        &op.api,
        &format!("/v1/mailbox/{n}/{id}/report"),
        Some(body),
    );
    assert_eq!(code, 202, "{v}");
}

fn cdr_types(op: &Operator) -> Vec<String> {
    let dir = op.relay.store_path().join("cdr");
    let mut out = Vec::new();
    for f in std::fs::read_dir(dir).into_iter().flatten() {
        for line in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            out.push(v["record_type"].as_str().unwrap().to_string());
        }
    }
    out
}

/// The whole MM4 conversation A ↔ B: forward, RES, delivery report, read reply (with RES).
fn conversation(w: &World) -> Value {
    let id = submit(&w.a, mm(&["+491791111111"], true, true));
    wait_message(&w.a.api, &id, rcpt_state(0, "acknowledged"));
    let mbox = mailbox(&w.b, "+491791111111", 1);
    assert_eq!(mbox[0]["subject"], "Grüße");
    assert_eq!(mbox[0]["from"], "+491721111111/TYPE=PLMN");
    assert_eq!(mbox[0]["parts"].as_array().unwrap().len(), 2);
    let mid = mbox[0]["id"].as_str().unwrap().to_string();
    // The bytes B received: an MM4_forward.REQ from A's originator system.
    let addr = w.b.api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(format!("GET /v1/mailbox/+491791111111/{mid}/raw HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.contains("X-Mms-Message-Type: MM4_forward.REQ"), "{raw}");
    assert!(raw.contains(&format!("X-Mms-Originator-System: system-user@{A_DOM}")));
    report(&w.b, "+491791111111", &mid, r#"{"status":"Retrieved"}"#);
    wait_message(&w.a.api, &id, rcpt_state(0, "delivered"));
    report(&w.b, "+491791111111", &mid, r#"{"read_status":"Read"}"#);
    let v = wait_message(&w.a.api, &id, rcpt_state(0, "read"));
    // The report RES travel back to B.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(cdr_types(&w.b).iter().any(|t| t == "MMR4DRs")
        && cdr_types(&w.b).iter().any(|t| t == "MMR4RRs"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "B never got the report RES: {:?}",
            cdr_types(&w.b)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // MMO4FRs only where a RES mail came (not when the RES was folded into the reply).
    wait_cdr_types(&w.a, &["MMO4FRq", "MMO4D", "MMO4R"]);
    v
}

/// Waits until `op`'s charging records hold every type of `want` (the exporter writes them
/// shortly after their events' commits).
fn wait_cdr_types(op: &Operator, want: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = cdr_types(op);
        if want.iter().all(|t| got.iter().any(|x| x == t)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{want:?} not in {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn direct_routed_by_enum_and_mx() {
    let w = world(Setup::default());
    let v = conversation(&w);
    let events = timeline(&v, 0, "event");
    // Direct: B is an mmsrelay, so the RES is folded into the SMTP reply (XMM4 SYNC).
    assert_eq!(
        events,
        ["queued", "acknowledged", "delivered", "read"],
        "{v:#}"
    );
    assert!(v["recipients"][0]["status_text"].as_str().is_some());
    assert_eq!(v["recipients"][0]["peer"], "operator-b");
    let (_, peers) = http("GET", &w.a.api, "/v1/peers", None);
    assert_eq!(
        peers[0]["ehlo"]["host"],
        format!("127.0.0.3:{}", w.b.relay.smtp.port()),
        "reached through MX: {peers:#}"
    );
    assert_eq!(peers[0]["ehlo"]["xmm4"]["sync"], true);
}

#[test]
fn indirect_through_postfix_with_capability_exchange() {
    let w = world(Setup {
        postfix: true,
        exchange: true,
        ..Setup::default()
    });
    let v = conversation(&w);
    let events = timeline(&v, 0, "event");
    // Through an MTA there is no XMM4: forwarded to Postfix, then B's RES mail came back.
    assert_eq!(
        events,
        ["queued", "forwarded", "acknowledged", "delivered", "read"],
        "{v:#}"
    );
    assert!(
        v["recipients"][0]["events"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("250"),
        "Postfix's reply"
    );
    // The RES mail was received.
    wait_cdr_types(&w.a, &["MMO4FRs"]);
    // The capability exchange crossed Postfix both ways.
    let peers = wait_api(&w.a.api, "/v1/peers", |p| {
        p[0]["exchanged"]["versions"].is_array()
    });
    assert_eq!(peers[0]["exchanged"]["status"], "Ok");
    assert_eq!(
        peers[0]["ehlo"]["xmm4"],
        Value::Null,
        "A only ever saw Postfix's EHLO"
    );
    let log = w.postfix.as_ref().unwrap().log();
    assert!(log.contains("status=sent"), "{log}");
}

#[test]
fn unknown_number_through_postfix_comes_back_as_a_dsn() {
    let w = world(Setup {
        postfix: true,
        ..Setup::default()
    });
    let id = submit(&w.a, mm(&["+491799999999"], false, false));
    // Postfix takes it (250), then B refuses the recipient; Postfix's real DSN reaches A.
    let v = wait_message(&w.a.api, &id, rcpt_state(0, "failed"));
    assert_eq!(
        v["recipients"][0]["status_code"], "Error-sending-address-unresolved",
        "{v:#}"
    );
    let evidence = v["recipients"][0]["status_text"].as_str().unwrap();
    assert!(evidence.starts_with("DSN failed 5.1.1"), "{evidence}");
    let log = w.postfix.as_ref().unwrap().log();
    assert!(log.contains("sender non-delivery notification"), "{log}");
    // The forward went from its originator, so Postfix's DSN went to the originator — a
    // subscriber's address, which the relay takes for correlation (and files nowhere).
    assert!(
        log.contains(&format!("from=<+491721111111/TYPE=PLMN@{A_DOM}>")),
        "{log}"
    );
    assert!(
        log.contains(&format!("to=<+491721111111/TYPE=PLMN@{A_DOM}>")),
        "{log}"
    );
    assert_eq!(mailbox_now(&w.a, "+491721111111"), json!([]));
}

#[test]
fn peer_down_for_a_while_then_delivered_once() {
    let mut w = world(Setup::default());
    w.b.relay.kill9();
    let id = submit(&w.a, mm(&["+491792222222"], false, false));
    let v = wait_message(&w.a.api, &id, rcpt_state(0, "deferred"));
    assert!(
        v["recipients"][0]["status_text"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{v:#}"
    );
    std::thread::sleep(Duration::from_secs(2));
    w.b.relay.restart();
    let v = wait_message(&w.a.api, &id, rcpt_state(0, "acknowledged"));
    assert!(v["recipients"][0]["attempts"].as_u64().unwrap() >= 2);
    mailbox(&w.b, "+491792222222", 1);
    std::thread::sleep(Duration::from_secs(1));
    mailbox(&w.b, "+491792222222", 1);
}

#[test]
fn c_as_a_transit_hub_between_a_and_b() {
    let w = world(Setup {
        hub: true,
        ..Setup::default()
    });
    let id = submit(&w.a, mm(&["+491791111111"], false, false));
    // C accepted it as a hop (no folded RES: C is not the recipient MMSE), B's RES came to A.
    let v = wait_message(&w.a.api, &id, rcpt_state(0, "acknowledged"));
    assert_eq!(v["recipients"][0]["peer"], "operator-c");
    let events = timeline(&v, 0, "event");
    assert_eq!(events, ["queued", "forwarded", "acknowledged"], "{v:#}");
    let mbox = mailbox(&w.b, "+491791111111", 1);
    assert_eq!(mbox[0]["from"], "+491721111111/TYPE=PLMN");
    let (_, q) = http("GET", &w.c.api, "/v1/queue", None);
    assert_eq!(q["depth"], 0, "C forwarded it on: {q:#}");
}

#[test]
fn a_peer_with_a_small_limit_gets_nothing() {
    let w = world(Setup {
        b_limit: Some(1000),
        ..Setup::default()
    });
    let mut body = mm(&["+491791111111"], false, false);
    body["parts"][0]["text"] = json!("x".repeat(5000));
    let id = submit(&w.a, body);
    let v = wait_message(&w.a.api, &id, rcpt_state(0, "failed"));
    assert_eq!(
        v["recipients"][0]["status_code"],
        "Error-content-not-accepted"
    );
    let (_, mbox) = http("GET", &w.b.api, "/v1/mailbox/+491791111111", None);
    assert_eq!(mbox.as_array().unwrap().len(), 0, "nothing sent");
}

#[test]
fn recipients_at_two_operators_are_split_per_mmse() {
    let w = world(Setup::default());
    let mut body = mm(&["+491791111111"], false, false);
    body["cc"] = json!(["+33612345678"]);
    let id = submit(&w.a, body);
    let v = wait_message(&w.a.api, &id, |v| {
        v["recipients"][0]["state"] == "acknowledged"
            && v["recipients"][1]["state"] == "acknowledged"
    });
    assert_eq!(v["recipients"][0]["peer"], "operator-b");
    assert_eq!(v["recipients"][1]["peer"], "operator-c");
    for (op, n) in [(&w.b, "+491791111111"), (&w.c, "+33612345678")] {
        let mbox = mailbox(op, n, 1);
        assert_eq!(
            mbox[0]["to"],
            json!(["+491791111111/TYPE=PLMN"]),
            "To intact at {n}"
        );
        assert_eq!(
            mbox[0]["cc"],
            json!(["+33612345678/TYPE=PLMN"]),
            "Cc intact at {n}"
        );
    }
}

#[test]
fn an_unretrieved_mm_expires_with_a_report() {
    let w = world(Setup::default());
    let mut body = mm(&["+491791111111"], true, false);
    body["expiry"] = json!("2s");
    let id = submit(&w.a, body);
    let v = wait_message(&w.a.api, &id, rcpt_state(0, "expired"));
    assert_eq!(v["recipients"][0]["status_code"], "Expired");
    assert!(v["recipients"][0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["detail"] == "delivery report: Expired"));
}

#[test]
fn an_mm4_forward_from_a_stranger_source_is_refused() {
    // A forward claiming A's originator system, but from C's address: B refuses it.
    let w = world(Setup::default());
    let mut c = Client::connect_from(w.b.relay.smtp, Some("127.0.0.5"));
    c.hello();
    let fwd = String::from_utf8(common::forward("SPOOF-1", "+491791111111", 200))
        .unwrap()
        .replace(
            "system-user@mms.mnc002.mcc262.gprs",
            &format!("system-user@{A_DOM}"),
        );
    let r = c.transaction(
        &format!("+491721111111/TYPE=PLMN@{A_DOM}"),
        &[&format!("+491791111111/TYPE=PLMN@{B_DOM}")],
        fwd.as_bytes(),
    );
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let (_, mbox) = http("GET", &w.b.api, "/v1/mailbox/+491791111111", None);
    assert_eq!(mbox.as_array().unwrap().len(), 0);
}
