//! The benchmark's cost ladder: `virtual-env-filter` built with its `ladder` feature, whose
//! `src/ladder.rs` holds the rungs. This crate only gives that build its own file name.

#[cfg(target_arch = "wasm32")]
use virtual_env_filter as _;
