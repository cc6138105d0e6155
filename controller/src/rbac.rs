//! Every Kubernetes API call the controller makes, as RBAC rules: the one list that the
//! reconciler's API tests check each call against, and that `deploy/rbac.yaml` must grant
//! exactly (checked by the manifest tests). Least privilege, by construction.

/// What the controller does to one resource, cluster-wide or in its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiUse {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// Only these objects (RBAC `resourceNames`); empty for any. A `create` names no
    /// object when it is authorized, so it is never limited by name.
    pub names: &'static [&'static str],
}

const fn uses(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
) -> ApiUse {
    ApiUse {
        group,
        resource,
        verbs,
        names: &[],
    }
}

/// The leader election Lease: the one object the controller writes in its own namespace.
pub const LEASE_NAME: &str = "virtual-env-controller";

/// Granted by the ClusterRole. `list`/`watch` come from the controller's watches and the
/// reconciler's reads; server-side apply is authorized as `patch`, and as `create` when it
/// creates the object.
pub const CLUSTER: &[ApiUse] = &[
    uses("", "pods", &["list", "watch"]),
    // Their labels only (metadata requests): `istio.io/use-waypoint` (ambient mode).
    uses("", "namespaces", &["list", "watch"]),
    // Written: the Services of one env of a service that routes written as Gateway API
    // send to (`gamma.rs`); only those it labelled and owns are patched or deleted (a
    // delete is preconditioned on the UID it read). RBAC cannot narrow this by label.
    uses(
        "",
        "services",
        &["list", "watch", "create", "patch", "delete"],
    ),
    // `patch`: the finalizer that deletes gateway plugin objects with the VirtualEnvironment.
    uses(
        "env.alibaba.com",
        "virtualenvironments",
        &["list", "watch", "patch"],
    ),
    uses("env.alibaba.com", "virtualenvironments/status", &["patch"]),
    uses(
        "networking.istio.io",
        "virtualservices",
        &["list", "watch", "create", "patch", "delete"],
    ),
    uses(
        "networking.istio.io",
        "destinationrules",
        &["list", "watch", "create", "patch", "delete"],
    ),
    uses(
        "extensions.istio.io",
        "wasmplugins",
        &["list", "watch", "create", "patch", "delete"],
    ),
    // Istio 1.30's successor of WasmPlugin, written instead where the cluster serves it.
    uses(
        "extensions.istio.io",
        "trafficextensions",
        &["list", "watch", "create", "patch", "delete"],
    ),
    // Gateway API's mesh routes (GAMMA), where the cluster serves them: written for
    // `spec.routing.api: HTTPRoute`, and read everywhere (a user's route holds a service).
    uses(
        "gateway.networking.k8s.io",
        "httproutes",
        &["list", "watch", "create", "patch", "delete"],
    ),
    uses(
        "gateway.networking.k8s.io",
        "grpcroutes",
        &["list", "watch", "create", "patch", "delete"],
    ),
    // Read only: a Gateway's selector names the pods that get its plugin object.
    uses("networking.istio.io", "gateways", &["list", "watch"]),
    // Read only: Gateway API Gateways, their listeners (which namespaces and hosts they
    // take routes from), where routes are HTTPRoutes.
    uses("gateway.networking.k8s.io", "gateways", &["list", "watch"]),
    // Which namespaces a shared gateway's owner admits (read); the status says whether its
    // edge guard is applied.
    uses("env.alibaba.com", "gatewaypolicies", &["list", "watch"]),
    uses("env.alibaba.com", "gatewaypolicies/status", &["patch"]),
    // Events on the VirtualEnvironments: what changed in their status (`events.rs`).
    uses("events.k8s.io", "events", &["create"]),
];

/// Granted by the read-only ClusterRole `virtual-env-viewer` (`deploy/viewer-rbac.yaml`):
/// what `virtual-env status` reads.
pub const VIEWER: &[ApiUse] = &[
    uses("env.alibaba.com", "virtualenvironments", &["get", "list"]),
    uses("", "pods", &["list"]),
    uses("extensions.istio.io", "wasmplugins", &["list"]),
    uses("extensions.istio.io", "trafficextensions", &["list"]),
];

/// Granted by the Role in the controller's own namespace: leader election, on its own
/// Lease only (a compromised replica cannot take over other controllers' leases there).
pub const OWN_NAMESPACE: &[ApiUse] = &[
    ApiUse {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "update"],
        names: &[LEASE_NAME],
    },
    uses("coordination.k8s.io", "leases", &["create"]),
];

