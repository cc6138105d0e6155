//! Hashes with a known purpose each.
//!
//! - [`fnv1a`]: the same in every VM, process and release (the std hasher is randomly
//!   seeded). Used where a hash is stored or shown: config digests, subset-name suffixes.
//! - [`FnvBuildHasher`]: FNV-1a for the filter's in-memory tables. Their keys come from
//!   the plugin config (trusted), and lookups of attacker-chosen keys cannot make a table
//!   whose keys the attacker did not choose degrade, so a fast unkeyed hash is safe there.
//! - [`keyed_hash`]: SipHash-1-3 under a secret key, for where the attacker does choose
//!   the keys: trace ids that pick a slot of the correlation table. Without the key, a
//!   client cannot aim many trace ids at one slot to evict other traces' entries.

use std::hash::{BuildHasherDefault, Hasher};

use siphasher::sip::SipHasher13;

pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// FNV-1a as a [`Hasher`].
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub type FnvBuildHasher = BuildHasherDefault<Fnv1a>;

/// A 128-bit secret for [`keyed_hash`].
pub type HashKey = [u64; 2];

/// SipHash-1-3 of `bytes` under `key`.
pub fn keyed_hash(key: HashKey, bytes: &[u8]) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(key[0], key[1]);
    hasher.write(bytes);
    hasher.finish()
}

/// The key as the 16 bytes it is kept as (little-endian halves), and back.
pub fn key_to_bytes(key: HashKey) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&key[0].to_le_bytes());
    out[8..].copy_from_slice(&key[1].to_le_bytes());
    out
}

pub fn key_from_bytes(bytes: &[u8]) -> Option<HashKey> {
    let bytes: &[u8; 16] = bytes.try_into().ok()?;
    let (a, b) = bytes.split_at(8);
    Some([
        u64::from_le_bytes(a.try_into().ok()?),
        u64::from_le_bytes(b.try_into().ok()?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv1a::default();
        h.write(b"a");
        assert_eq!(h.finish(), fnv1a(b"a"));
    }

    #[test]
    fn keyed_hash_depends_on_the_key() {
        let a = keyed_hash([1, 2], b"trace");
        assert_eq!(a, keyed_hash([1, 2], b"trace"));
        assert_ne!(a, keyed_hash([1, 3], b"trace"));
        assert_ne!(a, keyed_hash([1, 2], b"trace2"));
    }

    #[test]
    fn keys_round_trip_as_bytes() {
        let key = [0x0102_0304_0506_0708, u64::MAX];
        assert_eq!(key_from_bytes(&key_to_bytes(key)), Some(key));
        assert_eq!(key_from_bytes(b"short"), None);
    }
}
