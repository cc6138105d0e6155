//! DestinationRule subset names for envs.
//!
//! A subset name must be a DNS-1123 label (lower-case letters, digits, `-`, at most 63),
//! while an env name is a label value (`dev.proj1`, `Dev_x`). An env that already is a
//! DNS-1123 label keeps its name; any other is lower-cased, its other characters become
//! `-`, and a hash of the original env is appended, so `dev.x`, `dev-x` and `dev_x` get
//! three different subsets. Names depend only on the env, so they are stable across
//! reconciles. A hash collision between two envs of one namespace is detected by
//! [`SubsetNames::new`] and resolved by a longer hash.

use std::collections::{BTreeMap, BTreeSet};

use virtual_env_core::hash::fnv1a;
use virtual_env_core::service::is_dns_label;

const MAX_LEN: usize = 63;

/// `text` lower-cased, every character but `a-z0-9` as `-`: the readable part of a name
/// made from an env (a subset's, an env's Service's).
pub fn as_label_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

/// The subset name of `env` with a hash suffix of `hash_len` hex digits where one is needed.
fn subset_name(env: &str, hash_len: usize) -> String {
    if is_dns_label(env) {
        return env.to_owned();
    }
    let hash = format!("{:016x}", fnv1a(env.as_bytes()));
    let hash = &hash[..hash_len.min(16)];
    let readable = as_label_text(env);
    let readable = readable.trim_matches('-');
    let room = MAX_LEN - 1 - hash.len();
    let readable = readable[..readable.len().min(room)].trim_end_matches('-');
    if readable.is_empty() {
        format!("e-{hash}")
    } else {
        format!("{readable}-{hash}")
    }
}

/// The subset name of every env of a namespace: injective over that set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubsetNames(BTreeMap<String, String>);

impl SubsetNames {
    pub fn new<'a>(envs: impl IntoIterator<Item = &'a str>) -> Self {
        let envs: BTreeSet<&str> = envs.into_iter().collect();
        let mut hash_len = 8;
        loop {
            let names: BTreeMap<String, String> = envs
                .iter()
                .map(|env| (env.to_string(), subset_name(env, hash_len)))
                .collect();
            let distinct: BTreeSet<&String> = names.values().collect();
            if distinct.len() == names.len() || hash_len >= 16 {
                return Self(names);
            }
            hash_len += 4;
        }
    }

    pub fn get(&self, env: &str) -> Option<&str> {
        self.0.get(env).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_keep_their_name() {
        let names = SubsetNames::new(["dev", "dev-x", "qa1"]);
        assert_eq!(names.get("dev"), Some("dev"));
        assert_eq!(names.get("dev-x"), Some("dev-x"));
    }

    #[test]
    fn colliding_spellings_get_distinct_valid_names() {
        let names = SubsetNames::new(["dev.x", "dev-x", "dev_x", "Dev.X"]);
        let all: BTreeSet<_> = ["dev.x", "dev-x", "dev_x", "Dev.X"]
            .iter()
            .map(|e| names.get(e).unwrap().to_owned())
            .collect();
        assert_eq!(all.len(), 4, "{all:?}");
        for name in &all {
            assert!(is_dns_label(name), "{name}");
            assert!(name.starts_with("dev-x"), "{name}");
        }
    }

    #[test]
    fn names_are_stable_whatever_else_is_in_the_namespace() {
        let alone = SubsetNames::new(["dev.proj1"]);
        let crowded = SubsetNames::new(["dev", "dev.proj1", "dev.proj2", "qa"]);
        assert_eq!(alone.get("dev.proj1"), crowded.get("dev.proj1"));
        assert_eq!(
            alone.get("dev.proj1"),
            Some(subset_name("dev.proj1", 8).as_str())
        );
    }

    #[test]
    fn long_and_odd_envs_fit() {
        let long = format!("{}.x", "a".repeat(61));
        let names = SubsetNames::new([long.as_str(), "_._", "9.9"]);
        for env in [long.as_str(), "_._", "9.9"] {
            let name = names.get(env).unwrap();
            assert!(is_dns_label(name), "{env} -> {name}");
        }
    }
}
