//! Istio objects already in a namespace, read untyped.
//!
//! A real namespace holds what its users wrote (Istio's own samples have gateway routes,
//! `uri` matches, unnamed routes, TCP and TLS routes, DestinationRules with only a
//! traffic policy). Reading those into the controller's narrow write types failed the
//! whole list and stalled the namespace; so they are read as plain JSON, and only what
//! the controller needs is taken out: name, ownership, and the hosts an object routes.

use kube::api::ApiResource;
use serde_json::Value;
use virtual_env_core::{lowercase, ServiceHost};

use k8s_openapi::api::core::v1::Service;

use crate::gamma::{GRPCRoute, HTTPRoute};
use crate::gateway_api_gateway::KubernetesGateway;
use crate::istio::{DestinationRule, Gateway, TrafficExtension, VirtualService, WasmPlugin};
use crate::objects::{MANAGED_BY, MANAGED_BY_LABEL, OWNER_UID_LABEL};

/// The kinds the controller writes (Istio's; Gateway API's routes and the Services they
/// send to), and Gateways, which it reads only. Declared in the order objects are pruned:
/// routes before what they send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    WasmPlugin,
    Gateway,
    /// A Gateway API Gateway (`gateway.networking.k8s.io`), read for gateway entry.
    KubernetesGateway,
    TrafficExtension,
    HttpRoute,
    GrpcRoute,
    /// The Services the controller writes for one env of a service (`gamma.rs`).
    Service,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::WasmPlugin => "WasmPlugin",
            Kind::Gateway | Kind::KubernetesGateway => "Gateway",
            Kind::TrafficExtension => "TrafficExtension",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::Service => "Service",
        }
    }

    /// Group, version and plural, from the typed resources in `istio.rs` (their one home).
    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::VirtualService => ApiResource::erase::<VirtualService>(&()),
            Kind::DestinationRule => ApiResource::erase::<DestinationRule>(&()),
            Kind::WasmPlugin => ApiResource::erase::<WasmPlugin>(&()),
            Kind::Gateway => ApiResource::erase::<Gateway>(&()),
            Kind::KubernetesGateway => ApiResource::erase::<KubernetesGateway>(&()),
            Kind::TrafficExtension => ApiResource::erase::<TrafficExtension>(&()),
            Kind::HttpRoute => ApiResource::erase::<HTTPRoute>(&()),
            Kind::GrpcRoute => ApiResource::erase::<GRPCRoute>(&()),
            Kind::Service => ApiResource::erase::<Service>(&()),
        }
    }

    /// A plugin object: a WasmPlugin or its successor, a TrafficExtension.
    pub fn is_plugin(self) -> bool {
        matches!(self, Kind::WasmPlugin | Kind::TrafficExtension)
    }

    /// A Gateway of either API.
    pub fn is_gateway(self) -> bool {
        matches!(self, Kind::Gateway | Kind::KubernetesGateway)
    }

    /// A Gateway API route.
    pub fn is_route(self) -> bool {
        matches!(self, Kind::HttpRoute | Kind::GrpcRoute)
    }
}

/// One existing object, as far as planning and pruning care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub kind: Kind,
    pub name: String,
    pub namespace: String,
    pub uid: Option<String>,
    /// Labelled `app.kubernetes.io/managed-by: virtual-env`.
    pub labelled: bool,
    /// UIDs of its owner references.
    pub owners: Vec<String>,
    /// Hosts it routes (a VirtualService's `hosts`, a DestinationRule's `host`).
    pub hosts: Vec<String>,
    /// Whether it applies to sidecars: a VirtualService bound only to gateways does not.
    pub mesh: bool,
    /// The spec as read, for the transition from what the controller applied before.
    pub spec: Value,
    /// `metadata.creationTimestamp` (RFC 3339, so it sorts as text): Istio takes the older
    /// of two merged DestinationRules' traffic policies.
    pub created: Option<String>,
}

