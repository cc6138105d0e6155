//! The controller's Prometheus metrics, served on `/metrics` (OpenMetrics text, which
//! Prometheus scrapes as is), through the `prometheus-client` crate.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Labels of `virtual_env_objects_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    kind: &'static str,
    /// `applied` or `pruned`.
    action: &'static str,
}

/// Labels of `virtual_env_module_peer_fetches_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    /// `fetched`, `not_found` or `mismatch`.
    result: &'static str,
}

/// Labels of `virtual_env_http_connections_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    /// `probes` or `modules`.
    listener: &'static str,
    /// `per_source`: the client already holds its share of connections.
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    refused: Family<RefusedLabels, Counter>,
    peer_fetches: Family<FetchLabels, Counter>,
    reconciles: Counter,
    errors: Counter,
    duration: Histogram,
    objects: Family<ObjectLabels, Counter>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("virtual_env");
        let reconciles = Counter::default();
        let errors = Counter::default();
        let duration = Histogram::new(BUCKETS);
        let objects = Family::<ObjectLabels, Counter>::default();
        let leader = Gauge::default();
        let peer_fetches = Family::<FetchLabels, Counter>::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "http_connections_refused",
            "Connections closed at once, by listener and reason",
            refused.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles of VirtualEnvironments",
            reconciles.clone(),
        );
        registry.register("reconcile_errors", "Reconciles that failed", errors.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile took",
            duration.clone(),
        );
        registry.register(
            "objects",
            "Objects applied or pruned, by kind",
            objects.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "module_peer_fetches",
            "Filter modules this replica did not hold, asked of its peers, by result",
            peer_fetches.clone(),
        );
        Self {
            registry,
            refused,
            peer_fetches,
            reconciles,
            errors,
            duration,
            objects,
            leader,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self) {
        self.errors.inc();
    }

    pub fn applied(&self, kind: &'static str) {
        self.count_object(kind, "applied");
    }

    pub fn pruned(&self, kind: &'static str) {
        self.count_object(kind, "pruned");
    }

    fn count_object(&self, kind: &'static str, action: &'static str) {
        self.objects
            .get_or_create(&ObjectLabels { kind, action })
            .inc();
    }

    pub fn peer_fetch(&self, result: &'static str) {
        self.peer_fetches
            .get_or_create(&FetchLabels { result })
            .inc();
    }

    pub fn connection_refused(&self, listener: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels { listener, reason })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(30));
        m.reconciled(Duration::from_secs(3));
        m.failed();
        m.applied("VirtualService");
        m.applied("VirtualService");
        m.pruned("DestinationRule");
        m.set_leader(true);
        let text = m.render();
        assert!(text.contains("virtual_env_reconciles_total 2\n"), "{text}");
        assert!(
            text.contains("virtual_env_reconcile_errors_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("virtual_env_reconcile_duration_seconds_bucket{le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("virtual_env_reconcile_duration_seconds_bucket{le=\"10.0\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("virtual_env_reconcile_duration_seconds_count 2\n"));
        assert!(
            text.contains(
                "virtual_env_objects_total{kind=\"VirtualService\",action=\"applied\"} 2\n"
            ),
            "{text}"
        );
        assert!(text
            .contains("virtual_env_objects_total{kind=\"DestinationRule\",action=\"pruned\"} 1\n"));
        assert!(text.contains("virtual_env_leader 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
