//! The controller's watch caches: the pods, services and Istio objects it plans from, kept
//! by kube-runtime reflectors (one watch per kind for the whole cluster), so that a
//! reconcile reads memory instead of listing five kinds from the API server on every event.
//!
//! Objects are slimmed before they are cached, to what planning reads: a pod keeps its
//! name, namespace, labels, deletion mark and Ready condition, nothing else; every object
//! loses its managed fields and annotations (a Service keeps the original project's
//! `kt-virtual-environment/*` ones). See docs/performance.md's scale figures for what 10,000 pods
//! cost (`make bench-controller`).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, PodCondition, PodStatus, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::{store::Writer, Store};
use kube::ResourceExt;

use crate::crd::VirtualEnvironment;
use crate::existing::{Existing, Kind};
use crate::extension::ExtensionApi;
use crate::gamma::GatewayApi;
use crate::gateway::{GATEWAYS_ANNOTATION, HOSTS_ANNOTATION};
use crate::gateway_admission::GatewayCluster;
use crate::gateway_policy::GatewayPolicy;
use crate::indexed::{IndexedStore, IndexedWriter};
use crate::objects::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::plan::Snapshot;

/// The caches one controller reads; cheap to clone (the stores are shared).
#[derive(Clone)]
pub struct Caches {
    pub services: IndexedStore<Service>,
    pub pods: IndexedStore<Pod>,
    pub istio: Vec<(Kind, IndexedStore<DynamicObject>)>,
    pub policies: Store<GatewayPolicy>,
    /// Namespaces, their labels only: `istio.io/use-waypoint` on a namespace puts its
    /// services behind a waypoint (ambient mode).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// The controller's own store of VirtualEnvironments (every namespace's claims of
    /// gateway hosts); none in tests that do not need them.
    pub virtual_environments: Option<Store<VirtualEnvironment>>,
}

/// The writing ends of [`Caches`], for the reflectors (or a test) to fill.
pub struct Writers {
    pub services: IndexedWriter<Service>,
    pub pods: IndexedWriter<Pod>,
    pub istio: Vec<(Kind, IndexedWriter<DynamicObject>)>,
    pub policies: Writer<GatewayPolicy>,
    pub namespaces: Writer<PartialObjectMeta<Namespace>>,
}

/// Empty caches of the Istio kinds the controller reads with `api` (see
/// [`ExtensionApi::watched_kinds`]), and their writers.
pub fn caches(api: ExtensionApi, gateway_api: Option<GatewayApi>) -> (Caches, Writers) {
    let services = IndexedWriter::default();
    let pods = IndexedWriter::default();
    let policies = Writer::default();
    let namespaces = Writer::default();
    let istio: Vec<(Kind, IndexedWriter<DynamicObject>)> = api
        .watched_kinds(gateway_api)
        .into_iter()
        .map(|kind| (kind, IndexedWriter::new(kind.api_resource())))
        .collect();
    let caches = Caches {
        services: services.as_reader(),
        pods: pods.as_reader(),
        istio: istio.iter().map(|(k, w)| (*k, w.as_reader())).collect(),
        policies: policies.as_reader(),
        namespaces: namespaces.as_reader(),
        virtual_environments: None,
    };
    (
        caches,
        Writers {
            services,
            pods,
            istio,
            policies,
            namespaces,
        },
    )
}

/// Why a reconcile could not read the caches.
#[derive(Debug, thiserror::Error)]
#[error("the {kind} cache has not been filled after {waited:?}; the watch is failing (see the controller's log){hint}")]
pub struct NotReady {
    pub kind: &'static str,
    pub waited: Duration,
    pub hint: &'static str,
}

impl Caches {
    /// Waits until every cache holds its first full list: an empty cache must never plan
    /// a namespace away. Fails after `wait` (an Istio CRD missing keeps its watch failing).
    pub async fn ready(&self, wait: Duration) -> Result<(), NotReady> {
        let not_ready = |kind, hint| NotReady {
            kind,
            waited: wait,
            hint,
        };
        if !filled_within(self.services.store(), wait).await {
            return Err(not_ready("Service", ""));
        }
        if !filled_within(self.pods.store(), wait).await {
            return Err(not_ready("Pod", ""));
        }
        for (kind, store) in &self.istio {
            if !filled_within(store.store(), wait).await {
                return Err(not_ready(kind.name(), "; is Istio (its CRDs) installed?"));
            }
        }
        // Without every namespace's claims, a host another namespace holds would look free.
        if let Some(ves) = &self.virtual_environments {
            if !filled_within(ves, wait).await {
                return Err(not_ready("VirtualEnvironment", ""));
            }
        }
        // Without them, services behind a namespace's waypoint would look unenrolled.
        if !filled_within(&self.namespaces, wait).await {
            return Err(not_ready("Namespace", ""));
        }
        // Without the policies, shared gateways would look unadmitted and their plugin
        // objects pruned: wait for them as for the rest.
        if !filled_within(&self.policies, wait).await {
            return Err(not_ready(
                "GatewayPolicy",
                "; is virtual-env's GatewayPolicy CRD installed (kubectl apply -k deploy/)?",
            ));
        }
        Ok(())
    }

