//! A request's headers as the host serializes them in one call
//! (`proxy_get_header_map_pairs`): one host call and one allocation for all of them,
//! where reading N headers one by one costs N of each.
//!
//! Layout (Proxy-Wasm ABI, little-endian): the pair count as u32; per pair the key size
//! and the value size as u32; then per pair the key bytes, a NUL, the value bytes, a NUL.
//! The bytes come from the host, but are checked like any input: a layout that does not
//! add up reads as no headers at all, never a panic.

/// The serialized header map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderPairs {
    bytes: Vec<u8>,
    /// (key start, key end, value start, value end) per pair, checked against `bytes`.
    index: Vec<(usize, usize, usize, usize)>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b) as usize)
}

impl HeaderPairs {
    /// Indexes `bytes`; a malformed layout gives an empty map.
    pub fn parse(bytes: Vec<u8>) -> Self {
        Self::try_parse(bytes).unwrap_or_default()
    }

    /// Indexes `bytes`; `None` for a malformed layout.
    pub fn try_parse(bytes: Vec<u8>) -> Option<Self> {
        let index = Self::index(&bytes)?;
        Some(Self { bytes, index })
    }

    fn index(bytes: &[u8]) -> Option<Vec<(usize, usize, usize, usize)>> {
        if bytes.is_empty() {
            return Some(Vec::new());
        }
        let count = u32_at(bytes, 0)?;
        // Each pair takes at least 8 size bytes and 2 NULs: a count beyond that is a lie.
        if count > bytes.len() / 10 {
            return None;
        }
        let mut index = Vec::with_capacity(count);
        let mut data = 4 + count * 8;
        for i in 0..count {
            let key_len = u32_at(bytes, 4 + i * 8)?;
            let value_len = u32_at(bytes, 8 + i * 8)?;
            let key = data;
            let value = key.checked_add(key_len)?.checked_add(1)?;
            let end = value.checked_add(value_len)?.checked_add(1)?;
            if end > bytes.len() {
                return None;
            }
            index.push((key, key + key_len, value, value + value_len));
            data = end;
        }
        Some(index)
    }

    /// The first value of header `name` (lower case, as Envoy keeps header names).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        self.index
            .iter()
            .find_map(|&(key, key_end, value, value_end)| {
                let key = self.bytes.get(key..key_end)?;
                (key == name).then(|| self.bytes.get(value..value_end))?
            })
    }

    /// Every pair in order, repeated names included; names as the host sent them (bytes
    /// that are not UTF-8 in a name make it unnamed: no carrier has such a name).
    pub fn lines(&self) -> Vec<(String, Vec<u8>)> {
        self.index
            .iter()
            .filter_map(|&(key, key_end, value, value_end)| {
                let key = std::str::from_utf8(self.bytes.get(key..key_end)?).unwrap_or("");
                Some((key.to_owned(), self.bytes.get(value..value_end)?.to_vec()))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Serializes pairs as the host does (tests and the in-memory host).
pub fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_headers_by_name_first_value_first() {
        let bytes = serialize(&[
            (":authority", b"app-a"),
            ("x-virtual-env", b"dev.proj1"),
            ("x-virtual-env", b"dev"),
            ("empty", b""),
        ]);
        let pairs = HeaderPairs::parse(bytes);
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs.get(":authority"), Some(&b"app-a"[..]));
        assert_eq!(pairs.get("x-virtual-env"), Some(&b"dev.proj1"[..]));
        assert_eq!(pairs.get("empty"), Some(&b""[..]));
        assert_eq!(pairs.get("absent"), None);
    }

    #[test]
    fn values_are_bytes_not_text() {
        let pairs = HeaderPairs::parse(serialize(&[("x", b"\xff\x00\x80")]));
        assert_eq!(pairs.get("x"), Some(&b"\xff\x00\x80"[..]));
    }

    #[test]
    fn a_layout_that_does_not_add_up_reads_as_no_headers() {
        assert!(HeaderPairs::parse(Vec::new()).is_empty());
        let good = serialize(&[("a", b"1"), ("b", b"2")]);
        for cut in 1..good.len() {
            let pairs = HeaderPairs::parse(good[..cut].to_vec());
            assert!(pairs.is_empty(), "cut at {cut}");
        }
        let mut lying = good.clone();
        lying[0] = 0xff;
        assert!(HeaderPairs::parse(lying).is_empty());
    }

    proptest! {
        #![proptest_config(crate::fuzz::cases())]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let pairs = HeaderPairs::parse(bytes);
            let _ = pairs.get("x-virtual-env");
        }

        #[test]
        fn what_is_serialized_is_found(
            pairs in proptest::collection::vec(("[a-z:-]{1,12}", proptest::collection::vec(any::<u8>(), 0..40)), 0..12)
        ) {
            let borrowed: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            let parsed = HeaderPairs::parse(serialize(&borrowed));
            prop_assert_eq!(parsed.len(), pairs.len());
            for (k, _) in &pairs {
                let first = pairs.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_slice());
                prop_assert_eq!(parsed.get(k), first);
            }
            prop_assert_eq!(parsed.lines(), pairs);
        }
    }
}
