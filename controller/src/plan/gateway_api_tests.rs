//! Planning with routes written as Gateway API (`gamma.rs`).

use super::fixtures::*;
use super::*;
use crate::gamma::ENV_SERVICE_OF_LABEL;
use crate::transition::{transition, Step};

fn http_route_ve() -> VirtualEnvironment {
    ve("envHeader: {name: X-Virtual-Env, autoInject: true}\nenvLabel: {name: virtual-env, splitter: ., defaultSubset: dev}\nrouting: {api: HTTPRoute}")
}

fn planned(ve: &VirtualEnvironment, snapshot: &Snapshot) -> Plan {
    plan_namespace(ve, snapshot, &settings()).unwrap()
}

/// The objects of `plan` as the API returns them: with a uid and this owner, so that a
/// later plan prunes what it no longer needs.
fn applied(ve: &VirtualEnvironment, plan: &Plan) -> (Vec<Existing>, Vec<Service>) {
    let owned = |mut meta: ObjectMeta| {
        meta.uid = Some(format!("uid-{}", meta.name.clone().unwrap_or_default()));
        meta.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                uid: ve.uid().unwrap(),
                ..Default::default()
            },
        ]);
        meta
    };
    let existing_of = |kind, mut object: serde_json::Value| {
        let meta: ObjectMeta = serde_json::from_value(object["metadata"].take()).unwrap();
        object["metadata"] = serde_json::to_value(owned(meta)).unwrap();
        Existing::from_json(kind, &object, NS)
    };
    let mut existing: Vec<Existing> = plan
        .mesh_routes
        .iter()
        .map(|r| existing_of(r.kind(), r.to_value()))
        .collect();
    existing.extend(
        plan.virtual_services
            .iter()
            .map(|vs| existing_of(Kind::VirtualService, serde_json::to_value(vs).unwrap())),
    );
    existing.extend(
        plan.destination_rules
            .iter()
            .map(|dr| existing_of(Kind::DestinationRule, serde_json::to_value(dr).unwrap())),
    );
    let services = plan
        .env_services
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.metadata = owned(s.metadata);
            // What the API server adds.
            s.spec.as_mut().unwrap().cluster_ip = Some("10.0.0.7".into());
            s
        })
        .collect();
    (existing, services)
}

fn with_uid(mut ve: VirtualEnvironment) -> VirtualEnvironment {
    ve.metadata.uid = Some("ve-uid".into());
    ve
}

#[test]
fn the_seed_routed_as_httproutes_gets_a_service_per_env_and_no_istio_routes() {
    let plan = planned(&http_route_ve(), &seed_snapshot());
    assert_eq!(plan.routing_api, RoutingApi::HttpRoute);
    assert!(plan.virtual_services.is_empty() && plan.destination_rules.is_empty());
    // app-a and app-c in dev and dev.proj1, app-b in dev (the default subset).
    let of = |svc: &str| {
        plan.env_services
            .iter()
            .filter(|s| s.labels()[ENV_SERVICE_OF_LABEL] == svc)
            .count()
    };
    assert_eq!((of("app-a"), of("app-b"), of("app-c")), (2, 1, 2));
    let names: Vec<String> = plan.mesh_routes.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["app-a", "app-b", "app-c"]);
    // The filter's table is the same whatever the API.
    let vs_plan = planned(&seed_ve(), &seed_snapshot());
    assert_eq!(plan.plugin_config.services, vs_plan.plugin_config.services);
    // Every rule matches the route header in force (as the VirtualServices do).
    let a = plan.mesh_routes[0].spec();
    assert_eq!(a.rules.len(), 3);
    assert!(a.rules[1..]
        .iter()
        .all(|r| r.matches[0].headers[0].name == plan.route_header));
}

