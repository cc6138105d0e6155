use super::fixtures::*;
use super::*;
use crate::objects::fields_v1;
use proptest::prelude::*;
use virtual_env_core::{Choice, RouteTable};

fn plan_of(ve: &VirtualEnvironment, snapshot: &Snapshot) -> Plan {
    plan_namespace(ve, snapshot, &settings()).unwrap()
}

/// Most Istio namespaces have DestinationRules of their own (mTLS for the whole
/// namespace, pools, outlier detection): Istio merges them with ours, so the service is
/// still routed by env, and the status says what theirs does. One with our name or a
/// subset of ours is a conflict: the service is left to it.
#[test]
fn a_users_destination_rule_lives_beside_ours_unless_it_takes_our_names() {
    let user_rule = |name: &str, host: &str, subsets: serde_json::Value| {
        Existing::from_json(
            Kind::DestinationRule,
            &serde_json::json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"host": host, "subsets": subsets,
                    "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"},
                        "outlierDetection": {"consecutive5xxErrors": 5}}}}),
            "default",
        )
    };
    let mut snapshot = seed_snapshot();
    snapshot.existing = vec![
        user_rule("mtls", "*.default.svc.cluster.local", serde_json::json!([])),
        user_rule(
            "c-pools",
            "app-c",
            serde_json::json!([{"name": "v1", "labels": {"version": "v1"}}]),
        ),
    ];
    let plan = plan_of(&seed_ve(), &snapshot);
    assert_eq!(
        plan.virtual_services.len(),
        3,
        "every service still routed: {:?}",
        plan.skipped
    );
    assert!(
        plan.skipped.iter().any(|s| s.starts_with(
            "app-a: routed by env beside DestinationRule mtls: its traffic policy is carried over"
        )),
        "{:?}",
        plan.skipped
    );
    assert!(plan.skipped.iter().any(|s| s.starts_with(
        "app-c: routed by env beside DestinationRule c-pools: Istio merges its subsets"
    )));
    // Istio applies only the most specific host's rule: ours (for app-a) would shadow the
    // namespace-wide mTLS and outlier detection unless it carries them.
    let rule_of = |name: &str| {
        plan.destination_rules
            .iter()
            .find(|d| d.name_any() == name)
            .unwrap_or_else(|| panic!("no rule {name}"))
            .spec
            .traffic_policy
            .clone()
    };
    let mtls = serde_json::json!({"tls": {"mode": "ISTIO_MUTUAL"},
        "outlierDetection": {"consecutive5xxErrors": 5}});
    assert_eq!(rule_of("app-a"), Some(mtls.clone()));
    assert_eq!(rule_of("app-b"), Some(mtls));
    // app-c has its own exact-host rule: Istio merges it with ours and its policy applies
    // alone, as it did before ours.
    assert_eq!(rule_of("app-c"), None);
    assert!(plan.skipped.iter().any(
        |s| s.starts_with("app-c: routed by env beside DestinationRule mtls: a more specific rule")
    ));
    // A subset of our name, or our object's name: left to the user.
    snapshot.existing = vec![
        user_rule(
            "c-envs",
            "app-c",
            serde_json::json!([{"name": "dev", "labels": {"virtual-env": "dev"}}]),
        ),
        user_rule(
            "app-a",
            "app-a.default.svc.cluster.local",
            serde_json::json!([]),
        ),
    ];
    let plan = plan_of(&seed_ve(), &snapshot);
    let routed: Vec<String> = plan.virtual_services.iter().map(|v| v.name_any()).collect();
    assert_eq!(routed, ["app-b"], "{:?}", plan.skipped);
    assert!(plan
        .skipped
        .iter()
        .any(|s| s.starts_with("app-c: left to DestinationRule c-envs")));
    // A rule scoped to some workloads or exported elsewhere cannot be merged with ours
    // without changing what it means: left to the user.
    let scoped = |name: &str, host: &str, field: &str, value: serde_json::Value| {
        Existing::from_json(
            Kind::DestinationRule,
            &serde_json::json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"host": host, field: value}}),
            "default",
        )
    };
    snapshot.existing = vec![
        scoped(
            "a-scoped",
            "app-a",
            "workloadSelector",
            serde_json::json!({"matchLabels": {"app": "app-a"}}),
        ),
        scoped("b-exported", "app-b", "exportTo", serde_json::json!(["."])),
    ];
    let plan = plan_of(&seed_ve(), &snapshot);
    let routed: Vec<String> = plan.virtual_services.iter().map(|v| v.name_any()).collect();
    assert_eq!(routed, ["app-c"], "{:?}", plan.skipped);
    // Exported to every namespace (`*`, as by default): merged like one without exportTo.
    snapshot.existing = vec![scoped(
        "all",
        "*.default.svc.cluster.local",
        "exportTo",
        serde_json::json!(["*"]),
    )];
    assert_eq!(plan_of(&seed_ve(), &snapshot).virtual_services.len(), 3);
}

