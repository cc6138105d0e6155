//! `virtual-env render` and `virtual-env explain`: planning run on a snapshot, offline.

use std::collections::BTreeMap;
use std::fmt::Write;

use kube::ResourceExt;
use thiserror::Error;
use virtual_env_core::routing::{RouteTable, ServiceEnvs};
use virtual_env_core::{
    lowercase, service_fqdn, validate_env_name, Choice, PluginConfig, ServiceHost, Target,
};
use virtual_env_filter::dry_run;
use virtual_env_filter::{Decision, Destination, Route};
use virtual_env_filter::{EnvSource, FilterConfig, Node};

use crate::extension::{traffic_extension, ExtensionApi};
use crate::istio::WasmPlugin;
use crate::peer_namespaces;
use crate::plan::{plan_namespace, Plan, PlanError, Settings, Snapshot};
use crate::snapshot::NamespaceSnapshot;

/// Plans every namespace of a snapshot as the controller's reconciles end up: each
/// namespace is planned, publishes its table (`peer_namespaces.rs`), and is planned again
/// with the others' tables as `peers`. The plans are in the order of `namespaces`.
pub fn plan_namespaces(
    namespaces: &[NamespaceSnapshot],
    settings: &Settings,
) -> Result<Vec<Plan>, PlanError> {
    let mut published = BTreeMap::new();
    if namespaces.len() > 1 {
        for ns in namespaces {
            let plan = plan_namespace(&ns.virtual_environment, &ns.snapshot, settings)?;
            let name = ns.virtual_environment.namespace().unwrap_or_default();
            published.insert(name, peer_namespaces::published(&plan.plugin_config));
        }
    }
    namespaces
        .iter()
        .map(|ns| {
            let snapshot = Snapshot {
                peers: published.clone(),
                ..ns.snapshot.clone()
            };
            plan_namespace(&ns.virtual_environment, &snapshot, settings)
        })
        .collect()
}

/// The objects the controller would apply, as multi-document YAML (per namespace the
/// WasmPlugins first, then per service its VirtualService and DestinationRule), with what
/// was left out as comments.
pub fn render(namespaces: &[NamespaceSnapshot], settings: &Settings) -> Result<String, PlanError> {
    let plans = plan_namespaces(namespaces, settings)?;
    let mut docs = Vec::new();
    for (ns, plan) in namespaces.iter().zip(&plans) {
        let mut out = String::new();
        if namespaces.len() > 1 {
            let name = ns.virtual_environment.namespace().unwrap_or_default();
            let _ = writeln!(out, "# namespace {name}");
        }
        if ns.virtual_environment.route_header_in_force().is_none() {
            let _ = writeln!(
                out,
                "# route header {}: a predictable stand-in (--predictable-suffix), for diffs and tests only: never apply it; the controller picks a random suffix once and keeps it in status.routeHeader",
                plan.route_header
            );
        }
        out.push_str(&render_plan(plan, settings.extension_api));
        docs.push(out);
    }
    // The gateway owners' edge guards, with every namespace's carriers.
    let ves: Vec<&crate::crd::VirtualEnvironment> = namespaces
        .iter()
        .map(|ns| &ns.virtual_environment)
        .collect();
    let policies = namespaces
        .first()
        .map(|ns| ns.snapshot.cluster.policies.clone())
        .unwrap_or_default();
    for policy in &policies {
        let mut out = format!("# GatewayPolicy {}: its edge guard\n", policy.name_any());
        match crate::edge_guard::plan_edge_guard(policy, &ves, &settings.wasm) {
            Ok(None) => {
                let _ = writeln!(out, "# edgeTrust accept: no edge guard");
            }
            Ok(Some(guard)) => {
                for left in &guard.left_out {
                    let _ = writeln!(out, "# not judged (over the bounds): {left}");
                }
                out.push_str(&match settings.extension_api {
                    ExtensionApi::WasmPlugin => to_yaml(&guard.plugin),
                    ExtensionApi::TrafficExtension => to_yaml(&traffic_extension(&guard.plugin)),
                });
            }
            Err(why) => {
                let _ = writeln!(out, "# no edge guard: {why}");
            }
        }
        docs.push(out);
    }
    Ok(docs.join("---\n"))
}

