//! A gateway owner's edge guard: one plugin object per [`GatewayPolicy`], on the gateway's
//! pods, that judges every request through the gateway by the policy's `edgeTrust` before
//! anything routes it (Istio phase `AUTHN`, ahead of the routing plugins, which have
//! none). It knows no service: it only leaves envs the policy admits, in every line of
//! every carrier of every VirtualEnvironment of the cluster (their env headers, aliases,
//! patterns and baggage keys: `edgeCarriers`), so that the policy holds whether or not a
//! namespace is routed at that gateway, and whatever header names the namespaces behind it
//! read envs from.
//!
//! Its owner reference is the GatewayPolicy (a namespaced object may be owned by a
//! cluster-scoped one): it goes with the policy. It always loads the controller's module.
//!
//! Pure: no API calls (`reconcile_gateway_policy.rs` applies what this plans).

use std::collections::BTreeMap;

use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use virtual_env_core::config::{MAX_EDGE_BAGGAGE_KEYS, MAX_EDGE_HEADERS, MAX_EDGE_PATTERNS};
use virtual_env_core::{EdgeCarriers, HeaderPattern, PluginConfig};

use crate::crd::VirtualEnvironment;
use crate::gateway::GATEWAY_NAME_LABEL;
use crate::gateway_plugins::gateway_target;
use crate::gateway_policy::{FailStrategy, GatewayPolicy};
use crate::istio::{WasmPlugin, WasmPluginSpec, WorkloadSelector};
use crate::objects::{plugin_config_value, WasmSource, MANAGED_BY, MANAGED_BY_LABEL};

/// The label naming the GatewayPolicy an edge guard belongs to.
pub const POLICY_LABEL: &str = "env.alibaba.com/gateway-policy";
/// Edge guards are named `virtual-env-edge.<policy>`.
pub const GUARD_PREFIX: &str = "virtual-env-edge.";

/// An edge guard, and what could not be put in it.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeGuard {
    pub plugin: WasmPlugin,
    /// Carriers left out, and why.
    pub left_out: Vec<String>,
    /// Some were left out only for the bounds: those go unjudged.
    pub overflow: bool,
}

/// The edge guard of `policy` for a cluster whose VirtualEnvironments are `ves`: none
/// when the policy accepts every env (there is nothing to judge); `Err` says why the
/// policy cannot have one (its edge policy is not valid).
pub fn plan_edge_guard(
    policy: &GatewayPolicy,
    ves: &[&VirtualEnvironment],
    module: &WasmSource,
) -> Result<Option<EdgeGuard>, String> {
    let edge_trust = policy.edge_trust();
    if edge_trust.mode == virtual_env_core::EdgeMode::Accept {
        return Ok(None);
    }
    // Only the namespaces the policy admits have their carriers judged at its gateway:
    // any other tenant's VirtualEnvironment has no say in what every request loses there.
    let ves: Vec<&VirtualEnvironment> = ves
        .iter()
        .copied()
        .filter(|ve| {
            let ns = ve.namespace().unwrap_or_default();
            policy
                .spec
                .tenants
                .iter()
                .any(|t| t.namespace == "*" || t.namespace == ns)
        })
        .collect();
    let ves = &ves[..];
    // The guard's own carriers are the default ones.
    let (carriers, left_out, overflow) = carriers_of(ves, &PluginConfig::default());
    let config = PluginConfig::edge_guard(edge_trust, carriers);
    config
        .validate()
        .map_err(|e| format!("spec.edgeTrust: {e}"))?;
    let name = format!("{GUARD_PREFIX}{}", policy.name_any());
    if name.len() > 253 {
        return Err(format!(
            "the edge guard's name {name:?} is longer than 253 characters; shorten the policy's name"
        ));
    }
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (POLICY_LABEL.to_owned(), policy.name_any()),
    ]);
    // A Gateway API gateway's pods, selected by the Gateway's name: attached by
    // `targetRefs`, which Istio applies there whatever its selector feature flag says.
    let gateway_name = policy.spec.workload.selector.get(GATEWAY_NAME_LABEL);
    let fail_strategy = match policy.spec.fail_strategy {
        Some(FailStrategy::FailClose) => "FAIL_CLOSE",
        Some(FailStrategy::FailOpen) | None => "FAIL_OPEN",
    };
    let plugin = WasmPlugin {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(policy.spec.workload.namespace.clone()),
            labels: Some(labels),
            // Only a policy read from the API has a uid; offline renders carry no owner.
            owner_references: policy.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: WasmPluginSpec {
            url: module.url.clone(),
            sha256: module.sha256.clone(),
            fail_strategy: fail_strategy.into(),
            selector: gateway_name.is_none().then(|| WorkloadSelector {
                match_labels: policy.spec.workload.selector.clone(),
            }),
            traffic_selectors: Vec::new(),
            target_refs: gateway_name
                .map(|name| vec![gateway_target(name)])
                .unwrap_or_default(),
            phase: Some("AUTHN".into()),
            plugin_config: plugin_config_value(&config),
        },
    };
    Ok(Some(EdgeGuard {
        plugin,
        left_out,
        overflow,
    }))
}

