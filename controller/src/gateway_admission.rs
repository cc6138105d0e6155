//! Who may enter through which gateway under which host: the checks between a tenant's
//! wish (Service annotations, `spec.gateways`) and what the controller writes for it.
//!
//! For each Gateway a namespace names, in order:
//!
//! 1. **Where its pods are.** istiod hands a Gateway to the pods its `selector` matches in
//!    every namespace (unless `PILOT_SCOPE_GATEWAY_TO_NAMESPACE`); a WasmPlugin's selector
//!    only matches pods of its own namespace. So the plugin object goes into each
//!    namespace where such pods run (Istio's Bookinfo puts its Gateway in the application's
//!    namespace, the pods are in `istio-system`). A Gateway that matches no pod is
//!    reported (its plugin object waits in the Gateway's namespace).
//! 2. **Whose pods they are.** Pods in the tenant's own namespace are its own gateway.
//!    Pods elsewhere serve other teams too: a [`GatewayPolicy`] covering them must admit
//!    the namespace (unless the controller runs with `--gateway-admission open`, the
//!    original project's behaviour), and it sets the edge policy there.
//! 3. **Which hosts.** Each host must be admitted by the Gateway's own `servers[].hosts`
//!    (`ns/host` scoping, as istiod reads it) and by the policy; and one host on one
//!    gateway's pods has one owner across namespaces: a user's own VirtualService for it
//!    wins, then the policy's most specific entry, then the oldest VirtualEnvironment.
//!
//! What is refused is neither bound in the VirtualService nor routed in a plugin object,
//! and is said in the status. Pure: no API calls.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use virtual_env_core::EdgeTrust;

use crate::crd::VirtualEnvironment;
use crate::existing::{Existing, Kind};
use crate::gateway::{exposures, Exposure, GatewayKind, GatewayName, GATEWAY_NAME_LABEL};
use crate::gateway_api_gateway::listeners_admit;
use crate::gateway_policy::{gateway_admits, GatewayPods, GatewayPolicy};
use crate::skip::Skip;

/// Whether a gateway whose pods serve other namespaces needs a [`GatewayPolicy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GatewayAdmission {
    /// A shared gateway admits only the namespaces a policy lists (the default).
    #[default]
    Policy,
    /// Without a policy any namespace may use any gateway, with its own edge trust (the
    /// original project's behaviour, for clusters of one team).
    Open,
}

/// A pod as gateway entry sees it: its namespace and labels.
pub type PodLabels = (String, BTreeMap<String, String>);

/// A claim's precedence (see [`rank`]): larger wins.
type Precedence = (
    Option<(u32, std::cmp::Reverse<usize>)>,
    std::cmp::Reverse<Option<i64>>,
    std::cmp::Reverse<String>,
);

/// What planning knows of the cluster beyond the namespace, for gateway entry.
#[derive(Debug, Clone, Default)]
pub struct GatewayCluster {
    /// Per Gateway, the pods its selector matches, as (namespace, labels), once each.
    pub gateway_pods: BTreeMap<GatewayName, Vec<PodLabels>>,
    /// Per Gateway, its spec (its `servers` or `listeners`: which hosts it admits from
    /// which namespaces, see [`gateway_takes`]).
    pub gateway_servers: BTreeMap<GatewayName, serde_json::Value>,
    pub policies: Vec<GatewayPolicy>,
    /// Gateway hosts claimed in every namespace: by VirtualEnvironments' exposures and by
    /// users' own gateway-bound VirtualServices.
    pub claims: Vec<HostClaim>,
}

/// One namespace's claim of one host at one Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct HostClaim {
    pub namespace: String,
    pub gateway: GatewayName,
    pub host: String,
    pub by: Claimant,
    /// The kind of route that claims it (a Gateway API listener may take one kind only).
    pub route: Kind,
    /// A preview host's wildcard (`*.<suffix>` of `{env}.<suffix>`): routed by env at the
    /// gateway for every host under it, so it meets every claim under it.
    pub preview: bool,
}

/// One host a namespace asks for at a gateway.
#[derive(Debug, Clone, Copy)]
struct Asked<'a> {
    host: &'a str,
    /// A preview host's wildcard (see [`HostClaim::preview`]).
    preview: bool,
}

