//! The Istio resources the controller writes, typed with only the fields it sets.
//!
//! These types are for reading and writing the objects through the API; the CRDs
//! themselves are Istio's.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `networking.istio.io/v1` VirtualService.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    namespaced,
    derive = "PartialEq"
)]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    /// Gateways the routes apply to (`mesh` for sidecars); absent: sidecars only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct HttpRoute {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    pub route: Vec<HttpRouteDestination>,
    /// Header operations; the controller removes its route headers here, so that they
    /// never leave the calling sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct Headers {
    pub request: HeaderOperations,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct HeaderOperations {
    pub remove: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct HttpMatchRequest {
    pub headers: BTreeMap<String, StringMatch>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct StringMatch {
    pub exact: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct HttpRouteDestination {
    pub destination: Destination,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct Destination {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
}

/// `networking.istio.io/v1` DestinationRule.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    namespaced,
    derive = "PartialEq"
)]
pub struct DestinationRuleSpec {
    pub host: String,
    /// A user's wildcard DestinationRule's policy for the namespace (mTLS, pools, outlier
    /// detection), carried over: Istio applies only the most specific host's rule, ours.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "trafficPolicy"
    )]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub traffic_policy: Option<serde_json::Value>,
    pub subsets: Vec<Subset>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// `extensions.istio.io/v1alpha1` WasmPlugin.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "extensions.istio.io",
    version = "v1alpha1",
    kind = "WasmPlugin",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct WasmPluginSpec {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `FAIL_OPEN`: if the module cannot be fetched, traffic flows unrouted rather than
    /// failing.
    pub fail_strategy: String,
    /// The workloads of the object's namespace that load the plugin (a gateway's pods);
    /// absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Which listeners get the plugin: one side each (`CLIENT` or `SERVER`).
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub traffic_selectors: Vec<TrafficSelector>,
    /// The proxies that load the plugin by reference instead of `selector`: a waypoint
    /// (its Gateway), which ignores selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Where in the filter chain: `AUTHN` runs before the plugins without a phase (a
    /// gateway's edge guard before the routing); absent: Istio's default, at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The filter's plugin config (`virtual_env_core::PluginConfig` as JSON).
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub plugin_config: serde_json::Value,
}

/// Istio's `WasmPlugin.match[]` entry: the traffic direction (`CLIENT`, `SERVER`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TrafficSelector {
    pub mode: String,
}

/// `extensions.istio.io/v1alpha1` TrafficExtension (Istio 1.30+), which replaces
/// WasmPlugin: the same plugin object, with the module's fields under `wasm`. Written
/// instead of WasmPlugins where the cluster serves it (see `extension.rs`).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "extensions.istio.io",
    version = "v1alpha1",
    kind = "TrafficExtension",
    namespaced,
    derive = "PartialEq"
)]
pub struct TrafficExtensionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub traffic_selectors: Vec<TrafficSelector>,
    #[serde(rename = "targetRefs", default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// As WasmPlugin's `phase` (`AUTHN`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    pub wasm: WasmConfig,
}

/// TrafficExtension's `wasm`: WasmPlugin's module fields.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub fail_strategy: String,
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub plugin_config: serde_json::Value,
}

/// Istio's `PolicyTargetReference` (same namespace: Istio rejects `namespace`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyTargetReference {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// Istio's `WorkloadSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

/// `networking.istio.io/v1` Gateway: only read (its pods get a gateway's plugin object),
/// never written.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    derive = "PartialEq"
)]
pub struct GatewaySpec {
    /// The gateway pods' labels.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}
