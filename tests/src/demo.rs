//! `make demo`: requests from every env into the mesh's entry service, printed as a table of
//! call chains (which pod served each hop, and whether its env was an exact hit, a fallback
//! up the hierarchy, or the default subset).

use std::collections::BTreeSet;
use std::fmt::Write;

use anyhow::Result;
use virtual_env_core::lineage;

use crate::app::Hop;
use crate::mesh::Mesh;

/// How a hop's pod relates to the request's env.
pub fn outcome(
    request_env: Option<&str>,
    pod_env: Option<&str>,
    splitter: char,
    default: Option<&str>,
) -> &'static str {
    match (request_env, pod_env) {
        (Some(r), Some(p)) if r == p => "exact",
        (Some(r), Some(p)) if lineage(r, splitter).any(|e| e == p) => "fallback",
        (_, Some(p)) if Some(p) == default => "default",
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
    Ok(table(mesh, &rows))
}

pub fn table(mesh: &Mesh, rows: &[(Option<String>, Hop)]) -> String {
    let ve = &mesh.topology.virtual_environment;
    let splitter = ve.env_label.splitter.chars().next().unwrap_or('.');
    let default = ve.env_label.default_subset.as_deref();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>3}  {:<8} {:<14} {:<18} outcome",
        "request env", "hop", "service", "served by", "pod env"
    );
    for (env, hop) in rows {
        let label = env.clone().unwrap_or_else(|| "(none)".into());
        for (i, h) in hop.chain().iter().enumerate() {
            let pod_env = h.env.as_deref();
            let _ = writeln!(
                out,
                "{:<18} {:>3}  {:<8} {:<14} {:<18} {}",
                if i == 0 { label.as_str() } else { "" },
                i + 1,
                h.service,
                h.pod,
                pod_env.unwrap_or("-"),
                outcome(env.as_deref(), pod_env, splitter, default)
            );
        }
        if let Some(error) = hop.first_error() {
            let _ = writeln!(out, "{:<18} error: {error}", "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let d = Some("dev");
        assert_eq!(outcome(Some("dev.p1"), Some("dev.p1"), '.', d), "exact");
        assert_eq!(outcome(Some("dev.p1.u1"), Some("dev"), '.', d), "fallback");
        assert_eq!(outcome(None, Some("dev"), '.', d), "default");
        assert_eq!(outcome(Some("qa"), Some("dev"), '.', d), "default");
        assert_eq!(outcome(Some("qa"), Some("dev.p1"), '.', d), "-");
    }
}