/// The plan as YAML, plugin objects in `api` (what the controller would write).
pub fn render_plan(plan: &Plan, api: ExtensionApi) -> String {
    let mut out = String::new();
    for line in plan
        .skipped
        .iter()
        .map(crate::skip::Skip::rendered)
        .chain(plan.ignored_pods.iter().map(|p| format!("ignored pod {p}")))
    {
        let _ = writeln!(out, "# {line}");
    }
    let plugin = |p: &WasmPlugin| match api {
        ExtensionApi::WasmPlugin => to_yaml(p),
        ExtensionApi::TrafficExtension => to_yaml(&traffic_extension(p)),
    };
    let mut docs = vec![plugin(&plan.wasm_plugin), plugin(&plan.inbound_wasm_plugin)];
    docs.extend(plan.gateway_plugins.iter().map(plugin));
    docs.extend(plan.waypoint_plugins.iter().map(plugin));
    for (vs, dr) in plan.virtual_services.iter().zip(&plan.destination_rules) {
        docs.push(to_yaml(vs));
        docs.push(to_yaml(dr));
    }
    // Gateway API routing: the envs' Services first, as they are applied.
    docs.extend(plan.env_services.iter().map(to_yaml));
    docs.extend(plan.mesh_routes.iter().map(|r| to_yaml(&r.to_value())));
    out.push_str(&docs.join("---\n"));
    out
}

fn to_yaml<T: serde::Serialize>(object: &T) -> String {
    serde_yaml::to_string(object).unwrap_or_default()
}

/// What `virtual-env explain` is asked about: a request with `env` (the env header's
/// value, or none) to `service` (a short, namespaced or full name), sent by pod `from`
/// (or by a pod without env label of the first VirtualEnvironment's namespace).
#[derive(Debug, Clone, Default)]
pub struct Question<'a> {
    pub env: Option<&'a str>,
    pub service: &'a str,
    pub from: Option<&'a str>,
    /// Also say the decision as the live routing trace says it (`x-virtual-env-trace`).
    pub trace: bool,
}

#[derive(Debug, Error)]
pub enum ExplainError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no pod {0} in the snapshot")]
    NoSuchPod(String),
    #[error("no VirtualEnvironment in the snapshot")]
    NoVirtualEnvironment,
}

/// How the filter treats the request, by running the filter's own request flow
/// ([`dry_run::outbound`]) on the plan's plugin config: the env it resolves (and the
/// values it ignores, and why), the fallback walk, and the route header it sets.
pub fn explain(
    namespaces: &[NamespaceSnapshot],
    settings: &Settings,
    question: &Question<'_>,
) -> Result<String, ExplainError> {
    let plans = plan_namespaces(namespaces, settings)?;
    // The sender's namespace: the pod's, else the first.
    let index = match question.from {
        Some(name) => namespaces
            .iter()
            .position(|ns| ns.snapshot.pods.iter().any(|p| p.name_any() == name))
            .ok_or_else(|| ExplainError::NoSuchPod(name.to_owned()))?,
        None => 0,
    };
    if namespaces.get(index).is_none() {
        return Err(ExplainError::NoVirtualEnvironment);
    }
    let mut out = String::new();
    let Some((config, node, outcome_of)) =
        deciding_proxy(namespaces, &plans, index, question, &mut out)?
    else {
        return Ok(out);
    };
    let config = &config;
    let filter = FilterConfig::new(config, None);
    let mut headers: Vec<(&str, &[u8])> = vec![(":authority", question.service.as_bytes())];
    if let Some(env) = question.env {
        headers.push((filter.env_header(), env.as_bytes()));
    }
    let outcome = match &outcome_of {
        Via::Sidecar | Via::Gateway => dry_run::outbound(&filter, &node, &headers),
        Via::Waypoint(peer) => dry_run::through_waypoint(&filter, &node, peer.clone(), &headers),
    };
    let out = &mut out;
    let trace = question.trace.then(|| {
        let by = match &outcome_of {
            Via::Sidecar => virtual_env_filter::routing_trace::Proxy::Sidecar,
            Via::Gateway => virtual_env_filter::routing_trace::Proxy::Gateway,
            Via::Waypoint(_) => virtual_env_filter::routing_trace::Proxy::Waypoint,
        };
        let to = lowercase(question.service);
        format!(
            "as a trace: {}\n",
            virtual_env_filter::routing_trace::call_entry(by, &to, &outcome)
        )
    });
    said_of(
        out,
        (namespaces, &plans),
        settings,
        question,
        (config, &filter, &node),
        &outcome,
    );
    if let Some(trace) = trace {
        out.push_str(&trace);
    }
    Ok(std::mem::take(out))
}