impl HostClaim {
    /// Whether this claim and `asked` want the same requests routed by env at one
    /// gateway: the same host, or one under a preview wildcard of the other.
    fn meets(&self, asked: Asked<'_>) -> bool {
        let under = |wildcard: &str, host: &str| {
            crate::gateway_policy::host_specificity(wildcard, host).is_some()
        };
        self.host.eq_ignore_ascii_case(asked.host)
            || (asked.preview && under(asked.host, &self.host))
            || (self.preview && under(&self.host, asked.host))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Claimant {
    /// A VirtualEnvironment's exposure, created then.
    VirtualEnvironment(Option<Time>),
    /// A VirtualService virtual-env does not manage (`VirtualService front`).
    User(String),
}

/// Per Gateway (of those that select pods), the namespace and labels of each pod it
/// selects.
fn pods_of<'a>(
    gateways: &[(GatewayName, BTreeMap<String, String>)],
    pods: impl Iterator<Item = &'a Pod>,
) -> BTreeMap<GatewayName, Vec<PodLabels>> {
    let mut gateway_pods: BTreeMap<GatewayName, BTreeSet<PodLabels>> = BTreeMap::new();
    for pod in pods {
        let labels = pod.labels();
        let namespace = pod.namespace().unwrap_or_default();
        for (name, selector) in gateways {
            // A Gateway API Gateway's label names it within its namespace only.
            let elsewhere = name.kind == GatewayKind::GatewayApi && namespace != name.namespace;
            if selects(selector, labels) && !elsewhere {
                gateway_pods
                    .entry(name.clone())
                    .or_default()
                    .insert((pod.namespace().unwrap_or_default(), labels.clone()));
            }
        }
    }
    gateway_pods
        .into_iter()
        .map(|(name, pods)| (name, pods.into_iter().collect()))
        .collect()
}

/// The (gateway, host) pairs each namespace's VirtualEnvironment asks to be entered by.
fn virtual_environment_claims<'a>(
    namespaces: impl Iterator<Item = (&'a VirtualEnvironment, Vec<&'a Service>)>,
) -> Vec<HostClaim> {
    let mut claims = Vec::new();
    for (ve, services) in namespaces {
        let ns = ve.namespace().unwrap_or_default();
        let owned: Vec<Service> = services.into_iter().cloned().collect();
        let (exposed, _) = exposures(ve, &owned, &ns, GatewayKind::of(ve));
        for exposure in exposed.values() {
            for gateway in &exposure.gateways {
                for host in &exposure.hosts {
                    claims.push(HostClaim {
                        namespace: ns.clone(),
                        gateway: gateway.clone(),
                        host: host.clone(),
                        by: Claimant::VirtualEnvironment(ve.metadata.creation_timestamp.clone()),
                        // `gamma::gateway_routes` writes HTTPRoutes.
                        route: match gateway.kind {
                            GatewayKind::Istio => Kind::VirtualService,
                            GatewayKind::GatewayApi => Kind::HttpRoute,
                        },
                        preview: is_preview(exposure, host),
                    });
                }
            }
        }
    }
    claims
}

/// The (gateway, host) pairs users' gateway-bound VirtualServices and HTTPRoutes hold.
fn user_claims<'a>(routes: impl Iterator<Item = &'a Existing> + Clone) -> Vec<HostClaim> {
    let mut claims = Vec::new();
    for route in routes.clone().filter(|r| r.kind.is_route()) {
        // Its hostnames, whatever other parents it has (a Service beside the Gateway).
        // A route without hostnames takes what no route names (Gateway API ranks the
        // named host first): it claims none.
        let hosts = route_hostnames(route);
        for gateway in route_gateways(route) {
            for host in &hosts {
                claims.push(HostClaim {
                    namespace: route.namespace.clone(),
                    gateway: gateway.clone(),
                    host: host.clone(),
                    by: Claimant::User(route.describe()),
                    route: route.kind,
                    preview: false,
                });
            }
        }
    }
    for vs in routes.filter(|r| r.kind == Kind::VirtualService) {
        for reference in vs.spec["gateways"].as_array().into_iter().flatten() {
            let Some(gateway) = reference
                .as_str()
                .and_then(|r| GatewayName::parse(r, &vs.namespace))
            else {
                continue;
            };
            for host in &vs.hosts {
                claims.push(HostClaim {
                    namespace: vs.namespace.clone(),
                    gateway: gateway.clone(),
                    host: host.to_ascii_lowercase(),
                    by: Claimant::User(vs.describe()),
                    route: Kind::VirtualService,
                    preview: false,
                });
            }
        }
    }
    claims
}

