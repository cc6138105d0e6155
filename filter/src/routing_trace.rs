//! The routing trace on demand: "why did my request land there?". A request that carries
//! `x-virtual-env-debug: 1` gets a response header `x-virtual-env-trace` that lists, hop
//! by hop, what each proxy decided:
//!
//! ```text
//! x-virtual-env-trace: call;by=gateway;to=app-a;env=dev.proj1;from=header;route=exact;subset=dev.proj1,
//!     served;ns=default;env=dev.proj1, call;by=sidecar;to=app-b;env=dev.proj1;from=trace;route=fallback;subset=dev, ...
//! ```
//!
//! - the calling side (`call`) says which service was called, the env and where it came
//!   from (`header`, `alias`, `baggage`, `trace`, `auto-inject`, `caller-workload`,
//!   `none`), and the route taken (`exact`, `fallback` to `subset`, `default`, `none`,
//!   `unrouted`: a service not routed by env, `outside`: not a service of the mesh);
//! - the called side (`served`) says the namespace and env of the pod that answered.
//!
//! The called side appends on the response path, so the whole chain reaches the client
//! even when applications forward nothing: a pod's called side, on a debug request,
//! opens a slot in the proxy's shared data under the request's trace id; its calling
//! side then traces the calls of that trace (and sends the debug header on), and adds
//! each call's trace (its own entry and what the callee answered) to the slot; the
//! called side answers with its entry and the slot's.
//!
//! At a gateway, clients from outside may ask for a trace only where the edge policy says
//! so (`edgeTrust.allowTrace`); elsewhere the debug header is removed at the gateway and
//! no trace leaves it. Everything read back (a callee's trace, a slot) is untrusted: only
//! visible ASCII is kept, and a trace is cut at [`MAX_TRACE_LEN`] bytes.

use std::fmt::Write;

use virtual_env_core::hash::{keyed_hash, HashKey};

use crate::decision::{Decision, Destination, Route};
use crate::flow::EnvSource;

/// The request header that asks for a trace (value `1`).
pub const DEBUG_HEADER: &str = "x-virtual-env-debug";
/// The response header that carries it.
pub const TRACE_HEADER: &str = "x-virtual-env-trace";
/// The longest trace a response carries; past it, hops are cut and the trace ends in
/// `...`.
pub const MAX_TRACE_LEN: usize = 4096;
/// Shared-data keys of the slots: a few, reused (a debug request is rare).
pub const SLOT_PREFIX: &str = "virtual-env.debug.";
/// The proxy's "a debug request is in flight" mark: until when (ms since the epoch), or
/// empty. A calling side looks for its request's slot only while it is set, so that a
/// request that is not traced costs one shared-data read, not a trace id and a slot.
pub const ACTIVE_KEY: &str = "virtual-env.debug.active";
const SLOTS: u64 = 64;
/// How long a slot waits for the calls of its request (and keeps the proxy's calling side
/// looking for slots): long enough for a chain, short so that a debug request now and then
/// costs little.
const SLOT_TTL_MS: u64 = 10_000;
const CUT: &str = "...";

/// Whether a request asks for a trace: the debug header is exactly `1`.
pub fn requested(value: Option<&[u8]>) -> bool {
    value == Some(b"1")
}

/// Which proxy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Sidecar,
    Gateway,
    Waypoint,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Sidecar => "sidecar",
            Proxy::Gateway => "gateway",
            Proxy::Waypoint => "waypoint",
        }
    }
}