/// What `explain` says of the decision `outcome` (after the deciding proxy): the target,
/// the env, the walk, the choice.
fn said_of(
    out: &mut String,
    (namespaces, plans): (&[NamespaceSnapshot], &[Plan]),
    settings: &Settings,
    question: &Question<'_>,
    (config, filter, node): (&PluginConfig, &FilterConfig, &Node),
    outcome: &virtual_env_filter::Decision<'_>,
) {
    let routes = filter.routes();
    let authority = lowercase(question.service);
    // A preview host names its service (as the filter reads it).
    let preview = (!routes.is_gateway_host(&authority))
        .then(|| routes.preview(&authority))
        .flatten();
    let target = match &preview {
        Some((target, _)) => *target,
        None => routes.target(&authority, &node.namespace),
    };
    if outcome.target == Some(Destination::Outside) {
        let _ = writeln!(
            out,
            "{} is not a service of the mesh (not in a namespace the plugin config knows, or another cluster domain): the filter leaves the request untouched",
            question.service
        );
        return;
    }
    let fqdn = ServiceHost::parse(&authority).map_or_else(
        || question.service.to_owned(),
        |h| {
            service_fqdn(
                h.name,
                h.namespace.unwrap_or(&node.namespace),
                &settings.cluster_domain,
            )
        },
    );
    // A gateway host (or a preview host's suffix) names its service.
    let host = authority.split(':').next().unwrap_or_default();
    let suffix = host.split_once('.').map_or("", |(_, s)| s);
    let fqdn = (config.hosts.get(host))
        .or_else(|| preview.as_ref().and(config.preview_hosts.get(suffix)))
        .cloned()
        .unwrap_or(fqdn);
    if let Some(edge) = outcome.edge.filter(|e| e.envs_removed > 0) {
        let _ = writeln!(
            out,
            "the gateway's edge policy removed {} env(s) the request carried (not admitted from outside)",
            edge.envs_removed
        );
    }
    request_env(out, question, outcome, node, config, filter);
    let Target::Service(envs) = target else {
        let why = why_unrouted(namespaces, plans, &fqdn);
        let _ = writeln!(
            out,
            "service {fqdn} is not routed by env: {why}; requests go to the whole service, and the env travels on in the {} header",
            filter.env_header()
        );
        return;
    };
    let _ = writeln!(
        out,
        "service {fqdn} has ready pods in: {}",
        routes.envs_of(envs).join(", ")
    );
    let env = outcome.env.as_ref().map(|(env, _)| env.as_str());
    walk(out, routes, envs, env, &config.splitter);
    chosen(out, outcome);
}

