//! `make demo`: requests from every env into the mesh's entry service, printed as a table of
//! call chains (which pod served each hop, and whether its env was an exact hit, a fallback
//! up the hierarchy, or the default subset).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use anyhow::Result;
use virtual_env_filter::{dry_run, Route};
use virtual_env_filter::{FilterConfig, Node};

use crate::app::Hop;
use virtual_env_controller::plan::plugin_config_of;

use crate::mesh::{Mesh, INGRESS_GATEWAY};

/// How a hop was routed, as the filter's own request flow decides it for the call that
/// reached it (the caller's node, the env header the caller had): `exact`, `fallback`,
/// `default`, or `-` when nothing was chosen. When the pod that answered is not in the env
/// the filter chose, the mesh disagreed with the filter: `MISMATCH`.
pub fn outcome(
    filter: &FilterConfig,
    caller: &Node,
    service: &str,
    env_header: Option<&str>,
    served_by_env: Option<&str>,
) -> &'static str {
    let mut headers: Vec<(&str, &[u8])> = vec![(":authority", service.as_bytes())];
    if let Some(env) = env_header {
        headers.push((filter.env_header(), env.as_bytes()));
    }
    let decided = dry_run::outbound(filter, caller, &headers);
    let subset = decided
        .route_header
        .as_ref()
        .and_then(|(_, v)| v.as_deref());
    match (decided.choice, subset) {
        (Some(_), Some(chosen)) if Some(chosen) != served_by_env => "MISMATCH",
        (Some(Route::Exact), _) => "exact",
        (Some(Route::Fallback), _) => "fallback",
        (Some(Route::Default), _) => "default",
        _ => "-",
    }
}

/// The envs to try: every env with pods in any namespace, shallow first, one that nobody
/// deploys, and none.
pub fn request_envs(mesh: &Mesh) -> Vec<Option<String>> {
    let topology = &mesh.topology;
    let splitter = topology.virtual_environment.env_label.splitter.clone();
    let envs: BTreeSet<(usize, String)> = topology
        .all_pods()
        .filter_map(|(ns, p)| ns.env_of(p))
        .map(|e| (e.matches(splitter.as_str()).count(), e))
        .collect();
    let mut out: Vec<Option<String>> = envs.iter().map(|(_, e)| Some(e.clone())).collect();
    if let Some((_, root)) = envs.iter().next() {
        out.push(Some(format!("{root}{splitter}proj9")));
    }
    out.push(None);
    out
}

/// Sends one request per env into the first service: through the ingress gateway under
/// its gateway host when the topology exposes it there, else through the gateway acting
/// as a client of the namespace. Tabulates the chains.
pub async fn run(mesh: &Mesh) -> Result<String> {
    let env_header = mesh.topology.virtual_environment.env_header.name.clone();
    let entry = Entry::of(mesh);
    let mut rows = Vec::new();
    for env in request_envs(mesh) {
        let headers: Vec<(&str, &str)> = env
            .iter()
            .map(|e| (env_header.as_str(), e.as_str()))
            .collect();
        let hop = match &entry {
            Entry::GatewayHost(host) => mesh.request_host(host, &headers).await?,
            Entry::Service(service) => mesh.request(service, &headers).await?,
        };
        rows.push((env, hop));
    }
    let mut out = table(mesh, &rows)?;
    out.push_str(&traced(mesh, &entry, &env_header).await?);
    Ok(out)
}

/// One request of the deepest env again, asking for the routing trace
/// (`x-virtual-env-debug: 1`): what each proxy decided, hop by hop.
async fn traced(mesh: &Mesh, entry: &Entry, env_header: &str) -> Result<String> {
    let Some(Some(env)) = request_envs(mesh).into_iter().rev().nth(2) else {
        return Ok(String::new());
    };
    let headers = [
        (env_header, env.as_str()),
        (virtual_env_filter::routing_trace::DEBUG_HEADER, "1"),
    ];
    let (_, trace) = match entry {
        Entry::GatewayHost(host) => mesh.request_host_traced(host, &headers).await?,
        Entry::Service(service) => mesh.request_traced(service, &headers).await?,
    };
    let mut out = format!(
        "\nThe routing trace of one request (env {env}, {}: 1), from {}:\n",
        virtual_env_filter::routing_trace::DEBUG_HEADER,
        virtual_env_filter::routing_trace::TRACE_HEADER
    );
    match trace {
        Some(trace) => {
            for hop in trace.split(", ") {
                let _ = writeln!(out, "  {hop}");
            }
        }
        None => out.push_str("  (none: the gateway's edge policy does not let clients ask; see edgeTrust.allowTrace)\n"),
    }
    Ok(out)
}

/// How the demo's requests enter the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Through the ingress gateway, under a host it serves the first service at.
    GatewayHost(String),
    /// To the first service by name, from the gateway acting as a client of the namespace.
    Service(String),
}

