//! What `GET /metrics` shows: messages in and out, refusals, the delivery latency histogram,
//! and per scrape the store's commits and fsyncs and the queue depth — kept and encoded by
//! `prometheus-client` (OpenMetrics text, which Prometheus reads).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the delivery latency histogram.
const BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 600.0, 3600.0];

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    messages_in: Family<Labels, Counter>,
    messages_out: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    latency: Histogram,
    store_commits: Gauge,
    store_fsyncs: Gauge,
    queue_depth: Gauge,
    /// The last hour per minute and peer, for the console.
    pub traffic: crate::traffic::Traffic,
}

/// What a scrape reads from elsewhere.
pub struct Scrape {
    pub store_commits: u64,
    pub store_fsyncs: u64,
    /// Recipients waiting now (scheduled reports not counted).
    pub queue_depth: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let messages_in = Family::<Labels, Counter>::default();
        let messages_out = Family::<Labels, Counter>::default();
        let refused = Family::<Labels, Counter>::default();
        let latency = Histogram::new(BUCKETS);
        let (store_commits, store_fsyncs, queue_depth) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "mmsrelay_messages_in",
            "Messages stored, by type",
            messages_in.clone(),
        );
        registry.register(
            "mmsrelay_messages_out",
            "Transactions towards peers, by peer and result (MM4 status, or retry)",
            messages_out.clone(),
        );
        registry.register(
            "mmsrelay_messages_refused",
            "Messages refused at intake, by SMTP reply code",
            refused.clone(),
        );
        registry.register(
            "mmsrelay_delivery_latency_seconds",
            "From receipt or submission to acceptance by the next hop",
            latency.clone(),
        );
        registry.register(
            "mmsrelay_store_commits",
            "Commits asked of the store since start",
            store_commits.clone(),
        );
        registry.register(
            "mmsrelay_store_fsyncs",
            "Durable transactions the store made since start",
            store_fsyncs.clone(),
        );
        registry.register(
            "mmsrelay_queue_depth",
            "Recipients waiting for delivery",
            queue_depth.clone(),
        );
        Metrics {
            registry,
            messages_in,
            messages_out,
            refused,
            latency,
            store_commits,
            store_fsyncs,
            queue_depth,
            traffic: Default::default(),
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    /// A message stored at `at_ms`, of `kind` (its PDU type, DSN, bounce…), from `peer` when
    /// a configured peer sent it.
    pub fn message_in(&self, kind: &str, peer: Option<&str>, at_ms: i64) {
        self.messages_in
            .get_or_create(&labels(&[("type", kind)]))
            .inc();
        if let Some(peer) = peer {
            self.traffic.received(peer, at_ms);
        }
    }

    /// A transaction's result for one recipient towards `peer` at `at_ms`.
    pub fn message_out(&self, peer: &str, outcome: crate::traffic::Outcome<'_>, at_ms: i64) {
        use crate::traffic::Outcome;
        let result = match outcome {
            Outcome::Sent => "Ok",
            Outcome::Deferred => "retry",
            Outcome::Failed { status } => status,
        };
        self.messages_out
            .get_or_create(&labels(&[("peer", peer), ("result", result)]))
            .inc();
        self.traffic.delivered(peer, outcome, at_ms);
    }

    /// A message refused at intake with SMTP reply `code`.
    pub fn refused(&self, code: u16) {
        self.refused
            .get_or_create(&labels(&[("code", &code.to_string())]))
            .inc();
    }

    /// Records one delivery latency (submission or receipt to acceptance by the next hop).
    pub fn observe_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// Everything, with what the scrape read.
    pub fn render(&self, s: Scrape) -> String {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.store_commits.set(gauge(s.store_commits));
        self.store_fsyncs.set(gauge(s.store_fsyncs));
        self.queue_depth.set(gauge(s.queue_depth));
        let mut out = String::new();
        // Writing into a String does not fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_what_operators_scrape() {
        let m = Metrics::default();
        m.message_in("MM4_forward.REQ", Some("operator-b"), 0);
        m.message_in("MM4_forward.REQ", None, 0);
        m.message_out("operator-b", crate::traffic::Outcome::Deferred, 0);
        m.refused(550);
        m.observe_latency(0.2);
        let t = m.render(Scrape {
            store_commits: 7,
            store_fsyncs: 2,
            queue_depth: 3,
        });
        for line in [
            "mmsrelay_messages_in_total{type=\"MM4_forward.REQ\"} 2\n",
            "mmsrelay_messages_out_total{peer=\"operator-b\",result=\"retry\"} 1\n",
            "mmsrelay_messages_refused_total{code=\"550\"} 1\n",
            "mmsrelay_queue_depth 3\n",
            "mmsrelay_store_commits 7\n",
            "mmsrelay_store_fsyncs 2\n",
            "mmsrelay_delivery_latency_seconds_bucket{le=\"0.5\"} 1\n",
            "mmsrelay_delivery_latency_seconds_bucket{le=\"0.1\"} 0\n",
            "mmsrelay_delivery_latency_seconds_count 1\n",
            "# EOF\n",
        ] {
            assert!(t.contains(line), "{line:?} not in:\n{t}");
        }
    }
}