/// Why the service `fqdn` is not routed by env, from the input and the plans: it is not
/// there (with the names meant), its namespace has no VirtualEnvironment, it was left
/// alone (the status's reasons), or it has too few envs.
fn why_unrouted(namespaces: &[NamespaceSnapshot], plans: &[Plan], fqdn: &str) -> String {
    let Some(host) = ServiceHost::parse(fqdn) else {
        return "not a service name".to_owned();
    };
    let ns = host.namespace.unwrap_or_default();
    let Some((snapshot, plan)) = namespaces
        .iter()
        .zip(plans)
        .find(|(n, _)| n.virtual_environment.namespace().as_deref() == Some(ns))
    else {
        return format!("namespace {ns} has no VirtualEnvironment in the input");
    };
    let names: Vec<String> = snapshot
        .snapshot
        .services
        .iter()
        .map(|s| s.name_any())
        .collect();
    if !names.iter().any(|n| n == host.name) {
        let meant = crate::unknown_fields::closest(host.name, names.iter())
            .map_or_else(String::new, |m| format!(" (did you mean {m}?)"));
        return format!(
            "there is no service {} in namespace {ns} in the input{meant}",
            host.name
        );
    }
    let prefix = format!("{}: ", host.name);
    let reasons: Vec<&str> = (plan.skipped.iter())
        .filter_map(|s| s.strip_prefix(prefix.as_str()))
        .collect();
    match reasons.is_empty() {
        true => {
            "it has ready pods in fewer than two envs and none in the default subset".to_owned()
        }
        false => format!("it is left alone: {}", reasons.join("; ")),
    }
}

/// The config, node and place of the filter that decides on the request, said in `out`:
/// the sending pod's sidecar (one plan per namespace, in their order: `plans[index]` is the
/// sender's), or for a pod in ambient mode the waypoint of the service called; `None` when
/// no filter of ours decides (said in `out`).
fn deciding_proxy(
    namespaces: &[NamespaceSnapshot],
    plans: &[Plan],
    index: usize,
    question: &Question<'_>,
    out: &mut String,
) -> Result<Option<(PluginConfig, Node, Via)>, ExplainError> {
    let ns = &namespaces[index];
    let ambient = question
        .from
        .and_then(|name| ns.snapshot.pods.iter().find(|p| p.name_any() == name))
        .filter(|pod| crate::plan::in_ambient_mode(pod));
    if let Some(pod) = ambient {
        return Ok(through_waypoint(namespaces, plans, pod, question, out));
    }
    if question.from.is_none() {
        if let Some(entry) = through_gateway(namespaces, plans, question, out) {
            return Ok(Some(entry));
        }
    }
    let config = plans[index].plugin_config.clone();
    let filter = FilterConfig::new(&config, None);
    let node = sender(ns, question, &config, &filter, out)?;
    Ok(Some((config, node, Via::Sidecar)))
}

/// A request from outside for a host a gateway serves (a gateway host, or a preview host):
/// decided by that gateway's plugin object, as a client of the mesh with no env of its
/// own; `None` when no gateway plugin of the input serves the host.
fn through_gateway(
    namespaces: &[NamespaceSnapshot],
    plans: &[Plan],
    question: &Question<'_>,
    out: &mut String,
) -> Option<(PluginConfig, Node, Via)> {
    let authority = lowercase(question.service);
    let host = authority.split(':').next().unwrap_or_default();
    let (plugin, mut config) = plans
        .iter()
        .flat_map(|p| &p.gateway_plugins)
        .find_map(|p| {
            let config = crate::plan::plugin_config_of(&p.spec.plugin_config)?;
            let preview = host
                .split_once('.')
                .is_some_and(|(_, suffix)| config.preview_hosts.contains_key(suffix));
            (config.hosts.contains_key(host) || preview).then_some((p, config))
        })?;
    let namespace = plugin.namespace().unwrap_or_default();
    // The gateway owner's edge guard runs before the routing plugin: its policy judges
    // the request here as it does there (the routing plugin has none of its own then).
    let guard = namespaces.first().and_then(|ns| {
        (ns.snapshot.cluster.policies.iter()).find(|p| guards(p, plugin, &namespace))
    });
    if let Some(policy) = guard {
        config.edge_trust = Some(policy.edge_trust());
    }
    let mode = |t: &virtual_env_core::EdgeTrust| format!("{:?}", t.mode).to_lowercase();
    let edge = match (guard, &config.edge_trust) {
        (Some(policy), Some(trust)) => {
            format!(
                "{}, GatewayPolicy {}'s edge guard",
                mode(trust),
                policy.name_any()
            )
        }
        (None, Some(trust)) => mode(trust),
        (_, None) => "accept".to_owned(),
    };
    let _ = writeln!(
        out,
        "request from outside for {host}: decided at the gateway by plugin object {namespace}/{} (edge policy: {edge})",
        plugin.name_any(),
    );
    let node = Node {
        namespace,
        own_env: None,
    };
    Some((config, node, Via::Gateway))
}

