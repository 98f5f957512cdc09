//! Every test mail in `tests/data/vectors` against `EXPECTED.txt`: valid and quirky ones parse to
//! the stated values, invalid ones are refused with the stated status, DSNs give the stated
//! envelope id, action, status and MM4 code. The expectations are read from the file, so a vector
//! added there is checked without touching this test.

use std::path::{Path, PathBuf};

use mm4::mapping::Outcome;
use mm4::{dsn, emit, parse, Expiry, Kind, MessageType, Profile, RequestStatus};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/vectors")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// One line of EXPECTED.txt: file, kind (a PDU name, `DSN` or `refuse:`) and the rest.
struct Expectation {
    file: String,
    kind: String,
    rest: Vec<String>,
}

fn expectations() -> Vec<Expectation> {
    let text = std::fs::read_to_string(dir().join("EXPECTED.txt")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace().map(str::to_string);
            Expectation {
                file: words.next().unwrap(),
                kind: words.next().unwrap(),
                rest: words.collect(),
            }
        })
        .collect()
}

fn yes_no(v: &str) -> bool {
    match v {
        "yes" => true,
        "no" => false,
        _ => panic!("bad boolean {v}"),
    }
}

fn check_pdu(e: &Expectation) {
    let raw = read(&e.file);
    let pdu = parse(&raw).unwrap_or_else(|err| panic!("{}: {err}", e.file));
    let expected_type: MessageType = e.kind.parse().unwrap();
    assert_eq!(pdu.message_type(), expected_type, "{}", e.file);
    let mut checked = 0;
    for (i, word) in e.rest.iter().enumerate() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        checked += 1;
        let fwd = || match &pdu.kind {
            Kind::ForwardReq(f) => f.clone(),
            other => panic!("{}: {key} on {other:?}", e.file),
        };
        match key {
            "tid" => assert_eq!(pdu.transaction_id, value, "{}", e.file),
            "mid" => assert_eq!(pdu.mm_message_id(), Some(value), "{}", e.file),
            "parts" => {
                let n: usize = value.parse().unwrap();
                assert_eq!(pdu.body.as_ref().unwrap().parts().len(), n, "{}", e.file);
            }
            "ack" => assert_eq!(pdu.ack_requested(), yes_no(value), "{}", e.file),
            "dr" => assert_eq!(fwd().delivery_report, Some(yes_no(value)), "{}", e.file),
            "rr" => assert_eq!(
                fwd().read_reply.unwrap_or(false),
                yes_no(value),
                "{}",
                e.file
            ),
            "status" => {
                let r = pdu
                    .kind
                    .response()
                    .unwrap_or_else(|| panic!("{}: no RES", e.file));
                assert_eq!(r.status.as_str(), value, "{}", e.file);
            }
            "mm-status" => match &pdu.kind {
                Kind::DeliveryReportReq(d) => assert_eq!(d.mm_status.as_str(), value),
                other => panic!("{}: {other:?}", e.file),
            },
            "read-status" => {
                // The value may contain spaces: it runs to the end of the line.
                let full = std::iter::once(value.to_string())
                    .chain(e.rest[i + 1..].iter().cloned())
                    .collect::<Vec<_>>()
                    .join(" ");
                match &pdu.kind {
                    Kind::ReadReplyReq(r) => assert_eq!(r.read_status.as_str(), full),
                    other => panic!("{}: {other:?}", e.file),
                }
                break;
            }
            "version" => assert_eq!(pdu.version.to_string(), value, "{}", e.file),
            "expiry" => {
                // "expiry=600 s after Date"
                let secs: u64 = value.parse().unwrap();
                assert_eq!(e.rest[i + 1..i + 4].join(" "), "s after Date");
                let f = fwd();
                assert_eq!(f.expiry, Some(Expiry::After(secs)), "{}", e.file);
                let date = pdu.date.unwrap();
                assert_eq!(
                    f.expiry.unwrap().resolve(date) - date,
                    time::Duration::seconds(secs as i64)
                );
            }
            other => panic!("{}: unknown expectation key {other}", e.file),
        }
    }
    if e.file.starts_with("valid/") {
        assert!(checked > 0, "{}: nothing checked", e.file);
    }
    // Whatever parsed must also write out and read back as the same PDU.
    let out = emit(&pdu, &Profile::faithful()).unwrap();
    let again = parse(&out).unwrap();
    assert_eq!(again, pdu, "{}: emit/parse changed the PDU", e.file);
}

fn check_refusal(e: &Expectation) {
    let raw = read(&e.file);
    let want: RequestStatus = e.rest[0].parse().unwrap();
    let err = parse(&raw).expect_err(&e.file);
    assert_eq!(err.status(), want, "{}: {err}", e.file);
}

