//! The API's OpenAPI document: it describes every route with the errors it returns, and the real
//! relay, fuzzed against it by schemathesis, answers as it says — no 5xx, every status, content
//! type and body as documented, no route that ignores the token.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;
use serde_json::Value;

const TOKEN: &str = "s3cret";

/// A relay with a token, subscribers +1555…, peer B for +49172 (unreachable: what is sent to it
/// stays queued), and one MM filed for the subscriber the document's examples name.
fn relay() -> (TempDir, Relay, String) {
    let dir = TempDir::new("openapi");
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let toml = config(dir.path(), smtp, "", "hosts = [\"127.0.0.1:9\"]")
        .replace("[api]\n", &format!("[api]\ntoken = \"{TOKEN}\"\n"));
    let relay = Relay::start(dir.path(), &toml, smtp);
    let api = api_url(&toml);
    let mut c = Client::connect_from(smtp, Some("127.0.0.2"));
    c.hello();
    let reply = c.transaction(
        sender_b(),
        &[&local("+15550001")],
        &forward("openapi-1", "+15550001", 600),
    );
    assert!(reply.starts_with("250"), "{reply}");
    (dir, relay, api)
}

fn document(api: &str) -> Value {
    let (code, doc) = http("GET", api, "/v1/openapi.json", None);
    assert_eq!(code, 200, "{doc}");
    doc
}

#[test]
fn the_document_describes_every_route_with_its_errors() {
    let (_dir, _relay, api) = relay();
    let doc = document(&api);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations.push(format!("{} {path}", method.to_uppercase()));
            let responses = op["responses"].as_object().unwrap();
            // Every error an operation documents is the one error object.
            for (status, r) in responses.iter().filter(|(s, _)| !s.starts_with('2')) {
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
            // A guarded operation says so, and documents its refusal.
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path}");
            }
        }
    }
    operations.sort();
    let expected = [
        "DELETE /v1/queue/{id}",
        "GET /healthz",
        "GET /metrics",
        "GET /readyz",
        "GET /v1/cluster",
        "GET /v1/mailbox/{address}",
        "GET /v1/mailbox/{address}/{id}/raw",
        "GET /v1/messages",
        "GET /v1/messages/{id}",
        "GET /v1/openapi.json",
        "GET /v1/peers",
        "GET /v1/queue",
        "POST /v1/mailbox/{address}/{id}/report",
        "POST /v1/messages",
        "POST /v1/peers/{name}/pause",
        "POST /v1/peers/{name}/resume",
        "POST /v1/queue/{id}/retry",
        "POST /v1/reload",
    ];
    assert_eq!(operations, expected);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // What the examples name works: the example submission is accepted.
    let example = &doc["components"]["schemas"]["SubmitRequest"]["example"];
    let (code, v) = http_bearer(
        "POST",
        &api,
        "/v1/messages",
        Some(&example.to_string()),
        TOKEN,
    );
    assert_eq!(code, 202, "{v}");
}

/// schemathesis, installed into a virtual environment by `scripts/test` (or named by
/// `SCHEMATHESIS`).
fn schemathesis() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SCHEMATHESIS") {
        return p.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("target/venv/bin/schemathesis");
    assert!(
        p.exists(),
        "{} is missing: scripts/test installs it (python3 -m venv target/venv; \
         target/venv/bin/pip install schemathesis)",
        p.display()
    );
    p
}

#[test]
fn the_api_answers_as_its_document_says_under_schemathesis() {
    let (dir, relay, api) = relay();
    // A fixed seed (override with SCHEMATHESIS_SEED) so that a failure is reproducible.
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261205".into());
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "60".into());
    let out = Command::new(schemathesis())
        .current_dir(dir.path())
        .args(["run", &format!("{api}/v1/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        // Every check but one: a request the schema allows may still be refused with `400` —
        // an address the schema writes as a string must also be a number we can route.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", &examples, "--seed", &seed])
        .args(["--suppress-health-check", "all", "--request-timeout", "20"])
        .args(["--workers", "1", "--no-color"])
        .output()
        .expect("schemathesis runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\nrelay log:\n{}",
        relay.log()
    );
    // It reached the API: it tested every operation it selected (all but the document's own,
    // which has no schema to fuzz), and cases got through.
    let count = |label: &str| -> usize {
        text.split_once(label)
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("Tested: ") >= 16, "{text}");
    assert_eq!(count("Tested: "), count("Selected: "), "{text}");
    let passed: usize = text
        .split_once(" generated, ")
        .and_then(|(_, rest)| rest.split_once(" passed"))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(passed >= 500, "{passed} cases passed:\n{text}");
}
