//! Env patterns: the original project's `envHeader.aliases[].pattern`, a regular expression
//! with a placeholder (default `(@)`) where the env name stands, e.g. `.*env=(@);?.*` to
//! find the env in a cookie. The original substituted each env name into the expression
//! and let Istio match it; the filter instead extracts the env from the header value.
//!
//! Not a general regex engine (the filter's size and per-request cost are budgeted): the
//! subset patterns in the wild use, matched in time linear in the value:
//!
//! - literal characters, and `\` before any punctuation for that character;
//! - `.` for any character;
//! - `*`, `+` and `?` after a character or `.`;
//! - `^` at the start and `$` at the end (the match is always of the whole value, as
//!   Istio's `regex` header match is).
//!
//! Anything else (groups, classes, alternation, counted repetition) is rejected when the
//! config is read, naming the character. The env is what a regular expression engine
//! would capture for the placeholder as `([A-Za-z0-9._-]+)`: what precedes it matches as
//! much of the value as it can (the rightmost start that leaves a match), then the env is
//! the longest run of env-name characters after which the rest matches what follows.

use thiserror::Error;

/// The original's default placeholder.
pub const DEFAULT_PLACEHOLDER: &str = "(@)";
/// Atoms on either side of the placeholder: a bound on per-request work.
pub const MAX_PATTERN_ATOMS: usize = 64;
/// Longer header values are not searched (a hostile value costs at most this).
pub const MAX_PATTERN_VALUE_LEN: usize = 8192;
/// At a gateway that judges envs from outside, values up to this are searched for every
/// env they hold; a longer carrier line is removed, never passed unjudged.
pub const MAX_EDGE_VALUE_LEN: usize = 32 * 1024;
/// The longest env name (a label value).
const MAX_ENV_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatternError {
    #[error("the placeholder {0:?} is not in the pattern")]
    NoPlaceholder(String),
    #[error("the placeholder {0:?} is in the pattern more than once")]
    PlaceholderTwice(String),
    #[error("the placeholder is empty")]
    EmptyPlaceholder,
    #[error("{0:?} at byte {1} is not supported (only literals, '.', '*', '+', '?', '\\' escapes, '^' and '$')")]
    Unsupported(char, usize),
    #[error("more than {MAX_PATTERN_ATOMS} characters on one side of the placeholder")]
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matcher {
    Byte(u8),
    Any,
}

impl Matcher {
    fn matches(self, b: u8) -> bool {
        match self {
            Matcher::Byte(x) => x == b,
            Matcher::Any => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    One,
    Optional,
    Star,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Atom {
    matcher: Matcher,
    repeat: Repeat,
}

/// A compiled env pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPattern {
    before: Vec<Atom>,
    /// What follows the placeholder, last atom first: it is matched from the value's end.
    after_reversed: Vec<Atom>,
}

impl EnvPattern {
    pub fn parse(pattern: &str, placeholder: &str) -> Result<Self, PatternError> {
        if placeholder.is_empty() {
            return Err(PatternError::EmptyPlaceholder);
        }
        let (before, after) = pattern
            .split_once(placeholder)
            .ok_or_else(|| PatternError::NoPlaceholder(placeholder.to_owned()))?;
        if after.contains(placeholder) {
            return Err(PatternError::PlaceholderTwice(placeholder.to_owned()));
        }
        let after_offset = before.len() + placeholder.len();
        let (before, before_offset) = match before.strip_prefix('^') {
            Some(rest) => (rest, 1),
            None => (before, 0),
        };
        let after = match after.strip_suffix('$') {
            Some(rest) if !rest.ends_with('\\') => rest,
            _ => after,
        };
        let mut after_reversed = atoms(after, after_offset)?;
        after_reversed.reverse();
        Ok(Self {
            before: atoms(before, before_offset)?,
            after_reversed,
        })
    }

    /// The env in `value`, if the pattern matches it.
    pub fn extract<'v>(&self, value: &'v str) -> Option<&'v str> {
        self.span(value).and_then(|(i, j)| value.get(i..j))
    }

    /// Where the env is in `value` (byte range), if the pattern matches it.
    pub fn span(&self, value: &str) -> Option<(usize, usize)> {
        if value.len() > MAX_PATTERN_VALUE_LEN {
            return None;
        }
        self.places(value.as_bytes()).extracted()
    }

    /// Every place in `value` where an env could stand for the pattern to match: the one
    /// [`EnvPattern::span`] extracts, and each start of a run of env-name characters that
    /// the pattern admits (with the longest env there). A gateway judges them all, so that
    /// no reader of the value, whichever occurrence it takes, finds an env it must not.
    /// `None` when `value` is longer than `limit`.
    pub fn occurrences(&self, value: &str, limit: usize) -> Option<Vec<(usize, usize)>> {
        if value.len() > limit {
            return None;
        }
        let bytes = value.as_bytes();
        let places = self.places(bytes);
        let mut out: Vec<(usize, usize)> = (0..bytes.len())
            .filter(|&i| {
                places.starts[i] && (i == 0 || !places.starts[i - 1] || !is_env_byte(bytes[i - 1]))
            })
            .filter_map(|i| Some((i, places.longest_env_from(i)?)))
            .collect();
        out.extend(places.extracted());
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    /// Whether a literal character stands right before the placeholder (`env=(@)`): where
    /// an env starts is then pinned by the value itself, not by where a match happens to
    /// begin (`.*(@)` would let an env start anywhere).
    pub fn anchored(&self) -> bool {
        self.literal_before() > 0
    }

    /// How many literal characters stand right before the placeholder (`sid=(@)`: 4).
    pub fn literal_before(&self) -> usize {
        self.before
            .iter()
            .rev()
            .take_while(|a| a.repeat == Repeat::One && matches!(a.matcher, Matcher::Byte(_)))
            .count()
    }

    /// The pattern's atoms on both sides: what one step of a search costs.
    pub fn atoms(&self) -> usize {
        self.before.len() + self.after_reversed.len()
    }

    /// What searching a value of `len` bytes costs, in automaton steps: the bound a
    /// caller budgets with.
    pub fn cost(&self, len: usize) -> usize {
        len.saturating_add(1)
            .saturating_mul(self.before.len() + self.after_reversed.len() + 2)
    }

    fn places<'v>(&self, bytes: &'v [u8]) -> Places<'v> {
        let starts = accepted_prefixes(&self.before, bytes.iter().copied());
        // ends[k]: what follows the placeholder matches value[k..].
        let mut ends = accepted_prefixes(&self.after_reversed, bytes.iter().rev().copied());
        ends.reverse();
        Places {
            bytes,
            starts,
            ends,
        }
    }
}

