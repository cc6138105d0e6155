//! Routing written as Gateway API (GAMMA, its mesh binding): the routes of a service are
//! HTTPRoutes (GRPCRoutes for gRPC ports) whose parent is the Service itself, and since
//! Gateway API has no subsets, each env of the service gets a Service of its own (the
//! service's selector plus the env label) for the routes to send to.
//!
//! What istiod makes of them (istio/istio `pilot/pkg/config/kube/gateway`, read for
//! docs/design/ambient-and-gateway-api.md): the HTTPRoutes of one namespace with the same
//! Service parent (and port) become one mesh VirtualService, their rules concatenated and
//! sorted by Gateway API's precedence: with the same path, more header matches first, so
//! the env rules (one header match each) come before the default rule (none) whichever
//! of a service's routes holds them. That is what lets a service with more envs than one
//! route may hold (16 rules) be split over several routes.
//!
//! The objects are written in the form the API server stores them, every default of the
//! Gateway API CRDs spelled out (a path match of `/`, `group`, `kind`, `weight`), so that
//! what is read back equals what was planned and an unchanged namespace writes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::api::ObjectMeta;
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use virtual_env_core::hash::fnv1a;

use crate::existing::Kind;
use crate::routable::{is_grpc, routes_http};

/// Rules one route may hold (Gateway API v1.6: `spec.rules` maxItems 16).
pub const MAX_RULES: usize = 16;

/// The longest Service name (a DNS-1035 label).
const MAX_SERVICE_NAME: usize = 63;

/// The label on a Service the controller writes for one env of a service, naming that
/// service: such Services are not routed themselves.
pub const ENV_SERVICE_OF_LABEL: &str = "env.alibaba.com/env-service-of";
/// The annotation naming the env a Service of [`ENV_SERVICE_OF_LABEL`] selects.
pub const ENV_ANNOTATION: &str = "env.alibaba.com/env";
/// Istio's annotation limiting which namespaces see a Service: an env's Service is seen
/// where its service is.
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// What of Gateway API the cluster serves (found at start-up, see `main.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayApi {
    /// GRPCRoute is served (standard channel since v1.1); without it gRPC ports get
    /// HTTPRoutes, which Istio applies to gRPC as well.
    pub grpc_route: bool,
    /// Gateway (`v1`) is served: entry through Gateway API Gateways is read (a cluster
    /// may serve the routes alone, for the mesh).
    pub gateways: bool,
}

impl GatewayApi {
    /// From what the cluster serves in `gateway.networking.k8s.io` (plural, version of
    /// each resource's preferred version): HTTPRoute must be served as `v1` (Gateway API
    /// v1.0+), the version written.
    pub fn detect<'a>(served: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Self> {
        let served: Vec<(&str, &str)> = served.into_iter().collect();
        let v1 = |plural: &str| served.contains(&(plural, "v1"));
        v1("httproutes").then(|| GatewayApi {
            grpc_route: v1("grpcroutes"),
            gateways: v1("gateways"),
        })
    }

    /// Everything served (offline renders, tests).
    pub const ALL: GatewayApi = GatewayApi {
        grpc_route: true,
        gateways: true,
    };

    /// Routes written as Gateway API whatever discovery says of HTTPRoute
    /// (`--gateway-api on`); GRPCRoutes only where GRPCRoute `v1` is served.
    pub fn forced<'a>(served: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let served: Vec<(&str, &str)> = served.into_iter().collect();
        GatewayApi {
            grpc_route: served.contains(&("grpcroutes", "v1")),
            gateways: served.contains(&("gateways", "v1")),
        }
    }
}

/// `gateway.networking.k8s.io/v1` HTTPRoute, with the fields the controller sets.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced,
    derive = "PartialEq"
)]
pub struct HttpRouteSpec {
    #[serde(flatten)]
    pub route: RouteSpec,
}

/// `gateway.networking.k8s.io/v1` GRPCRoute: the same shape as the HTTPRoutes the
/// controller writes (header matches, a header filter, Service backends).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    namespaced,
    derive = "PartialEq"
)]
pub struct GrpcRouteSpec {
    #[serde(flatten)]
    pub route: RouteSpec,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    pub parent_refs: Vec<ParentRef>,
    /// A gateway route's hosts (none for a mesh route: its parent is the service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    pub rules: Vec<RouteRule>,
}

/// A route's parent: the routed Service (`group: ""`, `kind: Service`) for a mesh route,
/// a Gateway API Gateway for entry through it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    /// A Gateway's namespace (a Service parent is in the route's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// The service port the route is for; absent: every port (single-port services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct RouteMatch {
    /// HTTPRoute only: the API server's default (`PathPrefix` `/`), spelled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct HeaderMatch {
    #[serde(rename = "type")]
    pub type_: String,
    pub name: String,
    pub value: String,
}

