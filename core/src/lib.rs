//! What the virtual-env filter and controller must agree on: the plugin config contract,
//! env names and their hierarchy, service names, and the fallback rule.
//!
//! Nothing here touches proxy-wasm or Kubernetes, so it builds natively and for wasm32.

pub mod config;
pub mod edge;
pub mod env;
#[cfg(test)]
mod fuzz;
pub mod hash;
pub mod pattern;
pub mod peer;
pub mod routing;
pub mod service;

pub use config::{ConfigError, Direction, EdgeCarriers, HeaderPattern, PluginConfig};
pub use edge::{EdgeMode, EdgeTrust};
pub use env::{lineage, validate_env_name, EnvNameError};
pub use peer::PeerNamespace;
pub use routing::{Choice, RouteTable, ServiceEnvs, Target};
pub use service::{lowercase, service_fqdn, service_key_of_fqdn, ServiceHost};
