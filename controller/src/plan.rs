//! Planning: what Istio objects a namespace needs, as a pure function of the
//! `VirtualEnvironment`, the services and the pods. No API calls happen here, so the
//! reconciler, `virtual-env render` and the tests all run the same code.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use thiserror::Error;
use virtual_env_core::hash::fnv1a;
use virtual_env_core::{
    lowercase, service_fqdn, validate_env_name, ConfigError, Direction, PluginConfig,
};

use crate::crd::{HeaderAlias, VirtualEnvironment, ROUTE_HEADER_SUFFIX_LEN};
use crate::existing::{Existing, Kind};
use crate::extension::ExtensionApi;
use crate::gateway::{self, GatewayName};
use crate::gateway_admission::{admit, Admitted, GatewayAdmission, GatewayCluster, Tenant};
use crate::istio::{
    Destination, DestinationRule, DestinationRuleSpec, HeaderOperations, Headers, HttpMatchRequest,
    HttpRoute, HttpRouteDestination, StringMatch, Subset, TrafficSelector, VirtualService,
    VirtualServiceSpec, WasmPlugin, WasmPluginSpec,
};
use crate::peer_namespaces::{add_peers, Published};
use crate::routable::not_routable;
use crate::skip::Skip;
use crate::subset::SubsetNames;

/// The label that marks the objects virtual-env manages (and may prune).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "virtual-env";
/// On objects in other namespaces (a gateway's plugin), which cannot have an owner
/// reference: the owning VirtualEnvironment's UID and namespace.
pub const OWNER_UID_LABEL: &str = "env.alibaba.com/owner-uid";
pub const OWNER_NAMESPACE_LABEL: &str = "env.alibaba.com/owner-namespace";
/// The original project's per-service custom route (an Istio HTTPRoute as JSON merged into
/// each generated route). Not applied here; a service that carries it is named in the
/// status, so that a route a user relied on is not dropped silently.
pub const RULE_ANNOTATION: &str = "kt-virtual-environment/rule";
/// The namespace's WasmPlugin for the calling side (outbound listeners and gateways): it
/// routes, and carries the services table.
pub const WASM_PLUGIN_NAME: &str = "virtual-env";
/// The namespace's WasmPlugin for the called side (inbound listeners): it records the env
/// for trace correlation, and needs no services table.
pub const INBOUND_WASM_PLUGIN_NAME: &str = "virtual-env-inbound";

/// Where the sidecars fetch the filter module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmSource {
    pub url: String,
    pub sha256: Option<String>,
}

/// Cluster-wide settings of the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub cluster_domain: String,
    pub wasm: WasmSource,
    /// The most bytes one plugin object's config may take in the stored object, its
    /// managed-fields entry included ([`MAX_PLUGIN_CONFIG_BYTES`], see [`stored_bytes`]);
    /// a namespace over it is reported, not applied.
    pub max_plugin_config_bytes: usize,
    /// The API the plugin objects are written in (WasmPlugin, or TrafficExtension).
    pub extension_api: ExtensionApi,
    /// Whether a gateway whose pods serve other namespaces needs a GatewayPolicy.
    pub gateway_admission: GatewayAdmission,
    /// istiod's `PILOT_SCOPE_GATEWAY_TO_NAMESPACE`: a Gateway selects pods of its own
    /// namespace only.
    pub scope_gateway_to_namespace: bool,
}

/// What is in the namespace now.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
    /// The VirtualServices, DestinationRules and WasmPlugins already there, whoever wrote
    /// them: a service that another's object routes is left alone, and only the objects
    /// this VirtualEnvironment owns are pruned.
    pub existing: Vec<Existing>,
    /// Outside the namespace: the cluster's Gateways, and the WasmPlugins under the names
    /// of this namespace's gateway plugin objects (ours to prune, or someone else's).
    pub elsewhere: Vec<Existing>,
    /// What the other namespaces with a VirtualEnvironment publish for their callers (see
    /// `peer_namespaces.rs`), by namespace.
    pub peers: BTreeMap<String, Published>,
    /// The cluster as gateway entry needs it: gateways' pods, GatewayPolicies, every
    /// namespace's host claims (see `gateway_admission.rs`). Shared by every namespace's
    /// snapshot.
    pub cluster: std::sync::Arc<GatewayCluster>,
}

/// The desired state of a namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    /// The calling side's plugin object (Istio `match` mode CLIENT) and its config.
    pub wasm_plugin: WasmPlugin,
    pub plugin_config: PluginConfig,
    /// The called side's plugin object (mode SERVER); its config is the calling side's
    /// without the services table.
    pub inbound_wasm_plugin: WasmPlugin,
    /// Envs with ready pods in the namespace.
    pub envs: BTreeSet<String>,
    /// What was left out, and why (services left alone, gateways and hosts refused, calls
    /// into other namespaces not routed).
    pub skipped: Vec<Skip>,
    /// Pods whose env label is not a valid env name, as `name: reason`.
    pub ignored_pods: Vec<String>,
    /// The route header in force (the spec's name and its suffix), for the status.
    pub route_header: String,
    /// Objects this VirtualEnvironment owns and no longer needs: VirtualServices first,
    /// so that no route is left pointing at a subset that is gone.
    pub prune: Vec<Existing>,
    /// The plugin objects of the gateways that expose the namespace's services, each in
    /// the namespace of its gateway's pods (see `gateway.rs`).
    pub gateway_plugins: Vec<WasmPlugin>,
    /// What the namespace asks to be entered under, admitted or not: (`<ns>/<gateway>`,
    /// host). Published, so that the namespaces it competes with are planned again.
    pub gateway_claims: BTreeSet<(String, String)>,
}

#[derive(Debug, Error)]
pub enum PlanError {
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] ConfigError),
    #[error("the VirtualEnvironment has no namespace")]
    NoNamespace,
    #[error("invalid spec: envHeader.aliases: {0} is neither a header name nor {{name, pattern, placeholder}}")]
    InvalidAlias(String),
    #[error("a {2} named {1} exists in namespace {0} and is not managed by this VirtualEnvironment; rename or remove it")]
    WasmPluginTaken(String, &'static str, &'static str),
    #[error("invalid spec: {0}")]
    InvalidEdgeTrust(#[from] virtual_env_core::edge::EdgeTrustError),
    #[error("invalid spec: {0}")]
    InvalidModule(String),
    #[error("the plugin config would take {bytes} bytes of the stored object (with its managed-fields entry) even in compact form, over the {max} bytes this controller writes into one object (Kubernetes stores at most ~1.5 MiB); nothing was changed. Split the namespace, or route fewer envs")]
    ConfigTooLarge { bytes: usize, max: usize },
}

/// Above this many bytes the plugin config is written in compact form (env names interned):
/// below it, the plain `services` table is easier to read with `kubectl`.
pub const COMPACT_ABOVE_BYTES: usize = 128 * 1024;
/// The most plugin config bytes written into one WasmPlugin: well under the API server's
/// ~1.5 MiB object limit, leaving room for the rest of the object and for etcd's overhead.
pub const MAX_PLUGIN_CONFIG_BYTES: usize = 1024 * 1024;

/// The plugin config as the WasmPlugin carries it: plain, or compact when large.
pub fn plugin_config_value(config: &PluginConfig) -> serde_json::Value {
    let plain = config.to_json();
    let wire = if plain.len() > COMPACT_ABOVE_BYTES {
        config.compacted()
    } else {
        config.clone()
    };
    serde_json::to_value(&wire).unwrap_or_default()
}

