//! `virtual-env status`: what a namespace's envs are and where each service falls back,
//! from the cluster's objects. Per namespace: the VirtualEnvironment's condition, the env
//! tree (envs of ready pods, each under its parent), per env its ready pods, per routed
//! service the env a request of each env reaches (exact, or the ancestor it falls back
//! to, or the default), the services left alone with the reasons, and the plugin objects
//! with their generations.
//!
//! The services' envs are the calling side's plugin object's, as the sidecars get them
//! (not planned again: what is in force, conflicts and all); the envs and their pods are
//! the namespace's ready pods'; what is left alone is the status's.
//!
//! Pure: printed as a table, JSON, YAML, Mermaid or Graphviz dot. The reads are
//! [`read`]'s.

use std::collections::BTreeMap;
use std::fmt::Write;

use kube::ResourceExt;
use serde::Serialize;
use virtual_env_core::env::lineage;
use virtual_env_core::{Choice, RouteTable};

use k8s_openapi::api::core::v1::Pod;
use virtual_env_core::PluginConfig;

use crate::crd::VirtualEnvironment;

/// One namespace, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceStatus {
    pub namespace: String,
    pub virtual_environment: String,
    /// `Ready` condition: `True`/`False` and its reason; `-` before the first reconcile.
    pub ready: String,
    pub route_header: String,
    pub envs: Vec<EnvStatus>,
    pub services: Vec<ServiceStatus>,
    /// As the status says it (else as planning finds it): `service: why`.
    pub skipped: Vec<String>,
    /// `Kind/name generation N` of the namespace's plugin objects.
    pub plugin_objects: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvStatus {
    pub env: String,
    /// The nearest ancestor env with pods, if any (the tree's edge).
    pub parent: Option<String>,
    /// Ready pods in it, `service/pod` by name.
    pub pods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub service: String,
    /// Env -> what a request of that env reaches: `exact`, `fallback:<env>`,
    /// `default:<env>`, `none`.
    pub reaches: BTreeMap<String, String>,
}

/// What one namespace's view is made of, as read from the cluster.
pub struct NamespaceObjects<'a> {
    pub ve: &'a VirtualEnvironment,
    pub pods: &'a [Pod],
    /// The calling side's plugin config in force (`None`: not written yet).
    pub config: Option<&'a PluginConfig>,
    /// `Kind/name generation N` of the namespace's plugin objects.
    pub plugin_objects: Vec<String>,
}

/// The view of one namespace.
pub fn namespace_status(objects: NamespaceObjects<'_>) -> NamespaceStatus {
    let ve = objects.ve;
    let status = ve.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map_or_else(|| "-".to_owned(), |c| format!("{} {}", c.status, c.reason));
    let settings = ve.spec.plugin_config();
    let config = objects.config.unwrap_or(&settings);
    let splitter = config.splitter_char();
    let label = &config.env_label;
    let ready_pods: Vec<&Pod> = (objects.pods.iter())
        .filter(|p| crate::plan::is_ready(p))
        .collect();
    let mut envs: Vec<String> = (ready_pods.iter())
        .filter_map(|p| p.labels().get(label))
        .filter(|e| virtual_env_core::validate_env_name(e, splitter).is_ok())
        .cloned()
        .collect();
    envs.sort_by_key(|e| (e.matches(splitter).count(), e.clone()));
    envs.dedup();
    let pods_in = |env: &str| -> Vec<String> {
        let mut pods: Vec<String> = (ready_pods.iter())
            .filter(|p| p.labels().get(label).map(String::as_str) == Some(env))
            .map(|p| {
                let app = p.labels().get("app").cloned().unwrap_or_default();
                format!("{app}/{}", p.name_any())
            })
            .collect();
        pods.sort();
        pods
    };
    let env_status: Vec<EnvStatus> = envs
        .iter()
        .map(|env| EnvStatus {
            env: env.clone(),
            parent: lineage(env, splitter)
                .skip(1)
                .find(|a| envs.iter().any(|e| e == a))
                .map(str::to_owned),
            pods: pods_in(env),
        })
        .collect();
    // Each env right after its parent, so that the tree reads as one.
    let env_status = in_tree_order(env_status);
    let routes = RouteTable::new(config);
    let services = (config.services.keys())
        .filter_map(|fqdn| {
            let key = fqdn.split(".svc.").next()?;
            let service = routes.service(key)?;
            let reaches = envs
                .iter()
                .map(|env| {
                    let reached = match routes.choose(service, Some(env)) {
                        Choice::Exact(_) => "exact".to_owned(),
                        Choice::Fallback(to) => format!("fallback:{to}"),
                        Choice::Default(to) => format!("default:{to}"),
                        Choice::None => "none".to_owned(),
                    };
                    (env.clone(), reached)
                })
                .collect();
            Some(ServiceStatus {
                service: key.split('.').next().unwrap_or(key).to_owned(),
                reaches,
            })
        })
        .collect();
    NamespaceStatus {
        namespace: ve.namespace().unwrap_or_default(),
        virtual_environment: ve.name_any(),
        ready,
        route_header: objects
            .config
            .map_or_else(|| "-".to_owned(), |c| c.route_header.clone()),
        envs: env_status,
        services,
        skipped: status.map(|s| s.skipped.clone()).unwrap_or_default(),
        plugin_objects: objects.plugin_objects,
    }
}

