//! The virtual-env controller: watches `VirtualEnvironment`s, pods and services, and writes
//! the VirtualServices, DestinationRules and WasmPlugins that route each namespace by env.
//!
//! `plan` is pure (no API calls) and shared by the reconciler and the offline commands;
//! `reconcile` applies its output to the cluster.

pub mod caches;
pub mod connection;
pub mod crd;
pub mod edge_guard;
pub mod events;
pub mod existing;
pub mod extension;
pub mod gamma;
pub mod gateway;
pub mod gateway_admission;
pub mod gateway_api_gateway;
pub mod gateway_plugins;
pub mod gateway_policy;
pub mod indexed;
pub mod istio;
pub mod leader;
pub mod metrics;
pub mod module;
pub mod objects;
pub mod offline;
pub mod own_writes;
pub mod peer_namespaces;
pub mod peers;
pub mod plan;
pub mod rbac;
pub mod reconcile;
pub mod reconcile_gateway_policy;
pub mod routable;
pub mod runtime;
pub mod server;
pub mod skip;
pub mod snapshot;
pub mod spec_errors;
pub mod status_view;
pub mod subset;
pub mod sweep;
pub mod transition;
pub mod unknown_fields;
pub mod waypoint;
pub mod workload;