    /// What is in namespace `ns`, for planning.
    pub fn snapshot(&self, ns: &str) -> Snapshot {
        let here = |meta: &ObjectMeta| meta.namespace.as_deref() == Some(ns);
        let services = (self.services.in_namespace(ns).iter())
            .map(|s| (**s).clone())
            .collect();
        let pods = (self.pods.in_namespace(ns).iter())
            .map(|p| (**p).clone())
            .collect();
        let mut existing = Vec::new();
        let mut elsewhere = Vec::new();
        for (kind, store) in &self.istio {
            // The namespace's own by the index; plugin objects (a gateway's, for this
            // namespace, live in the gateway's) and Gateways wherever they are.
            let objects = if kind.is_plugin() || kind.is_gateway() {
                store.state()
            } else {
                store.in_namespace(ns)
            };
            for object in objects {
                let in_ns = here(&object.metadata);
                let gateway_plugin = kind.is_plugin()
                    && !in_ns
                    && object.metadata.name.as_deref().is_some_and(|name| {
                        crate::gateway::of_namespace(name, object.labels(), ns)
                    });
                if !(in_ns || gateway_plugin || kind.is_gateway()) {
                    continue;
                }
                let Some(value) = unpacked(&object) else {
                    continue;
                };
                let object = Existing::from_json(*kind, &value, ns);
                if in_ns && !kind.is_gateway() {
                    existing.push(object);
                } else {
                    elsewhere.push(object);
                }
            }
        }
        Snapshot {
            services,
            pods,
            existing,
            elsewhere,
            // Filled in by the reconciler from what the other namespaces published.
            peers: Default::default(),
            cluster: std::sync::Arc::new(self.gateway_cluster()),
            namespace_labels: self
                .namespaces
                .get(&kube::runtime::reflector::ObjectRef::new(ns))
                .map(|n| n.labels().clone())
                .unwrap_or_default(),
        }
    }

    /// What namespace `ns`'s calling-side plugin object in the cluster publishes for
    /// callers elsewhere (see `peer_namespaces.rs`): its table as last applied. Only an
    /// object a VirtualEnvironment of `ns` owns (controller reference) counts: a tenant may
    /// write an object of that name and label itself.
    pub fn published_by(&self, ns: &str) -> Option<crate::peer_namespaces::Published> {
        let owners: Vec<String> = self
            .virtual_environments
            .as_ref()?
            .state()
            .iter()
            .filter(|ve| ve.namespace().as_deref() == Some(ns))
            .filter_map(|ve| ve.uid())
            .collect();
        for (_, store) in self.istio.iter().filter(|(k, _)| k.is_plugin()) {
            for object in store.state() {
                let owned = object
                    .owner_references()
                    .iter()
                    .any(|r| r.controller == Some(true) && owners.contains(&r.uid));
                if object.namespace().as_deref() != Some(ns)
                    || object.name_any() != crate::objects::WASM_PLUGIN_NAME
                    || !owned
                {
                    continue;
                }
                let Some(object) = unpacked(&object) else {
                    continue;
                };
                // A TrafficExtension keeps it under `wasm`.
                let spec = &object["spec"];
                let config = match &spec["wasm"]["pluginConfig"] {
                    serde_json::Value::Null => &spec["pluginConfig"],
                    wasm => wasm,
                };
                if let Some(config) = crate::objects::plugin_config_of(config) {
                    return Some(crate::peer_namespaces::published(&config));
                }
            }
        }
        None
    }

    /// Plugin objects of either API, in any namespace, labelled `label: value`.
    pub fn plugins_labelled(&self, label: &str, value: &str) -> Vec<Existing> {
        let mut out = Vec::new();
        for (kind, store) in self.istio.iter().filter(|(k, _)| k.is_plugin()) {
            for object in store.state() {
                if object.labels().get(label).map(String::as_str) != Some(value) {
                    continue;
                }
                if let Some(value) = unpacked(&object) {
                    out.push(Existing::from_json(*kind, &value, ""));
                }
            }
        }
        out
    }

