//! The virtual-env Proxy-Wasm HTTP filter.
//!
//! Everything but `adapter` is pure logic, built and tested natively; `adapter` binds it to
//! proxy-wasm host calls and is compiled only for Wasm.

pub mod baggage;
pub mod correlation;
pub mod flow;
pub mod host;
pub mod metrics;
pub mod reload;
pub mod trace;

#[cfg(target_arch = "wasm32")]
mod adapter;

pub use flow::{Direction, EnvSource, FilterConfig, Node};
pub use metrics::Metric;
