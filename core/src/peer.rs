//! Calls into other namespaces: the plugin config's `peers` section.
//!
//! Every namespace with a VirtualEnvironment has its own route header (a random suffix per
//! VirtualEnvironment), its own default subset and its own services table, and its
//! VirtualServices match only its own route header. So a caller in namespace A that calls
//! `svc.b` must choose the subset by B's table and set *B's* route header. A's plugin
//! config carries, per other namespace with a VirtualEnvironment, exactly that:
//!
//! ```json
//! "peers": {
//!   "payments": {
//!     "routeHeader": "x-virtual-env-route-k3v9q2",
//!     "defaultSubset": "dev",
//!     "services": {"ledger": ["dev", "dev.proj1"]}
//!   }
//! }
//! ```
//!
//! Services are keyed by name (the namespace is the key above). A service routed only in
//! the default subset is left out by the controller: the callee's default route sends
//! every request there anyway, so the entry would change nothing. In compact form
//! ([`crate::PluginConfig::compacted`]) a peer's `serviceEnvs` index the config's one
//! `envNames`, shared with the own namespace's table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The routing of one other namespace, as its own plugin config has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerNamespace {
    /// The route header that namespace's VirtualServices match.
    pub route_header: String,
    /// That namespace's default subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_subset: Option<String>,
    /// Service name -> envs in which it has ready pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Vec<String>>,
    /// Compact form: service name -> indices into the config's `envNames`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_envs: BTreeMap<String, Vec<u32>>,
}
