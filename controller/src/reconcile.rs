//! Reconciling: read the namespace, plan (pure, `plan.rs`), apply and prune (in the order
//! `transition.rs` computes), report the status.
//!
//! Writes use server-side apply under one field manager with full objects. Subsets and
//! routes an env needs exist before the plugin config selects them; those it no longer
//! needs go after (make before break).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use thiserror::Error;
use tracing::{info, instrument, warn};
use virtual_env_core::service_fqdn;

use crate::caches::{Caches, NotReady};
use crate::crd::{VirtualEnvironment, VirtualEnvironmentStatus, ROUTE_HEADER_SUFFIX_LEN};
use crate::existing::{Existing, Kind};
use crate::extension::{traffic_extension, ExtensionApi};
use crate::gamma::{GRPCRoute, HTTPRoute, MeshRoute};
use crate::gateway::FINALIZER;
use crate::istio::{DestinationRule, TrafficExtension, VirtualService, WasmPlugin};
use crate::metrics::Metrics;
use crate::own_writes::OwnWrites;
use crate::peer_namespaces::{published, PeerDirectory};
use crate::plan::{
    env_services_of, plan_namespace, plugin_config_of, plugin_config_value, Plan, PlanError,
    Settings, Snapshot, INBOUND_WASM_PLUGIN_NAME, OWNER_UID_LABEL, WASM_PLUGIN_NAME,
};
use crate::transition::{already, keep_failed_services, transition, Step};

pub const FIELD_MANAGER: &str = "virtual-env-controller";
/// Re-plan now and then even without events, to repair drift.
pub(crate) const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the {kind} resource is not served by this cluster: {hint}")]
    MissingCrd {
        kind: &'static str,
        hint: &'static str,
    },
    #[error("the VirtualEnvironment has no namespace")]
    NoNamespace,
    #[error("no randomness for the route header's suffix: {0}")]
    Random(getrandom::Error),
    #[error("{failed} writes failed; the VirtualEnvironment's status names them")]
    Apply { failed: usize },
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the route header chosen for this VirtualEnvironment was not kept in its status (is the CRD up to date?)")]
    RouteHeaderNotSaved,
    #[error(transparent)]
    Cache(#[from] NotReady),
}

/// How long a reconcile waits for the watch caches' first fill.
pub(crate) const CACHE_WAIT: Duration = Duration::from_secs(30);

/// A random suffix for a new route header name.
fn random_suffix() -> Result<[u8; ROUTE_HEADER_SUFFIX_LEN], Error> {
    let mut bytes = [0; ROUTE_HEADER_SUFFIX_LEN];
    getrandom::fill(&mut bytes).map_err(Error::Random)?;
    Ok(bytes)
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// What reconciles read: the watch caches of pods, services and Istio objects.
    pub caches: Caches,
    /// What each namespace's plan published for callers in the others.
    pub peers: PeerDirectory,
    /// The versions of this controller's own last writes: their watch events reconcile
    /// nothing.
    pub own_writes: OwnWrites,
    /// Consecutive failures per VirtualEnvironment, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Where the status's changes are said as Events: kept in memory unless
    /// [`Context::with_events`] says otherwise.
    pub events: crate::events::Events,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        caches: Caches,
        peers: PeerDirectory,
    ) -> Self {
        Self {
            client,
            settings,
            metrics,
            caches,
            peers,
            own_writes: OwnWrites::default(),
            failures: Mutex::new(HashMap::new()),
            events: crate::events::Events::Kept(Default::default()),
        }
    }

    /// Events published to the cluster (the controller), not kept in memory (tests).
    pub fn with_events(self, events: crate::events::Events) -> Self {
        Self { events, ..self }
    }

    fn failures(&self, key: &str, failed: bool) -> u32 {
        let Ok(mut failures) = self.failures.lock() else {
            return 0;
        };
        if failed {
            let n = failures.entry(key.to_owned()).or_default();
            *n = n.saturating_add(1);
            *n
        } else {
            failures.remove(key);
            0
        }
    }
}