    /// The cluster as gateway entry needs it: every Gateway and the pods it selects, the
    /// users' gateway-bound VirtualServices, the GatewayPolicies, and every namespace's
    /// VirtualEnvironment with its services that ask to be entered through a gateway.
    fn gateway_cluster(&self) -> GatewayCluster {
        let mut objects = Vec::new();
        for (kind, store) in &self.istio {
            if !(kind.is_gateway() || kind.is_route() || *kind == Kind::VirtualService) {
                continue;
            }
            for object in store.state() {
                // Ours skipped before anything is unpacked: there is one per routed service
                // in the cluster, and only the users' gateway routes are wanted.
                let ours =
                    object.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
                if (*kind == Kind::VirtualService || kind.is_route()) && ours {
                    continue;
                }
                let Some(value) = unpacked(&object) else {
                    continue;
                };
                let bound = value["spec"]["gateways"]
                    .as_array()
                    .is_some_and(|g| g.iter().any(|g| g != "mesh"));
                // A route bound to a Gateway (beside a Service or not): its hostnames
                // there are a claim.
                let gateway_route = kind.is_route()
                    && value["spec"]["parentRefs"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["kind"] != "Service"));
                if kind.is_gateway() || bound || gateway_route {
                    objects.push(Existing::from_json(*kind, &value, ""));
                }
            }
        }
        let pods = self.pods.state();
        let policies = self
            .policies
            .state()
            .iter()
            .map(|p| (**p).clone())
            .collect();
        let ves = self
            .virtual_environments
            .as_ref()
            .map(|store| store.state())
            .unwrap_or_default();
        // Each VirtualEnvironment's namespace's services, by the index.
        let exposing = |s: &Service| {
            let annotations = s.annotations();
            annotations.contains_key(GATEWAYS_ANNOTATION)
                || annotations.contains_key(HOSTS_ANNOTATION)
        };
        let services: Vec<Vec<std::sync::Arc<Service>>> = ves
            .iter()
            .map(|ve| {
                let ns = ve.namespace().unwrap_or_default();
                let in_ns = self.services.in_namespace(&ns).into_iter();
                in_ns
                    .filter(|s| exposing(s) || !ve.spec.gateways.is_empty())
                    .collect()
            })
            .collect();
        let namespaces = ves.iter().zip(&services).map(|(ve, theirs)| {
            let theirs: Vec<&Service> = theirs.iter().map(|s| &**s).collect();
            (&**ve, theirs)
        });
        GatewayCluster::from_objects(
            objects.iter(),
            pods.iter().map(|p| &**p),
            policies,
            namespaces,
        )
    }
}

async fn filled_within<K>(store: &Store<K>, wait: Duration) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    matches!(
        tokio::time::timeout(wait, store.wait_until_ready()).await,
        Ok(Ok(()))
    )
}

/// A pod as planning reads it: name, namespace, labels, deletion mark, whether Istio's
/// ambient mode captured it (`plan::in_ambient_mode`), and whether it is Ready (its Ready
/// condition's type and status only). Everything else goes: at 10,000 pods the rest
/// (spec, other conditions and their messages and timestamps, owner references, uid,
/// resource version, other annotations) is most of the cache.
pub fn slim_pod(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    let annotations = meta
        .annotations
        .into_iter()
        .flatten()
        .filter(|(key, _)| key == crate::plan::AMBIENT_REDIRECTION)
        .collect::<std::collections::BTreeMap<_, _>>();
    // A pod in ambient mode keeps what its workload name is made of (`workload.rs`): its
    // waypoint knows its callers by it. Only its controller's kind and name.
    let ambient = !annotations.is_empty();
    let controller = meta
        .owner_references
        .into_iter()
        .flatten()
        .filter(|_| ambient)
        .find(|r| r.controller == Some(true))
        .map(|r| OwnerReference {
            kind: r.kind,
            name: r.name,
            controller: Some(true),
            ..OwnerReference::default()
        });
    pod.metadata = ObjectMeta {
        name: meta.name,
        generate_name: meta.generate_name.filter(|_| ambient),
        namespace: meta.namespace,
        labels: meta.labels,
        annotations: Some(annotations).filter(|a| !a.is_empty()),
        owner_references: controller.map(|c| vec![c]),
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    };
    pod.spec = None;
    let ready = pod
        .status
        .take()
        .and_then(|status| status.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| PodCondition {
            type_: c.type_,
            status: c.status,
            ..PodCondition::default()
        });
    pod.status = ready.map(|c| PodStatus {
        conditions: Some(vec![c]),
        ..PodStatus::default()
    });
}

