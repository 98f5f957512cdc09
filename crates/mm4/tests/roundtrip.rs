//! Property tests: `parse(emit(p)) == p` for generated PDUs of every type, and no generated value
//! can add a header line.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use mm4::*;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;
use time::OffsetDateTime;

fn domain() -> impl Strategy<Value = Domain> {
    "[a-z][a-z0-9]{0,8}(\\.[a-z][a-z0-9-]{0,8}[a-z0-9]){1,3}".prop_map(|d| d.parse().unwrap())
}

fn address() -> impl Strategy<Value = Address> {
    prop_oneof![
        4 => ("[1-9][0-9]{0,14}", of(domain())).prop_map(|(d, domain)| Address::Plmn {
            number: format!("+{d}").parse().unwrap(),
            domain,
        }),
        1 => ("[0-9]{1,12}", of(domain())).prop_map(|(digits, domain)| Address::NationalPlmn {
            digits,
            domain,
        }),
        1 => (any::<[u8; 4]>(), of(domain())).prop_map(|(o, domain)| Address::Ipv4 {
            addr: Ipv4Addr::from(o),
            domain,
        }),
        1 => (any::<[u16; 8]>(), of(domain())).prop_map(|(o, domain)| Address::Ipv6 {
            addr: Ipv6Addr::from(o),
            domain,
        }),
        2 => ("[a-z0-9]([a-z0-9_-]{0,10}[a-z0-9])?", domain())
            .prop_map(|(local, domain)| Address::Email { local, domain }),
    ]
}

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._@:/+-]{0,60}"
}

/// Unicode text as a subject or status text carries it: no control characters, trimmed.
fn text() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{0,120}".prop_map(|s| s.trim().to_string())
}

/// Printable ASCII values of fields that are passed through undecoded (encoded-words included).
fn ascii() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,120}".prop_map(|s| s.trim().to_string()),
        Just("=?utf-8?q?Gr=C3=BC=C3=9Fe?=".to_string()),
    ]
}

fn date() -> impl Strategy<Value = OffsetDateTime> {
    (0i64..4_102_444_800, -14 * 60i32..=14 * 60).prop_map(|(ts, off_min)| {
        OffsetDateTime::from_unix_timestamp(ts)
            .unwrap()
            .to_offset(time::UtcOffset::from_whole_seconds(off_min * 60).unwrap())
    })
}

fn version() -> impl Strategy<Value = Version> {
    (5u16..=6, 0u16..=20, 0u16..=9).prop_map(|(a, b, c)| Version::new(a, b, c))
}

fn applic() -> impl Strategy<Value = ApplicIds> {
    (of(ascii()), of(ascii()), of(ascii())).prop_map(|(a, r, x)| ApplicIds {
        applic_id: a,
        reply_applic_id: r,
        aux_applic_info: x,
    })
}

fn forward() -> BoxedStrategy<ForwardReq> {
    let a = (
        id(),
        vec(address(), 0..3),
        of(text()),
        of(select(MessageClass::ALL)),
        of(prop_oneof![
            date().prop_map(Expiry::At),
            any::<u32>().prop_map(|s| Expiry::After(s as u64))
        ]),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(select(Priority::ALL)),
        of(select(SenderVisibility::ALL)),
    );
    let b = (
        of(any::<u32>()),
        vec(ascii(), 0..2),
        vec(ascii(), 0..2),
        of(select(ReplyCharging::ALL)),
        of(ascii()),
        of(any::<u64>()),
        of(id()),
        applic(),
        of(select(ContentClass::ALL)),
        of(any::<bool>()),
        of(any::<bool>()),
    );
    (a, b)
        .prop_map(
            |((mid, cc, subject, class, expiry, dr, rsdr, rr, prio, vis), b)| {
                let mut f = ForwardReq::new(mid);
                f.cc = cc;
                f.subject = subject;
                f.message_class = class;
                f.expiry = expiry;
                f.delivery_report = dr;
                f.originator_rs_delivery_report = rsdr;
                f.read_reply = rr;
                f.priority = prio;
                f.sender_visibility = vis;
                let (fc, psb, psd, rc, rcd, rcs, rcid, applic, cc_class, drm, adapt) = b;
                f.forward_counter = fc;
                f.previously_sent_by = psb;
                f.previously_sent_date = psd;
                f.reply_charging = rc;
                f.reply_charging_deadline = rcd;
                f.reply_charging_size = rcs;
                f.reply_charging_id = rcid;
                f.applic = applic;
                f.content_class = cc_class;
                f.drm_content = drm;
                f.adaptation_allowed = adapt;
                f
            },
        )
        .boxed()
}

fn response(with_id: bool) -> impl Strategy<Value = Response> {
    (of(id()), select(RequestStatus::ALL), of(text())).prop_map(move |(mid, status, st)| Response {
        message_id: if with_id { mid } else { None },
        status,
        status_text: st,
    })
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    (
        vec(version(), 0..4),
        of(any::<u64>()),
        vec(select(ContentClass::ALL), 0..4),
        vec(select(ReportKind::ALL), 0..2),
        of(any::<bool>()),
        of(any::<bool>()),
    )
        .prop_map(
            |(versions, max_size, content_classes, reports, rc, rr)| Capabilities {
                versions,
                max_size,
                content_classes,
                reports,
                reply_charging: rc,
                read_report: rr,
            },
        )
}