/// Where what precedes the placeholder can end (`starts[i]`: it matches `value[..i]`) and
/// where what follows can begin (`ends[j]`: it matches `value[j..]`).
struct Places<'v> {
    bytes: &'v [u8],
    starts: Vec<bool>,
    ends: Vec<bool>,
}

impl Places<'_> {
    /// The longest env starting at `i` after which the rest matches.
    fn longest_env_from(&self, i: usize) -> Option<usize> {
        let run = self.bytes[i..]
            .iter()
            .take(MAX_ENV_LEN)
            .take_while(|b| is_env_byte(**b))
            .count();
        (i + 1..=i + run).rev().find(|&j| self.ends[j])
    }

    /// What a regex engine captures: the rightmost start that leaves a match.
    fn extracted(&self) -> Option<(usize, usize)> {
        self.starts
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, ok)| **ok)
            .find_map(|(i, _)| Some((i, self.longest_env_from(i)?)))
    }
}

/// A byte that an env name may contain (a label value's characters).
fn is_env_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn atoms(text: &str, offset: usize) -> Result<Vec<Atom>, PatternError> {
    let mut out: Vec<Atom> = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let matcher = match c {
            '\\' => match chars.next() {
                Some((_, e)) if e.is_ascii_punctuation() => Matcher::Byte(e as u8),
                Some((at, e)) => return Err(PatternError::Unsupported(e, offset + at)),
                None => return Err(PatternError::Unsupported('\\', offset + at)),
            },
            '.' => Matcher::Any,
            '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return Err(PatternError::Unsupported(c, offset + at))
            }
            c if c.is_ascii() && !c.is_ascii_control() => Matcher::Byte(c as u8),
            c => return Err(PatternError::Unsupported(c, offset + at)),
        };
        match chars.peek().map(|(_, c)| *c) {
            Some('*') => {
                chars.next();
                out.push(Atom {
                    matcher,
                    repeat: Repeat::Star,
                });
            }
            Some('+') => {
                chars.next();
                out.push(Atom {
                    matcher,
                    repeat: Repeat::One,
                });
                out.push(Atom {
                    matcher,
                    repeat: Repeat::Star,
                });
            }
            Some('?') => {
                chars.next();
                out.push(Atom {
                    matcher,
                    repeat: Repeat::Optional,
                });
            }
            _ => out.push(Atom {
                matcher,
                repeat: Repeat::One,
            }),
        }
        if out.len() > MAX_PATTERN_ATOMS {
            return Err(PatternError::TooLong);
        }
    }
    Ok(out)
}