impl Entry {
    pub fn of(mesh: &Mesh) -> Self {
        let topology = &mesh.topology;
        let entry = topology
            .services
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let host = topology
            .virtual_environment
            .gateways
            .iter()
            .filter(|g| g.service == entry)
            .flat_map(|g| &g.hosts)
            .find(|h| !h.starts_with('*'));
        match host {
            Some(host) => Self::GatewayHost(host.clone()),
            None => Self::Service(entry),
        }
    }
}

pub fn table(mesh: &Mesh, rows: &[(Option<String>, Hop)]) -> Result<String> {
    let plans = mesh.plans()?;
    // Each namespace's calling side, and the gateway's plugin object when it has its own.
    let filters: BTreeMap<&str, FilterConfig> = plans
        .iter()
        .map(|(ns, plan)| (ns.as_str(), FilterConfig::new(&plan.plugin_config, None)))
        .collect();
    let first = mesh.topology.namespace.as_str();
    let entry = Entry::of(mesh);
    let gateway = match &entry {
        Entry::GatewayHost(_) => plans[first]
            .gateway_plugins
            .first()
            .and_then(|p| plugin_config_of(&p.spec.plugin_config))
            .map(|config| (FilterConfig::new(&config, None), INGRESS_GATEWAY.0)),
        Entry::Service(_) => None,
    };
    let namespace_of = |pod: &str| {
        mesh.topology
            .all_pods()
            .find(|(_, p)| p.name == pod)
            .map_or(first, |(ns, _)| ns.namespace.as_str())
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>3}  {:<11} {:<14} {:<18} outcome",
        "request env", "hop", "service", "served by", "pod env"
    );
    for (env, hop) in rows {
        let label = env.clone().unwrap_or_else(|| "(none)".into());
        let chain = hop.chain();
        for (i, h) in chain.iter().enumerate() {
            let pod_env = h.env.as_deref();
            let callee_ns = namespace_of(&h.pod);
            // The first call comes from the gateway (no env label) with the request's env;
            // each next one from the pod before, with the env header that pod received.
            let (filter, caller, env_header) = match i.checked_sub(1).map(|p| chain[p]) {
                None => {
                    let (filter, ns) = match &gateway {
                        Some((filter, ns)) => (filter, *ns),
                        None => (&filters[first], first),
                    };
                    let node = Node {
                        namespace: ns.to_owned(),
                        own_env: None,
                    };
                    (filter, node, env.as_deref())
                }
                Some(previous) => {
                    let ns = namespace_of(&previous.pod);
                    let filter = &filters[ns];
                    let node = Node {
                        namespace: ns.to_owned(),
                        own_env: filter.own_env(previous.env.clone()),
                    };
                    (filter, node, previous.received_env.as_deref())
                }
            };
            // What the caller's application called: the gateway host, the short name in
            // its own namespace, `name.namespace` in another.
            let (authority, service) = match (&entry, i) {
                (Entry::GatewayHost(host), 0) => (host.clone(), h.service.clone()),
                _ if callee_ns == caller.namespace => (h.service.clone(), h.service.clone()),
                _ => {
                    let name = format!("{}.{callee_ns}", h.service);
                    (name.clone(), name)
                }
            };
            let _ = writeln!(
                out,
                "{:<18} {:>3}  {:<11} {:<14} {:<18} {}",
                if i == 0 { label.as_str() } else { "" },
                i + 1,
                service,
                h.pod,
                pod_env.unwrap_or("-"),
                outcome(filter, &caller, &authority, env_header, pod_env)
            );
        }
        if let Some(error) = hop.first_error() {
            let _ = writeln!(out, "{:<18} error: {error}", "");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use virtual_env_core::PluginConfig;

    use super::*;

    #[test]
    fn outcomes_are_the_filters_decisions() {
        let json = r#"{"defaultSubset": "dev", "services": {
            "app-a.default.svc.cluster.local": ["dev", "dev.p1"],
            "app-b.default.svc.cluster.local": ["dev"]}}"#;
        let filter = FilterConfig::new(&PluginConfig::from_json(json.as_bytes()).unwrap(), None);
        let gateway = Node {
            namespace: "default".into(),
            own_env: None,
        };
        let d = Some("dev");
        assert_eq!(
            outcome(&filter, &gateway, "app-a", Some("dev.p1"), Some("dev.p1")),
            "exact"
        );
        assert_eq!(
            outcome(&filter, &gateway, "app-b", Some("dev.p1.u1"), d),
            "fallback"
        );
        assert_eq!(outcome(&filter, &gateway, "app-b", None, d), "default");
        assert_eq!(
            outcome(&filter, &gateway, "app-b", Some("qa"), d),
            "default"
        );
        assert_eq!(
            outcome(&filter, &gateway, "app-b", Some("Bad..env"), d),
            "default"
        );
        assert_eq!(
            outcome(&filter, &gateway, "app-a", Some("dev.p1"), d),
            "MISMATCH"
        );
        assert_eq!(outcome(&filter, &gateway, "app-z", Some("dev"), d), "-");
    }
}