/// Whether `host` of `exposure` is a preview host's wildcard.
fn is_preview(exposure: &Exposure, host: &str) -> bool {
    host.strip_prefix("*.")
        .is_some_and(|suffix| exposure.preview.contains(suffix))
}

/// A route's `hostnames`, lower case.
pub fn route_hostnames(route: &Existing) -> Vec<String> {
    (route.spec["hostnames"].as_array().into_iter().flatten())
        .filter_map(|h| Some(h.as_str()?.to_ascii_lowercase()))
        .collect()
}

/// The Gateway API Gateways a route (HTTPRoute, GRPCRoute) names as parents.
pub fn route_gateways(route: &Existing) -> Vec<GatewayName> {
    route.spec["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            // `group` and `kind` default to Gateway API's Gateway.
            p["kind"].as_str().unwrap_or("Gateway") == "Gateway"
                && p["group"]
                    .as_str()
                    .unwrap_or(crate::waypoint::GATEWAY_GROUP)
                    == crate::waypoint::GATEWAY_GROUP
        })
        .filter_map(|p| {
            Some(GatewayName {
                namespace: p["namespace"]
                    .as_str()
                    .unwrap_or(&route.namespace)
                    .to_owned(),
                name: p["name"].as_str()?.to_owned(),
                kind: GatewayKind::GatewayApi,
            })
        })
        .collect()
}

/// Whether a Gateway (its spec, of `gateway`'s kind) takes `namespace`'s route (of kind
/// `route`) for `host`: an Istio Gateway by its `servers[].hosts`, a Gateway API Gateway
/// by its listeners.
pub fn gateway_takes(
    gateway: &GatewayName,
    spec: &serde_json::Value,
    namespace: &str,
    host: &str,
    route: Kind,
) -> bool {
    match gateway.kind {
        GatewayKind::Istio => gateway_admits(&spec["servers"], &gateway.namespace, namespace, host),
        GatewayKind::GatewayApi => {
            listeners_admit(spec, &gateway.namespace, namespace, host, route.name())
        }
    }
}

impl GatewayCluster {
    /// The view from the cluster's objects: `gateways` (Gateways, and anyone's
    /// VirtualServices), `pods`, the policies, and per namespace its VirtualEnvironment
    /// with its services.
    pub fn from_objects<'a>(
        objects: impl Iterator<Item = &'a Existing> + Clone,
        pods: impl Iterator<Item = &'a Pod>,
        policies: Vec<GatewayPolicy>,
        namespaces: impl Iterator<Item = (&'a VirtualEnvironment, Vec<&'a Service>)>,
    ) -> Self {
        // Each Gateway's servers (its hosts) and, when it selects pods, its selector.
        let mut objects_servers: BTreeMap<GatewayName, serde_json::Value> = BTreeMap::new();
        let mut gateways: Vec<(GatewayName, BTreeMap<String, String>)> = Vec::new();
        for o in objects.clone().filter(|o| o.kind.is_gateway()) {
            let name = GatewayName::of_object(o);
            let selector = selector_of(o);
            if !selector.is_empty() {
                gateways.push((name.clone(), selector));
            }
            objects_servers.insert(name, o.spec.clone());
        }
        let gateway_pods = pods_of(&gateways, pods);
        let mut claims = virtual_environment_claims(namespaces);
        claims.extend(user_claims(objects.filter(|o| {
            (o.kind == Kind::VirtualService || o.kind.is_route()) && !o.labelled
        })));
        let gateway_servers = objects_servers;
        let mut policies = policies;
        // Two policies covering the same pods: the first by name decides, every time.
        policies.sort_by_key(|p| p.name_any());
        Self {
            gateway_pods,
            gateway_servers,
            policies,
            claims,
        }
    }

    /// Where a Gateway's pods run: per namespace, the labels of each pod.
    fn placements(
        &self,
        gateway: &Existing,
        scope_to_namespace: bool,
    ) -> BTreeMap<&str, Vec<&BTreeMap<String, String>>> {
        let name = GatewayName::of_object(gateway);
        let mut out: BTreeMap<&str, Vec<&BTreeMap<String, String>>> = BTreeMap::new();
        for (ns, labels) in self.gateway_pods.get(&name).into_iter().flatten() {
            if !scope_to_namespace || *ns == gateway.namespace {
                out.entry(ns.as_str()).or_default().push(labels);
            }
        }
        out
    }
}