/// The calling side's entry for `decision`, a call to `to` (the request's host).
pub fn call_entry(by: Proxy, to: &str, decision: &Decision<'_>) -> String {
    let (env, from) = match &decision.env {
        Some((env, source)) => (env.as_str(), source_name(*source)),
        None => ("-", "none"),
    };
    let route = match (decision.target, decision.choice) {
        (Some(Destination::Outside), _) => "outside",
        (Some(Destination::Unrouted), _) => "unrouted",
        (_, Some(Route::Exact)) => "exact",
        (_, Some(Route::Fallback)) => "fallback",
        (_, Some(Route::Default)) => "default",
        _ => "none",
    };
    let subset = decision
        .route_header
        .as_ref()
        .and_then(|(_, subset)| subset.as_deref())
        .unwrap_or("-");
    // The host as a token: nothing in it may end the entry or the hop.
    let to: String = visible(to.as_bytes(), 253)
        .chars()
        .map(|c| {
            if matches!(c, ',' | ';' | '=' | ' ') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut entry = format!(
        "call;by={};to={to};env={env};from={from};route={route};subset={subset}",
        by.name()
    );
    if let Some(edge) = decision
        .edge
        .filter(|e| e.envs_removed > 0 || e.lines_unjudged > 0)
    {
        let _ = write!(
            entry,
            ";edge-removed={}",
            edge.envs_removed + edge.lines_unjudged
        );
    }
    entry
}

/// The called side's entry: the namespace and env of the pod that answered.
pub fn served_entry(namespace: &str, own_env: Option<&str>) -> String {
    format!("served;ns={namespace};env={}", own_env.unwrap_or("-"))
}

fn source_name(source: EnvSource) -> &'static str {
    match source {
        EnvSource::Header => "header",
        EnvSource::Alias => "alias",
        EnvSource::Baggage => "baggage",
        EnvSource::Trace => "trace",
        EnvSource::OwnLabel => "auto-inject",
        EnvSource::CallerWorkload => "caller-workload",
        EnvSource::Host => "host",
    }
}

/// `own`, then the hops after it (`rest`: what the next hop answered, untrusted), within
/// [`MAX_TRACE_LEN`].
pub fn joined(own: &str, rest: Option<&[u8]>) -> String {
    let rest = rest.map(|r| visible(r, MAX_TRACE_LEN)).unwrap_or_default();
    let rest = rest.trim_matches([',', ' ']);
    let all = if rest.is_empty() {
        own.to_owned()
    } else {
        format!("{own}, {rest}")
    };
    bounded(all)
}

/// At most `max` bytes of `bytes` that are visible ASCII or spaces; anything else (a
/// control character, a byte of another encoding) is dropped.
fn visible(bytes: &[u8], max: usize) -> String {
    bytes
        .iter()
        .filter(|b| (0x20..0x7f).contains(*b))
        .take(max)
        .map(|b| char::from(*b))
        .collect()
}

/// `trace` cut at the last whole hop that fits [`MAX_TRACE_LEN`] with the cut mark.
fn bounded(trace: String) -> String {
    if trace.len() <= MAX_TRACE_LEN {
        return trace;
    }
    let room = MAX_TRACE_LEN - CUT.len() - 2;
    // ASCII only (see `visible`), so any byte index is a char boundary.
    let cut = trace[..room].rfind(", ").unwrap_or(room.min(trace.len()));
    format!("{}, {CUT}", &trace[..cut])
}

/// The proxy's slots of debug requests in flight, keyed by trace id (see the module's
/// comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    key: HashKey,
}

impl Slots {
    pub fn new(key: HashKey) -> Self {
        Self { key }
    }

    /// The shared-data key of `id`'s slot.
    pub fn key_of(&self, id: &str) -> String {
        let slot = keyed_hash(self.key, id.as_bytes()) % SLOTS;
        format!("{SLOT_PREFIX}{slot}")
    }

    /// A slot opened for `id` at `now_ms`, empty.
    pub fn opened(id: &str, now_ms: u64) -> String {
        format!("{}|{id}|", now_ms.saturating_add(SLOT_TTL_MS))
    }