#[test]
fn httproute_asked_of_a_cluster_without_gateway_api_is_an_error_and_ambient_pods_fall_back() {
    let mut no_gateway_api = settings();
    no_gateway_api.gateway_api = None;
    let err = plan_namespace(&http_route_ve(), &seed_snapshot(), &no_gateway_api).unwrap_err();
    assert!(matches!(err, PlanError::GatewayApiMissing), "{err}");
    let mut snapshot = seed_snapshot();
    snapshot.pods[0].metadata.annotations = Some(BTreeMap::from([(
        AMBIENT_REDIRECTION.to_owned(),
        "enabled".to_owned(),
    )]));
    let plan = plan_namespace(&seed_ve(), &snapshot, &no_gateway_api).unwrap();
    assert_eq!(plan.routing_api, RoutingApi::VirtualService);
    assert!(
        plan.skipped
            .iter()
            .any(|s| s.starts_with("routing: ") && s.contains("does not serve Gateway API")),
        "{:?}",
        plan.skipped
    );
}

#[test]
fn a_users_route_for_the_service_or_a_taken_name_leaves_the_service_alone() {
    let user_route = |name: &str, parent: &str| {
        Existing::from_json(
            Kind::HttpRoute,
            &serde_json::json!({
                "metadata": {"name": name, "namespace": NS},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent}],
                         "rules": [{"backendRefs": [{"name": parent, "port": 8080}]}]}
            }),
            NS,
        )
    };
    let mut snapshot = seed_snapshot();
    snapshot.existing.push(user_route("canary", "app-a"));
    // A route bound only to a Gateway (north-south) holds nothing in the mesh.
    snapshot.existing.push(Existing::from_json(
        Kind::HttpRoute,
        &serde_json::json!({"metadata": {"name": "edge", "namespace": NS},
            "spec": {"parentRefs": [{"name": "public"}], "rules": []}}),
        NS,
    ));
    for ve in [http_route_ve(), seed_ve()] {
        let plan = planned(&ve, &snapshot);
        assert!(
            plan.skipped
                .iter()
                .any(|s| s.starts_with("app-a: left to HTTPRoute canary")),
            "{:?}",
            plan.skipped
        );
        assert!(!plan
            .plugin_config
            .services
            .keys()
            .any(|h| h.starts_with("app-a.")));
        assert!(plan
            .plugin_config
            .services
            .keys()
            .any(|h| h.starts_with("app-c.")));
    }
    // Another's route named as ours, and a Service named as one of our env Services.
    let mut snapshot = seed_snapshot();
    snapshot.existing.push(user_route("app-c", "app-b"));
    let taken = crate::gamma::env_service_name("app-a", "dev");
    snapshot.services.push(service(&taken));
    let plan = planned(&http_route_ve(), &snapshot);
    let skipped: Vec<&str> = plan.skipped.iter().map(|s| &**s).collect();
    assert!(
        skipped
            .iter()
            .any(|s| s.starts_with("app-a: the names of its env objects are taken: Service ")),
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|s| s.starts_with("app-b: left to HTTPRoute app-c")),
        "{skipped:?}"
    );
    assert!(
        skipped.iter().any(
            |s| s.starts_with("app-c: the names of its env objects are taken: HTTPRoute app-c")
        ),
        "{skipped:?}"
    );
}