/// A service without managed fields, and of its annotations only the gateway ones and
/// Istio's `exportTo` (copied to the envs' Services, `gamma.rs`).
pub fn slim_service(service: &mut Service) {
    if let Some(annotations) = service.metadata.annotations.as_mut() {
        annotations.retain(|k, _| {
            k == crate::gateway::GATEWAYS_ANNOTATION
                || k == crate::gateway::HOSTS_ANNOTATION
                || k == crate::objects::RULE_ANNOTATION
                || k == crate::gamma::EXPORT_TO_ANNOTATION
        });
    }
    service
        .metadata
        .annotations
        .take_if(|annotations| annotations.is_empty());
    service.metadata.managed_fields = None;
}

/// Where a cached Istio object keeps the rest of itself (its `spec`, ...) as one JSON
/// text: see [`slim_object`].
const PACKED: &str = "virtual-env.packed";

/// An Istio object as the caches keep it: without managed fields and annotations (a
/// `kubectl apply` annotation repeats the whole object), and with everything but its
/// metadata packed into one JSON text. serde_json's `Value` spends a B-tree node (some
/// 600 bytes) on every map however small: a VirtualService as the controller writes it
/// holds 17 KB of heap as a `Value` and about 3 KB (the whole cached object) with its
/// spec as text, and at 100 namespaces of 200 services the caches were a gigabyte
/// (`make bench-controller`). A reconcile unpacks only the objects it reads.
pub fn slim_object(object: &mut DynamicObject) {
    object.metadata.annotations = None;
    object.metadata.managed_fields = None;
    if object.data.get(PACKED).is_none() {
        if let Ok(text) = serde_json::to_string(&object.data) {
            object.data = serde_json::json!({ PACKED: text });
        }
    }
}

/// A cached object as the API server gave it (slimmed), its packed part unpacked.
pub fn unpacked(object: &DynamicObject) -> Option<serde_json::Value> {
    let mut value = serde_json::to_value(object).ok()?;
    if let Some(text) = object.data.get(PACKED).and_then(serde_json::Value::as_str) {
        let rest: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
        let map = value.as_object_mut()?;
        map.remove(PACKED);
        map.extend(rest);
    }
    Some(value)
}

#[cfg(test)]
pub mod testing {
    //! Caches filled as a reflector's first list fills them, for tests.

    use kube::runtime::watcher::Event;

    use super::*;
    use crate::indexed::ApplyEvents;