fn key(ve: &VirtualEnvironment) -> String {
    format!("{}/{}", ve.namespace().unwrap_or_default(), ve.name_any())
}

/// One reconcile of one `VirtualEnvironment`. A failure is written into its status here,
/// before the error goes to [`error_policy`] for the retry.
#[instrument(skip_all, fields(namespace = ve.namespace().unwrap_or_default(), name = ve.name_any()))]
pub async fn reconcile(ve: Arc<VirtualEnvironment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = reconcile_namespace(Arc::clone(&ve), &ctx).await;
    if let (Err(error), Some(ns)) = (&result, ve.namespace()) {
        // Partial failures wrote their own, more precise status.
        if !matches!(error, Error::Apply { .. }) {
            let ves: Api<VirtualEnvironment> = Api::namespaced(ctx.client.clone(), &ns);
            let condition = condition(&ve, false, "ReconcileError", &error.to_string());
            if let Err(e) = patch_condition(&ves, &ve, condition).await {
                warn!("cannot write the status: {e}");
            }
        }
    }
    result
}

/// `ve` with its route header in force: as it is, or with one saved now; `None` when the
/// save met a newer version of the object (409), to be read again.
async fn with_route_header(
    api: &NamespaceApi,
    ve: Arc<VirtualEnvironment>,
) -> Result<Option<Arc<VirtualEnvironment>>, Error> {
    if ve.route_header_in_force().is_some() {
        return Ok(Some(ve));
    }
    match record_route_header(api, &ve).await {
        Ok(saved) => Ok(Some(Arc::new(saved))),
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Saves a new route header (the spec's name and a random suffix) in the status, keeping
/// the rest of it; returns the object as the API server returned it, to plan from.
async fn record_route_header(
    api: &NamespaceApi,
    ve: &VirtualEnvironment,
) -> Result<VirtualEnvironment, Error> {
    let named = ve.clone().with_route_header(random_suffix()?);
    let status = VirtualEnvironmentStatus {
        route_header: named.status.and_then(|s| s.route_header),
        ..ve.status.clone().unwrap_or_default()
    };
    // With the resourceVersion read, a stale cache (another replica, or an earlier run of
    // this one, already saved a suffix) gets 409 Conflict and a retry from fresh state,
    // never an overwrite of the suffix already in force.
    let mut patch = json!({
        "apiVersion": "env.alibaba.com/v1alpha1",
        "kind": "VirtualEnvironment",
        "status": status,
    });
    if let Some(version) = &ve.metadata.resource_version {
        patch["metadata"] = json!({ "resourceVersion": version });
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let saved = timed(
        api.ves
            .patch_status(&ve.name_any(), &params, &Patch::Apply(&patch)),
    )
    .await?;
    if saved.route_header_in_force().is_none() {
        // The API server dropped it (an older CRD without the field?): do not route by a
        // name nobody kept.
        return Err(Error::RouteHeaderNotSaved);
    }
    Ok(saved)
}

/// Only the Ready condition, merged into the status as it is in the cluster: an error
/// reported from an object read before this reconcile saved its route header must not
/// take the route header (or anything else) out of the status.
async fn patch_condition(
    api: &Api<VirtualEnvironment>,
    ve: &VirtualEnvironment,
    condition: Condition,
) -> Result<(), Error> {
    let patch = json!({"status": {
        "conditions": [condition],
        "observedGeneration": ve.metadata.generation,
    }});
    timed(api.patch_status(
        &ve.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    ))
    .await?;
    Ok(())
}

/// The namespace's APIs one reconcile uses.
struct NamespaceApi {
    ns: String,
    ves: Api<VirtualEnvironment>,
    vss: Api<VirtualService>,
    drs: Api<DestinationRule>,
    services: Api<Service>,
    http_routes: Api<HTTPRoute>,
    grpc_routes: Api<GRPCRoute>,
}

impl NamespaceApi {
    fn new(client: &Client, ns: &str) -> Self {
        Self {
            ns: ns.to_owned(),
            ves: Api::namespaced(client.clone(), ns),
            vss: Api::namespaced(client.clone(), ns),
            drs: Api::namespaced(client.clone(), ns),
            services: Api::namespaced(client.clone(), ns),
            http_routes: Api::namespaced(client.clone(), ns),
            grpc_routes: Api::namespaced(client.clone(), ns),
        }
    }
}

/// read -> plan (pure, `plan.rs`) -> apply and prune in the order of `transition.rs` ->
/// status.
async fn reconcile_namespace(ve: Arc<VirtualEnvironment>, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = ve.namespace().ok_or(Error::NoNamespace)?;
    let api = NamespaceApi::new(&ctx.client, &ns);
    if ve.metadata.deletion_timestamp.is_some() {
        ctx.peers
            .publish(&ns, None, |other| ctx.caches.published_by(other));
        return delete_elsewhere(&api, ctx, &ve).await;
    }

    // One VirtualEnvironment per namespace: the oldest one rules, the others say so.
    if let Some(ruler) = other_ruler(&api, ctx, &ve).await? {
        let message = format!(
            "VirtualEnvironment {} already manages namespace {ns}; only one is used per namespace",
            ruler.name_any()
        );
        patch_status(ctx, &api.ves, &ve, not_ready(&ve, "Conflict", &message)).await?;
        return Ok(Action::await_change());
    }

    // The route header's suffix is chosen once and saved in the status before anything
    // uses it: if the save fails nothing is applied, and the next reconcile finds it.
    let Some(ve) = with_route_header(&api, ve).await? else {
        // Read from a stale cache: the object changed (perhaps a suffix saved by another
        // run). Not a failure; plan again from the fresh object soon.
        return Ok(Action::requeue(Duration::from_secs(1)));
    };

    let mut snapshot = read(&api, ctx).await?;
    snapshot.peers = ctx
        .peers
        .others(&ns, |other| ctx.caches.published_by(other));
    let Some(plan) = plan_and_publish(&api, ctx, &ve, &snapshot).await? else {
        return Ok(Action::await_change());
    };
    ensure_finalizer(&api, &ve, &plan, &snapshot).await?;
    let failures = apply_plan(&api, ctx, &ve, &plan, &snapshot).await;
    if !failures.is_empty() {
        let message = format!(
            "{} of the namespace's writes failed and are retried with backoff: {}",
            failures.len(),
            failures.join("; ")
        );
        warn!("{message}");
        patch_status(ctx, &api.ves, &ve, not_ready(&ve, "ApplyFailed", &message)).await?;
        return Err(Error::Apply {
            failed: failures.len(),
        });
    }

    patch_status(ctx, &api.ves, &ve, ready(&ve, &plan)).await?;
    ctx.failures(&key(&ve), false);
    ctx.metrics.reconciled(started.elapsed());
    info!(
        services = plan.routed_services(),
        envs = plan.envs.len(),
        skipped = plan.skipped.len(),
        "reconciled"
    );
    Ok(Action::requeue(RESYNC))
}

/// Plans the namespace and publishes its table for callers elsewhere; a plan that fails
/// is reported in the status (`None`: nothing to apply).
async fn plan_and_publish(
    api: &NamespaceApi,
    ctx: &Context,
    ve: &VirtualEnvironment,
    snapshot: &Snapshot,
) -> Result<Option<Plan>, Error> {
    match plan_namespace(ve, snapshot, &ctx.settings) {
        Ok(plan) => {
            let mut now = published(&plan.plugin_config);
            now.gateway_claims = plan.gateway_claims.clone();
            ctx.peers
                .publish(&api.ns, Some(now), |other| ctx.caches.published_by(other));
            Ok(Some(plan))
        }
        Err(e) => {
            warn!("not applying anything: {e}");
            let reason = match e {
                PlanError::WasmPluginTaken(..) => "Conflict",
                PlanError::ConfigTooLarge { .. } => "ConfigTooLarge",
                _ => "InvalidSpec",
            };
            patch_status(ctx, &api.ves, ve, not_ready(ve, reason, &e.to_string())).await?;
            Ok(None)
        }
    }
}

/// Objects in other namespaces have no owner reference to collect them: a finalizer
/// deletes them with the VirtualEnvironment. Added before the first is written.
async fn ensure_finalizer(
    api: &NamespaceApi,
    ve: &VirtualEnvironment,
    plan: &Plan,
    snapshot: &Snapshot,
) -> Result<(), Error> {
    let owner_uid = ve.uid();
    let owns_elsewhere = !plan.gateway_plugins.is_empty()
        || snapshot
            .elsewhere
            .iter()
            .any(|e| e.kind.is_plugin() && e.managed_by(owner_uid.as_deref()));
    if owns_elsewhere && !ve.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = ve.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        patch_finalizers(&api.ves, ve, finalizers).await?;
    }
    Ok(())
}

/// Reads what is in the namespace from the watch caches: services, pods, and whatever
/// VirtualServices, DestinationRules and WasmPlugins are there, whoever wrote them (read
/// untyped: one object outside the controller's own types must not stall the namespace).
async fn read(api: &NamespaceApi, ctx: &Context) -> Result<Snapshot, Error> {
    ctx.caches.ready(CACHE_WAIT).await?;
    Ok(ctx.caches.snapshot(&api.ns))
}

/// Applies `plan` and prunes what it no longer needs, make before break
/// (`transition.rs`): union objects, the plugin objects, then the new objects and the
/// prunes. One failed write does not stop the others; returns what failed.
async fn apply_plan(
    api: &NamespaceApi,
    ctx: &Context,
    ve: &VirtualEnvironment,
    plan: &Plan,
    snapshot: &Snapshot,
) -> Vec<String> {
    let owner_uid = ve.uid();
    // The env Services it wrote are in the services cache, not among the Istio objects.
    let (env_services, _) = env_services_of(snapshot, &api.ns, owner_uid.as_deref());
    let owned: Vec<Existing> = snapshot
        .existing
        .iter()
        .filter(|e| e.managed_by(owner_uid.as_deref()))
        .cloned()
        .chain(env_services)
        .collect();
    let steps = transition(plan, &owned);
    let mut failures = Vec::new();
    let mut failed_services = BTreeSet::new();
    for step in &steps.before {
        if let Err(e) = write_step(step, api, ctx).await {
            failures.push(format!("{}: {e}", step.describe()));
            failed_services.extend(step.service());
        }
    }
    let wasm_plugin = calling_side_plugin(plan, &owned, &failed_services, api, ctx);
    let kind = ctx.settings.extension_api.kind().name();
    // The called side's plugin first: until the calling side's is updated, an older
    // controller's single plugin object still covers both sides. It routes nothing, so
    // its failure holds nothing back.
    let elsewhere = snapshot
        .elsewhere
        .iter()
        .filter(|e| e.managed_by(owner_uid.as_deref()));
    let ours: Vec<&Existing> = owned.iter().chain(elsewhere).collect();
    let current = |plugin: &WasmPlugin| is_current(ctx, &ours, plugin);
    match apply_plugin(
        ctx,
        &plan.inbound_wasm_plugin,
        current(&plan.inbound_wasm_plugin),
    )
    .await
    {
        Ok(()) => ctx.metrics.applied(kind),
        Err(e) => failures.push(format!("{kind} {INBOUND_WASM_PLUGIN_NAME}: {e}")),
    }
    match apply_plugin(ctx, &wasm_plugin, current(&wasm_plugin)).await {
        Ok(()) => {
            ctx.metrics.applied(kind);
            let may_go_on = apply_routing_plugins(
                ctx,
                plan,
                &current,
                !failed_services.is_empty(),
                &mut failures,
            )
            .await;
            if !may_go_on {
                return failures;
            }
            for step in &steps.after {
                if step.service().is_some_and(|s| failed_services.contains(&s)) {
                    continue;
                }
                if let Err(e) = write_step(step, api, ctx).await {
                    failures.push(format!("{}: {e}", step.describe()));
                }
            }
        }
        // The old config may still select what the later steps would remove: stop here.
        Err(e) => failures.push(format!("{kind} {WASM_PLUGIN_NAME}: {e}")),
    }
    failures
}

/// The plugin objects that route by the calling side's table, after it: the gateways'
/// and the waypoints'. False when a waypoint's could not be written: its old config may
/// still select what the later steps remove.
async fn apply_routing_plugins(
    ctx: &Context,
    plan: &Plan,
    current: &(dyn Fn(&WasmPlugin) -> bool + Sync),
    services_failed: bool,
    failures: &mut Vec<String>,
) -> bool {
    let kind = ctx.settings.extension_api.kind().name();
    for plugin in &plan.gateway_plugins {
        match apply_plugin(ctx, plugin, current(plugin)).await {
            Ok(()) => ctx.metrics.applied(kind),
            Err(e) => failures.push(format!(
                "{kind} {} in namespace {}: {e}",
                plugin.name_any(),
                plugin.namespace().unwrap_or_default()
            )),
        }
    }
    // While a service's routes could not be written, the waypoints keep what they have.
    if services_failed {
        return true;
    }
    let mut written = true;
    for plugin in &plan.waypoint_plugins {
        match apply_plugin(ctx, plugin, current(plugin)).await {
            Ok(()) => ctx.metrics.applied(kind),
            Err(e) => {
                written = false;
                failures.push(format!("{kind} {}: {e}", plugin.name_any()));
            }
        }
    }
    written
}

/// The calling side's plugin object to apply: the plan's, except that a service whose
/// objects could not be written keeps what the plugin object in force gives it, so that
/// sidecars never select subsets that were not written.
fn calling_side_plugin(
    plan: &Plan,
    owned: &[Existing],
    failed_services: &BTreeSet<String>,
    api: &NamespaceApi,
    ctx: &Context,
) -> WasmPlugin {
    let mut wasm_plugin = plan.wasm_plugin.clone();
    if failed_services.is_empty() {
        return wasm_plugin;
    }
    let previous = owned
        .iter()
        .find(|e| e.kind == ctx.settings.extension_api.kind() && e.name == WASM_PLUGIN_NAME)
        .and_then(|e| {
            // A TrafficExtension keeps it under `wasm`.
            let wasm = &e.spec["wasm"]["pluginConfig"];
            plugin_config_of(if wasm.is_null() {
                &e.spec["pluginConfig"]
            } else {
                wasm
            })
        });
    let config = keep_failed_services(
        &plan.plugin_config,
        previous.as_ref(),
        failed_services,
        |name| service_fqdn(name, &api.ns, &ctx.settings.cluster_domain),
    );
    wasm_plugin.spec.plugin_config = plugin_config_value(&config);
    wasm_plugin
}

/// Whether the plugin object in force (one of `ours`) already is `plugin`, in the API in
/// use: then it is not written again (also for the gateway policies' edge guards).
pub(crate) fn is_current(ctx: &Context, ours: &[&Existing], plugin: &WasmPlugin) -> bool {
    ours.iter()
        .find(|e| {
            e.kind == ctx.settings.extension_api.kind()
                && e.name == plugin.name_any()
                && Some(e.namespace.as_str()) == plugin.namespace().as_deref()
        })
        .is_some_and(|e| match ctx.settings.extension_api {
            ExtensionApi::WasmPlugin => already(&plugin.spec, Some(e)),
            ExtensionApi::TrafficExtension => already(&traffic_extension(plugin).spec, Some(e)),
        })
}

/// A VirtualEnvironment being deleted: its objects in other namespaces go (those in its
/// own namespace are collected through their owner references), then its finalizer.
async fn delete_elsewhere(
    api: &NamespaceApi,
    ctx: &Context,
    ve: &VirtualEnvironment,
) -> Result<Action, Error> {
    if !ve.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    // Listed from the API server by the owner label, not read from the caches: a plugin
    // object applied just before the deletion may not be in them yet, and nothing would
    // ever sweep it.
    let Some(owner_uid) = ve.uid() else {
        return Ok(Action::await_change());
    };
    let selector = format!("{OWNER_UID_LABEL}={owner_uid}");
    let kinds = ctx
        .settings
        .extension_api
        .watched_kinds(ctx.settings.gateway_api);
    for kind in kinds.into_iter().filter(|k| k.is_plugin()) {
        let all: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &kind.api_resource());
        let listed = match timed(all.list(&ListParams::default().labels(&selector))).await {
            Ok(list) => list,
            // The kind is not served (any more): nothing of it to delete.
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        for object in listed.items {
            let Ok(value) = serde_json::to_value(&object) else {
                continue;
            };
            let object = Existing::from_json(kind, &value, "");
            if object.managed_by(Some(&owner_uid)) && prune_plugin(ctx, &object).await? {
                ctx.metrics.pruned(object.kind.name());
            }
        }
    }
    let rest: Vec<String> = ve
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(&api.ves, ve, rest).await?;
    info!("deleted the gateway plugin objects; finalizer removed");
    Ok(Action::await_change())
}

/// Sets the finalizers, if the object is still the version read (else 409: retried).
async fn patch_finalizers(
    api: &Api<VirtualEnvironment>,
    ve: &VirtualEnvironment,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": ve.resource_version(),
    }});
    timed(api.patch(
        &ve.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    ))
    .await?;
    Ok(())
}

