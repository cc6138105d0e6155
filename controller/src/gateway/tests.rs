use super::*;
use crate::existing::{Existing, Kind};
use crate::objects::{MANAGED_BY, MANAGED_BY_LABEL, OWNER_UID_LABEL};
use crate::plan::fixtures::{seed_ve, service};

fn annotated(name: &str, gateways: &str, hosts: &str) -> Service {
    let mut s = service(name);
    s.metadata.annotations = Some(BTreeMap::from([
        (GATEWAYS_ANNOTATION.to_owned(), gateways.to_owned()),
        (HOSTS_ANNOTATION.to_owned(), hosts.to_owned()),
    ]));
    s
}

#[test]
fn gateway_names_resolve_as_istio_reads_them() {
    let gw = |ns: &str, name: &str| {
        Some(GatewayName {
            namespace: ns.into(),
            name: name.into(),
            kind: GatewayKind::Istio,
        })
    };
    assert_eq!(
        GatewayName::parse("istio-system/ingress", "team"),
        gw("istio-system", "ingress")
    );
    assert_eq!(
        GatewayName::parse("demo-gateway", "team"),
        gw("team", "demo-gateway")
    );
    assert_eq!(GatewayName::parse("mesh", "team"), None);
    assert_eq!(GatewayName::parse("a/b/c", "team"), None);
    assert_eq!(GatewayName::parse("Istio/x", "team"), None);
}

#[test]
fn annotations_and_the_spec_add_up_and_bad_values_are_reported() {
    let mut ve = seed_ve();
    ve.spec.gateways = vec![crate::crd::GatewayEntry {
        service: "app-a".into(),
        gateways: vec!["istio-system/public".into()],
        hosts: vec!["A.example.com".into()],
    }];
    let services = [
        annotated("app-a", "demo-gateway, mesh,", "demo.com,test.com"),
        annotated("app-b", "", "only-hosts.example.com"),
        annotated("app-c", "bad/gateway/name", "*.example.com,not a host"),
        service("app-d"),
    ];
    let (exposures, problems) = exposures(&ve, &services, "default", GatewayKind::Istio);
    let a = &exposures["app-a"];
    let names: Vec<String> = a.gateways.iter().map(GatewayName::reference).collect();
    assert_eq!(names, ["default/demo-gateway", "istio-system/public"]);
    let hosts: Vec<&str> = a.hosts.iter().map(String::as_str).collect();
    assert_eq!(hosts, ["a.example.com", "demo.com", "test.com"]);
    assert!(!exposures.contains_key("app-b") && !exposures.contains_key("app-d"));
    assert!(!exposures.contains_key("app-c"), "no valid gateway left");
    let problems = problems.join("\n");
    assert!(
        problems.contains("app-b: hosts without a gateway"),
        "{problems}"
    );
    assert!(
        problems.contains("\"bad/gateway/name\" is not a gateway name"),
        "{problems}"
    );
    assert!(
        problems.contains("\"not a host\" is not a host name"),
        "{problems}"
    );
}

use crate::plan::fixtures::{ingress_policy, seed_exposed_through, settings, with_cluster};
use crate::plan::{plan_namespace, Snapshot};

fn object(kind: Kind, value: serde_json::Value) -> Existing {
    Existing::from_json(kind, &value, "default")
}

