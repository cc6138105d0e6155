//! Entry through Istio Gateways, as a namespace asks for it: which services are exposed
//! through which Gateways under which hosts, by the original project's Service annotations
//! (`kt-virtual-environment/gateways: <ns>/<gateway>[,...]`,
//! `kt-virtual-environment/hosts: <host>[,...]`) or the VirtualEnvironment's
//! `spec.gateways`; the names of the gateway plugin objects.
//!
//! The names are Istio Gateways (`networking.istio.io`) where the namespace routes with
//! VirtualServices, Gateway API Gateways (`gateway.networking.k8s.io`, Istio's
//! `gatewayClassName: istio`) where it routes with HTTPRoutes: a VirtualService binds
//! only the one kind, an HTTPRoute only the other.
//!
//! What is admitted is `gateway_admission.rs`'s to say, and the plugin objects are
//! `gateway_plugins.rs`'s to build. Pure: no API calls.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use virtual_env_core::service::is_dns_label;

use crate::crd::{RoutingApi, VirtualEnvironment};
use crate::existing::{Existing, Kind};
use crate::objects::OWNER_NAMESPACE_LABEL;
use crate::skip::Skip;

pub const GATEWAYS_ANNOTATION: &str = "kt-virtual-environment/gateways";
pub const HOSTS_ANNOTATION: &str = "kt-virtual-environment/hosts";
/// The finalizer that deletes a VirtualEnvironment's gateway plugin objects.
pub const FINALIZER: &str = "env.alibaba.com/gateway-plugins";

/// The label Istio puts on the pods it deploys for a Gateway API Gateway (its value the
/// Gateway's name; the pods run in the Gateway's namespace), and by which it attaches a
/// policy's `targetRefs` to them.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Which API a Gateway is of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GatewayKind {
    /// `networking.istio.io` Gateway: a `selector` for its pods, `servers[].hosts`.
    #[default]
    Istio,
    /// `gateway.networking.k8s.io` Gateway: pods labelled [`GATEWAY_NAME_LABEL`] in its
    /// namespace, `listeners` with `allowedRoutes`.
    GatewayApi,
}

impl GatewayKind {
    /// The kind of object such a Gateway is read as.
    pub fn object_kind(self) -> Kind {
        match self {
            GatewayKind::Istio => Kind::Gateway,
            GatewayKind::GatewayApi => Kind::KubernetesGateway,
        }
    }

    /// The Gateways a VirtualEnvironment's exposures name: Gateway API's once its routes
    /// are HTTPRoutes (as asked, or as decided in `status.routingApi`).
    pub fn of(ve: &VirtualEnvironment) -> Self {
        let asked = ve.spec.routing.as_ref().and_then(|r| r.api);
        let decided = ve.status.as_ref().and_then(|s| s.routing_api);
        match asked.or(decided) {
            Some(RoutingApi::HttpRoute) => GatewayKind::GatewayApi,
            _ => GatewayKind::Istio,
        }
    }
}

/// A Gateway as a VirtualService or an HTTPRoute names it, resolved to its namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayName {
    pub namespace: String,
    pub name: String,
    pub kind: GatewayKind,
}

impl GatewayName {
    /// `<ns>/<name>`, or `<name>` in `own_namespace`, as Istio reads `spec.gateways`
    /// (an Istio Gateway; see [`Self::of_kind`]). `None` for `mesh` (always bound) and for
    /// what is not a name.
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
            kind: GatewayKind::Istio,
        })
    }

    /// The same name, as a Gateway of `kind`.
    pub fn of_kind(self, kind: GatewayKind) -> Self {
        Self { kind, ..self }
    }

    /// The Gateway `object` (an Istio or Gateway API Gateway).
    pub fn of_object(object: &Existing) -> Self {
        Self {
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            kind: match object.kind {
                Kind::KubernetesGateway => GatewayKind::GatewayApi,
                _ => GatewayKind::Istio,
            },
        }
    }

    /// Whether `object` is this Gateway.
    pub fn is(&self, object: &Existing) -> bool {
        object.kind == self.kind.object_kind()
            && object.namespace == self.namespace
            && object.name == self.name
    }

    /// How the VirtualService names it.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// How a preview host is written: `{env}.<suffix>` (see [`Exposure::preview`]).
pub const PREVIEW_PLACEHOLDER: &str = "{env}.";

/// How one service is entered through gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exposure {
    pub gateways: BTreeSet<GatewayName>,
    /// Lower case; exact names and `*.suffix` wildcards (a preview host is bound as
    /// `*.<suffix>`).
    pub hosts: BTreeSet<String>,
    /// Preview hosts' suffixes: `{env}.preview.example.com` asks for
    /// `<env>.preview.example.com` to select the env at the gateway (its levels joined by
    /// `--`, as a wildcard certificate covers one label).
    pub preview: BTreeSet<String>,
}

impl Exposure {
    /// Adds a host as written (lower case): a name, a `*.` wildcard, or a preview host
    /// (bound as its wildcard); what it is not, in words.
    fn add_host(&mut self, host: &str) -> Result<(), String> {
        if let Some(suffix) = host.strip_prefix(PREVIEW_PLACEHOLDER) {
            if !(is_dns_subdomain(suffix) && suffix.contains('.')) {
                return Err(format!(
                    "{host:?} is not a preview host ({{env}}.<domain of two labels or more>)"
                ));
            }
            self.hosts.insert(format!("*.{suffix}"));
            self.preview.insert(suffix.to_owned());
        } else if is_gateway_host(host) {
            self.hosts.insert(host.to_owned());
        } else {
            return Err(format!("{host:?} is not a host name"));
        }
        Ok(())
    }
}

/// The exposures of a namespace's services, from their annotations and `spec.gateways`,
/// by service name; and what was dropped, with the reason.
pub fn exposures(
    ve: &VirtualEnvironment,
    services: &[Service],
    namespace: &str,
    kind: GatewayKind,
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
                    exposure.gateways.insert(name.of_kind(kind));
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
            if let Err(why) = exposure.add_host(&host.to_ascii_lowercase()) {
                problems.push(Skip::service(service, format_args!("{origin}: {why}")));
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
