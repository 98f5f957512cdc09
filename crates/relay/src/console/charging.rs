//! Charging records by day, type and peer, with counts, and a day's records to download as
//! JSONL or CSV (optionally only one type or one peer).

use std::io::BufRead;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{self, error};
use super::session::Session;
use super::Console;
use crate::cdr::summary::{csv_row, matches, CSV_COLUMNS};

#[derive(serde::Deserialize)]
pub struct DayForm {
    day: Option<String>,
}

/// The days with records, and the chosen day's counts by type and peer.
pub async fn page(State(c): State<Arc<Console>>, s: Session, Query(f): Query<DayForm>) -> Response {
    let days = c.charging.days();
    let day = f
        .day
        .filter(|d| days.contains(d))
        .or_else(|| days.first().cloned());
    let counts = match &day {
        Some(d) => {
            let (summaries, d) = (c.charging.clone(), d.clone());
            // Reads the day file's tail: off the async workers.
            match tokio::task::spawn_blocking(move || summaries.counts(&d)).await {
                Ok(Ok(counts)) => counts,
                Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        None => Default::default(),
    };
    let peers: std::collections::BTreeSet<&String> =
        counts.values().flat_map(|p| p.keys()).collect();
    layout::page(
        "Charging",
        "/console/charging",
        &s,
        html! {
            @if days.is_empty() { p.muted { "No charging records written yet." } }
            @else {
                form method="get" action="/console/charging" {
                    label for="day" { "Day " }
                    select #day name="day" {
                        @for d in &days { option value=(d) selected[Some(d) == day.as_ref()] { (d) } }
                    }
                    " " button type="submit" { "Show" }
                }
            }
            @if let Some(day) = &day {
                h2 { "Records on " (day) " by type and peer" }
                table #counts {
                    tr { th { "Type" } @for p in &peers { th { (p) } } th { "All" } }
                    @for (t, by_peer) in &counts { tr {
                        td { (t) }
                        @for p in &peers { td { (by_peer.get(*p).copied().unwrap_or(0)) } }
                        td { strong { (by_peer.values().sum::<u64>()) } }
                    } }
                }
                p {
                    "Download " (day) ": "
                    a #jsonl href=(format!("/console/charging/{day}/download?format=jsonl")) { "JSONL" } " · "
                    a #csv href=(format!("/console/charging/{day}/download?format=csv")) { "CSV" }
                    @for t in counts.keys() { " · " a href=(format!("/console/charging/{day}/download?format=csv&type={t}")) { (t) " (CSV)" } }
                }
            }
        },
    )
}

#[derive(serde::Deserialize)]
pub struct DownloadForm {
    #[serde(default)]
    format: String,
    #[serde(rename = "type")]
    record_type: Option<String>,
    peer: Option<String>,
}

/// A day's records, filtered, as JSONL (the lines as written) or CSV.
pub async fn download(
    State(c): State<Arc<Console>>,
    _: Session,
    Path(day): Path<String>,
    Query(f): Query<DownloadForm>,
) -> Response {
    let Some(path) = c.charging.file(&day) else {
        return error(StatusCode::NOT_FOUND, "no such day");
    };
    let csv = match f.format.as_str() {
        "csv" => true,
        "jsonl" | "" => false,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("format {other:?}: jsonl or csv"),
            )
        }
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return error(StatusCode::NOT_FOUND, "no such day")
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    // The day's file is read and converted off the async workers and sent a chunk at a time:
    // memory stays bounded however large the day.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let (t, p) = (f.record_type.clone(), f.peer.clone());
    tokio::task::spawn_blocking(move || {
        let mut send = |chunk: Vec<u8>| tx.blocking_send(Ok(chunk)).is_ok();
        if let Err(e) = render(file, csv, t.as_deref(), p.as_deref(), &mut send) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let body = axum::body::Body::from_stream(chunks);
    let (ext, ctype) = if csv {
        ("csv", "text/csv; charset=utf-8")
    } else {
        ("jsonl", "application/x-ndjson")
    };
    (
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"cdr-{day}.{ext}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// How much converted output is sent at once.
const CHUNK: usize = 64 * 1024;

/// Output gathered into chunks of about [`CHUNK`] for `send`, which says `false` when nobody
/// listens any more (the download was given up: writing then fails, and reading stops).
struct Chunks<'a> {
    buf: Vec<u8>,
    send: &'a mut dyn FnMut(Vec<u8>) -> bool,
}

impl std::io::Write for Chunks<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 4096));
            if !(self.send)(chunk) {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Chunks<'_> {
    /// Sends what is left.
    fn finish(self) {
        if !self.buf.is_empty() {
            (self.send)(self.buf);
        }
    }
}

