//! The order of writes from what the controller applied before to a new plan, so that no
//! request is ever routed to a subset that no longer exists (make before break).
//!
//! A sidecar picks an env from its plugin config, its route matches the env in the
//! VirtualService, and the route sends it to the DestinationRule's subset. Subsets and
//! routes for envs that arrive must exist before the plugin config selects them; those
//! for envs that leave must stay until it no longer does. So, per service:
//!
//! 1. before the plugin config: the DestinationRule and the VirtualService with the union
//!    of the old and the new subsets and routes;
//! 2. the WasmPlugin with the new plugin config;
//! 3. after it: the new VirtualService, then the new DestinationRule (only where they
//!    differ from the union), then the objects no longer needed, routes before subsets.
//!
//! Routes written as Gateway API (`gamma.rs`) go the same way: the envs' Services and the
//! routes with the union of the old and the new env rules before the plugin config; the
//! new routes, then the routes and Services no longer needed, after it.
//!
//! When a service's step 1 fails, its old entry of the plugin config is kept and its
//! step 3 is skipped; when the plugin config fails, no step 3 runs.
//!
//! A write whose object is already there as planned (the cached spec equals it) is left
//! out, so that a resync of an unchanged namespace writes nothing.

use std::collections::BTreeSet;

use kube::ResourceExt;
use virtual_env_core::PluginConfig;

use k8s_openapi::api::core::v1::Service;

use crate::existing::{Existing, Kind};
use crate::gamma::{split_rules, MeshRoute, RouteRule, ENV_SERVICE_OF_LABEL};
use crate::istio::{DestinationRule, HttpRoute, VirtualService};
use crate::plan::Plan;

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    DestinationRule(DestinationRule),
    VirtualService(VirtualService),
    /// The Service of one env of a service (Gateway API routing).
    EnvService(Box<Service>),
    /// An HTTPRoute or GRPCRoute.
    MeshRoute(MeshRoute),
    WasmPlugin,
    Prune(Existing),
}

impl Step {
    /// The service a step belongs to (`None` for the namespace-wide plugin).
    pub fn service(&self) -> Option<String> {
        match self {
            Step::DestinationRule(o) => Some(o.name_any()),
            Step::VirtualService(o) => Some(o.name_any()),
            Step::EnvService(o) => o.labels().get(ENV_SERVICE_OF_LABEL).cloned(),
            Step::MeshRoute(o) => Some(o.service()),
            Step::WasmPlugin => None,
            // A gateway route's service is in its name (`gamma::gateway_routes`).
            Step::Prune(e) if e.kind.is_route() && !e.mesh => {
                Some(crate::gamma::service_of_route_name(&e.name).to_owned())
            }
            // A mesh route's or an env Service's `hosts` is the service (`existing.rs`).
            Step::Prune(e) if e.kind.is_route() || e.kind == Kind::Service => {
                e.hosts.first().cloned()
            }
            Step::Prune(e) => Some(e.name.clone()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Step::DestinationRule(o) => format!("DestinationRule {}", o.name_any()),
            Step::VirtualService(o) => format!("VirtualService {}", o.name_any()),
            Step::EnvService(o) => format!("Service {}", o.name_any()),
            Step::MeshRoute(o) => format!("{} {}", o.kind().name(), o.name()),
            Step::WasmPlugin => "WasmPlugin".into(),
            Step::Prune(e) => format!("deleting {}", e.describe()),
        }
    }
}

/// The writes, in order, around the plugin config (see the module's comment).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    pub before: Vec<Step>,
    pub after: Vec<Step>,
}

