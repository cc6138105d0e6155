//! `GatewayPolicy` (cluster-scoped, group `env.alibaba.com`): what a shared gateway's owner
//! says about env routing through it. A gateway's pods often serve many teams (Istio's
//! ingress gateway in `istio-system`; istiod hands it the Gateways of every namespace), so
//! no tenant decides for it:
//!
//! - which namespaces may route requests entering there by env, and under which hosts
//!   (`tenants`); a host two admitted namespaces claim goes to the most specific entry
//!   that admits it, then the first listed;
//! - what the gateway does with an env that arrives from outside (`edgeTrust`, default
//!   `strip`), for every request through it.
//!
//! Creating a cluster-scoped object takes cluster-level rights, which is the point: the
//! gateway belongs to whoever runs it. A gateway whose pods are in the tenant's own
//! namespace is the tenant's, and needs no policy.
//!
//! Pure: the types and the admission rules; planning (`gateway.rs`) applies them.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::EdgeTrustSpec;

#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "env.alibaba.com",
    version = "v1alpha1",
    kind = "GatewayPolicy",
    plural = "gatewaypolicies",
    shortname = "envgw",
    derive = "PartialEq",
    status = "GatewayPolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.workload.namespace"}"#,
    printcolumn = r#"{"name":"Edge","type":"string","jsonPath":".spec.edgeTrust.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayPolicySpec {
    /// The gateway's pods, as a Gateway's `selector` finds them.
    pub workload: GatewayWorkload,
    /// The namespaces whose services may be entered here by env, with the hosts each may
    /// serve. A namespace not listed gets no plugin object at this gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub tenants: Vec<GatewayTenant>,
    /// What the gateway does with an env that arrives from outside the mesh, for every
    /// request through it. Default: `strip` (envs are chosen inside the mesh only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_trust: Option<EdgeTrustSpec>,
    /// What the gateway does when its edge guard cannot be loaded (Istio's
    /// `failStrategy`): `FAIL_OPEN` (default) serves requests without it, so envs pass
    /// unjudged; `FAIL_CLOSE` refuses them, so the edge policy holds at the cost of the
    /// gateway's availability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_strategy: Option<FailStrategy>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum FailStrategy {
    #[serde(rename = "FAIL_OPEN")]
    FailOpen,
    #[serde(rename = "FAIL_CLOSE")]
    FailClose,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayPolicyStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the edge guard is applied to the gateway's pods; when False, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// The edge guard's plugin object, `<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayWorkload {
    /// The namespace the gateway's pods run in.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Labels the gateway's pods carry (all of them).
    #[schemars(extend("minProperties" = 1))]
    pub selector: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTenant {
    /// A namespace, or `*` for any.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Hosts it may serve here: exact names, `*.suffix`, or `*` for any.
    #[schemars(length(min = 1, max = 64))]
    pub hosts: Vec<String>,
}

/// A gateway's pods: where they run and the labels each carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPods<'a> {
    pub namespace: &'a str,
    pub labels: Vec<&'a BTreeMap<String, String>>,
}

impl GatewayPolicy {
    /// Whether this policy is the one for a gateway whose selector is `selector` and whose
    /// pods are `pods`: same namespace, and the policy's selector matches every one of
    /// those pods (with no pods, every label of the policy's selector is the Gateway's).
    pub fn covers(&self, selector: &BTreeMap<String, String>, pods: &GatewayPods<'_>) -> bool {
        let workload = &self.spec.workload;
        let matches = |labels: &BTreeMap<String, String>| {
            workload
                .selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        };
        workload.namespace == pods.namespace
            && !workload.selector.is_empty()
            && if pods.labels.is_empty() {
                matches(selector)
            } else {
                pods.labels.iter().all(|labels| matches(labels))
            }
    }

    /// How specifically the policy admits `host` for `namespace`: `None` when it does not;
    /// else a rank, higher for a more specific entry, then for one listed earlier.
    pub fn admits(&self, namespace: &str, host: &str) -> Option<(u32, std::cmp::Reverse<usize>)> {
        self.spec
            .tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| t.namespace == namespace || t.namespace == "*")
            .filter_map(|(i, t)| {
                let best = t
                    .hosts
                    .iter()
                    .filter_map(|pattern| host_specificity(pattern, host))
                    .max()?;
                // A named namespace is more specific than `*`.
                let named = u32::from(t.namespace != "*");
                Some((best * 2 + named, std::cmp::Reverse(i)))
            })
            .max()
    }

    /// The edge policy at this gateway.
    pub fn edge_trust(&self) -> virtual_env_core::EdgeTrust {
        self.spec.edge_trust.as_ref().map_or(
            virtual_env_core::EdgeTrust {
                mode: virtual_env_core::EdgeMode::Strip,
                allow: Vec::new(),
                allow_trace: false,
            },
            EdgeTrustSpec::to_config,
        )
    }
}

/// How specifically `pattern` (`*`, `*.suffix`, or a name) matches `host` (a name, or
/// `*.suffix` as a claim): `None` when it does not; an exact name ranks above any
/// wildcard, a longer suffix above a shorter one, and `*` lowest.
pub fn host_specificity(pattern: &str, host: &str) -> Option<u32> {
    let pattern = pattern.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    if pattern == "*" {
        return Some(0);
    }
    if pattern == host {
        return Some(u32::MAX / 4);
    }
    let suffix = pattern.strip_prefix("*.")?;
    // `*.example.com` admits `a.example.com`, `a.b.example.com` and `*.b.example.com`,
    // not `example.com` itself (as Istio matches hosts).
    let under = host.strip_suffix(suffix)?.strip_suffix('.')?;
    (!under.is_empty()).then(|| u32::try_from(suffix.len()).unwrap_or(u32::MAX / 8) + 1)
}

/// Whether a Gateway's `servers[].hosts` admit `host` from `namespace`, as istiod reads
/// them: `ns/host` entries (`*/` any namespace, `./` the Gateway's own), a plain host for
/// any namespace. A Gateway without servers admits nothing.
pub fn gateway_admits(
    servers: &serde_json::Value,
    gateway_namespace: &str,
    namespace: &str,
    host: &str,
) -> bool {
    servers
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|server| server["hosts"].as_array().into_iter().flatten())
        .filter_map(|entry| entry.as_str())
        .any(|entry| {
            let (ns, pattern) = entry.split_once('/').unwrap_or(("*", entry));
            let ns_ok = match ns {
                "*" => true,
                "." => gateway_namespace == namespace,
                ns => ns == namespace,
            };
            ns_ok && host_specificity(pattern, host).is_some()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> GatewayPolicy {
        let spec: GatewayPolicySpec = serde_yaml::from_str(yaml).unwrap();
        GatewayPolicy::new("ingress", spec)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_policy_covers_the_gateways_pods_in_its_namespace() {
        let p = policy("workload: {namespace: istio-system, selector: {istio: ingressgateway}}");
        let selector = labels(&[("istio", "ingressgateway")]);
        let pod = labels(&[("istio", "ingressgateway"), ("app", "istio-ingressgateway")]);
        let in_ns = |ns| GatewayPods {
            namespace: ns,
            labels: vec![&pod],
        };
        assert!(p.covers(&selector, &in_ns("istio-system")));
        assert!(
            !p.covers(&selector, &in_ns("team-a")),
            "another namespace's pods"
        );
        let other = labels(&[("app", "istio-ingressgateway")]);
        assert!(
            p.covers(&other, &in_ns("istio-system")),
            "by the pods, not the spelling"
        );
        let eastwest = labels(&[("istio", "eastwestgateway")]);
        let ew = GatewayPods {
            namespace: "istio-system",
            labels: vec![&eastwest],
        };
        assert!(!p.covers(&eastwest, &ew));
        let none = GatewayPods {
            namespace: "istio-system",
            labels: vec![],
        };
        assert!(p.covers(&selector, &none), "no pods yet: by the selector");
    }

    #[test]
    fn the_most_specific_entry_admits_then_the_first_listed() {
        let p = policy(
            r#"
workload: {namespace: istio-system, selector: {istio: ingressgateway}}
tenants:
- {namespace: "*", hosts: ["*"]}
- {namespace: team-a, hosts: ["*.example.com"]}
- {namespace: team-b, hosts: [shop.example.com]}
- {namespace: team-c, hosts: [shop.example.com]}
"#,
        );
        let rank = |ns: &str, host: &str| p.admits(ns, host);
        assert!(rank("team-b", "shop.example.com") > rank("team-a", "shop.example.com"));
        assert!(rank("team-b", "shop.example.com") > rank("team-c", "shop.example.com"));
        assert!(rank("team-a", "a.example.com") > rank("team-z", "a.example.com"));
        assert!(rank("team-z", "anything.org").is_some(), "the '*' entry");
        let strict = policy(
            "workload: {namespace: istio-system, selector: {istio: ingressgateway}}\ntenants: [{namespace: team-a, hosts: [a.example.com]}]",
        );
        assert_eq!(strict.admits("team-a", "b.example.com"), None);
        assert_eq!(strict.admits("team-b", "a.example.com"), None);
        assert_eq!(strict.edge_trust().mode, virtual_env_core::EdgeMode::Strip);
    }

    #[test]
    fn hosts_match_as_istio_matches_them() {
        assert!(host_specificity("*.example.com", "a.example.com").is_some());
        assert!(host_specificity("*.example.com", "a.b.example.com").is_some());
        assert!(host_specificity("*.example.com", "*.b.example.com").is_some());
        assert!(host_specificity("*.example.com", "example.com").is_none());
        assert!(host_specificity("*.example.com", "badexample.com").is_none());
        assert!(host_specificity("a.example.com", "A.Example.com").is_some());
        assert!(host_specificity("a.example.com", "*.example.com").is_none());
    }

    #[test]
    fn a_gateways_servers_scope_hosts_to_namespaces() {
        let servers = serde_json::json!([
            {"hosts": ["team-a/a.example.com", "./own.example.com", "*/any.example.com"]},
            {"hosts": ["plain.example.com"]}
        ]);
        let admits = |ns, host| gateway_admits(&servers, "istio-system", ns, host);
        assert!(admits("team-a", "a.example.com"));
        assert!(!admits("team-b", "a.example.com"));
        assert!(admits("istio-system", "own.example.com"));
        assert!(!admits("team-a", "own.example.com"));
        assert!(admits("team-b", "any.example.com"));
        assert!(admits("team-b", "plain.example.com"));
        assert!(!admits("team-a", "other.example.com"));
        assert!(!gateway_admits(
            &serde_json::Value::Null,
            "x",
            "team-a",
            "a.example.com"
        ));
    }
}
