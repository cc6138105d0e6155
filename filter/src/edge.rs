//! The edge guard: what a gateway that does not accept every env from outside (its
//! `edgeTrust` is `allowList` or `strip`) does to each request before anything else.
//!
//! Inside the mesh a hop reads the first line of each carrier, but the application behind
//! the gateway receives every line, may join repeated lines (`a=b, virtual-env=x`), parse
//! a cookie its own way, or forward a carrier the gateway did not read; the next sidecar
//! then routes by what it forwarded. So the guard does not judge "the request's env": it
//! judges every env every carrier line holds, and leaves only admitted ones:
//!
//! - the env header and each alias (whole-value carriers): lines that are not an admitted
//!   env name go; what stays is one line, the first admitted one;
//! - a header with an env pattern (a cookie): every place the pattern lets an env stand
//!   ([`EnvPattern::occurrences`]) that holds an env not admitted is cut out of the line;
//! - `baggage`: every member under the baggage key whose value is not admitted goes;
//! - a line that cannot be judged (not UTF-8, longer than [`MAX_EDGE_VALUE_LEN`]) goes.
//!
//! Repeated lines of a pattern header or of baggage are joined into one (`; ` for cookies,
//! `,` otherwise, as HTTP joins list headers) only when something was cut. The guard runs
//! on every request through the gateway, whatever its host.
//!
//! Pure: it reads the header lines and returns the edits; the request flow applies them.

use std::collections::BTreeMap;

use virtual_env_core::pattern::{EnvPattern, MAX_EDGE_VALUE_LEN};
use virtual_env_core::{validate_env_name, EdgeTrust};

/// The headers that carry an env (lower case): the config's own (env header, aliases,
/// patterns, baggage key) and its `edgeCarriers`.
pub struct Carriers<'a> {
    /// Headers whose whole value is an env.
    pub whole: &'a [String],
    pub patterns: &'a [(String, EnvPattern)],
    /// Members of `baggage` that carry an env.
    pub baggage_keys: &'a [String],
    pub splitter: char,
}

impl Carriers<'_> {
    /// Every header that may carry an env.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.whole
            .iter()
            .map(String::as_str)
            .chain(self.patterns.iter().map(|(name, _)| name.as_str()))
            .chain((!self.baggage_keys.is_empty()).then_some("baggage"))
    }
}

/// What the guard changes: each header named here is replaced by the one value given
/// (every line of it), or removed when `None`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EdgeEdits {
    pub headers: BTreeMap<String, Option<String>>,
    /// Env occurrences removed (not admitted, or not a valid env name).
    pub envs_removed: usize,
    /// Lines removed whole because they could not be judged.
    pub lines_unjudged: usize,
}

impl EdgeEdits {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }
}

/// Cutting one occurrence can join text into a new one; after this many rounds a line
/// that still holds an env not admitted goes whole.
const MAX_CUT_ROUNDS: usize = 8;

/// The most pattern-matching work one request may cost at the gateway (bytes searched
/// times the pattern's atoms, summed): the patterns are the tenants' and the bytes the
/// client's, so their product is bounded; a line beyond it goes unjudged, so removed.
pub const EDGE_WORK_BUDGET: usize = 4 << 20;

/// A carrier header's lines as the guard works on them.
struct Lines {
    lines: Vec<String>,
    changed: bool,
}