/// The transition to `plan` from the objects of `owned` (those this VirtualEnvironment
/// applied before).
pub fn transition(plan: &Plan, owned: &[Existing]) -> Transition {
    let old = |kind: Kind, name: &str| owned.iter().find(|e| e.kind == kind && e.name == name);
    let mut t = Transition::default();
    let mut after_vss = Vec::new();
    let mut after_drs = Vec::new();
    for (vs, dr) in plan.virtual_services.iter().zip(&plan.destination_rules) {
        let name = dr.name_any();
        let dr_union = union_rule(dr, old(Kind::DestinationRule, &name));
        let vs_union = union_service(vs, old(Kind::VirtualService, &name));
        if dr_union != *dr {
            after_drs.push(Step::DestinationRule(dr.clone()));
        }
        if vs_union != *vs {
            after_vss.push(Step::VirtualService(vs.clone()));
        }
        if !already(&dr_union.spec, old(Kind::DestinationRule, &name)) {
            t.before.push(Step::DestinationRule(dr_union));
        }
        if !already(&vs_union.spec, old(Kind::VirtualService, &name)) {
            t.before.push(Step::VirtualService(vs_union));
        }
    }
    for service in &plan.env_services {
        let old = old(Kind::Service, &service.name_any());
        if !same_env_service(service, old) {
            t.before.push(Step::EnvService(Box::new(service.clone())));
        }
    }
    let mut after_routes = Vec::new();
    let mut prune_shards = Vec::new();
    for union in union_routes(&plan.mesh_routes, owned) {
        let planned = plan
            .mesh_routes
            .iter()
            .find(|r| r.kind() == union.kind() && r.name() == union.name());
        if !already(union.spec(), old(union.kind(), &union.name())) {
            t.before.push(Step::MeshRoute(union.clone()));
        }
        match planned {
            Some(planned) if *planned != union => {
                after_routes.push(Step::MeshRoute(planned.clone()))
            }
            Some(_) => {}
            // A shard only the union has goes with the prunes.
            None => {
                let value = union.to_value();
                let ns = value["metadata"]["namespace"].as_str().unwrap_or_default();
                let shard = Existing::from_json(union.kind(), &value, ns);
                if !plan
                    .prune
                    .iter()
                    .any(|e| e.kind == shard.kind && e.name == shard.name)
                {
                    prune_shards.push(Step::Prune(shard));
                }
            }
        }
    }
    t.after.extend(after_vss);
    t.after.extend(after_drs);
    t.after.extend(after_routes);
    t.after.extend(prune_shards);
    t.after.extend(plan.prune.iter().cloned().map(Step::Prune));
    t
}

/// Whether `old` (an env Service this VirtualEnvironment wrote) has every field of the
/// spec `new` sets as it sets it (the API server adds its own: `clusterIP`, ...), and the
/// same `exportTo` (see `Existing::from_json`).
fn same_env_service(new: &Service, old: Option<&Existing>) -> bool {
    let (Some(old), Ok(spec)) = (old, serde_json::to_value(&new.spec)) else {
        return false;
    };
    let export_to = new
        .annotations()
        .get(crate::gamma::EXPORT_TO_ANNOTATION)
        .map_or(serde_json::Value::Null, |v| v.as_str().into());
    old.spec["exportTo"] == export_to
        && spec.as_object().is_some_and(|fields| {
            fields
                .iter()
                .all(|(k, v)| old.spec["spec"].get(k) == Some(v))
        })
}

/// The planned routes with the env rules of the ones applied before that they no longer
/// have, per parent (a service, or one port of it), split again as planning splits them:
/// until the plugin config stops selecting a leaving env, its rule still sends to its
/// Service.
fn union_routes(planned: &[MeshRoute], owned: &[Existing]) -> Vec<MeshRoute> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < planned.len() {
        // The shards of one parent are consecutive, the first named without a shard number.
        let first = &planned[i];
        let parent = first.spec().parent_refs.clone();
        let shards: Vec<&MeshRoute> = planned[i..]
            .iter()
            // (Two services' gateway routes may have the same Gateways as parents.)
            .take_while(|r| {
                r.kind() == first.kind()
                    && r.spec().parent_refs == parent
                    && r.service() == first.service()
            })
            .collect();
        i += shards.len();
        let mut rules: Vec<RouteRule> =
            shards.iter().flat_map(|r| r.spec().rules.clone()).collect();
        let env_of = |rule: &RouteRule| {
            rule.matches
                .first()
                .and_then(|m| m.headers.first())
                .map(|h| (h.name.clone(), h.value.clone()))
        };
        let have: BTreeSet<(String, String)> = rules.iter().filter_map(env_of).collect();
        // Only the routes of this service are read back (`hosts` holds a mesh route's
        // Service parents; a gateway route's shards share its name): reading every route
        // for every service made a reconcile quadratic.
        let service = first.service();
        let (mesh, base) = (first.is_mesh(), first.name());
        let shard_of = |name: &str| {
            name == base
                || name
                    .strip_prefix(base.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|n| n.parse::<usize>().is_ok())
        };
        let leaving: Vec<RouteRule> = owned
            .iter()
            .filter(|e| e.kind == first.kind() && e.mesh == mesh)
            .filter(|e| match mesh {
                true => e.hosts.contains(&service),
                false => shard_of(&e.name),
            })
            .filter_map(|e| read_back_route(first, e))
            // A gateway route's shards are its by name, whatever Gateways they named.
            .filter(|old| !mesh || old.spec().parent_refs == parent)
            .flat_map(|old| old.spec().rules.clone())
            .filter(|rule| env_of(rule).is_some_and(|env| !have.contains(&env)))
            .collect();
        if leaving.is_empty() {
            out.extend(shards.into_iter().cloned());
            continue;
        }
        rules.extend(leaving);
        out.extend(split_rules(first, rules));
    }
    out
}