/// A `RequestHeaderModifier` filter: the route headers removed after routing, as the
/// VirtualServices' `headers.request.remove` does.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteFilter {
    #[serde(rename = "type")]
    pub type_: String,
    pub request_header_modifier: HeaderModifier,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct HeaderModifier {
    pub remove: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct BackendRef {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub port: i32,
    pub weight: i32,
}

/// One route the controller writes: an HTTPRoute, or a GRPCRoute for a gRPC port.
#[derive(Debug, Clone, PartialEq)]
pub enum MeshRoute {
    Http(HTTPRoute),
    Grpc(GRPCRoute),
}

impl MeshRoute {
    fn new(kind: Kind, metadata: ObjectMeta, route: RouteSpec) -> Self {
        match kind {
            Kind::GrpcRoute => MeshRoute::Grpc(GRPCRoute {
                metadata,
                spec: GrpcRouteSpec { route },
            }),
            _ => MeshRoute::Http(HTTPRoute {
                metadata,
                spec: HttpRouteSpec { route },
            }),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            MeshRoute::Http(_) => Kind::HttpRoute,
            MeshRoute::Grpc(_) => Kind::GrpcRoute,
        }
    }

    pub fn name(&self) -> String {
        match self {
            MeshRoute::Http(r) => r.name_any(),
            MeshRoute::Grpc(r) => r.name_any(),
        }
    }

    pub fn spec(&self) -> &RouteSpec {
        match self {
            MeshRoute::Http(r) => &r.spec.route,
            MeshRoute::Grpc(r) => &r.spec.route,
        }
    }

    pub fn spec_mut(&mut self) -> &mut RouteSpec {
        match self {
            MeshRoute::Http(r) => &mut r.spec.route,
            MeshRoute::Grpc(r) => &mut r.spec.route,
        }
    }

    /// Whether it routes for sidecars (its parent a Service), not at Gateways.
    pub fn is_mesh(&self) -> bool {
        self.spec().parent_refs.iter().any(|p| p.kind == "Service")
    }

    /// The routed service: a mesh route's parent; a gateway route's name before its
    /// first dot (`<service>.gateway`, see [`gateway_routes`]).
    pub fn service(&self) -> String {
        match self.spec().parent_refs.iter().find(|p| p.kind == "Service") {
            Some(parent) => parent.name.clone(),
            None => service_of_route_name(&self.name()).to_owned(),
        }
    }

    /// As the API returns it (`apiVersion`, `kind`, `metadata`, `spec`).
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            MeshRoute::Http(r) => serde_json::to_value(r),
            MeshRoute::Grpc(r) => serde_json::to_value(r),
        }
        .unwrap_or_default()
    }
}

/// The service a route of the controller's is for, by its name: `<service>`,
/// `<service>.<port>`, `<service>.gateway`, each maybe `.<shard>` (a Service's name has
/// no dot).
pub fn service_of_route_name(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// The suffix of a service's gateway routes' names.
pub const GATEWAY_ROUTE_SUFFIX: &str = "gateway";

/// Hostnames one route may hold (Gateway API v1.6: `spec.hostnames` maxItems 16).
pub const MAX_HOSTNAMES: usize = 16;

/// Gateways one route may name (Gateway API v1.6: `spec.parentRefs` maxItems 32).
pub const MAX_PARENTS: usize = 32;

/// A service's entry through Gateway API Gateways: the rules of its mesh routes for one
/// port (its first HTTP port, else its first gRPC port), bound to `gateways`
/// (namespace, name) under `hosts`, named `<service>.gateway` (then `.2`, ... past
/// [`MAX_RULES`] rules). The gateway's plugin picks the env and sets the route header, as
/// a sidecar's does, so the same rules route there. Always HTTPRoutes: every Istio
/// listener that takes routes takes them (GRPCRoutes only where `allowedRoutes` says),
/// and Istio applies them to gRPC as well.
pub fn gateway_routes(
    mesh: &[MeshRoute],
    service: &str,
    gateways: &[(String, String)],
    hosts: &[String],
    metadata: ObjectMeta,
) -> Vec<MeshRoute> {
    let of_service: Vec<&MeshRoute> = mesh
        .iter()
        .filter(|r| r.is_mesh() && r.service() == service)
        .collect();
    let Some(first) = of_service
        .iter()
        .find(|r| r.kind() == Kind::HttpRoute)
        .or(of_service.first())
    else {
        return Vec::new();
    };
    let parent = first.spec().parent_refs.clone();
    let rules: Vec<RouteRule> = (of_service.iter())
        .filter(|r| r.kind() == first.kind() && r.spec().parent_refs == parent)
        .flat_map(|r| r.spec().rules.iter().map(as_http_rule))
        .collect();
    let route = RouteSpec {
        parent_refs: gateways
            .iter()
            .map(|(namespace, name)| ParentRef {
                group: crate::waypoint::GATEWAY_GROUP.into(),
                kind: "Gateway".into(),
                namespace: Some(namespace.clone()),
                name: name.clone(),
                port: None,
            })
            .collect(),
        hostnames: hosts.to_vec(),
        rules: Vec::new(),
    };
    let first = MeshRoute::new(Kind::HttpRoute, metadata, route);
    split_rules(&first, rules)
}

/// A rule as an HTTPRoute holds it: a GRPCRoute's matches get HTTPRoute's default path
/// match (every path), and a rule without matches one match of every path.
fn as_http_rule(rule: &RouteRule) -> RouteRule {
    let every_path = || PathMatch {
        type_: "PathPrefix".into(),
        value: "/".into(),
    };
    let mut rule = rule.clone();
    if rule.matches.is_empty() {
        rule.matches.push(RouteMatch {
            path: None,
            headers: Vec::new(),
        });
    }
    for m in &mut rule.matches {
        m.path.get_or_insert_with(every_path);
    }
    rule
}

/// One env of a service to route, with the name of its own Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvBackend {
    pub env: String,
    pub service: String,
}

