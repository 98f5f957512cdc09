//! Interop with deployed MMSCs (the real binary, real sockets): our forward goes out from its
//! originator; DSNs, bounces and reports addressed to a subscriber are the relay's to correlate,
//! never filed in a mailbox; each `[[peer]]` dialect key changes what the peer receives, byte
//! for byte; what a peer wrote is shown in `GET /v1/peers`.

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Relay A whose peer operator-b (prefix +49172) is a sink on 127.0.0.2, with `dialect` keys.
fn relay_a(dialect: &str) -> (TempDir, Relay, String, mpsc::Receiver<Mail>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let sink = mail_sink_on("127.0.0.2", move |m| {
        let _ = tx.lock().unwrap().send(m.clone());
    });
    let dir = TempDir::new("dialect");
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let extra = format!("hosts = [\"{sink}\"]\ntls = \"none\"\n{dialect}\n[queue]\nretry_initial = \"1s\"\nretry_max = \"1s\"");
    let toml = config(&dir.0, smtp, "xmm4 = false", &extra);
    let api = api_url(&toml);
    let relay = Relay::start(&dir.0, &toml, smtp);
    (dir, relay, api, rx)
}

fn submit(api: &str, to: &str, read_reply: bool) -> String {
    let body = json!({
        "from": "+15550000001", "to": [to], "subject": "hello", "read_reply": read_reply,
        "parts": [{"content_type": "text/plain", "text": "hi there"}],
    });
    let (code, v) = http("POST", api, "/v1/messages", Some(&body.to_string()));
    assert_eq!(code, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

fn next_mail(rx: &mpsc::Receiver<Mail>) -> Mail {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the peer got a mail")
}

fn header_lines(data: &str) -> Vec<&str> {
    data.split("\r\n").take_while(|l| !l.is_empty()).collect()
}

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["recipients"][0]["state"] == want
}

#[test]
fn by_default_the_forward_goes_from_its_originator_in_plmn_form() {
    let (_d, _a, api, rx) = relay_a("");
    submit(&api, "+491721111111", false);
    let m = next_mail(&rx);
    assert_eq!(m.mail_from, format!("+15550000001/TYPE=PLMN@{DOMAIN}"));
    assert_eq!(m.rcpts, ["+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs"]);
    let h = header_lines(&m.data);
    assert!(h.contains(&"From: +15550000001/TYPE=PLMN"), "{h:#?}");
    assert!(h.contains(&"To: +491721111111/TYPE=PLMN"), "{h:#?}");
    assert!(
        h.iter()
            .any(|l| l.starts_with("X-Mms-Transaction-ID: \"") && l.ends_with('"')),
        "{h:#?}"
    );
}

#[test]
fn each_dialect_key_changes_what_the_peer_receives() {
    let (_d, _a, api, rx) = relay_a(
        "address_form = \"national\"\nnational_prefix = \"0\"\nenvelope_domain = \"hub.example\"\n\
         quote_ids = false\nread_reply_header = \"X-Mms-Read-Report\"",
    );
    submit(&api, "+491721111111", true);
    let m = next_mail(&rx);
    // Our subscriber at our domain (bounces must reach us), in the peer's form.
    assert_eq!(m.mail_from, format!("05550000001/TYPE=PLMN@{DOMAIN}"));
    assert_eq!(m.rcpts, ["01721111111/TYPE=PLMN@hub.example"]);
    let h = header_lines(&m.data);
    for want in [
        "From: 05550000001/TYPE=PLMN",
        "To: 01721111111/TYPE=PLMN",
        &format!("Sender: 05550000001/TYPE=PLMN@{DOMAIN}"),
        "X-Mms-Read-Report: Yes",
    ] {
        assert!(h.contains(&want), "{want} missing from {h:#?}");
    }
    assert!(
        !h.iter().any(|l| l.starts_with("X-Mms-Read-Reply")),
        "{h:#?}"
    );
    let tid = h
        .iter()
        .find_map(|l| l.strip_prefix("X-Mms-Transaction-ID: "))
        .unwrap();
    assert!(!tid.starts_with('"'), "unquoted: {tid}");
    let mid = h
        .iter()
        .find_map(|l| l.strip_prefix("X-Mms-Message-ID: "))
        .unwrap();
    assert!(!mid.starts_with('"'), "unquoted: {mid}");
    // The configured dialect, as the API shows it.
    let (_, peers) = http("GET", &api, "/v1/peers", None);
    assert_eq!(
        peers[0]["dialect"]["configured"],
        json!({
            "address_form": "national", "national_prefix": "0",
            "envelope_domain": "hub.example", "quote_ids": false, "mm1_status_codes": false,
            "status_header": "X-Mms-MM-Status-Code", "read_reply_header": "X-Mms-Read-Report",
            "res_to": null,
        })
    );
}

/// The transaction id of our forward as the API shows it.
fn tid_of(api: &str, id: &str) -> String {
    let (_, m) = http("GET", api, &format!("/v1/messages/{id}"), None);
    m["transaction_id"].as_str().unwrap().to_string()
}

fn send_from(relay: &Relay, ip: Option<&str>, from: &str, to: &str, data: &[u8]) -> String {
    let mut c = Client::connect_from(relay.smtp, ip);
    c.hello();
    c.transaction(from, &[to], data)
}

#[test]
fn dsns_bounces_and_reports_to_a_subscriber_are_correlated_and_never_filed() {
    let (_d, a, api, rx) = relay_a("address_form = \"national\"\nnational_prefix = \"0\"");
    let ids: Vec<String> = ["+491721111111", "+491721111112", "+491721111113"]
        .iter()
        .map(|to| {
            let id = submit(&api, to, false);
            next_mail(&rx);
            wait_message(&api, &id, state_is("forwarded"));
            id
        })
        .collect();
    let subscriber_national = format!("05550000001/TYPE=PLMN@{DOMAIN}");

    // 1. A DSN from an MTA without ORCPT support, to the originator as we wrote it: it names
    //    the recipient as we wrote it too.
    let dsn = String::from_utf8(vector("dsn/postfix-failed.eml"))
        .unwrap()
        .replace("A-20261125-000099", &tid_of(&api, &ids[0]))
        .replace(
            "+491790000000/TYPE=PLMN@mms.mnc007.mcc262.gprs",
            "01721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs",
        )
        .replace(
            "Original-Recipient: rfc822;+2B491790000000/TYPE=PLMN@mms.mnc007.mcc262.gprs\n",
            "",
        );
    let r = send_from(&a, None, "", &subscriber_national, dsn.as_bytes());
    assert!(r.starts_with("250"), "{r}");
    let v = wait_message(&api, &ids[0], state_is("failed"));
    assert_eq!(
        v["recipients"][0]["status_code"], "Error-sending-address-unresolved",
        "{v:#}"
    );

    // 2. A plain bounce from <> returning our headers, to the subscriber in PLMN form.
    let bounce = format!(
        "From: MAILER-DAEMON@old.mta\r\nTo: +15550000001/TYPE=PLMN@{DOMAIN}\r\nSubject: failure notice\r\n\r\n\
<01721111112/TYPE=PLMN@mms.mnc002.mcc262.gprs>: 550 mailbox unavailable\r\n\r\n\
--- Below this line is a copy of the message.\r\n\r\nX-Mms-Transaction-ID: {}\r\nX-Mms-Message-Type: MM4_forward.REQ\r\n",
        tid_of(&api, &ids[1])
    );
    let r = send_from(&a, None, "", &local("+15550000001"), bounce.as_bytes());
    assert!(r.starts_with("250"), "{r}");
    let v = wait_message(&api, &ids[1], state_is("failed"));
    assert_eq!(v["recipients"][0]["status_code"], "Error-unspecified");

    // 3. A delivery report from the peer's MMSC, addressed as an envelope-driven MMSC does: to
    //    the originator (not our system address), its status in the MM1 header.
    let (_, m) = http("GET", &api, &format!("/v1/messages/{}", ids[2]), None);
    let mm_id = m["message_id"].as_str().unwrap();
    let report = format!(
        "X-Mms-3GPP-MMS-Version: 5.3.0\r\n\
X-Mms-Message-Type: MM4_delivery_report.REQ\r\n\
X-Mms-Transaction-ID: DR-1\r\n\
X-Mms-Message-ID: {mm_id}\r\n\
From: 01721111113/TYPE=PLMN\r\n\
To: 05550000001/TYPE=PLMN\r\n\
Date: Wed, 25 Nov 2026 12:40:00 +0100\r\n\
X-Mms-Status: Retrieved\r\n\
X-Mms-Originator-System: system-user@mms.mnc002.mcc262.gprs\r\n\r\n"
    );
    let r = send_from(
        &a,
        Some("127.0.0.2"),
        "01721111113/TYPE=PLMN@mms.mnc002.mcc262.gprs",
        &subscriber_national,
        report.as_bytes(),
    );
    assert!(r.starts_with("250"), "{r}");
    wait_message(&api, &ids[2], state_is("delivered"));

    // Nothing of it in the subscriber's mailbox.
    let (code, mbox) = http("GET", &api, "/v1/mailbox/+15550000001", None);
    assert_eq!(code, 200, "{mbox}");
    assert_eq!(mbox, json!([]), "{mbox:#}");
    // Mail at a subscriber's address that is neither MM4 nor a bounce is still refused.
    let r = send_from(
        &a,
        None,
        "someone@example.org",
        &local("+15550000001"),
        b"Subject: hi\r\n\r\nplain mail\r\n",
    );
    assert!(r.starts_with("554 5.6.0"), "{r}");

    // What the peer wrote is shown: version, unquoted ids, national numbers, X-Mms-Status.
    let (_, peers) = http("GET", &api, "/v1/peers", None);
    let seen = &peers[0]["dialect"]["seen"];
    assert_eq!(seen["version"], "5.3.0", "{peers:#}");
    assert_eq!(seen["quoted_ids"], false, "{peers:#}");
    assert_eq!(seen["address_form"], "national", "{peers:#}");
    assert_eq!(seen["status_header"], "X-Mms-Status", "{peers:#}");
}

#[test]
fn res_to_and_status_header_for_a_peers_forwards() {
    let (_d, a, api, rx) = relay_a(
        "res_to = \"mm4-res@hub.example\"\nstatus_header = \"X-Mms-Status\"\naddress_form = \"e164\"",
    );
    // B's forward to our subscriber, asking for a RES and a delivery report.
    let fwd = String::from_utf8(forward("B-T-1", "+15550000002", 0))
        .unwrap()
        .replace(
            "X-Mms-Ack-Request: Yes\r\n",
            "X-Mms-Ack-Request: Yes\r\nX-Mms-Delivery-Report: Yes\r\n",
        );
    let r = send_from(
        &a,
        Some("127.0.0.2"),
        sender_b(),
        &local("+15550000002"),
        fwd.as_bytes(),
    );
    assert!(r.starts_with("250"), "{r}");
    // Our RES goes where the peer wants it, through the peer.
    let res = next_mail(&rx);
    assert_eq!(res.mail_from, "");
    assert_eq!(res.rcpts, ["mm4-res@hub.example"]);
    assert!(header_lines(&res.data).contains(&"To: mm4-res@hub.example"));
    // The subscriber retrieves it: the delivery report carries the status in X-Mms-Status,
    // numbers in E.164 form.
    let mbox = wait_api(&api, "/v1/mailbox/+15550000002", |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    });
    let mid = mbox[0]["id"].as_str().unwrap();
    let (code, v) = http(
        "POST",
        &api,
        &format!("/v1/mailbox/+15550000002/{mid}/report"),
        Some(r#"{"status":"Retrieved"}"#),
    );
    assert_eq!(code, 202, "{v}");
    let dr = next_mail(&rx);
    let h = header_lines(&dr.data);
    assert!(h.contains(&"X-Mms-Status: Retrieved"), "{h:#?}");
    assert!(
        !h.iter().any(|l| l.starts_with("X-Mms-MM-Status-Code")),
        "{h:#?}"
    );
    assert!(h.contains(&"From: +15550000002"), "{h:#?}");
    assert!(h.contains(&"To: +491721234567"), "{h:#?}");
}

#[test]
fn a_relayed_mm_carries_our_trace_line_above_the_senders_and_keeps_its_reverse_path() {
    let (_d, a, _api, rx) = relay_a(
        "[[peer]]\nname = \"hub\"\ndomains = [\"mms.mnc009.mcc208.gprs\"]\n\
         allow = [\"127.0.0.3/32\"]\ntransit = true\ntls = \"none\"",
    );
    let theirs = "Received: from origin.example ([192.0.2.1])\r\n\tby mms.mnc009.mcc208.gprs; Wed, 25 Nov 2026 12:34:50 +0100\r\n";
    let fwd = String::from_utf8(forward("HUB-1", "+491721111111", 0))
        .unwrap()
        .replace("mms.mnc002.mcc262.gprs", "mms.mnc009.mcc208.gprs");
    let fwd = [theirs.as_bytes(), fwd.as_bytes()].concat();
    let rcpt = "+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs";
    let sender = "+33612345678/TYPE=PLMN@mms.mnc009.mcc208.gprs";
    let r = send_from(&a, Some("127.0.0.3"), sender, rcpt, &fwd);
    assert!(r.starts_with("250"), "{r}");
    let m = next_mail(&rx);
    assert_eq!(m.mail_from, sender, "a transit hop keeps the reverse-path");
    assert_eq!(m.rcpts, [rcpt]);
    let lines: Vec<&str> = m.data.split("\r\n").collect();
    assert_eq!(lines[0], "Received: from client.test ([127.0.0.3])");
    assert_eq!(
        lines[1],
        format!("\tby mmsc.{DOMAIN} (mmsrelay) with ESMTP")
    );
    assert_eq!(lines[2], format!("\tfor <{rcpt}>;"));
    let date = lines[3].strip_prefix('\t').unwrap();
    assert!(
        time::OffsetDateTime::parse(date, &time::format_description::well_known::Rfc2822).is_ok(),
        "{date}"
    );
    assert_eq!(
        lines[4..6].join("\r\n") + "\r\n",
        theirs,
        "the sender's trace line follows ours, unchanged"
    );
}

#[test]
fn long_lines_utf8_and_binary_reach_a_7bit_peer_encoded_and_end_acknowledged() {
    let (_d, a, api, rx) = relay_a("");
    let (parts, want) = awkward_parts();
    let body = json!({"from": "+15550000001", "to": ["+491721111111"], "parts": parts});
    let (code, v) = http("POST", &api, "/v1/messages", Some(&body.to_string()));
    assert_eq!(code, 202, "{v}");
    let id = v["id"].as_str().unwrap();
    // The sink's EHLO offers no 8BITMIME: everything 7-bit, every line within 998 octets.
    let m = next_mail(&rx);
    assert!(m.data.is_ascii());
    assert!(m.data.split("\r\n").all(|l| l.len() <= 998));
    assert_eq!(decoded_parts(&m.data), want);
    // The peer's RES settles it.
    let h = header_lines(&m.data);
    let field = |name: &str| {
        h.iter()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    let res = common::scripted::forward_res(
        &field("X-Mms-Transaction-ID: "),
        &field("X-Mms-Message-ID: "),
    );
    let r = send_from(
        &a,
        Some("127.0.0.2"),
        "",
        &format!("system-user@{DOMAIN}"),
        &res,
    );
    assert!(r.starts_with("250"), "{r}");
    wait_message(&api, id, state_is("acknowledged"));
}
