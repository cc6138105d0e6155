//! Entry through Istio Gateways: which services a gateway exposes, and the plugin object
//! its pods load so that requests entering there are routed by env too.
//!
//! A service is exposed by the original project's Service annotations
//! (`kt-virtual-environment/gateways: <ns>/<gateway>[,...]`,
//! `kt-virtual-environment/hosts: <host>[,...]`) or by the VirtualEnvironment's
//! `spec.gateways`. For each such service the planner binds its VirtualService to those
//! gateways and `mesh` with those hosts besides its own name; and each gateway gets one
//! WasmPlugin, in the gateway's namespace, selecting the gateway's pods by the Gateway's
//! `selector`, with a plugin config holding only the services exposed there, the hosts that
//! reach them, and the `edgeTrust`. Routes, subsets and the route header are the ones the
//! namespace's sidecars use.
//!
//! The plugin object lives in another namespace, so it cannot have an owner reference:
//! a label names its owner's UID, and a finalizer on the VirtualEnvironment deletes it.
//!
//! Pure: no API calls (`reconcile` applies what this plans).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use kube::api::ObjectMeta;
use kube::ResourceExt;
use virtual_env_core::service::is_dns_label;
use virtual_env_core::{Direction, PluginConfig};

use crate::crd::VirtualEnvironment;
use crate::existing::{Existing, Kind};
use crate::gateway_admission::Placement;
use crate::istio::{WasmPlugin, WasmPluginSpec, WorkloadSelector};
use crate::plan::{
    plugin_config_value, WasmSource, MANAGED_BY, MANAGED_BY_LABEL, OWNER_NAMESPACE_LABEL,
    OWNER_UID_LABEL,
};
use crate::skip::Skip;

pub const GATEWAYS_ANNOTATION: &str = "kt-virtual-environment/gateways";
pub const HOSTS_ANNOTATION: &str = "kt-virtual-environment/hosts";
/// The finalizer that deletes a VirtualEnvironment's gateway plugin objects.
pub const FINALIZER: &str = "env.alibaba.com/gateway-plugins";

/// A Gateway as a VirtualService names it, resolved to its namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayName {
    pub namespace: String,
    pub name: String,
}

impl GatewayName {
    /// `<ns>/<name>`, or `<name>` in `own_namespace`, as Istio reads `spec.gateways`.
    /// `None` for `mesh` (always bound) and for what is not a name.
    pub fn parse(reference: &str, own_namespace: &str) -> Option<Self> {
        let reference = reference.trim();
        if reference == "mesh" {
            return None;
        }
        let (namespace, name) = reference
            .split_once('/')
            .unwrap_or((own_namespace, reference));
        (is_dns_label(namespace) && is_dns_subdomain(name)).then(|| Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// How the VirtualService names it.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// How one service is entered through gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exposure {
    pub gateways: BTreeSet<GatewayName>,
    /// Lower case; exact names and `*.suffix` wildcards.
    pub hosts: BTreeSet<String>,
}

/// The exposures of a namespace's services, from their annotations and `spec.gateways`,
/// by service name; and what was dropped, with the reason.
pub fn exposures(
    ve: &VirtualEnvironment,
    services: &[Service],
    namespace: &str,
) -> (BTreeMap<String, Exposure>, Vec<Skip>) {
    let mut out: BTreeMap<String, Exposure> = BTreeMap::new();
    let mut problems = Vec::new();
    let list = |value: &str| -> Vec<String> {
        value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut add = |service: &str, gateways: Vec<String>, hosts: Vec<String>, origin: &str| {
        let exposure = out.entry(service.to_owned()).or_default();
        for gateway in gateways {
            match GatewayName::parse(&gateway, namespace) {
                Some(name) => {
                    exposure.gateways.insert(name);
                }
                None if gateway == "mesh" => {}
                None => problems.push(Skip::service(
                    service,
                    format_args!(
                        "{origin}: {gateway:?} is not a gateway name (<namespace>/<name>)"
                    ),
                )),
            }
        }
        for host in hosts {
            let host = host.to_ascii_lowercase();
            if is_gateway_host(&host) {
                exposure.hosts.insert(host);
            } else {
                problems.push(Skip::service(
                    service,
                    format_args!("{origin}: {host:?} is not a host name"),
                ));
            }
        }
    };
    for service in services {
        let annotations = service.annotations();
        let gateways = annotations.get(GATEWAYS_ANNOTATION).map(|v| list(v));
        let hosts = annotations.get(HOSTS_ANNOTATION).map(|v| list(v));
        if gateways.is_some() || hosts.is_some() {
            add(
                &service.name_any(),
                gateways.unwrap_or_default(),
                hosts.unwrap_or_default(),
                "annotations",
            );
        }
    }
    for entry in &ve.spec.gateways {
        add(
            &entry.service,
            entry.gateways.clone(),
            entry.hosts.clone(),
            "spec.gateways",
        );
    }
    out.retain(|service, exposure| {
        let keep = !exposure.gateways.is_empty();
        if !keep {
            problems.push(Skip::service(
                service,
                format_args!("hosts without a gateway; not exposed (set {GATEWAYS_ANNOTATION})"),
            ));
        }
        keep
    });
    (out, problems)
}

/// A service routed by env and exposed through gateways, as the gateway plans need it.
#[derive(Debug, Clone)]
pub struct ExposedService<'a> {
    pub name: &'a str,
    pub fqdn: String,
    pub envs: Vec<String>,
    pub exposure: &'a Exposure,
}

/// The name of the plugin object for `namespace`'s services at `gateway`. Namespaces
/// have no dots, so no two namespaces' names can collide.
pub fn plugin_name(namespace: &str, gateway: &GatewayName) -> String {
    format!("virtual-env.{namespace}.{}", gateway.name)
}

/// Whether a WasmPlugin outside `namespace` (named `name`, labelled `labels`) is, or
/// would be, one of `namespace`'s gateway plugin objects: labelled as its, or under a
/// name of its (someone else's object there is a conflict to report).
pub fn of_namespace(name: &str, labels: &BTreeMap<String, String>, namespace: &str) -> bool {
    labels.get(OWNER_NAMESPACE_LABEL).map(String::as_str) == Some(namespace)
        || name
            .strip_prefix("virtual-env.")
            .and_then(|rest| rest.strip_prefix(namespace))
            .is_some_and(|rest| rest.starts_with('.'))
}

/// The gateways' plugin objects, and what was left out with the reason.
pub struct GatewayPlans {
    pub plugins: Vec<WasmPlugin>,
    pub skipped: Vec<Skip>,
}

/// Where a gateway's plugin object fetches its module: the tenant's `spec.wasmModule` only
/// for a gateway whose plugin lands in the tenant's own namespace; anywhere else (a shared
/// gateway that every tenant's traffic passes) always the controller's own module.
pub struct ModuleSources<'a> {
    pub tenant: &'a WasmSource,
    pub controller: &'a WasmSource,
}

/// What a namespace enters through gateways, as admitted (`gateway_admission.rs`): its
/// exposed services, and where each Gateway's plugin object goes.
pub struct Entry<'a> {
    pub exposed: &'a [ExposedService<'a>],
    pub placements: &'a [Placement],
}