/// Retries with exponential backoff (5 s doubling to 5 min); `reconcile` has already
/// written why into the status.
pub fn error_policy(ve: Arc<VirtualEnvironment>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed();
    let delay = backoff(ctx.failures(&key(&ve), true));
    warn!(namespace = ve.namespace(), name = ve.name_any(), %error, ?delay, "reconcile failed, retrying");
    Action::requeue(delay)
}

/// The delay before retry number `failures`: 5 s, doubling, at most 5 min.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.clamp(1, 7) - 1;
    Duration::from_secs(5 << doublings).min(Duration::from_secs(300))
}

/// Another VirtualEnvironment that manages `ve`'s namespace, if one does. Read from the
/// controller's cache of VirtualEnvironments when it holds `ve`; a conflict found there is
/// confirmed by a list from the API (that cache is another watch's, and may still hold an
/// older VirtualEnvironment that was deleted: then `ve` rules, and a conflict reported
/// from the cache would wait for a change that never comes). A VirtualEnvironment newer
/// than `ve` that the cache misses cannot rule.
async fn other_ruler(
    api: &NamespaceApi,
    ctx: &Context,
    ve: &VirtualEnvironment,
) -> Result<Option<VirtualEnvironment>, Error> {
    let another = |ves: &[VirtualEnvironment]| {
        ruling(ves)
            .filter(|r| r.name_any() != ve.name_any())
            .cloned()
    };
    if let Some(store) = &ctx.caches.virtual_environments {
        let here: Vec<VirtualEnvironment> = store
            .state()
            .iter()
            .filter(|other| other.namespace() == ve.namespace())
            .map(|other| (**other).clone())
            .collect();
        if here.iter().any(|other| other.uid() == ve.uid()) && another(&here).is_none() {
            return Ok(None);
        }
    }
    let listed = api.ves.list(&ListParams::default()).await?.items;
    Ok(another(&listed))
}

