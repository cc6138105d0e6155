//! The virtual-env controller: watches `VirtualEnvironment`s, pods and services, and writes
//! the VirtualServices, DestinationRules and WasmPlugin that route each namespace by env.
//!
//! `plan` is pure (no API calls); `reconcile` applies its output to the cluster.

pub mod crd;
pub mod istio;
pub mod plan;
pub mod subset;
