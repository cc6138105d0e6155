//! Env names: what a valid one is, and its walk up the hierarchy.
//!
//! An env name is the value of the env label on a pod (`dev.proj1.user1`), so it must be a
//! valid Kubernetes label value. The splitter (`.` by default) separates the levels; every
//! level must start and end with a letter or digit, so that every ancestor of a valid env
//! name is a valid env name too (`0-_a` with splitter `_` would have the ancestor `0-`,
//! which no pod can carry).

use thiserror::Error;

/// Kubernetes' limit on a label value.
pub const MAX_ENV_LEN: usize = 63;

/// The symbols a splitter may be: the only non-alphanumeric characters a label value holds.
pub const SPLITTER_CHOICES: [char; 3] = ['.', '-', '_'];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvNameError {
    #[error("env name is empty")]
    Empty,
    #[error("env name is {0} characters long, a label value holds at most 63")]
    TooLong(usize),
    #[error("env name has {0:?}, a label value holds only letters, digits, '-', '_' and '.'")]
    BadChar(char),
    #[error("env name must start and end with a letter or digit")]
    BadEdge,
    #[error("env name has an empty level between two {0:?}")]
    EmptyLevel(char),
    #[error("env name has a level that does not start and end with a letter or digit: {0:?}")]
    BadLevelEdge(String),
}

/// Checks that `name` is a label value whose levels (split by `splitter`) are all non-empty.
pub fn validate_env_name(name: &str, splitter: char) -> Result<(), EnvNameError> {
    if name.is_empty() {
        return Err(EnvNameError::Empty);
    }
    if name.len() > MAX_ENV_LEN {
        return Err(EnvNameError::TooLong(name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(EnvNameError::BadChar(c));
    }
    let bytes = name.as_bytes();
    let edge_ok = |b: u8| b.is_ascii_alphanumeric();
    if !edge_ok(bytes[0]) || !edge_ok(bytes[bytes.len() - 1]) {
        return Err(EnvNameError::BadEdge);
    }
    for level in name.split(splitter) {
        let (Some(&first), Some(&last)) = (level.as_bytes().first(), level.as_bytes().last())
        else {
            return Err(EnvNameError::EmptyLevel(splitter));
        };
        if !edge_ok(first) || !edge_ok(last) {
            return Err(EnvNameError::BadLevelEdge(level.to_owned()));
        }
    }
    Ok(())
}

/// The env and its ancestors, nearest first: `a.b.c`, `a.b`, `a`.
///
/// Ancestors are prefixes of the name, so the walk allocates nothing.
pub fn lineage(env: &str, splitter: char) -> impl Iterator<Item = &str> {
    let mut next = Some(env);
    std::iter::from_fn(move || {
        let current = next?;
        next = current.rfind(splitter).map(|i| &current[..i]);
        Some(current)
    })
}

/// The parent env, if `env` has one.
pub fn parent(env: &str, splitter: char) -> Option<&str> {
    lineage(env, splitter).nth(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_label_values_with_levels() {
        for ok in [
            "dev",
            "dev.proj1",
            "dev.proj1.user1",
            "a-b_c.d",
            "x",
            "D3v.P-1",
        ] {
            assert_eq!(validate_env_name(ok, '.'), Ok(()), "{ok}");
        }
        assert_eq!(validate_env_name(&"a".repeat(63), '.'), Ok(()));
    }

    #[test]
    fn rejects_what_a_label_value_cannot_hold() {
        assert_eq!(validate_env_name("", '.'), Err(EnvNameError::Empty));
        assert_eq!(
            validate_env_name(&"a".repeat(64), '.'),
            Err(EnvNameError::TooLong(64))
        );
        assert_eq!(
            validate_env_name("dev/x", '.'),
            Err(EnvNameError::BadChar('/'))
        );
        assert_eq!(
            validate_env_name("dev x", '.'),
            Err(EnvNameError::BadChar(' '))
        );
        assert_eq!(
            validate_env_name("dév", '.'),
            Err(EnvNameError::BadChar('é'))
        );
        assert_eq!(validate_env_name(".dev", '.'), Err(EnvNameError::BadEdge));
        assert_eq!(validate_env_name("dev.", '.'), Err(EnvNameError::BadEdge));
        assert_eq!(validate_env_name("-dev", '.'), Err(EnvNameError::BadEdge));
    }

    #[test]
    fn rejects_empty_levels_for_the_configured_splitter() {
        assert_eq!(
            validate_env_name("dev..x", '.'),
            Err(EnvNameError::EmptyLevel('.'))
        );
        assert_eq!(
            validate_env_name("dev__x", '_'),
            Err(EnvNameError::EmptyLevel('_'))
        );
        // With another splitter, `..` is just two dots inside one level.
        assert_eq!(validate_env_name("dev..x", '_'), Ok(()));
    }

    /// Found by `fuzz::env_names_never_panic_and_valid_ones_walk_valid_ancestors`.
    #[test]
    fn every_level_starts_and_ends_with_a_letter_or_digit() {
        assert_eq!(
            validate_env_name("0-_a", '_'),
            Err(EnvNameError::BadLevelEdge("0-".into()))
        );
        assert_eq!(
            validate_env_name("dev-.x", '.'),
            Err(EnvNameError::BadLevelEdge("dev-".into()))
        );
        assert_eq!(validate_env_name("dev-1.x_2", '.'), Ok(()));
    }

    #[test]
    fn lineage_walks_up_nearest_first() {
        let walk: Vec<_> = lineage("dev.proj1.user1", '.').collect();
        assert_eq!(walk, ["dev.proj1.user1", "dev.proj1", "dev"]);
        let walk: Vec<_> = lineage("dev", '.').collect();
        assert_eq!(walk, ["dev"]);
        let walk: Vec<_> = lineage("dev-p1-u1", '-').collect();
        assert_eq!(walk, ["dev-p1-u1", "dev-p1", "dev"]);
    }

    #[test]
    fn parent_is_one_level_up() {
        assert_eq!(parent("dev.proj1", '.'), Some("dev"));
        assert_eq!(parent("dev", '.'), None);
    }
}
