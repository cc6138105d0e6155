//! Gateway API Gateways (`gateway.networking.k8s.io/v1`, Istio's `gatewayClassName:
//! istio`) as gateway entry reads them: whether a listener takes a route from a namespace
//! under a host (`allowedRoutes`, `hostname`, `protocol`), as Gateway API specifies and
//! istiod applies it (istio/istio `pilot/pkg/config/kube/gateway`: a route binds to a
//! listener whose namespaces and kinds allow it and whose hostname intersects the
//! route's).
//!
//! Pure: no API calls.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::gateway_policy::host_specificity;

/// `gateway.networking.k8s.io/v1` Gateway, read only. Its listeners are kept as JSON: only
/// the fields [`listener_admits`] reads matter, and a Gateway of a newer API version with
/// fields unknown here must still be read.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    root = "KubernetesGateway",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesGatewaySpec {
    #[serde(default)]
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<serde_json::Value>,
}

/// Whether one of `spec.listeners` of a Gateway in `gateway_namespace` takes an HTTPRoute
/// of `namespace` for `host`. A listener takes it when its protocol carries HTTP, its
/// `allowedRoutes.kinds` (if set) include HTTPRoute, its `allowedRoutes.namespaces.from`
/// admits the namespace (`Same`, the default; `All`), and its `hostname` (absent: every
/// host) intersects `host`. `Selector` is not judged (it needs the namespace's labels as
/// the Gateway's owner meant them): it admits nobody here, and the refusal says so.
pub fn listeners_admit(
    spec: &serde_json::Value,
    gateway_namespace: &str,
    namespace: &str,
    host: &str,
) -> bool {
    spec["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|listener| listener_admits(listener, gateway_namespace, namespace, host))
}

fn listener_admits(
    listener: &serde_json::Value,
    gateway_namespace: &str,
    namespace: &str,
    host: &str,
) -> bool {
    let http = matches!(listener["protocol"].as_str(), Some("HTTP" | "HTTPS"));
    let allowed = &listener["allowedRoutes"];
    let kinds_ok = match allowed["kinds"].as_array() {
        None => true,
        Some(kinds) => kinds.iter().any(|k| {
            k["kind"] == "HTTPRoute"
                && k["group"]
                    .as_str()
                    .is_none_or(|g| g == "gateway.networking.k8s.io")
        }),
    };
    let namespaces_ok = match allowed["namespaces"]["from"].as_str().unwrap_or("Same") {
        "All" => true,
        "Same" => gateway_namespace == namespace,
        _ => false,
    };
    let host_ok = match listener["hostname"].as_str() {
        None => true,
        Some(hostname) => hostnames_intersect(hostname, host),
    };
    http && kinds_ok && namespaces_ok && host_ok
}

/// Whether a listener's `hostname` and a route's hostname have a host in common (Gateway
/// API: either may be a `*.` wildcard).
fn hostnames_intersect(listener: &str, route: &str) -> bool {
    host_specificity(listener, route).is_some() || host_specificity(route, listener).is_some()
}

/// Why no listener takes the namespace's route for `host`, in words for the status.
pub fn refusal(spec: &serde_json::Value, gateway_namespace: &str, namespace: &str) -> String {
    let selector = spec["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["allowedRoutes"]["namespaces"]["from"] == "Selector");
    let mut why = format!("no listener of the Gateway takes an HTTPRoute of namespace {namespace} for it (its listeners' protocol, hostname and allowedRoutes), so istiod would not route it");
    if selector && gateway_namespace != namespace {
        why.push_str("; allowedRoutes.namespaces.from: Selector is not judged by virtual-env, ask the Gateway's owner for `from: All` or a listener in your namespace");
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway(listeners: serde_json::Value) -> serde_json::Value {
        json!({"gatewayClassName": "istio", "listeners": listeners})
    }

    #[test]
    fn a_listener_takes_routes_of_its_own_namespace_by_default() {
        let spec = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
        assert!(listeners_admit(&spec, "gw", "gw", "shop.example.com"));
        assert!(!listeners_admit(&spec, "gw", "team", "shop.example.com"));
    }

    #[test]
    fn all_namespaces_and_hostnames_as_gateway_api_intersects_them() {
        let spec = gateway(json!([{
            "name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com",
            "allowedRoutes": {"namespaces": {"from": "All"}}
        }]));
        assert!(listeners_admit(&spec, "gw", "team", "shop.example.com"));
        assert!(listeners_admit(&spec, "gw", "team", "a.b.example.com"));
        assert!(listeners_admit(&spec, "gw", "team", "*.shop.example.com"));
        assert!(!listeners_admit(&spec, "gw", "team", "example.com"));
        assert!(!listeners_admit(&spec, "gw", "team", "shop.example.org"));
    }

    #[test]
    fn tcp_listeners_other_kinds_and_selectors_take_nothing() {
        let tcp = gateway(json!([{"name": "tcp", "port": 9000, "protocol": "TCP",
            "allowedRoutes": {"namespaces": {"from": "All"}}}]));
        assert!(!listeners_admit(&tcp, "gw", "team", "a.example.com"));
        let grpc_only = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "All"}, "kinds": [{"kind": "GRPCRoute"}]}}]));
        assert!(!listeners_admit(&grpc_only, "gw", "team", "a.example.com"));
        let selector = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"shared": "yes"}}}}}]));
        assert!(!listeners_admit(&selector, "gw", "team", "a.example.com"));
        assert!(refusal(&selector, "gw", "team").contains("Selector is not judged"));
        let none = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "None"}}}]));
        assert!(!listeners_admit(&none, "gw", "gw", "a.example.com"));
        assert!(!listeners_admit(&json!({}), "gw", "gw", "a.example.com"));
    }
}