/// The labels of a Gateway's pods: an Istio Gateway's `selector`; for a Gateway API
/// Gateway the label Istio gives the pods it deploys for it.
pub fn selector_of(gateway: &Existing) -> BTreeMap<String, String> {
    match gateway.kind {
        Kind::KubernetesGateway => {
            BTreeMap::from([(GATEWAY_NAME_LABEL.to_owned(), gateway.name.clone())])
        }
        _ => serde_json::from_value(gateway.spec["selector"].clone()).unwrap_or_default(),
    }
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Where one Gateway's plugin object goes, and how it judges envs from outside.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub gateway: GatewayName,
    /// The namespace of the gateway's pods (the plugin object's namespace).
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
    /// The tenant's own pods: its `spec.wasmModule` may load there.
    pub own: bool,
    /// The edge policy the routing plugin applies there: none under a GatewayPolicy (its
    /// edge guard judges), else the VirtualEnvironment's.
    pub edge_trust: Option<EdgeTrust>,
    /// The edge policy in force there (the GatewayPolicy's, else the
    /// VirtualEnvironment's; `None`: accept), which a preview host's env is judged by.
    pub preview_trust: Option<EdgeTrust>,
    /// The hosts routed there, each to its service: `host -> service name`.
    pub hosts: BTreeMap<String, String>,
}

/// What a namespace may enter through gateways.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    /// Per service, what is left of its exposure (only admitted gateways and hosts).
    pub exposures: BTreeMap<String, Exposure>,
    pub placements: Vec<Placement>,
    /// What was refused, with the reason.
    pub refused: Vec<Skip>,
}

/// The tenant and the rules it is judged by.
pub struct Tenant<'a> {
    pub ve: &'a VirtualEnvironment,
    pub namespace: &'a str,
    pub admission: GatewayAdmission,
    pub scope_gateway_to_namespace: bool,
}

/// Judges `wanted` (the namespace's exposures) against the cluster.
pub fn admit(
    tenant: &Tenant<'_>,
    wanted: &BTreeMap<String, Exposure>,
    gateways: &[Existing],
    cluster: &GatewayCluster,
) -> Admitted {
    let mut judging = Judging {
        tenant,
        wanted,
        cluster,
        out: Admitted::default(),
        ok: BTreeSet::new(),
        refused: BTreeSet::new(),
    };
    let referenced: BTreeSet<&GatewayName> = wanted.values().flat_map(|e| &e.gateways).collect();
    for gateway in referenced {
        let object = gateways.iter().find(|g| gateway.is(g));
        match object {
            Some(object) => judging.gateway(gateway, object),
            // Bound as asked (istiod ignores a binding to a Gateway that does not exist,
            // and one created later then works); no plugin object, which the plugin
            // planning reports.
            None => {
                for (service, host) in judging.asked_at(gateway) {
                    judging.ok.insert((service, gateway.clone(), host));
                }
            }
        }
    }
    judging.bind()
}

/// (service, gateway, host)
type Pair = (String, GatewayName, String);

/// One namespace's exposures being judged, gateway by gateway and placement by placement.
struct Judging<'a> {
    tenant: &'a Tenant<'a>,
    wanted: &'a BTreeMap<String, Exposure>,
    cluster: &'a GatewayCluster,
    out: Admitted,
    /// Admitted at some placement, and refused at some: a binding reaches every pod of
    /// the gateway, so it needs to be admitted at all of them.
    ok: BTreeSet<Pair>,
    refused: BTreeSet<Pair>,
}

