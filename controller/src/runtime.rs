//! The controller's runtime: the watches that fill the caches and trigger reconciles,
//! and the two controllers (VirtualEnvironments, `reconcile.rs`; GatewayPolicies and
//! their edge guards, `reconcile_gateway_policy.rs`) run until shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::caches::{self, slim_object, slim_pod, slim_service};
use crate::crd::VirtualEnvironment;
use crate::existing::Kind;
use crate::gateway_policy::GatewayPolicy;
use crate::indexed::{ApplyEvents, IndexedWriter};
use crate::metrics::Metrics;
use crate::own_writes::OwnWrites;
use crate::peer_namespaces::PeerDirectory;
use crate::plan::Settings;
use crate::reconcile::{error_policy, reconcile, Context, RESYNC};
use crate::sweep::sweep_orphans;

/// Reconciles of different VirtualEnvironments at once (one VirtualEnvironment is never
/// reconciled twice at once).
const MAX_CONCURRENT_RECONCILES: u16 = 8;

/// The `VirtualEnvironment`s of the namespace an object is in.
pub(crate) fn in_same_namespace<K: Resource>(
    store: Store<VirtualEnvironment>,
) -> impl Fn(K) -> Vec<ObjectRef<VirtualEnvironment>> + Send + Sync + Clone + 'static {
    move |obj: K| {
        let ns = obj.meta().namespace.clone();
        store
            .state()
            .iter()
            .filter(|ve| ve.namespace() == ns)
            .map(|ve| ObjectRef::from_obj(&**ve))
            .collect()
    }
}

/// The `VirtualEnvironment`s of the namespace an object is in, unless the object is the
/// echo of this controller's own write of it (see `own_writes.rs`).
fn not_an_echo<K: Resource>(
    kind: Kind,
    own_writes: &OwnWrites,
    store: &Store<VirtualEnvironment>,
) -> impl Fn(K) -> Vec<ObjectRef<VirtualEnvironment>> + Send + Sync + Clone + 'static {
    let (in_namespace, own_writes) = (in_same_namespace(store.clone()), own_writes.clone());
    move |object: K| {
        if own_writes.is_echo(kind.name(), &object) {
            Vec::new()
        } else {
            in_namespace(object)
        }
    }
}

/// The `VirtualEnvironment`s of a namespace, for a change of the namespace itself.
fn of_namespace(
    store: Store<VirtualEnvironment>,
) -> impl Fn(PartialObjectMeta<Namespace>) -> Vec<ObjectRef<VirtualEnvironment>>
       + Send
       + Sync
       + Clone
       + 'static {
    move |ns: PartialObjectMeta<Namespace>| {
        let name = ns.name_any();
        store
            .state()
            .iter()
            .filter(|ve| ve.namespace().as_deref() == Some(name.as_str()))
            .map(|ve| ObjectRef::from_obj(&**ve))
            .collect()
    }
}

/// Every `VirtualEnvironment`, whatever the object.
pub(crate) fn every<K>(
    store: Store<VirtualEnvironment>,
) -> impl Fn(K) -> Vec<ObjectRef<VirtualEnvironment>> + Send + Sync + Clone + 'static {
    move |_: K| {
        store
            .state()
            .iter()
            .map(|ve| ObjectRef::from_obj(&**ve))
            .collect()
    }
}

