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

/// The name among `known` closest to `key` (case aside, at most two edits), if any.
pub fn closest<'k>(key: &str, known: impl Iterator<Item = &'k String>) -> Option<String> {
    let key = key.to_ascii_lowercase();
    known
        .map(|k| (edits(&key, &k.to_ascii_lowercase()), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
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

/// The 1-based line where the field at the end of `path` is written in `text`, looking
/// from line `from` (the object's document): the first line after it that names the key.
pub fn line_of(text: &str, from: usize, path: &str) -> Option<usize> {
    let key = path.rsplit('.').next()?;
    let key = key.split('[').next()?;
    text.lines()
        .enumerate()
        .skip(from)
        .find(|(_, line)| {
            let line = line.trim_start().trim_start_matches("- ").trim_start();
            // (`\u{7b}`: an inline mapping opens there.)
            let line = line.trim_start_matches('\u{7b}').trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
                || line.contains(&format!(" {key}:"))
                || line.contains(&format!("{}{key}:", '\u{7b}'))
        })
        .map(|(i, _)| i + 1)
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
