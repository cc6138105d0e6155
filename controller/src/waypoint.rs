//! Ambient mode: pods without sidecars, whose calls reach a service's waypoint (an Envoy
//! per namespace, or per service) when the service or its namespace names one
//! (`istio.io/use-waypoint`). The filter runs there with `direction: waypoint`: the plugin
//! object attaches to the waypoint's Gateway by `targetRefs` (waypoints ignore
//! `selector`), and its config carries the calling side's tables plus `workloads`, the env
//! of each ambient workload of the namespace by Istio's workload name, which is what the
//! waypoint knows of a caller (docs/design/ambient-and-gateway-api.md, sections 1 and 2).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;

use crate::workload::workload_name;

/// The label naming the waypoint that serves a service (or a namespace's services).
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Its namespace, where it is not the object's own (Istio 1.23+).
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// The namespace label that puts its pods in ambient mode.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// The group and kind of a waypoint, as `targetRefs` name it.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The waypoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
}

/// The waypoint that serves `service` of `namespace`: its own label, else its namespace's
/// (`none` opts out), as Istio resolves it (`fetchWaypointForTarget`: the object's label
/// wins).
pub fn waypoint_of(
    service: &Service,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<Waypoint> {
    let labels = service.labels();
    let (name, ns) = match labels.get(USE_WAYPOINT) {
        Some(name) => (name, labels.get(USE_WAYPOINT_NAMESPACE)),
        None => (
            namespace_labels.get(USE_WAYPOINT)?,
            namespace_labels.get(USE_WAYPOINT_NAMESPACE),
        ),
    };
    if name.is_empty() || name == "none" {
        return None;
    }
    Some(Waypoint {
        namespace: ns
            .filter(|n| !n.is_empty())
            .map_or_else(|| namespace.to_owned(), Clone::clone),
        name: name.clone(),
    })
}

/// Whether the namespace runs in ambient mode by its label.
pub fn ambient_namespace(namespace_labels: &BTreeMap<String, String>) -> bool {
    namespace_labels.get(DATAPLANE_MODE).map(String::as_str) == Some("ambient")
}

/// The waypoint's `workloads` table: `<namespace>/<workload>` -> env of the ambient pods
/// among `ready` (with their env). A workload whose pods are in more than one env, or
/// whose name the filter would not take (a `service.istio.io/workload-name` label that is
/// no workload name), is left out (and returned): its callers then get no env from it.
pub fn workload_envs<'p>(
    namespace: &str,
    ready: impl IntoIterator<Item = (&'p Pod, &'p str)>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut envs: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (pod, env) in ready {
        let workload = workload_name(pod);
        let key = format!("{namespace}/{workload}");
        if !virtual_env_core::config::is_workload_name(&workload) {
            envs.insert(key, None);
            continue;
        }
        let entry = envs.entry(key).or_insert_with(|| Some(env.to_owned()));
        if entry.as_deref() != Some(env) {
            *entry = None;
        }
    }
    let mut table = BTreeMap::new();
    let mut mixed = Vec::new();
    for (key, env) in envs {
        match env {
            Some(env) => {
                table.insert(key, env);
            }
            None => mixed.push(key),
        }
    }
    (table, mixed)
}

/// The plugin object name for waypoint `name` of the namespace.
pub fn plugin_name(waypoint: &str) -> String {
    format!("virtual-env-waypoint-{waypoint}")
}

/// `targetRefs` one plugin object may hold (Istio's CRD: maxItems 16).
pub const MAX_TARGET_REFS: usize = 16;

/// The name of the `index`th plugin object attached to the namespace's services whose
/// waypoint is another namespace's (no waypoint's object has this name: theirs start
/// `virtual-env-waypoint-`).
pub fn services_plugin_name(index: usize) -> String {
    match index {
        0 => "virtual-env-services-waypoint".into(),
        i => format!("virtual-env-services-waypoint.{}", i + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{pod, service};

    #[test]
    fn a_services_own_label_wins_over_its_namespaces_and_none_opts_out() {
        let ns = BTreeMap::from([(USE_WAYPOINT.to_owned(), "waypoint".to_owned())]);
        let mut svc = service("app-a");
        assert_eq!(
            waypoint_of(&svc, "default", &ns),
            Some(Waypoint {
                namespace: "default".into(),
                name: "waypoint".into()
            })
        );
        assert_eq!(waypoint_of(&svc, "default", &BTreeMap::new()), None);
        svc.metadata.labels = Some(BTreeMap::from([
            (USE_WAYPOINT.to_owned(), "reviews-wp".to_owned()),
            (USE_WAYPOINT_NAMESPACE.to_owned(), "shared".to_owned()),
        ]));
        assert_eq!(
            waypoint_of(&svc, "default", &ns),
            Some(Waypoint {
                namespace: "shared".into(),
                name: "reviews-wp".into()
            })
        );
        svc.metadata.labels = Some(BTreeMap::from([(
            USE_WAYPOINT.to_owned(),
            "none".to_owned(),
        )]));
        assert_eq!(waypoint_of(&svc, "default", &ns), None);
    }

    #[test]
    fn workloads_map_to_their_pods_env_unless_mixed() {
        let a = pod("app-a-proj1", "app-a", Some("dev.proj1"), true);
        let b1 = pod("app-b-1", "app-b", Some("dev"), true);
        let mut b2 = pod("app-b-2", "app-b", Some("dev.x"), true);
        // Two pods of one workload (the label names it) in two envs.
        b2.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert("service.istio.io/workload-name".into(), "app-b-1".into());
        let (table, mixed) =
            workload_envs("default", [(&a, "dev.proj1"), (&b1, "dev"), (&b2, "dev.x")]);
        assert_eq!(
            table,
            BTreeMap::from([("default/app-a-proj1".to_owned(), "dev.proj1".to_owned())])
        );
        assert_eq!(mixed, ["default/app-b-1"]);
        // A workload-name label the filter would not take is left out, not written.
        let mut odd = pod("odd", "app-c", Some("dev"), true);
        odd.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert("service.istio.io/workload-name".into(), "a b".into());
        let (table, left_out) = workload_envs("default", [(&odd, "dev")]);
        assert!(table.is_empty());
        assert_eq!(left_out, ["default/a b"]);
    }
}
