#![no_main]
//! Bytes arriving at the bounce address → the DSN parser.
use libfuzzer_sys::fuzz_target;

#[path = "contained.rs"]
mod contained;

fuzz_target!(|data: &[u8]| {
    contained::install();
    let _ = mm4::dsn::looks_like_dsn(data);
    if let Ok(d) = mm4::dsn::parse(data) {
        for r in &d.recipients {
            let _ = r.outcome();
        }
    }
});
