#![no_main]
//! Bytes from a peer → `mm4::parse`; whatever parses must emit, and the emitted form must parse
//! back to the same PDU.
use libfuzzer_sys::fuzz_target;

#[path = "contained.rs"]
mod contained;

fuzz_target!(|data: &[u8]| {
    contained::install();
    // Transit mail may be downgraded for a 7-bit hop: the result must really be 7-bit.
    if let Ok(out) = mm4::mime::downgrade_8bit(data) {
        assert!(out.iter().all(|b| *b < 0x80) || out.as_ref() == data);
    }
    if let Ok(pdu) = mm4::parse(data) {
        if let Ok(out) = mm4::emit(&pdu, &mm4::Profile::faithful()) {
            let again = mm4::parse(&out).expect("emitted PDU must parse");
            assert_eq!(
                mm4::emit(&again, &mm4::Profile::faithful()).expect("re-emit"),
                out,
                "emit is not stable"
            );
        }
        if let Some(body) = &pdu.body {
            let _ = body.parts();
        }
    }
});