/// One plugin object per placement of a gateway that exposes a routed service of
/// `namespace` (in the namespace of the gateway's pods). `namespace_config` is the
/// namespace's calling-side plugin config (route header, cluster domain and settings in
/// force); `elsewhere` the cluster's Gateway objects and the plugin objects already in
/// other namespaces under our names (of kind `plugin_kind`).
pub fn plan_gateways(
    ve: &VirtualEnvironment,
    namespace: &str,
    entry: &Entry<'_>,
    namespace_config: &PluginConfig,
    elsewhere: &[Existing],
    modules: &ModuleSources<'_>,
    plugin_kind: Kind,
) -> GatewayPlans {
    let mut plans = GatewayPlans {
        plugins: Vec::new(),
        skipped: gateways_without_pods(entry, elsewhere),
    };
    let owner_uid = ve.uid();
    let mut placed: BTreeSet<(String, String)> = BTreeSet::new();
    for placement in entry.placements.iter().filter(|p| !p.selector.is_empty()) {
        let reference = placement.gateway.reference();
        let at = &placement.namespace;
        let name = plugin_name(namespace, &placement.gateway);
        let taken = elsewhere.iter().find(|e| {
            e.kind == plugin_kind
                && e.namespace == *at
                && e.name == name
                && !e.managed_by(owner_uid.as_deref())
        });
        let refused = if name.len() > 253 {
            Some(format!(
                "the plugin object's name {name:?} is longer than 253 characters"
            ))
        } else if !placed.insert((at.clone(), name.clone())) {
            Some(format!("another Gateway of the same name already places plugin object {name} in namespace {at}"))
        } else {
            taken.map(|other| {
                format!(
                    "{} in namespace {at} is not this VirtualEnvironment's; left alone",
                    other.describe()
                )
            })
        };
        if let Some(why) = refused {
            plans.skipped.push(Skip::gateway(&reference, why));
            continue;
        }
        let config = gateway_config(namespace_config, placement, entry, &mut plans.skipped);
        let source = if placement.own {
            modules.tenant
        } else {
            if modules.tenant != modules.controller {
                plans.skipped.push(Skip::gateway(
                    &reference,
                    format_args!("spec.wasmModule applies in namespace {namespace} only; the plugin object in namespace {at} loads the controller's module"),
                ));
            }
            modules.controller
        };
        plans.plugins.push(gateway_plugin(
            name,
            at,
            placement,
            namespace,
            owner_uid.as_deref(),
            source,
            &config,
        ));
    }
    plans
}