/// Runs the controller until `shutdown` resolves: one watch per kind for the whole
/// cluster fills the caches reconciles read, and any change in a namespace with a
/// VirtualEnvironment (a pod, a service, anyone's VirtualService, DestinationRule or
/// WasmPlugin) reconciles it. A Gateway's change reconciles every VirtualEnvironment, and
/// so does a change of what one namespace publishes for its callers ([`PeerDirectory`]).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (mut caches, writers) = caches::caches(settings.extension_api, settings.gateway_api);
    let all = watcher::Config::default;
    let controller = Controller::new(
        Api::<VirtualEnvironment>::all(client.clone()),
        all().any_semantic(),
    )
    // Coalesce bursts (a rollout's pod events) into one reconcile, and bound how many run
    // at once: a Gateway's change or a published table queues every namespace, and each
    // reconcile holds its snapshot of the caches in memory while it writes.
    .with_config(
        ControllerConfig::default()
            .debounce(Duration::from_secs(1))
            .concurrency(MAX_CONCURRENT_RECONCILES),
    );
    let store = controller.store();
    // Every namespace's claims of gateway hosts and carriers, from a reflector of their
    // own, which also triggers the edge guards: a guard's reconcile then always sees the
    // VirtualEnvironment that triggered it.
    let (ve_store, ve_writer) = kube::runtime::reflector::store();
    caches.virtual_environments = Some(ve_store);
    let (replan, replans) = futures::channel::mpsc::unbounded();
    let peers = PeerDirectory::new(store.clone(), replan);
    // Events say the status's changes (`kubectl describe venv`); the pod's name tells
    // the replicas apart.
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| crate::events::REPORTER.to_owned());
    let ctx = Arc::new(
        Context::new(client.clone(), settings, metrics, caches, peers)
            .with_events(crate::events::Events::Api(client.clone(), instance)),
    );
    let pods = reflected(&client, writers.pods, slim_pod);
    let services = reflected(&client, writers.services, slim_service);
    // A GatewayPolicy decides which namespaces enter through a gateway; they change rarely.
    let policies = reflected(&client, writers.policies, |_| {});
    let namespaces = namespaces_watched(&client, writers.namespaces);
    let controller = controller
        // Another namespace published a change its callers must learn.
        .reconcile_on(replans)
        .watches_stream(pods, in_same_namespace(store.clone()))
        .watches_stream(
            services,
            not_an_echo(Kind::Service, &ctx.own_writes, &store),
        )
        .watches_stream(policies, every(store.clone()))
        .watches_stream(namespaces, of_namespace(store.clone()));
    let controller = watch_istio(controller, &client, writers.istio, &store, &ctx.own_writes);
    let policies = edge_guard_controller(&client, ve_writer);
    let shutdown = futures::FutureExt::shared(shutdown);
    let routing = controller
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, Arc::clone(&ctx))
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!("controller: {e}");
            }
        });
    let sweeper = sweep_periodically(Arc::clone(&ctx), shutdown.clone());
    let guards = policies
        .graceful_shutdown_on(shutdown)
        .run(
            crate::reconcile_gateway_policy::reconcile_policy,
            crate::reconcile_gateway_policy::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!("gateway policy controller: {e}");
            }
        });
    futures::join!(routing, guards, sweeper);
}

/// A watch of every `K` in the cluster, each object slimmed by `slim` and kept in
/// `writer`'s cache; yields the objects that changed.
fn reflected<K>(
    client: &Client,
    writer: impl ApplyEvents<K> + Send + 'static,
    slim: fn(&mut K),
) -> impl futures::Stream<Item = Result<K, watcher::Error>>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let events = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .modify(slim)
        .default_backoff();
    kept_in(events, writer).touched_objects()
}

/// The watch of namespaces, their labels only (`istio.io/use-waypoint` enrolls a
/// namespace's services in a waypoint), kept in `writer`'s cache; yields those that changed.
fn namespaces_watched(
    client: &Client,
    writer: Writer<PartialObjectMeta<Namespace>>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Namespace>, watcher::Error>> {
    let events = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    )
    .modify(|ns| {
        ns.metadata.annotations = None;
        ns.metadata.managed_fields = None;
    })
    .default_backoff();
    kept_in(events, writer).touched_objects()
}