/// Whether `policy`'s edge guard runs on the pods `plugin` (a gateway's plugin object in
/// `namespace`) reaches: the same namespace, and its selector's labels all the plugin's,
/// or the Gateway its `targetRefs` names.
fn guards(
    policy: &crate::gateway_policy::GatewayPolicy,
    plugin: &crate::istio::WasmPlugin,
    namespace: &str,
) -> bool {
    let workload = &policy.spec.workload;
    let by_labels = plugin.spec.selector.as_ref().is_some_and(|s| {
        !workload.selector.is_empty()
            && (workload.selector.iter()).all(|(k, v)| s.match_labels.get(k) == Some(v))
    });
    let by_name = (plugin.spec.target_refs.iter())
        .any(|t| workload.selector.get(crate::gateway::GATEWAY_NAME_LABEL) == Some(&t.name));
    workload.namespace == namespace && (by_labels || by_name)
}

/// Where the filter decides on the request: the sender's sidecar, or the waypoint of the
/// service called, for a caller it knows as this peer.
enum Via {
    Sidecar,
    /// A gateway's plugin object, for a request from outside.
    Gateway,
    Waypoint(virtual_env_filter::host::Peer),
}

/// For `pod` in ambient mode: the waypoint plugin object's config of the service called
/// (its namespace's plan), the waypoint's node and the caller as the waypoint knows it;
/// `None` (said in `out`) when the call passes no waypoint of ours.
fn through_waypoint(
    namespaces: &[NamespaceSnapshot],
    plans: &[Plan],
    pod: &k8s_openapi::api::core::v1::Pod,
    question: &Question<'_>,
    out: &mut String,
) -> Option<(PluginConfig, Node, Via)> {
    let pod_ns = pod.namespace().unwrap_or_default();
    let workload = crate::workload::workload_name(pod);
    let _ = writeln!(
        out,
        "request from pod {} (namespace {pod_ns}, Istio's ambient mode: no sidecar; workload {workload})",
        pod.name_any()
    );
    let authority = lowercase(question.service);
    let host = ServiceHost::parse(&authority);
    let service_ns = host
        .as_ref()
        .and_then(|h| h.namespace)
        .unwrap_or(&pod_ns)
        .to_owned();
    let name = host.as_ref().map_or(question.service, |h| h.name);
    let found = namespaces
        .iter()
        .zip(plans)
        .find(|(ns, _)| ns.virtual_environment.namespace().as_deref() == Some(service_ns.as_str()));
    let waypoint = found.and_then(|(ns, plan)| {
        let service = ns.snapshot.services.iter().find(|s| s.name_any() == name)?;
        let w = crate::waypoint::waypoint_of(service, &service_ns, &ns.snapshot.namespace_labels)?;
        // The waypoint's object by its Gateway, or the one attached to the service.
        let plugin = plan.waypoint_plugins.iter().find(|p| {
            p.spec.target_refs.iter().any(|t| match t.kind.as_str() {
                "Gateway" => w.namespace == service_ns && t.name == w.name,
                _ => t.name == name,
            })
        })?;
        let config = crate::plan::plugin_config_of(&plugin.spec.plugin_config)?;
        Some((w, plugin.name_any(), config))
    });
    let Some((w, plugin, config)) = waypoint else {
        let _ = writeln!(
            out,
            "{}.{service_ns} has no waypoint virtual-env configures: the call passes ztunnel only (L4) and is not routed by env (see status.skipped)",
            name
        );
        return None;
    };
    let _ = writeln!(
        out,
        "decided at waypoint {}/{} ({plugin}, direction waypoint), which knows the caller as {pod_ns}/{workload}",
        w.namespace, w.name
    );
    let node = Node {
        namespace: service_ns,
        own_env: None,
    };
    let peer = virtual_env_filter::host::Peer {
        namespace: pod_ns,
        workload,
    };
    Some((config, node, Via::Waypoint(peer)))
}