/// Gateways named but not found, or without a selector: bound as asked (a Gateway created
/// later then works), no plugin object for them.
fn gateways_without_pods(entry: &Entry<'_>, elsewhere: &[Existing]) -> Vec<Skip> {
    let referenced: BTreeSet<&GatewayName> = entry
        .exposed
        .iter()
        .flat_map(|s| &s.exposure.gateways)
        .collect();
    referenced
        .into_iter()
        .filter_map(|gateway| {
            let reference = gateway.reference();
            let Some(object) = elsewhere.iter().find(|g| {
                g.kind == Kind::Gateway
                    && g.namespace == gateway.namespace
                    && g.name == gateway.name
            }) else {
                return Some(Skip::gateway(
                    &reference,
                    "not found; bound in the VirtualServices, but no plugin for its pods (requests entering there take the default routes)",
                ));
            };
            let selector: BTreeMap<String, String> =
                serde_json::from_value(object.spec["selector"].clone()).unwrap_or_default();
            selector.is_empty().then(|| {
                Skip::gateway(&reference, "has no selector, so no pods to give the plugin")
            })
        })
        .collect()
}

/// A gateway's plugin config: the namespace's settings, only the services and hosts
/// routed at this placement, its edge policy; no correlation (a gateway records nothing),
/// no peers (it calls only the exposed services of this namespace).
fn gateway_config(
    namespace_config: &PluginConfig,
    placement: &Placement,
    entry: &Entry<'_>,
    skipped: &mut Vec<Skip>,
) -> PluginConfig {
    let mut config = PluginConfig {
        direction: Some(Direction::Outbound),
        correlation_slots: 0,
        auto_inject: false,
        services: BTreeMap::new(),
        hosts: BTreeMap::new(),
        edge_trust: placement.edge_trust.clone(),
        peers: BTreeMap::new(),
        env_names: Vec::new(),
        service_envs: BTreeMap::new(),
        ..namespace_config.clone()
    };
    let reference = placement.gateway.reference();
    for (host, service) in &placement.hosts {
        let Some(service) = entry.exposed.iter().find(|s| s.name == service.as_str()) else {
            continue;
        };
        config
            .services
            .insert(service.fqdn.clone(), service.envs.clone());
        if host.starts_with("*.") {
            skipped.push(Skip::service(
                service.name,
                format_args!("host {host} at gateway {reference}: wildcard hosts are bound but not routed by env there (name the hosts)"),
            ));
            continue;
        }
        config.hosts.insert(host.clone(), service.fqdn.clone());
    }
    config
}