/// A route applied before, in the type of `like`; `None` if it no longer has the shape
/// the controller writes.
fn read_back_route(like: &MeshRoute, old: &Existing) -> Option<MeshRoute> {
    let value = serde_json::json!({"metadata": {"name": old.name}, "spec": old.spec});
    match like {
        MeshRoute::Http(_) => serde_json::from_value(value).ok().map(MeshRoute::Http),
        MeshRoute::Grpc(_) => serde_json::from_value(value).ok().map(MeshRoute::Grpc),
    }
}

/// Whether `old`, one of this VirtualEnvironment's objects, already has `spec`.
pub fn already<S: serde::Serialize>(spec: &S, old: Option<&Existing>) -> bool {
    old.is_some_and(|old| serde_json::to_value(spec).is_ok_and(|spec| spec == old.spec))
}

/// An object the controller applied before, in its own type; `None` if there is none or
/// it no longer has the shape the controller writes.
fn read_back<K: serde::de::DeserializeOwned>(old: Option<&Existing>) -> Option<K> {
    serde_json::from_value(serde_json::json!({"metadata": {}, "spec": old?.spec})).ok()
}

/// The new DestinationRule plus the subsets of the old one it no longer has.
fn union_rule(new: &DestinationRule, old: Option<&Existing>) -> DestinationRule {
    let mut union = new.clone();
    let Some(old) = read_back::<DestinationRule>(old) else {
        return union;
    };
    let have: BTreeSet<String> = union.spec.subsets.iter().map(|s| s.name.clone()).collect();
    union.spec.subsets.extend(
        old.spec
            .subsets
            .into_iter()
            .filter(|s| !have.contains(&s.name)),
    );
    union.spec.subsets.sort_by(|a, b| a.name.cmp(&b.name));
    union
}

/// The new VirtualService plus the env routes of the old one it no longer has, before
/// the default route.
fn union_service(new: &VirtualService, old: Option<&Existing>) -> VirtualService {
    let mut union = new.clone();
    let Some(old) = read_back::<VirtualService>(old) else {
        return union;
    };
    let have: BTreeSet<String> = union.spec.http.iter().map(|r| r.name.clone()).collect();
    let leaving: Vec<HttpRoute> = old
        .spec
        .http
        .into_iter()
        .filter(|r| !r.matches.is_empty() && !have.contains(&r.name))
        .collect();
    let default_at = union
        .spec
        .http
        .iter()
        .position(|r| r.matches.is_empty())
        .unwrap_or(union.spec.http.len());
    union.spec.http.splice(default_at..default_at, leaving);
    union
}

