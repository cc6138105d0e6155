//! The end-to-end harness of virtual-env: real Envoy processes on loopback, driven by real
//! HTTP clients. The test suites live in `tests/tests/`.

pub mod envoy;
pub mod http;
pub mod sidecar;