/// What a plugin config costs in the stored object: its own bytes, and the entry
/// server-side apply adds to `metadata.managedFields`, which lists every map key of the
/// config (the field is schemaless, so every object key is tracked; arrays are atomic) as
/// `"f:<key>":{}`. A config of many short keys (a services table) nearly doubles there,
/// and the object must stay under etcd's 1.5 MiB whole.
pub fn stored_bytes(config: &serde_json::Value) -> usize {
    /// The managed-fields entry around the field set: manager, operation, API version,
    /// time, `FieldsV1`, and `{"f:spec":{"f:pluginConfig":...}}`.
    const ENTRY: usize = 256;
    config.to_string().len() + fields_v1(config).to_string().len() + ENTRY
}

/// The field set (`fieldsV1`) server-side apply records for `value`.
fn fields_v1(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(key, child)| (format!("f:{key}"), fields_v1(child)))
                .collect(),
        ),
        _ => serde_json::json!({}),
    }
}

/// A plugin config read back from a WasmPlugin, in either form.
pub fn plugin_config_of(value: &serde_json::Value) -> Option<PluginConfig> {
    serde_json::from_value::<PluginConfig>(value.clone())
        .ok()?
        .expanded()
        .ok()
}

/// A stable stand-in for the route header's random suffix, from the VirtualEnvironment's
/// identity: for offline renders, which must not change from run to run. The controller
/// records a random suffix in the status before it plans (see `reconcile`).
pub fn stand_in_suffix(ve: &VirtualEnvironment) -> [u8; ROUTE_HEADER_SUFFIX_LEN] {
    let identity = format!(
        "{}/{}/{}",
        ve.namespace().unwrap_or_default(),
        ve.name_any(),
        ve.uid().unwrap_or_default()
    );
    let mut out = [0; ROUTE_HEADER_SUFFIX_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (fnv1a(format!("{i}:{identity}").as_bytes()) % 36) as u8;
    }
    out
}

/// Plans the routing of `ve`'s namespace from `snapshot`. Output is sorted by name, so the
/// same input always gives the same objects and applying twice changes nothing.
///
/// The steps: resolve the spec (validated, the route header in force), the ready pods by
/// env, each service's routing (`route_service`), gateway entry as the cluster admits it
/// (`admit_entry`), the other namespaces' tables within the size budget (`fit_peers`),
/// the gateways' plugin objects, and what to prune.
pub fn plan_namespace(
    ve: &VirtualEnvironment,
    snapshot: &Snapshot,
    settings: &Settings,
) -> Result<Plan, PlanError> {
    let spec = resolve(ve, snapshot, settings)?;
    let (ready, ignored_pods) = ready_envs(&spec.config, &snapshot.pods);
    let mut plan = Plan {
        virtual_services: Vec::new(),
        destination_rules: Vec::new(),
        wasm_plugin: wasm_plugin(ve, &spec.namespace, settings, &spec.config),
        inbound_wasm_plugin: wasm_plugin(ve, &spec.namespace, settings, &inbound(&spec.config)),
        plugin_config: spec.config.clone(),
        envs: ready.iter().map(|(_, env)| env.to_string()).collect(),
        skipped: Vec::new(),
        ignored_pods,
        route_header: spec.route_header.clone(),
        prune: Vec::new(),
        gateway_plugins: Vec::new(),
        gateway_claims: BTreeSet::new(),
    };
    let (exposures, problems) = gateway::exposures(ve, &snapshot.services, &spec.namespace);
    plan.skipped.extend(problems);
    let by_label = LabelIndex::new(ready.iter().map(|(pod, _)| *pod));
    let mut services: Vec<&Service> = snapshot.services.iter().collect();
    services.sort_by_key(|s| s.name_any());
    let mut exposed = BTreeMap::new();
    for service in services {
        let envs = envs_of(service, &by_label, &ready);
        match route_service(&spec, service, &envs, exposures.get(&service.name_any())) {
            Routing::NotByEnv => {}
            Routing::Skipped(skip) => plan.skipped.push(skip),
            Routing::Routed(routed) => {
                let routed = *routed;
                plan.skipped.extend(routed.notes);
                if let Some(exposure) = routed.exposure {
                    exposed.insert(routed.vs.name_any(), exposure);
                }
                let host = routed.dr.spec.host.clone();
                plan.virtual_services.push(routed.vs);
                plan.destination_rules.push(routed.dr);
                plan.plugin_config.services.insert(host, routed.envs);
            }
        }
    }
    let admitted = admit_entry(&mut plan, &spec, snapshot, &exposed);
    fit_peers(&mut plan, &spec, snapshot)?;
    plan_gateway_objects(&mut plan, &spec, snapshot, &admitted);
    plan.prune = to_prune(&plan, &spec, snapshot);
    Ok(plan)
}

/// A VirtualEnvironment resolved for planning: its spec validated, the route header in
/// force, and what it plans among.
struct Resolved<'a> {
    ve: &'a VirtualEnvironment,
    namespace: String,
    settings: &'a Settings,
    /// The calling side's config, without the services table yet.
    config: PluginConfig,
    route_header: String,
    /// What every route removes after routing: the route header, and a forged plain one.
    strip: Option<Headers>,
    /// The namespace's Istio objects this VirtualEnvironment does not manage.
    others: Vec<&'a Existing>,
}

fn resolve<'a>(
    ve: &'a VirtualEnvironment,
    snapshot: &'a Snapshot,
    settings: &'a Settings,
) -> Result<Resolved<'a>, PlanError> {
    let namespace = ve.namespace().ok_or(PlanError::NoNamespace)?;
    if let Some(HeaderAlias::Invalid(entry)) = ve
        .spec
        .env_header
        .aliases
        .iter()
        .find(|a| matches!(a, HeaderAlias::Invalid(_)))
    {
        return Err(PlanError::InvalidAlias(entry.to_string()));
    }
    if let Some(module) = &ve.spec.wasm_module {
        module.validate().map_err(PlanError::InvalidModule)?;
    }
    let mut config = ve.spec.plugin_config();
    config.validate()?;
    if let Some(edge) = &ve.spec.edge_trust {
        edge.to_config().validate(config.splitter_char())?;
    }
    let owner_uid = ve.uid();
    let others: Vec<&Existing> = snapshot
        .existing
        .iter()
        .filter(|e| !e.managed_by(owner_uid.as_deref()))
        .collect();
    let plugin_kind = settings.extension_api.kind();
    for ours in [WASM_PLUGIN_NAME, INBOUND_WASM_PLUGIN_NAME] {
        if others
            .iter()
            .any(|e| e.kind == plugin_kind && e.name == ours)
        {
            return Err(PlanError::WasmPluginTaken(
                namespace,
                ours,
                plugin_kind.name(),
            ));
        }
    }
    let prefix = config.route_header.to_ascii_lowercase();
    let route_header = match ve.route_header_in_force() {
        Some(name) => name.to_owned(),
        None => ve
            .clone()
            .with_route_header(stand_in_suffix(ve))
            .route_header_in_force()
            .map(str::to_owned)
            .unwrap_or_else(|| prefix.clone()),
    };
    config.route_header = route_header.clone();
    config.cluster_domain = Some(settings.cluster_domain.clone());
    config.direction = Some(Direction::Outbound);
    let strip = Some(Headers {
        request: HeaderOperations {
            remove: vec![route_header.clone(), prefix],
        },
    });
    Ok(Resolved {
        ve,
        namespace,
        settings,
        config,
        route_header,
        strip,
        others,
    })
}

/// The ready pods with a valid env label, and those whose label is not a valid env name.
fn ready_envs<'p>(
    config: &PluginConfig,
    pods: &'p [Pod],
) -> (Vec<(&'p Pod, &'p str)>, Vec<String>) {
    let splitter = config.splitter_char();
    let mut ignored = Vec::new();
    let ready = pods
        .iter()
        .filter(|pod| is_ready(pod))
        .filter_map(|pod| {
            let env = pod.labels().get(&config.env_label)?;
            match validate_env_name(env, splitter) {
                Ok(()) => Some((pod, env.as_str())),
                Err(e) => {
                    ignored.push(format!("{}: env label {env:?}: {e}", pod.name_any()));
                    None
                }
            }
        })
        .collect();
    (ready, ignored)
}