/// Headers no VirtualEnvironment may make the guard judge as a whole-value carrier: the
/// guard runs on every request through a gateway that serves every team, and would remove
/// any of these whose value is not an admitted env (a tenant naming `authorization` its
/// env header would log everyone out). `cookie` may carry an env only through an anchored
/// pattern.
const NEVER_CARRIERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "accept",
    "accept-encoding",
    "accept-language",
    "user-agent",
    "referer",
    "origin",
    "cache-control",
    "pragma",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "range",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "x-request-id",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
];

/// Literal characters a pattern judged at a shared gateway needs right before its
/// placeholder (`sid=(@)`): a pattern like `.*=(@)` would take every cookie value for an env.
const MIN_GUARD_LITERAL: usize = 3;
/// The most atoms such a pattern may have: the guard's work budget must cover the header
/// sizes of real requests.
const MAX_GUARD_ATOMS: usize = 24;

/// Whether a tenant may have `header` judged by a shared gateway's guard.
fn may_carry(header: &str, route_header: &str) -> bool {
    let header = header.to_ascii_lowercase();
    !NEVER_CARRIERS.contains(&header.as_str())
        && !header.starts_with(':')
        && !header.starts_with("x-envoy-")
        && !header.starts_with(route_header)
        && PluginConfig {
            header_aliases: vec![header.clone()],
            ..PluginConfig::default()
        }
        .validate()
        .is_ok()
}

/// Every carrier the VirtualEnvironments read envs from, besides `own`'s, once each (by
/// lower-case name), within the plugin config's bounds. Taken in the order of the
/// namespaces' names, so the same cluster always gives the same guard; an entry a shared
/// gateway must not judge (a standard header, a pattern not anchored by a literal, a
/// pattern that does not compile, an invalid key) is left out and named, never failing the
/// guard.
fn carriers_of(
    ves: &[&VirtualEnvironment],
    own: &PluginConfig,
) -> (EdgeCarriers, Vec<String>, bool) {
    let mut ves: Vec<&VirtualEnvironment> = ves.to_vec();
    ves.sort_by_key(|ve| (ve.namespace(), ve.name_any()));
    let mut gathered = Gathered {
        own,
        own_whole: own.env_header.to_ascii_lowercase(),
        carriers: EdgeCarriers::default(),
        left_out: Vec::new(),
        overflow: false,
    };
    for ve in ves {
        let ns = ve.namespace().unwrap_or_default();
        let config = ve.spec.plugin_config();
        for header in std::iter::once(&config.env_header).chain(&config.header_aliases) {
            gathered.header(header, &ns);
        }
        for pattern in config.header_patterns {
            gathered.pattern(pattern, &ns);
        }
        gathered.baggage_key(config.baggage_key, &ns);
    }
    (gathered.carriers, gathered.left_out, gathered.overflow)
}

/// The carriers gathered so far, what was left out (named) and whether a limit was met.
struct Gathered<'a> {
    own: &'a PluginConfig,
    own_whole: String,
    carriers: EdgeCarriers,
    left_out: Vec<String>,
    overflow: bool,
}

