//! The virtual-env Proxy-Wasm HTTP filter.
//!
//! Everything but `abi` and `adapter` is pure logic, built and tested natively. `abi` holds
//! the filter's own host calls and `adapter` binds the logic to them and to the SDK's
//! dispatcher; both are compiled only for Wasm.

pub mod baggage;
pub mod correlation;
pub mod decision;
pub mod dry_run;
pub mod edge;
pub mod flow;
#[cfg(test)]
mod fuzz;
pub mod header_pairs;
pub mod host;
pub mod metrics;
pub mod reload;
pub mod routing_trace;
pub mod trace;

#[cfg(target_arch = "wasm32")]
#[cfg_attr(feature = "ladder", allow(dead_code))]
mod abi;
#[cfg(all(target_arch = "wasm32", not(feature = "ladder")))]
mod adapter;
#[cfg(all(target_arch = "wasm32", feature = "ladder"))]
mod ladder;

pub use decision::{Decision, Destination, Edit, Route, Tracing};
pub use flow::{Direction, EnvSource, FilterConfig, Node};
pub use metrics::Metric;