/// The edits that leave only envs `edge` admits in `lines` (every request header line).
///
/// Every judge of a header (whole value, each pattern, baggage members) works on what the
/// judges before it left, so no judge hides a line from another; lines of a pattern header
/// are also judged joined, as the application may join them, and in the spellings readers
/// also accept (quotes, spaces around `=`, `%`-escapes).
pub fn guard(edge: &EdgeTrust, carriers: &Carriers<'_>, lines: &[(String, Vec<u8>)]) -> EdgeEdits {
    let admitted =
        |env: &str| validate_env_name(env, carriers.splitter).is_ok() && edge.admits(env);
    let mut edits = EdgeEdits::default();
    let mut budget = EDGE_WORK_BUDGET;
    let mut state: BTreeMap<&str, Lines> = BTreeMap::new();
    for name in carriers.names() {
        if state.contains_key(name) {
            continue;
        }
        let mut text = Lines {
            lines: Vec::new(),
            changed: false,
        };
        for (_, value) in lines.iter().filter(|(n, _)| n == name) {
            match std::str::from_utf8(value) {
                Ok(value) if value.len() <= MAX_EDGE_VALUE_LEN => text.lines.push(value.to_owned()),
                _ => {
                    text.changed = true;
                    edits.lines_unjudged += 1;
                }
            }
        }
        if !text.lines.is_empty() || text.changed {
            state.insert(name, text);
        }
    }

    for name in carriers.whole.iter().map(String::as_str) {
        let Some(header) = state.get_mut(name) else {
            continue;
        };
        let before = header.lines.len();
        header.lines.retain(|v| admitted(v));
        edits.envs_removed += before - header.lines.len();
        // One line stays, the first admitted: a reader may take any line of several.
        if header.lines.len() != before || header.lines.len() > 1 {
            header.lines.truncate(1);
            header.changed = true;
        }
    }

    for (name, pattern) in carriers.patterns {
        let Some(header) = state.get_mut(name.as_str()) else {
            continue;
        };
        let mut kept = Vec::new();
        for line in std::mem::take(&mut header.lines) {
            match judge_pattern_line(&line, pattern, &admitted, &mut budget) {
                Some((line, cut)) => {
                    header.changed |= cut > 0;
                    edits.envs_removed += cut;
                    kept.push(line);
                }
                None => {
                    header.changed = true;
                    edits.lines_unjudged += 1;
                }
            }
        }
        // Joined, as the application may join them: what joining forms is judged too.
        if kept.len() > 1 {
            let joined_line = kept.join(separator(name));
            match judge_pattern_line(&joined_line, pattern, &admitted, &mut budget) {
                Some((_, 0)) => {}
                Some((line, cut)) => {
                    edits.envs_removed += cut;
                    header.changed = true;
                    kept = vec![line];
                }
                None => {
                    edits.lines_unjudged += 1;
                    header.changed = true;
                    kept.clear();
                }
            }
        }
        header.lines = kept;
    }

    if !carriers.baggage_keys.is_empty() {
        if let Some(header) = state.get_mut("baggage") {
            for line in &mut header.lines {
                let (kept, cut) = cut_baggage(line, carriers.baggage_keys, &admitted);
                if cut > 0 {
                    edits.envs_removed += cut;
                    header.changed = true;
                    *line = kept;
                }
            }
        }
    }

    for (name, header) in state.into_iter().filter(|(_, h)| h.changed) {
        edits
            .headers
            .insert(name.to_owned(), joined(&header.lines, separator(name)));
    }
    edits
}

/// How a header's lines join into one: `; ` for cookies, `,` for lists.
fn separator(name: &str) -> &'static str {
    if name == "cookie" {
        "; "
    } else {
        ","
    }
}

/// Non-empty lines joined; `None` when nothing is left.
fn joined(lines: &[String], separator: &str) -> Option<String> {
    let lines: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    (!lines.is_empty()).then(|| lines.join(separator))
}

/// A pattern header's line with every env occurrence that is not admitted cut out, and
/// how many were; `None` when it cannot be judged (over the work budget, still holding
/// one after [`MAX_CUT_ROUNDS`]) or when a spelling other readers accept (quoted, spaces
/// around `=`, `%`-escaped) still holds one: then the line goes whole.
fn judge_pattern_line(
    value: &str,
    pattern: &EnvPattern,
    admitted: &impl Fn(&str) -> bool,
    budget: &mut usize,
) -> Option<(String, usize)> {
    let (line, cut) = cut_pattern(value, pattern, admitted, budget)?;
    let lenient = leniently_read(&line);
    if lenient != line {
        let (_, more) = cut_pattern(&lenient, pattern, admitted, budget)?;
        if more > 0 {
            return None;
        }
    }
    Some((line, cut))
}

