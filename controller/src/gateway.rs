//! Entry through Istio Gateways, as a namespace asks for it: which services are exposed
//! through which Gateways under which hosts, by the original project's Service annotations
//! (`kt-virtual-environment/gateways: <ns>/<gateway>[,...]`,
//! `kt-virtual-environment/hosts: <host>[,...]`) or the VirtualEnvironment's
//! `spec.gateways`; the names of the gateway plugin objects.
//!
//! What is admitted is `gateway_admission.rs`'s to say, and the plugin objects are
//! `gateway_plugins.rs`'s to build. Pure: no API calls.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use virtual_env_core::service::is_dns_label;

use crate::crd::VirtualEnvironment;
use crate::objects::OWNER_NAMESPACE_LABEL;
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

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A host a gateway may serve: a DNS name, or `*.` and one.
fn is_gateway_host(host: &str) -> bool {
    is_dns_subdomain(host.strip_prefix("*.").unwrap_or(host))
}

#[cfg(test)]
mod tests;
