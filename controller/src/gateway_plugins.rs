//! The plugin objects of the gateways a namespace is entered through, one per placement
//! that admission left (`gateway_admission.rs`): in the namespace of the gateway's pods,
//! selecting them, with a plugin config of only the services and hosts routed there.
//!
//! The plugin object lives in another namespace, so it cannot have an owner reference:
//! a label names its owner's UID, and a finalizer on the VirtualEnvironment deletes it.
//!
//! Pure: no API calls (`reconcile` applies what this plans).

use std::collections::{BTreeMap, BTreeSet};

use kube::api::ObjectMeta;
use kube::ResourceExt;
use virtual_env_core::PluginConfig;

use crate::crd::VirtualEnvironment;
use crate::existing::{Existing, Kind};
use crate::gateway::{plugin_name, Exposure, GatewayKind, GatewayName};
use crate::gateway_admission::Placement;
use crate::istio::{PolicyTargetReference, WasmPlugin, WasmPluginSpec, WorkloadSelector};
use crate::objects::{
    plugin_config_value, WasmSource, MANAGED_BY, MANAGED_BY_LABEL, OWNER_NAMESPACE_LABEL,
    OWNER_UID_LABEL,
};
use crate::skip::Skip;

/// A service routed by env and exposed through gateways, as the gateway plans need it.
#[derive(Debug, Clone)]
pub struct ExposedService<'a> {
    pub name: &'a str,
    pub fqdn: String,
    pub envs: Vec<String>,
    pub exposure: &'a Exposure,
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
            let Some(object) = elsewhere.iter().find(|g| gateway.is(g)) else {
                let routes = match gateway.kind {
                    GatewayKind::Istio => "VirtualServices",
                    GatewayKind::GatewayApi => "HTTPRoutes (a Gateway API Gateway)",
                };
                return Some(Skip::gateway(
                    &reference,
                    format_args!("not found; bound in the {routes}, but no plugin for its pods (requests entering there take the default routes)"),
                ));
            };
            crate::gateway_admission::selector_of(object).is_empty().then(|| {
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
    let mut config = namespace_config.gateway(placement.edge_trust.clone());
    let reference = placement.gateway.reference();
    for (host, service) in &placement.hosts {
        let Some(service) = entry.exposed.iter().find(|s| s.name == service.as_str()) else {
            continue;
        };
        config
            .services
            .insert(service.fqdn.clone(), service.envs.clone());
        if let Some(suffix) = host
            .strip_prefix("*.")
            .filter(|s| service.exposure.preview.contains(*s))
        {
            config
                .preview_hosts
                .insert(suffix.to_owned(), service.fqdn.clone());
            // Only what judges envs: whether traces may be asked is `edgeTrust`'s.
            config.preview_trust = placement.preview_trust.clone().map(|mut trust| {
                trust.allow_trace = false;
                trust
            });
            if placement
                .preview_trust
                .as_ref()
                .is_some_and(|t| t.mode == virtual_env_core::EdgeMode::Strip)
            {
                skipped.push(Skip::service(
                    service.name,
                    format_args!("preview host {{env}}.{suffix} at gateway {reference}: the gateway's edge policy strips every env from outside, so its URLs open no env (ask for allowList)"),
                ));
            }
            continue;
        }
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
/// VirtualEnvironment of `namespace` with `owner_uid`. It selects an Istio Gateway's pods
/// by their labels; a Gateway API Gateway's by `targetRefs` to the Gateway (Istio ignores
/// selectors on those pods where `ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY` is off, and
/// never applies a policy with `targetRefs` to any other pod).
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
            selector: (placement.gateway.kind == GatewayKind::Istio).then(|| WorkloadSelector {
                match_labels: placement.selector.clone(),
            }),
            // Every listener of the gateway: it only ever calls out.
            traffic_selectors: Vec::new(),
            target_refs: match placement.gateway.kind {
                GatewayKind::Istio => Vec::new(),
                GatewayKind::GatewayApi => vec![gateway_target(&placement.gateway.name)],
            },
            phase: None,
            plugin_config: plugin_config_value(config),
        },
    }
}

/// A policy's `targetRefs` entry for the Gateway API Gateway `name` (of the policy's own
/// namespace: Istio attaches a policy only to a Gateway of its namespace).
pub fn gateway_target(name: &str) -> PolicyTargetReference {
    PolicyTargetReference {
        group: crate::waypoint::GATEWAY_GROUP.into(),
        kind: "Gateway".into(),
        name: name.to_owned(),
    }
}