/// Istio merges DestinationRules of one host, the oldest traffic policy first, and
/// expands only a short name or the FQDN: other spellings match no service and take
/// nothing from the wildcard rule that does apply.
#[test]
fn the_carried_policy_is_the_one_istio_would_have_applied() {
    let rule = |name: &str, created: &str, host: &str, policy: serde_json::Value| {
        Existing::from_json(
            Kind::DestinationRule,
            &serde_json::json!({"metadata": {"name": name, "namespace": "default",
                    "creationTimestamp": created},
                "spec": {"host": host, "trafficPolicy": policy}}),
            "default",
        )
    };
    let wildcard = "*.default.svc.cluster.local";
    let strict = serde_json::json!({"tls": {"mode": "ISTIO_MUTUAL"}});
    let pools = serde_json::json!({"connectionPool": {"tcp": {"maxConnections": 10}}});
    let mut snapshot = seed_snapshot();
    snapshot.existing = vec![
        // Listed newest first: the order the cache gives is no order.
        rule("newer", "2026-02-01T00:00:00Z", wildcard, pools.clone()),
        rule(
            "empty",
            "2025-01-01T00:00:00Z",
            wildcard,
            serde_json::Value::Null,
        ),
        rule("older", "2026-01-01T00:00:00Z", wildcard, strict.clone()),
        rule("mesh", "2020-01-01T00:00:00Z", "*.svc.cluster.local", pools),
        rule(
            "odd",
            "2020-01-01T00:00:00Z",
            "app-a.default",
            serde_json::json!({}),
        ),
    ];
    let plan = plan_of(&seed_ve(), &snapshot);
    for dr in &plan.destination_rules {
        assert_eq!(
            dr.spec.traffic_policy,
            Some(strict.clone()),
            "{}: {:?}",
            dr.name_any(),
            plan.skipped
        );
    }
    let note = |rule: &str| {
        plan.skipped
            .iter()
            .find(|s| {
                s.starts_with(&format!(
                    "app-a: routed by env beside DestinationRule {rule}:"
                ))
            })
            .unwrap_or_else(|| panic!("{rule}: {:?}", plan.skipped))
            .clone()
    };
    assert!(note("older").contains("carried over into ours"));
    assert!(note("newer").contains("merged by Istio with the other rules of its host"));
    assert!(note("empty").contains("merged by Istio with the other rules of its host"));
    assert!(note("mesh").contains("a more specific rule"));
    assert!(note("odd").contains("matches no service by this host spelling"));
}

#[test]
fn the_original_rule_annotation_is_reported_not_dropped_silently() {
    let mut snapshot = seed_snapshot();
    snapshot.services[0].metadata.annotations = Some(BTreeMap::from([(
        RULE_ANNOTATION.to_owned(),
        r#"{"Rewrite":{"Uri":"/prefix"},"Match":[{"Uri":{"Prefix":"/prefix"}}]}"#.to_owned(),
    )]));
    let plan = plan_of(&seed_ve(), &snapshot);
    assert_eq!(plan.virtual_services.len(), 3, "still routed by env");
    assert!(
        plan.skipped.iter().any(
            |s| s.starts_with("app-a: annotation kt-virtual-environment/rule is not supported")
        ),
        "{:?}",
        plan.skipped
    );
}

/// A table another namespace published (or one read back from a plugin object) that
/// would make this namespace's config invalid is left out, alone.
#[test]
fn a_peer_table_that_does_not_validate_is_left_out_alone() {
    let ve = seed_ve();
    let good = crate::peer_namespaces::published(&plan_of(&ve, &wide_snapshot(2, 2)).plugin_config);
    let mut bad = good.clone();
    // Its route header is this namespace's env header: the filter would refuse the config.
    bad.routing.route_header = "x-virtual-env".into();
    let snapshot = Snapshot {
        peers: BTreeMap::from([("bad".to_owned(), bad), ("good".to_owned(), good)]),
        ..seed_snapshot()
    };
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let peers: Vec<&String> = plan.plugin_config.peers.keys().collect();
    assert_eq!(peers, ["good"]);
    plan.plugin_config.validate().unwrap();
    assert!(
        plan.skipped
            .iter()
            .any(|s| s.starts_with("calls into namespace bad are not routed by env")),
        "{:?}",
        plan.skipped
    );
}