#[test]
fn env_services_are_not_routed_and_switching_the_api_prunes_the_others_objects() {
    let ve = with_uid(http_route_ve());
    let first = planned(&ve, &seed_snapshot());
    let (existing, env_services) = applied(&ve, &first);
    let mut snapshot = seed_snapshot();
    snapshot.existing = existing;
    snapshot.services.extend(env_services);
    // Planned again over its own objects: the same plan, nothing pruned, nothing written.
    let again = planned(&ve, &snapshot);
    assert_eq!(again.env_services, first.env_services);
    assert_eq!(again.mesh_routes, first.mesh_routes);
    assert!(again.prune.is_empty(), "{:?}", again.prune);
    let owned = owned_in(&snapshot);
    let t = transition(&again, &owned);
    assert!(t.before.is_empty() && t.after.is_empty(), "{t:?}");
    // Back to VirtualServices: every route goes before any Service.
    let mut back = ve.clone();
    back.spec.routing = None;
    let plan = planned(&back, &snapshot);
    assert_eq!(plan.virtual_services.len(), 3);
    let pruned: Vec<(Kind, String)> = plan
        .prune
        .iter()
        .map(|e| (e.kind, e.name.clone()))
        .collect();
    assert_eq!(pruned.len(), 3 + 5, "{pruned:?}");
    let last_route = pruned.iter().rposition(|(k, _)| k.is_route()).unwrap();
    let first_service = pruned
        .iter()
        .position(|(k, _)| *k == Kind::Service)
        .unwrap();
    assert!(last_route < first_service, "{pruned:?}");
}

#[test]
fn a_leaving_env_keeps_its_rule_and_service_until_the_plugin_config_drops_it() {
    let ve = with_uid(http_route_ve());
    let before = planned(&ve, &seed_snapshot());
    let (existing, env_services) = applied(&ve, &before);
    let mut snapshot = seed_snapshot();
    snapshot.pods.retain(|p| p.name_any() != "app-a-proj1");
    snapshot.existing = existing;
    snapshot.services.extend(env_services);
    let now = planned(&ve, &snapshot);
    let owned = owned_in(&snapshot);
    let t = transition(&now, &owned);
    // Before the plugin config: app-a's route is what it was (the union), so nothing.
    assert!(t.before.is_empty(), "{:?}", t.before);
    let after: Vec<String> = t.after.iter().map(Step::describe).collect();
    let proj1 = crate::gamma::env_service_name("app-a", "dev.proj1");
    assert_eq!(
        after,
        [
            "HTTPRoute app-a".to_owned(),
            format!("deleting Service {proj1}"),
        ]
    );
    // An arriving env: its Service and its rule before the plugin config.
    let t = transition(&before, &owned_of(&ve, &now));
    let before_steps: Vec<String> = t.before.iter().map(Step::describe).collect();
    assert_eq!(
        before_steps,
        [format!("Service {proj1}"), "HTTPRoute app-a".to_owned()]
    );
    assert!(t.after.is_empty(), "{:?}", t.after);
}

/// What `snapshot` holds of this VirtualEnvironment's, as the reconciler reads it: its
/// Istio and Gateway API objects and its env Services.
fn owned_in(snapshot: &Snapshot) -> Vec<Existing> {
    let (env_services, _) = env_services_of(snapshot, NS, Some("ve-uid"));
    snapshot
        .existing
        .iter()
        .cloned()
        .chain(env_services)
        .collect()
}

fn owned_of(ve: &VirtualEnvironment, plan: &Plan) -> Vec<Existing> {
    let (existing, services) = applied(ve, plan);
    existing
        .into_iter()
        .chain(
            services
                .iter()
                .map(|s| Existing::from_json(Kind::Service, &serde_json::to_value(s).unwrap(), NS)),
        )
        .collect()
}

