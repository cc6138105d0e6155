//! What istiod makes of the controller's Gateway API routes for a sidecar, so that the
//! local mesh routes as a cluster would (istio/istio `pilot/pkg/config/kube/gateway`,
//! read for docs/design/ambient-and-gateway-api.md):
//!
//! - the HTTPRoutes and GRPCRoutes of a namespace whose parent is the same Service become
//!   one mesh VirtualService (`mergeHTTPRoutes`): their rules concatenated, routes in
//!   creation order, then by name (all are created together here, so by name);
//! - each rule is split into one route per match (`for _, m := range matches`);
//! - the routes are sorted, stably, by `sortHTTPRoutes`: a route without a match last;
//!   then path match type (Exact > PathPrefix > RegularExpression > none), longer path,
//!   a method match, more header matches;
//! - a backend is the Service named (its cluster), a `RequestHeaderModifier` removes its
//!   headers (the route's `request_headers_to_remove`);
//! - routes bound to a Gateway become that gateway's virtual hosts for their hostnames,
//!   their rules merged and sorted the same way (`convertVirtualService` per gateway and
//!   host); the mesh has one gateway Envoy, so every Gateway parent is its.

use std::cmp::Ordering;

use virtual_env_controller::gamma::{MeshRoute, RouteMatch, RouteRule};

/// One route of the virtual host istiod builds for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoute {
    /// Exact header matches (name, value).
    pub headers: Vec<(String, String)>,
    /// The Service the route sends to.
    pub backend: String,
    /// Headers removed before the request leaves.
    pub remove: Vec<String>,
}

/// The routes of service `service` from `routes` (the namespace's), in the order istiod
/// gives them; empty when no route has the Service as parent.
pub fn service_routes(service: &str, routes: &[MeshRoute]) -> Vec<ServiceRoute> {
    let ours: Vec<&MeshRoute> = routes
        .iter()
        .filter(|r| {
            r.spec()
                .parent_refs
                .iter()
                .any(|p| p.kind == "Service" && p.group.is_empty() && p.name == service)
        })
        .collect();
    merged(ours)
}

/// The gateway's routes for service `service` from `routes` (the namespace's): the
/// hostnames of its routes bound to a Gateway, and their routes in istiod's order; `None`
/// when the service is not entered through a Gateway API Gateway.
pub fn gateway_entry(
    service: &str,
    routes: &[MeshRoute],
) -> Option<(Vec<String>, Vec<ServiceRoute>)> {
    let ours: Vec<&MeshRoute> = routes
        .iter()
        .filter(|r| !r.is_mesh() && r.service() == service)
        .filter(|r| r.spec().parent_refs.iter().any(|p| p.kind == "Gateway"))
        .collect();
    let hostnames = ours.first()?.spec().hostnames.clone();
    Some((hostnames, merged(ours)))
}

/// One virtual host's routes from `routes`: merged and sorted as istiod does.
fn merged(mut ours: Vec<&MeshRoute>) -> Vec<ServiceRoute> {
    ours.sort_by_key(|r| r.name());
    let mut split: Vec<(Option<&RouteMatch>, &RouteRule)> = Vec::new();
    for rule in ours.iter().flat_map(|r| &r.spec().rules) {
        if rule.matches.is_empty() {
            split.push((None, rule));
        } else {
            split.extend(rule.matches.iter().map(|m| (Some(m), rule)));
        }
    }
    split.sort_by(|a, b| precedence(a.0, b.0));
    split
        .into_iter()
        .map(|(m, rule)| ServiceRoute {
            headers: m
                .map(|m| {
                    m.headers
                        .iter()
                        .map(|h| (h.name.clone(), h.value.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            backend: rule
                .backend_refs
                .first()
                .map(|b| b.name.clone())
                .unwrap_or_default(),
            remove: rule
                .filters
                .iter()
                .filter(|f| f.type_ == "RequestHeaderModifier")
                .flat_map(|f| f.request_header_modifier.remove.clone())
                .collect(),
        })
        .collect()
}

/// `sortHTTPRoutes`' order (Less: `a` first). The controller writes no method match.
fn precedence(a: Option<&RouteMatch>, b: Option<&RouteMatch>) -> Ordering {
    let (a, b) = match (a, b) {
        (None, None) => return Ordering::Equal,
        (None, Some(_)) => return Ordering::Greater,
        (Some(_), None) => return Ordering::Less,
        (Some(a), Some(b)) => (a, b),
    };
    let rank = |m: &RouteMatch| match m.path.as_ref().map(|p| p.type_.as_str()) {
        Some("Exact") => 3,
        Some("PathPrefix") => 2,
        Some("RegularExpression") => 1,
        _ => -1,
    };
    let length = |m: &RouteMatch| m.path.as_ref().map_or(0, |p| p.value.len());
    rank(b)
        .cmp(&rank(a))
        .then(length(b).cmp(&length(a)))
        .then(b.headers.len().cmp(&a.headers.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtual_env_controller::gamma::{
        BackendRef, HTTPRoute, HeaderMatch, HttpRouteSpec, ParentRef, PathMatch, RouteSpec,
    };

    fn rule(header: Option<&str>, backend: &str) -> RouteRule {
        RouteRule {
            matches: vec![RouteMatch {
                path: Some(PathMatch {
                    type_: "PathPrefix".into(),
                    value: "/".into(),
                }),
                headers: header
                    .map(|v| HeaderMatch {
                        type_: "Exact".into(),
                        name: "x-route".into(),
                        value: v.into(),
                    })
                    .into_iter()
                    .collect(),
            }],
            filters: Vec::new(),
            backend_refs: vec![BackendRef {
                group: String::new(),
                kind: "Service".into(),
                name: backend.into(),
                port: 8080,
                weight: 1,
            }],
        }
    }

    fn route(name: &str, parent: &str, rules: Vec<RouteRule>) -> MeshRoute {
        MeshRoute::Http(HTTPRoute::new(
            name,
            HttpRouteSpec {
                route: RouteSpec {
                    parent_refs: vec![ParentRef {
                        group: String::new(),
                        kind: "Service".into(),
                        namespace: None,
                        name: parent.into(),
                        port: None,
                    }],
                    hostnames: Vec::new(),
                    rules,
                },
            },
        ))
    }

    #[test]
    fn header_matches_go_before_the_default_across_merged_routes() {
        // The default rule first in the first route, an env rule in a second route: istiod
        // merges and sorts them, so the env rule is tried first.
        let routes = [
            route(
                "a",
                "a",
                vec![rule(None, "a-dev"), rule(Some("dev"), "a-dev")],
            ),
            route("a.2", "a", vec![rule(Some("dev.x"), "a-x")]),
            route("b", "b", vec![rule(None, "b")]),
        ];
        let got: Vec<(Vec<(String, String)>, String)> = service_routes("a", &routes)
            .into_iter()
            .map(|r| (r.headers, r.backend))
            .collect();
        let header = |v: &str| vec![("x-route".to_owned(), v.to_owned())];
        assert_eq!(
            got,
            [
                (header("dev"), "a-dev".to_owned()),
                (header("dev.x"), "a-x".to_owned()),
                (vec![], "a-dev".to_owned()),
            ]
        );
        assert!(service_routes("c", &routes).is_empty());
    }
}