/// The node the request leaves from, described: the pod asked about, else an unlabelled
/// sender in the VirtualEnvironment's namespace.
fn sender(
    ns: &NamespaceSnapshot,
    question: &Question<'_>,
    config: &PluginConfig,
    filter: &FilterConfig,
    out: &mut String,
) -> Result<Node, ExplainError> {
    let ve_namespace = ns.virtual_environment.namespace().unwrap_or_default();
    let Some(name) = question.from else {
        return Ok(Node {
            namespace: ve_namespace,
            own_env: None,
        });
    };
    let pod = ns
        .snapshot
        .pods
        .iter()
        .find(|p| p.name_any() == name)
        .ok_or_else(|| ExplainError::NoSuchPod(name.to_owned()))?;
    let label = pod.labels().get(&config.env_label).cloned();
    let node = Node {
        namespace: pod.namespace().unwrap_or(ve_namespace),
        own_env: filter.own_env(label.clone()),
    };
    let env = match (&label, &node.own_env) {
        (Some(_), Some(env)) => format!("env {env}"),
        (Some(bad), None) => format!("env label {bad:?}, not a valid env name"),
        (None, _) => format!("no {} label", config.env_label),
    };
    let _ = writeln!(
        out,
        "request from pod {name} (namespace {}, {env})",
        node.namespace
    );
    Ok(node)
}

/// The request's env as the filter resolved it, and why.
fn request_env(
    out: &mut String,
    question: &Question<'_>,
    outcome: &Decision<'_>,
    node: &Node,
    config: &PluginConfig,
    filter: &FilterConfig,
) {
    if let Some(env) = question.env {
        if let Err(e) = validate_env_name(env, filter.splitter()) {
            let _ = writeln!(
                out,
                "request env {env:?} is ignored, as the filter ignores it: {e}"
            );
        }
    }
    let _ = match &outcome.env {
        Some((env, EnvSource::Header)) => writeln!(
            out,
            "request env {env} (from the {} header)",
            filter.env_header()
        ),
        Some((env, EnvSource::CallerWorkload)) => writeln!(
            out,
            "request env {env}: the calling workload's env (autoInject is on; the waypoint's workloads table), written into the {} header",
            filter.env_header()
        ),
        Some((env, EnvSource::OwnLabel)) => writeln!(
            out,
            "request env {env}: the sending pod's own env (autoInject is on), written into the {} header",
            filter.env_header()
        ),
        Some((env, EnvSource::Host)) => writeln!(
            out,
            "request env {env} (from the preview host's first label, its levels joined by --)"
        ),
        Some((env, source)) => writeln!(out, "request env {env} (from {source:?})"),
        None => {
            let why = match (&node.own_env, config.auto_inject) {
                (Some(own), false) => {
                    format!(" (autoInject is off, so the pod's own env {own} does not apply)")
                }
                _ => String::new(),
            };
            writeln!(out, "request without env{why}")
        }
    };
}

