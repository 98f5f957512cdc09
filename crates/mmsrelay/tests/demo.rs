//! `mmsrelay demo` runs its whole scenario and exits 0.

#[test]
fn demo_shows_every_step_and_exits_0() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "queued",
        "forwarded",
        "acknowledged",
        "delivered",
        "read",
        "through the hub",
    ] {
        assert!(text.contains(step), "no {step} in:\n{text}");
    }
}