/// The envs in which `service` has ready pods (none without a selector).
fn envs_of<'p>(
    service: &Service,
    by_label: &LabelIndex<'_>,
    ready: &[(&Pod, &'p str)],
) -> BTreeSet<&'p str> {
    let Some(selector) = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return BTreeSet::new();
    };
    by_label
        .candidates(selector)
        .iter()
        .map(|&i| ready[i])
        .filter(|(pod, _)| selects(selector, pod))
        .map(|(_, env)| env)
        .collect()
}

/// What planning does with one service.
enum Routing {
    /// Nothing to route by env: fewer than two envs, and not the default subset.
    NotByEnv,
    /// Left alone, and why.
    Skipped(Skip),
    Routed(Box<Routed>),
}

struct Routed {
    vs: VirtualService,
    dr: DestinationRule,
    envs: Vec<String>,
    /// Its gateway entry as asked (admission decides later), if any.
    exposure: Option<gateway::Exposure>,
    /// What the status says of it besides (a rule beside ours, an annotation not applied).
    notes: Vec<Skip>,
}

fn route_service(
    spec: &Resolved<'_>,
    service: &Service,
    envs: &BTreeSet<&str>,
    exposure: Option<&gateway::Exposure>,
) -> Routing {
    let name = service.name_any();
    let default_subset = spec.config.default_subset.as_deref();
    let has_default = default_subset.is_some_and(|d| envs.contains(d));
    if envs.len() < 2 && !has_default {
        return Routing::NotByEnv;
    }
    if let Some(why) = not_routable(service) {
        return Routing::Skipped(Skip::service(&name, why));
    }
    let subsets = SubsetNames::new(envs.iter().copied());
    let subset_of = |env: &str| subsets.get(env).unwrap_or(env).to_owned();
    let our_subsets: BTreeSet<String> = envs.iter().map(|e| subset_of(e)).collect();
    let mut notes = match held_by(spec, &name, &our_subsets) {
        Ok(notes) => notes,
        Err(skip) => return Routing::Skipped(skip),
    };
    if service.annotations().contains_key(RULE_ANNOTATION) {
        notes.push(Skip::service(
            &name,
            format_args!("annotation {RULE_ANNOTATION} is not supported and not applied; its VirtualService has only the env routes"),
        ));
    }
    let host = service_fqdn(&name, &spec.namespace, &spec.settings.cluster_domain);
    let meta = managed_meta(spec.ve, &name, &spec.namespace);
    let mut http: Vec<HttpRoute> = envs
        .iter()
        .map(|env| HttpRoute {
            name: format!("env-{}", subset_of(env)),
            matches: vec![HttpMatchRequest {
                headers: BTreeMap::from([(
                    spec.route_header.clone(),
                    StringMatch {
                        exact: env.to_string(),
                    },
                )]),
            }],
            route: vec![to(&host, Some(subset_of(env)))],
            headers: spec.strip.clone(),
        })
        .collect();
    http.push(HttpRoute {
        name: "default".into(),
        matches: Vec::new(),
        route: vec![to(
            &host,
            default_subset.filter(|_| has_default).map(subset_of),
        )],
        headers: spec.strip.clone(),
    });
    let exposure = exposure.and_then(|e| gateway_hosts_free(spec, &name, e, &mut notes));
    let subsets = envs
        .iter()
        .map(|env| Subset {
            name: subset_of(env),
            labels: BTreeMap::from([(spec.config.env_label.clone(), env.to_string())]),
        })
        .collect();
    Routing::Routed(Box::new(Routed {
        // Hosts and gateways are set once gateway entry is admitted (`admit_entry`).
        vs: VirtualService {
            metadata: meta.clone(),
            spec: VirtualServiceSpec {
                hosts: vec![host.clone()],
                gateways: Vec::new(),
                http,
            },
        },
        dr: DestinationRule {
            metadata: meta,
            spec: DestinationRuleSpec { host, subsets },
        },
        envs: envs.iter().map(|e| e.to_string()).collect(),
        exposure,
        notes,
    }))
}

/// Whether a user's object holds the service: `Err` with the skip when one does; else
/// the notes on the users' DestinationRules kept beside ours.
///
/// Istio picks one VirtualService for a host (sidecars do not merge them): the service is
/// left to its owner. DestinationRules of one host are merged (subsets added, the first
/// traffic policy applies), so a user's (mTLS, pools, outlier detection) lives beside
/// ours, unless it has our name or one of our subsets' names.
fn held_by(
    spec: &Resolved<'_>,
    name: &str,
    our_subsets: &BTreeSet<String>,
) -> Result<Vec<Skip>, Skip> {
    let routes_it =
        |e: &Existing| e.routes_service(name, &spec.namespace, &spec.settings.cluster_domain);
    let mut holders: Vec<String> = spec
        .others
        .iter()
        .filter(|e| match e.kind {
            Kind::VirtualService => e.name == name || routes_it(e),
            Kind::DestinationRule => {
                e.name == name
                    || (routes_it(e) && subset_names(e).iter().any(|s| our_subsets.contains(s)))
            }
            _ => false,
        })
        .map(|e| e.describe())
        .collect();
    if !holders.is_empty() {
        holders.sort();
        holders.dedup();
        return Err(Skip::service(
            name,
            format_args!(
                "left to {}, which this VirtualEnvironment does not manage",
                holders.join(", ")
            ),
        ));
    }
    Ok(spec
        .others
        .iter()
        .filter(|e| e.kind == Kind::DestinationRule && routes_it(e))
        .map(|beside| {
            let policy = if beside.spec["trafficPolicy"].is_null() {
                "it sets no traffic policy"
            } else {
                "its trafficPolicy applies to the env subsets too when it is the older one"
            };
            Skip::service(
                name,
                format_args!(
                    "routed by env beside {}: Istio merges its subsets with ours; {policy}",
                    beside.describe()
                ),
            )
        })
        .collect())
}

/// The service's gateway entry, unless a user's VirtualService of the namespace routes one
/// of its gateway hosts (Istio would merge the two): then it stays routed in the mesh only.
fn gateway_hosts_free(
    spec: &Resolved<'_>,
    name: &str,
    exposure: &gateway::Exposure,
    notes: &mut Vec<Skip>,
) -> Option<gateway::Exposure> {
    let mut taken: Vec<String> = spec
        .others
        .iter()
        .filter(|e| e.kind == Kind::VirtualService)
        .filter(|e| {
            e.hosts
                .iter()
                .any(|h| exposure.hosts.contains(&lowercase(h).into_owned()))
        })
        .map(|e| e.describe())
        .collect();
    taken.dedup();
    if taken.is_empty() {
        return Some(exposure.clone());
    }
    notes.push(Skip::service(
        name,
        format_args!(
            "not exposed through gateways: its hosts are routed by {}, which this VirtualEnvironment does not manage",
            taken.join(", ")
        ),
    ));
    None
}

/// Gateway entry as the cluster admits it (`gateway_admission.rs`): the VirtualServices
/// of exposed services bound to the admitted gateways and hosts only, and the claims the
/// namespace publishes.
fn admit_entry(
    plan: &mut Plan,
    spec: &Resolved<'_>,
    snapshot: &Snapshot,
    wanted: &BTreeMap<String, gateway::Exposure>,
) -> Admitted {
    let admitted = admit(
        &Tenant {
            ve: spec.ve,
            namespace: &spec.namespace,
            admission: spec.settings.gateway_admission,
            scope_gateway_to_namespace: spec.settings.scope_gateway_to_namespace,
        },
        wanted,
        &snapshot.elsewhere,
        &snapshot.cluster,
    );
    plan.skipped.extend(admitted.refused.iter().cloned());
    plan.gateway_claims = wanted
        .values()
        .flat_map(|e| {
            e.gateways
                .iter()
                .flat_map(move |g| e.hosts.iter().map(move |h| (g.reference(), h.clone())))
        })
        .collect();
    for vs in &mut plan.virtual_services {
        if let Some(exposure) = admitted.exposures.get(&vs.name_any()) {
            vs.spec.hosts.extend(exposure.hosts.iter().cloned());
            vs.spec.gateways = exposure
                .gateways
                .iter()
                .map(GatewayName::reference)
                .collect();
            vs.spec.gateways.push("mesh".into());
        }
    }
    admitted
}

