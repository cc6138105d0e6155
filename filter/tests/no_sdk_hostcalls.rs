//! The filter makes no host call through `proxy_wasm::hostcalls` or the SDK's convenience
//! methods: in proxy-wasm 0.2.5 they panic on an unexpected status, and the header getters
//! unwrap UTF-8 of header values, so one hostile request would kill the worker's VM.
//! clippy's `disallowed-methods` (clippy.toml) says the same for the wasm32 build; this
//! test also runs in a plain `cargo test`.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "hostcalls::",
    "proxy_wasm::set_log_level",
    "get_http_request_header",
    "set_http_request_header",
    "get_plugin_configuration",
    "self.get_property",
    "self.get_shared_data",
    "self.set_shared_data",
];

#[test]
fn the_filter_calls_the_host_only_through_its_own_abi_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in walk(&src) {
        let text = fs::read_to_string(&entry).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for bad in FORBIDDEN {
                assert!(
                    !code.contains(bad),
                    "{}:{}: `{bad}` is not panic-safe; use abi.rs",
                    entry.display(),
                    n + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 10, "checked only {checked} files");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}
