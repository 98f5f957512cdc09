//! `mmsrelay inspect` as operators run it: the real binary, real files, JSON out, exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn vector(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../mm4/tests/data/vectors")
        .join(rel)
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> (i32, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn forward_req_as_json() {
    let path = vector("valid/forward-req.eml");
    let (code, j) = run(&["inspect", path.to_str().unwrap()], None);
    assert_eq!(code, 0);
    assert_eq!(j["kind"], "MM4_forward.REQ");
    assert_eq!(j["version"], "6.16.0");
    assert_eq!(j["transaction_id"], "A-20261125-000017");
    assert_eq!(j["message_id"], "A7f3c9e10b@mms.mnc002.mcc262.gprs");
    assert_eq!(j["from"], "+491721234567/TYPE=PLMN");
    assert_eq!(j["recipients"][0], "+491791234567/TYPE=PLMN");
    assert_eq!(j["ack_request"], true);
    assert_eq!(j["delivery_report"], true);
    assert_eq!(j["read_reply"], false);
    assert_eq!(j["expiry"], "2026-11-28T12:34:56+01:00");
    assert_eq!(j["parts"].as_array().unwrap().len(), 3);
    assert_eq!(j["parts"][1]["content_type"], "image/jpeg");
    assert!(j["parts"][1]["size"].as_u64().unwrap() > 0);
    assert!(j.get("status_code").is_none(), "absent fields are omitted");
}

#[test]
fn reports_and_responses() {
    let (_, j) = run(
        &[
            "inspect",
            vector("quirky/capitalised-type-status-alias.eml")
                .to_str()
                .unwrap(),
        ],
        None,
    );
    assert_eq!(j["kind"], "MM4_delivery_report.REQ");
    assert_eq!(j["mm_status"], "Unrecognised");
    let (_, j) = run(
        &[
            "inspect",
            vector("quirky/read-status-nospace.eml").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(j["read_status"], "Deleted without being read");
    let (_, j) = run(
        &[
            "inspect",
            vector("valid/forward-res-error.eml").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(j["status_code"], "Error-sending-address-unresolved");
    let (_, j) = run(
        &[
            "inspect",
            vector("quirky/operator-extension-headers.eml")
                .to_str()
                .unwrap(),
        ],
        None,
    );
    let ext = j["extension_headers"].as_array().unwrap();
    assert!(ext
        .iter()
        .any(|h| h["name"] == "X-Mms-VASP-ID" && h["value"] == "12345"));
}

#[test]
fn refused_mail_exits_3_with_the_status() {
    for (file, status) in [
        (
            "invalid/missing-transaction-id.eml",
            "Error-message-format-corrupt",
        ),
        (
            "invalid/unsupported-major-version.eml",
            "Error-unsupported-message",
        ),
    ] {
        let (code, j) = run(&["inspect", vector(file).to_str().unwrap()], None);
        assert_eq!(code, 3, "{file}");
        assert_eq!(j["error"]["status"], status, "{file}");
        assert!(j["error"]["message"].as_str().unwrap().len() > 5);
    }
}

#[test]
fn dsn_from_stdin() {
    let raw = std::fs::read(vector("dsn/postfix-failed.eml")).unwrap();
    let (code, j) = run(&["inspect", "-"], Some(&raw));
    assert_eq!(code, 0);
    assert_eq!(j["kind"], "DSN");
    assert_eq!(j["envid"], "A-20261125-000099");
    assert_eq!(j["recipients"][0]["action"], "failed");
    assert_eq!(j["recipients"][0]["status"], "5.1.1");
    assert_eq!(
        j["recipients"][0]["mm4_status"],
        "Error-sending-address-unresolved"
    );
}

#[test]
fn unreadable_file_is_a_runtime_failure() {
    let out = Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
        .args(["inspect", "/nonexistent/mail.eml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mail.eml"));
}
