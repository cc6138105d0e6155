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

use crate::crd::{RoutingApi, VirtualEnvironment, ROUTE_HEADER_SUFFIX_LEN};
use crate::existing::{Existing, Kind};
use crate::extension::ExtensionApi;
use crate::gamma::{
    self, env_service_name, is_env_service, EnvBackend, GatewayApi, GatewayApiRouting, MeshRoute,
};
use crate::gateway::{self, GatewayKind, GatewayName};
use crate::gateway_admission::{
    admit, route_gateways, route_hostnames, Admitted, GatewayAdmission, GatewayCluster, Tenant,
};
use crate::gateway_plugins;
use crate::istio::{
    Destination, DestinationRule, DestinationRuleSpec, HeaderOperations, Headers, HttpMatchRequest,
    HttpRoute, HttpRouteDestination, PolicyTargetReference, StringMatch, Subset, TrafficSelector,
    VirtualService, VirtualServiceSpec, WasmPlugin, WasmPluginSpec,
};
use crate::peer_namespaces::{add_peers, Published};
use crate::routable::not_routable;
use crate::skip::Skip;
use crate::spec_errors::at_spec_path;
use crate::subset::SubsetNames;
use crate::waypoint;

pub use crate::objects::{
    plugin_config_of, plugin_config_value, stored_bytes, WasmSource, COMPACT_ABOVE_BYTES,
    INBOUND_WASM_PLUGIN_NAME, MANAGED_BY, MANAGED_BY_LABEL, MAX_PLUGIN_CONFIG_BYTES,
    OWNER_NAMESPACE_LABEL, OWNER_UID_LABEL, RULE_ANNOTATION, WASM_PLUGIN_NAME,
};

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
    /// The Gateway API routes the cluster serves; `None`: no Gateway API CRDs.
    pub gateway_api: Option<GatewayApi>,
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
    /// The namespace's labels (`istio.io/use-waypoint`: its services' waypoint).
    pub namespace_labels: BTreeMap<String, String>,
}

/// The desired state of a namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The API the namespace's routes are written in.
    pub routing_api: RoutingApi,
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    /// With routing in Gateway API: the Services of the routed services' envs, by name.
    pub env_services: Vec<Service>,
    /// With routing in Gateway API: the HTTPRoutes and GRPCRoutes, by service.
    pub mesh_routes: Vec<MeshRoute>,
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
    /// The plugin objects of the namespace's waypoints (ambient mode, `waypoint.rs`),
    /// attached by `targetRefs`.
    pub waypoint_plugins: Vec<WasmPlugin>,
    /// What the namespace asks to be entered under, admitted or not: (`<ns>/<gateway>`,
    /// host). Published, so that the namespaces it competes with are planned again.
    pub gateway_claims: BTreeSet<(String, String)>,
}

impl Plan {
    /// The namespace's services routed by env, whatever the API.
    pub fn routed_services(&self) -> usize {
        self.plugin_config.services.len()
    }
}