fn kind() -> BoxedStrategy<Kind> {
    prop_oneof![
        forward().prop_map(|f| Kind::ForwardReq(Box::new(f))),
        response(true).prop_map(Kind::ForwardRes),
        (
            id(),
            select(MmStatus::ALL),
            of(ascii()),
            of(text()),
            of(any::<bool>()),
            applic()
        )
            .prop_map(|(mid, s, ext, st, ua, applic)| Kind::DeliveryReportReq(
                DeliveryReport {
                    message_id: mid,
                    mm_status: s,
                    mm_status_unknown: None,
                    mm_status_extension: ext,
                    status_text: st,
                    forward_to_originator_ua: ua,
                    applic,
                }
            )),
        response(true).prop_map(Kind::DeliveryReportRes),
        (id(), select(ReadStatus::ALL), of(text()), applic()).prop_map(|(mid, rs, st, applic)| {
            Kind::ReadReplyReq(ReadReply {
                message_id: mid,
                read_status: rs,
                status_text: st,
                applic,
            })
        }),
        response(false).prop_map(Kind::ReadReplyRes),
        capabilities().prop_map(Kind::CapabilityReq),
        (response(true), capabilities()).prop_map(|(r, c)| Kind::CapabilityRes(r, c)),
    ]
    .boxed()
}

fn body() -> BoxedStrategy<Option<Body<'static>>> {
    of((
        select(vec![
            "text/plain; charset=utf-8".to_string(),
            "multipart/related; type=\"application/smil\"; start=\"<p0.smil>\"; boundary=\"b1\""
                .to_string(),
        ]),
        of(select(vec!["8bit".to_string(), "base64".to_string()])),
        vec(any::<u8>(), 0..300),
    )
        .prop_map(|(ct, te, bytes)| {
            // Canonical line ends: the emitter would turn bare CR/LF into CRLF.
            let bytes: Vec<u8> = bytes
                .into_iter()
                .map(|b| if b == b'\r' || b == b'\n' { b'x' } else { b })
                .collect();
            Body {
                content_type: Some(ct),
                transfer_encoding: te,
                bytes: Cow::Owned(bytes),
            }
        }))
    .boxed()
}

fn extensions() -> impl Strategy<Value = Vec<ExtensionHeader>> {
    vec(
        ("X-Op-[A-Za-z0-9-]{1,20}", ascii())
            .prop_map(|(name, value)| ExtensionHeader { name, value }),
        0..4,
    )
}

prop_compose! {
    fn pdu()(
        version in version(),
        tid in id(),
        kind in kind(),
        d in of(date()),
        mid in of("<[a-z0-9.]{1,20}@[a-z.]{1,20}>"),
        from in of(address()),
        to in vec(address(), 0..4),
        sender in of(address()),
        ack in of(any::<bool>()),
        orig in of(address()),
        extensions in extensions(),
        body in body(),
    ) -> Pdu<'static> {
        let mut p = Pdu::new(tid, kind);
        p.version = version;
        p.date = d;
        p.rfc822_message_id = mid;
        p.from = from;
        p.to = to;
        p.sender = sender;
        // Never an ack request on a RES: the emitter drops it.
        p.ack_request = if p.message_type().is_response() { None } else { ack };
        p.originator_system = orig;
        p.extensions = extensions;
        p.body = body;
        // Mandatory fields of the REQs.
        if matches!(p.message_type(), MessageType::ForwardReq | MessageType::DeliveryReportReq | MessageType::ReadReplyReq) {
            p.from.get_or_insert_with(|| "+491720000001".parse().unwrap());
            if p.to.is_empty() {
                p.to.push("+491790000002/TYPE=PLMN".parse().unwrap());
            }
        }
        p
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_emit_round_trip(p in pdu()) {
        let bytes = emit(&p, &Profile::faithful()).unwrap();
        let back = parse(&bytes).map_err(|e| TestCaseError::fail(format!("{e}\n{}", String::from_utf8_lossy(&bytes))))?;
        prop_assert_eq!(&back, &p, "{}", String::from_utf8_lossy(&bytes));
        // Canonical form: CRLF only, header lines within 998 octets, within 78 where foldable.
        let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
        for line in bytes[..head_end].split(|&b| b == b'\n') {
            prop_assert!(line.is_empty() || line.ends_with(b"\r"));
            prop_assert!(line.len() <= 1000);
            prop_assert!(line.is_ascii(), "non-ASCII header line");
        }
    }

    #[test]
    fn emitted_output_is_emitted_again_identically(p in pdu()) {
        let once = emit(&p, &Profile::default()).unwrap();
        let twice = emit(&parse(&once).unwrap(), &Profile::default()).unwrap();
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn no_value_adds_a_header_line(
        evil in "[a-zA-Z :\r\n\0]{0,40}",
        where_ in 0usize..4,
    ) {
        let payload = format!("x{evil}\r\nBcc: victim@example.com");
        let mut f = ForwardReq::new("M1");
        let mut p = Pdu::new("T1", Kind::ForwardReq(Box::new(f.clone())));
        p.from = Some("+491720000001".parse().unwrap());
        p.to = vec!["+491790000002".parse().unwrap()];
        match where_ {
            0 => { f.subject = Some(payload); p.kind = Kind::ForwardReq(Box::new(f)); }
            1 => p.transaction_id = payload,
            2 => p.extensions.push(ExtensionHeader { name: "X-Op".into(), value: payload }),
            _ => p.rfc822_message_id = Some(payload),
        }
        match emit(&p, &Profile::default()) {
            Err(EmitError::ControlChar { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other}"),
            Ok(bytes) => {
                let back = parse(&bytes).unwrap();
                prop_assert!(back.extension("Bcc").is_none(), "header injected");
            }
        }
    }
}
