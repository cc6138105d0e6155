//! `virtual-env render` and `virtual-env explain`: planning run on a snapshot, offline.

use std::fmt::Write;

use virtual_env_core::{service_fqdn, service_key_of_fqdn, Choice, RouteTable};

use crate::plan::{plan_namespace, Plan, PlanError, Settings};
use crate::snapshot::NamespaceSnapshot;

/// The objects the controller would apply, as multi-document YAML (WasmPlugin first, then
/// per service its VirtualService and DestinationRule), with what was left out as comments.
pub fn render(ns: &NamespaceSnapshot, settings: &Settings) -> Result<String, PlanError> {
    let plan = plan_namespace(&ns.virtual_environment, &ns.snapshot, settings)?;
    let mut out = String::new();
    if ns.virtual_environment.route_header_in_force().is_none() {
        let _ = writeln!(
            out,
            "# route header {}: a stable stand-in; the controller picks a random suffix once and keeps it in status.routeHeader",
            plan.route_header
        );
    }
    out.push_str(&render_plan(&plan));
    Ok(out)
}

pub fn render_plan(plan: &Plan) -> String {
    let mut out = String::new();
    for line in plan
        .skipped
        .iter()
        .map(|s| format!("skipped service {s}"))
        .chain(plan.ignored_pods.iter().map(|p| format!("ignored pod {p}")))
    {
        let _ = writeln!(out, "# {line}");
    }
    let mut docs = vec![to_yaml(&plan.wasm_plugin)];
    for (vs, dr) in plan.virtual_services.iter().zip(&plan.destination_rules) {
        docs.push(to_yaml(vs));
        docs.push(to_yaml(dr));
    }
    out.push_str(&docs.join("---\n"));
    out
}

fn to_yaml<T: serde::Serialize>(object: &T) -> String {
    serde_yaml::to_string(object).unwrap_or_default()
}

/// The fallback walk for a request with `env` (or none) to `service`, as the filter makes
/// it with the plan's plugin config.
pub fn explain(
    ns: &NamespaceSnapshot,
    settings: &Settings,
    env: Option<&str>,
    service: &str,
) -> Result<String, PlanError> {
    let plan = plan_namespace(&ns.virtual_environment, &ns.snapshot, settings)?;
    let config = &plan.plugin_config;
    let namespace = ns
        .virtual_environment
        .metadata
        .namespace
        .clone()
        .unwrap_or_default();
    let fqdn = if service.contains('.') {
        service.to_owned()
    } else {
        service_fqdn(service, &namespace, &settings.cluster_domain)
    };
    let mut out = String::new();
    let table = RouteTable::new(config);
    let Some(envs) = service_key_of_fqdn(&fqdn).and_then(|key| table.service(key)) else {
        let _ = writeln!(
            out,
            "service {fqdn} is not routed by env (it has pods in fewer than two envs and none in the default subset, or it was skipped): requests go to the whole service"
        );
        return Ok(out);
    };
    let listed = config.services.get(&fqdn).cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "service {fqdn} has ready pods in: {}",
        listed.join(", ")
    );
    let (steps, choice) = table.explain(envs, env);
    match env {
        Some(env) => {
            let _ = writeln!(
                out,
                "request env {env}, walking up by {:?}:",
                config.splitter
            );
        }
        None => {
            let _ = writeln!(out, "request without env");
        }
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
    if let (false, Some(default)) = (walked, &config.default_subset) {
        let mark = match (table.has(envs, default), choice) {
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
    let route_header = config.route_header.to_ascii_lowercase();
    let _ = match choice {
        Choice::Exact(e) => writeln!(out, "chosen: {e} (exact)\nroute header: {route_header}: {e}"),
        Choice::Fallback(e) => writeln!(out, "chosen: {e} (fallback)\nroute header: {route_header}: {e}"),
        Choice::Default(e) => writeln!(out, "chosen: {e} (default subset)\nroute header: {route_header}: {e}"),
        Choice::None => writeln!(
            out,
            "chosen: nothing; the route header is removed and the VirtualService's default route applies"
        ),
    };
    Ok(out)
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

    #[test]
    fn explain_shows_the_walk_and_the_choice() {
        let text = explain(&seed(), &settings(), Some("dev.proj1.user1"), "app-b").unwrap();
        assert!(
            text.contains("service app-b.default.svc.cluster.local has ready pods in: dev\n"),
            "{text}"
        );
        assert!(text.contains("  dev.proj1.user1 "), "{text}");
        assert!(text.contains("chosen: dev (fallback)"), "{text}");
        let text = explain(&seed(), &settings(), None, "app-a").unwrap();
        assert!(text.contains("chosen: dev (default subset)"), "{text}");
        let text = explain(&seed(), &settings(), Some("dev"), "nope").unwrap();
        assert!(text.contains("not routed by env"), "{text}");
    }

    #[test]
    fn render_is_yaml_of_every_object() {
        let text = render(&seed(), &settings()).unwrap();
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        // WasmPlugin + (VirtualService + DestinationRule) x 3 services.
        assert_eq!(docs.len(), 7);
        assert_eq!(docs[0]["kind"], "WasmPlugin");
        assert_eq!(docs[1]["kind"], "VirtualService");
        assert_eq!(docs[2]["kind"], "DestinationRule");
        assert_eq!(docs[1]["apiVersion"], "networking.istio.io/v1");
    }
}