/// `envs` (parents before children) depth first: each under its parent.
fn in_tree_order(envs: Vec<EnvStatus>) -> Vec<EnvStatus> {
    fn visit(envs: &[EnvStatus], parent: Option<&str>, out: &mut Vec<EnvStatus>) {
        for env in envs.iter().filter(|e| e.parent.as_deref() == parent) {
            out.push(env.clone());
            visit(envs, Some(&env.env), out);
        }
    }
    let mut out = Vec::with_capacity(envs.len());
    visit(&envs, None, &mut out);
    out
}

/// As a table, namespace by namespace.
pub fn table(namespaces: &[NamespaceStatus]) -> String {
    let mut out = String::new();
    for ns in namespaces {
        let _ = writeln!(
            out,
            "NAMESPACE {}  VirtualEnvironment {}  Ready: {}  route header: {}",
            ns.namespace, ns.virtual_environment, ns.ready, ns.route_header
        );
        for object in &ns.plugin_objects {
            let _ = writeln!(out, "  plugin object {object}");
        }
        let _ = writeln!(out, "\n  ENV TREE (ready pods)");
        for env in &ns.envs {
            let depth = ancestors(&ns.envs, env);
            let _ = writeln!(
                out,
                "  {}{}  {}",
                "  ".repeat(depth),
                env.env,
                env.pods.join(", ")
            );
        }
        let width = ns
            .services
            .iter()
            .map(|s| s.service.len())
            .max()
            .unwrap_or(7)
            .max(7);
        let _ = write!(out, "\n  {:width$}", "SERVICE");
        for env in &ns.envs {
            let _ = write!(out, "  {:18}", env.env);
        }
        out.push('\n');
        for service in &ns.services {
            let _ = write!(out, "  {:width$}", service.service);
            for env in &ns.envs {
                let reached = service.reaches.get(&env.env).map_or("-", String::as_str);
                let shown = match reached.split_once(':') {
                    Some((_, to)) => format!("-> {to}"),
                    // No env of its lineage and no default subset: its default route.
                    None if reached == "none" => "whole service".to_owned(),
                    None => reached.to_owned(),
                };
                let _ = write!(out, "  {shown:18}");
            }
            out.push('\n');
        }
        if !ns.skipped.is_empty() {
            let _ = writeln!(out, "\n  LEFT ALONE");
            for skip in &ns.skipped {
                let _ = writeln!(out, "  {skip}");
            }
        }
        out.push('\n');
    }
    out
}

fn ancestors(envs: &[EnvStatus], env: &EnvStatus) -> usize {
    let mut depth = 0;
    let mut parent = env.parent.as_deref();
    while let Some(p) = parent {
        depth += 1;
        parent = envs
            .iter()
            .find(|e| e.env == p)
            .and_then(|e| e.parent.as_deref());
    }
    depth
}