fn check_dsn(e: &Expectation) {
    let raw = read(&e.file);
    assert!(dsn::looks_like_dsn(&raw), "{}", e.file);
    let d = dsn::parse(&raw).unwrap_or_else(|err| panic!("{}: {err}", e.file));
    let r = &d.recipients[0];
    let mut checked = 0;
    for (i, word) in e.rest.iter().enumerate() {
        if let Some((key, value)) = word.split_once('=') {
            checked += 1;
            match key {
                "envid" => assert_eq!(d.envelope_id.as_deref(), Some(value), "{}", e.file),
                "recipient" => assert_eq!(r.recipient(), Some(value), "{}", e.file),
                "action" => assert_eq!(r.action.as_str(), value, "{}", e.file),
                "status" => assert_eq!(r.status.to_string(), value, "{}", e.file),
                other => panic!("{}: unknown DSN key {other}", e.file),
            }
        } else if word == "->" {
            checked += 1;
            let tail = e.rest[i + 1..].join(" ");
            match tail.as_str() {
                "still waiting" => assert_eq!(r.outcome(), Outcome::Retry, "{}", e.file),
                code => assert_eq!(
                    r.outcome(),
                    Outcome::Fail(code.parse().unwrap()),
                    "{}",
                    e.file
                ),
            }
            break;
        }
    }
    assert!(checked >= 3, "{}: too little checked", e.file);
}

#[test]
fn every_vector_meets_its_expectation() {
    let all = expectations();
    assert!(all.len() >= 21, "EXPECTED.txt lost lines: {}", all.len());
    for e in &all {
        match e.kind.as_str() {
            "refuse:" => check_refusal(e),
            "DSN" => check_dsn(e),
            _ => check_pdu(e),
        }
    }
    // Every vector file has an expectation.
    for sub in ["valid", "quirky", "invalid", "dsn"] {
        for f in std::fs::read_dir(dir().join(sub)).unwrap() {
            let rel = format!("{sub}/{}", f.unwrap().file_name().to_string_lossy());
            assert!(
                all.iter().any(|e| e.file == rel),
                "{rel} has no expectation"
            );
        }
    }
}

#[test]
fn operator_extension_headers_are_kept_and_relayed_unchanged() {
    let raw = read("quirky/operator-extension-headers.eml");
    let pdu = parse(&raw).unwrap();
    assert_eq!(pdu.extension("X-Mms-VASP-ID"), Some("12345"));
    assert_eq!(
        pdu.extension("X-Mms-Charged-Party-ID"),
        Some("+491721234567")
    );
    // X-Mms-Applic-ID is typed (Rel-6), not an extension.
    match &pdu.kind {
        Kind::ForwardReq(f) => assert_eq!(f.applic.applic_id.as_deref(), Some("com.example.game")),
        other => panic!("{other:?}"),
    }
    let out = String::from_utf8(emit(&pdu, &Profile::default()).unwrap()).unwrap();
    assert!(out.contains("\r\nX-Mms-VASP-ID: 12345\r\n"), "{out}");
    assert!(out.contains("\r\nX-Mms-Charged-Party-ID: +491721234567\r\n"));
    // The body goes out byte for byte.
    let body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(out.as_bytes().ends_with(&raw[body_at..]));
}

#[test]
fn domains_in_header_addresses() {
    let raw = read("quirky/domain-in-header-addresses.eml");
    let pdu = parse(&raw).unwrap();
    let rcpts: Vec<_> = pdu.recipients().collect();
    assert_eq!(rcpts.len(), 2);
    for r in rcpts {
        assert!(r.e164().unwrap().has_prefix("+49179"), "{r}");
        assert_eq!(r.domain().unwrap().as_str(), "mms.mnc007.mcc262.gprs");
    }
}

#[test]
fn forward_fields_are_typed() {
    let raw = read("valid/forward-req.eml");
    let pdu = parse(&raw).unwrap();
    let Kind::ForwardReq(f) = &pdu.kind else {
        panic!()
    };
    assert_eq!(f.subject.as_deref(), Some("Grüße vom Strand"));
    assert_eq!(f.message_class, Some(mm4::MessageClass::Personal));
    assert_eq!(f.priority, Some(mm4::Priority::Normal));
    assert!(matches!(f.expiry, Some(Expiry::At(_))));
    assert_eq!(
        pdu.originator_system.as_ref().unwrap().to_string(),
        "system-user@mms.mnc002.mcc262.gprs"
    );
    assert_eq!(
        pdu.from.as_ref().unwrap().to_string(),
        "+491721234567/TYPE=PLMN"
    );
    let parts = pdu.body.as_ref().unwrap().parts();
    let types: Vec<_> = parts.iter().map(|p| p.content_type.as_str()).collect();
    assert_eq!(types, ["application/smil", "image/jpeg", "text/plain"]);
    assert_eq!(parts[1].name.as_deref(), Some("beach.jpg"));
}

#[test]
fn lf_only_files_parse_like_crlf_ones() {
    let raw = read("valid/forward-req.eml");
    let lf: Vec<u8> = raw.iter().copied().filter(|&b| b != b'\r').collect();
    let a = parse(&raw).unwrap();
    let b = parse(&lf).unwrap();
    assert_eq!(a.transaction_id, b.transaction_id);
    assert_eq!(a.kind, b.kind);
    // Emitting the LF-only parse gives canonical CRLF output identical to the CRLF one.
    assert_eq!(
        emit(&a, &Profile::default()).unwrap(),
        emit(&b, &Profile::default()).unwrap()
    );
}

#[test]
fn parsing_borrows_the_body() {
    let raw = read("valid/forward-req.eml");
    let pdu = parse(&raw).unwrap();
    let body = pdu.body.as_ref().unwrap();
    assert!(matches!(body.bytes, std::borrow::Cow::Borrowed(_)));
    let range = raw.as_ptr_range();
    assert!(
        range.contains(&body.bytes.as_ptr()),
        "body is not a slice of the input"
    );
}
