//! `make demo`: requests from every env into the mesh's entry service, printed as a table of
//! call chains (which pod served each hop, and whether its env was an exact hit, a fallback
//! up the hierarchy, or the default subset).

use std::collections::BTreeSet;
use std::fmt::Write;

use anyhow::Result;
use virtual_env_filter::dry_run::{self, Route};
use virtual_env_filter::{FilterConfig, Node};

use crate::app::Hop;
use crate::mesh::Mesh;

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
    match (decided.route, decided.route_header.as_deref()) {
        (Some(_), Some(chosen)) if Some(chosen) != served_by_env => "MISMATCH",
        (Some(Route::Exact), _) => "exact",
        (Some(Route::Fallback), _) => "fallback",
        (Some(Route::Default), _) => "default",
        _ => "-",
    }
}

/// The envs to try: every env with pods, shallow first, one that nobody deploys, and none.
pub fn request_envs(mesh: &Mesh) -> Vec<Option<String>> {
    let topology = &mesh.topology;
    let splitter = topology.virtual_environment.env_label.splitter.clone();
    let envs: BTreeSet<(usize, String)> = topology
        .pods
        .iter()
        .filter_map(|p| topology.env_of(p))
        .map(|e| (e.matches(splitter.as_str()).count(), e))
        .collect();
    let mut out: Vec<Option<String>> = envs.iter().map(|(_, e)| Some(e.clone())).collect();
    if let Some((_, root)) = envs.iter().next() {
        out.push(Some(format!("{root}{splitter}proj9")));
    }
    out.push(None);
    out
}

/// Sends one request per env through the gateway to the first service, and tabulates the
/// chains.
pub async fn run(mesh: &Mesh) -> Result<String> {
    let entry = mesh
        .topology
        .services
        .first()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let env_header = mesh.topology.virtual_environment.env_header.name.clone();
    let mut rows = Vec::new();
    for env in request_envs(mesh) {
        let headers: Vec<(&str, &str)> = env
            .iter()
            .map(|e| (env_header.as_str(), e.as_str()))
            .collect();
        let hop = mesh.request(&entry, &headers).await?;
        rows.push((env, hop));
    }
    table(mesh, &rows)
}

pub fn table(mesh: &Mesh, rows: &[(Option<String>, Hop)]) -> Result<String> {
    let filter = FilterConfig::new(&mesh.plan()?.plugin_config, None);
    let namespace = mesh.topology.namespace.clone();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>3}  {:<8} {:<14} {:<18} outcome",
        "request env", "hop", "service", "served by", "pod env"
    );
    for (env, hop) in rows {
        let label = env.clone().unwrap_or_else(|| "(none)".into());
        let chain = hop.chain();
        for (i, h) in chain.iter().enumerate() {
            let pod_env = h.env.as_deref();
            // The first call comes from the gateway (no env label) with the request's env;
            // each next one from the pod before, with the env header that pod received.
            let (caller, env_header) = match i.checked_sub(1).map(|p| chain[p]) {
                None => (
                    Node {
                        namespace: namespace.clone(),
                        own_env: None,
                    },
                    env.as_deref(),
                ),
                Some(previous) => (
                    Node {
                        namespace: namespace.clone(),
                        own_env: filter.own_env(previous.env.clone()),
                    },
                    previous.received_env.as_deref(),
                ),
            };
            let _ = writeln!(
                out,
                "{:<18} {:>3}  {:<8} {:<14} {:<18} {}",
                if i == 0 { label.as_str() } else { "" },
                i + 1,
                h.service,
                h.pod,
                pod_env.unwrap_or("-"),
                outcome(&filter, &caller, &h.service, env_header, pod_env)
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