/// A route's Service parents, each `<name>` or `<name>.<namespace>`.
fn service_parents(spec: &Value) -> Vec<String> {
    spec["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["kind"] == "Service" && p["group"].as_str().unwrap_or("").is_empty())
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            Some(match p["namespace"].as_str() {
                Some(ns) => format!("{name}.{ns}"),
                None => name.to_owned(),
            })
        })
        .collect()
}

impl Existing {
    /// Reads an object of `kind` from its JSON; `default_namespace` for one without.
    pub fn from_json(kind: Kind, value: &Value, default_namespace: &str) -> Self {
        let meta = &value["metadata"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let spec = &value["spec"];
        let (hosts, mesh) = match kind {
            Kind::VirtualService => {
                let gateways = strings(&spec["gateways"]);
                (
                    strings(&spec["hosts"]),
                    gateways.is_empty() || gateways.iter().any(|g| g == "mesh"),
                )
            }
            Kind::DestinationRule => (text(&spec["host"]).into_iter().collect(), true),
            // A route's Service parents are the hosts it routes for sidecars (GAMMA); one
            // bound only to Gateways is not a mesh route, and its `hostnames` are the
            // hosts it routes there (as a gateway-bound VirtualService's `hosts`).
            Kind::HttpRoute | Kind::GrpcRoute => {
                let services = service_parents(spec);
                match services.is_empty() {
                    false => (services, true),
                    true => (strings(&spec["hostnames"]), false),
                }
            }
            // An env Service (`gamma.rs`): the service it is an env of.
            Kind::Service => (
                text(&meta["labels"][crate::gamma::ENV_SERVICE_OF_LABEL])
                    .into_iter()
                    .collect(),
                true,
            ),
            Kind::WasmPlugin | Kind::Gateway | Kind::KubernetesGateway | Kind::TrafficExtension => {
                (Vec::new(), true)
            }
        };
        Self {
            kind,
            name: text(&meta["name"]).unwrap_or_default(),
            namespace: text(&meta["namespace"]).unwrap_or_else(|| default_namespace.to_owned()),
            uid: text(&meta["uid"]),
            labelled: meta["labels"][MANAGED_BY_LABEL] == MANAGED_BY,
            // Objects in other namespaces (a gateway's plugin) cannot have an owner
            // reference; a label names their owner's UID instead.
            owners: meta["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| text(&r["uid"]))
                .chain(text(&meta["labels"][OWNER_UID_LABEL]))
                .collect(),
            hosts,
            mesh,
            // An env Service is compared by its spec and the `exportTo` it copies.
            spec: match kind {
                Kind::Service => serde_json::json!({
                    "spec": spec,
                    "exportTo": meta["annotations"][crate::gamma::EXPORT_TO_ANNOTATION],
                }),
                _ => spec.clone(),
            },
            created: text(&meta["creationTimestamp"]),
        }
    }

    /// Whether the VirtualEnvironment with `owner_uid` manages this object: labelled as
    /// virtual-env's and owned by it. Without a uid (a hand-written snapshot offline) the
    /// label alone says so.
    pub fn managed_by(&self, owner_uid: Option<&str>) -> bool {
        self.labelled
            && match owner_uid {
                Some(uid) => self.owners.iter().any(|o| o == uid),
                None => true,
            }
    }

    /// Whether it routes the service `name` of namespace `namespace`, resolving its hosts
    /// as Istio does (short names in the object's own namespace; `*` and `*.suffix`
    /// wildcards). Names with a namespace are matched however they are spelled, so that a
    /// conflict is never missed.
    pub fn routes_service(&self, name: &str, namespace: &str, cluster_domain: &str) -> bool {
        let fqdn = format!("{name}.{namespace}.svc.{cluster_domain}");
        self.mesh
            && self.hosts.iter().any(|host| {
                let host = lowercase(host);
                if host == "*" {
                    return true;
                }
                if let Some(suffix) = host.strip_prefix("*.") {
                    return fqdn.ends_with(&format!(".{suffix}"));
                }
                ServiceHost::parse(&host).is_some_and(|h| {
                    h.name == name
                        && h.namespace.unwrap_or(&self.namespace) == namespace
                        && h.domain.is_none_or(|d| d == cluster_domain)
                })
            })
    }

    /// Whether it names the service's host as Istio resolves a DestinationRule's: the
    /// short name (in the object's namespace) or the FQDN. Istio expands no other spelling
    /// (`svc.ns` matches no service), unlike [`Self::routes_service`], which counts those
    /// too so as never to take a host a user meant.
    pub fn names_host_exactly(&self, name: &str, namespace: &str, cluster_domain: &str) -> bool {
        let fqdn = format!("{name}.{namespace}.svc.{cluster_domain}");
        self.hosts.iter().any(|host| {
            let host = lowercase(host);
            host == fqdn || (host == name && self.namespace == namespace)
        })
    }

    /// `VirtualService reviews`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind.name(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vs(hosts: Value, gateways: Option<Value>) -> Existing {
        let mut spec =
            json!({"hosts": hosts, "http": [{"route": [{"destination": {"host": "x"}}]}]});
        if let Some(g) = gateways {
            spec["gateways"] = g;
        }
        Existing::from_json(
            Kind::VirtualService,
            &json!({"metadata": {"name": "user", "namespace": "team"}, "spec": spec}),
            "default",
        )
    }

    #[test]
    fn hosts_resolve_as_istio_resolves_them() {
        let routes = |e: &Existing, svc: &str, ns: &str| e.routes_service(svc, ns, "cluster.local");
        let short = vs(json!(["reviews"]), None);
        assert!(routes(&short, "reviews", "team"));
        assert!(!routes(&short, "reviews", "other"));
        assert!(!routes(&short, "ratings", "team"));
        let full = vs(json!(["Reviews.Other.svc.cluster.local"]), None);
        assert!(routes(&full, "reviews", "other"));
        assert!(routes(
            &vs(json!(["reviews.other"]), None),
            "reviews",
            "other"
        ));
        assert!(routes(&vs(json!(["*"]), None), "anything", "team"));
        assert!(routes(
            &vs(json!(["*.team.svc.cluster.local"]), None),
            "a",
            "team"
        ));
        assert!(!routes(
            &vs(json!(["*.other.svc.cluster.local"]), None),
            "a",
            "team"
        ));
        assert!(!routes(
            &vs(json!(["reviews.team.svc.corp.example"]), None),
            "reviews",
            "team"
        ));
        // Bound only to a gateway: not a sidecar route, no conflict.
        assert!(!routes(
            &vs(json!(["*"]), Some(json!(["bookinfo-gateway"]))),
            "reviews",
            "team"
        ));
        assert!(routes(
            &vs(json!(["reviews"]), Some(json!(["gw", "mesh"]))),
            "reviews",
            "team"
        ));
    }

    #[test]
    fn ownership_is_the_label_and_the_owner_uid() {
        let mut e = vs(json!(["a"]), None);
        assert!(!e.managed_by(Some("uid-1")));
        e.labelled = true;
        assert!(!e.managed_by(Some("uid-1")));
        assert!(e.managed_by(None));
        e.owners.push("uid-1".into());
        assert!(e.managed_by(Some("uid-1")));
        assert!(!e.managed_by(Some("uid-2")));
    }

    #[test]
    fn what_users_write_is_read_without_failing() {
        let dr = Existing::from_json(
            Kind::DestinationRule,
            &json!({"metadata": {"name": "reviews"}, "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}}),
            "team",
        );
        assert_eq!(dr.hosts, ["reviews"]);
        assert_eq!(dr.namespace, "team");
        let tcp = Existing::from_json(
            Kind::VirtualService,
            &json!({"metadata": {"name": "mongo"}, "spec": {"hosts": ["mongo"], "tcp": [{"route": []}]}}),
            "team",
        );
        assert!(tcp.routes_service("mongo", "team", "cluster.local"));
        let garbage = Existing::from_json(Kind::VirtualService, &json!({"spec": 3}), "team");
        assert!(garbage.hosts.is_empty());
    }
}