/// Other namespaces' tables that would push the config over the limit are dropped,
/// the namespace's own routing kept, and the status says so.
#[test]
fn peers_that_do_not_fit_leave_the_own_routing_in_force() {
    let ve = seed_ve();
    let own = plan_of(&ve, &seed_snapshot());
    let own_bytes = stored_bytes(&own.wasm_plugin.spec.plugin_config);
    let big =
        crate::peer_namespaces::published(&plan_of(&ve, &wide_snapshot(50, 20)).plugin_config);
    let snapshot = Snapshot {
        peers: BTreeMap::from([("big".to_owned(), big.clone())]),
        ..seed_snapshot()
    };
    let roomy = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    assert_eq!(roomy.plugin_config.peers["big"], big.routing);
    let tight = Settings {
        max_plugin_config_bytes: own_bytes + 100,
        ..settings()
    };
    let plan = plan_namespace(&ve, &snapshot, &tight).unwrap();
    assert!(plan.plugin_config.peers.is_empty());
    assert_eq!(
        plan.wasm_plugin.spec.plugin_config,
        own.wasm_plugin.spec.plugin_config
    );
    assert!(
        plan.skipped
            .iter()
            .any(|s| s.starts_with("calls into other namespaces are not routed by env")),
        "{:?}",
        plan.skipped
    );
}

#[test]
fn a_large_namespace_gets_the_compact_table_which_reads_back_the_same() {
    // 300 services x 20 envs of 30 characters: ~200 KB plain, over the threshold.
    let snapshot = wide_snapshot(300, 20);
    let plan = plan_of(&seed_ve(), &snapshot);
    let written = &plan.wasm_plugin.spec.plugin_config;
    assert!(plan.plugin_config.to_json().len() > COMPACT_ABOVE_BYTES);
    assert_eq!(
        written["services"],
        serde_json::json!({}),
        "plain table written"
    );
    assert_eq!(written["envNames"].as_array().unwrap().len(), 20);
    let bytes = written.to_string().len();
    assert!(
        bytes * 3 < plan.plugin_config.to_json().len(),
        "{bytes} bytes"
    );
    assert_eq!(plugin_config_of(written).unwrap(), plan.plugin_config);
    // What the filter parses is the same table.
    let parsed = PluginConfig::from_json(written.to_string().as_bytes()).unwrap();
    assert_eq!(parsed, plan.plugin_config);
}

#[test]
fn a_small_namespace_keeps_the_plain_table() {
    let plan = plan_of(&seed_ve(), &seed_snapshot());
    let written = &plan.wasm_plugin.spec.plugin_config;
    assert!(written["services"].is_object());
    assert!(written.get("envNames").is_none());
}

#[test]
fn the_stored_size_counts_the_managed_fields_server_side_apply_adds() {
    let config = serde_json::json!({"a": 1, "b": {"c": [1, 2]}, "d": []});
    let fields = r#"{"f:a":{},"f:b":{"f:c":{}},"f:d":{}}"#;
    assert_eq!(fields_v1(&config).to_string(), fields);
    assert_eq!(
        stored_bytes(&config),
        config.to_string().len() + fields.len() + 256
    );
    // Counted without building it, escapes included.
    for value in [
        serde_json::json!({}),
        serde_json::json!({"q\"uote": {"\u{e9}": 1, "tab\t": {"x": {}}}, "b": 2}),
        config.clone(),
    ] {
        assert_eq!(
            stored_bytes(&value),
            value.to_string().len() + fields_v1(&value).to_string().len() + 256,
            "{value}"
        );
    }
    // A services table: every FQDN is written twice.
    let plan = plan_of(&seed_ve(), &wide_snapshot(100, 3));
    let written = &plan.wasm_plugin.spec.plugin_config;
    let plain = written.to_string().len();
    assert!(stored_bytes(written) > plain + 100 * "svc-0000.default.svc.cluster.local".len());
}

