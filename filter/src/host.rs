//! What the filter needs from its proxy. The Wasm build implements this with its own
//! status-checked host calls (`adapter.rs` over `abi.rs`); tests and dry runs
//! (`dry_run.rs`) implement it in memory with [`mock::MockHost`].
//!
//! Header values come back as bytes: Envoy passes bytes 0x80-0xFF through in header
//! values, so nothing here may assume UTF-8; the request flow validates each value for its
//! purpose.
//!
//! A header may come in several lines (`baggage: a=b` then `baggage: virtual-env=x`): Envoy
//! keeps every line, its single-value getter returns the first, replacing or removing a
//! header acts on all its lines, and the application behind the proxy sees them all.

use crate::metrics::Metric;

pub trait Host {
    /// A request header's raw value by lower-case name (its first line, as Envoy's getter
    /// returns); `None` when absent or unreadable.
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Every request header line, in order, repeated names included (one host call);
    /// `None` when the host cannot give them.
    fn request_headers(&self) -> Option<Vec<(String, Vec<u8>)>>;
    /// Sets a header to one line, whatever lines it had.
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Removes every line of a header.
    fn remove_request_header(&mut self, name: &str);
    /// A shared-data value and its CAS token.
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes a shared-data value; with `cas`, only if nobody wrote since. True on success.
    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
    fn now_unix_ms(&self) -> u64;
    /// Fills `buf` with random bytes; false when the host has no randomness.
    fn random(&mut self, buf: &mut [u8]) -> bool;
    fn increment(&mut self, metric: Metric);
    /// In an ambient-mode waypoint: the workload that sent the request, as Istio's
    /// waypoint knows it (its `downstream_peer` filter state); `None` elsewhere, or when
    /// the proxy does not say.
    fn downstream_peer(&self) -> Option<Peer> {
        None
    }
    /// A response header's raw value (its first line), on the response path.
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Sets a response header to one line.
    fn set_response_header(&mut self, name: &str, value: &str);
    /// Removes every line of a response header.
    fn remove_response_header(&mut self, name: &str);
}

/// The calling workload, as an Istio waypoint identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub namespace: String,
    /// Istio's workload name: a Deployment's, a Job's, or the pod's; empty when the
    /// proxy gave none that is a workload name.
    pub workload: String,
}

pub mod mock {
    //! An in-memory host: a header map as Envoy keeps one (every line of a repeated
    //! header, in order; the getter returns the first), shared data (with CAS), a settable
    //! clock, seeded randomness and counters.

    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashMap};

    use std::rc::Rc;

    use super::*;

    /// Shared data: key -> (value, CAS token).
    pub type SharedData = Rc<RefCell<HashMap<String, (Vec<u8>, u32)>>>;

    /// Shared data outlives a request, as in Envoy: clones of a `MockHost` share it.
    #[derive(Clone)]
    pub struct MockHost {
        /// Header lines in order; a name may repeat.
        pub headers: Vec<(String, Vec<u8>)>,
        pub shared: SharedData,
        pub counters: Rc<RefCell<BTreeMap<Metric, u64>>>,
        pub now_ms: u64,
        /// 0: no randomness; else the byte pattern `random` fills in.
        pub random_seed: u8,
        /// What a waypoint would know of the calling workload.
        pub peer: Option<Peer>,
        /// The host fails to list the headers (`request_headers` gives `None`).
        pub unreadable_headers: bool,
        /// The response's header lines, on the response path.
        pub response_headers: Vec<(String, Vec<u8>)>,
    }

    impl Default for MockHost {
        fn default() -> Self {
            Self {
                headers: Vec::new(),
                shared: SharedData::default(),
                counters: Rc::default(),
                now_ms: 0,
                random_seed: 1,
                peer: None,
                unreadable_headers: false,
                response_headers: Vec::new(),
            }
        }
    }

    impl MockHost {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn with_header(self, name: &str, value: &str) -> Self {
            self.with_raw_header(name, value.as_bytes())
        }

        /// Adds a line: a name given twice is a header with two lines.
        pub fn with_raw_header(mut self, name: &str, value: &[u8]) -> Self {
            self.headers.push((name.to_owned(), value.to_vec()));
            self
        }

        /// Sent by `workload` of `namespace`, as a waypoint would know it.
        pub fn from_peer(mut self, namespace: &str, workload: &str) -> Self {
            self.peer = Some(Peer {
                namespace: namespace.to_owned(),
                workload: workload.to_owned(),
            });
            self
        }

        /// A new request on the same proxy: same shared data and counters, no headers.
        pub fn next_request(&self) -> Self {
            Self {
                headers: Vec::new(),
                response_headers: Vec::new(),
                ..self.clone()
            }
        }

        /// The response arrives with a header line.
        pub fn with_response_header(mut self, name: &str, value: &str) -> Self {
            self.response_headers
                .push((name.to_owned(), value.as_bytes().to_vec()));
            self
        }

        /// The first line of a response header, as text.
        pub fn response(&self, name: &str) -> Option<&str> {
            self.response_headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        }

        pub fn count(&self, metric: Metric) -> u64 {
            self.counters.borrow().get(&metric).copied().unwrap_or(0)
        }

        /// The first line of a header, as text.
        pub fn header(&self, name: &str) -> Option<&str> {
            self.header_bytes(name)
                .and_then(|v| std::str::from_utf8(v).ok())
        }

        pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        }

        /// Every line of a header, as text (lossy), as the application would receive them.
        pub fn header_lines(&self, name: &str) -> Vec<String> {
            self.headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect()
        }
    }

    impl Host for MockHost {
        fn request_header(&self, name: &str) -> Option<Vec<u8>> {
            self.header_bytes(name).map(<[u8]>::to_vec)
        }
        fn request_headers(&self) -> Option<Vec<(String, Vec<u8>)>> {
            (!self.unreadable_headers).then(|| self.headers.clone())
        }
        fn set_request_header(&mut self, name: &str, value: &str) {
            self.remove_request_header(name);
            self.headers
                .push((name.to_owned(), value.as_bytes().to_vec()));
        }
        fn remove_request_header(&mut self, name: &str) {
            self.headers.retain(|(n, _)| n != name);
        }
        fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.shared.borrow().get(key).cloned()
        }
        fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let mut shared = self.shared.borrow_mut();
            let current = shared.get(key).map_or(0, |(_, cas)| *cas);
            if cas.is_some_and(|cas| cas != current) {
                return false;
            }
            shared.insert(key.to_owned(), (value.to_vec(), current.wrapping_add(1)));
            true
        }
        fn now_unix_ms(&self) -> u64 {
            self.now_ms
        }
        fn downstream_peer(&self) -> Option<Peer> {
            self.peer.clone()
        }
        fn random(&mut self, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.random_seed.wrapping_mul((i as u8).wrapping_add(1));
            }
            self.random_seed != 0
        }
        fn increment(&mut self, metric: Metric) {
            *self.counters.borrow_mut().entry(metric).or_default() += 1;
        }
        fn response_header(&self, name: &str) -> Option<Vec<u8>> {
            self.response_headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        }
        fn set_response_header(&mut self, name: &str, value: &str) {
            self.remove_response_header(name);
            self.response_headers
                .push((name.to_owned(), value.as_bytes().to_vec()));
        }
        fn remove_response_header(&mut self, name: &str) {
            self.response_headers.retain(|(n, _)| n != name);
        }
    }
}