#[derive(Debug, Error)]
pub enum PlanError {
    /// The spec's mistake, at its path (`spec_errors.rs`).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("the VirtualEnvironment has no namespace")]
    NoNamespace,
    /// An alias entry of neither form, said at its path (`spec_errors.rs`).
    #[error("invalid spec: {0}")]
    InvalidAlias(String),
    #[error("a {2} named {1} exists in namespace {0} and is not managed by this VirtualEnvironment; rename or remove it")]
    WasmPluginTaken(String, &'static str, &'static str),
    #[error("invalid spec: {0}")]
    InvalidEdgeTrust(#[from] virtual_env_core::edge::EdgeTrustError),
    #[error("spec.routing.api is HTTPRoute, but the cluster does not serve Gateway API's HTTPRoute (gateway.networking.k8s.io/v1): install the Gateway API CRDs, or route with VirtualService")]
    GatewayApiMissing,
    #[error("invalid spec: {0}")]
    InvalidModule(String),
    #[error("the plugin config would take {bytes} bytes of the stored object (with its managed-fields entry) even in compact form, over the {max} bytes this controller writes into one object (Kubernetes stores at most ~1.5 MiB); nothing was changed. Split the namespace, or route fewer envs")]
    ConfigTooLarge { bytes: usize, max: usize },
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
    let (routing_api, routing_note) = routing_api(ve, &ready, settings)?;
    let mut plan = Plan {
        routing_api,
        virtual_services: Vec::new(),
        destination_rules: Vec::new(),
        env_services: Vec::new(),
        mesh_routes: Vec::new(),
        wasm_plugin: wasm_plugin(ve, &spec.namespace, settings, &spec.config),
        inbound_wasm_plugin: wasm_plugin(ve, &spec.namespace, settings, &spec.config.called_side()),
        plugin_config: spec.config.clone(),
        envs: ready.iter().map(|(_, env)| env.to_string()).collect(),
        skipped: routing_note.into_iter().collect(),
        ignored_pods,
        route_header: spec.route_header.clone(),
        prune: Vec::new(),
        gateway_plugins: Vec::new(),
        waypoint_plugins: Vec::new(),
        gateway_claims: BTreeSet::new(),
    };
    let exposed = route_services(&mut plan, &spec, snapshot, &ready);
    plan.env_services.sort_by_key(|s| s.name_any());
    let admitted = admit_entry(&mut plan, &spec, snapshot, &exposed);
    fit_peers(&mut plan, &spec, snapshot)?;
    plan_gateway_objects(&mut plan, &spec, snapshot, &admitted);
    plan_waypoint_objects(&mut plan, &spec, snapshot, &ready);
    plan.prune = to_prune(&plan, &spec, snapshot);
    Ok(plan)
}

/// Routes each service of the namespace (`route_service`) into `plan`: its objects, its
/// entry in the filter's table, what the status says of it. Returns the exposures asked
/// for the routed services (admission decides later).
fn route_services(
    plan: &mut Plan,
    spec: &Resolved<'_>,
    snapshot: &Snapshot,
    ready: &[(&Pod, &str)],
) -> BTreeMap<String, gateway::Exposure> {
    let kind = match plan.routing_api {
        RoutingApi::HttpRoute => GatewayKind::GatewayApi,
        RoutingApi::VirtualService => GatewayKind::Istio,
    };
    let (exposures, problems) =
        gateway::exposures(spec.ve, &snapshot.services, &spec.namespace, kind);
    plan.skipped.extend(problems);
    let by_label = LabelIndex::new(ready.iter().map(|(pod, _)| *pod));
    // Callers without a sidecar reach a service through its waypoint, or through
    // ztunnel (L4) only.
    let ambient_callers = waypoint::ambient_namespace(&snapshot.namespace_labels)
        || ready.iter().any(|(pod, _)| in_ambient_mode(pod));
    // The Services the controller wrote for envs are not routed themselves.
    let mut services: Vec<&Service> = (snapshot.services.iter())
        .filter(|s| !is_env_service(s))
        .collect();
    services.sort_by_key(|s| s.name_any());
    let mut exposed = BTreeMap::new();
    for service in services {
        let envs = envs_of(service, &by_label, ready);
        let exposure = exposures.get(&service.name_any());
        let routed = match route_service(spec, plan.routing_api, service, &envs, exposure) {
            Routing::NotByEnv => continue,
            Routing::Skipped(skip) => {
                plan.skipped.push(skip);
                continue;
            }
            Routing::Routed(routed) => *routed,
        };
        if let Some(skip) = env_service_taken(plan, &routed.objects, service) {
            plan.skipped.push(skip);
            continue;
        }
        plan.skipped.extend(routed.notes);
        plan.skipped.extend(ambient_note(
            service,
            &spec.namespace,
            snapshot,
            ambient_callers,
        ));
        if let Some(exposure) = routed.exposure {
            exposed.insert(service.name_any(), exposure);
        }
        match routed.objects {
            RouteObjects::Istio { vs, dr } => {
                plan.virtual_services.push(vs);
                plan.destination_rules.push(dr);
            }
            RouteObjects::GatewayApi { services, routes } => {
                plan.env_services.extend(services);
                plan.mesh_routes.extend(routes);
            }
        }
        let host = service_fqdn(
            &service.name_any(),
            &spec.namespace,
            &spec.settings.cluster_domain,
        );
        plan.plugin_config.services.insert(host, routed.envs);
    }
    exposed
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
    /// The names of the namespace's Services but the env Services this VirtualEnvironment
    /// wrote.
    foreign_services: BTreeSet<String>,
    /// The env Services this VirtualEnvironment wrote (`gamma.rs`), to prune or keep.
    env_services: Vec<Existing>,
}

fn resolve<'a>(
    ve: &'a VirtualEnvironment,
    snapshot: &'a Snapshot,
    settings: &'a Settings,
) -> Result<Resolved<'a>, PlanError> {
    let namespace = ve.namespace().ok_or(PlanError::NoNamespace)?;
    if let Some(said) = crate::spec_errors::invalid_alias(&ve.spec) {
        return Err(PlanError::InvalidAlias(said));
    }
    if let Some(module) = &ve.spec.wasm_module {
        module.validate().map_err(PlanError::InvalidModule)?;
    }
    let mut config = ve.spec.plugin_config();
    let invalid = |e: ConfigError| PlanError::InvalidSpec(at_spec_path(&ve.spec, &e));
    config.validate().map_err(invalid)?;
    if let Some(edge) = &ve.spec.edge_trust {
        (edge.to_config().validate(config.splitter_char()))
            .map_err(|e| invalid(ConfigError::from(e)))?;
    }
    let owner_uid = ve.uid();
    let (env_services, foreign_services) =
        env_services_of(snapshot, &namespace, owner_uid.as_deref());
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
        foreign_services,
        env_services,
    })
}