impl Judging<'_> {
    /// Every (service, host) asked for at `gateway`.
    fn asked_at(&self, gateway: &GatewayName) -> Vec<(String, String)> {
        self.wanted
            .iter()
            .filter(|(_, e)| e.gateways.contains(gateway))
            .flat_map(|(service, e)| e.hosts.iter().map(move |h| (service.clone(), h.clone())))
            .collect()
    }

    /// Every placement of `gateway` (the namespaces of its pods).
    fn gateway(&mut self, gateway: &GatewayName, object: &Existing) {
        let not_entered = (object.kind == Kind::KubernetesGateway)
            .then(|| crate::gateway_api_gateway::not_entered(&object.spec))
            .flatten();
        if let Some(why) = not_entered {
            self.refuse_every_host(gateway, Skip::gateway(&gateway.reference(), why));
            return;
        }
        let selector = selector_of(object);
        let api = gateway.kind == GatewayKind::GatewayApi;
        let scoped = self.tenant.scope_gateway_to_namespace || api;
        let mut placements = self.cluster.placements(object, scoped);
        if placements.is_empty() && !selector.is_empty() {
            let which = match api {
                true => format!("no pod labelled {GATEWAY_NAME_LABEL}={} runs", gateway.name),
                false => "its selector matches no pod".to_owned(),
            };
            self.out.refused.push(Skip::gateway(
                &gateway.reference(),
                format_args!(
                    "{which}{}; its plugin object waits in namespace {}",
                    if scoped { " in its namespace" } else { "" },
                    gateway.namespace
                ),
            ));
            placements.insert(gateway.namespace.as_str(), Vec::new());
        }
        for (namespace, labels) in placements {
            let pods = GatewayPods { namespace, labels };
            if let Some(placement) = self.placement(gateway, object, &selector, &pods) {
                self.out.placements.push(placement);
            }
        }
    }

    /// One placement: whether the tenant may enter there at all, its edge policy, and
    /// each host.
    fn placement(
        &mut self,
        gateway: &GatewayName,
        object: &Existing,
        selector: &BTreeMap<String, String>,
        pods: &GatewayPods<'_>,
    ) -> Option<Placement> {
        let (tenant, ns, reference) = (self.tenant, self.tenant.namespace, gateway.reference());
        let own = pods.namespace == ns;
        let policy = self
            .cluster
            .policies
            .iter()
            .find(|p| p.covers(selector, pods));
        if !own && policy.is_none() && tenant.admission == GatewayAdmission::Policy {
            self.refuse_every_host(gateway, Skip::gateway(
                &reference,
                format_args!("its pods in namespace {} serve other namespaces too, and no GatewayPolicy for them admits namespace {ns}; not bound, not routed by env there (ask the gateway's owner for a GatewayPolicy)", pods.namespace),
            ));
            return None;
        }
        // A policy whose edge policy is not valid has no guard: nothing enters under it
        // (its routing plugins would let every env in).
        if let Some((policy, Err(e))) = policy.map(|p| (p, p.edge_trust().validate('.'))) {
            self.refuse_every_host(gateway, Skip::gateway(
                &reference,
                format_args!(
                    "GatewayPolicy {} is not valid ({e}): nothing is entered by env under it until its owner fixes it",
                    policy.name_any()
                ),
            ));
            return None;
        }
        if let Some(why) = policy.and_then(|p| guard_cannot_attach(p, gateway)) {
            self.refuse_every_host(gateway, Skip::gateway(&reference, why));
            return None;
        }
        let edge_trust = self.edge_trust_under(policy, &reference);
        let preview_trust = match policy {
            Some(policy) => Some(policy.edge_trust()),
            None => self
                .tenant
                .ve
                .spec
                .edge_trust
                .as_ref()
                .map(|e| e.to_config()),
        };
        let hosts = self.admit_hosts(gateway, object, policy, pods);
        // Nothing admitted here: no plugin object.
        (!hosts.is_empty()).then(|| Placement {
            gateway: gateway.clone(),
            namespace: pods.namespace.to_owned(),
            selector: selector.clone(),
            own,
            edge_trust,
            preview_trust,
            hosts,
        })
    }

    /// Refuses every host the tenant asks for at `gateway`, for the reason `skip` reports.
    fn refuse_every_host(&mut self, gateway: &GatewayName, skip: Skip) {
        for (service, host) in self.asked_at(gateway) {
            self.refused.insert((service, gateway.clone(), host));
        }
        self.out.refused.push(skip);
    }

    /// The edge policy the routing plugin at a placement applies. Under a policy its own
    /// edge guard judges every request before any routing plugin (see `edge_guard.rs`):
    /// the routing plugin judges nothing (`accept`), so no tenant's carriers are judged on
    /// every team's requests; it only learns whether the policy lets clients ask for a
    /// routing trace.
    fn edge_trust_under(
        &mut self,
        policy: Option<&GatewayPolicy>,
        reference: &str,
    ) -> Option<EdgeTrust> {
        let asked = self.tenant.ve.spec.edge_trust.as_ref();
        let Some(policy) = policy else {
            return asked.map(|e| e.to_config());
        };
        if asked.is_some() {
            self.out.refused.push(Skip::gateway(
                reference,
                format_args!(
                    "spec.edgeTrust is not applied there; GatewayPolicy {} sets its edge policy",
                    policy.name_any()
                ),
            ));
        }
        // The guard judges the envs; whether clients may ask for a routing trace is the
        // policy's to say to the routing plugin too (it answers them).
        policy.edge_trust().allow_trace.then(|| EdgeTrust {
            mode: virtual_env_core::EdgeMode::Accept,
            allow: Vec::new(),
            allow_trace: true,
        })
    }

    /// The hosts admitted at one placement (host -> service); each one refused is
    /// reported with its reason.
    fn admit_hosts(
        &mut self,
        gateway: &GatewayName,
        object: &Existing,
        policy: Option<&GatewayPolicy>,
        pods: &GatewayPods<'_>,
    ) -> BTreeMap<String, String> {
        let reference = gateway.reference();
        let mut hosts: BTreeMap<String, String> = BTreeMap::new();
        for (service, host) in self.asked_at(gateway) {
            let asked = Asked {
                host: &host,
                preview: self
                    .wanted
                    .get(&service)
                    .is_some_and(|e| is_preview(e, &host)),
            };
            let why = refusal(
                self.tenant,
                object,
                gateway,
                asked,
                policy,
                pods,
                self.cluster,
            )
            .map(|why| format!(": {why}"))
            .or_else(|| {
                hosts
                    .get(&host)
                    .map(|first| format!(" already reaches {first}"))
            });
            let pair = (service.clone(), gateway.clone(), host.clone());
            match why {
                Some(why) => {
                    self.refused.insert(pair);
                    self.out.refused.push(Skip::service(
                        &service,
                        format_args!("host {host} at gateway {reference}{why}"),
                    ));
                }
                None => {
                    self.ok.insert(pair);
                    hosts.insert(host, service);
                }
            }
        }
        hosts
    }

    /// Per service, what its VirtualService may bind ([`binding`]); each placement then
    /// routes only what is bound.
    fn bind(mut self) -> Admitted {
        for (service, exposure) in self.wanted {
            let admitted: BTreeSet<(GatewayName, String)> = exposure
                .gateways
                .iter()
                .flat_map(|g| exposure.hosts.iter().map(move |h| (g.clone(), h.clone())))
                .filter(|(g, h)| {
                    let pair = (service.clone(), g.clone(), h.clone());
                    self.ok.contains(&pair) && !self.refused.contains(&pair)
                })
                .collect();
            let Some(mut binding) = binding(&exposure.gateways, &admitted) else {
                continue;
            };
            // The preview hosts whose wildcard is bound.
            binding.preview = (exposure.preview.iter())
                .filter(|suffix| binding.hosts.contains(&format!("*.{suffix}")))
                .cloned()
                .collect();
            for (g, h) in admitted
                .iter()
                .filter(|(g, h)| !binding.gateways.contains(g) || !binding.hosts.contains(h))
            {
                self.out.refused.push(Skip::service(
                    service,
                    format_args!(
                        "host {h} at gateway {}: not bound, since the VirtualService binds each of its hosts at each of its gateways, and {h} is not admitted everywhere it would be",
                        g.reference()
                    ),
                ));
            }
            self.out.exposures.insert(service.clone(), binding);
        }
        let exposures = &self.out.exposures;
        for placement in &mut self.out.placements {
            let gateway = placement.gateway.clone();
            placement.hosts.retain(|host, service| {
                exposures
                    .get(service)
                    .is_some_and(|e| e.gateways.contains(&gateway) && e.hosts.contains(host))
            });
        }
        self.out.placements.retain(|p| !p.hosts.is_empty());
        self.out
    }
}

