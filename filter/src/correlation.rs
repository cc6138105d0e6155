//! The trace id -> env table kept in Envoy shared data.
//!
//! The inbound side of a sidecar records the env of each request under its trace ids; the
//! outbound side of the same sidecar looks a trace id up when the application forwarded
//! only its tracing headers. Shared data is common to all worker VMs of one Envoy, but has
//! no delete: a key once written stays for the life of the proxy. So the table is a fixed
//! set of slots (`virtual-env.trace.<n>`), a trace id hashes to one slot, a newer entry
//! overwrites an older one, and each entry carries its expiry. Memory is bounded by
//! slots x the largest entry, whatever the traffic.

use std::fmt::Write;

use virtual_env_core::hash::fnv1a;

use crate::trace::MAX_OPAQUE_ID_LEN;

/// Prefix of every slot's shared-data key.
pub const SLOT_KEY_PREFIX: &str = "virtual-env.trace.";

/// The largest entry: expiry, separators, header name, id and env.
pub const MAX_ENTRY_LEN: usize = 20 + 2 + 64 + 1 + MAX_OPAQUE_ID_LEN + 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorrelationTable {
    slots: u32,
    ttl_ms: u64,
}

impl CorrelationTable {
    /// `None` when correlation is disabled (no slots or no TTL).
    pub fn new(slots: u32, ttl_seconds: u32) -> Option<Self> {
        (slots > 0 && ttl_seconds > 0).then_some(Self {
            slots,
            ttl_ms: u64::from(ttl_seconds) * 1000,
        })
    }

    /// The shared-data key of the slot that `trace` (a [`TraceKey`]) lives in.
    pub fn slot_key(&self, trace: &TraceKey) -> String {
        let slot = fnv1a(trace.0.as_bytes()) % u64::from(self.slots);
        let mut key = String::with_capacity(SLOT_KEY_PREFIX.len() + 8);
        key.push_str(SLOT_KEY_PREFIX);
        let _ = write!(key, "{slot}");
        key
    }

    /// The slot's value recording `env` for `trace` from `now_ms` on.
    pub fn entry(&self, trace: &TraceKey, env: &str, now_ms: u64) -> String {
        format!("{}|{}|{env}", now_ms.saturating_add(self.ttl_ms), trace.0)
    }

    /// The env recorded for `trace` in a slot's value, unless it expired or another trace
    /// has taken the slot since.
    pub fn lookup<'v>(
        &self,
        slot_value: &'v [u8],
        trace: &TraceKey,
        now_ms: u64,
    ) -> Option<&'v str> {
        let value = std::str::from_utf8(slot_value).ok()?;
        let (expires, rest) = value.split_once('|')?;
        let (recorded, env) = rest.rsplit_once('|')?;
        let alive = expires.parse::<u64>().ok()? > now_ms;
        (alive && recorded == trace.0).then_some(env)
    }
}

/// A trace id qualified by the header it came from, so ids of different formats never meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceKey(String);

impl TraceKey {
    pub fn new(header: &str, id: &str) -> Self {
        Self(format!("{header}={id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CorrelationTable {
        CorrelationTable::new(16, 30).unwrap()
    }

    #[test]
    fn disabled_without_slots_or_ttl() {
        assert_eq!(CorrelationTable::new(0, 30), None);
        assert_eq!(CorrelationTable::new(16, 0), None);
    }

    #[test]
    fn an_entry_is_found_until_it_expires() {
        let t = table();
        let trace = TraceKey::new("traceparent", "4bf92f3577b34da6a3ce929d0e0e4736");
        let entry = t.entry(&trace, "dev.proj1", 1_000);
        assert_eq!(t.lookup(entry.as_bytes(), &trace, 1_000), Some("dev.proj1"));
        assert_eq!(
            t.lookup(entry.as_bytes(), &trace, 30_999),
            Some("dev.proj1")
        );
        assert_eq!(t.lookup(entry.as_bytes(), &trace, 31_000), None);
    }

    #[test]
    fn another_trace_in_the_same_slot_is_a_miss() {
        let t = table();
        let a = TraceKey::new("x-request-id", "a|b");
        let b = TraceKey::new("x-request-id", "c");
        let entry = t.entry(&a, "dev", 0);
        assert_eq!(t.lookup(entry.as_bytes(), &a, 1), Some("dev"));
        assert_eq!(t.lookup(entry.as_bytes(), &b, 1), None);
        // The same id under another header is another trace.
        let other_header = TraceKey::new("x-b3-traceid", "a|b");
        assert_eq!(t.lookup(entry.as_bytes(), &other_header, 1), None);
    }

    #[test]
    fn garbage_in_a_slot_is_a_miss() {
        let t = table();
        let trace = TraceKey::new("x-request-id", "a");
        for junk in [&b""[..], b"|", b"x|x-request-id=a|dev", b"\xff\xfe", b"99"] {
            assert_eq!(t.lookup(junk, &trace, 0), None);
        }
    }

    #[test]
    fn slots_are_bounded_and_stable() {
        let t = table();
        let mut keys = std::collections::BTreeSet::new();
        for i in 0..10_000 {
            keys.insert(t.slot_key(&TraceKey::new("x-request-id", &i.to_string())));
        }
        // Memory cannot grow with traffic: 10k traces land in the 16 slots and no others.
        assert_eq!(keys.len(), 16);
        assert!(keys.iter().all(|k| k.starts_with(SLOT_KEY_PREFIX)));
        let k = TraceKey::new("traceparent", "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.slot_key(&k), t.slot_key(&k.clone()));
    }

    #[test]
    fn entries_stay_within_the_bound() {
        let t = table();
        let trace = TraceKey::new("x-request-id", &"i".repeat(MAX_OPAQUE_ID_LEN));
        let entry = t.entry(&trace, &"e".repeat(63), u64::MAX);
        assert!(entry.len() <= MAX_ENTRY_LEN, "{}", entry.len());
    }
}
