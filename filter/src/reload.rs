//! Taking a new plugin config, keeping the last good one when it is bad.
//!
//! A config update (Istio's ECDS push, or a watched file locally) gives the filter a new
//! root context, possibly in a new VM: whatever the old context held is gone. So the last
//! good config is kept in shared data, which lives as long as the proxy, and a rejected
//! config falls back to it. When no good config was ever seen, the filter passes requests
//! untouched rather than taking traffic down.

use virtual_env_core::hash::fnv1a;
use virtual_env_core::{ConfigError, PluginConfig};

use crate::host::Host;
use crate::metrics::Metric;

/// The outcome of [`reload`].
#[derive(Debug)]
pub struct Reloaded {
    /// The config in force now: the new one, the last good one, or none (pass through).
    pub active: Option<PluginConfig>,
    /// Why the new config was rejected.
    pub rejected: Option<ConfigError>,
}

fn last_good_key(plugin: &str) -> String {
    format!("virtual-env.config.last-good.{plugin}")
}

fn seen_key(plugin: &str) -> String {
    format!("virtual-env.config.seen.{plugin}")
}

/// Parses `bytes` (empty means all defaults) as the config of plugin `plugin`.
pub fn reload(host: &mut impl Host, plugin: &str, bytes: &[u8]) -> Reloaded {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let parsed = PluginConfig::from_json(bytes);
    count_once(
        host,
        plugin,
        bytes,
        if parsed.is_ok() {
            Metric::ConfigLoaded
        } else {
            Metric::ConfigRejected
        },
    );
    match parsed {
        Ok(config) => {
            host.set_shared_data(&last_good_key(plugin), bytes, None);
            Reloaded {
                active: Some(config),
                rejected: None,
            }
        }
        Err(error) => {
            let active = host
                .shared_data(&last_good_key(plugin))
                .and_then(|(last, _)| PluginConfig::from_json(&last).ok());
            Reloaded {
                active,
                rejected: Some(error),
            }
        }
    }
}

/// Every worker VM configures itself from the same bytes; the stat should say how many
/// configs arrived, not how many VMs. The first VM to mark this config as seen counts it.
fn count_once(host: &mut impl Host, plugin: &str, bytes: &[u8], metric: Metric) {
    let key = seen_key(plugin);
    let digest = format!("{:016x}", fnv1a(bytes));
    let (seen, cas) = match host.shared_data(&key) {
        Some((seen, cas)) => (Some(seen), Some(cas)),
        None => (None, None),
    };
    if seen.as_deref() == Some(digest.as_bytes()) {
        return;
    }
    if host.set_shared_data(&key, digest.as_bytes(), cas) {
        host.increment(metric);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;

    const GOOD: &[u8] = br#"{"defaultSubset": "dev"}"#;
    const OTHER_GOOD: &[u8] = br#"{"defaultSubset": "test"}"#;
    const BAD: &[u8] = br#"{"defaultSubset": "dev..x"}"#;

    #[test]
    fn a_good_config_is_taken() {
        let mut host = MockHost::new();
        let r = reload(&mut host, "p", GOOD);
        assert_eq!(r.active.unwrap().default_subset.as_deref(), Some("dev"));
        assert!(r.rejected.is_none());
        assert_eq!(host.count(Metric::ConfigLoaded), 1);
    }

    #[test]
    fn empty_config_means_defaults() {
        let mut host = MockHost::new();
        let r = reload(&mut host, "p", b"");
        assert_eq!(r.active, Some(PluginConfig::default()));
    }

    #[test]
    fn a_bad_config_keeps_the_last_good_one_even_in_a_new_vm() {
        let mut host = MockHost::new();
        reload(&mut host, "p", GOOD);
        // A new VM: nothing in its memory, only the proxy's shared data.
        let mut new_vm = host.next_request();
        let r = reload(&mut new_vm, "p", BAD);
        assert_eq!(r.active.unwrap().default_subset.as_deref(), Some("dev"));
        let msg = r.rejected.unwrap().to_string();
        assert!(msg.contains("defaultSubset"), "{msg}");
        assert_eq!(host.count(Metric::ConfigRejected), 1);
    }

    #[test]
    fn a_bad_first_config_passes_traffic_through() {
        let mut host = MockHost::new();
        let r = reload(&mut host, "p", BAD);
        assert!(r.active.is_none());
        assert!(r.rejected.is_some());
        assert_eq!(host.count(Metric::ConfigRejected), 1);
    }

    #[test]
    fn plugins_keep_their_own_last_good_config() {
        let mut host = MockHost::new();
        reload(&mut host, "a", GOOD);
        let r = reload(&mut host, "b", BAD);
        assert!(r.active.is_none());
    }

    #[test]
    fn each_config_counts_once_whatever_the_number_of_workers() {
        let mut host = MockHost::new();
        for _worker in 0..4 {
            reload(&mut host, "p", GOOD);
        }
        assert_eq!(host.count(Metric::ConfigLoaded), 1);
        for _worker in 0..4 {
            reload(&mut host, "p", BAD);
        }
        assert_eq!(host.count(Metric::ConfigRejected), 1);
        // Back to an earlier config is a new arrival.
        reload(&mut host, "p", GOOD);
        reload(&mut host, "p", OTHER_GOOD);
        assert_eq!(host.count(Metric::ConfigLoaded), 3);
    }
}