/// The gateways and hosts one VirtualService binds: it binds every host at every gateway,
/// so only a set of (gateway, host) pairs that are all admitted may be bound. Takes the
/// gateway with the most admitted hosts (then the first by name), its hosts, and every
/// gateway that admits all of them.
fn binding(
    gateways: &BTreeSet<GatewayName>,
    admitted: &BTreeSet<(GatewayName, String)>,
) -> Option<Exposure> {
    let hosts_at = |g: &GatewayName| -> BTreeSet<String> {
        admitted
            .iter()
            .filter(|(a, _)| a == g)
            .map(|(_, h)| h.clone())
            .collect()
    };
    let best = gateways
        .iter()
        .max_by_key(|g| (hosts_at(g).len(), std::cmp::Reverse((*g).clone())))?;
    let hosts = hosts_at(best);
    if hosts.is_empty() {
        return None;
    }
    let gateways = gateways
        .iter()
        .filter(|g| {
            hosts
                .iter()
                .all(|h| admitted.contains(&((*g).clone(), h.clone())))
        })
        .cloned()
        .collect();
    Some(Exposure {
        gateways,
        hosts,
        preview: BTreeSet::new(),
    })
}

/// Why `policy`'s edge guard might not run on a Gateway API Gateway's pods: it attaches
/// by `targetRefs` only when the policy selects them by [`GATEWAY_NAME_LABEL`]; by any
/// other selector Istio ignores it there where `ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY`
/// is off (the routing plugins would then let every env in). A policy that accepts every
/// env has no guard, so nothing to attach.
fn guard_cannot_attach(policy: &GatewayPolicy, gateway: &GatewayName) -> Option<String> {
    let selector = &policy.spec.workload.selector;
    let by_name = selector.get(GATEWAY_NAME_LABEL) == Some(&gateway.name);
    let guarded = policy.edge_trust().mode != virtual_env_core::EdgeMode::Accept;
    (gateway.kind == GatewayKind::GatewayApi && guarded && !by_name).then(|| format!(
        "GatewayPolicy {} selects this Gateway API gateway's pods by other labels than {GATEWAY_NAME_LABEL}: {}, and Istio may not apply a selector there (ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY), so its edge guard could be missing: nothing is entered by env under it until its workload.selector is {{{GATEWAY_NAME_LABEL}: {}}}",
        policy.name_any(), gateway.name, gateway.name
    ))
}

