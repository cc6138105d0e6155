//! Helpers shared by the integration tests. Each test binary compiles this module and
//! uses only part of it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Every YAML document of `text`, as JSON values (empty documents left out).
pub fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

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

/// A structural-schema check, as the API server validates a custom resource: types, enums,
/// `pattern`, `minLength`/`maxLength`, `minItems`/`maxItems`, `min/maxProperties`, required
/// fields (also those a `oneOf` branch requires), the `x-kubernetes-validations` CEL rules
/// (see [`cel_rule_holds`]), and no field the schema does not declare (what `kubectl apply
/// --validate=strict`, kubectl's default, rejects).
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
    check_bounds(schema, value, path, errors);
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let text = rule["rule"].as_str().unwrap_or_default();
        match cel_rule_holds(text, value) {
            Ok(true) => {}
            Ok(false) => errors.push(format!(
                "{path}: fails the rule {text:?}: {}",
                rule["message"].as_str().unwrap_or("")
            )),
            Err(why) => errors.push(format!(
                "{path}: the rule {text:?} cannot be checked: {why}"
            )),
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

/// `pattern`, lengths and counts, as the API server checks them.
fn check_bounds(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let limit = |key: &str| schema[key].as_u64().map(|n| n as usize);
    if let Some(text) = value.as_str() {
        if let Some(pattern) = schema["pattern"].as_str() {
            match regex::Regex::new(pattern) {
                Ok(re) if !re.is_match(text) => {
                    errors.push(format!("{path}: {text:?} does not match {pattern:?}"))
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("{path}: the pattern {pattern:?} is invalid: {e}")),
            }
        }
        let chars = text.chars().count();
        if limit("maxLength").is_some_and(|max| chars > max) {
            errors.push(format!(
                "{path}: longer than {} characters",
                schema["maxLength"]
            ));
        }
        if limit("minLength").is_some_and(|min| chars < min) {
            errors.push(format!(
                "{path}: shorter than {} characters",
                schema["minLength"]
            ));
        }
    }
    if let Some(items) = value.as_array() {
        if limit("maxItems").is_some_and(|max| items.len() > max) {
            errors.push(format!("{path}: more than {} items", schema["maxItems"]));
        }
        if limit("minItems").is_some_and(|min| items.len() < min) {
            errors.push(format!("{path}: fewer than {} items", schema["minItems"]));
        }
    }
    if let Some(map) = value.as_object() {
        if limit("maxProperties").is_some_and(|max| map.len() > max) {
            errors.push(format!(
                "{path}: more than {} properties",
                schema["maxProperties"]
            ));
        }
        if limit("minProperties").is_some_and(|min| map.len() < min) {
            errors.push(format!(
                "{path}: fewer than {} properties",
                schema["minProperties"]
            ));
        }
    }
}

/// Evaluates one `x-kubernetes-validations` rule on `value` (as `self`) with a CEL
/// interpreter and the Kubernetes library functions the CRDs at hand use (`isURL`, `url`,
/// `getScheme`; `duration`, `has`, `all`, `size` are CEL's own). A rule that cannot be
/// evaluated is an error, not a pass: the check never claims what it did not check.
pub fn cel_rule_holds(rule: &str, value: &Value) -> Result<bool, String> {
    use cel_interpreter::extractors::This;
    use cel_interpreter::{Context, Program, Value as Cel};
    use std::sync::Arc;

    let program = Program::compile(rule).map_err(|e| e.to_string())?;
    let mut context = Context::default();
    context
        .add_variable("self", value.clone())
        .map_err(|e| e.to_string())?;
    // Kubernetes' isURL: an absolute URL with a scheme (Go's url.Parse, roughly).
    context.add_function("isURL", |s: Arc<String>| {
        s.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !rest.is_empty()
                && !rest.contains(char::is_whitespace)
        })
    });
    context.add_function("url", |s: Arc<String>| s);
    context.add_function("getScheme", |This(s): This<Arc<String>>| {
        s.split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .unwrap_or_default()
    });
    match program.execute(&context).map_err(|e| e.to_string())? {
        Cel::Bool(holds) => Ok(holds),
        other => Err(format!("not a boolean: {other:?}")),
    }
}
