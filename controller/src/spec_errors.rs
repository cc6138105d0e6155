//! A VirtualEnvironment's mistakes said where they are: the plugin config's validation
//! names its own fields (`correlationSlots`, `headerPatterns.cookie`), which a user never
//! wrote; this names the spec's (`spec.traceCorrelation.slots`,
//! `spec.envHeader.aliases[0]`), so that the status, the log and `render` point at the
//! line to fix.
//!
//! Pure: no API calls.

use virtual_env_core::ConfigError;

use crate::crd::{HeaderAlias, VirtualEnvironmentSpec};

/// `error` (of the plugin config `spec` makes) as the spec's path and what is wrong there.
pub fn at_spec_path(spec: &VirtualEnvironmentSpec, error: &ConfigError) -> String {
    let text = error.to_string();
    let Some(path) = spec_path(spec, error) else {
        return text;
    };
    // Every message starts with the plugin config's field and `: `.
    let what = text
        .split_once(": ")
        .map_or(text.as_str(), |(_, what)| what);
    format!("{path}: {what}")
}

/// The first alias entry of neither form, at its path, with the field meant for a
/// misspelt one (`{name: cookie, patern: ...}`).
pub fn invalid_alias(spec: &VirtualEnvironmentSpec) -> Option<String> {
    let (i, entry) = (spec.env_header.aliases.iter().enumerate()).find_map(|(i, a)| match a {
        HeaderAlias::Invalid(entry) => Some((i, entry)),
        _ => None,
    })?;
    let known = ["name", "pattern", "placeholder"].map(String::from);
    let meant: Vec<String> = (entry.as_object().into_iter().flatten())
        .filter(|(k, _)| !known.contains(k))
        .map(
            |(k, _)| match crate::unknown_fields::closest(k, known.iter()) {
                Some(m) => format!("{k} is not a field (did you mean {m}?)"),
                None => format!("{k} is not a field"),
            },
        )
        .collect();
    let why = match meant.is_empty() {
        true => String::new(),
        false => format!(": {}", meant.join(", ")),
    };
    Some(format!(
        "spec.envHeader.aliases[{i}]: {entry} is neither a header name nor {{name, pattern, placeholder}}{why}"
    ))
}

fn spec_path(spec: &VirtualEnvironmentSpec, error: &ConfigError) -> Option<String> {
    let alias = |name: &str| {
        let i = spec.env_header.aliases.iter().position(|a| match a {
            HeaderAlias::Name(n) | HeaderAlias::Pattern { name: n, .. } => n == name,
            HeaderAlias::Invalid(_) => false,
        });
        Some(match i {
            Some(i) => format!("spec.envHeader.aliases[{i}]"),
            None => "spec.envHeader.aliases".to_owned(),
        })
    };
    let trace_header = |name: &str| {
        let i = spec
            .trace_correlation
            .headers
            .iter()
            .position(|h| h == name);
        Some(match i {
            Some(i) => format!("spec.traceCorrelation.headers[{i}]"),
            None => "spec.traceCorrelation.headers".to_owned(),
        })
    };
    let header = |field: &str, value: &str| match field {
        "envHeader" => Some("spec.envHeader.name".to_owned()),
        "routeHeader" => Some("spec.routeHeader.name".to_owned()),
        "headerAliases" | "headerPatterns" => alias(value),
        "traceHeaders" => trace_header(value),
        "baggageKey" => Some("spec.envHeader.baggageKey".to_owned()),
        _ => None,
    };
    match error {
        ConfigError::Splitter(_) => Some("spec.envLabel.splitter".to_owned()),
        ConfigError::LabelKey(_) => Some("spec.envLabel.name".to_owned()),
        ConfigError::HeaderName { field, value }
        | ConfigError::HeaderReused { field, value, .. } => header(field, value),
        ConfigError::Pattern { name, .. } => alias(name),
        ConfigError::EnvName { field, .. } if field == "defaultSubset" => {
            Some("spec.envLabel.defaultSubset".to_owned())
        }
        ConfigError::OutOfRange { field, .. } => match *field {
            "correlationSlots" => Some("spec.traceCorrelation.slots".to_owned()),
            "correlationTtlSeconds" => Some("spec.traceCorrelation.ttlSeconds".to_owned()),
            _ => None,
        },
        ConfigError::TooMany { field, .. } => match *field {
            "headerAliases" | "headerPatterns" => Some("spec.envHeader.aliases".to_owned()),
            "traceHeaders" => Some("spec.traceCorrelation.headers".to_owned()),
            _ => None,
        },
        ConfigError::EdgeTrust(_) => Some("spec.edgeTrust".to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(spec_yaml: &str) -> String {
        let spec: VirtualEnvironmentSpec = serde_yaml::from_str(spec_yaml).unwrap();
        let error = spec.plugin_config().validate().unwrap_err();
        at_spec_path(&spec, &error)
    }

    #[test]
    fn a_misspelt_alias_is_named_with_the_field_meant() {
        let spec: VirtualEnvironmentSpec = serde_yaml::from_str(
            "envHeader: {aliases: [x-env, {name: cookie, patern: 'env=(@)'}]}",
        )
        .unwrap();
        let said = invalid_alias(&spec).unwrap();
        assert!(said.starts_with("spec.envHeader.aliases[1]: "), "{said}");
        assert!(
            said.ends_with("patern is not a field (did you mean pattern?)"),
            "{said}"
        );
    }

    #[test]
    fn mistakes_are_named_by_the_specs_path_once() {
        for (spec, want) in [
            (
                "envLabel: {splitter: '..'}",
                "spec.envLabel.splitter: \"..\" must be exactly one of '.', '-', '_'",
            ),
            (
                "envHeader: {aliases: [x-env, {name: cookie, pattern: 'env=(@', placeholder: '(@)'}]}",
                "spec.envHeader.aliases[1]: the placeholder \"(@)\" is not in the pattern",
            ),
            (
                "traceCorrelation: {slots: 99999999}",
                "spec.traceCorrelation.slots: 99999999 is out of range",
            ),
            (
                "envHeader: {name: 'x env'}",
                "spec.envHeader.name: \"x env\" is not a header name",
            ),
            (
                "envLabel: {defaultSubset: 'dev..x'}",
                "spec.envLabel.defaultSubset: env \"dev..x\"",
            ),
        ] {
            let said = said(spec);
            assert!(said.starts_with(want), "{spec}: {said}");
            // Said once: no part of the message twice.
            let what = want.split_once(": ").unwrap().1;
            assert_eq!(said.matches(what).count(), 1, "{said}");
        }
    }
}
