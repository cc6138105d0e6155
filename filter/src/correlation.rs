//! The trace id -> env table kept in Envoy shared data.
//!
//! The inbound side of a sidecar records the env of each request under its trace ids; the
//! outbound side of the same sidecar looks a trace id up when the application forwarded
//! only its tracing headers. Shared data is common to all worker VMs of one Envoy, but has
//! no delete: a key once written stays for the life of the proxy. So the table is a fixed
//! set of slots (`virtual-env.trace.<n>`), a trace id hashes to one slot, a newer entry
//! overwrites an older one, and each entry carries its expiry. Memory is bounded by
//! slots x [`MAX_ENTRY_LEN`], whatever the traffic.
//!
//! The slot is chosen by a keyed hash (SipHash-1-3) under a random key that each proxy
//! makes once and keeps in its shared data (see [`correlation_key`]): without it, a client
//! cannot aim trace ids at the slots of other traces to evict them.

use std::fmt::Write;

use virtual_env_core::env::MAX_ENV_LEN;
use virtual_env_core::hash::{key_from_bytes, key_to_bytes, keyed_hash, HashKey};

use crate::host::Host;
use crate::trace::MAX_OPAQUE_ID_LEN;

/// Prefix of every slot's shared-data key.
pub const SLOT_KEY_PREFIX: &str = "virtual-env.trace.";
/// Where a proxy keeps its slot key.
pub const KEY_KEY: &str = "virtual-env.correlation.key";

/// The largest entry: expiry (u64 in decimal), separators, id and env.
pub const MAX_ENTRY_LEN: usize = 20 + 1 + MAX_OPAQUE_ID_LEN + 1 + MAX_ENV_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorrelationTable {
    slots: u32,
    ttl_ms: u64,
    key: HashKey,
}

impl CorrelationTable {
    /// `None` when correlation is disabled (no slots or no TTL).
    pub fn new(slots: u32, ttl_seconds: u32, key: HashKey) -> Option<Self> {
        (slots > 0 && ttl_seconds > 0).then_some(Self {
            slots,
            ttl_ms: u64::from(ttl_seconds) * 1000,
            key,
        })
    }

    /// The shared-data key of the slot that trace id `id` lives in.
    pub fn slot_key(&self, id: &str) -> String {
        let slot = keyed_hash(self.key, id.as_bytes()) % u64::from(self.slots);
        let mut key = String::with_capacity(SLOT_KEY_PREFIX.len() + 8);
        key.push_str(SLOT_KEY_PREFIX);
        let _ = write!(key, "{slot}");
        key
    }

    /// The slot's value recording `env` for `id` from `now_ms` on; `None` (nothing is
    /// written) if it would exceed [`MAX_ENTRY_LEN`].
    pub fn entry(&self, id: &str, env: &str, now_ms: u64) -> Option<String> {
        let entry = format!("{}|{id}|{env}", now_ms.saturating_add(self.ttl_ms));
        (entry.len() <= MAX_ENTRY_LEN).then_some(entry)
    }

    /// The env recorded for `id` in a slot's value, unless it expired or another trace
    /// has taken the slot since.
    pub fn lookup<'v>(&self, slot_value: &'v [u8], id: &str, now_ms: u64) -> Option<&'v str> {
        if slot_value.len() > MAX_ENTRY_LEN {
            return None;
        }
        let value = std::str::from_utf8(slot_value).ok()?;
        let (expires, rest) = value.split_once('|')?;
        let (recorded, env) = rest.rsplit_once('|')?;
        let alive = expires.parse::<u64>().ok()? > now_ms;
        (alive && recorded == id).then_some(env)
    }
}