/// The namespace's Services split: those this VirtualEnvironment wrote for envs (as
/// objects it owns), and the names of all others. The reconciler counts the first among
/// what it applied before (`transition.rs`).
pub(crate) fn env_services_of(
    snapshot: &Snapshot,
    namespace: &str,
    owner_uid: Option<&str>,
) -> (Vec<Existing>, BTreeSet<String>) {
    let mut ours = Vec::new();
    let mut foreign = BTreeSet::new();
    for service in &snapshot.services {
        let object = is_env_service(service)
            .then(|| serde_json::to_value(service).ok())
            .flatten()
            .map(|value| Existing::from_json(Kind::Service, &value, namespace))
            .filter(|object| object.managed_by(owner_uid));
        match object {
            Some(object) => ours.push(object),
            None => {
                foreign.insert(service.name_any());
            }
        }
    }
    (ours, foreign)
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

/// What a routed service does not get when callers of the namespace run in Istio's
/// ambient mode (no sidecar, so the filter does not run in them): their calls are routed
/// by env only at the service's waypoint, where virtual-env puts the filter
/// (`plan_waypoint_objects`); without one they pass ztunnel (L4) only and reach the
/// service unrouted. Said in the status.
fn ambient_note(
    service: &Service,
    namespace: &str,
    snapshot: &Snapshot,
    ambient_callers: bool,
) -> Option<Skip> {
    if !ambient_callers {
        return None;
    }
    let name = service.name_any();
    match waypoint::waypoint_of(service, namespace, &snapshot.namespace_labels) {
        // Ours there (by the waypoint's Gateway, or by the service where the waypoint is
        // another namespace's, see `plan_waypoint_objects`).
        Some(_) => None,
        None => Some(Skip::service(
            &name,
            format_args!(
                "pods of the namespace run in Istio's ambient mode, but the service has no waypoint ({} on it or its namespace): calls from those pods pass ztunnel only (L4) and are not routed by env",
                waypoint::USE_WAYPOINT
            ),
        )),
    }
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
    objects: RouteObjects,
    envs: Vec<String>,
    /// Its gateway entry as asked (admission decides later), if any.
    exposure: Option<gateway::Exposure>,
    /// What the status says of it besides (a rule beside ours, an annotation not applied).
    notes: Vec<Skip>,
}

/// A routed service's objects, in the API the namespace routes with.
#[allow(clippy::large_enum_variant)] // held in a `Box<Routed>`, briefly
enum RouteObjects {
    Istio {
        vs: VirtualService,
        dr: DestinationRule,
    },
    GatewayApi {
        services: Vec<Service>,
        routes: Vec<MeshRoute>,
    },
}

/// The API the namespace's routes are written in: the spec's; else the one in force
/// (`status.routingApi`: decided once, so that it does not flip as pods come and go); a
/// VirtualEnvironment applied before that field existed keeps VirtualServices; else
/// HTTPRoute where its pods run in Istio's ambient mode (waypoints apply HTTPRoutes;
/// VirtualServices there are alpha) and the cluster serves it; else VirtualService.
fn routing_api(
    ve: &VirtualEnvironment,
    ready: &[(&Pod, &str)],
    settings: &Settings,
) -> Result<(RoutingApi, Option<Skip>), PlanError> {
    let served = settings.gateway_api.is_some();
    let not_served = |why: &str| {
        Ok((
            RoutingApi::VirtualService,
            Some(Skip::routing(format_args!(
                "{why}, but the cluster does not serve Gateway API: written as VirtualServices"
            ))),
        ))
    };
    if let Some(api) = ve.spec.routing.as_ref().and_then(|r| r.api) {
        return match api {
            RoutingApi::HttpRoute if !served => Err(PlanError::GatewayApiMissing),
            api => Ok((api, None)),
        };
    }
    let status = ve.status.as_ref();
    match status.and_then(|s| s.routing_api) {
        Some(RoutingApi::HttpRoute) if !served => {
            return not_served("the routes were written as HTTPRoutes (status.routingApi)")
        }
        Some(api) => return Ok((api, None)),
        // Applied (Ready) by a controller before `routingApi`: it wrote VirtualServices.
        None if status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        }) =>
        {
            return Ok((RoutingApi::VirtualService, None))
        }
        None => {}
    }
    match ready.iter().any(|(pod, _)| in_ambient_mode(pod)) {
        true if served => Ok((RoutingApi::HttpRoute, None)),
        true => not_served("pods of the namespace run in Istio's ambient mode, where routes are best written as HTTPRoutes"),
        false => Ok((RoutingApi::VirtualService, None)),
    }
}