/// Why `host` may not be entered for the tenant at this placement; `None` when it may.
fn refusal(
    tenant: &Tenant<'_>,
    object: &Existing,
    gateway: &GatewayName,
    asked: Asked<'_>,
    policy: Option<&GatewayPolicy>,
    pods: &GatewayPods<'_>,
    cluster: &GatewayCluster,
) -> Option<String> {
    let (ns, host) = (tenant.namespace, asked.host);
    if !gateway_takes(gateway, &object.spec, ns, host, Kind::HttpRoute) {
        return Some(match gateway.kind {
            GatewayKind::Istio => format!(
                "the Gateway's servers[].hosts do not admit {ns}/{host}, so istiod would not route it"
            ),
            GatewayKind::GatewayApi => {
                crate::gateway_api_gateway::refusal(&object.spec, &gateway.namespace, ns)
            }
        });
    }
    if let Some(policy) = policy {
        if policy.admits(ns, host).is_none() {
            return Some(format!(
                "GatewayPolicy {} does not admit it for namespace {ns}",
                policy.name_any()
            ));
        }
    }
    // Everyone else who claims the host on these pods (through any Gateway that selects
    // them).
    let rivals: Vec<&HostClaim> = cluster
        .claims
        .iter()
        .filter(|c| c.namespace != ns && c.meets(asked))
        .filter(|c| same_pods(cluster, &c.gateway, gateway, pods))
        .filter(|c| could_serve(tenant, c, &c.host, policy, pods, cluster))
        .collect();
    if let Some(user) = rivals.iter().find_map(|c| match &c.by {
        Claimant::User(what) => Some((c.namespace.as_str(), what)),
        Claimant::VirtualEnvironment(_) => None,
    }) {
        return Some(format!(
            "namespace {}'s {} routes it there already",
            user.0, user.1
        ));
    }
    let ours = rank(
        tenant.ve.metadata.creation_timestamp.as_ref(),
        ns,
        policy,
        host,
    );
    rivals
        .iter()
        .filter_map(|c| match &c.by {
            Claimant::VirtualEnvironment(created) => Some((c, rank(created.as_ref(), &c.namespace, policy, &c.host))),
            Claimant::User(_) => None,
        })
        .filter(|(c, theirs)| {
            // A rival the policy does not admit has no claim.
            policy.is_none_or(|p| p.admits(&c.namespace, &c.host).is_some()) && *theirs > ours
        })
        .max_by(|a, b| a.1.cmp(&b.1))
        .map(|(c, _)| match policy {
            Some(p) => format!(
                "namespace {} claims it too, and GatewayPolicy {} gives it to {} (the most specific entry, then the first listed, then the oldest VirtualEnvironment)",
                c.namespace,
                p.name_any(),
                c.namespace
            ),
            None => format!(
                "namespace {} claims it too, and its VirtualEnvironment is older",
                c.namespace
            ),
        })
}

