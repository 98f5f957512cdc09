//! The overview's traffic chart: per peer, MMs in and recipients out per minute over the last
//! hour, drawn by the server as SVG (no script, no library).

use maud::{html, Markup};

use crate::traffic::{Counts, MINUTES};

const W: f64 = 600.0;
const H: f64 = 90.0;

/// A polyline through one series, scaled to `max`.
fn line(values: &[u64], max: u64) -> String {
    let step = W / (MINUTES - 1) as f64;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = H - (*v as f64 / max.max(1) as f64) * (H - 6.0) - 3.0;
            format!("{:.1},{:.1}", i as f64 * step, y)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One peer's hour: MMs received from it and recipients it accepted, per minute.
pub fn peer_hour(peer: &str, slots: &[Counts]) -> Markup {
    let received: Vec<u64> = slots.iter().map(|c| c.received).collect();
    let sent: Vec<u64> = slots.iter().map(|c| c.sent).collect();
    let max = received.iter().chain(&sent).copied().max().unwrap_or(0);
    let (total_in, total_out) = (received.iter().sum::<u64>(), sent.iter().sum::<u64>());
    let failed: u64 = slots.iter().map(|c| c.failed).sum();
    let deferred: u64 = slots.iter().map(|c| c.deferred).sum();
    html! {
        figure.chart data-peer=(peer) {
            figcaption {
                strong { (peer) } " — in " (total_in) ", out " (total_out)
                ", deferred " (deferred) ", failed " (failed)
                span.muted { " (peak " (max) "/min)" }
            }
            svg width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) role="img"
                aria-label=(format!("{peer}: traffic per minute, last hour")) {
                line x1="0" y1=(H - 3.0) x2=(W) y2=(H - 3.0) stroke="#d8dde6" {}
                polyline fill="none" stroke="#0b5cad" stroke-width="2" points=(line(&received, max)) {}
                polyline fill="none" stroke="#067647" stroke-width="2" points=(line(&sent, max)) {}
            }
            div.muted { span style="color:#0b5cad" { "■ in" } " " span style="color:#067647" { "■ out" } " · one point a minute, newest right" }
        }
    }
}
