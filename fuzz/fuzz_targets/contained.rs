//! mail-parser 0.11 has debug-only assertions that malformed input can trip; `mm4` contains
//! them (`catch_unwind`: the input is then not MIME). libFuzzer's panic hook aborts on every
//! panic before it can be caught, so the targets pass those on to the unwinder and keep
//! aborting on every other panic — ours above all.

pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_mail_parser = info
                .location()
                .is_some_and(|l| l.file().contains("/mail-parser-0.11."));
            if !in_mail_parser {
                abort(info);
            }
        }));
    });
}