/// The plugin object `name` for `placement` in namespace `at`, owned (by label) by the
/// VirtualEnvironment of `namespace` with `owner_uid`.
fn gateway_plugin(
    name: String,
    at: &str,
    placement: &Placement,
    namespace: &str,
    owner_uid: Option<&str>,
    source: &WasmSource,
    config: &PluginConfig,
) -> WasmPlugin {
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (OWNER_NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
    ]);
    if let Some(uid) = owner_uid {
        labels.insert(OWNER_UID_LABEL.to_owned(), uid.to_owned());
    }
    WasmPlugin {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(at.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: WasmPluginSpec {
            url: source.url.clone(),
            sha256: source.sha256.clone(),
            fail_strategy: "FAIL_OPEN".into(),
            selector: Some(WorkloadSelector {
                match_labels: placement.selector.clone(),
            }),
            // Every listener of the gateway: it only ever calls out.
            traffic_selectors: Vec::new(),
            phase: None,
            plugin_config: plugin_config_value(config),
        },
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A host a gateway may serve: a DNS name, or `*.` and one.
fn is_gateway_host(host: &str) -> bool {
    is_dns_subdomain(host.strip_prefix("*.").unwrap_or(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{seed_ve, service};

    fn annotated(name: &str, gateways: &str, hosts: &str) -> Service {
        let mut s = service(name);
        s.metadata.annotations = Some(BTreeMap::from([
            (GATEWAYS_ANNOTATION.to_owned(), gateways.to_owned()),
            (HOSTS_ANNOTATION.to_owned(), hosts.to_owned()),
        ]));
        s
    }

    #[test]
    fn gateway_names_resolve_as_istio_reads_them() {
        let gw = |ns: &str, name: &str| {
            Some(GatewayName {
                namespace: ns.into(),
                name: name.into(),
            })
        };
        assert_eq!(
            GatewayName::parse("istio-system/ingress", "team"),
            gw("istio-system", "ingress")
        );
        assert_eq!(
            GatewayName::parse("demo-gateway", "team"),
            gw("team", "demo-gateway")
        );
        assert_eq!(GatewayName::parse("mesh", "team"), None);
        assert_eq!(GatewayName::parse("a/b/c", "team"), None);
        assert_eq!(GatewayName::parse("Istio/x", "team"), None);
    }

    #[test]
    fn annotations_and_the_spec_add_up_and_bad_values_are_reported() {
        let mut ve = seed_ve();
        ve.spec.gateways = vec![crate::crd::GatewayEntry {
            service: "app-a".into(),
            gateways: vec!["istio-system/public".into()],
            hosts: vec!["A.example.com".into()],
        }];
        let services = [
            annotated("app-a", "demo-gateway, mesh,", "demo.com,test.com"),
            annotated("app-b", "", "only-hosts.example.com"),
            annotated("app-c", "bad/gateway/name", "*.example.com,not a host"),
            service("app-d"),
        ];
        let (exposures, problems) = exposures(&ve, &services, "default");
        let a = &exposures["app-a"];
        let names: Vec<String> = a.gateways.iter().map(GatewayName::reference).collect();
        assert_eq!(names, ["default/demo-gateway", "istio-system/public"]);
        let hosts: Vec<&str> = a.hosts.iter().map(String::as_str).collect();
        assert_eq!(hosts, ["a.example.com", "demo.com", "test.com"]);
        assert!(!exposures.contains_key("app-b") && !exposures.contains_key("app-d"));
        assert!(!exposures.contains_key("app-c"), "no valid gateway left");
        let problems = problems.join("\n");
        assert!(
            problems.contains("app-b: hosts without a gateway"),
            "{problems}"
        );
        assert!(
            problems.contains("\"bad/gateway/name\" is not a gateway name"),
            "{problems}"
        );
        assert!(
            problems.contains("\"not a host\" is not a host name"),
            "{problems}"
        );
    }

    use crate::plan::fixtures::{ingress_policy, seed_exposed_through, settings, with_cluster};
    use crate::plan::{plan_namespace, Snapshot};

    fn object(kind: Kind, value: serde_json::Value) -> Existing {
        Existing::from_json(kind, &value, "default")
    }

    fn public_gateway() -> Existing {
        object(
            Kind::Gateway,
            serde_json::json!({"metadata": {"name": "public", "namespace": "istio-system"},
                "spec": {"selector": {"istio": "ingressgateway"},
                    "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                        "hosts": ["*"]}]}}),
        )
    }

    /// The seed's namespace with app-a exposed through `gateways`, the Gateway
    /// `istio-system/public` on Istio's ingress gateway pods, and their owner's policy
    /// admitting namespace `default` for any host.
    fn exposed(gateways: &str) -> (VirtualEnvironment, Snapshot) {
        let mut snapshot = seed_exposed_through(gateways);
        snapshot.elsewhere.push(public_gateway());
        let mut ve = seed_ve();
        ve.metadata.uid = Some("ve-uid".into());
        let policy = ingress_policy(r#"[{namespace: default, hosts: ["*"]}]"#, "{mode: accept}");
        with_cluster(&mut snapshot, &ve, vec![policy]);
        (ve, snapshot)
    }

    fn route_of_app_a(plan: &crate::plan::Plan) -> &crate::istio::VirtualService {
        plan.virtual_services
            .iter()
            .find(|v| v.name_any() == "app-a")
            .unwrap()
    }

    #[test]
    fn a_missing_gateway_is_bound_and_reported_but_gets_no_plugin() {
        let (ve, snapshot) = exposed("istio-system/public,istio-system/missing");
        let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
        let vs = route_of_app_a(&plan);
        assert_eq!(
            vs.spec.gateways,
            ["istio-system/missing", "istio-system/public", "mesh"]
        );
        let names: Vec<String> = plan.gateway_plugins.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["virtual-env.default.public"]);
        let plugin = &plan.gateway_plugins[0];
        let labels = plugin.labels();
        assert_eq!(labels[OWNER_UID_LABEL], "ve-uid");
        assert_eq!(labels[OWNER_NAMESPACE_LABEL], "default");
        assert!(
            plugin.owner_references().is_empty(),
            "no owner reference across namespaces"
        );
        assert!(
            plan.skipped
                .iter()
                .any(|s| s.starts_with("gateway istio-system/missing: not found")),
            "{:?}",
            plan.skipped
        );
    }

    #[test]
    fn a_users_plugin_under_our_name_and_a_users_route_for_the_host_are_left_alone() {
        let (ve, mut snapshot) = exposed("istio-system/public");
        snapshot.elsewhere.push(object(
            Kind::WasmPlugin,
            serde_json::json!({"metadata": {"name": "virtual-env.default.public",
                "namespace": "istio-system"}, "spec": {}}),
        ));
        let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
        assert!(plan.gateway_plugins.is_empty());
        assert!(plan.prune.is_empty(), "{:?}", plan.prune);
        assert!(plan
            .skipped
            .iter()
            .any(|s| s.contains("is not this VirtualEnvironment's")));

        let (ve, mut snapshot) = exposed("istio-system/public");
        snapshot.existing.push(object(
            Kind::VirtualService,
            serde_json::json!({"metadata": {"name": "front", "namespace": "default"},
                "spec": {"hosts": ["A.example.com"], "gateways": ["istio-system/public"]}}),
        ));
        let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
        let vs = route_of_app_a(&plan);
        assert!(
            vs.spec.gateways.is_empty(),
            "still routed in the mesh, not at the gateway"
        );
        assert_eq!(vs.spec.hosts, ["app-a.default.svc.cluster.local"]);
        assert!(plan.gateway_plugins.is_empty());
        assert!(plan
            .skipped
            .iter()
            .any(|s| s.contains("app-a: not exposed through gateways")
                && s.contains("VirtualService front")));
    }

    #[test]
    fn a_gateway_plugin_no_longer_needed_is_pruned_only_if_this_ve_owns_it() {
        let (ve, mut snapshot) = exposed("");
        let ours = |uid: &str| {
            object(
                Kind::WasmPlugin,
                serde_json::json!({"metadata": {"name": "virtual-env.default.public",
                    "namespace": "istio-system", "uid": "plugin-uid", "labels": {
                        MANAGED_BY_LABEL: MANAGED_BY, OWNER_UID_LABEL: uid,
                        OWNER_NAMESPACE_LABEL: "default"}}, "spec": {}}),
            )
        };
        snapshot.elsewhere.push(ours("ve-uid"));
        let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
        let pruned: Vec<(String, String)> = plan
            .prune
            .iter()
            .map(|e| (e.namespace.clone(), e.name.clone()))
            .collect();
        assert_eq!(
            pruned,
            [(
                "istio-system".to_owned(),
                "virtual-env.default.public".to_owned()
            )]
        );
        snapshot.elsewhere.pop();
        snapshot.elsewhere.push(ours("another-ve-uid"));
        let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
        assert!(plan.prune.is_empty(), "{:?}", plan.prune);
    }

    #[test]
    fn plugin_objects_of_a_namespace_are_recognised_by_label_or_name() {
        let none = BTreeMap::new();
        assert!(of_namespace("virtual-env.team.public", &none, "team"));
        assert!(!of_namespace("virtual-env.team-a.public", &none, "team"));
        assert!(!of_namespace("virtual-env.team", &none, "team"));
        let labelled = BTreeMap::from([(OWNER_NAMESPACE_LABEL.to_owned(), "team".to_owned())]);
        assert!(of_namespace("renamed", &labelled, "team"));
    }

    /// A tenant's own module runs in its own sidecars only: a plugin object in a shared
    /// gateway's namespace always loads the controller's module, whatever the spec says.
    #[test]
    fn a_tenants_module_never_reaches_a_gateway_outside_its_namespace() {
        let (mut ve, mut snapshot) = exposed("istio-system/public,own-gateway");
        snapshot.elsewhere.push(object(
            Kind::Gateway,
            serde_json::json!({"metadata": {"name": "own-gateway", "namespace": "default"},
                "spec": {"selector": {"app": "own-gateway"},
                    "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                        "hosts": ["./*"]}]}}),
        ));
        ve.spec.wasm_module = Some(crate::crd::WasmModule {
            url: "https://attacker.example/evil.wasm".into(),
            sha256: Some("0".repeat(64)),
        });
        let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
        let url_of = |ns: &str| {
            plan.gateway_plugins
                .iter()
                .find(|p| p.namespace().as_deref() == Some(ns))
                .map(|p| p.spec.url.clone())
                .unwrap()
        };
        assert_eq!(url_of("istio-system"), settings().wasm.url);
        assert_eq!(
            plan.gateway_plugins
                .iter()
                .find(|p| p.namespace().as_deref() == Some("istio-system"))
                .unwrap()
                .spec
                .sha256,
            settings().wasm.sha256
        );
        assert_eq!(url_of("default"), "https://attacker.example/evil.wasm");
        assert_eq!(
            plan.wasm_plugin.spec.url,
            "https://attacker.example/evil.wasm"
        );
        assert!(
            plan.skipped.iter().any(|s| s.contains(
                "spec.wasmModule applies in namespace default only; the plugin object in namespace istio-system loads the controller's module"
            )),
            "{:?}",
            plan.skipped
        );
    }

    use crate::gateway_admission::{GatewayAdmission, GatewayCluster};
    use crate::plan::fixtures::gateway_pod;

    fn plan_with(
        ve: &VirtualEnvironment,
        snapshot: &Snapshot,
        admission: GatewayAdmission,
    ) -> crate::plan::Plan {
        let settings = crate::plan::Settings {
            gateway_admission: admission,
            ..settings()
        };
        plan_namespace(ve, snapshot, &settings).unwrap()
    }

    fn skipped_with(plan: &crate::plan::Plan, text: &str) -> bool {
        plan.skipped.iter().any(|s| s.contains(text))
    }

    /// A tenant names a gateway whose pods serve every namespace (Istio's ingress gateway)
    /// and nobody admitted it there: nothing is bound, nothing routed, and it is told why.
    /// A cluster of one team opts out with `--gateway-admission open`.
    #[test]
    fn a_shared_gateway_admits_no_namespace_without_its_owners_policy() {
        let (ve, mut snapshot) = exposed("istio-system/public");
        with_cluster(&mut snapshot, &ve, vec![]);
        let plan = plan_with(&ve, &snapshot, GatewayAdmission::Policy);
        let vs = route_of_app_a(&plan);
        assert!(vs.spec.gateways.is_empty(), "not bound");
        assert_eq!(vs.spec.hosts, ["app-a.default.svc.cluster.local"]);
        assert!(plan.gateway_plugins.is_empty());
        assert!(
            skipped_with(&plan, "gateway istio-system/public: its pods in namespace istio-system serve other namespaces too, and no GatewayPolicy for them admits namespace default"),
            "{:?}",
            plan.skipped
        );
        let open = plan_with(&ve, &snapshot, GatewayAdmission::Open);
        assert_eq!(
            route_of_app_a(&open).spec.gateways,
            ["istio-system/public", "mesh"]
        );
        assert_eq!(open.gateway_plugins.len(), 1);
    }

    #[test]
    fn a_policy_admits_only_the_namespaces_and_hosts_it_lists_and_sets_the_edge() {
        let (mut ve, mut snapshot) = exposed("istio-system/public");
        let other_ns = ingress_policy(r#"[{namespace: team-b, hosts: ["*"]}]"#, "");
        with_cluster(&mut snapshot, &ve, vec![other_ns]);
        let plan = plan_of_gw(&ve, &snapshot);
        assert!(plan.gateway_plugins.is_empty());
        assert!(
            skipped_with(&plan, "does not admit it for namespace default"),
            "{:?}",
            plan.skipped
        );
        let other_host = ingress_policy(r#"[{namespace: default, hosts: [b.example.com]}]"#, "");
        with_cluster(&mut snapshot, &ve, vec![other_host]);
        let plan = plan_of_gw(&ve, &snapshot);
        assert!(route_of_app_a(&plan).spec.gateways.is_empty());
        // Admitted: the policy's edge (default strip), not the tenant's.
        ve.spec.edge_trust = Some(crate::crd::EdgeTrustSpec {
            mode: crate::crd::EdgeTrustMode::Accept,
            allow: vec![],
        });
        let admits = ingress_policy(r#"[{namespace: default, hosts: ["*.example.com"]}]"#, "");
        with_cluster(&mut snapshot, &ve, vec![admits]);
        let plan = plan_of_gw(&ve, &snapshot);
        let config =
            crate::plan::plugin_config_of(&plan.gateway_plugins[0].spec.plugin_config).unwrap();
        assert_eq!(
            config.edge_trust, None,
            "the policy's edge guard judges, not the tenant's plugin"
        );
        assert!(skipped_with(&plan, "spec.edgeTrust is not applied there; GatewayPolicy ingressgateway sets its edge policy"));
    }

    fn plan_of_gw(ve: &VirtualEnvironment, snapshot: &Snapshot) -> crate::plan::Plan {
        plan_with(ve, snapshot, GatewayAdmission::Policy)
    }

    /// Another namespace's VirtualEnvironment exposing `service` at `istio-system/public`
    /// under `host`, created at `created` (seconds).
    fn rival(ns: &str, created: i64, host: &str) -> (VirtualEnvironment, Service) {
        let mut ve = seed_ve();
        ve.metadata.namespace = Some(ns.into());
        ve.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
            ));
        let mut svc = annotated("shop", "istio-system/public", host);
        svc.metadata.namespace = Some(ns.into());
        (ve, svc)
    }

    fn cluster_with(
        snapshot: &Snapshot,
        ve: &VirtualEnvironment,
        rivals: &[(VirtualEnvironment, Service)],
        users: &[Existing],
        policies: Vec<crate::gateway_policy::GatewayPolicy>,
    ) -> std::sync::Arc<GatewayCluster> {
        let pod = gateway_pod();
        let objects: Vec<Existing> = snapshot.elsewhere.iter().chain(users).cloned().collect();
        std::sync::Arc::new(GatewayCluster::from_objects(
            objects.iter(),
            std::iter::once(&pod),
            policies,
            std::iter::once((ve, snapshot.services.iter().collect()))
                .chain(rivals.iter().map(|(ve, svc)| (ve, vec![svc]))),
        ))
    }

    /// One host on one gateway's pods has one owner across namespaces: a tenant cannot
    /// claim a host another team serves there.
    #[test]
    fn a_host_another_namespace_serves_at_the_gateway_is_refused() {
        let (mut ve, mut snapshot) = exposed("istio-system/public");
        ve.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap(),
            ));
        let any = || ingress_policy(r#"[{namespace: "*", hosts: ["*"]}]"#, "");
        // Team b's VirtualEnvironment is older: it keeps the host.
        let rivals = [rival("team-b", 1_000, "a.example.com")];
        snapshot.cluster = cluster_with(&snapshot, &ve, &rivals, &[], vec![any()]);
        let plan = plan_of_gw(&ve, &snapshot);
        assert!(route_of_app_a(&plan).spec.gateways.is_empty());
        assert!(plan.gateway_plugins.is_empty());
        assert!(skipped_with(&plan, "app-a: host a.example.com at gateway istio-system/public: namespace team-b claims it too"), "{:?}", plan.skipped);
        // A younger rival does not take it away.
        let rivals = [rival("team-b", 3_000, "a.example.com")];
        snapshot.cluster = cluster_with(&snapshot, &ve, &rivals, &[], vec![any()]);
        assert_eq!(plan_of_gw(&ve, &snapshot).gateway_plugins.len(), 1);
        // Unless the gateway's owner gives the host to it: the most specific entry wins.
        let named = ingress_policy(
            r#"[{namespace: "*", hosts: ["*"]}, {namespace: team-b, hosts: [a.example.com]}]"#,
            "",
        );
        snapshot.cluster = cluster_with(&snapshot, &ve, &rivals, &[], vec![named]);
        assert!(plan_of_gw(&ve, &snapshot).gateway_plugins.is_empty());
        // A user's own VirtualService for the host at that gateway, in any namespace, keeps it.
        let user = object(
            Kind::VirtualService,
            serde_json::json!({"metadata": {"name": "front", "namespace": "team-c"},
                "spec": {"hosts": ["A.example.com"], "gateways": ["istio-system/public"]}}),
        );
        snapshot.cluster = cluster_with(&snapshot, &ve, &[], &[user], vec![any()]);
        let plan = plan_of_gw(&ve, &snapshot);
        assert!(plan.gateway_plugins.is_empty());
        assert!(
            skipped_with(
                &plan,
                "namespace team-c's VirtualService front routes it there already"
            ),
            "{:?}",
            plan.skipped
        );
    }

    /// A VirtualService binds each of its hosts at each of its gateways: a host refused at
    /// one gateway must not be bound there through another's admission.
    #[test]
    fn a_host_refused_at_one_gateway_is_not_bound_there_by_another() {
        let (ve, mut snapshot) = exposed("istio-system/public,own-gw");
        if let Some(a) = snapshot
            .services
            .iter_mut()
            .find(|s| s.name_any() == "app-a")
        {
            a.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(
                    HOSTS_ANNOTATION.into(),
                    "a.example.com,b.example.com".into(),
                );
        }
        snapshot.elsewhere.push(object(
            Kind::Gateway,
            serde_json::json!({"metadata": {"name": "own-gw", "namespace": "default"},
                "spec": {"selector": {"app": "own-gw"},
                    "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}),
        ));
        snapshot
            .pods
            .push(crate::plan::fixtures::pod("own-gw-1", "own-gw", None, true));
        let only_a = ingress_policy(r#"[{namespace: default, hosts: [a.example.com]}]"#, "");
        with_cluster(&mut snapshot, &ve, vec![only_a]);
        let plan = plan_of_gw(&ve, &snapshot);
        let vs = route_of_app_a(&plan);
        assert_eq!(vs.spec.gateways, ["default/own-gw", "mesh"]);
        assert_eq!(
            vs.spec.hosts,
            [
                "app-a.default.svc.cluster.local",
                "a.example.com",
                "b.example.com"
            ]
        );
        let placed: Vec<String> = plan
            .gateway_plugins
            .iter()
            .map(|p| p.namespace().unwrap())
            .collect();
        assert_eq!(placed, ["default"], "nothing at the shared gateway");
        assert!(
            skipped_with(
                &plan,
                "host a.example.com at gateway istio-system/public: not bound"
            ),
            "{:?}",
            plan.skipped
        );
    }

    /// A Gateway of the tenant's own that selects the shared gateway's pods (and one pod
    /// of its own as a decoy) is bound nowhere without the policy: istiod would hand the
    /// binding to every pod it selects.
    #[test]
    fn a_gateway_admitted_at_one_of_its_placements_only_is_not_bound() {
        let (ve, mut snapshot) = exposed("team-gw");
        snapshot.elsewhere.push(object(
            Kind::Gateway,
            serde_json::json!({"metadata": {"name": "team-gw", "namespace": "default"},
                "spec": {"selector": {"istio": "ingressgateway"},
                    "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}),
        ));
        let mut decoy = crate::plan::fixtures::pod("decoy", "decoy", None, true);
        decoy
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("istio".into(), "ingressgateway".into());
        snapshot.pods.push(decoy);
        with_cluster(&mut snapshot, &ve, vec![]);
        let plan = plan_of_gw(&ve, &snapshot);
        assert!(route_of_app_a(&plan).spec.gateways.is_empty(), "not bound");
        assert!(plan.gateway_plugins.is_empty());
    }

    /// A rival that could never serve the host (the Gateway's servers do not admit its
    /// namespace) blocks nobody.
    #[test]
    fn a_rival_the_gateway_does_not_admit_blocks_nobody() {
        let (mut ve, mut snapshot) = exposed("istio-system/public");
        ve.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap(),
            ));
        if let Some(gw) = snapshot
            .elsewhere
            .iter_mut()
            .find(|e| e.kind == Kind::Gateway)
        {
            gw.spec["servers"][0]["hosts"] = serde_json::json!(["default/a.example.com"]);
        }
        let any = ingress_policy(r#"[{namespace: "*", hosts: ["*"]}]"#, "");
        let rivals = [rival("team-b", 1_000, "a.example.com")];
        snapshot.cluster = cluster_with(&snapshot, &ve, &rivals, &[], vec![any]);
        let plan = plan_of_gw(&ve, &snapshot);
        assert_eq!(plan.gateway_plugins.len(), 1, "{:?}", plan.skipped);
    }

    /// Istio's Bookinfo: the Gateway in the application's namespace, selecting the ingress
    /// gateway's pods in istio-system. The plugin object goes where the pods run (a
    /// WasmPlugin selects pods of its own namespace only), with the controller's module.
    #[test]
    fn the_plugin_object_goes_where_the_gateways_pods_run() {
        let (ve, mut snapshot) = exposed("bookinfo-gateway");
        snapshot.elsewhere.push(object(
            Kind::Gateway,
            serde_json::json!({"metadata": {"name": "bookinfo-gateway", "namespace": "default"},
                "spec": {"selector": {"istio": "ingressgateway"},
                    "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"},
                        "hosts": ["*"]}]}}),
        ));
        let policy = ingress_policy(r#"[{namespace: default, hosts: ["*"]}]"#, "{mode: accept}");
        with_cluster(&mut snapshot, &ve, vec![policy]);
        let plan = plan_of_gw(&ve, &snapshot);
        let placed: Vec<(String, String)> = plan
            .gateway_plugins
            .iter()
            .map(|p| (p.namespace().unwrap(), p.name_any()))
            .collect();
        assert_eq!(
            placed,
            [(
                "istio-system".to_owned(),
                "virtual-env.default.bookinfo-gateway".to_owned()
            )]
        );
        assert_eq!(
            route_of_app_a(&plan).spec.gateways,
            ["default/bookinfo-gateway", "mesh"]
        );
        // Where istiod scopes Gateways to their namespace, no pod there: reported.
        let scoped = crate::plan::Settings {
            scope_gateway_to_namespace: true,
            ..settings()
        };
        let plan = plan_namespace(&ve, &snapshot, &scoped).unwrap();
        assert!(
            skipped_with(
                &plan,
                "gateway default/bookinfo-gateway: its selector matches no pod in its namespace"
            ),
            "{:?}",
            plan.skipped
        );
        assert_eq!(
            plan.gateway_plugins[0].namespace().as_deref(),
            Some("default")
        );
    }

    #[test]
    fn a_module_the_crd_would_refuse_is_an_invalid_spec() {
        for (url, sha, field) in [
            ("ftp://x", None, "spec.wasmModule.url"),
            ("https://", None, "spec.wasmModule.url"),
            ("https://x/a.wasm", Some("ABC"), "spec.wasmModule.sha256"),
        ] {
            let (mut ve, snapshot) = exposed("istio-system/public");
            ve.spec.wasm_module = Some(crate::crd::WasmModule {
                url: url.into(),
                sha256: sha.map(String::from),
            });
            let err = plan_namespace(&ve, &snapshot, &settings()).unwrap_err();
            assert!(err.to_string().contains(field), "{url}: {err}");
        }
    }

    #[test]
    fn an_invalid_edge_trust_is_an_invalid_spec() {
        let (mut ve, snapshot) = exposed("istio-system/public");
        ve.spec.edge_trust = Some(crate::crd::EdgeTrustSpec {
            mode: crate::crd::EdgeTrustMode::AllowList,
            allow: vec![],
        });
        let err = plan_namespace(&ve, &snapshot, &settings()).unwrap_err();
        assert!(err.to_string().contains("at least one entry"), "{err}");
    }
}
