//! The end-to-end harness of virtual-env: real Envoy processes on loopback, driven by real
//! HTTP clients. The test suites live in `tests/tests/`.
//!
//! - [`envoy`]: start, await and stop Envoy processes; read their stats.
//! - [`sidecar`]: one Envoy with the filter, to test the filter alone.
//! - [`raw`]: a raw HTTP/1.1 client, for the bytes a hostile client sends.
//! - [`topology`], [`mesh`], [`app`]: a local mesh of pods (application + sidecar) routed
//!   by the controller's plan; `make demo` and the mesh suite run on it.
//! - [`demo`]: the demo's requests and its call-chain table.

pub mod app;
pub mod bench;
pub mod demo;
pub mod envoy;
pub mod fleet;
pub mod http;
pub mod istiod;
pub mod manifests;
pub mod mesh;
pub mod raw;
pub mod sidecar;
pub mod smuggling;
pub mod topology;
