//! What the filter needs from its proxy. The Wasm build implements this with proxy-wasm
//! host calls (`adapter.rs`); native tests implement it with [`mock::MockHost`].

use crate::metrics::Metric;

pub trait Host {
    /// A request header by lower-case name; `None` when absent or not readable.
    fn request_header(&self, name: &str) -> Option<String>;
    fn set_request_header(&mut self, name: &str, value: &str);
    fn remove_request_header(&mut self, name: &str);
    /// A shared-data value and its CAS token.
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes a shared-data value; with `cas`, only if nobody wrote since. True on success.
    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
    fn now_unix_ms(&self) -> u64;
    fn increment(&mut self, metric: Metric);
}

#[cfg(test)]
pub mod mock {
    //! An in-memory host: headers, shared data (with CAS), a settable clock and counters.

    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashMap};
    use std::rc::Rc;

    use super::*;

    /// Shared data: key -> (value, CAS token).
    pub type SharedData = Rc<RefCell<HashMap<String, (Vec<u8>, u32)>>>;

    /// Shared data outlives a request, as in Envoy: clones of a `MockHost` share it.
    #[derive(Default, Clone)]
    pub struct MockHost {
        pub headers: BTreeMap<String, String>,
        pub shared: SharedData,
        pub counters: Rc<RefCell<BTreeMap<Metric, u64>>>,
        pub now_ms: u64,
    }

    impl MockHost {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn with_header(mut self, name: &str, value: &str) -> Self {
            self.headers.insert(name.to_owned(), value.to_owned());
            self
        }

        /// A new request on the same proxy: same shared data and counters, no headers.
        pub fn next_request(&self) -> Self {
            Self {
                headers: BTreeMap::new(),
                ..self.clone()
            }
        }

        pub fn count(&self, metric: Metric) -> u64 {
            self.counters.borrow().get(&metric).copied().unwrap_or(0)
        }

        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).map(String::as_str)
        }
    }

    impl Host for MockHost {
        fn request_header(&self, name: &str) -> Option<String> {
            self.headers.get(name).cloned()
        }
        fn set_request_header(&mut self, name: &str, value: &str) {
            self.headers.insert(name.to_owned(), value.to_owned());
        }
        fn remove_request_header(&mut self, name: &str) {
            self.headers.remove(name);
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
            shared.insert(key.to_owned(), (value.to_vec(), current + 1));
            true
        }
        fn now_unix_ms(&self) -> u64 {
            self.now_ms
        }
        fn increment(&mut self, metric: Metric) {
            *self.counters.borrow_mut().entry(metric).or_default() += 1;
        }
    }
}
