//! The controller's Prometheus metrics, served on `/metrics` in the text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    errors: AtomicU64,
    /// Cumulative counts per bucket, then +Inf.
    duration_buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_sum_micros: AtomicU64,
    /// (kind, action) -> count; action is `applied` or `pruned`.
    objects: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    leader: AtomicBool,
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_buckets[BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.duration_sum_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn applied(&self, kind: &'static str) {
        self.count_object(kind, "applied");
    }

    pub fn pruned(&self, kind: &'static str) {
        self.count_object(kind, "pruned");
    }

    fn count_object(&self, kind: &'static str, action: &'static str) {
        if let Ok(mut objects) = self.objects.lock() {
            *objects.entry((kind, action)).or_default() += 1;
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            &mut out,
            "virtual_env_reconciles_total",
            "Reconciles of VirtualEnvironments.",
            self.reconciles.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "virtual_env_reconcile_errors_total",
            "Reconciles that failed.",
            self.errors.load(Ordering::Relaxed),
        );
        let name = "virtual_env_reconcile_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time a reconcile took.\n# TYPE {name} histogram"
        );
        for (i, bound) in BUCKETS.iter().enumerate() {
            let count = self.duration_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let total = self.duration_buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let sum = self.duration_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {total}\n{name}_sum {sum}\n{name}_count {total}"
        );
        let name = "virtual_env_objects_total";
        let _ = writeln!(
            out,
            "# HELP {name} Objects applied or pruned, by kind.\n# TYPE {name} counter"
        );
        if let Ok(objects) = self.objects.lock() {
            for ((kind, action), count) in objects.iter() {
                let _ = writeln!(out, "{name}{{kind=\"{kind}\",action=\"{action}\"}} {count}");
            }
        }
        let name = "virtual_env_leader";
        let _ = writeln!(
            out,
            "# HELP {name} 1 while this replica holds the leader lease.\n# TYPE {name} gauge\n{name} {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
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
        let text = m.render();
        assert!(text.contains("virtual_env_reconciles_total 2\n"), "{text}");
        assert!(text.contains("virtual_env_reconcile_errors_total 1\n"));
        assert!(text.contains("virtual_env_reconcile_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("virtual_env_reconcile_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("virtual_env_reconcile_duration_seconds_count 2\n"));
        assert!(text
            .contains("virtual_env_objects_total{kind=\"VirtualService\",action=\"applied\"} 2\n"));
        assert!(text
            .contains("virtual_env_objects_total{kind=\"DestinationRule\",action=\"pruned\"} 1\n"));
        assert!(text.contains("virtual_env_leader 0\n"));
    }
}
