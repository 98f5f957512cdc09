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
    let (t, p) = (f.record_type.clone(), f.peer.clone());
    // Reading a day's file is proportional to what is downloaded: off the async workers.
    let built =
        tokio::task::spawn_blocking(move || render(&path, csv, t.as_deref(), p.as_deref())).await;
    let body = match built {
        Ok(Ok(b)) => b,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return error(StatusCode::NOT_FOUND, "no such day")
        }
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
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

/// The file's whole lines that match, as JSONL or CSV.
fn render(
    path: &std::path::Path,
    csv: bool,
    t: Option<&str>,
    p: Option<&str>,
) -> std::io::Result<Vec<u8>> {
    let r = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut jsonl = Vec::new();
    if csv {
        out.write_record(CSV_COLUMNS)
            .map_err(std::io::Error::other)?;
    }
    for line in r.split(b'\n') {
        let line = line?;
        if line.is_empty() || !matches(&line, t, p) {
            continue;
        }
        if csv {
            if let Some(row) = csv_row(&line) {
                out.write_record(&row).map_err(std::io::Error::other)?;
            }
        } else {
            jsonl.extend_from_slice(&line);
            jsonl.push(b'\n');
        }
    }
    if csv {
        out.into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))
    } else {
        Ok(jsonl)
    }
}
