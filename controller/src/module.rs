//! The filter module: the one embedded in this binary at build time (see `build.rs`), and
//! the store the HTTP server serves modules from, which also holds modules of other builds
//! fetched from peer replicas (see [`crate::peers`]).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use sha2::{Digest, Sha256};

static FILTER_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/filter.wasm"));

/// Modules of other builds kept at once: the previous and the next release, with room for
/// a rollback during an upgrade. Each is a few hundred KB.
const FETCHED_MODULES: usize = 4;

/// A `.wasm` and its SHA-256, which the WasmPlugin pins.
#[derive(Debug, Clone)]
pub struct FilterModule {
    pub bytes: Bytes,
    pub sha256: String,
}

impl FilterModule {
    /// The module embedded in this binary; `None` when it was built without one.
    pub fn embedded() -> Option<Self> {
        (!FILTER_WASM.is_empty()).then(|| Self::new(Bytes::from_static(FILTER_WASM)))
    }

    pub fn new(bytes: Bytes) -> Self {
        let sha256 = sha256_hex(&bytes);
        Self { bytes, sha256 }
    }

    /// The path it is served under: the digest in the name makes every build a new URL,
    /// so a sidecar's module cache can never hand out a stale one.
    pub fn path(&self) -> String {
        path_of(&self.sha256)
    }
}

pub fn path_of(sha256: &str) -> String {
    format!("/filter/{sha256}.wasm")
}

/// The digest named by a module path (`/filter/<sha256>.wasm`), if it is a well-formed one
/// (64 lower-case hex digits): anything else is never looked up, nor asked of a peer.
pub fn digest_in(path: &str) -> Option<&str> {
    let digest = path.strip_prefix("/filter/")?.strip_suffix(".wasm")?;
    (digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(digest)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The modules this replica can serve: its own, and the last few fetched from peers.
#[derive(Debug, Default)]
pub struct ModuleStore {
    own: Option<FilterModule>,
    fetched: Mutex<VecDeque<FilterModule>>,
}

impl ModuleStore {
    pub fn new(own: Option<FilterModule>) -> Self {
        Self {
            own,
            fetched: Mutex::default(),
        }
    }

    pub fn own(&self) -> Option<&FilterModule> {
        self.own.as_ref()
    }

    /// The module with this digest, if this replica holds it.
    pub fn get(&self, sha256: &str) -> Option<Bytes> {
        if let Some(own) = self.own.as_ref().filter(|m| m.sha256 == sha256) {
            return Some(own.bytes.clone());
        }
        let fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        fetched
            .iter()
            .find(|m| m.sha256 == sha256)
            .map(|m| m.bytes.clone())
    }

    /// Keeps a module fetched from a peer, dropping the oldest beyond [`FETCHED_MODULES`].
    /// The digest is the module's own, computed here, never one a peer claimed.
    pub fn keep(&self, module: FilterModule) {
        let mut fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        if fetched.iter().any(|m| m.sha256 == module.sha256) {
            return;
        }
        if fetched.len() == FETCHED_MODULES {
            fetched.pop_front();
        }
        fetched.push_back(module);
    }
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
        assert_eq!(digest_in(&module.path()), Some(module.sha256.as_str()));
    }

    #[test]
    fn only_well_formed_digests_are_looked_up() {
        let good = "0123456789abcdef".repeat(4);
        assert_eq!(digest_in(&path_of(&good)), Some(good.as_str()));
        for path in [
            "/filter/ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789.wasm".into(),
            path_of(&"a".repeat(63)),
            path_of(&"a".repeat(65)),
            path_of(&"g".repeat(64)),
            format!("/filter/{good}.wasm/x"),
            format!("/other/{good}.wasm"),
            "/filter/../../etc/passwd".into(),
        ] {
            assert_eq!(digest_in(&path), None, "{path}");
        }
    }

    #[test]
    fn the_store_keeps_its_own_module_and_the_last_fetched_ones() {
        let own = FilterModule::new(Bytes::from_static(b"own"));
        let store = ModuleStore::new(Some(own.clone()));
        let fetched: Vec<_> = (0..=FETCHED_MODULES)
            .map(|i| FilterModule::new(Bytes::from(format!("module {i}"))))
            .collect();
        for module in &fetched {
            store.keep(module.clone());
            store.keep(module.clone()); // kept once
        }
        assert_eq!(store.get(&own.sha256).as_deref(), Some(&b"own"[..]));
        assert_eq!(store.get(&fetched[0].sha256), None, "the oldest is dropped");
        for module in &fetched[1..] {
            assert_eq!(store.get(&module.sha256), Some(module.bytes.clone()));
        }
    }
}