impl Gathered<'_> {
    fn header(&mut self, header: &str, ns: &str) {
        let lower = header.to_ascii_lowercase();
        if lower == self.own_whole || self.carriers.headers.contains(&lower) {
            return;
        }
        if !may_carry(&lower, &self.own.route_header) {
            self.left_out.push(format!(
                "header {lower} of namespace {ns} (not judged at a shared gateway)"
            ));
        } else if self.carriers.headers.len() == MAX_EDGE_HEADERS {
            self.overflow = true;
            self.left_out.push(format!(
                "header {lower} of namespace {ns} (over {MAX_EDGE_HEADERS})"
            ));
        } else {
            self.carriers.headers.push(lower);
        }
    }

    fn pattern(&mut self, mut pattern: HeaderPattern, ns: &str) {
        pattern.name = pattern.name.to_ascii_lowercase();
        if self.carriers.header_patterns.contains(&pattern) {
            return;
        }
        // An env pinned by a name of its own (`sid=(@)`, not `.*=(@)`), and a search of
        // bounded cost: else every value of the header would be judged as an env.
        let narrow = pattern
            .compile()
            .is_ok_and(|p| p.literal_before() >= MIN_GUARD_LITERAL && p.atoms() <= MAX_GUARD_ATOMS);
        let name_ok = (pattern.name == "cookie"
            || may_carry(&pattern.name, &self.own.route_header))
            && !self.carriers.headers.contains(&pattern.name);
        if !narrow || !name_ok {
            self.left_out.push(format!(
                "pattern header {} of namespace {ns} (a standard header, one judged whole, or not {MIN_GUARD_LITERAL} literal characters right before the placeholder within {MAX_GUARD_ATOMS} atoms)",
                pattern.name
            ));
        } else if self.carriers.header_patterns.len() == MAX_EDGE_PATTERNS {
            self.overflow = true;
            self.left_out.push(format!(
                "pattern header {} of namespace {ns} (over {MAX_EDGE_PATTERNS})",
                pattern.name
            ));
        } else {
            self.carriers.header_patterns.push(pattern);
        }
    }

    fn baggage_key(&mut self, key: String, ns: &str) {
        if key.is_empty()
            || key == self.own.baggage_key
            || self.carriers.baggage_keys.contains(&key)
        {
            return;
        }
        let valid = PluginConfig {
            baggage_key: key.clone(),
            ..PluginConfig::default()
        }
        .validate()
        .is_ok();
        if !valid {
            self.left_out.push(format!(
                "baggage key {key:?} of namespace {ns} (not a token)"
            ));
        } else if self.carriers.baggage_keys.len() == MAX_EDGE_BAGGAGE_KEYS {
            self.overflow = true;
            self.left_out.push(format!(
                "baggage key {key} of namespace {ns} (over {MAX_EDGE_BAGGAGE_KEYS})"
            ));
        } else {
            self.carriers.baggage_keys.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{ingress_policy, seed_ve, settings};
    use crate::plan::plugin_config_of;

    fn ve(spec: &str) -> VirtualEnvironment {
        crate::plan::fixtures::ve(spec)
    }

    #[test]
    fn a_policy_gets_a_guard_on_its_pods_before_the_routing_with_every_namespaces_carriers() {
        let mut policy = ingress_policy(
            r#"[{namespace: "*", hosts: ["*"]}]"#,
            "{mode: allowList, allow: [dev]}",
        );
        policy.metadata.uid = Some("policy-uid".into());
        let team = ve(
            "envHeader: {name: X-Team-Env, aliases: [x-env, {name: Cookie, pattern: '.*env=(@);?.*'}], baggageKey: team-env}",
        );
        let guard = plan_edge_guard(&policy, &[&seed_ve(), &team], &settings().wasm)
            .unwrap()
            .unwrap();
        let plugin = &guard.plugin;
        assert_eq!(plugin.name_any(), "virtual-env-edge.ingressgateway");
        assert_eq!(plugin.namespace().as_deref(), Some("istio-system"));
        assert_eq!(plugin.spec.phase.as_deref(), Some("AUTHN"));
        assert_eq!(
            plugin.spec.url,
            settings().wasm.url,
            "the controller's module"
        );
        assert_eq!(plugin.spec.fail_strategy, "FAIL_OPEN");
        assert_eq!(
            plugin.spec.selector.as_ref().unwrap().match_labels,
            BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())])
        );
        assert_eq!(plugin.owner_references()[0].uid, "policy-uid");
        assert_eq!(plugin.labels()[POLICY_LABEL], "ingressgateway");
        let config = plugin_config_of(&plugin.spec.plugin_config).unwrap();
        assert!(config.services.is_empty() && config.hosts.is_empty());
        assert_eq!(config.edge_trust.unwrap().allow, ["dev"]);
        assert_eq!(config.edge_carriers.headers, ["x-team-env", "x-env"]);
        assert_eq!(config.edge_carriers.baggage_keys, ["team-env"]);
        assert_eq!(config.edge_carriers.header_patterns[0].name, "cookie");
        assert!(guard.left_out.is_empty());
    }

    #[test]
    fn a_policy_that_accepts_every_env_needs_no_guard() {
        let policy = ingress_policy("[]", "{mode: accept}");
        assert_eq!(plan_edge_guard(&policy, &[], &settings().wasm), Ok(None));
    }

    /// A tenant's VirtualEnvironment cannot make a shared gateway's guard remove what every
    /// team's requests need, nor break the guard with an entry that does not validate.
    #[test]
    fn a_tenant_cannot_turn_the_guard_against_everyone_nor_break_it() {
        let policy = ingress_policy(r#"[{namespace: "*", hosts: ["*"]}]"#, "{mode: strip}");
        let hostile = ve(
            "envHeader: {name: Authorization, aliases: [cookie, x-team-env, {name: cookie, pattern: '.*(@).*'}, {name: cookie, pattern: '.*=(@).*'}, {name: cookie, pattern: '.*sid=(@)'}], baggageKey: 'a,b'}",
        );
        let guard = plan_edge_guard(&policy, &[&hostile], &settings().wasm)
            .unwrap()
            .unwrap();
        let config = plugin_config_of(&guard.plugin.spec.plugin_config).unwrap();
        assert_eq!(config.edge_carriers.headers, ["x-team-env"]);
        let patterns: Vec<&str> = config
            .edge_carriers
            .header_patterns
            .iter()
            .map(|p| p.pattern.as_str())
            .collect();
        assert_eq!(patterns, [".*sid=(@)"]);
        assert!(config.edge_carriers.baggage_keys.is_empty());
        let left = guard.left_out.join("\n");
        for named in [
            "header authorization",
            "header cookie",
            "pattern header cookie",
            "baggage key",
        ] {
            assert!(left.contains(named), "{named}: {left}");
        }
    }

    /// A namespace the policy does not admit has no say in what the gateway's guard judges.
    #[test]
    fn only_admitted_namespaces_carriers_are_judged() {
        let policy = ingress_policy("[{namespace: team, hosts: ['*']}]", "{mode: strip}");
        let mut team = ve("envHeader: {name: x-team-env}");
        team.metadata.namespace = Some("team".into());
        let mut other = ve("envHeader: {name: x-api-key}");
        other.metadata.namespace = Some("other".into());
        let guard = plan_edge_guard(&policy, &[&team, &other], &settings().wasm)
            .unwrap()
            .unwrap();
        let config = plugin_config_of(&guard.plugin.spec.plugin_config).unwrap();
        assert_eq!(config.edge_carriers.headers, ["x-team-env"]);
    }

    #[test]
    fn an_edge_policy_that_is_not_valid_has_no_guard_and_says_why() {
        let policy = ingress_policy("[]", "{mode: allowList}");
        let err = plan_edge_guard(&policy, &[], &settings().wasm).unwrap_err();
        assert!(
            err.contains("spec.edgeTrust") && err.contains("at least one entry"),
            "{err}"
        );
    }

    #[test]
    fn carriers_over_the_bounds_are_left_out_and_named() {
        let policy = ingress_policy(r#"[{namespace: "*", hosts: ["*"]}]"#, "");
        let many: Vec<VirtualEnvironment> = (0..MAX_EDGE_HEADERS + 2)
            .map(|i| ve(&format!("envHeader: {{name: x-env-{i}}}")))
            .collect();
        let refs: Vec<&VirtualEnvironment> = many.iter().collect();
        let guard = plan_edge_guard(&policy, &refs, &settings().wasm)
            .unwrap()
            .unwrap();
        assert_eq!(guard.left_out.len(), 2, "{:?}", guard.left_out);
        assert!(guard.overflow);
        let config = plugin_config_of(&guard.plugin.spec.plugin_config).unwrap();
        assert_eq!(config.edge_carriers.headers.len(), MAX_EDGE_HEADERS);
    }
}