/// This proxy's slot key: the one in shared data, or a new random one put there.
///
/// Envoy's shared data has no insert-if-absent, so two VMs that both find no key could
/// each write their own. That does not happen in Envoy: it runs every new plugin config in
/// a canary VM on the main thread before any worker's VM sees it, so the first key is
/// written before workers exist; later VMs only read it. `None` when the host has no
/// randomness (correlation is then off, never predictable).
pub fn correlation_key(host: &mut impl Host) -> Option<HashKey> {
    if let Some(key) = host
        .shared_data(KEY_KEY)
        .and_then(|(v, _)| key_from_bytes(&v))
    {
        return Some(key);
    }
    let mut bytes = [0u8; 16];
    if !host.random(&mut bytes) {
        return None;
    }
    let fresh = key_from_bytes(&bytes)?;
    host.set_shared_data(KEY_KEY, &key_to_bytes(fresh), None);
    // Whatever is there now is the proxy's key.
    host.shared_data(KEY_KEY)
        .and_then(|(v, _)| key_from_bytes(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;

    const KEY: HashKey = [7, 11];

    fn table() -> CorrelationTable {
        CorrelationTable::new(16, 30, KEY).unwrap()
    }

    #[test]
    fn disabled_without_slots_or_ttl() {
        assert_eq!(CorrelationTable::new(0, 30, KEY), None);
        assert_eq!(CorrelationTable::new(16, 0, KEY), None);
    }

    #[test]
    fn an_entry_is_found_until_it_expires() {
        let t = table();
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let entry = t.entry(id, "dev.proj1", 1_000).unwrap();
        assert_eq!(t.lookup(entry.as_bytes(), id, 1_000), Some("dev.proj1"));
        assert_eq!(t.lookup(entry.as_bytes(), id, 30_999), Some("dev.proj1"));
        assert_eq!(t.lookup(entry.as_bytes(), id, 31_000), None);
    }

    #[test]
    fn another_trace_in_the_same_slot_is_a_miss() {
        let t = table();
        let entry = t.entry("request-aaaaaaaaaaaa", "dev", 0).unwrap();
        assert_eq!(
            t.lookup(entry.as_bytes(), "request-aaaaaaaaaaaa", 1),
            Some("dev")
        );
        assert_eq!(t.lookup(entry.as_bytes(), "request-bbbbbbbbbbbb", 1), None);
    }

    #[test]
    fn garbage_in_a_slot_is_a_miss() {
        let t = table();
        let long = vec![b'1'; MAX_ENTRY_LEN + 1];
        for junk in [&b""[..], b"|", b"x|a|dev", b"\xff\xfe", b"99", &long] {
            assert_eq!(t.lookup(junk, "a", 0), None);
        }
    }

    #[test]
    fn slots_are_bounded_and_depend_on_the_key() {
        let t = table();
        let keys: std::collections::BTreeSet<_> = (0..10_000)
            .map(|i| t.slot_key(&format!("request-{i:012}")))
            .collect();
        // Memory cannot grow with traffic: 10k traces land in the 16 slots and no others.
        assert_eq!(keys.len(), 16);
        assert!(keys.iter().all(|k| k.starts_with(SLOT_KEY_PREFIX)));
        // Another proxy (another key) spreads the same ids differently.
        let other = CorrelationTable::new(1 << 20, 30, [8, 11]).unwrap();
        let mine = CorrelationTable::new(1 << 20, 30, KEY).unwrap();
        let differ = (0..64)
            .filter(|i| other.slot_key(&i.to_string()) != mine.slot_key(&i.to_string()))
            .count();
        assert!(differ > 60, "{differ}");
    }

    #[test]
    fn entries_never_exceed_the_bound() {
        let t = table();
        let id = "i".repeat(MAX_OPAQUE_ID_LEN);
        let entry = t.entry(&id, &"e".repeat(MAX_ENV_LEN), u64::MAX).unwrap();
        assert!(entry.len() <= MAX_ENTRY_LEN, "{}", entry.len());
        assert_eq!(
            t.entry(&format!("{id}x"), &"e".repeat(MAX_ENV_LEN), u64::MAX),
            None
        );
    }

    #[test]
    fn the_key_is_made_once_per_proxy_and_shared_by_its_vms() {
        let mut first = MockHost::new();
        let key = correlation_key(&mut first).unwrap();
        let mut second_vm = first.next_request();
        second_vm.random_seed = 99;
        assert_eq!(correlation_key(&mut second_vm), Some(key));
        let mut other_proxy = MockHost::new();
        other_proxy.random_seed = 5;
        assert_ne!(correlation_key(&mut other_proxy), Some(key));
        let mut no_random = MockHost::new();
        no_random.random_seed = 0;
        assert_eq!(correlation_key(&mut no_random), None);
    }
}