#[test]
fn more_envs_than_a_route_holds_split_and_a_shard_only_the_union_needs_is_pruned_after() {
    let ve = with_uid(http_route_ve());
    let snapshot_with = |envs: usize| {
        let mut snapshot = Snapshot {
            services: vec![service("app-a")],
            ..Snapshot::default()
        };
        for i in 0..envs {
            let env = format!("dev.e{i:02}");
            snapshot
                .pods
                .push(pod(&format!("a-{i}"), "app-a", Some(&env), true));
        }
        snapshot.pods.push(pod("a-dev", "app-a", Some("dev"), true));
        snapshot
    };
    // 15 envs and dev: 16 env rules and the default, 17 rules: two routes.
    let before = planned(&ve, &snapshot_with(15));
    let names: Vec<String> = before.mesh_routes.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["app-a", "app-a.2"]);
    // Down to 14 and dev: one route; the second stays (union) until the plugin config no
    // longer selects the leaving env, then goes.
    let mut snapshot = snapshot_with(14);
    let (existing, services) = applied(&ve, &before);
    snapshot.existing = existing;
    snapshot.services.extend(services);
    let now = planned(&ve, &snapshot);
    assert_eq!(now.mesh_routes.len(), 1);
    let t = transition(&now, &owned_of(&ve, &before));
    assert!(
        t.before.is_empty(),
        "the union is what is there: {:?}",
        t.before
    );
    let after: Vec<String> = t.after.iter().map(Step::describe).collect();
    assert!(
        after.contains(&"deleting HTTPRoute app-a.2".to_owned()),
        "{after:?}"
    );
    assert!(
        after
            .iter()
            .any(|s| s.starts_with("deleting Service app-a-dev-e14")),
        "{after:?}"
    );
}

#[test]
fn the_default_api_is_decided_once_and_kept_as_pods_come_and_go() {
    let ambient = |mut snapshot: Snapshot| {
        snapshot.pods[0].metadata.annotations = Some(BTreeMap::from([(
            AMBIENT_REDIRECTION.to_owned(),
            "enabled".to_owned(),
        )]));
        snapshot
    };
    let ve = seed_ve();
    assert_eq!(
        planned(&ve, &ambient(seed_snapshot())).routing_api,
        RoutingApi::HttpRoute
    );
    // Recorded in the status, it holds when the ambient pod goes (and the other way).
    for (api, pods) in [
        (RoutingApi::HttpRoute, seed_snapshot()),
        (RoutingApi::VirtualService, ambient(seed_snapshot())),
    ] {
        let mut kept = ve.clone();
        kept.status = Some(crate::crd::VirtualEnvironmentStatus {
            routing_api: Some(api),
            ..Default::default()
        });
        assert_eq!(planned(&kept, &pods).routing_api, api);
    }
    // Applied by a controller from before `routingApi`: its VirtualServices stay.
    let mut older = ve.clone();
    older.status = Some(crate::crd::VirtualEnvironmentStatus {
        conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Applied".into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Default::default(),
            ),
            observed_generation: None,
        }],
        ..Default::default()
    });
    assert_eq!(
        planned(&older, &ambient(seed_snapshot())).routing_api,
        RoutingApi::VirtualService
    );
    // The spec decides over everything.
    let mut asked = older.clone();
    asked.spec.routing = Some(crate::crd::RoutingSpec {
        api: Some(RoutingApi::HttpRoute),
    });
    assert_eq!(
        planned(&asked, &seed_snapshot()).routing_api,
        RoutingApi::HttpRoute
    );
}

#[test]
fn a_services_export_to_reaches_its_env_services() {
    let ve = with_uid(http_route_ve());
    let before = planned(&ve, &seed_snapshot());
    let mut snapshot = seed_snapshot();
    let (existing, services) = applied(&ve, &before);
    snapshot.existing = existing;
    snapshot.services.extend(services);
    snapshot.services[0].metadata.annotations = Some(BTreeMap::from([(
        crate::gamma::EXPORT_TO_ANNOTATION.to_owned(),
        ".".to_owned(),
    )]));
    let now = planned(&ve, &snapshot);
    let t = transition(&now, &owned_of(&ve, &before));
    let written: Vec<String> = t.before.iter().map(Step::describe).collect();
    assert_eq!(written.len(), 2, "app-a's two env Services: {written:?}");
    assert!(
        written.iter().all(|w| w.starts_with("Service app-a-")),
        "{written:?}"
    );
}