/// `events` as they pass, applied to `writer` (kube-runtime's `reflect`, for any writer
/// of [`ApplyEvents`], the namespace-indexed ones included).
fn kept_in<K>(
    events: impl futures::Stream<Item = Result<Event<K>, watcher::Error>>,
    mut writer: impl ApplyEvents<K>,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> {
    futures::TryStreamExt::map_ok(events, move |event| {
        writer.apply_watcher_event(&event);
        event
    })
}

/// Sweeps orphaned gateway plugin objects ([`sweep_orphans`]) a minute after leadership
/// begins, then at every resync, until `shutdown`.
async fn sweep_periodically(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()>) {
    let sweeping = async {
        let mut wait = Duration::from_secs(60);
        loop {
            tokio::time::sleep(wait).await;
            wait = RESYNC;
            match sweep_orphans(&ctx).await {
                Ok(0) => {}
                Ok(swept) => info!(swept, "swept orphaned plugin objects"),
                Err(e) => warn!("sweeping orphaned plugin objects: {e}"),
            }
        }
    };
    tokio::select! {
        () = sweeping => {}
        () = shutdown => {}
    }
}

/// Istio's objects, cached and watched: a change in a namespace reconciles its
/// VirtualEnvironment (unless it is the echo of this controller's own write, see
/// `own_writes.rs`); a Gateway's change every one.
fn watch_istio(
    mut controller: Controller<VirtualEnvironment>,
    client: &Client,
    writers: Vec<(Kind, IndexedWriter<DynamicObject>)>,
    store: &Store<VirtualEnvironment>,
    own_writes: &OwnWrites,
) -> Controller<VirtualEnvironment> {
    for (kind, writer) in writers {
        let resource = kind.api_resource();
        let events = watcher(
            Api::<DynamicObject>::all_with(client.clone(), &resource),
            watcher::Config::default(),
        )
        .modify(slim_object)
        .default_backoff();
        let kept = kept_in(events, writer);
        controller = if kind.is_gateway() {
            // A Gateway (its selector, its listeners) decides where the gateway plugin
            // objects of any namespace go and what they admit: every namespace, but only
            // on a change of its spec (istiod writes a Gateway API Gateway's status on
            // every route attached to it), or when it goes.
            let objects = spec_changes(kept);
            controller.watches_stream_with(objects, every(store.clone()), resource)
        } else {
            let objects = kept.touched_objects();
            let reconciles = not_an_echo::<DynamicObject>(kind, own_writes, store);
            controller.watches_stream_with(objects, reconciles, resource)
        };
    }
    controller
}

/// The objects of `events` whose spec changed (a new `metadata.generation`) or that were
/// deleted; a status write, or the same object listed again, passes nothing.
fn spec_changes(
    events: impl futures::Stream<Item = Result<Event<DynamicObject>, watcher::Error>>,
) -> impl futures::Stream<Item = Result<DynamicObject, watcher::Error>> {
    let mut generations: std::collections::HashMap<String, Option<i64>> = Default::default();
    events.filter_map(move |event| {
        let key = |o: &DynamicObject| o.uid().unwrap_or_else(|| o.name_any());
        let out = match event {
            Ok(Event::Apply(o) | Event::InitApply(o)) => {
                let generation = o.metadata.generation;
                let seen = generations.insert(key(&o), generation);
                (seen != Some(generation)).then_some(Ok(o))
            }
            Ok(Event::Delete(o)) => {
                generations.remove(&key(&o));
                Some(Ok(o))
            }
            Ok(Event::Init | Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    })
}

/// The gateway owners' edge guards: one per GatewayPolicy, carrying the carriers of the
/// VirtualEnvironments it admits, so any VirtualEnvironment's change reconciles them. Its
/// watch of VirtualEnvironments fills `ve_writer`'s store, the namespaces' claims.
fn edge_guard_controller(
    client: &Client,
    ve_writer: Writer<VirtualEnvironment>,
) -> Controller<GatewayPolicy> {
    let all = watcher::Config::default;
    let policies = Controller::new(Api::<GatewayPolicy>::all(client.clone()), all()).with_config(
        ControllerConfig::default()
            .debounce(Duration::from_secs(1))
            .concurrency(2),
    );
    let policy_store = policies.store();
    let ves = watcher(Api::<VirtualEnvironment>::all(client.clone()), all())
        .default_backoff()
        .reflect(ve_writer)
        .touched_objects();
    policies.watches_stream(ves, move |_: VirtualEnvironment| {
        policy_store
            .state()
            .iter()
            .map(|p| ObjectRef::from_obj(&**p))
            .collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod spec_change_tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn gateway(generation: i64, status: &str) -> DynamicObject {
        let mut o = DynamicObject::new("public", &Kind::KubernetesGateway.api_resource());
        o.metadata = ObjectMeta {
            name: Some("public".into()),
            uid: Some("u1".into()),
            generation: Some(generation),
            ..ObjectMeta::default()
        };
        o.data = serde_json::json!({"status": status});
        o
    }

    /// istiod's status writes on a Gateway API Gateway reconcile nobody; a spec change or
    /// a deletion reconciles every namespace.
    #[tokio::test]
    async fn only_spec_changes_and_deletions_of_a_gateway_pass() {
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(gateway(1, "a"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(gateway(1, "attached 1 route"))),
            Ok(Event::Apply(gateway(1, "attached 2 routes"))),
            Ok(Event::Apply(gateway(2, "attached 2 routes"))),
            Ok(Event::Delete(gateway(2, "attached 2 routes"))),
        ];
        let passed: Vec<i64> = spec_changes(futures::stream::iter(events))
            .map(|o| o.unwrap().metadata.generation.unwrap())
            .collect()
            .await;
        assert_eq!(passed, [1, 2, 2]);
    }
}