/// At the boundary: a config whose own bytes fit but whose stored object, with the
/// managed-fields entry, would not, is refused before the API server refuses it.
#[test]
fn a_config_that_fits_only_without_its_managed_fields_is_refused() {
    let ve = seed_ve();
    let snapshot = wide_snapshot(60, 3);
    let plan = plan_of(&ve, &snapshot);
    let written = &plan.wasm_plugin.spec.plugin_config;
    let plain = written.to_string().len();
    let stored = stored_bytes(written);
    let at = |max| Settings {
        max_plugin_config_bytes: max,
        ..settings()
    };
    assert!(plan_namespace(&ve, &snapshot, &at(stored)).is_ok());
    let err = plan_namespace(&ve, &snapshot, &at(stored - 1)).unwrap_err();
    assert!(matches!(err, PlanError::ConfigTooLarge { .. }), "{err}");
    assert!(plain < stored - 1, "the config itself would have fit");
}

#[test]
fn a_config_over_the_limit_is_reported_and_nothing_is_planned() {
    let settings = Settings {
        max_plugin_config_bytes: 4_000,
        extension_api: Default::default(),
        ..settings()
    };
    let err = plan_namespace(&seed_ve(), &wide_snapshot(40, 5), &settings).unwrap_err();
    assert!(
        matches!(err, PlanError::ConfigTooLarge { max: 4_000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was changed"), "{err}");
}

fn vs<'a>(plan: &'a Plan, name: &str) -> &'a VirtualService {
    plan.virtual_services
        .iter()
        .find(|v| v.name_any() == name)
        .unwrap_or_else(|| panic!("no VirtualService {name}"))
}

fn dr<'a>(plan: &'a Plan, name: &str) -> &'a DestinationRule {
    plan.destination_rules
        .iter()
        .find(|v| v.name_any() == name)
        .unwrap_or_else(|| panic!("no DestinationRule {name}"))
}

/// The route header a VirtualService's routes match.
fn plan_route_header(vs: &VirtualService) -> String {
    let name = vs.spec.http[0].matches[0].headers.keys().next().unwrap();
    assert!(name.starts_with("x-virtual-env-route-"), "{name}");
    name.clone()
}