/// Whether a rival's claim could take effect at all: its Gateway's servers admit it (else
/// istiod never routes it), and, for a VirtualEnvironment's, it would be admitted itself
/// (by the policy, or as its own gateway's pods, or in open admission). A claim that
/// cannot be served blocks nobody.
fn could_serve(
    tenant: &Tenant<'_>,
    claim: &HostClaim,
    host: &str,
    policy: Option<&GatewayPolicy>,
    pods: &GatewayPods<'_>,
    cluster: &GatewayCluster,
) -> bool {
    let servers_admit = cluster
        .gateway_servers
        .get(&claim.gateway)
        .is_some_and(|spec| {
            gateway_takes(&claim.gateway, spec, &claim.namespace, host, claim.route)
        });
    let admitted = match (policy, &claim.by) {
        // istiod serves a user's VirtualService whatever a GatewayPolicy says.
        (_, Claimant::User(_)) => true,
        (Some(policy), _) => policy.admits(&claim.namespace, host).is_some(),
        (None, Claimant::VirtualEnvironment(_)) => {
            tenant.admission == GatewayAdmission::Open || claim.namespace == pods.namespace
        }
    };
    servers_admit && admitted
}

/// A claim's precedence: the policy's entry rank, then age (older first), then the
/// namespace's name (first first). Larger wins.
fn rank(
    created: Option<&Time>,
    namespace: &str,
    policy: Option<&GatewayPolicy>,
    host: &str,
) -> Precedence {
    (
        policy.and_then(|p| p.admits(namespace, host)),
        std::cmp::Reverse(created.map(|t| t.0.as_second())),
        std::cmp::Reverse(namespace.to_owned()),
    )
}

/// Whether Gateway `other` lands on the same pods as `gateway` does in `pods.namespace`.
fn same_pods(
    cluster: &GatewayCluster,
    other: &GatewayName,
    gateway: &GatewayName,
    pods: &GatewayPods<'_>,
) -> bool {
    if other == gateway {
        return true;
    }
    // A claim through another Gateway object is a rival when that Gateway's pods in this
    // namespace overlap ours: they run one Envoy, which routes a host once.
    cluster.gateway_pods.get(other).is_some_and(|theirs| {
        theirs
            .iter()
            .any(|(ns, labels)| ns == pods.namespace && pods.labels.contains(&labels))
    })
}