/// Two (service, env) pairs whose Service names collide (only a 32-bit hash tells long
/// names apart; no collision was found among 400,000 x 400,000 names, so the names here
/// are made to collide): the second service is left alone, never routed to the first's
/// Service, and so is a service two of whose envs would share one.
#[test]
fn env_service_names_that_collide_leave_the_service_alone() {
    let named = |name: &str| {
        let mut s = service("app-a");
        s.metadata.name = Some(name.into());
        s
    };
    let objects = |names: &[&str]| RouteObjects::GatewayApi {
        services: names.iter().map(|n| named(n)).collect(),
        routes: Vec::new(),
    };
    let mut plan = planned(&http_route_ve(), &seed_snapshot());
    plan.env_services = vec![named("taken-0123abcd")];
    let skip = env_service_taken(
        &plan,
        &objects(&["free-1", "taken-0123abcd"]),
        &named("app-b"),
    )
    .unwrap();
    assert!(
        skip.starts_with("app-b: the name of its env Service taken-0123abcd"),
        "{skip}"
    );
    assert!(env_service_taken(&plan, &objects(&["twice", "twice"]), &named("app-c")).is_some());
    assert!(env_service_taken(&plan, &objects(&["free-1", "free-2"]), &named("app-c")).is_none());
}

/// A namespace enrolled in a waypoint gets its plugin object; once no service names the
/// waypoint (the label gone), the object it owns is pruned, and one of another owner
/// under that name is left alone.
#[test]
fn a_waypoints_plugin_object_goes_with_the_last_service_behind_it() {
    let ve = with_uid(seed_ve());
    let mut snapshot = seed_snapshot();
    snapshot.namespace_labels = BTreeMap::from([(
        crate::waypoint::USE_WAYPOINT.to_owned(),
        "waypoint".to_owned(),
    )]);
    let plan = planned(&ve, &snapshot);
    assert_eq!(plan.waypoint_plugins.len(), 1);
    let mut ours = plan.waypoint_plugins[0].clone();
    ours.metadata.uid = Some("wp-uid".into());
    ours.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            uid: ve.uid().unwrap(),
            ..Default::default()
        },
    ]);
    let existing = Existing::from_json(Kind::WasmPlugin, &serde_json::to_value(&ours).unwrap(), NS);
    let mut after = seed_snapshot();
    after.existing = vec![existing.clone()];
    let plan = planned(&ve, &after);
    assert!(plan.waypoint_plugins.is_empty());
    assert_eq!(plan.prune, vec![existing.clone()]);
    // Still enrolled: kept.
    snapshot.existing = vec![existing];
    assert!(planned(&ve, &snapshot).prune.is_empty());
}

/// Services whose waypoint is another namespace's: a plugin object in this namespace
/// attached to them by `targetRefs` of kind Service (as Istio 1.25+ finds it there), at
/// most 16 services to an object.
#[test]
fn services_behind_another_namespaces_waypoint_get_the_filter_by_service() {
    let mut snapshot = seed_snapshot();
    for i in 0..17 {
        let mut svc = service(&format!("svc-{i:02}"));
        svc.metadata.labels = Some(BTreeMap::from([
            (
                crate::waypoint::USE_WAYPOINT.to_owned(),
                "shared".to_owned(),
            ),
            (
                crate::waypoint::USE_WAYPOINT_NAMESPACE.to_owned(),
                "infra".to_owned(),
            ),
        ]));
        snapshot.services.push(svc);
    }
    let plan = planned(&seed_ve(), &snapshot);
    let names: Vec<String> = plan.waypoint_plugins.iter().map(|p| p.name_any()).collect();
    assert_eq!(
        names,
        [
            "virtual-env-services-waypoint",
            "virtual-env-services-waypoint.2"
        ]
    );
    let targets = &plan.waypoint_plugins[0].spec.target_refs;
    assert_eq!(targets.len(), 16);
    assert!(targets
        .iter()
        .all(|t| t.kind == "Service" && t.group.is_empty()));
    assert_eq!(plan.waypoint_plugins[1].spec.target_refs[0].name, "svc-16");
    assert!(!plan.skipped.iter().any(|s| s.contains("another namespace")));
}
