//! Watch caches with a namespace index. kube-runtime's `Store` answers by object or with
//! everything; a reconcile wants one namespace's pods, services and Istio objects, and
//! scanning every one of the cluster's for them was a quarter of a reconcile's time at 100
//! namespaces (`make bench-controller`). The index is kept by the same events that fill
//! the store, with the store's own semantics: a (re)list is built aside and swapped in
//! when it is done.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::runtime::reflector::{store::Writer, ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::Resource;

type Index<K> = HashMap<String, HashSet<ObjectRef<K>>>;

/// What applies watch events: a store's writer, indexed or not (tests fill either).
pub trait ApplyEvents<K> {
    fn apply_watcher_event(&mut self, event: &Event<K>);
}

impl<K> ApplyEvents<K> for Writer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn apply_watcher_event(&mut self, event: &Event<K>) {
        Writer::apply_watcher_event(self, event);
    }
}

/// The writing end: a kube-runtime writer and the index beside it.
pub struct IndexedWriter<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer: Writer<K>,
    dyntype: K::DynamicType,
    index: Arc<RwLock<Index<K>>>,
    /// The index of a list in progress (between `Init` and `InitDone`).
    building: Option<Index<K>>,
}

/// The reading end: the store, and its objects by namespace.
pub struct IndexedStore<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    index: Arc<RwLock<Index<K>>>,
}

impl<K: Resource + Clone + 'static> Clone for IndexedStore<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            index: Arc::clone(&self.index),
        }
    }
}

impl<K> IndexedWriter<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    pub fn new(dyntype: K::DynamicType) -> Self {
        Self {
            writer: Writer::new(dyntype.clone()),
            dyntype,
            index: Arc::default(),
            building: None,
        }
    }

    pub fn as_reader(&self) -> IndexedStore<K> {
        IndexedStore {
            store: self.writer.as_reader(),
            index: Arc::clone(&self.index),
        }
    }

    fn key(&self, object: &K) -> (String, ObjectRef<K>) {
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        (
            namespace,
            ObjectRef::from_obj_with(object, self.dyntype.clone()),
        )
    }
}

impl<K> Default for IndexedWriter<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    fn default() -> Self {
        Self::new(K::DynamicType::default())
    }
}

impl<K> ApplyEvents<K> for IndexedWriter<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn apply_watcher_event(&mut self, event: &Event<K>) {
        self.writer.apply_watcher_event(event);
        match event {
            Event::Apply(object) => {
                let (namespace, key) = self.key(object);
                if let Ok(mut index) = self.index.write() {
                    index.entry(namespace).or_default().insert(key);
                }
            }
            Event::Delete(object) => {
                let (namespace, key) = self.key(object);
                if let Ok(mut index) = self.index.write() {
                    if let Some(keys) = index.get_mut(&namespace) {
                        keys.remove(&key);
                    }
                }
            }
            Event::Init => self.building = Some(Index::new()),
            Event::InitApply(object) => {
                let (namespace, key) = self.key(object);
                self.building
                    .get_or_insert_with(Index::new)
                    .entry(namespace)
                    .or_default()
                    .insert(key);
            }
            Event::InitDone => {
                let built = self.building.take().unwrap_or_default();
                if let Ok(mut index) = self.index.write() {
                    *index = built;
                }
            }
        }
    }
}

impl<K> IndexedStore<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// Every object, as [`Store::state`].
    pub fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// The objects of namespace `namespace` ("" for cluster-scoped ones).
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let Ok(index) = self.index.read() else {
            return Vec::new();
        };
        index
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|key| self.store.get(key))
            .collect()
    }

    pub fn store(&self) -> &Store<K> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(ns: &str, name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn names(store: &IndexedStore<Pod>, ns: &str) -> Vec<String> {
        let mut names: Vec<String> = store
            .in_namespace(ns)
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_index_follows_the_store_through_events_and_relists() {
        let mut writer = IndexedWriter::<Pod>::default();
        let store = writer.as_reader();
        writer.apply_watcher_event(&Event::Init);
        for (ns, name) in [("a", "a1"), ("a", "a2"), ("b", "b1")] {
            writer.apply_watcher_event(&Event::InitApply(pod(ns, name)));
        }
        // A list in progress is not visible yet, as in the store.
        assert!(names(&store, "a").is_empty());
        writer.apply_watcher_event(&Event::InitDone);
        assert_eq!(names(&store, "a"), ["a1", "a2"]);
        assert_eq!(names(&store, "b"), ["b1"]);
        writer.apply_watcher_event(&Event::Apply(pod("b", "b2")));
        writer.apply_watcher_event(&Event::Apply(pod("b", "b2"))); // an update: once
        writer.apply_watcher_event(&Event::Delete(pod("a", "a1")));
        assert_eq!(names(&store, "a"), ["a2"]);
        assert_eq!(names(&store, "b"), ["b1", "b2"]);
        // A relist that no longer has a2 (deleted while the watch was down) drops it.
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(pod("b", "b1")));
        writer.apply_watcher_event(&Event::InitDone);
        assert!(names(&store, "a").is_empty());
        assert_eq!(names(&store, "b"), ["b1"]);
        assert_eq!(store.state().len(), 1, "the store agrees");
        assert!(names(&store, "nowhere").is_empty());
    }
}