/// Takes in the other namespaces' tables (`peers`) within the size budget: the namespace's
/// own routing goes first, so over the budget calls into the others lose their env;
/// `ConfigTooLarge` when even its own does not fit.
fn fit_peers(plan: &mut Plan, spec: &Resolved<'_>, snapshot: &Snapshot) -> Result<(), PlanError> {
    let max = spec.settings.max_plugin_config_bytes;
    let peers_skipped = add_peers(&mut plan.plugin_config, &spec.namespace, &snapshot.peers);
    plan.wasm_plugin.spec.plugin_config = plugin_config_value(&plan.plugin_config);
    let mut bytes = stored_bytes(&plan.wasm_plugin.spec.plugin_config);
    if bytes > max && !plan.plugin_config.peers.is_empty() {
        plan.skipped.push(Skip::peers(format_args!(
            "calls into other namespaces are not routed by env: with their tables the plugin config would be {bytes} bytes, over {max}"
        )));
        plan.plugin_config.peers.clear();
        plan.wasm_plugin.spec.plugin_config = plugin_config_value(&plan.plugin_config);
        bytes = stored_bytes(&plan.wasm_plugin.spec.plugin_config);
    } else {
        plan.skipped.extend(peers_skipped);
    }
    if bytes > max {
        return Err(PlanError::ConfigTooLarge { bytes, max });
    }
    Ok(())
}

/// The plugin objects of the gateways admitted for the namespace's exposed services.
fn plan_gateway_objects(
    plan: &mut Plan,
    spec: &Resolved<'_>,
    snapshot: &Snapshot,
    admitted: &Admitted,
) {
    let exposed: Vec<gateway::ExposedService<'_>> = admitted
        .exposures
        .iter()
        .map(|(name, exposure)| {
            let fqdn = service_fqdn(name, &spec.namespace, &spec.settings.cluster_domain);
            let envs = plan
                .plugin_config
                .services
                .get(&fqdn)
                .cloned()
                .unwrap_or_default();
            gateway::ExposedService {
                name,
                fqdn,
                envs,
                exposure,
            }
        })
        .collect();
    let gateway_plans = gateway::plan_gateways(
        spec.ve,
        &spec.namespace,
        &gateway::Entry {
            exposed: &exposed,
            placements: &admitted.placements,
        },
        &plan.plugin_config,
        &snapshot.elsewhere,
        &gateway::ModuleSources {
            tenant: &wasm_source(spec.ve, spec.settings),
            controller: &spec.settings.wasm,
        },
        spec.settings.extension_api.kind(),
    );
    plan.gateway_plugins = gateway_plans.plugins;
    plan.skipped.extend(gateway_plans.skipped);
}

/// What this VirtualEnvironment owns and no longer needs: VirtualServices first, so that
/// no route is left pointing at a subset that is gone.
fn to_prune(plan: &Plan, spec: &Resolved<'_>, snapshot: &Snapshot) -> Vec<Existing> {
    let plugin_kind = spec.settings.extension_api.kind();
    let wanted = |e: &Existing| match e.kind {
        Kind::VirtualService => plan.virtual_services.iter().any(|o| o.name_any() == e.name),
        Kind::DestinationRule => plan
            .destination_rules
            .iter()
            .any(|o| o.name_any() == e.name),
        // Plugin objects of the other API are ours from before a switch: pruned.
        kind if kind.is_plugin() && kind != plugin_kind => false,
        Kind::WasmPlugin | Kind::TrafficExtension if e.namespace == spec.namespace => {
            e.name == WASM_PLUGIN_NAME || e.name == INBOUND_WASM_PLUGIN_NAME
        }
        Kind::WasmPlugin | Kind::TrafficExtension => plan.gateway_plugins.iter().any(|o| {
            o.name_any() == e.name && o.namespace().as_deref() == Some(e.namespace.as_str())
        }),
        Kind::Gateway => true,
    };
    let owner_uid = spec.ve.uid();
    let mut prune: Vec<Existing> = snapshot
        .existing
        .iter()
        .chain(&snapshot.elsewhere)
        .filter(|e| e.managed_by(owner_uid.as_deref()) && !wanted(e))
        .cloned()
        .collect();
    prune.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    prune
}

/// The names of a DestinationRule's subsets.
fn subset_names(rule: &Existing) -> Vec<String> {
    rule.spec["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect()
}

fn to(host: &str, subset: Option<String>) -> HttpRouteDestination {
    HttpRouteDestination {
        destination: Destination {
            host: host.to_owned(),
            subset,
        },
    }
}

/// Ready, and not on its way out.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready pods by label, so that matching a service's selector looks only at the pods that
/// carry its rarest label instead of at every pod (services x pods is 3e8 at scale).
struct LabelIndex<'a>(HashMap<(&'a str, &'a str), Vec<usize>>);

impl<'a> LabelIndex<'a> {
    fn new(pods: impl Iterator<Item = &'a Pod>) -> Self {
        let mut index: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, pod) in pods.enumerate() {
            for (k, v) in pod.labels() {
                index.entry((k.as_str(), v.as_str())).or_default().push(i);
            }
        }
        Self(index)
    }

    /// Indices of the pods that may match: those with the selector's rarest label.
    fn candidates<'s>(&'s self, selector: &'s BTreeMap<String, String>) -> &'s [usize] {
        // Covariance: look up with the selector's shorter-lived strings.
        let index: &'s HashMap<(&str, &str), Vec<usize>> = &self.0;
        selector
            .iter()
            .map(|(k, v)| {
                index
                    .get(&(k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|pods| pods.len())
            .unwrap_or(&[])
    }
}

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.labels();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn managed_meta(ve: &VirtualEnvironment, name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_owned(),
            MANAGED_BY.to_owned(),
        )])),
        // Only an object read from the API has a uid; offline renders carry no owner.
        owner_references: ve.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The called side's config: the same settings, no services table (inbound requests are
/// recorded, not routed), so each sidecar holds the table once.
pub fn inbound(config: &PluginConfig) -> PluginConfig {
    PluginConfig {
        direction: Some(Direction::Inbound),
        services: Default::default(),
        peers: Default::default(),
        ..config.clone()
    }
}

/// Where sidecars fetch the module: the spec's `wasmModule`, else the controller's.
fn wasm_source(ve: &VirtualEnvironment, settings: &Settings) -> WasmSource {
    ve.spec.wasm_module.as_ref().map_or_else(
        || settings.wasm.clone(),
        |m| WasmSource {
            url: m.url.clone(),
            sha256: m.sha256.clone(),
        },
    )
}

/// A plugin object for `config`'s side. Istio applies CLIENT to outbound and gateway
/// listeners and SERVER to inbound ones (`workloadModeForListenerClass` in istiod).
fn wasm_plugin(
    ve: &VirtualEnvironment,
    namespace: &str,
    settings: &Settings,
    config: &PluginConfig,
) -> WasmPlugin {
    let (name, mode) = match config.direction {
        Some(Direction::Inbound) => (INBOUND_WASM_PLUGIN_NAME, "SERVER"),
        _ => (WASM_PLUGIN_NAME, "CLIENT"),
    };
    let source = wasm_source(ve, settings);
    WasmPlugin {
        metadata: managed_meta(ve, name, namespace),
        spec: WasmPluginSpec {
            url: source.url,
            sha256: source.sha256,
            fail_strategy: "FAIL_OPEN".into(),
            selector: None,
            traffic_selectors: vec![TrafficSelector { mode: mode.into() }],
            phase: None,
            plugin_config: plugin_config_value(config),
        },
    }
}