/// What a routed service needs, as Gateway API.
pub struct GatewayApiRouting<'a> {
    pub service: &'a Service,
    pub env_label: &'a str,
    /// The envs with ready pods, in order, each with its Service's name.
    pub envs: Vec<EnvBackend>,
    /// The env whose Service the default rule sends to; `None`: the service itself.
    pub default_env: Option<String>,
    pub route_header: &'a str,
    /// The headers every rule removes after routing.
    pub strip: Vec<String>,
    /// Whether gRPC ports get GRPCRoutes (else HTTPRoutes).
    pub grpc_route: bool,
}

impl GatewayApiRouting<'_> {
    /// One Service per env: the service's selector plus the env label, its ports.
    pub fn env_services(&self, meta: &dyn Fn(&str) -> ObjectMeta) -> Vec<Service> {
        let spec = self.service.spec.clone().unwrap_or_default();
        let selector = spec.selector.unwrap_or_default();
        let ports: Vec<ServicePort> = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|port| ServicePort {
                // As the API server defaults them, so that a re-read compares equal.
                protocol: Some(port.protocol.unwrap_or_else(|| "TCP".into())),
                target_port: Some(port.target_port.unwrap_or(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port.port),
                )),
                node_port: None,
                ..port
            })
            .collect();
        self.envs
            .iter()
            .map(|backend| {
                let mut metadata = meta(&backend.service);
                metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ENV_SERVICE_OF_LABEL.into(), self.service.name_any());
                let mut annotations =
                    BTreeMap::from([(ENV_ANNOTATION.into(), backend.env.clone())]);
                if let Some(export_to) = self.service.annotations().get(EXPORT_TO_ANNOTATION) {
                    annotations.insert(EXPORT_TO_ANNOTATION.into(), export_to.clone());
                }
                metadata.annotations = Some(annotations);
                let mut selector = selector.clone();
                selector.insert(self.env_label.to_owned(), backend.env.clone());
                Service {
                    metadata,
                    spec: Some(ServiceSpec {
                        type_: Some("ClusterIP".into()),
                        selector: Some(selector),
                        ports: Some(ports.clone()),
                        ..ServiceSpec::default()
                    }),
                    status: None,
                }
            })
            .collect()
    }

    /// The routes: per routed port (one parent without a port where the service has
    /// one port), an env rule per env and the default rule, [`MAX_RULES`] to a route.
    pub fn routes(&self, meta: &dyn Fn(&str) -> ObjectMeta) -> Vec<MeshRoute> {
        let name = self.service.name_any();
        let ports: Vec<ServicePort> = self
            .service
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let single = ports.len() == 1;
        let mut routes = Vec::new();
        for port in ports.iter().filter(|p| routes_http(p)) {
            let kind = if self.grpc_route && is_grpc(port) {
                Kind::GrpcRoute
            } else {
                Kind::HttpRoute
            };
            let base = if single {
                name.clone()
            } else {
                format!("{name}.{}", port.port)
            };
            let parent = ParentRef {
                group: String::new(),
                kind: "Service".into(),
                namespace: None,
                name: name.clone(),
                port: (!single).then_some(port.port),
            };
            let first = MeshRoute::new(
                kind,
                meta(&base),
                RouteSpec {
                    parent_refs: vec![parent],
                    hostnames: Vec::new(),
                    rules: Vec::new(),
                },
            );
            routes.extend(split_rules(&first, self.rules(kind, port.port)));
        }
        routes
    }

    /// The default rule first (so that it stays in the first route), then one per env.
    fn rules(&self, kind: Kind, port: i32) -> Vec<RouteRule> {
        let path = (kind == Kind::HttpRoute).then(|| PathMatch {
            type_: "PathPrefix".into(),
            value: "/".into(),
        });
        let filters = vec![RouteFilter {
            type_: "RequestHeaderModifier".into(),
            request_header_modifier: HeaderModifier {
                remove: self.strip.clone(),
            },
        }];
        let backend = |service: &str| BackendRef {
            group: String::new(),
            kind: "Service".into(),
            name: service.to_owned(),
            port,
            weight: 1,
        };
        let default_service = self
            .default_env
            .as_deref()
            .and_then(|env| self.envs.iter().find(|b| b.env == env))
            .map_or_else(|| self.service.name_any(), |b| b.service.clone());
        let mut rules = vec![RouteRule {
            // HTTPRoute's default match (every path); a GRPCRoute rule without matches
            // matches every call.
            matches: path
                .clone()
                .map(|path| RouteMatch {
                    path: Some(path),
                    headers: Vec::new(),
                })
                .into_iter()
                .collect(),
            filters: filters.clone(),
            backend_refs: vec![backend(&default_service)],
        }];
        rules.extend(self.envs.iter().map(|b| RouteRule {
            matches: vec![RouteMatch {
                path: path.clone(),
                headers: vec![HeaderMatch {
                    type_: "Exact".into(),
                    name: self.route_header.to_owned(),
                    value: b.env.clone(),
                }],
            }],
            filters: filters.clone(),
            backend_refs: vec![backend(&b.service)],
        }));
        rules
    }
}