/// The fallback walk, one line per env tried, then the default subset when it was reached.
fn walk(
    out: &mut String,
    routes: &RouteTable,
    envs: &ServiceEnvs,
    env: Option<&str>,
    splitter: &str,
) {
    let (steps, choice) = routes.explain(envs, env);
    if let Some(env) = env {
        let _ = writeln!(out, "walking {env} up by {splitter:?}:");
    }
    let walked = matches!(choice, Choice::Exact(_) | Choice::Fallback(_));
    for (step, has_pods) in steps {
        let mark = match (has_pods, walked && choice.env() == Some(step)) {
            (true, true) => "pods  <- chosen",
            (true, false) => "pods",
            _ => "no pods",
        };
        let _ = writeln!(out, "  {step:<40} {mark}");
        if has_pods && walked {
            break;
        }
    }
    match (routes.default_subset(envs), walked) {
        (Some(default), false) => {
            let mark = match (routes.has(envs, default), choice) {
                (true, Choice::Default(_)) => "pods  <- chosen",
                (true, _) => "pods",
                (false, _) => "no pods",
            };
            let _ = writeln!(
                out,
                "  {:<40} {mark}",
                format!("{default} (default subset)")
            );
        }
        (None, false) => {
            let _ = writeln!(out, "  (no default subset)");
        }
        _ => {}
    }
}