fn route_service(
    spec: &Resolved<'_>,
    api: RoutingApi,
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
    let (mut notes, traffic_policy) = match held_by(spec, api, &name, &our_subsets) {
        Ok(kept) => kept,
        Err(skip) => return Routing::Skipped(skip),
    };
    if service.annotations().contains_key(RULE_ANNOTATION) {
        notes.push(Skip::service(
            &name,
            format_args!("annotation {RULE_ANNOTATION} is not supported and not applied; its routes are only the env routes"),
        ));
    }
    let exposure = exposure.and_then(|e| gateway_hosts_free(spec, &name, e, &mut notes));
    let envs_out = envs.iter().map(|e| e.to_string()).collect();
    let (objects, exposure) = match api {
        RoutingApi::VirtualService => {
            let default = default_subset.filter(|_| has_default).map(subset_of);
            let objects = istio_objects(spec, &name, envs, &subset_of, default, traffic_policy);
            (objects, exposure)
        }
        RoutingApi::HttpRoute => {
            let default = default_subset.filter(|_| has_default);
            let objects = match gateway_api_objects(spec, service, envs, default) {
                Ok(objects) => objects,
                Err(skip) => return Routing::Skipped(skip),
            };
            (objects, exposure)
        }
    };
    Routing::Routed(Box::new(Routed {
        objects,
        envs: envs_out,
        exposure,
        notes,
    }))
}

/// A service's VirtualService and DestinationRule. Hosts and gateways are set once
/// gateway entry is admitted (`admit_entry`).
fn istio_objects(
    spec: &Resolved<'_>,
    name: &str,
    envs: &BTreeSet<&str>,
    subset_of: &dyn Fn(&str) -> String,
    default: Option<String>,
    traffic_policy: Option<serde_json::Value>,
) -> RouteObjects {
    let host = service_fqdn(name, &spec.namespace, &spec.settings.cluster_domain);
    let meta = managed_meta(spec.ve, name, &spec.namespace);
    let http = env_routes(spec, &host, envs, subset_of, default);
    let subsets = envs
        .iter()
        .map(|env| Subset {
            name: subset_of(env),
            labels: BTreeMap::from([(spec.config.env_label.clone(), env.to_string())]),
        })
        .collect();
    RouteObjects::Istio {
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
            spec: DestinationRuleSpec {
                host,
                traffic_policy,
                subsets,
            },
        },
    }
}

/// Another service's env Service under a name `objects` use (two (service, env) pairs
/// whose names' 32-bit hashes collide; never seen, but a Service must not serve two).
fn env_service_taken(plan: &Plan, objects: &RouteObjects, service: &Service) -> Option<Skip> {
    let RouteObjects::GatewayApi { services, .. } = objects else {
        return None;
    };
    let names: Vec<String> = services.iter().map(ResourceExt::name_any).collect();
    let taken = names.iter().enumerate().find_map(|(i, name)| {
        let twice = names[..i].contains(name)
            || plan
                .env_services
                .iter()
                .any(|other| other.name_any() == *name);
        twice.then(|| name.clone())
    })?;
    Some(Skip::service(
        &service.name_any(),
        format_args!("the name of its env Service {taken} is another env's Service's (a hash collision): rename the service or the env"),
    ))
}

/// A service's Gateway API objects (`gamma.rs`): a Service per env and the routes; a
/// skip when one of their names is another's object's.
fn gateway_api_objects(
    spec: &Resolved<'_>,
    service: &Service,
    envs: &BTreeSet<&str>,
    default_env: Option<&str>,
) -> Result<RouteObjects, Skip> {
    let name = service.name_any();
    let routing = GatewayApiRouting {
        service,
        env_label: &spec.config.env_label,
        envs: envs
            .iter()
            .map(|env| EnvBackend {
                env: env.to_string(),
                service: env_service_name(&name, env),
            })
            .collect(),
        default_env: default_env.map(str::to_owned),
        route_header: &spec.route_header,
        strip: spec
            .strip
            .as_ref()
            .map(|h| h.request.remove.clone())
            .unwrap_or_default(),
        grpc_route: spec.settings.gateway_api.is_some_and(|g| g.grpc_route),
    };
    let meta = |n: &str| managed_meta(spec.ve, n, &spec.namespace);
    let services = routing.env_services(&meta);
    let routes = routing.routes(&meta);
    let mut taken: Vec<String> = services
        .iter()
        .map(ResourceExt::name_any)
        .filter(|n| spec.foreign_services.contains(n))
        .map(|n| format!("Service {n}"))
        .collect();
    taken.extend(
        routes
            .iter()
            .filter(|r| {
                spec.others
                    .iter()
                    .any(|e| e.kind == r.kind() && e.name == r.name())
            })
            .map(|r| format!("{} {}", r.kind().name(), r.name())),
    );
    if !taken.is_empty() {
        return Err(Skip::service(
            &name,
            format_args!(
                "the names of its env objects are taken: {} exist and are not managed by this VirtualEnvironment",
                taken.join(", ")
            ),
        ));
    }
    Ok(RouteObjects::GatewayApi { services, routes })
}

