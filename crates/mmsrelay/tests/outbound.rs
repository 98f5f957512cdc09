//! Two real relays on loopback: A submits through its API (the CLI's `send` and `status`) and
//! delivers to B directly, under a TLS-required policy; B down for a while and A restarted
//! mid-scenario: deferred, retried, delivered once, state intact.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use store::Spool;

const B_DOMAIN: &str = "mms.mnc002.mcc262.gprs";

struct Pair {
    _a_dir: TempDir,
    _b_dir: TempDir,
    a: Relay,
    b: Relay,
    a_api: String,
}

fn b_config(dir: &Path, smtp: SocketAddr, tls: bool) -> String {
    let tls_lines = if tls {
        let cert =
            rcgen::generate_simple_self_signed(vec!["mmsc.mms.mnc002.mcc262.gprs".to_string()])
                .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        )
    } else {
        String::new()
    };
    format!(
        r#"
[mmse]
domain = "{B_DOMAIN}"
local_prefixes = ["+49172"]
[smtp]
listen = ["{smtp}"]
{tls_lines}
[api]
listen = "127.0.0.1:{api}"
[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[store]
path = "{store}"
[[peer]]
name = "operator-a"
domains = ["{DOMAIN}"]
allow = ["127.0.0.1/32"]
"#,
        api = free_port("127.0.0.1"),
        store = dir.join("data").display()
    )
}

fn pair(tls: bool, peer_tls: &str) -> Pair {
    let (a_dir, b_dir) = (TempDir::new("pair-a"), TempDir::new("pair-b"));
    let b_smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let a_smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let b = Relay::start(&b_dir.0, &b_config(&b_dir.0, b_smtp, tls), b_smtp);
    let a_api_port = free_port("127.0.0.1");
    let a_cfg = format!(
        r#"
[mmse]
domain = "{DOMAIN}"
local_prefixes = ["+1555"]
[smtp]
listen = ["{a_smtp}"]
[api]
listen = "127.0.0.1:{a_api_port}"
[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[store]
path = "{store}"
[queue]
retry_initial = "1s"
retry_max = "2s"
[[peer]]
name = "operator-b"
domains = ["{B_DOMAIN}"]
prefixes = ["+49172"]
hosts = ["{b_smtp}"]
tls = "{peer_tls}"
"#,
        store = a_dir.0.join("data").display()
    );
    let a = Relay::start(&a_dir.0, &a_cfg, a_smtp);
    Pair {
        _a_dir: a_dir,
        _b_dir: b_dir,
        a,
        b,
        a_api: format!("http://127.0.0.1:{a_api_port}"),
    }
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_status(api: &str, id: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = cli(&["status", "--api", api, id]);
        if code == 0 && out.contains(want) {
            return out;
        }
        assert!(Instant::now() < deadline, "no {want}: {out}{err}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn submitted_mm_reaches_the_peer_over_required_tls() {
    let mut p = pair(true, "required");
    let (code, id, err) = cli(&[
        "send",
        "--api",
        &p.a_api,
        "--from",
        "+15550000001",
        "--to",
        "+491721111111",
        "--subject",
        "hi",
        "--text",
        "hello B",
    ]);
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_string();
    assert!(err.contains("queued"), "{err}");
    // B is an mmsrelay: XMM4 SYNC folds the RES into the reply.
    let status = wait_status(&p.a_api, &id, "acknowledged");
    assert!(status.contains("[MM4 Ok]"), "{status}");
    assert!(status.contains("via operator-b"), "{status}");
    p.b.terminate();
    let s = store::Embedded::open(&p.b.store_path()).unwrap();
    let filed = wait(s.mailbox("+491721111111")).unwrap();
    assert_eq!(filed.len(), 1);
    let meta: serde_json::Value =
        serde_json::from_slice(&wait(s.message(filed[0])).unwrap().unwrap()).unwrap();
    assert_eq!(meta["kind"]["mm4"]["message_type"], "MM4_forward.REQ");
    assert_eq!(meta["tls"], true, "B received it over TLS");
    drop(s);
    let _ = &mut p.a;
}

#[test]
fn peer_down_then_up_with_a_restart_in_between() {
    let mut p = pair(false, "none");
    p.b.kill9();
    let (code, id, err) = cli(&[
        "send",
        "--api",
        &p.a_api,
        "--from",
        "+15550000001",
        "--to",
        "+491722222222",
        "--text",
        "x",
    ]);
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_string();
    let st = wait_status(&p.a_api, &id, "deferred");
    assert!(
        st.contains("connect to"),
        "the evidence names the failure: {st}"
    );
    // A dies and comes back: the deferred recipient is still there.
    p.a.kill9();
    p.a.restart();
    wait_status(&p.a_api, &id, "deferred");
    // B comes back: delivered once.
    p.b.restart();
    let st = wait_status(&p.a_api, &id, "acknowledged");
    assert!(st.contains("deferred"), "timeline keeps the deferral: {st}");
    p.b.terminate();
    let s = store::Embedded::open(&p.b.store_path()).unwrap();
    assert_eq!(wait(s.mailbox("+491722222222")).unwrap().len(), 1);
}

#[test]
fn api_errors_have_the_contract_shape() {
    let p = pair(false, "none");
    let (code, _, err) = cli(&[
        "send",
        "--api",
        &p.a_api,
        "--from",
        "+491720000000",
        "--to",
        "+15550000002",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("400") && err.contains("from"), "{err}");
    let (code, _, err) = cli(&["status", "--api", &p.a_api, "no-such-message"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    // Unroutable recipients come back failed at once.
    let (code, _, err) = cli(&[
        "send",
        "--api",
        &p.a_api,
        "--from",
        "+15550000001",
        "--to",
        "+4412345",
    ]);
    assert_eq!(code, 0);
    assert!(
        err.contains("failed (Error-sending-address-unresolved)"),
        "{err}"
    );
}
