//! Edge trust: what a gateway does with an env that arrives from outside the mesh.
//!
//! Inside the mesh every hop trusts the env it is handed: that is what lets a developer
//! pick an env per request. At an ingress gateway the request comes from anyone, so a
//! VirtualEnvironment says what its gateways do with it (the plugin config's `edgeTrust`,
//! present only in the gateways' plugin objects):
//!
//! - `accept` (the original project's behaviour, the default): any valid env is routed.
//!   Anyone who can reach the gateway can reach any env's pods.
//! - `allowList`: only envs matching one of `allow` are routed; an entry is an env name
//!   (that env only) or a prefix ending in `*` (`dev.proj1.*`, `feature-*`). Other envs are
//!   removed from the request, which then takes the default route.
//! - `strip`: every env is removed; the request takes the default route. For gateways that
//!   face the internet, where envs are chosen inside the mesh only.

use serde::{Deserialize, Serialize};

use crate::env::validate_env_name;

/// Entries an allow-list may hold: each request checks them in turn.
pub const MAX_EDGE_ALLOW: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeTrust {
    pub mode: EdgeMode,
    /// For `allowList`: env names, or prefixes ending in `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Whether clients from outside may ask the gateway for a routing trace
    /// (`x-virtual-env-debug: 1`); off, the debug header is removed there and no trace
    /// leaves the gateway. Written only when on (a filter older than the field rejects it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_trace: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EdgeMode {
    Accept,
    AllowList,
    Strip,
}

/// Why an `edgeTrust` is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeTrustError {
    #[error("edgeTrust.allow: {0:?} is neither an env name nor a prefix ending in '*'")]
    Entry(String),
    #[error("edgeTrust.allow: mode allowList needs at least one entry")]
    Empty,
    #[error("edgeTrust.allow: only mode allowList takes entries")]
    NotAllowList,
    #[error("edgeTrust.allow: at most {MAX_EDGE_ALLOW} entries, got {0}")]
    TooMany(usize),
}

impl EdgeTrust {
    pub fn validate(&self, splitter: char) -> Result<(), EdgeTrustError> {
        match (self.mode, self.allow.is_empty()) {
            (EdgeMode::AllowList, true) => return Err(EdgeTrustError::Empty),
            (EdgeMode::Accept | EdgeMode::Strip, false) => {
                return Err(EdgeTrustError::NotAllowList)
            }
            _ => {}
        }
        if self.allow.len() > MAX_EDGE_ALLOW {
            return Err(EdgeTrustError::TooMany(self.allow.len()));
        }
        for entry in &self.allow {
            let ok = match entry.strip_suffix('*') {
                // A prefix: what an env name may start with (any characters of one).
                Some(prefix) => {
                    !prefix.is_empty()
                        && prefix.len() < 63
                        && prefix.as_bytes()[0].is_ascii_alphanumeric()
                        && prefix
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                }
                None => validate_env_name(entry, splitter).is_ok(),
            };
            if !ok {
                return Err(EdgeTrustError::Entry(entry.clone()));
            }
        }
        Ok(())
    }

    /// Whether a gateway routes a request by `env` (already a valid env name).
    pub fn admits(&self, env: &str) -> bool {
        match self.mode {
            EdgeMode::Accept => true,
            EdgeMode::Strip => false,
            EdgeMode::AllowList => self
                .allow
                .iter()
                .any(|entry| match entry.strip_suffix('*') {
                    Some(prefix) => env.starts_with(prefix),
                    None => env == entry,
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: &[&str]) -> EdgeTrust {
        EdgeTrust {
            mode: EdgeMode::AllowList,
            allow: entries.iter().map(|e| e.to_string()).collect(),
            allow_trace: false,
        }
    }

    #[test]
    fn accept_admits_all_strip_admits_none() {
        let accept = EdgeTrust {
            mode: EdgeMode::Accept,
            allow: vec![],
            allow_trace: false,
        };
        let strip = EdgeTrust {
            mode: EdgeMode::Strip,
            allow: vec![],
            allow_trace: false,
        };
        assert!(accept.admits("dev.proj1") && accept.admits("anything"));
        assert!(!strip.admits("dev") && !strip.admits("dev.proj1"));
    }

    #[test]
    fn an_allow_list_admits_names_exactly_and_prefixes() {
        let list = allow(&["dev", "dev.proj1.*", "feature-*"]);
        assert!(list.validate('.').is_ok());
        assert!(list.admits("dev"));
        assert!(!list.admits("dev.proj2"), "a name admits only itself");
        assert!(
            !list.admits("dev.proj1"),
            "'dev.proj1.*' is its descendants"
        );
        assert!(list.admits("dev.proj1.alice"));
        assert!(list.admits("feature-42"));
        assert!(!list.admits("devx"));
    }

    #[test]
    fn entries_are_env_names_or_prefixes() {
        for bad in ["", "*", "-x*", "dev..x", "a b", "dev/x*", "DEV.proj1!"] {
            assert!(
                matches!(allow(&[bad]).validate('.'), Err(EdgeTrustError::Entry(_))),
                "{bad:?}"
            );
        }
        assert_eq!(allow(&[]).validate('.'), Err(EdgeTrustError::Empty));
        let strip_with_entries = EdgeTrust {
            mode: EdgeMode::Strip,
            allow: vec!["dev".into()],
            allow_trace: false,
        };
        assert_eq!(
            strip_with_entries.validate('.'),
            Err(EdgeTrustError::NotAllowList)
        );
        let many: Vec<String> = (0..=MAX_EDGE_ALLOW).map(|i| format!("e{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            allow(&many).validate('.'),
            Err(EdgeTrustError::TooMany(MAX_EDGE_ALLOW + 1))
        );
    }

    #[test]
    fn the_modes_are_spelled_in_camel_case() {
        let json = serde_json::to_string(&allow(&["dev"])).unwrap();
        assert_eq!(json, r#"{"mode":"allowList","allow":["dev"]}"#);
        let strip: EdgeTrust = serde_json::from_str(r#"{"mode":"strip"}"#).unwrap();
        assert_eq!(strip.mode, EdgeMode::Strip);
    }
}