    pub fn fill<K: Clone + kube::Resource>(writer: &mut impl ApplyEvents<K>, objects: Vec<K>)
    where
        K::DynamicType: Clone + Eq + std::hash::Hash,
    {
        writer.apply_watcher_event(&Event::Init);
        for object in objects {
            writer.apply_watcher_event(&Event::InitApply(object));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }

    /// Caches holding `snapshot`'s services and pods and the Istio objects `istio`
    /// (`(kind, object as JSON)`).
    pub fn filled(snapshot: &Snapshot, istio: &[(Kind, serde_json::Value)]) -> Caches {
        filled_for(ExtensionApi::WasmPlugin, snapshot, istio, None)
    }

    /// As [`filled`], but the cache of `unfilled` never gets its first list (its watch
    /// fails, as when the cluster does not serve the kind).
    pub fn filled_but(
        snapshot: &Snapshot,
        istio: &[(Kind, serde_json::Value)],
        unfilled: Option<Kind>,
    ) -> Caches {
        filled_for(ExtensionApi::WasmPlugin, snapshot, istio, unfilled)
    }

    /// As [`filled_but`], for a controller that writes plugin objects with `api`.
    pub fn filled_for(
        api: ExtensionApi,
        snapshot: &Snapshot,
        istio: &[(Kind, serde_json::Value)],
        unfilled: Option<Kind>,
    ) -> Caches {
        let (caches, mut writers) = caches(api, Some(GatewayApi::ALL));
        let mut pods = snapshot.pods.clone();
        pods.iter_mut().for_each(slim_pod);
        fill(&mut writers.services, snapshot.services.clone());
        fill(&mut writers.pods, pods);
        fill(&mut writers.policies, snapshot.cluster.policies.clone());
        let mut namespace = PartialObjectMeta::<Namespace>::default();
        namespace.metadata.name = Some("default".into());
        namespace.metadata.labels = Some(snapshot.namespace_labels.clone());
        fill(&mut writers.namespaces, vec![namespace]);
        for (kind, writer) in &mut writers.istio {
            if Some(*kind) == unfilled {
                continue;
            }
            let objects = istio
                .iter()
                .filter(|(k, _)| k == kind)
                .filter_map(|(_, v)| serde_json::from_value::<DynamicObject>(v.clone()).ok())
                // Kept as the runtime's watches keep them.
                .map(|mut object| {
                    slim_object(&mut object);
                    object
                })
                .collect();
            fill(writer, objects);
        }
        caches
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodSpec};
    use serde_json::json;

    use super::testing::filled;
    use super::*;
    use crate::plan::fixtures::{pod, seed_snapshot};

    #[test]
    fn a_snapshot_holds_only_the_namespace_s_objects() {
        let mut snapshot = seed_snapshot();
        let mut elsewhere = pod("other-pod", "app-a", Some("dev"), true);
        elsewhere.metadata.namespace = Some("other".into());
        snapshot.pods.push(elsewhere);
        let vs = |ns: &str| {
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "reviews", "namespace": ns, "uid": "u"},
                   "spec": {"hosts": ["reviews"]}})
        };
        let caches = filled(
            &snapshot,
            &[
                (Kind::VirtualService, vs("default")),
                (Kind::VirtualService, vs("other")),
            ],
        );
        let here = caches.snapshot("default");
        assert_eq!(here.services.len(), 3);
        assert_eq!(here.pods.len(), 5);
        assert!(here.pods.iter().all(|p| p.name_any() != "other-pod"));
        assert_eq!(here.existing.len(), 1);
        assert_eq!(here.existing[0].name, "reviews");
        assert_eq!(here.existing[0].kind, Kind::VirtualService);
    }

    #[test]
    fn a_cached_istio_object_unpacks_to_what_the_api_server_gave_minus_its_noise() {
        let given = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default", "uid": "u",
                "labels": {"app": "reviews"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"hosts": ["reviews"], "gateways": ["mesh", "web/gw"],
                "http": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]},
            "status": {"validationMessages": []}});
        let mut object: DynamicObject = serde_json::from_value(given.clone()).unwrap();
        slim_object(&mut object);
        slim_object(&mut object); // idempotent: a second pass packs nothing again
        let mut expected = given;
        let meta = expected["metadata"].as_object_mut().unwrap();
        meta.remove("annotations");
        meta.remove("managedFields");
        assert_eq!(unpacked(&object).unwrap(), expected);
        // Kept as text: what a watch's object costs is its JSON, not a tree of maps.
        assert_eq!(object.data.as_object().map(|m| m.len()), Some(1));
    }

    #[test]
    fn a_slim_pod_keeps_what_planning_reads() {
        let mut full = pod("p", "app-a", Some("dev.proj1"), true);
        full.metadata.annotations = Some(BTreeMap::from([("big".into(), "x".repeat(4096))]));
        full.spec = Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ..Container::default()
            }],
            ..PodSpec::default()
        });
        if let Some(status) = full.status.as_mut() {
            status.container_statuses = Some(vec![ContainerStatus::default()]);
        }
        let mut slim = full.clone();
        slim_pod(&mut slim);
        assert!(slim.spec.is_none() && slim.metadata.annotations.is_none());
        assert_eq!(slim.labels(), full.labels());
        assert!(crate::plan::is_ready(&slim));
        let status = slim.status.unwrap();
        assert!(status.container_statuses.is_none());
        assert_eq!(
            status.conditions.as_ref().map(Vec::len),
            Some(1),
            "only Ready"
        );
        let mut not_ready = pod("q", "app-a", Some("dev"), false);
        slim_pod(&mut not_ready);
        assert!(!crate::plan::is_ready(&not_ready));
    }

    #[test]
    fn a_slim_service_keeps_the_original_projects_annotations_only() {
        let mut service = crate::plan::fixtures::service("app-a");
        let ours = [
            crate::gateway::GATEWAYS_ANNOTATION,
            crate::gateway::HOSTS_ANNOTATION,
            crate::plan::RULE_ANNOTATION,
        ];
        let mut annotations: BTreeMap<String, String> =
            ours.iter().map(|k| (k.to_string(), "x".into())).collect();
        annotations.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        service.metadata.annotations = Some(annotations);
        slim_service(&mut service);
        let kept: Vec<&str> = service.annotations().keys().map(String::as_str).collect();
        assert_eq!(kept.len(), 3);
        assert!(ours.iter().all(|k| kept.contains(k)), "{kept:?}");
    }

    #[tokio::test]
    async fn an_unfilled_cache_is_reported_not_planned_from() {
        let (caches, _writers) = caches(ExtensionApi::WasmPlugin, None);
        let err = caches.ready(Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(err.kind, "Service");
        let caches = filled(&seed_snapshot(), &[]);
        caches.ready(Duration::from_millis(20)).await.unwrap();
    }
}
