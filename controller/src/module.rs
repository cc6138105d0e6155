//! The filter module embedded in this binary at build time (see `build.rs`).

use sha2::{Digest, Sha256};

static FILTER_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/filter.wasm"));

/// The embedded `.wasm` and its SHA-256, which the WasmPlugin pins.
#[derive(Debug, Clone)]
pub struct FilterModule {
    pub bytes: &'static [u8],
    pub sha256: String,
}

impl FilterModule {
    /// `None` when the binary was built without the module.
    pub fn embedded() -> Option<Self> {
        (!FILTER_WASM.is_empty()).then(|| Self {
            bytes: FILTER_WASM,
            sha256: sha256_hex(FILTER_WASM),
        })
    }

    /// The path it is served under: the digest in the name makes every build a new URL,
    /// so a sidecar's module cache can never hand out a stale one.
    pub fn path(&self) -> String {
        format!("/filter/{}.wasm", self.sha256)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_embedded_module_is_a_wasm_binary() {
        // `make test` builds the filter before the controller, so it must be embedded.
        let module = FilterModule::embedded().expect("filter module embedded: run `make build`");
        assert_eq!(&module.bytes[..4], b"\0asm");
        assert!(module.path().starts_with("/filter/"));
    }
}
