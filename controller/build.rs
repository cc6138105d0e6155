//! Embeds the filter module the controller serves, so one controller image ships the
//! `.wasm` it was built with. `make build` builds the module first; without it the
//! controller still builds (for `cargo test`), serves nothing, and needs `--wasm-url`.

use std::path::PathBuf;
use std::{env, fs};

fn main() {
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV_WASM");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let wasm = env::var_os("VIRTUAL_ENV_WASM").map_or_else(
        || manifest.join("../target/wasm32-wasip1/release/virtual_env_filter.wasm"),
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", wasm.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("filter.wasm");
    let bytes = fs::read(&wasm).unwrap_or_else(|_| {
        println!(
            "cargo:warning=no filter module at {}: run `make build` to embed it",
            wasm.display()
        );
        Vec::new()
    });
    if let Err(e) = fs::write(&out, bytes) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
    }
}
