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
use crate::istio::{WasmPlugin, WasmPluginSpec, WorkloadSelector};
use crate::plan::{
    plugin_config_value, WasmSource, MANAGED_BY, MANAGED_BY_LABEL, OWNER_NAMESPACE_LABEL,
    OWNER_UID_LABEL,
};

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
) -> (BTreeMap<String, Exposure>, Vec<String>) {
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
                None => problems.push(format!(
                    "{service}: {origin}: {gateway:?} is not a gateway name (<namespace>/<name>)"
                )),
            }
        }
        for host in hosts {
            let host = host.to_ascii_lowercase();
            if is_gateway_host(&host) {
                exposure.hosts.insert(host);
            } else {
                problems.push(format!("{service}: {origin}: {host:?} is not a host name"));
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
            problems.push(format!(
                "{service}: hosts without a gateway; not exposed (set {GATEWAYS_ANNOTATION})"
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
    pub skipped: Vec<String>,
}

/// Where a gateway's plugin object fetches its module: the tenant's `spec.wasmModule` only
/// for a gateway whose plugin lands in the tenant's own namespace; anywhere else (a shared
/// gateway that every tenant's traffic passes) always the controller's own module.
pub struct ModuleSources<'a> {
    pub tenant: &'a WasmSource,
    pub controller: &'a WasmSource,
}

/// One plugin object per gateway that exposes a routed service of `namespace`.
/// `namespace_config` is the namespace's calling-side plugin config (route header, cluster
/// domain and settings in force); `elsewhere` the cluster's Gateway objects and the plugin
/// objects already in other namespaces under our names (of kind `plugin_kind`).
pub fn plan_gateways(
    ve: &VirtualEnvironment,
    namespace: &str,
    exposed: &[ExposedService<'_>],
    namespace_config: &PluginConfig,
    elsewhere: &[Existing],
    modules: &ModuleSources<'_>,
    plugin_kind: Kind,
) -> GatewayPlans {
    let mut plans = GatewayPlans {
        plugins: Vec::new(),
        skipped: Vec::new(),
    };
    let referenced: BTreeSet<&GatewayName> =
        exposed.iter().flat_map(|s| &s.exposure.gateways).collect();
    let owner_uid = ve.uid();
    for gateway in referenced {
        let reference = gateway.reference();
        let Some(object) = elsewhere.iter().find(|g| {
            g.kind == Kind::Gateway && g.namespace == gateway.namespace && g.name == gateway.name
        }) else {
            plans.skipped.push(format!(
                "gateway {reference}: not found; bound in the VirtualServices, but no plugin for its pods (requests entering there take the default routes)"
            ));
            continue;
        };
        let selector: BTreeMap<String, String> =
            serde_json::from_value(object.spec["selector"].clone()).unwrap_or_default();
        if selector.is_empty() {
            plans.skipped.push(format!(
                "gateway {reference}: has no selector, so no pods to give the plugin"
            ));
            continue;
        }
        let name = plugin_name(namespace, gateway);
        if name.len() > 253 {
            plans.skipped.push(format!(
                "gateway {reference}: the plugin object's name {name:?} is longer than 253 characters"
            ));
            continue;
        }
        if let Some(other) = elsewhere.iter().find(|e| {
            e.kind == plugin_kind
                && e.namespace == gateway.namespace
                && e.name == name
                && !e.managed_by(owner_uid.as_deref())
        }) {
            plans.skipped.push(format!(
                "gateway {reference}: {} in namespace {} is not this VirtualEnvironment's; left alone",
                other.describe(),
                other.namespace
            ));
            continue;
        }
        let mut config = PluginConfig {
            direction: Some(Direction::Outbound),
            // A gateway records no env for trace correlation, so it looks none up.
            correlation_slots: 0,
            auto_inject: false,
            services: BTreeMap::new(),
            hosts: BTreeMap::new(),
            edge_trust: ve.spec.edge_trust.as_ref().map(|e| e.to_config()),
            // A gateway calls only the exposed services of this namespace.
            peers: BTreeMap::new(),
            env_names: Vec::new(),
            service_envs: BTreeMap::new(),
            ..namespace_config.clone()
        };
        for service in exposed
            .iter()
            .filter(|s| s.exposure.gateways.contains(gateway))
        {
            config
                .services
                .insert(service.fqdn.clone(), service.envs.clone());
            for host in &service.exposure.hosts {
                if host.starts_with("*.") {
                    plans.skipped.push(format!(
                        "{}: host {host} at gateway {reference}: wildcard hosts are bound but not routed by env there (name the hosts)",
                        service.name
                    ));
                    continue;
                }
                if let Some(first) = config.hosts.get(host) {
                    plans.skipped.push(format!(
                        "{}: host {host} at gateway {reference} already reaches {first}",
                        service.name
                    ));
                    continue;
                }
                config.hosts.insert(host.clone(), service.fqdn.clone());
            }
        }
        let source = if gateway.namespace == namespace {
            modules.tenant
        } else {
            if modules.tenant != modules.controller {
                plans.skipped.push(format!(
                    "gateway {reference}: spec.wasmModule applies in namespace {namespace} only; the plugin object in namespace {} loads the controller's module",
                    gateway.namespace
                ));
            }
            modules.controller
        };
        let mut labels = BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (OWNER_NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
        ]);
        if let Some(uid) = &owner_uid {
            labels.insert(OWNER_UID_LABEL.to_owned(), uid.clone());
        }
        plans.plugins.push(WasmPlugin {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(gateway.namespace.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: WasmPluginSpec {
                url: source.url.clone(),
                sha256: source.sha256.clone(),
                fail_strategy: "FAIL_OPEN".into(),
                selector: Some(WorkloadSelector {
                    match_labels: selector,
                }),
                // Every listener of the gateway: it only ever calls out.
                traffic_selectors: Vec::new(),
                plugin_config: plugin_config_value(&config),
            },
        });
    }
    plans
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

    use crate::plan::fixtures::{seed_exposed_through, settings};
    use crate::plan::{plan_namespace, Snapshot};

    fn object(kind: Kind, value: serde_json::Value) -> Existing {
        Existing::from_json(kind, &value, "default")
    }

    fn public_gateway() -> Existing {
        object(
            Kind::Gateway,
            serde_json::json!({"metadata": {"name": "public", "namespace": "istio-system"},
                "spec": {"selector": {"istio": "ingressgateway"}}}),
        )
    }

    /// The seed's namespace with app-a exposed through `gateways`, and the Gateway
    /// `istio-system/public`.
    fn exposed(gateways: &str) -> (VirtualEnvironment, Snapshot) {
        let mut snapshot = seed_exposed_through(gateways);
        snapshot.elsewhere.push(public_gateway());
        let mut ve = seed_ve();
        ve.metadata.uid = Some("ve-uid".into());
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
                "spec": {"selector": {"app": "own-gateway"}}}),
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