/// The VirtualEnvironment that manages a namespace: the oldest, then by name.
fn ruling(ves: &[VirtualEnvironment]) -> Option<&VirtualEnvironment> {
    ves.iter()
        .min_by_key(|ve| (ve.metadata.creation_timestamp.clone(), ve.name_any()))
}

/// One write of a transition.
async fn write_step(step: &Step, api: &NamespaceApi, ctx: &Context) -> Result<(), Error> {
    match step {
        Step::DestinationRule(dr) => {
            apply(ctx, &api.drs, dr, Kind::DestinationRule).await?;
            ctx.metrics.applied("DestinationRule");
        }
        Step::VirtualService(vs) => {
            apply(ctx, &api.vss, vs, Kind::VirtualService).await?;
            ctx.metrics.applied("VirtualService");
        }
        Step::EnvService(service) => {
            apply(ctx, &api.services, service, Kind::Service).await?;
            ctx.metrics.applied("Service");
        }
        Step::MeshRoute(route) => {
            match route {
                MeshRoute::Http(r) => apply(ctx, &api.http_routes, r, Kind::HttpRoute).await?,
                MeshRoute::Grpc(r) => apply(ctx, &api.grpc_routes, r, Kind::GrpcRoute).await?,
            }
            ctx.metrics.applied(route.kind().name());
        }
        Step::WasmPlugin => {}
        Step::Prune(object) => {
            let deleted = match object.kind {
                Kind::VirtualService => prune(&api.vss, object).await?,
                Kind::DestinationRule => prune(&api.drs, object).await?,
                Kind::HttpRoute => prune(&api.http_routes, object).await?,
                Kind::GrpcRoute => prune(&api.grpc_routes, object).await?,
                Kind::Service => prune(&api.services, object).await?,
                // In the namespace, or a gateway's plugin object in the gateway's.
                Kind::WasmPlugin | Kind::TrafficExtension => prune_plugin(ctx, object).await?,
                Kind::Gateway | Kind::KubernetesGateway => false,
            };
            if deleted {
                ctx.metrics.pruned(object.kind.name());
            }
        }
    }
    Ok(())
}