/// The VirtualService's routes: one per env matching the route header exactly, to that
/// env's subset, then the default route (to `default`, or to the whole service).
fn env_routes(
    spec: &Resolved<'_>,
    host: &str,
    envs: &BTreeSet<&str>,
    subset_of: &dyn Fn(&str) -> String,
    default: Option<String>,
) -> Vec<HttpRoute> {
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
            route: vec![to(host, Some(subset_of(env)))],
            headers: spec.strip.clone(),
        })
        .collect();
    http.push(HttpRoute {
        name: "default".into(),
        matches: Vec::new(),
        route: vec![to(host, default)],
        headers: spec.strip.clone(),
    });
    http
}

/// Whether a user's object holds the service: `Err` with the skip when one does; else
/// the notes on the users' DestinationRules for its host, and the traffic policy ours
/// carries over.
///
/// Istio picks one VirtualService for a host (sidecars do not merge them): the service is
/// left to its owner. A user's DestinationRule for the same host (spelled as ours) is
/// merged with ours (subsets added; ours sets no traffic policy, so theirs applies). One
/// for a wildcard host (`*.ns.svc.cluster.local`: mTLS, pools, outlier detection for the
/// namespace) would be shadowed by ours, Istio applying the most specific host's rule
/// only: ours carries its traffic policy over. One that has our name or one of our
/// subsets' names, a workload selector or an `exportTo` leaves the service to it.
fn held_by(
    spec: &Resolved<'_>,
    api: RoutingApi,
    name: &str,
    our_subsets: &BTreeSet<String>,
) -> Result<(Vec<Skip>, Option<serde_json::Value>), Skip> {
    let routes_it =
        |e: &Existing| e.routes_service(name, &spec.namespace, &spec.settings.cluster_domain);
    let rules: Vec<&Existing> = spec
        .others
        .iter()
        .filter(|e| e.kind == Kind::DestinationRule && routes_it(e))
        .copied()
        .collect();
    let with_subsets = api == RoutingApi::VirtualService;
    let mut holders: Vec<String> = spec
        .others
        .iter()
        .filter(|e| match e.kind {
            // Istio makes one VirtualService of a namespace's routes for a service, and
            // sidecars use one VirtualService per host: a user's route (either API) and
            // ours would not both apply.
            Kind::VirtualService => (with_subsets && e.name == name) || routes_it(e),
            Kind::HttpRoute | Kind::GrpcRoute => routes_it(e),
            Kind::DestinationRule if with_subsets => {
                e.name == name
                    || (routes_it(e)
                        && (subset_names(e).iter().any(|s| our_subsets.contains(s))
                            || !e.spec["workloadSelector"].is_null()
                            || exported_narrowly(e)))
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
    if !with_subsets {
        // The routes send to the envs' own Services, other hosts than the service's: a
        // rule for its host does not reach them (a namespace-wide wildcard rule does).
        let notes = rules
            .iter()
            .filter(|e| e.names_host_exactly(name, &spec.namespace, &spec.settings.cluster_domain))
            .map(|rule| {
                Skip::service(
                    name,
                    format_args!("routed by env beside {}: its traffic policy applies to the service's own host, not to the envs' Services the HTTPRoutes send to", rule.describe()),
                )
            })
            .collect();
        return Ok((notes, None));
    }
    Ok(beside_rules(spec, name, &rules))
}

/// The users' DestinationRules kept beside ours for the service: a note on each, and the
/// traffic policy ours carries over.
fn beside_rules(
    spec: &Resolved<'_>,
    name: &str,
    rules: &[&Existing],
) -> (Vec<Skip>, Option<serde_json::Value>) {
    let wildcard = |e: &Existing| e.hosts.iter().any(|h| h.starts_with('*'));
    let exact =
        |e: &Existing| e.names_host_exactly(name, &spec.namespace, &spec.settings.cluster_domain);
    // Without ours Istio would apply the user's exact-host rules if there are any (merged,
    // the oldest one's traffic policy), else the most specific wildcard host's rules
    // (merged the same way). Exact-host rules merge with ours, whose policy is none: theirs
    // stays in force. Wildcard rules would be shadowed by ours: the policy they would
    // have applied is carried over, and only when no exact-host rule exists.
    let most_specific = rules
        .iter()
        .filter(|e| wildcard(e))
        .map(|e| e.hosts.first().map_or(0, String::len))
        .max();
    let mut shadowed: Vec<&Existing> = rules
        .iter()
        .filter(|e| wildcard(e) && Some(e.hosts.first().map_or(0, String::len)) == most_specific)
        .copied()
        .collect();
    shadowed.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    let carried = if rules.iter().any(|e| exact(e)) {
        None
    } else {
        shadowed
            .iter()
            .find(|e| !e.spec["trafficPolicy"].is_null())
            .or(shadowed.first())
            .copied()
    };
    let notes = rules
        .iter()
        .map(|rule| {
            let what = if exact(rule) {
                "Istio merges its subsets with ours, and its traffic policy applies (ours sets none)"
            } else if !wildcard(rule) {
                "Istio matches no service by this host spelling (only the short name or the FQDN), so it changes nothing"
            } else if carried.is_some_and(|c| c.name == rule.name) {
                "its traffic policy is carried over into ours (Istio applies only the most specific host's rule)"
            } else if carried.is_some() && shadowed.iter().any(|s| s.name == rule.name) {
                "merged by Istio with the other rules of its host; the oldest traffic policy among them is carried over"
            } else {
                "a more specific rule for the host applies instead, as it would without ours"
            };
            Skip::service(
                name,
                format_args!("routed by env beside {}: {what}", rule.describe()),
            )
        })
        .collect();
    let traffic_policy = carried
        .map(|c| c.spec["trafficPolicy"].clone())
        .filter(|p| !p.is_null());
    (notes, traffic_policy)
}

/// Whether a DestinationRule is exported to fewer namespaces than the mesh default (`*`):
/// merging ours into it would change who sees the env subsets.
fn exported_narrowly(rule: &Existing) -> bool {
    match rule.spec["exportTo"].as_array() {
        None => false,
        // Empty, like absent, takes the mesh default.
        Some(to) => to.iter().any(|t| t != "*"),
    }
}

/// The service's gateway entry, unless a user's VirtualService (HTTPRoute bound to
/// Gateways, with Gateway API routing) of the namespace routes one of its gateway hosts
/// (Istio would merge the two): then it stays routed in the mesh only.
fn gateway_hosts_free(
    spec: &Resolved<'_>,
    name: &str,
    exposure: &gateway::Exposure,
    notes: &mut Vec<Skip>,
) -> Option<gateway::Exposure> {
    let mut taken: Vec<String> = spec
        .others
        .iter()
        .filter(|e| {
            let hosts = match spec_routes_with_gateway_api(exposure) {
                false if e.kind == Kind::VirtualService => e.hosts.clone(),
                // Bound to a Gateway, beside a Service or not.
                true if e.kind.is_route() && !route_gateways(e).is_empty() => route_hostnames(e),
                _ => return false,
            };
            hosts
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

/// Whether an exposure names Gateway API Gateways (the namespace routes with HTTPRoutes).
fn spec_routes_with_gateway_api(exposure: &gateway::Exposure) -> bool {
    exposure
        .gateways
        .iter()
        .any(|g| g.kind == GatewayKind::GatewayApi)
}

/// Gateway entry as the cluster admits it (`gateway_admission.rs`): the VirtualServices
/// of exposed services bound to the admitted gateways and hosts only (with Gateway API
/// routing, their gateway routes), and the claims the namespace publishes.
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
    let mut admitted = admitted;
    let mut unbound = Vec::new();
    for (service, exposure) in &admitted.exposures {
        if !spec_routes_with_gateway_api(exposure) {
            continue;
        }
        let routes = entry_routes(plan, spec, service, exposure);
        if routes.is_empty() {
            unbound.push(service.clone());
        }
        plan.mesh_routes.extend(routes);
    }
    // A service whose routes cannot be written is not entered there at all: no host of
    // it in the gateway's plugin, no claim kept on it.
    for service in &unbound {
        admitted.exposures.remove(service);
        for placement in &mut admitted.placements {
            placement.hosts.retain(|_, s| s != service);
        }
    }
    admitted.placements.retain(|p| !p.hosts.is_empty());
    admitted
}

/// The HTTPRoutes that bind `service`'s admitted entry to Gateway API Gateways
/// (`gamma::gateway_routes`); none, said in the status, when a name is taken, the hosts or
/// Gateways are more than a route holds, or the service has no HTTP or gRPC port.
fn entry_routes(
    plan: &mut Plan,
    spec: &Resolved<'_>,
    service: &str,
    exposure: &gateway::Exposure,
) -> Vec<MeshRoute> {
    let hosts: Vec<String> = exposure.hosts.iter().cloned().collect();
    let over = |what: &str, n: usize, max: usize| {
        Skip::service(
            service,
            format_args!(
                "not bound to its gateways: {n} {what}, over the {max} an HTTPRoute may name"
            ),
        )
    };
    if hosts.len() > gamma::MAX_HOSTNAMES {
        plan.skipped
            .push(over("hosts", hosts.len(), gamma::MAX_HOSTNAMES));
        return Vec::new();
    }
    if exposure.gateways.len() > gamma::MAX_PARENTS {
        let n = exposure.gateways.len();
        plan.skipped.push(over("gateways", n, gamma::MAX_PARENTS));
        return Vec::new();
    }
    let gateways: Vec<(String, String)> = exposure
        .gateways
        .iter()
        .map(|g| (g.namespace.clone(), g.name.clone()))
        .collect();
    let name = format!("{service}.{}", gamma::GATEWAY_ROUTE_SUFFIX);
    let meta = managed_meta(spec.ve, &name, &spec.namespace);
    let routes = gamma::gateway_routes(&plan.mesh_routes, service, &gateways, &hosts, meta);
    if routes.is_empty() {
        plan.skipped.push(Skip::service(
            service,
            "not bound to its gateways: it has no HTTP or gRPC port to route",
        ));
        return Vec::new();
    }
    let taken: Vec<String> = (routes.iter())
        .filter(|r| (spec.others.iter()).any(|e| e.kind == r.kind() && e.name == r.name()))
        .map(|r| format!("{} {}", r.kind().name(), r.name()))
        .collect();
    if !taken.is_empty() {
        plan.skipped.push(Skip::service(
            service,
            format_args!(
                "not bound to its gateways: {} exist and are not managed by this VirtualEnvironment",
                taken.join(", ")
            ),
        ));
        return Vec::new();
    }
    routes
}

/// Takes in the other namespaces' tables (`peers`) within the size budget: the namespace's
/// own routing goes first, so over the budget calls into the others lose their env;
/// `ConfigTooLarge` when even its own does not fit.
fn fit_peers(plan: &mut Plan, spec: &Resolved<'_>, snapshot: &Snapshot) -> Result<(), PlanError> {
    let max = spec.settings.max_plugin_config_bytes;
    let mut peers_skipped = add_peers(&mut plan.plugin_config, &spec.namespace, &snapshot.peers);
    // Another namespace's table must never make this namespace's config one its sidecars
    // reject: each is checked, and one that does not validate is left out.
    if plan.plugin_config.validate().is_err() {
        let peers = std::mem::take(&mut plan.plugin_config.peers);
        for (ns, peer) in peers {
            let mut probe = plan.plugin_config.clone();
            probe.peers.insert(ns.clone(), peer.clone());
            match probe.validate() {
                Ok(()) => {
                    plan.plugin_config.peers.insert(ns, peer);
                }
                Err(e) => peers_skipped.push(Skip::peers(format_args!(
                    "calls into namespace {ns} are not routed by env: its table is not valid here: {e}"
                ))),
            }
        }
    }
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
    let exposed: Vec<gateway_plugins::ExposedService<'_>> = admitted
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
            gateway_plugins::ExposedService {
                name,
                fqdn,
                envs,
                exposure,
            }
        })
        .collect();
    let gateway_plans = gateway_plugins::plan_gateways(
        spec.ve,
        &spec.namespace,
        &gateway_plugins::Entry {
            exposed: &exposed,
            placements: &admitted.placements,
        },
        &plan.plugin_config,
        &snapshot.elsewhere,
        &gateway_plugins::ModuleSources {
            tenant: &wasm_source(spec.ve, spec.settings),
            controller: &spec.settings.wasm,
        },
        spec.settings.extension_api.kind(),
    );
    plan.gateway_plugins = gateway_plans.plugins;
    plan.skipped.extend(gateway_plans.skipped);
}

/// The plugin objects of the namespace's waypoints: one per waypoint of the namespace
/// that a service of it names, attached to the waypoint's Gateway, with the calling
/// side's config for `direction: waypoint` and the ambient workloads' envs.
fn plan_waypoint_objects(
    plan: &mut Plan,
    spec: &Resolved<'_>,
    snapshot: &Snapshot,
    ready: &[(&Pod, &str)],
) {
    // The waypoints of the namespace, and the services behind one of another namespace.
    let mut waypoints = BTreeSet::new();
    let mut elsewhere = Vec::new();
    for service in snapshot.services.iter().filter(|s| !is_env_service(s)) {
        match waypoint::waypoint_of(service, &spec.namespace, &snapshot.namespace_labels) {
            Some(w) if w.namespace == spec.namespace => {
                waypoints.insert(w.name);
            }
            Some(_) => elsewhere.push(service.name_any()),
            None => {}
        }
    }
    if waypoints.is_empty() && elsewhere.is_empty() {
        return;
    }
    let Some((config, value)) = waypoint_config(plan, spec, ready) else {
        return;
    };
    let attached = |name: String, target_refs: Vec<PolicyTargetReference>| {
        let mut plugin = wasm_plugin(spec.ve, &spec.namespace, spec.settings, &config);
        plugin.metadata.name = Some(name);
        plugin.spec.traffic_selectors = Vec::new();
        plugin.spec.target_refs = target_refs;
        plugin.spec.plugin_config = value.clone();
        plugin
    };
    // A waypoint of the namespace: by its Gateway, every service it serves.
    for name in waypoints {
        let target = PolicyTargetReference {
            group: waypoint::GATEWAY_GROUP.into(),
            kind: "Gateway".into(),
            name: name.clone(),
        };
        plan.waypoint_plugins
            .push(attached(waypoint::plugin_name(&name), vec![target]));
    }
    // A waypoint of another namespace: by the service, from the service's namespace
    // (Istio 1.25+ looks there), at most 16 targets to an object.
    for (i, services) in elsewhere.chunks(waypoint::MAX_TARGET_REFS).enumerate() {
        let targets = services
            .iter()
            .map(|name| PolicyTargetReference {
                group: String::new(),
                kind: "Service".into(),
                name: name.clone(),
            })
            .collect();
        plan.waypoint_plugins
            .push(attached(waypoint::services_plugin_name(i), targets));
    }
}

/// The waypoints' plugin config: the calling side's, `direction: waypoint` and the
/// ambient workloads' envs; `None` (said in the status) when it is not valid or too large:
/// what the waypoints would reject is never written (they would keep their last config).
fn waypoint_config(
    plan: &mut Plan,
    spec: &Resolved<'_>,
    ready: &[(&Pod, &str)],
) -> Option<(PluginConfig, serde_json::Value)> {
    let ambient = ready
        .iter()
        .filter(|(pod, _)| in_ambient_mode(pod))
        .copied();
    let (workloads, mixed) = waypoint::workload_envs(&spec.namespace, ambient);
    if !mixed.is_empty() {
        plan.skipped.push(Skip::routing(format_args!(
            "workloads {} have pods in more than one env, or a name that is no workload name: calls from them get no env from their workload at the waypoint",
            mixed.join(", ")
        )));
    }
    let mut config = plan.plugin_config.clone();
    config.direction = Some(Direction::Waypoint);
    config.workloads = workloads;
    if let Err(e) = config.validate() {
        plan.skipped.push(Skip::routing(format_args!(
            "the waypoints' plugin config is not valid ({e}): waypoints do not route by env"
        )));
        return None;
    }
    let value = plugin_config_value(&config);
    let (bytes, max) = (stored_bytes(&value), spec.settings.max_plugin_config_bytes);
    if bytes > max {
        plan.skipped.push(Skip::routing(format_args!(
            "the waypoints' plugin config would be {bytes} bytes, over {max}: waypoints do not route by env"
        )));
        return None;
    }
    Some((config, value))
}

/// What this VirtualEnvironment owns and no longer needs: routes first (VirtualServices,
/// HTTPRoutes), so that no route is left pointing at a subset or Service that is gone.
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
            e.name == WASM_PLUGIN_NAME
                || e.name == INBOUND_WASM_PLUGIN_NAME
                || plan.waypoint_plugins.iter().any(|o| o.name_any() == e.name)
        }
        Kind::WasmPlugin | Kind::TrafficExtension => plan.gateway_plugins.iter().any(|o| {
            o.name_any() == e.name && o.namespace().as_deref() == Some(e.namespace.as_str())
        }),
        Kind::Gateway | Kind::KubernetesGateway => true,
        Kind::HttpRoute | Kind::GrpcRoute => plan
            .mesh_routes
            .iter()
            .any(|r| r.kind() == e.kind && r.name() == e.name),
        Kind::Service => plan.env_services.iter().any(|s| s.name_any() == e.name),
    };
    let owner_uid = spec.ve.uid();
    let mut prune: Vec<Existing> = snapshot
        .existing
        .iter()
        .chain(&snapshot.elsewhere)
        .chain(&spec.env_services)
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

/// The annotation Istio's CNI sets on a pod whose traffic it redirected to ztunnel
/// (ambient mode), `enabled` once it is; such a pod has no sidecar (Istio
/// `pkg/config/constants`, `AmbientRedirectionEnabled`).
pub const AMBIENT_REDIRECTION: &str = "ambient.istio.io/redirection";

/// Whether the pod runs in Istio's ambient mode: no sidecar, so no filter of ours.
pub fn in_ambient_mode(pod: &Pod) -> bool {
    pod.annotations()
        .get(AMBIENT_REDIRECTION)
        .map(String::as_str)
        == Some("enabled")
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
            target_refs: Vec::new(),
            phase: None,
            plugin_config: plugin_config_value(config),
        },
    }
}

#[cfg(test)]
pub mod fixtures;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod gateway_api_tests;
#[cfg(test)]
mod gateway_entry_tests;
