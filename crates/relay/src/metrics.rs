//! Counters and a latency histogram in Prometheus text format (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) of the delivery latency histogram.
const BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 600.0, 3600.0];

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(String, String), u64>>,
    latency: Mutex<(Vec<u64>, f64, u64)>,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}

impl Metrics {
    /// Adds one to `name{labels}`; labels as `k="v"` pairs.
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        let l = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry((name.to_string(), l)).or_default() += 1;
    }

    /// Records one delivery latency (submission or receipt to acceptance by the next hop).
    pub fn observe_latency(&self, seconds: f64) {
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        if h.0.is_empty() {
            h.0 = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += seconds;
        h.2 += 1;
    }

    /// Everything, plus the gauges given.
    pub fn render(&self, gauges: &[(&str, Vec<(String, f64)>)]) -> String {
        let mut out = String::new();
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = "";
        for ((name, labels), v) in c.iter() {
            if name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
        drop(c);
        for (name, series) in gauges {
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (labels, v) in series {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# TYPE mmsrelay_delivery_latency_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let n = h.0.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "mmsrelay_delivery_latency_seconds_bucket{{le=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "mmsrelay_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {}",
            h.2
        );
        let _ = writeln!(out, "mmsrelay_delivery_latency_seconds_sum {}", h.1);
        let _ = writeln!(out, "mmsrelay_delivery_latency_seconds_count {}", h.2);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let m = Metrics::default();
        m.inc("mmsrelay_messages_in_total", &[("type", "MM4_forward.REQ")]);
        m.inc("mmsrelay_messages_in_total", &[("type", "MM4_forward.REQ")]);
        m.observe_latency(0.2);
        let t = m.render(&[("mmsrelay_queue_depth", vec![(String::new(), 3.0)])]);
        assert!(
            t.contains("mmsrelay_messages_in_total{type=\"MM4_forward.REQ\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("mmsrelay_queue_depth 3\n"));
        assert!(t.contains("mmsrelay_delivery_latency_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(t.contains("mmsrelay_delivery_latency_seconds_bucket{le=\"0.1\"} 0\n"));
        assert!(t.contains("mmsrelay_delivery_latency_seconds_count 1\n"));
    }
}
