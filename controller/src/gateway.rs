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
mod tests;