/// The env trees as a Mermaid flowchart (`graph TD`), one subgraph per namespace.
pub fn mermaid(namespaces: &[NamespaceStatus]) -> String {
    let mut out = String::from("graph TD\n");
    for (n, ns) in namespaces.iter().enumerate() {
        // Ids by position: env names may differ only in `.`, `-`, `_`.
        let index = |env: &str| ns.envs.iter().position(|e| e.env == env).unwrap_or(0);
        let id = |env: &str| format!("n{n}e{}", index(env));
        let _ = writeln!(out, "  subgraph {}", ns.namespace);
        for env in &ns.envs {
            let _ = writeln!(
                out,
                "    {}[\"{} ({} pods)\"]",
                id(&env.env),
                env.env,
                env.pods.len()
            );
        }
        for env in &ns.envs {
            if let Some(parent) = &env.parent {
                let _ = writeln!(out, "    {} --> {}", id(parent), id(&env.env));
            }
        }
        out.push_str("  end\n");
    }
    out
}

/// The env trees as Graphviz dot, one cluster per namespace.
pub fn dot(namespaces: &[NamespaceStatus]) -> String {
    // (`\u{7b}` opens a block: dot's braces, written apart from the format strings.)
    let mut out = String::from("digraph envs \u{7b}\n  rankdir=TB;\n");
    for ns in namespaces {
        let id = |env: &str| format!("\"{}/{}\"", ns.namespace, env);
        let _ = write!(out, "  subgraph \"cluster_{}\" ", ns.namespace);
        out.push('\u{7b}');
        let _ = writeln!(out, "\n    label=\"{}\";", ns.namespace);
        for env in &ns.envs {
            let _ = writeln!(
                out,
                "    {} [label=\"{}\\n{} pods\"];",
                id(&env.env),
                env.env,
                env.pods.len()
            );
        }
        for env in &ns.envs {
            if let Some(parent) = &env.parent {
                let _ = writeln!(out, "    {} -> {};", id(parent), id(&env.env));
            }
        }
        out.push_str("  \u{7d}\n");
    }
    out.push_str("\u{7d}\n");
    out
}

/// Reads what `status` shows from the cluster (read only): the VirtualEnvironments of
/// `namespace` (or of every namespace), each namespace's pods and the plugin objects of
/// virtual-env there. TrafficExtension is read where the cluster serves it.
pub async fn read(
    client: kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<NamespaceStatus>, kube::Error> {
    use kube::api::{Api, DynamicObject, ListParams};
    let list = ListParams::default();
    let mut ves = match namespace {
        Some(ns) => Api::<VirtualEnvironment>::namespaced(client.clone(), ns),
        None => Api::<VirtualEnvironment>::all(client.clone()),
    }
    .list(&list)
    .await?
    .items;
    ves.sort_by_key(|ve| (ve.namespace(), ve.name_any()));
    let mut out = Vec::new();
    for ve in &ves {
        let ns = ve.namespace().unwrap_or_default();
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&list)
            .await?
            .items;
        let ours = ListParams::default().labels(&format!(
            "{}={}",
            crate::objects::MANAGED_BY_LABEL,
            crate::objects::MANAGED_BY
        ));
        let mut plugins = Vec::new();
        for kind in [
            crate::existing::Kind::WasmPlugin,
            crate::existing::Kind::TrafficExtension,
        ] {
            let api =
                Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &kind.api_resource());
            match api.list(&ours).await {
                Ok(found) => plugins.extend(found.items.into_iter().map(|o| (kind, o))),
                // Not served (TrafficExtension before Istio 1.30), or not readable for
                // this user (a viewer role without it): none of that kind shown.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {}
                Err(e) => return Err(e),
            }
        }
        plugins.sort_by_key(|(kind, o)| (kind.name(), o.name_any()));
        let config = plugins.iter().find_map(|(_, o)| {
            (o.name_any() == crate::objects::WASM_PLUGIN_NAME)
                .then(|| {
                    let spec = &o.data["spec"];
                    let config = match &spec["wasm"]["pluginConfig"] {
                        serde_json::Value::Null => &spec["pluginConfig"],
                        wasm => wasm,
                    };
                    crate::plan::plugin_config_of(config)
                })
                .flatten()
        });
        let plugin_objects = plugins
            .iter()
            .map(|(kind, o)| {
                format!(
                    "{}/{} generation {}",
                    kind.name(),
                    o.name_any(),
                    o.metadata.generation.unwrap_or_default()
                )
            })
            .collect();
        out.push(namespace_status(NamespaceObjects {
            ve,
            pods: &pods,
            config: config.as_ref(),
            plugin_objects,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