/// The (group, resource, verbs) an API request needs: what RBAC checks it against.
pub fn required(method: &str, path_and_query: &str) -> Option<(String, String, Vec<&'static str>)> {
    required_of(method, path_and_query).map(|(group, resource, verbs, _)| (group, resource, verbs))
}

/// [`required`], and the object's name when the request names one.
fn required_of(
    method: &str,
    path_and_query: &str,
) -> Option<(String, String, Vec<&'static str>, Option<String>)> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, name) = match rest {
        [resource] => (resource.to_string(), None),
        [resource, name] => (resource.to_string(), Some(name.to_string())),
        [resource, name, sub] => (format!("{resource}/{sub}"), Some(name.to_string())),
        _ => return None,
    };
    let named = name.is_some();
    let watch = query.split('&').any(|kv| kv == "watch=true");
    let verbs = match (method, named) {
        ("GET", false) if watch => vec!["watch"],
        ("GET", false) => vec!["list"],
        ("GET", true) => vec!["get"],
        ("POST", _) => vec!["create"],
        ("PUT", _) => vec!["update"],
        ("DELETE", _) => vec!["delete"],
        // Apply may create the object; plain patches are not used.
        ("PATCH", _) => vec!["patch", "create"],
        _ => return None,
    };
    Some((group.to_owned(), resource, verbs, name))
}

/// Whether `rules` grant a request.
pub fn permits(rules: &[ApiUse], method: &str, path_and_query: &str) -> bool {
    let Some((group, resource, verbs, name)) = required_of(method, path_and_query) else {
        return false;
    };
    // Status applies and the finalizer patch never create: the VirtualEnvironment exists,
    // only `patch` is checked.
    let verbs: Vec<&str> = if resource.ends_with("/status") || resource == "virtualenvironments" {
        verbs.into_iter().filter(|v| *v != "create").collect()
    } else {
        verbs
    };
    verbs.iter().all(|verb| {
        rules.iter().any(|r| {
            r.group == group
                && r.resource == resource
                && r.verbs.contains(verb)
                && (r.names.is_empty()
                    || (*verb != "create" && name.as_deref().is_some_and(|n| r.names.contains(&n))))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_rbac_verbs() {
        assert_eq!(
            required("GET", "/api/v1/namespaces/default/pods?"),
            Some(("".into(), "pods".into(), vec!["list"]))
        );
        assert_eq!(
            required(
                "GET",
                "/apis/env.alibaba.com/v1alpha1/virtualenvironments?watch=true&timeoutSeconds=290"
            ),
            Some((
                "env.alibaba.com".into(),
                "virtualenvironments".into(),
                vec!["watch"]
            ))
        );
        assert_eq!(
            required(
                "PATCH",
                "/apis/networking.istio.io/v1/namespaces/default/virtualservices/app-a?&force=true"
            ),
            Some((
                "networking.istio.io".into(),
                "virtualservices".into(),
                vec!["patch", "create"]
            ))
        );
        assert_eq!(
            required(
                "PATCH",
                "/apis/env.alibaba.com/v1alpha1/namespaces/default/virtualenvironments/x/status"
            ),
            Some((
                "env.alibaba.com".into(),
                "virtualenvironments/status".into(),
                vec!["patch", "create"]
            ))
        );
    }

    #[test]
    fn the_rules_permit_what_is_listed_and_nothing_else() {
        assert!(permits(
            CLUSTER,
            "DELETE",
            "/apis/networking.istio.io/v1/namespaces/d/destinationrules/a"
        ));
        assert!(permits(
            CLUSTER,
            "PATCH",
            "/apis/env.alibaba.com/v1alpha1/namespaces/d/virtualenvironments/x/status"
        ));
        assert!(permits(
            CLUSTER,
            "DELETE",
            "/apis/extensions.istio.io/v1alpha1/namespaces/d/wasmplugins/a"
        ));
        assert!(!permits(
            CLUSTER,
            "DELETE",
            "/apis/env.alibaba.com/v1alpha1/namespaces/d/virtualenvironments/x"
        ));
        assert!(!permits(
            CLUSTER,
            "PATCH",
            "/apis/networking.istio.io/v1/namespaces/d/gateways/g"
        ));
        assert!(!permits(CLUSTER, "GET", "/api/v1/namespaces/d/secrets"));
        assert!(permits(
            OWN_NAMESPACE,
            "PUT",
            &format!("/apis/coordination.k8s.io/v1/namespaces/v/leases/{LEASE_NAME}")
        ));
        assert!(!permits(
            OWN_NAMESPACE,
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/v/leases/another-controllers"
        ));
        assert!(permits(
            OWN_NAMESPACE,
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/v/leases?"
        ));
    }
}
