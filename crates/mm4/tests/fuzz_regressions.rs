//! Inputs the fuzzers once crashed on (`tests/data/fuzz-regressions`), replayed through the same
//! checks the fuzz targets make: whatever parses emits, and emitting is stable.

use std::path::Path;

fn check(data: &[u8]) {
    if let Ok(pdu) = mm4::parse(data) {
        if let Ok(out) = mm4::emit(&pdu, &mm4::Profile::faithful()) {
            // Byte-stable after one canonicalisation (an unknown MM status becomes
            // Indeterminate, so the model itself may differ once).
            let again = mm4::parse(&out).expect("emitted PDU must parse");
            assert_eq!(again.message_type(), pdu.message_type());
            assert_eq!(mm4::emit(&again, &mm4::Profile::faithful()).unwrap(), out);
        }
        if let Some(b) = &pdu.body {
            let _ = b.parts();
        }
    }
    let _ = mm4::dsn::parse(data);
}

#[test]
fn former_crashes_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions");
    let mut n = 0;
    for f in std::fs::read_dir(dir).unwrap() {
        let path = f.unwrap().path();
        check(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no regression inputs found");
}