/// The plugin config to apply when the services in `failed` could not be brought to their
/// new routes: each keeps its entry of the config in force before (`previous`), or none.
pub fn keep_failed_services(
    config: &PluginConfig,
    previous: Option<&PluginConfig>,
    failed: &BTreeSet<String>,
    fqdn_of: impl Fn(&str) -> String,
) -> PluginConfig {
    let mut config = config.clone();
    for service in failed {
        let fqdn = fqdn_of(service);
        match previous.and_then(|p| p.services.get(&fqdn)) {
            Some(envs) => config.services.insert(fqdn, envs.clone()),
            None => config.services.remove(&fqdn),
        };
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::*;
    use crate::plan::{plan_namespace, Snapshot};

    fn plan(snapshot: &Snapshot) -> Plan {
        plan_namespace(&seed_ve(), snapshot, &settings()).unwrap()
    }

    /// What the controller applied for `plan`, as it reads it back.
    fn applied(plan: &Plan) -> Vec<Existing> {
        let mut out = Vec::new();
        for dr in &plan.destination_rules {
            let v = serde_json::to_value(dr).unwrap();
            out.push(Existing::from_json(Kind::DestinationRule, &v, NS));
        }
        for vs in &plan.virtual_services {
            let v = serde_json::to_value(vs).unwrap();
            out.push(Existing::from_json(Kind::VirtualService, &v, NS));
        }
        out
    }

    fn subsets(step: &Step) -> Vec<String> {
        match step {
            Step::DestinationRule(dr) => dr.spec.subsets.iter().map(|s| s.name.clone()).collect(),
            Step::VirtualService(vs) => vs.spec.http.iter().map(|r| r.name.clone()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn nothing_is_written_when_nothing_changed() {
        let now = plan(&seed_snapshot());
        let t = transition(&now, &applied(&now));
        assert!(t.before.is_empty(), "{:?}", t.before);
        assert!(t.after.is_empty(), "{:?}", t.after);
        // From nothing: every rule and route, in one step each.
        let t = transition(&now, &[]);
        assert_eq!(t.before.len(), 6);
        assert!(t.after.is_empty(), "{:?}", t.after);
    }

    #[test]
    fn a_leaving_env_keeps_its_subset_and_route_until_the_plugin_config_drops_it() {
        let before = plan(&seed_snapshot());
        let mut snapshot = seed_snapshot();
        snapshot.pods.retain(|p| p.name_any() != "app-a-proj1");
        let now = plan(&snapshot);
        let t = transition(&now, &applied(&before));
        let proj1 = before.destination_rules[0].spec.subsets[1].name.clone();
        // Before the plugin config, app-a's rule and routes must still have dev.proj1:
        // the union of old and new, which is what is there already, so nothing is written.
        let old = applied(&before);
        let union = union_rule(
            &now.destination_rules[0],
            old.iter()
                .find(|e| e.kind == Kind::DestinationRule && e.name == "app-a"),
        );
        assert!(union.spec.subsets.iter().any(|s| s.name == proj1));
        let routes = union_service(
            &now.virtual_services[0],
            old.iter()
                .find(|e| e.kind == Kind::VirtualService && e.name == "app-a"),
        );
        let names: Vec<&str> = routes.spec.http.iter().map(|r| r.name.as_str()).collect();
        assert!(
            names.contains(&format!("env-{proj1}").as_str()),
            "{names:?}"
        );
        assert_eq!(names.last(), Some(&"default"));
        assert!(
            !t.before
                .iter()
                .any(|s| s.service().as_deref() == Some("app-a")),
            "{:?}",
            t.before
        );
        // After it: the route goes first, then the subset.
        let after: Vec<String> = t.after.iter().map(Step::describe).collect();
        assert_eq!(after, ["VirtualService app-a", "DestinationRule app-a"]);
        assert!(!subsets(&t.after[1]).contains(&proj1));
    }

    #[test]
    fn an_arriving_env_gets_subset_and_route_before_the_plugin_config() {
        let mut snapshot = seed_snapshot();
        snapshot.pods.retain(|p| p.name_any() != "app-c-proj1");
        let before = plan(&snapshot);
        let now = plan(&seed_snapshot());
        let t = transition(&now, &applied(&before));
        let c: Vec<&Step> = t
            .before
            .iter()
            .filter(|s| s.service().as_deref() == Some("app-c"))
            .collect();
        assert_eq!(subsets(c[0]).len(), 2);
        assert!(t.after.is_empty());
    }

    #[test]
    fn a_failed_service_keeps_its_old_plugin_entry() {
        let before = plan(&seed_snapshot());
        let mut snapshot = seed_snapshot();
        snapshot.pods.retain(|p| p.name_any() != "app-a-proj1");
        let now = plan(&snapshot);
        let failed = BTreeSet::from(["app-a".to_owned()]);
        let fqdn = |s: &str| format!("{s}.default.svc.cluster.local");
        let config = keep_failed_services(
            &now.plugin_config,
            Some(&before.plugin_config),
            &failed,
            fqdn,
        );
        assert_eq!(config.services[&fqdn("app-a")], ["dev", "dev.proj1"]);
        let config = keep_failed_services(&now.plugin_config, None, &failed, fqdn);
        assert!(!config.services.contains_key(&fqdn("app-a")));
    }
}
