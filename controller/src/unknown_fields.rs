//! Fields a VirtualEnvironment does not have, said where they are written. The API
//! server prunes unknown fields (and `kubectl apply` warns of them, with server-side field
//! validation); offline, `render` and `explain` read the YAML themselves, and a typo
//! (`envLable:`, `autoInjct:`) would silently leave the default in force. Each unknown field
//! is a warning with its file and line and, where a field of the same object is close, the
//! name meant.
//!
//! Pure: no I/O.

use serde_json::Value;

/// A field of `value` that its `schema` (OpenAPI v3, as a CRD holds it) does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// `spec.envHeader.nmae`, `spec.envHeader.aliases[1].nmae`.
    pub path: String,
    /// The field of the same object whose name is closest, if close.
    pub meant: Option<String>,
}

/// Every field of a VirtualEnvironment's `spec` that the CRD's `schema` (its
/// `openAPIV3Schema`) does not have.
pub fn unknown_in_spec(schema: &Value, ve: &Value) -> Vec<UnknownField> {
    unknown_fields(&schema["properties"]["spec"], &ve["spec"], "spec")
}

/// Every field of `value` (under `path`) that `schema` does not have.
pub fn unknown_fields(schema: &Value, value: &Value, path: &str) -> Vec<UnknownField> {
    let mut out = Vec::new();
    walk(schema, value, path, &mut out);
    out
}