fn public_gateway() -> Existing {
    object(
        Kind::Gateway,
        serde_json::json!({"metadata": {"name": "public", "namespace": "istio-system"},
            "spec": {"selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["*"]}]}}),
    )
}

/// The seed's namespace with app-a exposed through `gateways`, the Gateway
/// `istio-system/public` on Istio's ingress gateway pods, and their owner's policy
/// admitting namespace `default` for any host.
fn exposed(gateways: &str) -> (VirtualEnvironment, Snapshot) {
    let mut snapshot = seed_exposed_through(gateways);
    snapshot.elsewhere.push(public_gateway());
    let mut ve = seed_ve();
    ve.metadata.uid = Some("ve-uid".into());
    let policy = ingress_policy(r#"[{namespace: default, hosts: ["*"]}]"#, "{mode: accept}");
    with_cluster(&mut snapshot, &ve, vec![policy]);
    (ve, snapshot)
}

fn route_of_app_a(plan: &crate::plan::Plan) -> &crate::istio::VirtualService {
    plan.virtual_services
        .iter()
        .find(|v| v.name_any() == "app-a")
        .unwrap()
}

#[test]
fn a_missing_gateway_is_bound_and_reported_but_gets_no_plugin() {
    let (ve, snapshot) = exposed("istio-system/public,istio-system/missing");
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let vs = route_of_app_a(&plan);
    assert_eq!(
        vs.spec.gateways,
        ["istio-system/missing", "istio-system/public", "mesh"]
    );
    let names: Vec<String> = plan.gateway_plugins.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["virtual-env.default.public"]);
    let plugin = &plan.gateway_plugins[0];
    let labels = plugin.labels();
    assert_eq!(labels[OWNER_UID_LABEL], "ve-uid");
    assert_eq!(labels[OWNER_NAMESPACE_LABEL], "default");
    assert!(
        plugin.owner_references().is_empty(),
        "no owner reference across namespaces"
    );
    assert!(
        plan.skipped
            .iter()
            .any(|s| s.starts_with("gateway istio-system/missing: not found")),
        "{:?}",
        plan.skipped
    );
}

#[test]
fn a_users_plugin_under_our_name_and_a_users_route_for_the_host_are_left_alone() {
    let (ve, mut snapshot) = exposed("istio-system/public");
    snapshot.elsewhere.push(object(
        Kind::WasmPlugin,
        serde_json::json!({"metadata": {"name": "virtual-env.default.public",
            "namespace": "istio-system"}, "spec": {}}),
    ));
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    assert!(plan.gateway_plugins.is_empty());
    assert!(plan.prune.is_empty(), "{:?}", plan.prune);
    assert!(plan
        .skipped
        .iter()
        .any(|s| s.contains("is not this VirtualEnvironment's")));

    let (ve, mut snapshot) = exposed("istio-system/public");
    snapshot.existing.push(object(
        Kind::VirtualService,
        serde_json::json!({"metadata": {"name": "front", "namespace": "default"},
            "spec": {"hosts": ["A.example.com"], "gateways": ["istio-system/public"]}}),
    ));
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let vs = route_of_app_a(&plan);
    assert!(
        vs.spec.gateways.is_empty(),
        "still routed in the mesh, not at the gateway"
    );
    assert_eq!(vs.spec.hosts, ["app-a.default.svc.cluster.local"]);
    assert!(plan.gateway_plugins.is_empty());
    assert!(plan
        .skipped
        .iter()
        .any(|s| s.contains("app-a: not exposed through gateways")
            && s.contains("VirtualService front")));
}

#[test]
fn a_gateway_plugin_no_longer_needed_is_pruned_only_if_this_ve_owns_it() {
    let (ve, mut snapshot) = exposed("");
    let ours = |uid: &str| {
        object(
            Kind::WasmPlugin,
            serde_json::json!({"metadata": {"name": "virtual-env.default.public",
                "namespace": "istio-system", "uid": "plugin-uid", "labels": {
                    MANAGED_BY_LABEL: MANAGED_BY, OWNER_UID_LABEL: uid,
                    OWNER_NAMESPACE_LABEL: "default"}}, "spec": {}}),
        )
    };
    snapshot.elsewhere.push(ours("ve-uid"));
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let pruned: Vec<(String, String)> = plan
        .prune
        .iter()
        .map(|e| (e.namespace.clone(), e.name.clone()))
        .collect();
    assert_eq!(
        pruned,
        [(
            "istio-system".to_owned(),
            "virtual-env.default.public".to_owned()
        )]
    );
    snapshot.elsewhere.pop();
    snapshot.elsewhere.push(ours("another-ve-uid"));
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    assert!(plan.prune.is_empty(), "{:?}", plan.prune);
}

#[test]
fn plugin_objects_of_a_namespace_are_recognised_by_label_or_name() {
    let none = BTreeMap::new();
    assert!(of_namespace("virtual-env.team.public", &none, "team"));
    assert!(!of_namespace("virtual-env.team-a.public", &none, "team"));
    assert!(!of_namespace("virtual-env.team", &none, "team"));
    let labelled = BTreeMap::from([(OWNER_NAMESPACE_LABEL.to_owned(), "team".to_owned())]);
    assert!(of_namespace("renamed", &labelled, "team"));
}

/// A tenant's own module runs in its own sidecars only: a plugin object in a shared
/// gateway's namespace always loads the controller's module, whatever the spec says.
#[test]
fn a_tenants_module_never_reaches_a_gateway_outside_its_namespace() {
    let (mut ve, mut snapshot) = exposed("istio-system/public,own-gateway");
    snapshot.elsewhere.push(object(
        Kind::Gateway,
        serde_json::json!({"metadata": {"name": "own-gateway", "namespace": "default"},
            "spec": {"selector": {"app": "own-gateway"},
                "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["./*"]}]}}),
    ));
    ve.spec.wasm_module = Some(crate::crd::WasmModule {
        url: "https://attacker.example/evil.wasm".into(),
        sha256: Some("0".repeat(64)),
    });
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let url_of = |ns: &str| {
        plan.gateway_plugins
            .iter()
            .find(|p| p.namespace().as_deref() == Some(ns))
            .map(|p| p.spec.url.clone())
            .unwrap()
    };
    assert_eq!(url_of("istio-system"), settings().wasm.url);
    assert_eq!(
        plan.gateway_plugins
            .iter()
            .find(|p| p.namespace().as_deref() == Some("istio-system"))
            .unwrap()
            .spec
            .sha256,
        settings().wasm.sha256
    );
    assert_eq!(url_of("default"), "https://attacker.example/evil.wasm");
    assert_eq!(
        plan.wasm_plugin.spec.url,
        "https://attacker.example/evil.wasm"
    );
    assert!(
        plan.skipped.iter().any(|s| s.contains(
            "spec.wasmModule applies in namespace default only; the plugin object in namespace istio-system loads the controller's module"
        )),
        "{:?}",
        plan.skipped
    );
}

use crate::gateway_admission::{GatewayAdmission, GatewayCluster};
use crate::plan::fixtures::gateway_pod;

fn plan_with(
    ve: &VirtualEnvironment,
    snapshot: &Snapshot,
    admission: GatewayAdmission,
) -> crate::plan::Plan {
    let settings = crate::plan::Settings {
        gateway_admission: admission,
        ..settings()
    };
    plan_namespace(ve, snapshot, &settings).unwrap()
}

fn skipped_with(plan: &crate::plan::Plan, text: &str) -> bool {
    plan.skipped.iter().any(|s| s.contains(text))
}

/// A tenant names a gateway whose pods serve every namespace (Istio's ingress gateway)
/// and nobody admitted it there: nothing is bound, nothing routed, and it is told why.
/// A cluster of one team opts out with `--gateway-admission open`.
#[test]
fn a_shared_gateway_admits_no_namespace_without_its_owners_policy() {
    let (ve, mut snapshot) = exposed("istio-system/public");
    with_cluster(&mut snapshot, &ve, vec![]);
    let plan = plan_with(&ve, &snapshot, GatewayAdmission::Policy);
    let vs = route_of_app_a(&plan);
    assert!(vs.spec.gateways.is_empty(), "not bound");
    assert_eq!(vs.spec.hosts, ["app-a.default.svc.cluster.local"]);
    assert!(plan.gateway_plugins.is_empty());
    assert!(
        skipped_with(&plan, "gateway istio-system/public: its pods in namespace istio-system serve other namespaces too, and no GatewayPolicy for them admits namespace default"),
        "{:?}",
        plan.skipped
    );
    let open = plan_with(&ve, &snapshot, GatewayAdmission::Open);
    assert_eq!(
        route_of_app_a(&open).spec.gateways,
        ["istio-system/public", "mesh"]
    );
    assert_eq!(open.gateway_plugins.len(), 1);
}

#[test]
fn a_policy_admits_only_the_namespaces_and_hosts_it_lists_and_sets_the_edge() {
    let (mut ve, mut snapshot) = exposed("istio-system/public");
    let other_ns = ingress_policy(r#"[{namespace: team-b, hosts: ["*"]}]"#, "");
    with_cluster(&mut snapshot, &ve, vec![other_ns]);
    let plan = plan_of_gw(&ve, &snapshot);
    assert!(plan.gateway_plugins.is_empty());
    assert!(
        skipped_with(&plan, "does not admit it for namespace default"),
        "{:?}",
        plan.skipped
    );
    let other_host = ingress_policy(r#"[{namespace: default, hosts: [b.example.com]}]"#, "");
    with_cluster(&mut snapshot, &ve, vec![other_host]);
    let plan = plan_of_gw(&ve, &snapshot);
    assert!(route_of_app_a(&plan).spec.gateways.is_empty());
    // Admitted: the policy's edge (default strip), not the tenant's.
    ve.spec.edge_trust = Some(crate::crd::EdgeTrustSpec {
        mode: crate::crd::EdgeTrustMode::Accept,
        allow: vec![],
        allow_trace: false,
    });
    let admits = ingress_policy(r#"[{namespace: default, hosts: ["*.example.com"]}]"#, "");
    with_cluster(&mut snapshot, &ve, vec![admits]);
    let plan = plan_of_gw(&ve, &snapshot);
    let config =
        crate::plan::plugin_config_of(&plan.gateway_plugins[0].spec.plugin_config).unwrap();
    assert_eq!(
        config.edge_trust, None,
        "the policy's edge guard judges, not the tenant's plugin"
    );
    assert!(skipped_with(
        &plan,
        "spec.edgeTrust is not applied there; GatewayPolicy ingressgateway sets its edge policy"
    ));
}

fn plan_of_gw(ve: &VirtualEnvironment, snapshot: &Snapshot) -> crate::plan::Plan {
    plan_with(ve, snapshot, GatewayAdmission::Policy)
}

/// Another namespace's VirtualEnvironment exposing `service` at `istio-system/public`
/// under `host`, created at `created` (seconds).
fn rival(ns: &str, created: i64, host: &str) -> (VirtualEnvironment, Service) {
    let mut ve = seed_ve();
    ve.metadata.namespace = Some(ns.into());
    ve.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
    ));
    let mut svc = annotated("shop", "istio-system/public", host);
    svc.metadata.namespace = Some(ns.into());
    (ve, svc)
}

fn cluster_with(
    snapshot: &Snapshot,
    ve: &VirtualEnvironment,
    rivals: &[(VirtualEnvironment, Service)],
    users: &[Existing],
    policies: Vec<crate::gateway_policy::GatewayPolicy>,
) -> std::sync::Arc<GatewayCluster> {
    let pod = gateway_pod();
    let objects: Vec<Existing> = snapshot.elsewhere.iter().chain(users).cloned().collect();
    std::sync::Arc::new(GatewayCluster::from_objects(
        objects.iter(),
        std::iter::once(&pod),
        policies,
        std::iter::once((ve, snapshot.services.iter().collect()))
            .chain(rivals.iter().map(|(ve, svc)| (ve, vec![svc]))),
    ))
}

/// One host on one gateway's pods has one owner across namespaces: a tenant cannot
/// claim a host another team serves there.
#[test]
fn a_host_another_namespace_serves_at_the_gateway_is_refused() {
    let (mut ve, mut snapshot) = exposed("istio-system/public");
    ve.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap(),
    ));
    let any = || ingress_policy(r#"[{namespace: "*", hosts: ["*"]}]"#, "");
    // Team b's VirtualEnvironment is older: it keeps the host.
    let rivals = [rival("team-b", 1_000, "a.example.com")];
    snapshot.cluster = cluster_with(&snapshot, &ve, &rivals, &[], vec![any()]);
    let plan = plan_of_gw(&ve, &snapshot);
    assert!(route_of_app_a(&plan).spec.gateways.is_empty());
    assert!(plan.gateway_plugins.is_empty());
    assert!(skipped_with(&plan, "app-a: host a.example.com at gateway istio-system/public: namespace team-b claims it too"), "{:?}", plan.skipped);
    // A younger rival does not take it away.
    let rivals = [rival("team-b", 3_000, "a.example.com")];
    snapshot.cluster = cluster_with(&snapshot, &ve, &rivals, &[], vec![any()]);
    assert_eq!(plan_of_gw(&ve, &snapshot).gateway_plugins.len(), 1);
    // Unless the gateway's owner gives the host to it: the most specific entry wins.
    let named = ingress_policy(
        r#"[{namespace: "*", hosts: ["*"]}, {namespace: team-b, hosts: [a.example.com]}]"#,
        "",
    );
    snapshot.cluster = cluster_with(&snapshot, &ve, &rivals, &[], vec![named]);
    assert!(plan_of_gw(&ve, &snapshot).gateway_plugins.is_empty());
    // A user's own VirtualService for the host at that gateway, in any namespace, keeps it.
    let user = object(
        Kind::VirtualService,
        serde_json::json!({"metadata": {"name": "front", "namespace": "team-c"},
            "spec": {"hosts": ["A.example.com"], "gateways": ["istio-system/public"]}}),
    );
    snapshot.cluster = cluster_with(&snapshot, &ve, &[], &[user], vec![any()]);
    let plan = plan_of_gw(&ve, &snapshot);
    assert!(plan.gateway_plugins.is_empty());
    assert!(
        skipped_with(
            &plan,
            "namespace team-c's VirtualService front routes it there already"
        ),
        "{:?}",
        plan.skipped
    );
}

/// A VirtualService binds each of its hosts at each of its gateways: a host refused at
/// one gateway must not be bound there through another's admission.
#[test]
fn a_host_refused_at_one_gateway_is_not_bound_there_by_another() {
    let (ve, mut snapshot) = exposed("istio-system/public,own-gw");
    if let Some(a) = snapshot
        .services
        .iter_mut()
        .find(|s| s.name_any() == "app-a")
    {
        a.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                HOSTS_ANNOTATION.into(),
                "a.example.com,b.example.com".into(),
            );
    }
    snapshot.elsewhere.push(object(
        Kind::Gateway,
        serde_json::json!({"metadata": {"name": "own-gw", "namespace": "default"},
            "spec": {"selector": {"app": "own-gw"},
                "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}),
    ));
    snapshot
        .pods
        .push(crate::plan::fixtures::pod("own-gw-1", "own-gw", None, true));
    let only_a = ingress_policy(r#"[{namespace: default, hosts: [a.example.com]}]"#, "");
    with_cluster(&mut snapshot, &ve, vec![only_a]);
    let plan = plan_of_gw(&ve, &snapshot);
    let vs = route_of_app_a(&plan);
    assert_eq!(vs.spec.gateways, ["default/own-gw", "mesh"]);
    assert_eq!(
        vs.spec.hosts,
        [
            "app-a.default.svc.cluster.local",
            "a.example.com",
            "b.example.com"
        ]
    );
    let placed: Vec<String> = plan
        .gateway_plugins
        .iter()
        .map(|p| p.namespace().unwrap())
        .collect();
    assert_eq!(placed, ["default"], "nothing at the shared gateway");
    assert!(
        skipped_with(
            &plan,
            "host a.example.com at gateway istio-system/public: not bound"
        ),
        "{:?}",
        plan.skipped
    );
}

/// A Gateway of the tenant's own that selects the shared gateway's pods (and one pod
/// of its own as a decoy) is bound nowhere without the policy: istiod would hand the
/// binding to every pod it selects.
#[test]
fn a_gateway_admitted_at_one_of_its_placements_only_is_not_bound() {
    let (ve, mut snapshot) = exposed("team-gw");
    snapshot.elsewhere.push(object(
        Kind::Gateway,
        serde_json::json!({"metadata": {"name": "team-gw", "namespace": "default"},
            "spec": {"selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}),
    ));
    let mut decoy = crate::plan::fixtures::pod("decoy", "decoy", None, true);
    decoy
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("istio".into(), "ingressgateway".into());
    snapshot.pods.push(decoy);
    with_cluster(&mut snapshot, &ve, vec![]);
    let plan = plan_of_gw(&ve, &snapshot);
    assert!(route_of_app_a(&plan).spec.gateways.is_empty(), "not bound");
    assert!(plan.gateway_plugins.is_empty());
}

/// A rival that could never serve the host (the Gateway's servers do not admit its
/// namespace) blocks nobody.
#[test]
fn a_rival_the_gateway_does_not_admit_blocks_nobody() {
    let (mut ve, mut snapshot) = exposed("istio-system/public");
    ve.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap(),
    ));
    if let Some(gw) = snapshot
        .elsewhere
        .iter_mut()
        .find(|e| e.kind == Kind::Gateway)
    {
        gw.spec["servers"][0]["hosts"] = serde_json::json!(["default/a.example.com"]);
    }
    let any = ingress_policy(r#"[{namespace: "*", hosts: ["*"]}]"#, "");
    let rivals = [rival("team-b", 1_000, "a.example.com")];
    snapshot.cluster = cluster_with(&snapshot, &ve, &rivals, &[], vec![any]);
    let plan = plan_of_gw(&ve, &snapshot);
    assert_eq!(plan.gateway_plugins.len(), 1, "{:?}", plan.skipped);
}

/// Istio's Bookinfo: the Gateway in the application's namespace, selecting the ingress
/// gateway's pods in istio-system. The plugin object goes where the pods run (a
/// WasmPlugin selects pods of its own namespace only), with the controller's module.
#[test]
fn the_plugin_object_goes_where_the_gateways_pods_run() {
    let (ve, mut snapshot) = exposed("bookinfo-gateway");
    snapshot.elsewhere.push(object(
        Kind::Gateway,
        serde_json::json!({"metadata": {"name": "bookinfo-gateway", "namespace": "default"},
            "spec": {"selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"},
                    "hosts": ["*"]}]}}),
    ));
    let policy = ingress_policy(r#"[{namespace: default, hosts: ["*"]}]"#, "{mode: accept}");
    with_cluster(&mut snapshot, &ve, vec![policy]);
    let plan = plan_of_gw(&ve, &snapshot);
    let placed: Vec<(String, String)> = plan
        .gateway_plugins
        .iter()
        .map(|p| (p.namespace().unwrap(), p.name_any()))
        .collect();
    assert_eq!(
        placed,
        [(
            "istio-system".to_owned(),
            "virtual-env.default.bookinfo-gateway".to_owned()
        )]
    );
    assert_eq!(
        route_of_app_a(&plan).spec.gateways,
        ["default/bookinfo-gateway", "mesh"]
    );
    // Where istiod scopes Gateways to their namespace, no pod there: reported.
    let scoped = crate::plan::Settings {
        scope_gateway_to_namespace: true,
        ..settings()
    };
    let plan = plan_namespace(&ve, &snapshot, &scoped).unwrap();
    assert!(
        skipped_with(
            &plan,
            "gateway default/bookinfo-gateway: its selector matches no pod in its namespace"
        ),
        "{:?}",
        plan.skipped
    );
    assert_eq!(
        plan.gateway_plugins[0].namespace().as_deref(),
        Some("default")
    );
}

#[test]
fn a_module_the_crd_would_refuse_is_an_invalid_spec() {
    for (url, sha, field) in [
        ("ftp://x", None, "spec.wasmModule.url"),
        ("https://", None, "spec.wasmModule.url"),
        ("https://x/a.wasm", Some("ABC"), "spec.wasmModule.sha256"),
    ] {
        let (mut ve, snapshot) = exposed("istio-system/public");
        ve.spec.wasm_module = Some(crate::crd::WasmModule {
            url: url.into(),
            sha256: sha.map(String::from),
        });
        let err = plan_namespace(&ve, &snapshot, &settings()).unwrap_err();
        assert!(err.to_string().contains(field), "{url}: {err}");
    }
}

#[test]
fn an_invalid_edge_trust_is_an_invalid_spec() {
    let (mut ve, snapshot) = exposed("istio-system/public");
    ve.spec.edge_trust = Some(crate::crd::EdgeTrustSpec {
        mode: crate::crd::EdgeTrustMode::AllowList,
        allow: vec![],
        allow_trace: false,
    });
    let err = plan_namespace(&ve, &snapshot, &settings()).unwrap_err();
    assert!(err.to_string().contains("at least one entry"), "{err}");
}

/// A policy whose edge policy is not valid has no guard: nothing enters under it.
#[test]
fn nothing_enters_under_a_policy_that_is_not_valid() {
    let (ve, mut snapshot) = exposed("istio-system/public");
    let broken = ingress_policy(
        r#"[{namespace: default, hosts: ["*"]}]"#,
        "{mode: allowList}",
    );
    with_cluster(&mut snapshot, &ve, vec![broken]);
    let plan = plan_of_gw(&ve, &snapshot);
    assert!(plan.gateway_plugins.is_empty());
    assert!(route_of_app_a(&plan).spec.gateways.is_empty());
    assert!(
        skipped_with(&plan, "GatewayPolicy ingressgateway is not valid"),
        "{:?}",
        plan.skipped
    );
}

/// istiod serves a user's VirtualService whatever a GatewayPolicy says: one in a namespace
/// the policy does not list still keeps its host.
#[test]
fn a_users_virtual_service_keeps_its_host_whatever_the_policy_lists() {
    let (ve, mut snapshot) = exposed("istio-system/public");
    let only_default = ingress_policy(r#"[{namespace: default, hosts: ["*"]}]"#, "");
    let user = object(
        Kind::VirtualService,
        serde_json::json!({"metadata": {"name": "front", "namespace": "team-c"},
            "spec": {"hosts": ["a.example.com"], "gateways": ["istio-system/public"]}}),
    );
    snapshot.cluster = cluster_with(&snapshot, &ve, &[], &[user], vec![only_default]);
    let plan = plan_of_gw(&ve, &snapshot);
    assert!(plan.gateway_plugins.is_empty(), "{:?}", plan.skipped);
}

/// Two services of the namespace under one host at one gateway: the first keeps it.
#[test]
fn a_host_two_services_claim_goes_to_the_first() {
    let (ve, mut snapshot) = exposed("istio-system/public");
    if let Some(b) = snapshot
        .services
        .iter_mut()
        .find(|s| s.name_any() == "app-c")
    {
        b.metadata.annotations = Some(BTreeMap::from([
            (
                GATEWAYS_ANNOTATION.to_owned(),
                "istio-system/public".to_owned(),
            ),
            (HOSTS_ANNOTATION.to_owned(), "a.example.com".to_owned()),
        ]));
    }
    let policy = ingress_policy(r#"[{namespace: default, hosts: ["*"]}]"#, "");
    with_cluster(&mut snapshot, &ve, vec![policy]);
    let plan = plan_of_gw(&ve, &snapshot);
    assert!(
        skipped_with(
            &plan,
            "app-c: host a.example.com at gateway istio-system/public already reaches app-a"
        ),
        "{:?}",
        plan.skipped
    );
}

/// A preview host `{env}.preview.example.com`: bound as its wildcard at the gateway and
/// in the VirtualService, and in the gateway's plugin as a preview suffix judged by the
/// edge policy in force there (the GatewayPolicy's).
#[test]
fn a_preview_host_is_bound_as_its_wildcard_and_judged_by_the_gateways_policy() {
    let (ve, mut snapshot) = exposed("istio-system/public");
    let a = snapshot
        .services
        .iter_mut()
        .find(|s| s.name_any() == "app-a")
        .unwrap();
    a.metadata.annotations.as_mut().unwrap().insert(
        HOSTS_ANNOTATION.to_owned(),
        "a.example.com, {env}.preview.example.com, {env}.nodots".to_owned(),
    );
    let policy = ingress_policy(
        r#"[{namespace: default, hosts: ["*"]}]"#,
        "{mode: allowList, allow: [dev.proj1.*]}",
    );
    with_cluster(&mut snapshot, &ve, vec![policy]);
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let vs = route_of_app_a(&plan);
    assert!(
        vs.spec.hosts.contains(&"*.preview.example.com".to_owned()),
        "{:?}",
        vs.spec.hosts
    );
    let plugin = &plan.gateway_plugins[0];
    let config: virtual_env_core::PluginConfig =
        serde_json::from_value(plugin.spec.plugin_config.clone()).unwrap();
    assert_eq!(
        config.preview_hosts["preview.example.com"],
        "app-a.default.svc.cluster.local"
    );
    assert_eq!(
        config.preview_trust.as_ref().unwrap().allow,
        ["dev.proj1.*".to_owned()]
    );
    assert!(config.validate().is_ok());
    let skipped: Vec<String> = plan.skipped.iter().map(|s| s.to_string()).collect();
    assert!(
        skipped
            .iter()
            .any(|s| s.contains("\"{env}.nodots\" is not a preview host")),
        "{skipped:?}"
    );
    assert!(
        !skipped
            .iter()
            .any(|s| s.contains("wildcard hosts are bound but not routed")),
        "{skipped:?}"
    );
}

/// A preview wildcard is routed by env at the gateway for every host under it, so it
/// meets another team's host under it (and theirs meets ours): one of the two is
/// refused, as for the same host, and never both plugins act on those requests.
#[test]
fn a_preview_wildcard_meets_every_other_teams_host_under_it() {
    let (mut ve, mut snapshot) = exposed("istio-system/public");
    ve.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap(),
    ));
    let a = snapshot
        .services
        .iter_mut()
        .find(|s| s.name_any() == "app-a")
        .unwrap();
    a.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(HOSTS_ANNOTATION.into(), "{env}.preview.example.com".into());
    let any = || ingress_policy(r#"[{namespace: "*", hosts: ["*"]}]"#, "");
    // Team b, older, serves one host under our suffix: our preview host is refused.
    let rivals = [rival("team-b", 1_000, "dev--x.preview.example.com")];
    snapshot.cluster = cluster_with(&snapshot, &ve, &rivals, &[], vec![any()]);
    let plan = plan_of_gw(&ve, &snapshot);
    assert!(plan.gateway_plugins.is_empty(), "{:?}", plan.skipped);
    assert!(skipped_with(&plan, "host *.preview.example.com at gateway istio-system/public: namespace team-b claims it too"), "{:?}", plan.skipped);
    // A user's VirtualService for a host under it, too.
    let user = object(
        Kind::VirtualService,
        serde_json::json!({"metadata": {"name": "front", "namespace": "team-c"},
            "spec": {"hosts": ["shop.preview.example.com"], "gateways": ["istio-system/public"]}}),
    );
    snapshot.cluster = cluster_with(&snapshot, &ve, &[], &[user], vec![any()]);
    assert!(plan_of_gw(&ve, &snapshot).gateway_plugins.is_empty());
    // Ours is older than team b's: we keep it, and team b's host under it is refused
    // in team b's plan (the same rule from its side).
    let rivals = [rival("team-b", 3_000, "dev--x.preview.example.com")];
    snapshot.cluster = cluster_with(&snapshot, &ve, &rivals, &[], vec![any()]);
    assert_eq!(plan_of_gw(&ve, &snapshot).gateway_plugins.len(), 1);
    let (b_ve, b_svc) = rivals[0].clone();
    let mut b_ve = b_ve;
    b_ve.metadata.uid = Some("b-uid".into());
    let b_snapshot = Snapshot {
        services: vec![b_svc.clone()],
        elsewhere: snapshot.elsewhere.clone(),
        pods: vec![
            crate::plan::fixtures::pod("shop-dev", "shop", Some("dev"), true),
            {
                let mut p = crate::plan::fixtures::pod("shop-x", "shop", Some("dev.x"), true);
                p.metadata.namespace = Some("team-b".into());
                p
            },
        ]
        .into_iter()
        .map(|mut p| {
            p.metadata.namespace = Some("team-b".into());
            p
        })
        .collect(),
        cluster: cluster_with(
            &Snapshot {
                services: vec![b_svc],
                elsewhere: snapshot.elsewhere.clone(),
                ..Snapshot::default()
            },
            &b_ve,
            &[(
                ve.clone(),
                snapshot
                    .services
                    .iter()
                    .find(|s| s.name_any() == "app-a")
                    .unwrap()
                    .clone(),
            )],
            &[],
            vec![any()],
        ),
        ..Snapshot::default()
    };
    let b_plan = plan_of_gw(&b_ve, &b_snapshot);
    assert!(b_plan.gateway_plugins.is_empty(), "{:?}", b_plan.skipped);
    assert!(
        skipped_with(&b_plan, "host dev--x.preview.example.com at gateway istio-system/public: namespace default claims it too"),
        "{:?}",
        b_plan.skipped
    );
}
