//! Helpers shared by the integration tests. Each test binary compiles this module and
//! uses only part of it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the `virtual-env` binary in the repository root: its stdout (it must succeed).
pub fn virtual_env(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_virtual-env"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virtual-env {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A structural-schema check: types, enums, string patterns of the simple kind, required
/// fields (also those a `oneOf` branch requires), and no field the schema does not declare
/// (what `kubectl apply --validate=strict`, kubectl's default, rejects).
pub fn check_schema(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    if value.is_null() {
        if schema["nullable"] != true {
            errors.push(format!("{path}: null"));
        }
        return;
    }
    let ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("boolean") => value.is_boolean(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{path}: expected {}, got {value}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    // `oneOf` of `required` sets (protobuf oneofs: TrafficExtension's wasm / lua): at most
    // one holds, and exactly one unless a `not: anyOf` branch admits none.
    if let (Some(branches), Some(obj)) = (schema["oneOf"].as_array(), value.as_object()) {
        let holds = |branch: &Value| {
            branch["required"].as_array().is_some_and(|r| {
                r.iter()
                    .all(|k| obj.contains_key(k.as_str().unwrap_or_default()))
            })
        };
        let with_required = branches.iter().filter(|b| b["required"].is_array()).count();
        let held = branches.iter().filter(|b| holds(b)).count();
        let none_allowed = branches.iter().any(|b| b["not"].is_object());
        if with_required > 0 && (held > 1 || (held == 0 && !none_allowed)) {
            errors.push(format!("{path}: {held} of the oneOf branches hold"));
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for (key, v) in obj {
            match props.get(key) {
                Some(s) => check_schema(s, v, &format!("{path}.{key}"), errors),
                None => errors.push(format!("{path}.{key}: not in the schema")),
            }
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(required.as_str().unwrap_or_default()) {
                errors.push(format!("{path}.{required}: required"));
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            check_schema(items, v, &format!("{path}[{i}]"), errors);
        }
    }
}