fn walk(schema: &Value, value: &Value, path: &str, out: &mut Vec<UnknownField>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match value {
        Value::Object(fields) => {
            let Some(properties) = schema["properties"].as_object() else {
                // A map (`additionalProperties`) or an open object: nothing is unknown.
                if let Some(items) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                    for (key, v) in fields {
                        walk(items, v, &format!("{path}.{key}"), out);
                    }
                }
                return;
            };
            for (key, v) in fields {
                let at = format!("{path}.{key}");
                match properties.get(key) {
                    Some(sub) => walk(sub, v, &at, out),
                    None => out.push(UnknownField {
                        path: at,
                        meant: closest(key, properties.keys()),
                    }),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk(item, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The names among `known` closest to `key` (case aside, at most two edits), as a
/// user reads them (`a`, `a or b`, `a, b or c`); `None` when none is close.
pub fn closest<'k>(key: &str, known: impl Iterator<Item = &'k String>) -> Option<String> {
    let key = key.to_ascii_lowercase();
    let near: Vec<(usize, &String)> = known
        .map(|k| (edits(&key, &k.to_ascii_lowercase()), k))
        .filter(|(d, _)| *d <= 2)
        .collect();
    let best = near.iter().map(|(d, _)| *d).min()?;
    let mut names: Vec<&str> = (near.iter())
        .filter(|(d, _)| *d == best)
        .map(|(_, k)| k.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    Some(match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => return None,
    })
}

/// Levenshtein distance (with adjacent swaps as one edit).
fn edits(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// The 1-based line where the field at `path` (`spec.envHeader.nmae`) is written in
/// `text`, in the document that starts at line `from` (0-based): each key of the path
/// found in turn, inside its parent's block (deeper than the parent's key, before the
/// block ends), or in the parent's inline mapping (`{nmae: X}`) on its line; comments
/// are not keys.
pub fn line_of(text: &str, from: usize, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let keys: Vec<&str> = path
        .split('.')
        .map(|k| k.split('[').next().unwrap_or(k))
        .collect();
    let (mut at, mut parent_indent, mut line) = (from, None::<usize>, None::<usize>);
    for key in keys {
        // In the parent's inline mapping, on its own line.
        if let Some(n) = line.filter(|&n| inline_has(lines[n], key)) {
            return Some(n + 1);
        }
        let mut hit = None;
        for (n, text) in lines.iter().enumerate().skip(at) {
            if n > from && text.starts_with("---") {
                break;
            }
            let trimmed = text.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = text.len() - trimmed.len();
            if parent_indent.is_some_and(|p| indent <= p && !trimmed.starts_with("- ")) {
                break;
            }
            if key_of(trimmed) == Some(key) {
                hit = Some((n, indent));
                break;
            }
        }
        let (n, indent) = hit?;
        (at, parent_indent, line) = (n + 1, Some(indent), Some(n));
    }
    line.map(|n| n + 1)
}

/// The key of a `key: value` line (after list markers, without quotes).
fn key_of(line: &str) -> Option<&str> {
    let line = line.trim_start_matches("- ").trim_start();
    let (key, _) = line.split_once(':')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty() && !key.contains(' ')).then_some(key)
}

/// Whether `line` holds an inline mapping (`\u{7b}...`) with `key`.
fn inline_has(line: &str, key: &str) -> bool {
    line.split_once('\u{7b}').is_some_and(|(_, inline)| {
        inline
            .split([',', '\u{7b}'])
            .filter_map(|part| part.split_once(':'))
            .any(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\'') == key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn schema() -> Value {
        let crd = serde_json::to_value(crate::crd::VirtualEnvironment::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    #[test]
    fn typos_are_found_with_the_name_meant() {
        let ve: Value = serde_yaml::from_str(
            "apiVersion: env.alibaba.com/v1alpha1\nkind: VirtualEnvironment\nmetadata: {name: x, labels: {a: b}}\nspec:\n  envHeader: {nmae: X-Env, autoInjct: true, aliases: [x-env, {name: cookie, patern: 'env=(@)'}]}\n  envLable: {name: env}\n  somethingElse: 1\n",
        )
        .unwrap();
        let found = unknown_in_spec(&schema(), &ve);
        let said: Vec<(String, Option<String>)> =
            found.into_iter().map(|u| (u.path, u.meant)).collect();
        assert_eq!(
            said,
            [
                (
                    "spec.envHeader.autoInjct".to_owned(),
                    Some("autoInject".to_owned())
                ),
                ("spec.envHeader.nmae".to_owned(), Some("name".to_owned())),
                ("spec.envLable".to_owned(), Some("envLabel".to_owned())),
                ("spec.somethingElse".to_owned(), None),
            ]
        );
    }

    #[test]
    fn the_seed_and_the_status_have_none() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/snapshots/seed/virtualenvironment.yaml"),
        )
        .unwrap();
        let mut ve: Value = serde_yaml::from_str(&text).unwrap();
        ve["status"] =
            serde_json::json!({"routeHeader": "x-virtual-env-route-abc", "skipped": ["a: b"]});
        assert_eq!(unknown_in_spec(&schema(), &ve), []);
    }

    /// An alias object with a field of neither form is not a whole-value alias of its
    /// name: it is reported (the schema keeps it, so the cluster sees it too).
    #[test]
    fn an_alias_with_a_misspelt_field_is_invalid() {
        let alias: crate::crd::HeaderAlias =
            serde_json::from_value(serde_json::json!({"name": "cookie", "patern": "env=(@)"}))
                .unwrap();
        assert!(
            matches!(alias, crate::crd::HeaderAlias::Invalid(_)),
            "{alias:?}"
        );
        let alias: crate::crd::HeaderAlias = serde_json::from_value(
            serde_json::json!({"name": "cookie", "pattern": "env=(@)", "placeholder": "(@)"}),
        )
        .unwrap();
        assert!(matches!(alias, crate::crd::HeaderAlias::Pattern { .. }));
    }

    #[test]
    fn a_field_is_found_on_its_line() {
        let text =
            "kind: VirtualEnvironment\nspec:\n  envHeader:\n    nmae: X\n  envLable: {name: e}\n";
        assert_eq!(line_of(text, 0, "spec.envHeader.nmae"), Some(4));
        assert_eq!(line_of(text, 0, "spec.envLable"), Some(5));
        assert_eq!(line_of(text, 0, "spec.nothere"), None);
    }
}