/// `rules` as routes like `first` (its kind, metadata and parents), [`MAX_RULES`] to a
/// route: `first`'s name, then `<name>.2`, `<name>.3`, ... (a Service's name has no dot,
/// so these are no other service's route's names).
pub fn split_rules(first: &MeshRoute, rules: Vec<RouteRule>) -> Vec<MeshRoute> {
    let (kind, base) = (first.kind(), first.name());
    let metadata = match first {
        MeshRoute::Http(r) => &r.metadata,
        MeshRoute::Grpc(r) => &r.metadata,
    };
    rules
        .chunks(MAX_RULES)
        .enumerate()
        .map(|(i, chunk)| {
            let mut metadata = metadata.clone();
            if i > 0 {
                metadata.name = Some(format!("{base}.{}", i + 1));
            }
            MeshRoute::new(
                kind,
                metadata,
                RouteSpec {
                    parent_refs: first.spec().parent_refs.clone(),
                    hostnames: first.spec().hostnames.clone(),
                    rules: chunk.to_vec(),
                },
            )
        })
        .collect()
}

/// The name of the Service for `env` of service `service`: `<service>-<env>-<hash>`, the
/// env lower-cased with its other characters as `-`, cut to fit 63 characters. The hash
/// (of the service and the env) keeps the name from being another service's (`reviews`
/// env `v2` and a service `reviews-v2`) or another env's (`dev.x`, `dev-x`), and depends
/// on nothing else, so the name is stable.
pub fn env_service_name(service: &str, env: &str) -> String {
    let mut key = Vec::with_capacity(service.len() + env.len() + 1);
    key.extend_from_slice(service.as_bytes());
    key.push(0);
    key.extend_from_slice(env.as_bytes());
    let hash = format!("{:016x}", fnv1a(&key));
    let hash = &hash[..8];
    let env = crate::subset::as_label_text(env);
    let readable = format!("{service}-{}", env.trim_matches('-'));
    let room = MAX_SERVICE_NAME - 1 - hash.len();
    let readable = readable[..readable.len().min(room)].trim_end_matches('-');
    format!("{readable}-{hash}")
}

/// Whether `service` is one the controller wrote for an env of another.
pub fn is_env_service(service: &Service) -> bool {
    service.labels().contains_key(ENV_SERVICE_OF_LABEL)
        && service
            .labels()
            .get(crate::objects::MANAGED_BY_LABEL)
            .map(String::as_str)
            == Some(crate::objects::MANAGED_BY)
}

#[cfg(test)]
mod tests;