/// The file's whole lines that match, as JSONL or CSV, handed to `send` a chunk at a time.
fn render(
    file: std::fs::File,
    csv: bool,
    t: Option<&str>,
    p: Option<&str>,
    send: &mut dyn FnMut(Vec<u8>) -> bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = Chunks {
        buf: Vec::with_capacity(CHUNK + 4096),
        send,
    };
    let lines = std::io::BufReader::new(file).split(b'\n');
    let wanted = |line: &std::io::Result<Vec<u8>>| {
        line.as_ref()
            .map_or(true, |l| !l.is_empty() && matches(l, t, p))
    };
    if csv {
        let mut w = csv::Writer::from_writer(out);
        w.write_record(CSV_COLUMNS).map_err(std::io::Error::other)?;
        for line in lines.filter(wanted) {
            if let Some(row) = csv_row(&line?) {
                w.write_record(&row).map_err(std::io::Error::other)?;
            }
        }
        out = w
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    } else {
        for line in lines.filter(wanted) {
            out.write_all(&line?)?;
            out.write_all(b"\n")?;
        }
    }
    out.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn day_file(lines: usize) -> (std::path::PathBuf, String) {
        let path = std::env::temp_dir().join(format!("cdr-render-{}-{lines}", std::process::id()));
        let mut text = String::new();
        for i in 0..lines {
            let (t, peer) = if i % 3 == 0 {
                ("MMR4F", "b")
            } else {
                ("MMO4FRq", "c")
            };
            text.push_str(&format!(
                "{{\"record_id\":\"{i}\",\"record_type\":\"{t}\",\"peer\":\"{peer}\",\"recipients\":[\"+1\",\"+2\"],\"size\":{i}}}\n"
            ));
        }
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (path, text)
    }

    fn collect(path: &std::path::Path, csv: bool, t: Option<&str>) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        let mut send = |c: Vec<u8>| {
            chunks.push(c);
            true
        };
        render(std::fs::File::open(path).unwrap(), csv, t, None, &mut send).unwrap();
        chunks
    }

    #[test]
    fn a_large_day_goes_out_in_bounded_chunks_whole_and_filtered() {
        let (path, text) = day_file(6000);
        let jsonl = collect(&path, false, None);
        assert!(jsonl.len() > 5, "{} chunks", jsonl.len());
        assert!(jsonl.iter().all(|c| c.len() < CHUNK + 512));
        assert_eq!(jsonl.concat(), text.as_bytes());
        let csv = String::from_utf8(collect(&path, true, Some("MMR4F")).concat()).unwrap();
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows[0], CSV_COLUMNS.join(","));
        assert_eq!(rows.len(), 1 + 2000);
        assert_eq!(rows[1], "0,MMR4F,,,b,,+1;+2,,,0,,");
        // A download given up stops the reading.
        let mut sent = 0;
        let mut gone = |_: Vec<u8>| {
            sent += 1;
            false
        };
        let r = render(
            std::fs::File::open(&path).unwrap(),
            false,
            None,
            None,
            &mut gone,
        );
        assert!(r.is_err() && sent == 1);
        std::fs::remove_file(&path).unwrap();
    }
}