/// (match value or "*", subset or "-") per route.
fn routes(vs: &VirtualService) -> Vec<(String, String)> {
    vs.spec
        .http
        .iter()
        .map(|r| {
            let m = r.matches.first().map_or("*".to_owned(), |m| {
                m.headers[&plan_route_header(vs)].exact.clone()
            });
            let s = r.route[0].destination.subset.clone().unwrap_or("-".into());
            (m, s)
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn the_seed_example() {
    let plan = plan_of(&seed_ve(), &seed_snapshot());
    let proj1 = SubsetNames::new(["dev.proj1"])
        .get("dev.proj1")
        .unwrap()
        .to_owned();
    assert_eq!(
        routes(vs(&plan, "app-a")),
        pairs(&[("dev", "dev"), ("dev.proj1", &proj1), ("*", "dev")])
    );
    assert_eq!(
        routes(vs(&plan, "app-b")),
        pairs(&[("dev", "dev"), ("*", "dev")])
    );
    assert_eq!(
        vs(&plan, "app-a").spec.hosts,
        ["app-a.default.svc.cluster.local"]
    );
    let subsets = &dr(&plan, "app-c").spec.subsets;
    assert_eq!(subsets.len(), 2);
    assert_eq!(subsets[1].name, proj1);
    assert_eq!(subsets[1].labels["virtual-env"], "dev.proj1");
    assert_eq!(
        plan.plugin_config.services["app-b.default.svc.cluster.local"],
        ["dev"]
    );
    assert_eq!(
        plan.plugin_config.services["app-a.default.svc.cluster.local"],
        ["dev", "dev.proj1"]
    );
    assert_eq!(
        plan.envs,
        BTreeSet::from(["dev".into(), "dev.proj1".into()])
    );
    // The WasmPlugin carries the same plugin config, which the filter accepts.
    let config =
        PluginConfig::from_json(plan.wasm_plugin.spec.plugin_config.to_string().as_bytes())
            .unwrap();
    assert_eq!(config, plan.plugin_config);
    assert!(config.auto_inject);
    assert_eq!(plan.wasm_plugin.spec.fail_strategy, "FAIL_OPEN");
    assert!(plan.wasm_plugin.labels().contains_key(MANAGED_BY_LABEL));
}

#[test]
fn the_route_header_has_a_suffix_and_never_leaves_the_calling_sidecar() {
    let plan = plan_of(&seed_ve(), &seed_snapshot());
    let name = plan.route_header.clone();
    assert!(name.starts_with("x-virtual-env-route-"), "{name}");
    assert_eq!(plan.plugin_config.route_header, name);
    assert_eq!(
        plan.plugin_config.cluster_domain.as_deref(),
        Some("cluster.local")
    );
    for vs in &plan.virtual_services {
        assert_eq!(plan_route_header(vs), name);
        for route in &vs.spec.http {
            let remove = &route.headers.as_ref().unwrap().request.remove;
            assert_eq!(remove, &[name.clone(), "x-virtual-env-route".to_owned()]);
        }
    }
    // Offline, without a recorded one, the stand-in is stable; a recorded one is kept.
    assert_eq!(plan_of(&seed_ve(), &seed_snapshot()).route_header, name);
    let recorded = seed_ve().with_route_header([0; ROUTE_HEADER_SUFFIX_LEN]);
    let plan = plan_of(&recorded, &seed_snapshot());
    assert_eq!(plan.route_header, "x-virtual-env-route-aaaaaaaaaaaa");
}

#[test]
fn three_levels_walk_to_the_nearest_ancestor() {
    let mut snapshot = seed_snapshot();
    snapshot
        .pods
        .push(pod("app-c-user1", "app-c", Some("dev.proj1.user1"), true));
    let plan = plan_of(&seed_ve(), &snapshot);
    let table = RouteTable::new(&plan.plugin_config);
    let env = Some("dev.proj1.user1");
    for (svc, want) in [
        ("app-a", Choice::Fallback("dev.proj1")),
        ("app-b", Choice::Fallback("dev")),
        ("app-c", Choice::Exact("dev.proj1.user1")),
    ] {
        let service = table.service(&format!("{svc}.default")).unwrap();
        assert_eq!(table.choose(service, env), want, "{svc}");
    }
    assert_eq!(dr(&plan, "app-c").spec.subsets.len(), 3);
}

#[test]
fn a_pod_no_service_selects_adds_an_env_but_no_route() {
    let mut snapshot = seed_snapshot();
    snapshot
        .pods
        .push(pod("job", "batch", Some("dev.proj2"), true));
    let plan = plan_of(&seed_ve(), &snapshot);
    assert!(plan.envs.contains("dev.proj2"));
    assert_eq!(plan.virtual_services.len(), 3);
    assert!(plan
        .plugin_config
        .services
        .values()
        .all(|envs| !envs.contains(&"dev.proj2".to_owned())));
}

#[test]
fn a_service_with_one_env_needs_routing_only_when_it_is_the_default() {
    let without_default = ve("envLabel: {name: virtual-env}");
    let plan = plan_of(&without_default, &seed_snapshot());
    // B has only dev and there is no default subset: nothing to route.
    let names: Vec<_> = plan.virtual_services.iter().map(|v| v.name_any()).collect();
    assert_eq!(names, ["app-a", "app-c"]);
    // Without a default subset the default route goes to the whole service.
    assert_eq!(routes(vs(&plan, "app-a")).last().unwrap().1, "-");

    let mut snapshot = seed_snapshot();
    snapshot.pods.retain(|p| p.name_any() != "app-a-dev");
    let plan = plan_of(&seed_ve(), &snapshot);
    // A now has only dev.proj1 pods, which is not the default: nothing to route.
    assert!(plan
        .virtual_services
        .iter()
        .all(|v| v.name_any() != "app-a"));
    // B has only dev, the default: routed, so that unlabelled pods get nothing.
    assert_eq!(
        routes(vs(&plan, "app-b")),
        pairs(&[("dev", "dev"), ("*", "dev")])
    );
}

#[test]
fn only_ready_pods_count() {
    let mut snapshot = seed_snapshot();
    snapshot
        .pods
        .push(pod("app-b-proj1", "app-b", Some("dev.proj1"), false));
    snapshot.pods.push(terminating(pod(
        "app-b-proj2",
        "app-b",
        Some("dev.proj2"),
        true,
    )));
    let plan = plan_of(&seed_ve(), &snapshot);
    assert_eq!(dr(&plan, "app-b").spec.subsets.len(), 1);
    assert_eq!(
        plan.plugin_config.services["app-b.default.svc.cluster.local"],
        ["dev"]
    );
    assert!(!plan.envs.contains("dev.proj2"));
}

#[test]
fn colliding_env_spellings_get_distinct_subsets() {
    let snapshot = Snapshot {
        services: vec![service("app")],
        pods: ["dev", "dev.x", "dev-x", "dev_x"]
            .iter()
            .map(|env| pod(&format!("app-{env}"), "app", Some(env), true))
            .collect(),
        ..Snapshot::default()
    };
    let plan = plan_of(&seed_ve(), &snapshot);
    let subsets: BTreeSet<_> = dr(&plan, "app")
        .spec
        .subsets
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(subsets.len(), 4, "{subsets:?}");
    assert!(subsets.contains("dev-x"));
}

#[test]
fn invalid_env_labels_are_ignored_and_reported() {
    let mut snapshot = seed_snapshot();
    snapshot
        .pods
        .push(pod("app-b-bad", "app-b", Some("dev..x"), true));
    let plan = plan_of(&seed_ve(), &snapshot);
    assert_eq!(dr(&plan, "app-b").spec.subsets.len(), 1);
    assert_eq!(plan.ignored_pods.len(), 1);
    assert!(
        plan.ignored_pods[0].starts_with("app-b-bad:"),
        "{:?}",
        plan.ignored_pods
    );
}

#[test]
fn a_user_owned_virtual_service_is_left_alone_and_reported() {
    let mut snapshot = seed_snapshot();
    snapshot.existing.push(Existing::from_json(
        Kind::VirtualService,
        &serde_json::json!({"metadata": {"name": "app-a", "namespace": NS}, "spec": {"hosts": ["app-a"]}}),
        NS,
    ));
    let plan = plan_of(&seed_ve(), &snapshot);
    assert!(plan
        .virtual_services
        .iter()
        .all(|v| v.name_any() != "app-a"));
    assert!(plan
        .destination_rules
        .iter()
        .all(|v| v.name_any() != "app-a"));
    assert!(!plan
        .plugin_config
        .services
        .contains_key("app-a.default.svc.cluster.local"));
    assert_eq!(plan.skipped.len(), 1);
    assert!(plan.skipped[0].starts_with("app-a: "), "{:?}", plan.skipped);
}

#[test]
fn services_that_cannot_be_routed_by_subset_are_left_alone_and_reported() {
    let mut snapshot = seed_snapshot();
    let spec = |s: &mut Service| s.spec.as_mut().unwrap().clone();
    for svc in &mut snapshot.services {
        let mut new = spec(svc);
        match svc.name_any().as_str() {
            "app-a" => new.cluster_ip = Some("None".into()),
            "app-b" => {
                new.type_ = Some("ExternalName".into());
                new.external_name = Some("b.example.com".into());
            }
            _ => new.ports.as_mut().unwrap()[0].name = Some("tcp-db".into()),
        }
        svc.spec = Some(new);
    }
    let plan = plan_of(&seed_ve(), &snapshot);
    assert!(plan.virtual_services.is_empty());
    assert!(plan.plugin_config.services.is_empty());
    let skipped = plan.skipped.join("\n");
    assert!(skipped.contains("app-a: a headless service"), "{skipped}");
    assert!(
        skipped.contains("app-b: an ExternalName service"),
        "{skipped}"
    );
    assert!(skipped.contains("app-c: no HTTP or gRPC port"), "{skipped}");
}

/// A pod without the env label is in no subset. With a default subset, the default
/// route goes to that subset, so such a pod gets no traffic of a routed service; without
/// one, the default route is the whole service, so it gets the requests whose env
/// matches no subset, like every other pod.
#[test]
fn pods_without_the_env_label_with_and_without_a_default_subset() {
    let mut snapshot = seed_snapshot();
    snapshot
        .pods
        .push(pod("app-a-unlabelled", "app-a", None, true));
    let with_default = plan_of(&seed_ve(), &snapshot);
    assert_eq!(routes(vs(&with_default, "app-a")).last().unwrap().1, "dev");
    let subsets = &dr(&with_default, "app-a").spec.subsets;
    assert!(subsets.iter().all(|s| s.labels.contains_key("virtual-env")));
    assert_eq!(with_default.envs.len(), 2);
    let without = plan_of(&ve("envLabel: {name: virtual-env}"), &snapshot);
    assert_eq!(routes(vs(&without, "app-a")).last().unwrap().1, "-");
    // A service whose pods are all unlabelled has no env to route: left as it is.
    let mut unlabelled = seed_snapshot();
    unlabelled.services.push(service("app-u"));
    unlabelled.pods.push(pod("app-u-1", "app-u", None, true));
    let plan = plan_of(&seed_ve(), &unlabelled);
    assert!(plan
        .virtual_services
        .iter()
        .all(|v| v.name_any() != "app-u"));
    assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
}

#[test]
fn an_invalid_spec_is_an_error_that_says_why() {
    let bad = ve("envLabel: {splitter: '::'}");
    let err = plan_namespace(&bad, &seed_snapshot(), &settings()).unwrap_err();
    assert!(err.to_string().contains("splitter"), "{err}");
    // An alias entry of neither form is read (the watch of every VirtualEnvironment
    // must not fail on it) and reported.
    let bad = ve("envHeader: {aliases: [x-env, {nmae: cookie}]}");
    let err = plan_namespace(&bad, &seed_snapshot(), &settings()).unwrap_err();
    assert!(err.to_string().contains("envHeader.aliases"), "{err}");
    // A pattern the filter cannot match is an invalid spec too, naming the character.
    let bad = ve("envHeader: {aliases: [{name: cookie, pattern: '[a-z]+=(@)'}]}");
    let err = plan_namespace(&bad, &seed_snapshot(), &settings()).unwrap_err();
    assert!(err.to_string().contains("'['"), "{err}");
    // Both forms, as the original project's v1alpha2 wrote them, plan.
    let good = ve("envHeader: {aliases: [x-env, {name: cookie, pattern: '.*env=(@);?.*'}, {name: x-whole, pattern: ''}]}");
    let plan = plan_of(&good, &seed_snapshot());
    assert_eq!(plan.plugin_config.header_aliases, ["x-env", "x-whole"]);
    assert_eq!(plan.plugin_config.header_patterns[0].placeholder, "(@)");
}

#[test]
fn output_is_deterministic_whatever_the_input_order() {
    let a = plan_of(&seed_ve(), &seed_snapshot());
    let mut shuffled = seed_snapshot();
    shuffled.services.reverse();
    shuffled.pods.reverse();
    let b = plan_of(&seed_ve(), &shuffled);
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a.virtual_services).unwrap(),
        serde_json::to_string(&b.virtual_services).unwrap()
    );
}

#[test]
fn a_wasm_module_in_the_spec_overrides_the_served_one() {
    let ve = ve("wasmModule: {url: 'oci://registry.example/virtual-env:0.1.0'}");
    let plan = plan_of(&ve, &seed_snapshot());
    assert_eq!(
        plan.wasm_plugin.spec.url,
        "oci://registry.example/virtual-env:0.1.0"
    );
    assert_eq!(plan.wasm_plugin.spec.sha256, None);
}

proptest! {
    /// Every env with ready pods behind a routed service gets exactly one subset, and
    /// every route points at a subset of that service's DestinationRule.
    #[test]
    fn every_env_has_one_subset_and_every_route_a_target(
        pods in proptest::collection::vec(
            (0..4usize, proptest::sample::select(vec![
                "dev", "dev.p1", "dev.p1.u1", "dev-p1", "dev_p1", "qa", "Dev.P1", "dev.p2",
            ]), any::<bool>()),
            0..40,
        )
    ) {
        let snapshot = Snapshot {
            services: (0..4).map(|i| service(&format!("svc{i}"))).collect(),
            pods: pods
                .iter()
                .enumerate()
                .map(|(i, (svc, env, ready))| pod(&format!("p{i}"), &format!("svc{svc}"), Some(env), *ready))
                .collect(),
            ..Snapshot::default()
        };
        let plan = plan_of(&seed_ve(), &snapshot);
        for (vs, dr) in plan.virtual_services.iter().zip(&plan.destination_rules) {
            prop_assert_eq!(vs.name_any(), dr.name_any());
            let subsets: BTreeSet<&str> = dr.spec.subsets.iter().map(|s| s.name.as_str()).collect();
            prop_assert_eq!(subsets.len(), dr.spec.subsets.len(), "subset names collide");
            let svc = vs.name_any();
            let want: BTreeSet<&str> = pods
                .iter()
                .filter(|(s, _, ready)| *ready && format!("svc{s}") == svc)
                .map(|(_, env, _)| *env)
                .collect();
            let envs: BTreeSet<&str> = dr.spec.subsets.iter().map(|s| s.labels["virtual-env"].as_str()).collect();
            prop_assert_eq!(envs, want);
            for route in &vs.spec.http {
                if let Some(subset) = &route.route[0].destination.subset {
                    prop_assert!(subsets.contains(subset.as_str()), "route to missing subset {}", subset);
                }
            }
        }
    }
}

/// A namespace whose pods of one env run in Istio's ambient mode (the CNI's annotation, as
/// a captured pod carries it): routes as HTTPRoutes (or VirtualServices when asked), the
/// filter in the waypoint of the service that names one (with the ambient workloads'
/// envs), and the services without a waypoint named in the status.
#[test]
fn pods_in_ambient_mode_are_named_in_the_status() {
    let mut snapshot = seed_snapshot();
    for pod in snapshot
        .pods
        .iter_mut()
        .filter(|p| p.name_any() == "app-a-proj1")
    {
        pod.metadata.annotations = Some(BTreeMap::from([(
            crate::plan::AMBIENT_REDIRECTION.to_owned(),
            "enabled".to_owned(),
        )]));
    }
    // Captured but not redirected yet: not ambient.
    for pod in snapshot
        .pods
        .iter_mut()
        .filter(|p| p.name_any() == "app-c-dev")
    {
        pod.metadata.annotations = Some(BTreeMap::from([(
            crate::plan::AMBIENT_REDIRECTION.to_owned(),
            "pending".to_owned(),
        )]));
    }
    snapshot.services[0].metadata.labels = Some(BTreeMap::from([(
        "istio.io/use-waypoint".to_owned(),
        "waypoint".to_owned(),
    )]));
    // Ambient pods: routes are written as HTTPRoutes by default, which sidecars (and
    // waypoints) apply; VirtualServices when the spec says so.
    let forced = ve("envHeader: {name: X-Virtual-Env, autoInject: true}\nenvLabel: {name: virtual-env, splitter: ., defaultSubset: dev}\nrouting: {api: VirtualService}");
    let plan = plan_of(&forced, &snapshot);
    assert_eq!(plan.routing_api, RoutingApi::VirtualService);
    assert_eq!(
        plan.virtual_services.len(),
        3,
        "still routed for sidecar callers"
    );
    let plan = plan_of(&seed_ve(), &snapshot);
    assert_eq!(plan.routing_api, RoutingApi::HttpRoute);
    assert!(plan.virtual_services.is_empty());
    let routed: BTreeSet<String> = plan.mesh_routes.iter().map(|r| r.service()).collect();
    assert_eq!(routed.len(), 3, "still routed for sidecar callers");
    // app-a is behind its waypoint, where the filter runs; app-b and app-c have none.
    let notes: Vec<&str> = plan
        .skipped
        .iter()
        .filter(|s| s.contains("ambient"))
        .map(|s| &**s)
        .collect();
    assert_eq!(notes.len(), 2, "{:?}", plan.skipped);
    assert!(notes[0].starts_with(
        "app-b: pods of the namespace run in Istio's ambient mode, but the service has no waypoint"
    ));
    assert!(notes[1].starts_with("app-c: "));
    assert_eq!(plan.waypoint_plugins.len(), 1);
    let waypoint = &plan.waypoint_plugins[0];
    assert_eq!(
        waypoint.metadata.name.as_deref(),
        Some("virtual-env-waypoint-waypoint")
    );
    assert!(waypoint.spec.selector.is_none() && waypoint.spec.traffic_selectors.is_empty());
    assert_eq!(waypoint.spec.target_refs[0].name, "waypoint");
    let config = crate::objects::plugin_config_of(&waypoint.spec.plugin_config).unwrap();
    assert_eq!(config.direction, Some(Direction::Waypoint));
    // The ambient pod's workload (a pod made by hand: its own name) and its env.
    assert_eq!(
        config.workloads,
        BTreeMap::from([("default/app-a-proj1".to_owned(), "dev.proj1".to_owned())])
    );
    assert_eq!(config.services, plan.plugin_config.services);
    // The annotation survives the caches' slimming; other annotations do not.
    let mut cached = snapshot.pods[3].clone();
    cached
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("other".into(), "x".repeat(100));
    crate::caches::slim_pod(&mut cached);
    assert!(crate::plan::in_ambient_mode(&cached));
    assert_eq!(cached.metadata.annotations.unwrap().len(), 1);
}