/// How long one write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(WRITE_TIMEOUT, call)
        .await
        .map_err(|_| Error::Timeout(WRITE_TIMEOUT))?
        .map_err(Error::from)
}

/// An Istio resource the API server does not know (404 on the collection) means Istio's
/// CRDs are missing; any other error is passed on.
fn istio_error(kind: &'static str, error: kube::Error) -> Error {
    match error {
        kube::Error::Api(e) if e.code == 404 => Error::MissingCrd {
            kind,
            hint: "install Istio (its CRDs) before virtual-env",
        },
        e => e.into(),
    }
}

/// Server-side applies `object`, recording the version written (see `own_writes.rs`).
async fn apply<K>(ctx: &Context, api: &Api<K>, object: &K, kind: Kind) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match tokio::time::timeout(
        WRITE_TIMEOUT,
        api.patch(&object.name_any(), &params, &Patch::Apply(object)),
    )
    .await
    {
        Ok(Ok(applied)) => {
            // Keyed by the kind's one name, which the watches ask by too.
            ctx.own_writes.record(kind.name(), &applied);
            Ok(())
        }
        Ok(Err(e)) => Err(istio_error(kind.name(), e)),
        Err(_) => Err(Error::Timeout(WRITE_TIMEOUT)),
    }
}

/// Applies a plugin object, in its own namespace, in the API the cluster serves; not when
/// it is `current` already.
pub(crate) async fn apply_plugin(
    ctx: &Context,
    plugin: &WasmPlugin,
    current: bool,
) -> Result<(), Error> {
    if current {
        return Ok(());
    }
    let ns = plugin.namespace().unwrap_or_default();
    match ctx.settings.extension_api {
        ExtensionApi::WasmPlugin => {
            let api = Api::<WasmPlugin>::namespaced(ctx.client.clone(), &ns);
            apply(ctx, &api, plugin, Kind::WasmPlugin).await
        }
        ExtensionApi::TrafficExtension => {
            let api = Api::<TrafficExtension>::namespaced(ctx.client.clone(), &ns);
            apply(
                ctx,
                &api,
                &traffic_extension(plugin),
                Kind::TrafficExtension,
            )
            .await
        }
    }
}