/// For every k, whether `atoms` match exactly the first k bytes of `input`: a simulation
/// of the pattern's automaton (states are positions in `atoms`, at most 64 bits).
fn accepted_prefixes(atoms: &[Atom], input: impl Iterator<Item = u8>) -> Vec<bool> {
    let accept = 1u128 << atoms.len();
    let closure = |mut states: u128| {
        for (i, atom) in atoms.iter().enumerate() {
            if states & (1 << i) != 0 && atom.repeat != Repeat::One {
                states |= 1 << (i + 1);
            }
        }
        states
    };
    let mut states = closure(1);
    let mut out = vec![states & accept != 0];
    for b in input {
        let mut next = 0u128;
        for (i, atom) in atoms.iter().enumerate() {
            if states & (1 << i) != 0 && atom.matcher.matches(b) {
                next |= match atom.repeat {
                    Repeat::Star => 1 << i,
                    Repeat::One | Repeat::Optional => 1 << (i + 1),
                };
            }
        }
        states = closure(next);
        out.push(states & accept != 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'v>(pattern: &str, value: &'v str) -> Option<&'v str> {
        EnvPattern::parse(pattern, DEFAULT_PLACEHOLDER)
            .unwrap()
            .extract(value)
    }

    #[test]
    fn finds_the_env_in_a_cookie() {
        let cookie = ".*env=(@);?.*";
        assert_eq!(env(cookie, "a=1; env=dev.proj1; b=2"), Some("dev.proj1"));
        assert_eq!(env(cookie, "env=dev.proj1"), Some("dev.proj1"));
        assert_eq!(env(cookie, "a=1; b=2"), None);
        // Two: the last, as a regex's greedy `.*` takes it.
        assert_eq!(env(cookie, "env=dev; env=other"), Some("other"));
    }

    #[test]
    fn what_follows_the_placeholder_is_not_taken_into_the_env() {
        assert_eq!(env("(@)-suffix", "dev.proj1-suffix"), Some("dev.proj1"));
        assert_eq!(
            env("^(@)\\.example\\.com$", "dev-proj1.example.com"),
            Some("dev-proj1")
        );
        assert_eq!(env("x(@)", "xdev"), Some("dev"));
        assert_eq!(env("x(@)", "ydev"), None);
        assert_eq!(env("(@)", "dev.proj1"), Some("dev.proj1"));
        assert_eq!(env("(@)", "dev proj1"), None, "a whole-value match");
    }

    #[test]
    fn repetition_and_any() {
        assert_eq!(env("a+b?(@)", "aaadev"), Some("dev"));
        assert_eq!(env("a+b?(@)", "abdev"), Some("dev"));
        assert_eq!(env("a+b?(@)", "bdev"), None);
        assert_eq!(env("...(@)", "abcdev"), Some("dev"));
        assert_eq!(env("u=.*;e=(@)", "u=x;y;e=dev"), Some("dev"));
    }

    #[test]
    fn a_custom_placeholder() {
        let p = EnvPattern::parse("tag:<ENV>", "<ENV>").unwrap();
        assert_eq!(p.extract("tag:dev.proj1"), Some("dev.proj1"));
    }

    #[test]
    fn unsupported_syntax_is_named() {
        for (pattern, bad) in [
            ("(a|b)(@)", '('),
            ("[a-z]+(@)", '['),
            ("a{2}(@)", '{'),
            ("(@)\\d", 'd'),
            ("*(@)", '*'),
        ] {
            match EnvPattern::parse(pattern, DEFAULT_PLACEHOLDER) {
                Err(PatternError::Unsupported(c, _)) => assert_eq!(c, bad, "{pattern}"),
                other => panic!("{pattern}: {other:?}"),
            }
        }
        assert_eq!(
            EnvPattern::parse("env=", DEFAULT_PLACEHOLDER),
            Err(PatternError::NoPlaceholder("(@)".into()))
        );
        assert!(matches!(
            EnvPattern::parse("(@)(@)", DEFAULT_PLACEHOLDER),
            Err(PatternError::PlaceholderTwice(_))
        ));
        let long = format!("{}(@)", "a".repeat(MAX_PATTERN_ATOMS + 1));
        assert_eq!(
            EnvPattern::parse(&long, DEFAULT_PLACEHOLDER),
            Err(PatternError::TooLong)
        );
    }

    #[test]
    fn long_values_are_not_searched() {
        let value = format!("{}env=dev", "x".repeat(MAX_PATTERN_VALUE_LEN));
        assert_eq!(env(".*env=(@)", &value), None);
        let value = format!("{}env=dev", "x".repeat(MAX_PATTERN_VALUE_LEN - 10));
        assert_eq!(env(".*env=(@)", &value), Some("dev"));
    }

    #[test]
    fn an_anchored_pattern_has_a_literal_right_before_the_placeholder() {
        let anchored = |p: &str| {
            EnvPattern::parse(p, DEFAULT_PLACEHOLDER)
                .unwrap()
                .anchored()
        };
        assert!(anchored(".*env=(@);?.*"));
        assert!(anchored("^x(@)$"));
        assert!(!anchored(".*(@).*"));
        assert!(!anchored("(@)"));
        assert!(!anchored("env=*(@)"));
        assert!(!anchored("env.(@)"));
    }

    #[test]
    fn occurrences_are_every_place_an_env_stands() {
        let cookie = EnvPattern::parse(".*env=(@);?.*", DEFAULT_PLACEHOLDER).unwrap();
        let value = "env=dev.public; a=1; env=dev.secret";
        let found: Vec<&str> = cookie
            .occurrences(value, MAX_EDGE_VALUE_LEN)
            .unwrap()
            .into_iter()
            .map(|(i, j)| &value[i..j])
            .collect();
        assert_eq!(found, ["dev.public", "dev.secret"]);
        assert_eq!(cookie.occurrences("a=1", MAX_EDGE_VALUE_LEN), Some(vec![]));
        let long = format!("{}env=dev", "x".repeat(MAX_EDGE_VALUE_LEN));
        assert_eq!(cookie.occurrences(&long, MAX_EDGE_VALUE_LEN), None);
        let within = format!("{}env=dev", "x".repeat(MAX_PATTERN_VALUE_LEN));
        assert_eq!(
            cookie
                .occurrences(&within, MAX_EDGE_VALUE_LEN)
                .map(|o| o.len()),
            Some(1),
            "longer than the mesh searches, still judged at the edge"
        );
    }

    use proptest::prelude::*;

    /// A pattern side from a small alphabet: literals (some that need escaping), `.`, and
    /// the three quantifiers.
    fn side() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            Just("a".to_owned()),
            Just("e".to_owned()),
            Just("=".to_owned()),
            Just(";".to_owned()),
            Just("\\.".to_owned()),
            Just(".".to_owned()),
        ];
        let quantifier = prop_oneof![Just(""), Just(""), Just("*"), Just("+"), Just("?")];
        prop::collection::vec((atom, quantifier), 0..5)
            .prop_map(|atoms| atoms.into_iter().map(|(a, q)| a + q).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The env extracted is what a regular expression engine (the `regex` crate,
        /// leftmost-first with greedy quantifiers) captures for the placeholder.
        #[test]
        fn extracts_what_a_regex_engine_captures(
            before in side(),
            after in side(),
            value in "[ae=;.d-]{0,16}",
        ) {
            let ours = EnvPattern::parse(&format!("{before}(@){after}"), DEFAULT_PLACEHOLDER)
                .unwrap()
                .extract(&value);
            let oracle = regex::Regex::new(&format!("^{before}([A-Za-z0-9._-]{{1,63}}){after}$"))
                .unwrap();
            let theirs = oracle
                .captures(&value)
                .and_then(|c| c.get(1))
                .map(|m| m.as_str());
            prop_assert_eq!(ours, theirs, "{:?} on {:?}", (&before, &after), &value);
        }

        /// What the mesh extracts is always one of the occurrences a gateway judges.
        #[test]
        fn the_extracted_env_is_an_occurrence(
            before in side(),
            after in side(),
            value in "[ae=;.d-]{0,16}",
        ) {
            let pattern = EnvPattern::parse(&format!("{before}(@){after}"), DEFAULT_PLACEHOLDER)
                .unwrap();
            let all = pattern.occurrences(&value, MAX_EDGE_VALUE_LEN).unwrap();
            if let Some(span) = pattern.span(&value) {
                prop_assert!(all.contains(&span), "{:?} not in {:?}", span, all);
            }
            for (i, j) in all {
                prop_assert!(i < j && value[i..j].bytes().all(is_env_byte));
            }
        }
    }
}
