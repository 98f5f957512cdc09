#![no_main]
//! Envelope and header addresses, xtext and NAPTR regexps: text a peer or the DNS controls.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(a) = s.parse::<mm4::Address>() {
            let back: mm4::Address = a.to_string().parse().expect("formatted address must parse");
            assert_eq!(back, a);
        }
        let _ = mm4::Address::parse_list(s);
        let _ = mm4::xtext::decode(s);
        let _ = mm4::enumdns::apply_regexp(s, "+15551230001");
    }
});
