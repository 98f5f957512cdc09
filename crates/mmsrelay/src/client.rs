//! `mmsrelay send` and `mmsrelay status`: the API from the command line, over a minimal
//! HTTP/1.1 client (one request per connection; our own API is the only server it talks to).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--api {0}: only http://host:port URLs are supported")]
    BadUrl(String),
    #[error("cannot reach the API at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("API answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    Other(String),
}

fn host_port(api: &str) -> Result<String, ClientError> {
    let rest = api
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::BadUrl(api.to_string()))?;
    Ok(rest.trim_end_matches('/').to_string())
}

/// One request; the JSON answer (or the API's error).
pub fn request(
    api: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, ClientError> {
    let addr = host_port(api)?;
    let mut s = TcpStream::connect(&addr).map_err(|e| ClientError::Connect {
        addr: addr.clone(),
        reason: e.to_string(),
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = std::env::var("MMSRELAY_TOKEN")
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let io = |e: std::io::Error| ClientError::Connect {
        addr: addr.clone(),
        reason: e.to_string(),
    };
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(io)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Other("malformed HTTP response".into()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Other("malformed HTTP status line".into()))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    if status >= 400 {
        let message = v["error"]["message"].as_str().unwrap_or("").to_string();
        return Err(ClientError::Api { status, message });
    }
    Ok(v)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn content_type_of(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("txt") => "text/plain",
        Some("smil") => "application/smil",
        Some("mp4") => "video/mp4",
        Some("3gp") => "video/3gpp",
        Some("amr") => "audio/amr",
        _ => "application/octet-stream",
    }
}

pub struct SendArgs {
    pub api: String,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub attach: Vec<PathBuf>,
    pub delivery_report: bool,
    pub read_reply: bool,
}

/// Submits an MM; returns the message id.
pub fn send(a: SendArgs) -> Result<String, ClientError> {
    let mut parts = Vec::new();
    if let Some(t) = &a.text {
        parts.push(json!({"content_type": "text/plain", "text": t}));
    }
    for p in &a.attach {
        let data = std::fs::read(p)
            .map_err(|e| ClientError::Other(format!("--attach {}: {e}", p.display())))?;
        parts.push(json!({
            "content_type": content_type_of(p),
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "name": p.file_name().map(|n| n.to_string_lossy().into_owned()),
        }));
    }
    if parts.is_empty() {
        parts.push(json!({"content_type": "text/plain", "text": ""}));
    }
    let body = json!({
        "from": a.from, "to": a.to, "cc": a.cc, "subject": a.subject,
        "delivery_report": a.delivery_report, "read_reply": a.read_reply, "parts": parts,
    });
    let v = request(&a.api, "POST", "/v1/messages", Some(&body))?;
    for r in v["recipients"].as_array().into_iter().flatten() {
        eprintln!(
            "  {} {}{}",
            r["address"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?"),
            r["status_code"]
                .as_str()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        );
    }
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

/// A message's per-recipient states and timelines, as text.
pub fn status(api: &str, id: &str) -> Result<String, ClientError> {
    let v = request(api, "GET", &format!("/v1/messages/{id}"), None)?;
    let mut out = format!(
        "message {} ({})\n",
        v["id"].as_str().unwrap_or("?"),
        v["message_id"].as_str().unwrap_or("-")
    );
    for r in v["recipients"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}  {}{}{}\n",
            r["address"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?"),
            r["status_code"]
                .as_str()
                .map(|c| format!("  {c}"))
                .unwrap_or_default(),
            r["peer"]
                .as_str()
                .map(|p| format!("  via {p}"))
                .unwrap_or_default(),
        ));
        for e in r["events"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    {}  {:<14} {}\n",
                e["at"].as_str().unwrap_or(""),
                e["event"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or("")
            ));
        }
    }
    Ok(out)
}