#[cfg(test)]
pub mod fixtures {
    //! Services, pods and VirtualEnvironments for tests.

    use k8s_openapi::api::core::v1::{PodCondition, PodStatus, ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::VirtualEnvironmentSpec;

    pub const NS: &str = "default";

    pub fn ve(spec_yaml: &str) -> VirtualEnvironment {
        let spec: VirtualEnvironmentSpec = serde_yaml::from_str(spec_yaml).unwrap();
        let mut ve = VirtualEnvironment::new("example-virtualenv", spec);
        ve.metadata.namespace = Some(NS.into());
        ve
    }

    /// The seed's sample: auto-inject on, default subset `dev`.
    pub fn seed_ve() -> VirtualEnvironment {
        ve("envHeader: {name: X-Virtual-Env, autoInject: true}\nenvLabel: {name: virtual-env, splitter: ., defaultSubset: dev}")
    }

    pub fn service(name: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([("app".into(), name.into())])),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 8080,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    pub fn pod(name: &str, app: &str, env: Option<&str>, ready: bool) -> Pod {
        let mut labels = BTreeMap::from([("app".to_owned(), app.to_owned())]);
        if let Some(env) = env {
            labels.insert("virtual-env".into(), env.into());
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    pub fn terminating(mut pod: Pod) -> Pod {
        pod.metadata.deletion_timestamp = Some(Time(Default::default()));
        pod
    }

    /// The seed's example: A, B, C in `dev`; A' and C' in `dev.proj1`.
    /// The seed's namespace with app-a annotated to be entered through `gateways` under
    /// the host `a.example.com` (the original project's Service annotations).
    pub fn seed_exposed_through(gateways: &str) -> Snapshot {
        let mut snapshot = seed_snapshot();
        if let Some(a) = snapshot
            .services
            .iter_mut()
            .find(|s| s.name_any() == "app-a")
        {
            a.metadata.annotations = Some(BTreeMap::from([
                (
                    crate::gateway::GATEWAYS_ANNOTATION.to_owned(),
                    gateways.to_owned(),
                ),
                (
                    crate::gateway::HOSTS_ANNOTATION.to_owned(),
                    "a.example.com".to_owned(),
                ),
            ]));
        }
        snapshot
    }

    /// A pod of Istio's ingress gateway in `istio-system` (`istio: ingressgateway`).
    pub fn gateway_pod() -> Pod {
        let mut gateway = pod("istio-ingressgateway-1", "istio-ingressgateway", None, true);
        gateway.metadata.namespace = Some("istio-system".into());
        gateway
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("istio".into(), "ingressgateway".into());
        gateway
    }

    /// The ingress gateway owner's policy, with `tenants` (YAML) and `edge` (YAML or "").
    pub fn ingress_policy(tenants: &str, edge: &str) -> crate::gateway_policy::GatewayPolicy {
        let edge = if edge.is_empty() {
            String::new()
        } else {
            format!("\nedgeTrust: {edge}")
        };
        let spec = serde_yaml::from_str(&format!(
            "workload: {{namespace: istio-system, selector: {{istio: ingressgateway}}}}\ntenants: {tenants}{edge}"
        ))
        .unwrap();
        crate::gateway_policy::GatewayPolicy::new("ingressgateway", spec)
    }

    /// `snapshot`'s view of the cluster: its Gateways, its pods and the ingress gateway's,
    /// `policies`, and `ve`'s claims (as the caches would compute it).
    pub fn with_cluster(
        snapshot: &mut Snapshot,
        ve: &VirtualEnvironment,
        policies: Vec<crate::gateway_policy::GatewayPolicy>,
    ) {
        let gateway = gateway_pod();
        let cluster = GatewayCluster::from_objects(
            snapshot.elsewhere.iter(),
            snapshot.pods.iter().chain(std::iter::once(&gateway)),
            policies,
            std::iter::once((ve, snapshot.services.iter().collect())),
        );
        snapshot.cluster = std::sync::Arc::new(cluster);
    }

    pub fn seed_snapshot() -> Snapshot {
        Snapshot {
            services: ["app-a", "app-b", "app-c"].map(service).to_vec(),
            pods: vec![
                pod("app-a-dev", "app-a", Some("dev"), true),
                pod("app-b-dev", "app-b", Some("dev"), true),
                pod("app-c-dev", "app-c", Some("dev"), true),
                pod("app-a-proj1", "app-a", Some("dev.proj1"), true),
                pod("app-c-proj1", "app-c", Some("dev.proj1"), true),
            ],
            ..Snapshot::default()
        }
    }

    pub fn settings() -> Settings {
        Settings {
            cluster_domain: "cluster.local".into(),
            wasm: WasmSource {
                url: "http://virtual-env.virtual-env-system.svc:8080/filter.wasm".into(),
                sha256: Some("ab".repeat(32)),
            },
            max_plugin_config_bytes: MAX_PLUGIN_CONFIG_BYTES,
            extension_api: Default::default(),
            gateway_admission: Default::default(),
            scope_gateway_to_namespace: false,
        }
    }

    /// `services` services, each with a ready pod in each of `envs` envs whose names are
    /// 30 characters long (`team-payments-feature-0000042`-like).
    pub fn wide_snapshot(services: usize, envs: usize) -> Snapshot {
        let names: Vec<String> = (0..envs)
            .map(|e| format!("dev.team-payments-feat-{e:06}"))
            .collect();
        let mut snapshot = Snapshot::default();
        for s in 0..services {
            let svc = format!("svc-{s:04}");
            snapshot.services.push(service(&svc));
            for env in &names {
                let name = format!("{svc}-{}", env.replace('.', "-"));
                snapshot.pods.push(pod(&name, &svc, Some(env), true));
            }
        }
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use proptest::prelude::*;
    use virtual_env_core::{Choice, RouteTable};

    fn plan_of(ve: &VirtualEnvironment, snapshot: &Snapshot) -> Plan {
        plan_namespace(ve, snapshot, &settings()).unwrap()
    }

    /// Most Istio namespaces have DestinationRules of their own (mTLS for the whole
    /// namespace, pools, outlier detection): Istio merges them with ours, so the service is
    /// still routed by env, and the status says what theirs does. One with our name or a
    /// subset of ours is a conflict: the service is left to it.
    #[test]
    fn a_users_destination_rule_lives_beside_ours_unless_it_takes_our_names() {
        let user_rule = |name: &str, host: &str, subsets: serde_json::Value| {
            Existing::from_json(
                Kind::DestinationRule,
                &serde_json::json!({"metadata": {"name": name, "namespace": "default"},
                    "spec": {"host": host, "subsets": subsets,
                        "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"},
                            "outlierDetection": {"consecutive5xxErrors": 5}}}}),
                "default",
            )
        };
        let mut snapshot = seed_snapshot();
        snapshot.existing = vec![
            user_rule("mtls", "*.default.svc.cluster.local", serde_json::json!([])),
            user_rule(
                "c-pools",
                "app-c",
                serde_json::json!([{"name": "v1", "labels": {"version": "v1"}}]),
            ),
        ];
        let plan = plan_of(&seed_ve(), &snapshot);
        assert_eq!(
            plan.virtual_services.len(),
            3,
            "every service still routed: {:?}",
            plan.skipped
        );
        assert!(
            plan.skipped.iter().any(|s| s.starts_with("app-a: routed by env beside DestinationRule mtls: Istio merges its subsets with ours; its trafficPolicy")),
            "{:?}",
            plan.skipped
        );
        assert!(plan
            .skipped
            .iter()
            .any(|s| s.starts_with("app-c: routed by env beside DestinationRule c-pools")));
        // A subset of our name, or our object's name: left to the user.
        snapshot.existing = vec![
            user_rule(
                "c-envs",
                "app-c",
                serde_json::json!([{"name": "dev", "labels": {"virtual-env": "dev"}}]),
            ),
            user_rule(
                "app-a",
                "app-a.default.svc.cluster.local",
                serde_json::json!([]),
            ),
        ];
        let plan = plan_of(&seed_ve(), &snapshot);
        let routed: Vec<String> = plan.virtual_services.iter().map(|v| v.name_any()).collect();
        assert_eq!(routed, ["app-b"], "{:?}", plan.skipped);
        assert!(plan
            .skipped
            .iter()
            .any(|s| s.starts_with("app-c: left to DestinationRule c-envs")));
    }

    #[test]
    fn the_original_rule_annotation_is_reported_not_dropped_silently() {
        let mut snapshot = seed_snapshot();
        snapshot.services[0].metadata.annotations = Some(BTreeMap::from([(
            RULE_ANNOTATION.to_owned(),
            r#"{"Rewrite":{"Uri":"/prefix"},"Match":[{"Uri":{"Prefix":"/prefix"}}]}"#.to_owned(),
        )]));
        let plan = plan_of(&seed_ve(), &snapshot);
        assert_eq!(plan.virtual_services.len(), 3, "still routed by env");
        assert!(
            plan.skipped
                .iter()
                .any(|s| s
                    .starts_with("app-a: annotation kt-virtual-environment/rule is not supported")),
            "{:?}",
            plan.skipped
        );
    }

    /// Other namespaces' tables that would push the config over the limit are dropped,
    /// the namespace's own routing kept, and the status says so.
    #[test]
    fn peers_that_do_not_fit_leave_the_own_routing_in_force() {
        let ve = seed_ve();
        let own = plan_of(&ve, &seed_snapshot());
        let own_bytes = stored_bytes(&own.wasm_plugin.spec.plugin_config);
        let big =
            crate::peer_namespaces::published(&plan_of(&ve, &wide_snapshot(50, 20)).plugin_config);
        let snapshot = Snapshot {
            peers: BTreeMap::from([("big".to_owned(), big.clone())]),
            ..seed_snapshot()
        };
        let roomy = plan_namespace(&ve, &snapshot, &settings()).unwrap();
        assert_eq!(roomy.plugin_config.peers["big"], big.routing);
        let tight = Settings {
            max_plugin_config_bytes: own_bytes + 100,
            ..settings()
        };
        let plan = plan_namespace(&ve, &snapshot, &tight).unwrap();
        assert!(plan.plugin_config.peers.is_empty());
        assert_eq!(
            plan.wasm_plugin.spec.plugin_config,
            own.wasm_plugin.spec.plugin_config
        );
        assert!(
            plan.skipped
                .iter()
                .any(|s| s.starts_with("calls into other namespaces are not routed by env")),
            "{:?}",
            plan.skipped
        );
    }

    #[test]
    fn a_large_namespace_gets_the_compact_table_which_reads_back_the_same() {
        // 300 services x 20 envs of 30 characters: ~200 KB plain, over the threshold.
        let snapshot = wide_snapshot(300, 20);
        let plan = plan_of(&seed_ve(), &snapshot);
        let written = &plan.wasm_plugin.spec.plugin_config;
        assert!(plan.plugin_config.to_json().len() > COMPACT_ABOVE_BYTES);
        assert_eq!(
            written["services"],
            serde_json::json!({}),
            "plain table written"
        );
        assert_eq!(written["envNames"].as_array().unwrap().len(), 20);
        let bytes = written.to_string().len();
        assert!(
            bytes * 3 < plan.plugin_config.to_json().len(),
            "{bytes} bytes"
        );
        assert_eq!(plugin_config_of(written).unwrap(), plan.plugin_config);
        // What the filter parses is the same table.
        let parsed = PluginConfig::from_json(written.to_string().as_bytes()).unwrap();
        assert_eq!(parsed, plan.plugin_config);
    }

    #[test]
    fn a_small_namespace_keeps_the_plain_table() {
        let plan = plan_of(&seed_ve(), &seed_snapshot());
        let written = &plan.wasm_plugin.spec.plugin_config;
        assert!(written["services"].is_object());
        assert!(written.get("envNames").is_none());
    }

    #[test]
    fn the_stored_size_counts_the_managed_fields_server_side_apply_adds() {
        let config = serde_json::json!({"a": 1, "b": {"c": [1, 2]}, "d": []});
        let fields = r#"{"f:a":{},"f:b":{"f:c":{}},"f:d":{}}"#;
        assert_eq!(fields_v1(&config).to_string(), fields);
        assert_eq!(
            stored_bytes(&config),
            config.to_string().len() + fields.len() + 256
        );
        // A services table: every FQDN is written twice.
        let plan = plan_of(&seed_ve(), &wide_snapshot(100, 3));
        let written = &plan.wasm_plugin.spec.plugin_config;
        let plain = written.to_string().len();
        assert!(stored_bytes(written) > plain + 100 * "svc-0000.default.svc.cluster.local".len());
    }

    /// At the boundary: a config whose own bytes fit but whose stored object, with the
    /// managed-fields entry, would not, is refused before the API server refuses it.
    #[test]
    fn a_config_that_fits_only_without_its_managed_fields_is_refused() {
        let ve = seed_ve();
        let snapshot = wide_snapshot(60, 3);
        let plan = plan_of(&ve, &snapshot);
        let written = &plan.wasm_plugin.spec.plugin_config;
        let plain = written.to_string().len();
        let stored = stored_bytes(written);
        let at = |max| Settings {
            max_plugin_config_bytes: max,
            ..settings()
        };
        assert!(plan_namespace(&ve, &snapshot, &at(stored)).is_ok());
        let err = plan_namespace(&ve, &snapshot, &at(stored - 1)).unwrap_err();
        assert!(matches!(err, PlanError::ConfigTooLarge { .. }), "{err}");
        assert!(plain < stored - 1, "the config itself would have fit");
    }

    #[test]
    fn a_config_over_the_limit_is_reported_and_nothing_is_planned() {
        let settings = Settings {
            max_plugin_config_bytes: 4_000,
            extension_api: Default::default(),
            ..settings()
        };
        let err = plan_namespace(&seed_ve(), &wide_snapshot(40, 5), &settings).unwrap_err();
        assert!(
            matches!(err, PlanError::ConfigTooLarge { max: 4_000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("nothing was changed"), "{err}");
    }

    fn vs<'a>(plan: &'a Plan, name: &str) -> &'a VirtualService {
        plan.virtual_services
            .iter()
            .find(|v| v.name_any() == name)
            .unwrap_or_else(|| panic!("no VirtualService {name}"))
    }

    fn dr<'a>(plan: &'a Plan, name: &str) -> &'a DestinationRule {
        plan.destination_rules
            .iter()
            .find(|v| v.name_any() == name)
            .unwrap_or_else(|| panic!("no DestinationRule {name}"))
    }