/// Deletes a plugin object of either API, in its namespace.
pub(crate) async fn prune_plugin(ctx: &Context, object: &Existing) -> Result<bool, Error> {
    let client = ctx.client.clone();
    match object.kind {
        Kind::TrafficExtension => {
            prune(
                &Api::<TrafficExtension>::namespaced(client, &object.namespace),
                object,
            )
            .await
        }
        _ => {
            prune(
                &Api::<WasmPlugin>::namespaced(client, &object.namespace),
                object,
            )
            .await
        }
    }
}

/// Deletes `object` if it is still the one planned for (same UID); true if it went.
async fn prune<K>(api: &Api<K>, object: &Existing) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: object.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match timed(api.delete(&object.name, &params)).await {
        Ok(_) => Ok(true),
        // Gone already, or replaced by another object of that name since: not ours to delete.
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `status` if it changed, then says the change as Events (`events.rs`).
async fn patch_status(
    ctx: &Context,
    api: &Api<VirtualEnvironment>,
    ve: &VirtualEnvironment,
    status: VirtualEnvironmentStatus,
) -> Result<(), Error> {
    // Already so (as read: if that is stale, the change that made it so queues another
    // reconcile): a restart or a re-plan that changes nothing writes nothing.
    if ve.status.as_ref() == Some(&status) {
        return Ok(());
    }
    apply_status(api, &ve.name_any(), "VirtualEnvironment", &status).await?;
    let said = crate::events::to_say(ve.status.as_ref(), &status);
    ctx.events.say(ve, said).await;
    Ok(())
}

/// Server-side applies `status` to our resource `kind` named `name`.
pub(crate) async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    status: &S,
) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = json!({
        "apiVersion": "env.alibaba.com/v1alpha1",
        "kind": kind,
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    timed(api.patch_status(name, &params, &Patch::Apply(&patch))).await?;
    Ok(())
}

fn condition(ve: &VirtualEnvironment, ready: bool, reason: &str, message: &str) -> Condition {
    let previous = ve.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    ready_condition(previous, ve.metadata.generation, ready, reason, message)
}

/// The `Ready` condition, keeping its transition time when its status did not change.
pub(crate) fn ready_condition(
    previous: &[Condition],
    generation: Option<i64>,
    ready: bool,
    reason: &str,
    message: &str,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(now()));
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

pub(crate) fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

fn not_ready(ve: &VirtualEnvironment, reason: &str, message: &str) -> VirtualEnvironmentStatus {
    let previous = ve.status.clone().unwrap_or_default();
    VirtualEnvironmentStatus {
        observed_generation: ve.metadata.generation,
        conditions: vec![condition(ve, false, reason, message)],
        ..previous
    }
}

fn ready(ve: &VirtualEnvironment, plan: &Plan) -> VirtualEnvironmentStatus {
    let (reason, message) = if plan.skipped.is_empty() {
        (
            "Applied",
            format!("{} services routed by env", plan.routed_services()),
        )
    } else {
        (
            "AppliedWithSkips",
            format!(
                "{} services routed by env; skipped: {}",
                plan.routed_services(),
                plan.skipped.join("; ")
            ),
        )
    };
    VirtualEnvironmentStatus {
        observed_generation: ve.metadata.generation,
        conditions: vec![condition(ve, true, reason, &message)],
        services: u32::try_from(plan.routed_services()).unwrap_or(u32::MAX),
        envs: u32::try_from(plan.envs.len()).unwrap_or(u32::MAX),
        skipped: plan.skipped.iter().map(ToString::to_string).collect(),
        route_header: Some(plan.route_header.clone()),
        routing_api: Some(plan.routing_api),
    }
}

#[cfg(test)]
mod tests;
