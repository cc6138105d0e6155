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

/// Whether one of `spec.listeners` of a Gateway in `gateway_namespace` takes a route of
/// kind `route` (`HTTPRoute`, `GRPCRoute`) of `namespace` for `host`. A listener takes it
/// when its protocol is HTTP or HTTPS (which take both kinds, as Istio's
/// `GenerateGatewaySupportedKinds` says), its `allowedRoutes.kinds` (if set) include the
/// kind, its `allowedRoutes.namespaces.from` admits the namespace (`Same`, the default;
/// `All`), and its `hostname` (absent: every host) intersects `host`. `Selector` is not
/// judged (it needs the namespace's labels as the Gateway's owner meant them): it admits
/// nobody here, and the refusal says so.
pub fn listeners_admit(
    spec: &serde_json::Value,
    gateway_namespace: &str,
    namespace: &str,
    host: &str,
    route: &str,
) -> bool {
    spec["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|listener| listener_admits(listener, gateway_namespace, namespace, host, route))
}

fn listener_admits(
    listener: &serde_json::Value,
    gateway_namespace: &str,
    namespace: &str,
    host: &str,
    route: &str,
) -> bool {
    let http = matches!(listener["protocol"].as_str(), Some("HTTP" | "HTTPS"));
    let allowed = &listener["allowedRoutes"];
    let kinds_ok = match allowed["kinds"].as_array() {
        None => matches!(route, "HTTPRoute" | "GRPCRoute"),
        Some(kinds) => kinds.iter().any(|k| {
            k["kind"] == route
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

/// Istio's class of Gateway API Gateways (a deployment of its own per Gateway).
pub const ISTIO_CLASS: &str = "istio";

/// Why a Gateway API Gateway is not entered by env at all, if it is not: one of another
/// class (another implementation serves it; neither the plugin nor the edge guard runs
/// there), or one that names an existing deployment by `spec.addresses` of type
/// `Hostname` (Istio's manual deployment: its pods are not labelled with its name, so
/// whose they are, and what else they serve, is not known).
pub fn not_entered(spec: &serde_json::Value) -> Option<String> {
    let class = spec["gatewayClassName"].as_str().unwrap_or_default();
    if class != ISTIO_CLASS {
        return Some(format!("its gatewayClassName is {class:?}, not Istio's {ISTIO_CLASS:?}: virtual-env's plugin and edge guard do not run in its proxies; not bound, not routed by env there"));
    }
    let manual =
        (spec["addresses"].as_array().into_iter().flatten()).any(|a| a["type"] == "Hostname");
    manual.then(|| "it names an existing gateway deployment (spec.addresses of type Hostname), whose pods are not known to be its own: not bound, not routed by env there (let Istio deploy it, or enter through that deployment's own Gateway)".to_owned())
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

    const H: &str = "HTTPRoute";

    fn gateway(listeners: serde_json::Value) -> serde_json::Value {
        json!({"gatewayClassName": "istio", "listeners": listeners})
    }

    #[test]
    fn only_gateways_istio_deploys_are_entered() {
        let ours = gateway(json!([]));
        assert_eq!(not_entered(&ours), None);
        let other = json!({"gatewayClassName": "eg", "listeners": []});
        assert!(not_entered(&other).unwrap().contains("\"eg\""));
        let manual = json!({"gatewayClassName": "istio", "listeners": [],
            "addresses": [{"type": "Hostname", "value": "istio-ingressgateway.istio-system.svc.cluster.local"}]});
        assert!(not_entered(&manual).unwrap().contains("Hostname"));
        let ip = json!({"gatewayClassName": "istio", "listeners": [],
            "addresses": [{"type": "IPAddress", "value": "10.0.0.9"}]});
        assert_eq!(not_entered(&ip), None);
    }

    #[test]
    fn a_listener_takes_routes_of_its_own_namespace_by_default() {
        let spec = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
        assert!(listeners_admit(&spec, "gw", "gw", "shop.example.com", H));
        assert!(!listeners_admit(&spec, "gw", "team", "shop.example.com", H));
    }

    #[test]
    fn all_namespaces_and_hostnames_as_gateway_api_intersects_them() {
        let spec = gateway(json!([{
            "name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com",
            "allowedRoutes": {"namespaces": {"from": "All"}}
        }]));
        assert!(listeners_admit(&spec, "gw", "team", "shop.example.com", H));
        assert!(listeners_admit(&spec, "gw", "team", "a.b.example.com", H));
        assert!(listeners_admit(
            &spec,
            "gw",
            "team",
            "*.shop.example.com",
            H
        ));
        assert!(!listeners_admit(&spec, "gw", "team", "example.com", H));
        assert!(!listeners_admit(&spec, "gw", "team", "shop.example.org", H));
    }

    #[test]
    fn tcp_listeners_other_kinds_and_selectors_take_nothing() {
        let tcp = gateway(json!([{"name": "tcp", "port": 9000, "protocol": "TCP",
            "allowedRoutes": {"namespaces": {"from": "All"}}}]));
        assert!(!listeners_admit(&tcp, "gw", "team", "a.example.com", H));
        let grpc_only = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "All"}, "kinds": [{"kind": "GRPCRoute"}]}}]));
        assert!(!listeners_admit(
            &grpc_only,
            "gw",
            "team",
            "a.example.com",
            H
        ));
        assert!(listeners_admit(
            &grpc_only,
            "gw",
            "team",
            "a.example.com",
            "GRPCRoute"
        ));
        let any = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "All"}}}]));
        assert!(listeners_admit(
            &any,
            "gw",
            "team",
            "a.example.com",
            "GRPCRoute"
        ));
        assert!(!listeners_admit(
            &any,
            "gw",
            "team",
            "a.example.com",
            "TCPRoute"
        ));
        let selector = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"shared": "yes"}}}}}]));
        assert!(!listeners_admit(
            &selector,
            "gw",
            "team",
            "a.example.com",
            H
        ));
        assert!(refusal(&selector, "gw", "team").contains("Selector is not judged"));
        let none = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "None"}}}]));
        assert!(!listeners_admit(&none, "gw", "gw", "a.example.com", H));
        assert!(!listeners_admit(&json!({}), "gw", "gw", "a.example.com", H));
    }
}