    /// Whether a slot's `value` may be taken for a new request at `now_ms`: empty, expired or
    /// garbage; a live slot of another request is left to it.
    pub fn free(value: &[u8], now_ms: u64) -> bool {
        let alive = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.split_once('|'))
            .and_then(|(expires, _)| expires.parse::<u64>().ok())
            .is_some_and(|expires| expires > now_ms);
        !alive
    }

    /// The [`ACTIVE_KEY`] mark of a slot opened at `now_ms`.
    pub fn active_until(now_ms: u64) -> String {
        now_ms.saturating_add(SLOT_TTL_MS).to_string()
    }

    /// Whether the [`ACTIVE_KEY`] mark `value` is set and alive at `now_ms`; `None` when it
    /// is not set at all (nothing to check).
    pub fn active(value: &[u8], now_ms: u64) -> Option<bool> {
        if value.is_empty() {
            return None;
        }
        let until = std::str::from_utf8(value).ok()?.parse::<u64>().ok()?;
        Some(until > now_ms)
    }

    /// The hops recorded in a slot for `id`, if the slot is `id`'s and alive.
    pub fn hops<'v>(value: &'v [u8], id: &str, now_ms: u64) -> Option<&'v str> {
        if value.len() > MAX_TRACE_LEN * 2 {
            return None;
        }
        let value = std::str::from_utf8(value).ok()?;
        let (expires, rest) = value.split_once('|')?;
        let (recorded, hops) = rest.split_once('|')?;
        let alive = expires.parse::<u64>().ok()? > now_ms;
        (alive && recorded == id).then_some(hops)
    }

    /// The slot `value` with `hops` added, if it is `id`'s and alive.
    pub fn added(value: &[u8], id: &str, hops: &str, now_ms: u64) -> Option<String> {
        let before = Self::hops(value, id, now_ms)?;
        let (expires, _) = std::str::from_utf8(value).ok()?.split_once('|')?;
        let all = match before.is_empty() {
            true => hops.to_owned(),
            false => format!("{before}, {hops}"),
        };
        Some(format!("{expires}|{id}|{}", bounded(all)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::EdgeVerdict;
    use std::borrow::Cow;

    #[test]
    fn only_one_asks_for_a_trace() {
        assert!(requested(Some(b"1")));
        for other in [&b"0"[..], b"true", b"1 ", b"", b"\xff"] {
            assert!(!requested(Some(other)), "{other:?}");
        }
        assert!(!requested(None));
    }

    #[test]
    fn a_call_says_what_was_asked_where_it_came_from_and_where_it_went() {
        let decision = Decision {
            env: Some(("dev.proj1.alice".into(), EnvSource::Baggage)),
            target: Some(Destination::Service),
            choice: Some(Route::Fallback),
            route_header: Some((
                Cow::Borrowed("x-virtual-env-route"),
                Some("dev.proj1".into()),
            )),
            edge: Some(EdgeVerdict {
                envs_removed: 2,
                ..EdgeVerdict::default()
            }),
            ..Decision::default()
        };
        assert_eq!(
            call_entry(Proxy::Gateway, "app-a:8080", &decision),
            "call;by=gateway;to=app-a:8080;env=dev.proj1.alice;from=baggage;route=fallback;subset=dev.proj1;edge-removed=2"
        );
        let outside = Decision {
            target: Some(Destination::Outside),
            ..Decision::default()
        };
        assert_eq!(
            call_entry(Proxy::Sidecar, "example.com\r\nx: y", &outside),
            "call;by=sidecar;to=example.comx:_y;env=-;from=none;route=outside;subset=-"
        );
        assert_eq!(
            served_entry("default", Some("dev")),
            "served;ns=default;env=dev"
        );
    }

    #[test]
    fn what_the_next_hop_answered_is_cleaned_and_bounded() {
        assert_eq!(joined("a", None), "a");
        assert_eq!(joined("a", Some(b"")), "a");
        assert_eq!(joined("a", Some(b"b\r\n, c\x00\xff")), "a, b, c");
        let huge = "served;ns=x;env=y, ".repeat(1000);
        let trace = joined("call;by=sidecar", Some(huge.as_bytes()));
        assert!(trace.len() <= MAX_TRACE_LEN, "{}", trace.len());
        assert!(trace.starts_with("call;by=sidecar, served"));
        assert!(trace.ends_with(", ..."), "{}", &trace[trace.len() - 20..]);
        // Cut between hops, never inside one.
        let last = trace.trim_end_matches(", ...").rsplit(", ").next().unwrap();
        assert_eq!(last, "served;ns=x;env=y");
    }

    #[test]
    fn a_slot_holds_one_requests_hops_until_it_expires() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let open = Slots::opened(id, 1_000);
        assert_eq!(Slots::hops(open.as_bytes(), id, 1_000), Some(""));
        let one = Slots::added(open.as_bytes(), id, "call;x", 1_001).unwrap();
        let two = Slots::added(one.as_bytes(), id, "call;y", 1_002).unwrap();
        assert_eq!(
            Slots::hops(two.as_bytes(), id, 1_003),
            Some("call;x, call;y")
        );
        assert_eq!(Slots::hops(two.as_bytes(), "another-trace-id", 1_003), None);
        assert_eq!(Slots::hops(two.as_bytes(), id, 11_000), None, "expired");
        assert!(
            !Slots::free(two.as_bytes(), 1_003),
            "another request's, alive"
        );
        assert!(Slots::free(two.as_bytes(), 11_000) && Slots::free(b"", 0) && Slots::free(b"x", 0));
        assert_eq!(Slots::added(two.as_bytes(), "other", "z", 1_003), None);
        for junk in [&b""[..], b"|", b"x|a|b", b"\xff|a|", b"99"] {
            assert_eq!(Slots::hops(junk, "a", 0), None, "{junk:?}");
        }
        let slots = Slots::new([1, 2]);
        let keys: std::collections::BTreeSet<_> = (0..5000)
            .map(|i| slots.key_of(&format!("id-{i}")))
            .collect();
        assert_eq!(keys.len(), SLOTS as usize);
    }
}
