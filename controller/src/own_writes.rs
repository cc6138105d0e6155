//! The versions of the objects this controller wrote last, so that the watch event its
//! own write causes does not reconcile the namespace again: that reconcile would find
//! everything as planned, and at 100 namespaces one env change would plan every namespace
//! twice. A change by anyone else (another resourceVersion) still reconciles, as does a
//! deletion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::{Resource, ResourceExt};

/// (kind, namespace, name) -> the resourceVersion this controller's write gave it.
type Versions = HashMap<(&'static str, String, String), String>;

/// Shared by the reconciles (which record) and the watches (which ask); cheap to clone.
#[derive(Clone, Default)]
pub struct OwnWrites(Arc<Mutex<Versions>>);

impl OwnWrites {
    /// Records `object` as the API server returned it from this controller's write.
    pub fn record(&self, kind: &'static str, object: &impl Resource) {
        let (Some(version), Ok(mut versions)) = (object.resource_version(), self.0.lock()) else {
            return;
        };
        let key = (
            kind,
            object.namespace().unwrap_or_default(),
            object.name_any(),
        );
        versions.insert(key, version);
    }

    /// Whether `object`, as a watch delivers it, is this controller's own last write of
    /// it (forgotten once seen: each write has one echo).
    pub fn is_echo(&self, kind: &'static str, object: &impl Resource) -> bool {
        let Ok(mut versions) = self.0.lock() else {
            return false;
        };
        let key = (
            kind,
            object.namespace().unwrap_or_default(),
            object.name_any(),
        );
        match (versions.get(&key), object.resource_version()) {
            (Some(ours), Some(seen)) if *ours == seen => {
                versions.remove(&key);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::api::{ApiResource, DynamicObject};

    use super::*;

    fn object(version: &str) -> DynamicObject {
        let resource = ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "networking.istio.io",
            "v1",
            "VirtualService",
        ));
        let mut object = DynamicObject::new("reviews", &resource).within("shop");
        object.metadata.resource_version = Some(version.into());
        object
    }

    #[test]
    fn only_the_version_written_is_an_echo_and_only_once() {
        let writes = OwnWrites::default();
        writes.record("VirtualService", &object("7"));
        assert!(
            !writes.is_echo("DestinationRule", &object("7")),
            "another kind"
        );
        assert!(
            !writes.is_echo("VirtualService", &object("8")),
            "someone else's change"
        );
        assert!(writes.is_echo("VirtualService", &object("7")));
        assert!(
            !writes.is_echo("VirtualService", &object("7")),
            "one echo per write"
        );
    }
}