    /// The route header a VirtualService's routes match.
    fn plan_route_header(vs: &VirtualService) -> String {
        let name = vs.spec.http[0].matches[0].headers.keys().next().unwrap();
        assert!(name.starts_with("x-virtual-env-route-"), "{name}");
        name.clone()
    }

    /// (match value or "*", subset or "-") per route.
    fn routes(vs: &VirtualService) -> Vec<(String, String)> {
        vs.spec
            .http
            .iter()
            .map(|r| {
                let m = r.matches.first().map_or("*".to_owned(), |m| {
                    m.headers[&plan_route_header(vs)].exact.clone()
                });
                let s = r.route[0].destination.subset.clone().unwrap_or("-".into());
                (m, s)
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_seed_example() {
        let plan = plan_of(&seed_ve(), &seed_snapshot());
        let proj1 = SubsetNames::new(["dev.proj1"])
            .get("dev.proj1")
            .unwrap()
            .to_owned();
        assert_eq!(
            routes(vs(&plan, "app-a")),
            pairs(&[("dev", "dev"), ("dev.proj1", &proj1), ("*", "dev")])
        );
        assert_eq!(
            routes(vs(&plan, "app-b")),
            pairs(&[("dev", "dev"), ("*", "dev")])
        );
        assert_eq!(
            vs(&plan, "app-a").spec.hosts,
            ["app-a.default.svc.cluster.local"]
        );
        let subsets = &dr(&plan, "app-c").spec.subsets;
        assert_eq!(subsets.len(), 2);
        assert_eq!(subsets[1].name, proj1);
        assert_eq!(subsets[1].labels["virtual-env"], "dev.proj1");
        assert_eq!(
            plan.plugin_config.services["app-b.default.svc.cluster.local"],
            ["dev"]
        );
        assert_eq!(
            plan.plugin_config.services["app-a.default.svc.cluster.local"],
            ["dev", "dev.proj1"]
        );
        assert_eq!(
            plan.envs,
            BTreeSet::from(["dev".into(), "dev.proj1".into()])
        );
        // The WasmPlugin carries the same plugin config, which the filter accepts.
        let config =
            PluginConfig::from_json(plan.wasm_plugin.spec.plugin_config.to_string().as_bytes())
                .unwrap();
        assert_eq!(config, plan.plugin_config);
        assert!(config.auto_inject);
        assert_eq!(plan.wasm_plugin.spec.fail_strategy, "FAIL_OPEN");
        assert!(plan.wasm_plugin.labels().contains_key(MANAGED_BY_LABEL));
    }

    #[test]
    fn the_route_header_has_a_suffix_and_never_leaves_the_calling_sidecar() {
        let plan = plan_of(&seed_ve(), &seed_snapshot());
        let name = plan.route_header.clone();
        assert!(name.starts_with("x-virtual-env-route-"), "{name}");
        assert_eq!(plan.plugin_config.route_header, name);
        assert_eq!(
            plan.plugin_config.cluster_domain.as_deref(),
            Some("cluster.local")
        );
        for vs in &plan.virtual_services {
            assert_eq!(plan_route_header(vs), name);
            for route in &vs.spec.http {
                let remove = &route.headers.as_ref().unwrap().request.remove;
                assert_eq!(remove, &[name.clone(), "x-virtual-env-route".to_owned()]);
            }
        }
        // Offline, without a recorded one, the stand-in is stable; a recorded one is kept.
        assert_eq!(plan_of(&seed_ve(), &seed_snapshot()).route_header, name);
        let recorded = seed_ve().with_route_header([0; ROUTE_HEADER_SUFFIX_LEN]);
        let plan = plan_of(&recorded, &seed_snapshot());
        assert_eq!(plan.route_header, "x-virtual-env-route-aaaaaaaaaaaa");
    }

    #[test]
    fn three_levels_walk_to_the_nearest_ancestor() {
        let mut snapshot = seed_snapshot();
        snapshot
            .pods
            .push(pod("app-c-user1", "app-c", Some("dev.proj1.user1"), true));
        let plan = plan_of(&seed_ve(), &snapshot);
        let table = RouteTable::new(&plan.plugin_config);
        let env = Some("dev.proj1.user1");
        for (svc, want) in [
            ("app-a", Choice::Fallback("dev.proj1")),
            ("app-b", Choice::Fallback("dev")),
            ("app-c", Choice::Exact("dev.proj1.user1")),
        ] {
            let service = table.service(&format!("{svc}.default")).unwrap();
            assert_eq!(table.choose(service, env), want, "{svc}");
        }
        assert_eq!(dr(&plan, "app-c").spec.subsets.len(), 3);
    }

    #[test]
    fn a_pod_no_service_selects_adds_an_env_but_no_route() {
        let mut snapshot = seed_snapshot();
        snapshot
            .pods
            .push(pod("job", "batch", Some("dev.proj2"), true));
        let plan = plan_of(&seed_ve(), &snapshot);
        assert!(plan.envs.contains("dev.proj2"));
        assert_eq!(plan.virtual_services.len(), 3);
        assert!(plan
            .plugin_config
            .services
            .values()
            .all(|envs| !envs.contains(&"dev.proj2".to_owned())));
    }

    #[test]
    fn a_service_with_one_env_needs_routing_only_when_it_is_the_default() {
        let without_default = ve("envLabel: {name: virtual-env}");
        let plan = plan_of(&without_default, &seed_snapshot());
        // B has only dev and there is no default subset: nothing to route.
        let names: Vec<_> = plan.virtual_services.iter().map(|v| v.name_any()).collect();
        assert_eq!(names, ["app-a", "app-c"]);
        // Without a default subset the default route goes to the whole service.
        assert_eq!(routes(vs(&plan, "app-a")).last().unwrap().1, "-");

        let mut snapshot = seed_snapshot();
        snapshot.pods.retain(|p| p.name_any() != "app-a-dev");
        let plan = plan_of(&seed_ve(), &snapshot);
        // A now has only dev.proj1 pods, which is not the default: nothing to route.
        assert!(plan
            .virtual_services
            .iter()
            .all(|v| v.name_any() != "app-a"));
        // B has only dev, the default: routed, so that unlabelled pods get nothing.
        assert_eq!(
            routes(vs(&plan, "app-b")),
            pairs(&[("dev", "dev"), ("*", "dev")])
        );
    }

    #[test]
    fn only_ready_pods_count() {
        let mut snapshot = seed_snapshot();
        snapshot
            .pods
            .push(pod("app-b-proj1", "app-b", Some("dev.proj1"), false));
        snapshot.pods.push(terminating(pod(
            "app-b-proj2",
            "app-b",
            Some("dev.proj2"),
            true,
        )));
        let plan = plan_of(&seed_ve(), &snapshot);
        assert_eq!(dr(&plan, "app-b").spec.subsets.len(), 1);
        assert_eq!(
            plan.plugin_config.services["app-b.default.svc.cluster.local"],
            ["dev"]
        );
        assert!(!plan.envs.contains("dev.proj2"));
    }

    #[test]
    fn colliding_env_spellings_get_distinct_subsets() {
        let snapshot = Snapshot {
            services: vec![service("app")],
            pods: ["dev", "dev.x", "dev-x", "dev_x"]
                .iter()
                .map(|env| pod(&format!("app-{env}"), "app", Some(env), true))
                .collect(),
            ..Snapshot::default()
        };
        let plan = plan_of(&seed_ve(), &snapshot);
        let subsets: BTreeSet<_> = dr(&plan, "app")
            .spec
            .subsets
            .iter()
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(subsets.len(), 4, "{subsets:?}");
        assert!(subsets.contains("dev-x"));
    }

    #[test]
    fn invalid_env_labels_are_ignored_and_reported() {
        let mut snapshot = seed_snapshot();
        snapshot
            .pods
            .push(pod("app-b-bad", "app-b", Some("dev..x"), true));
        let plan = plan_of(&seed_ve(), &snapshot);
        assert_eq!(dr(&plan, "app-b").spec.subsets.len(), 1);
        assert_eq!(plan.ignored_pods.len(), 1);
        assert!(
            plan.ignored_pods[0].starts_with("app-b-bad:"),
            "{:?}",
            plan.ignored_pods
        );
    }

    #[test]
    fn a_user_owned_virtual_service_is_left_alone_and_reported() {
        let mut snapshot = seed_snapshot();
        snapshot.existing.push(Existing::from_json(
            Kind::VirtualService,
            &serde_json::json!({"metadata": {"name": "app-a", "namespace": NS}, "spec": {"hosts": ["app-a"]}}),
            NS,
        ));
        let plan = plan_of(&seed_ve(), &snapshot);
        assert!(plan
            .virtual_services
            .iter()
            .all(|v| v.name_any() != "app-a"));
        assert!(plan
            .destination_rules
            .iter()
            .all(|v| v.name_any() != "app-a"));
        assert!(!plan
            .plugin_config
            .services
            .contains_key("app-a.default.svc.cluster.local"));
        assert_eq!(plan.skipped.len(), 1);
        assert!(plan.skipped[0].starts_with("app-a: "), "{:?}", plan.skipped);
    }

    #[test]
    fn services_that_cannot_be_routed_by_subset_are_left_alone_and_reported() {
        let mut snapshot = seed_snapshot();
        let spec = |s: &mut Service| s.spec.as_mut().unwrap().clone();
        for svc in &mut snapshot.services {
            let mut new = spec(svc);
            match svc.name_any().as_str() {
                "app-a" => new.cluster_ip = Some("None".into()),
                "app-b" => {
                    new.type_ = Some("ExternalName".into());
                    new.external_name = Some("b.example.com".into());
                }
                _ => new.ports.as_mut().unwrap()[0].name = Some("tcp-db".into()),
            }
            svc.spec = Some(new);
        }
        let plan = plan_of(&seed_ve(), &snapshot);
        assert!(plan.virtual_services.is_empty());
        assert!(plan.plugin_config.services.is_empty());
        let skipped = plan.skipped.join("\n");
        assert!(skipped.contains("app-a: a headless service"), "{skipped}");
        assert!(
            skipped.contains("app-b: an ExternalName service"),
            "{skipped}"
        );
        assert!(skipped.contains("app-c: no HTTP or gRPC port"), "{skipped}");
    }

    /// A pod without the env label is in no subset. With a default subset, the default
    /// route goes to that subset, so such a pod gets no traffic of a routed service; without
    /// one, the default route is the whole service, so it gets the requests whose env
    /// matches no subset, like every other pod.
    #[test]
    fn pods_without_the_env_label_with_and_without_a_default_subset() {
        let mut snapshot = seed_snapshot();
        snapshot
            .pods
            .push(pod("app-a-unlabelled", "app-a", None, true));
        let with_default = plan_of(&seed_ve(), &snapshot);
        assert_eq!(routes(vs(&with_default, "app-a")).last().unwrap().1, "dev");
        let subsets = &dr(&with_default, "app-a").spec.subsets;
        assert!(subsets.iter().all(|s| s.labels.contains_key("virtual-env")));
        assert_eq!(with_default.envs.len(), 2);
        let without = plan_of(&ve("envLabel: {name: virtual-env}"), &snapshot);
        assert_eq!(routes(vs(&without, "app-a")).last().unwrap().1, "-");
        // A service whose pods are all unlabelled has no env to route: left as it is.
        let mut unlabelled = seed_snapshot();
        unlabelled.services.push(service("app-u"));
        unlabelled.pods.push(pod("app-u-1", "app-u", None, true));
        let plan = plan_of(&seed_ve(), &unlabelled);
        assert!(plan
            .virtual_services
            .iter()
            .all(|v| v.name_any() != "app-u"));
        assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
    }

    #[test]
    fn an_invalid_spec_is_an_error_that_says_why() {
        let bad = ve("envLabel: {splitter: '::'}");
        let err = plan_namespace(&bad, &seed_snapshot(), &settings()).unwrap_err();
        assert!(err.to_string().contains("splitter"), "{err}");
        // An alias entry of neither form is read (the watch of every VirtualEnvironment
        // must not fail on it) and reported.
        let bad = ve("envHeader: {aliases: [x-env, {nmae: cookie}]}");
        let err = plan_namespace(&bad, &seed_snapshot(), &settings()).unwrap_err();
        assert!(err.to_string().contains("envHeader.aliases"), "{err}");
        // A pattern the filter cannot match is an invalid spec too, naming the character.
        let bad = ve("envHeader: {aliases: [{name: cookie, pattern: '[a-z]+=(@)'}]}");
        let err = plan_namespace(&bad, &seed_snapshot(), &settings()).unwrap_err();
        assert!(err.to_string().contains("'['"), "{err}");
        // Both forms, as the original project's v1alpha2 wrote them, plan.
        let good = ve("envHeader: {aliases: [x-env, {name: cookie, pattern: '.*env=(@);?.*'}, {name: x-whole, pattern: ''}]}");
        let plan = plan_of(&good, &seed_snapshot());
        assert_eq!(plan.plugin_config.header_aliases, ["x-env", "x-whole"]);
        assert_eq!(plan.plugin_config.header_patterns[0].placeholder, "(@)");
    }

    #[test]
    fn output_is_deterministic_whatever_the_input_order() {
        let a = plan_of(&seed_ve(), &seed_snapshot());
        let mut shuffled = seed_snapshot();
        shuffled.services.reverse();
        shuffled.pods.reverse();
        let b = plan_of(&seed_ve(), &shuffled);
        assert_eq!(a, b);
        assert_eq!(
            serde_json::to_string(&a.virtual_services).unwrap(),
            serde_json::to_string(&b.virtual_services).unwrap()
        );
    }

    #[test]
    fn a_wasm_module_in_the_spec_overrides_the_served_one() {
        let ve = ve("wasmModule: {url: 'oci://registry.example/virtual-env:0.1.0'}");
        let plan = plan_of(&ve, &seed_snapshot());
        assert_eq!(
            plan.wasm_plugin.spec.url,
            "oci://registry.example/virtual-env:0.1.0"
        );
        assert_eq!(plan.wasm_plugin.spec.sha256, None);
    }

    proptest! {
        /// Every env with ready pods behind a routed service gets exactly one subset, and
        /// every route points at a subset of that service's DestinationRule.
        #[test]
        fn every_env_has_one_subset_and_every_route_a_target(
            pods in proptest::collection::vec(
                (0..4usize, proptest::sample::select(vec![
                    "dev", "dev.p1", "dev.p1.u1", "dev-p1", "dev_p1", "qa", "Dev.P1", "dev.p2",
                ]), any::<bool>()),
                0..40,
            )
        ) {
            let snapshot = Snapshot {
                services: (0..4).map(|i| service(&format!("svc{i}"))).collect(),
                pods: pods
                    .iter()
                    .enumerate()
                    .map(|(i, (svc, env, ready))| pod(&format!("p{i}"), &format!("svc{svc}"), Some(env), *ready))
                    .collect(),
                ..Snapshot::default()
            };
            let plan = plan_of(&seed_ve(), &snapshot);
            for (vs, dr) in plan.virtual_services.iter().zip(&plan.destination_rules) {
                prop_assert_eq!(vs.name_any(), dr.name_any());
                let subsets: BTreeSet<&str> = dr.spec.subsets.iter().map(|s| s.name.as_str()).collect();
                prop_assert_eq!(subsets.len(), dr.spec.subsets.len(), "subset names collide");
                let svc = vs.name_any();
                let want: BTreeSet<&str> = pods
                    .iter()
                    .filter(|(s, _, ready)| *ready && format!("svc{s}") == svc)
                    .map(|(_, env, _)| *env)
                    .collect();
                let envs: BTreeSet<&str> = dr.spec.subsets.iter().map(|s| s.labels["virtual-env"].as_str()).collect();
                prop_assert_eq!(envs, want);
                for route in &vs.spec.http {
                    if let Some(subset) = &route.route[0].destination.subset {
                        prop_assert!(subsets.contains(subset.as_str()), "route to missing subset {}", subset);
                    }
                }
            }
        }
    }
}
