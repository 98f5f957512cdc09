//! Smoke mode of the load generator (a few hundred messages), so the benchmark tools cannot rot:
//! the real binary as sink and as sender over loopback.

use std::process::{Command, Stdio};
use std::time::Duration;

fn kv(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing in {line}"))
}

#[test]
fn load_generator_against_the_sink() {
    let bin = env!("CARGO_BIN_EXE_mmsrelay-bench");
    let port = testbed::free_port("127.0.0.1");
    let addr = format!("127.0.0.1:{port}");
    let mut sink = Command::new(bin)
        .args(["sink", "--listen", &addr, "--xmm4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    testbed::wait_tcp(addr.parse().unwrap(), "sink", String::new);
    for ack in [false, true] {
        let mut args = vec![
            "send",
            "--target",
            &addr,
            "--connections",
            "10",
            "--count",
            "300",
            "--size",
            "20000",
        ];
        if ack {
            args.push("--ack");
        }
        let out = Command::new(bin).args(&args).output().unwrap();
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{line}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(kv(&line, "accepted"), 300.0, "{line}");
        assert_eq!(kv(&line, "failed"), 0.0, "{line}");
        assert!(kv(&line, "p99_ms") >= kv(&line, "p50_ms"));
        assert!(kv(&line, "msg_per_s") > 0.0);
    }
    let out = Command::new(bin)
        .args([
            "idle",
            "--target",
            &addr,
            "--connections",
            "200",
            "--hold",
            "0",
        ])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(kv(&line, "open"), 200.0, "{line}");
    let _ = sink.kill();
    let _ = sink.wait();
    std::thread::sleep(Duration::from_millis(10));
}