/// What was chosen, and the route header the filter set.
fn chosen(out: &mut String, outcome: &Decision<'_>) {
    let (route_header, subset) = match &outcome.route_header {
        Some((name, Some(subset))) => (name.as_ref(), subset.as_str()),
        _ => ("", ""),
    };
    let how = match outcome.choice {
        Some(Route::Exact) if !subset.is_empty() => "exact",
        Some(Route::Fallback) if !subset.is_empty() => "fallback",
        Some(Route::Default) if !subset.is_empty() => "default subset",
        _ => {
            let _ = writeln!(
                out,
                "chosen: nothing; the route header is removed and the service's default route applies (the whole service)"
            );
            return;
        }
    };
    let _ = writeln!(
        out,
        "chosen: {subset} ({how})\nroute header: {route_header}: {subset}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::*;

    fn seed() -> NamespaceSnapshot {
        NamespaceSnapshot {
            virtual_environment: seed_ve(),
            snapshot: seed_snapshot(),
        }
    }

    fn ask(env: Option<&str>, service: &str) -> String {
        let question = Question {
            env,
            service,
            from: None,
            trace: false,
        };
        explain(&[seed()], &settings(), &question).unwrap()
    }

    /// `--trace` says the decision as the live routing trace does, the same entry the
    /// filter writes in `x-virtual-env-trace`.
    #[test]
    fn explain_says_the_decision_as_the_live_trace_does() {
        let question = Question {
            env: Some("dev.proj1.alice"),
            service: "app-b",
            from: None,
            trace: true,
        };
        let text = explain(&[seed()], &settings(), &question).unwrap();
        assert!(
            text.ends_with("as a trace: call;by=sidecar;to=app-b;env=dev.proj1.alice;from=header;route=fallback;subset=dev\n"),
            "{text}"
        );
    }

    #[test]
    fn explain_shows_the_walk_and_the_choice() {
        let text = ask(Some("dev.proj1.user1"), "app-b");
        assert!(
            text.contains("service app-b.default.svc.cluster.local has ready pods in: dev\n"),
            "{text}"
        );
        assert!(text.contains("  dev.proj1.user1 "), "{text}");
        assert!(text.contains("chosen: dev (fallback)"), "{text}");
        let text = ask(None, "app-a");
        assert!(text.contains("chosen: dev (default subset)"), "{text}");
        let text = ask(Some("dev"), "nope");
        assert!(text.contains("not routed by env"), "{text}");
        let text = ask(Some("Bad..env"), "app-c");
        assert!(
            text.contains("is ignored, as the filter ignores it"),
            "{text}"
        );
        assert!(text.contains("chosen: dev (default subset)"), "{text}");
        let text = ask(Some("dev"), "app-a.default.svc.evil.example");
        assert!(text.contains("not a service of the mesh"), "{text}");
    }

    /// The seed's namespace and namespace `pay` (ledger in dev and dev.proj2), as
    /// `kubectl get -A` would give them.
    fn seed_and_pay() -> Vec<NamespaceSnapshot> {
        let mut pay_ve = seed_ve();
        pay_ve.metadata.namespace = Some("pay".into());
        pay_ve.metadata.name = Some("pay-env".into());
        let mut ledger = service("ledger");
        ledger.metadata.namespace = Some("pay".into());
        let pods = [("ledger-dev", "dev"), ("ledger-proj2", "dev.proj2")]
            .map(|(name, env)| {
                let mut p = pod(name, "ledger", Some(env), true);
                p.metadata.namespace = Some("pay".into());
                p
            })
            .to_vec();
        let pay = NamespaceSnapshot {
            virtual_environment: pay_ve,
            snapshot: Snapshot {
                services: vec![ledger],
                pods,
                ..Snapshot::default()
            },
        };
        vec![seed(), pay]
    }

    #[test]
    fn several_namespaces_render_each_with_the_others_tables() {
        let text = render(&seed_and_pay(), &settings()).unwrap();
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let outbound = |ns: &str| {
            docs.iter()
                .find(|d| {
                    d["metadata"]["namespace"] == ns && d["metadata"]["name"] == "virtual-env"
                })
                .unwrap()["spec"]["pluginConfig"]
                .clone()
        };
        let (default, pay) = (outbound("default"), outbound("pay"));
        assert_eq!(
            default["peers"]["pay"]["services"]["ledger"],
            serde_json::json!(["dev", "dev.proj2"])
        );
        assert_eq!(default["peers"]["pay"]["routeHeader"], pay["routeHeader"]);
        // app-b routes only in dev, the default subset: pay's callers need no entry for it.
        assert!(
            pay["peers"]["default"]["services"].get("app-b").is_none(),
            "{pay}"
        );
        assert!(
            pay["peers"]["default"]["services"].get("app-a").is_some(),
            "{pay}"
        );
        assert!(text.contains("# namespace pay"), "{text}");
    }

    #[test]
    fn explain_follows_a_call_into_another_namespace_by_its_table() {
        let question = Question {
            env: Some("dev.proj1"),
            service: "ledger.pay",
            from: Some("app-c-proj1"),
            trace: false,
        };
        let text = explain(&seed_and_pay(), &settings(), &question).unwrap();
        assert!(
            text.contains("service ledger.pay.svc.cluster.local has ready pods in: dev, dev.proj2"),
            "{text}"
        );
        assert!(text.contains("chosen: dev (fallback)"), "{text}");
        assert!(
            text.contains("route header: x-virtual-env-route-")
                && !text.contains("(no default subset)"),
            "{text}"
        );
        let plans = plan_namespaces(&seed_and_pay(), &settings()).unwrap();
        let pay_header = &plans[1].route_header;
        assert!(
            text.contains(&format!("route header: {pay_header}: dev")),
            "{text}"
        );
    }

    #[test]
    fn render_is_yaml_of_every_object() {
        let text = render(&[seed()], &settings()).unwrap();
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        // 2 WasmPlugins (calling and called side) + (VirtualService + DestinationRule) x 3.
        assert_eq!(docs.len(), 8);
        assert_eq!(docs[0]["kind"], "WasmPlugin");
        assert_eq!(docs[0]["spec"]["match"][0]["mode"], "CLIENT");
        assert_eq!(docs[1]["kind"], "WasmPlugin");
        assert_eq!(docs[1]["spec"]["match"][0]["mode"], "SERVER");
        assert_eq!(docs[2]["kind"], "VirtualService");
        assert_eq!(docs[3]["kind"], "DestinationRule");
        assert_eq!(docs[2]["apiVersion"], "networking.istio.io/v1");
    }
}