/// `value` as a lenient reader reads it: without quotes and whitespace, `%XX` decoded.
pub(crate) fn leniently_read(value: &str) -> String {
    let bare: String = value
        .chars()
        .filter(|c| *c != '"' && !c.is_whitespace())
        .collect();
    if !bare.contains('%') {
        return bare;
    }
    let bytes = bare.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bare.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `value` with every env occurrence that is not admitted cut out, and how many were;
/// `None` when the line cannot be judged (too long, over the work budget, or still
/// holding one after [`MAX_CUT_ROUNDS`]).
fn cut_pattern(
    value: &str,
    pattern: &EnvPattern,
    admitted: &impl Fn(&str) -> bool,
    budget: &mut usize,
) -> Option<(String, usize)> {
    let mut line = value.to_owned();
    let mut cut = 0;
    for _ in 0..MAX_CUT_ROUNDS {
        *budget = budget.checked_sub(pattern.cost(line.len()))?;
        let bad: Vec<(usize, usize)> = pattern
            .occurrences(&line, MAX_EDGE_VALUE_LEN)?
            .into_iter()
            .filter(|&(i, j)| !line.get(i..j).is_some_and(admitted))
            .collect();
        if bad.is_empty() {
            return Some((line, cut));
        }
        cut += bad.len();
        // Occurrences may overlap: cut their union, from the right so offsets hold.
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (i, j) in bad {
            match merged.last_mut() {
                Some(last) if i <= last.1 => last.1 = last.1.max(j),
                _ => merged.push((i, j)),
            }
        }
        for (i, j) in merged.into_iter().rev() {
            // Occurrences are runs of ASCII env-name characters: char boundaries.
            if line.is_char_boundary(i) && line.is_char_boundary(j) {
                line.replace_range(i..j, "");
            } else {
                return None;
            }
        }
    }
    None
}

/// A baggage line without the members under `keys` whose value is not admitted.
fn cut_baggage(value: &str, keys: &[String], admitted: &impl Fn(&str) -> bool) -> (String, usize) {
    let mut cut = 0;
    let kept: Vec<&str> = value
        .split(',')
        .filter(|member| {
            let name_value = member.split(';').next().unwrap_or("");
            let Some((k, v)) = name_value.split_once('=') else {
                return true;
            };
            let key = k.trim();
            if !keys.iter().any(|k| k == key) {
                return true;
            }
            let keep = !v.trim().is_empty()
                && crate::baggage::baggage_member(name_value, key)
                    .is_some_and(|env| admitted(&env));
            cut += usize::from(!keep);
            keep
        })
        .map(str::trim)
        .collect();
    if cut == 0 {
        (value.to_owned(), 0)
    } else {
        (kept.join(","), cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtual_env_core::pattern::DEFAULT_PLACEHOLDER;
    use virtual_env_core::EdgeMode;

    fn allow(entries: &[&str]) -> EdgeTrust {
        EdgeTrust {
            mode: EdgeMode::AllowList,
            allow: entries.iter().map(|e| e.to_string()).collect(),
            allow_trace: false,
        }
    }

    fn strip() -> EdgeTrust {
        EdgeTrust {
            mode: EdgeMode::Strip,
            allow: vec![],
            allow_trace: false,
        }
    }

    fn run(edge: &EdgeTrust, lines: &[(&str, &str)]) -> EdgeEdits {
        let whole = vec!["x-virtual-env".to_owned(), "x-env".to_owned()];
        let patterns = vec![(
            "cookie".to_owned(),
            EnvPattern::parse(".*env=(@);?.*", DEFAULT_PLACEHOLDER).unwrap(),
        )];
        let keys = vec!["virtual-env".to_owned()];
        let carriers = Carriers {
            whole: &whole,
            patterns: &patterns,
            baggage_keys: &keys,
            splitter: '.',
        };
        let lines: Vec<(String, Vec<u8>)> = lines
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        guard(edge, &carriers, &lines)
    }

    fn set<'e>(edits: &'e EdgeEdits, name: &str) -> Option<Option<&'e str>> {
        edits.headers.get(name).map(|v| v.as_deref())
    }

    #[test]
    fn an_admitted_single_line_is_left_alone() {
        let edits = run(
            &allow(&["dev.public"]),
            &[
                ("x-virtual-env", "dev.public"),
                ("cookie", "a=1; env=dev.public"),
            ],
        );
        assert!(edits.is_empty(), "{edits:?}");
    }

    #[test]
    fn every_line_of_a_repeated_carrier_is_judged() {
        let edits = run(
            &allow(&["dev", "dev.public"]),
            &[
                ("x-virtual-env", "dev.public"),
                ("x-virtual-env", "dev.secret"),
                ("x-env", "dev.secret"),
                ("baggage", "a=b"),
                ("baggage", "virtual-env=dev.secret,c=d"),
                ("cookie", "session=1"),
                ("cookie", "env=dev.secret; theme=dark"),
            ],
        );
        assert_eq!(set(&edits, "x-virtual-env"), Some(Some("dev.public")));
        assert_eq!(set(&edits, "x-env"), Some(None));
        assert_eq!(set(&edits, "baggage"), Some(Some("a=b,c=d")));
        assert_eq!(
            set(&edits, "cookie"),
            Some(Some("session=1; env=; theme=dark"))
        );
        assert_eq!(edits.envs_removed, 4);
    }

    #[test]
    fn every_occurrence_in_a_line_is_judged() {
        let edits = run(
            &allow(&["dev.public"]),
            &[
                ("cookie", "env=dev.public; env=dev.secret"),
                ("baggage", "virtual-env=dev.public,virtual-env=dev.secret"),
            ],
        );
        assert_eq!(set(&edits, "cookie"), Some(Some("env=dev.public; env=")));
        assert_eq!(set(&edits, "baggage"), Some(Some("virtual-env=dev.public")));
    }

    #[test]
    fn strip_leaves_no_env_anywhere() {
        let edits = run(
            &strip(),
            &[
                ("x-virtual-env", "dev"),
                ("baggage", "virtual-env=dev;p=1, k=v"),
                ("cookie", "env=dev"),
            ],
        );
        assert_eq!(set(&edits, "x-virtual-env"), Some(None));
        assert_eq!(set(&edits, "baggage"), Some(Some("k=v")));
        assert_eq!(set(&edits, "cookie"), Some(Some("env=")));
    }

    #[test]
    fn lines_that_cannot_be_judged_go() {
        let long = format!("{}; env=dev.secret", "x=1".repeat(MAX_EDGE_VALUE_LEN));
        let edits = run(&allow(&["dev"]), &[("cookie", &long), ("cookie", "a=1")]);
        assert_eq!(set(&edits, "cookie"), Some(Some("a=1")));
        assert_eq!(edits.lines_unjudged, 1);
        let lines = vec![("x-virtual-env".to_owned(), b"dev\xff".to_vec())];
        let whole = vec!["x-virtual-env".to_owned()];
        let carriers = Carriers {
            whole: &whole,
            patterns: &[],
            baggage_keys: &[],
            splitter: '.',
        };
        let edits = guard(&allow(&["dev"]), &carriers, &lines);
        assert_eq!(set(&edits, "x-virtual-env"), Some(None));
    }

    #[test]
    fn cutting_that_joins_a_new_env_is_cut_again() {
        // Cutting "dev.x" out of "env=denv=dev.xev.secret" leaves "env=denv=ev.secret"...
        let edits = run(
            &allow(&["dev"]),
            &[("cookie", "a=1; env=deenv=dev.xv.secret")],
        );
        let cookie = set(&edits, "cookie")
            .expect("edited")
            .unwrap_or_default()
            .to_owned();
        let pattern = EnvPattern::parse(".*env=(@);?.*", DEFAULT_PLACEHOLDER).unwrap();
        let found = pattern.occurrences(&cookie, MAX_EDGE_VALUE_LEN).unwrap();
        for (i, j) in &found {
            assert_eq!(&cookie[*i..*j], "dev", "{cookie}");
        }
        assert!(edits.envs_removed >= 1);
    }

    /// Two judges of one header: each works on what the other left, so a decoy for the
    /// first hides nothing from the second.
    #[test]
    fn every_judge_of_a_header_sees_every_line() {
        let whole = vec!["x-virtual-env".to_owned()];
        let patterns = vec![
            (
                "cookie".to_owned(),
                EnvPattern::parse(".*env=(@);?.*", DEFAULT_PLACEHOLDER).unwrap(),
            ),
            (
                "cookie".to_owned(),
                EnvPattern::parse(".*stage:(@);?.*", DEFAULT_PLACEHOLDER).unwrap(),
            ),
            (
                "baggage".to_owned(),
                EnvPattern::parse(".*x=(@).*", DEFAULT_PLACEHOLDER).unwrap(),
            ),
        ];
        let keys = vec!["virtual-env".to_owned()];
        let carriers = Carriers {
            whole: &whole,
            patterns: &patterns,
            baggage_keys: &keys,
            splitter: '.',
        };
        let lines: Vec<(String, Vec<u8>)> = [
            ("cookie", "env=bad; stage:dev.secret"),
            ("baggage", "x=bad, virtual-env=dev.secret"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
        let edits = guard(&allow(&["dev"]), &carriers, &lines);
        let cookie = set(&edits, "cookie").flatten().unwrap_or_default();
        assert!(
            !cookie.contains("secret") && !cookie.contains("bad"),
            "{cookie}"
        );
        let baggage = set(&edits, "baggage").flatten().unwrap_or_default();
        assert!(
            !baggage.contains("secret") && !baggage.contains("bad"),
            "{baggage}"
        );
    }

    /// Readers other than the pattern: Go strips quotes, Node trims spaces and decodes
    /// `%XX`. A line that holds an env not admitted in any of those spellings goes.
    #[test]
    fn spellings_other_readers_accept_are_judged() {
        for cookie in [
            r#"env="dev.secret""#,
            "env = dev.secret",
            "a=1;env =dev.secret",
            "env=dev%2Esecret",
        ] {
            let edits = run(&allow(&["dev"]), &[("cookie", cookie)]);
            assert_eq!(set(&edits, "cookie"), Some(None), "{cookie}");
        }
        let edits = run(&allow(&["dev"]), &[("cookie", "env=dev; theme=\"dark\"")]);
        assert!(
            edits.is_empty(),
            "an admitted env, other quoted values: left alone"
        );
    }

    /// Lines judged one by one can form an env once joined, as the application joins them.
    #[test]
    fn lines_are_judged_joined_too() {
        let whole: Vec<String> = vec![];
        let patterns = vec![(
            "cookie".to_owned(),
            EnvPattern::parse(".*env=..(@).*", DEFAULT_PLACEHOLDER).unwrap(),
        )];
        let carriers = Carriers {
            whole: &whole,
            patterns: &patterns,
            baggage_keys: &[],
            splitter: '.',
        };
        let lines: Vec<(String, Vec<u8>)> = ["env=", "dev.secret"]
            .iter()
            .map(|v| ("cookie".to_owned(), v.as_bytes().to_vec()))
            .collect();
        let edits = guard(&allow(&["dev"]), &carriers, &lines);
        let cookie = set(&edits, "cookie").flatten().unwrap_or_default();
        assert!(!cookie.contains("secret"), "{cookie}");
    }

    /// The tenants' patterns times the client's bytes is bounded per request: what is
    /// beyond the budget goes unjudged, so removed.
    #[test]
    fn pattern_work_per_request_is_bounded() {
        let whole: Vec<String> = vec![];
        let long_pattern = format!("{}(@){}", ".*a".repeat(20), ".*b".repeat(20));
        let patterns: Vec<(String, EnvPattern)> = (0..16)
            .map(|_| {
                (
                    "cookie".to_owned(),
                    EnvPattern::parse(&long_pattern, DEFAULT_PLACEHOLDER).unwrap(),
                )
            })
            .collect();
        let carriers = Carriers {
            whole: &whole,
            patterns: &patterns,
            baggage_keys: &[],
            splitter: '.',
        };
        let cookie = "x".repeat(MAX_EDGE_VALUE_LEN);
        let lines = vec![("cookie".to_owned(), cookie.into_bytes())];
        let edits = guard(&allow(&["dev"]), &carriers, &lines);
        assert_eq!(
            set(&edits, "cookie"),
            Some(None),
            "over the budget: removed"
        );
        assert_eq!(edits.lines_unjudged, 1);
    }
}
