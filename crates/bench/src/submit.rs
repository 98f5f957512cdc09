//! `submit`: MMs originated through the API (`POST /v1/messages`), as an application or an MM1
//! front end hands them to the relay — the start of the acknowledged path. Keep-alive HTTP/1.1
//! connections, each with one request in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::Report;

/// The JSON of one submission: one binary part of about `size` octets once encoded.
fn submission(from: &str, to: &str, size: usize) -> Bytes {
    let raw: Vec<u8> = (0..(size * 3 / 4) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let data = base64::engine::general_purpose::STANDARD.encode(raw);
    Bytes::from(format!(
        r#"{{"from":"{from}","to":["{to}"],"subject":"bench","parts":[{{"content_type":"image/jpeg","name":"p.jpg","data":"{data}"}}]}}"#
    ))
}

/// One connection's share of the run: (accepted, refused, failed, latencies).
async fn connection(
    api: SocketAddr,
    body: Bytes,
    next: Arc<AtomicUsize>,
    count: usize,
) -> (usize, usize, usize, Vec<Duration>) {
    let (mut ok, mut refused, mut failed, mut lat) = (0, 0, 0, Vec::new());
    let mut sender = None;
    loop {
        if next.fetch_add(1, Ordering::Relaxed) >= count {
            break;
        }
        if sender.is_none() {
            sender = open(api).await;
        }
        let Some(s) = sender.as_mut() else {
            failed += 1;
            continue;
        };
        let req = hyper::Request::post("/v1/messages")
            .header(hyper::header::HOST, api.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .expect("a valid request");
        let t = Instant::now();
        match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                // Read the answer whole: the connection is reused.
                let _ = resp.into_body().collect().await;
                if status == hyper::StatusCode::ACCEPTED {
                    ok += 1;
                    lat.push(t.elapsed());
                } else {
                    refused += 1;
                }
            }
            Err(_) => {
                failed += 1;
                sender = None;
            }
        }
    }
    (ok, refused, failed, lat)
}

async fn open(api: SocketAddr) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(api).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// Submits `count` MMs of about `size` octets over `connections` connections.
pub async fn submit(
    api: SocketAddr,
    connections: usize,
    count: usize,
    size: usize,
    from: &str,
    to: &str,
) -> Report {
    let body = submission(from, to, size);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|_| tokio::spawn(connection(api, body.clone(), next.clone(), count)))
        .collect();
    Report::gather(tasks, start).await
}
