//! Parse and emit of a 300 KB `MM4_forward.REQ`, beside two baselines measured in the same run:
//! a plain copy of the same bytes (the floor: what touching every byte once costs) and a full
//! `mail-parser` parse (what a general MIME parser costs). Compare ratios, not absolute times.
//!
//! `cargo bench -p mm4 --bench codec`

use std::hint::black_box;

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A forward like the test vector, with a ~300 KB base64 JPEG-like part.
fn big_forward() -> Vec<u8> {
    let head = "X-Mms-3GPP-MMS-Version: 6.16.0\r\n\
X-Mms-Message-Type: MM4_forward.REQ\r\n\
X-Mms-Transaction-ID: \"A-20261125-000017\"\r\n\
X-Mms-Message-ID: \"A7f3c9e10b@mms.mnc002.mcc262.gprs\"\r\n\
Message-ID: <A7f3c9e10b.1@mms.mnc002.mcc262.gprs>\r\n\
Date: Wed, 25 Nov 2026 12:34:56 +0100\r\n\
From: +491721234567/TYPE=PLMN\r\n\
To: +491791234567/TYPE=PLMN, +491791234568/TYPE=PLMN\r\n\
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_vom_Strand?=\r\n\
X-Mms-Message-Class: Personal\r\n\
X-Mms-Expiry: Sat, 28 Nov 2026 12:34:56 +0100\r\n\
X-Mms-Delivery-Report: Yes\r\n\
X-Mms-Read-Reply: No\r\n\
X-Mms-Ack-Request: Yes\r\n\
X-Mms-Originator-System: system-user@mms.mnc002.mcc262.gprs\r\n\
X-Mms-VASP-ID: 12345\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/related; type=\"application/smil\"; start=\"<p0.smil>\";\r\n boundary=\"=_b1\"\r\n\r\n";
    let mut m = head.as_bytes().to_vec();
    m.extend_from_slice(
        b"--=_b1\r\nContent-Type: application/smil\r\nContent-ID: <p0.smil>\r\n\r\n<smil/>\r\n",
    );
    m.extend_from_slice(
        b"--=_b1\r\nContent-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    );
    let jpeg: Vec<u8> = (0..225_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&jpeg);
    for line in b64.as_bytes().chunks(76) {
        m.extend_from_slice(line);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--=_b1--\r\n");
    m
}

fn bench(c: &mut Criterion) {
    let raw = big_forward();
    assert!(raw.len() > 290_000, "{}", raw.len());
    let pdu = mm4::parse(&raw).unwrap();
    let profile = mm4::Profile::default();

    let mut g = c.benchmark_group("forward_300k");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("baseline_copy", |b| b.iter(|| black_box(raw.clone())));
    g.bench_function("baseline_mail_parser_full", |b| {
        b.iter(|| {
            black_box(
                mail_parser::MessageParser::default()
                    .parse(black_box(&raw[..]))
                    .map(|m| m.parts.len()),
            )
        })
    });
    g.bench_function("mm4_parse", |b| {
        b.iter(|| black_box(mm4::parse(black_box(&raw)).unwrap()))
    });
    g.bench_function("mm4_emit", |b| {
        b.iter(|| black_box(mm4::emit(black_box(&pdu), &profile).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
