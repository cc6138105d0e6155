//! Entry through Gateway API Gateways, where routes are HTTPRoutes: the service's route
//! bound to the Gateway under its hosts, the gateway's plugin and its owner's edge guard
//! attached by `targetRefs`, and what Istio would not route (or guard) refused.

use super::fixtures::*;
use super::*;
use crate::gateway_policy::GatewayPolicy;
use crate::transition::{transition, Step};

/// `istio-ingress/public`: a Gateway API Gateway of Istio's class whose one listener takes
/// routes `from` (`All`, `Same`) for `*.example.com`.
fn public_gateway(from: &str) -> Existing {
    Existing::from_json(
        Kind::KubernetesGateway,
        &serde_json::json!({
            "metadata": {"name": "public", "namespace": "istio-ingress"},
            "spec": {"gatewayClassName": "istio", "listeners": [{
                "name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com",
                "allowedRoutes": {"namespaces": {"from": from}}}]}
        }),
        NS,
    )
}

/// The pod Istio deploys for it: in its namespace, labelled with its name (and, as in
/// some installs, `istio: ingressgateway` too).
fn public_gateway_pod() -> Pod {
    let mut gateway = pod("public-istio-1", "public-istio", None, true);
    gateway.metadata.namespace = Some("istio-ingress".into());
    let labels = gateway.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(crate::gateway::GATEWAY_NAME_LABEL.into(), "public".into());
    labels.insert("istio".into(), "ingressgateway".into());
    gateway
}

/// The gateway owner's policy for its pods selected by `selector` (YAML), admitting
/// namespace `default` under `*.example.com`, with edge policy `edge` (YAML).
fn policy(selector: &str, edge: &str) -> GatewayPolicy {
    let spec = serde_yaml::from_str(&format!(
        "workload: {{namespace: istio-ingress, selector: {selector}}}\ntenants: [{{namespace: default, hosts: [\"*.example.com\"]}}]\nedgeTrust: {edge}"
    ))
    .unwrap();
    GatewayPolicy::new("public", spec)
}

fn by_name() -> &'static str {
    "{gateway.networking.k8s.io/gateway-name: public}"
}

fn http_route_ve() -> VirtualEnvironment {
    let mut ve = ve("envHeader: {name: X-Virtual-Env, autoInject: true}\nenvLabel: {name: virtual-env, splitter: ., defaultSubset: dev}\nrouting: {api: HTTPRoute}");
    ve.metadata.uid = Some("ve-uid".into());
    ve
}

/// The seed's namespace routed with HTTPRoutes, app-a entered through
/// `istio-ingress/public` under `a.example.com`, with `gateway`, `policies` and the users'
/// `routes` of other namespaces in the cluster.
fn entered(
    gateway: Existing,
    policies: Vec<GatewayPolicy>,
    routes: &[Existing],
) -> (VirtualEnvironment, Snapshot) {
    let ve = http_route_ve();
    let mut snapshot = seed_exposed_through("istio-ingress/public");
    snapshot.elsewhere.push(gateway);
    let objects: Vec<Existing> = snapshot.elsewhere.iter().chain(routes).cloned().collect();
    let gateway_pod = public_gateway_pod();
    snapshot.cluster = std::sync::Arc::new(GatewayCluster::from_objects(
        objects.iter(),
        snapshot.pods.iter().chain(std::iter::once(&gateway_pod)),
        policies,
        std::iter::once((&ve, snapshot.services.iter().collect())),
    ));
    (ve, snapshot)
}

/// The routes of `plan` as read back once applied (owned by the VirtualEnvironment).
fn applied_routes(plan: &Plan) -> Vec<Existing> {
    (plan.mesh_routes.iter())
        .map(|r| {
            let mut value = r.to_value();
            value["metadata"]["ownerReferences"] = serde_json::json!([{"uid": "ve-uid"}]);
            Existing::from_json(r.kind(), &value, NS)
        })
        .collect()
}

fn skipped(plan: &Plan) -> String {
    plan.skipped
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn route<'a>(plan: &'a Plan, name: &str) -> Option<&'a MeshRoute> {
    plan.mesh_routes.iter().find(|r| r.name() == name)
}

#[test]
fn a_service_entered_through_a_gateway_api_gateway_is_bound_to_it_with_plugins_by_target_refs() {
    let policy = policy(by_name(), "{mode: allowList, allow: [dev.proj1]}");
    let (ve, snapshot) = entered(public_gateway("All"), vec![policy.clone()], &[]);
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    assert!(
        plan.virtual_services.is_empty(),
        "no VirtualService anywhere"
    );
    // The gateway route: the mesh route's rules, bound to the Gateway under the host.
    let entry = route(&plan, "app-a.gateway").expect("app-a's gateway route");
    let mesh = route(&plan, "app-a").unwrap();
    assert_eq!(entry.spec().rules, mesh.spec().rules);
    assert_eq!(entry.spec().hostnames, ["a.example.com"]);
    let parent = serde_json::to_value(&entry.spec().parent_refs).unwrap();
    assert_eq!(
        parent,
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway",
            "namespace": "istio-ingress", "name": "public"}])
    );
    assert!(!entry.is_mesh() && entry.service() == "app-a");
    // Only the exposed service is bound.
    assert!(route(&plan, "app-c.gateway").is_none());
    // The gateway's plugin, in the Gateway's namespace, attached to it by targetRefs.
    let [plugin] = &plan.gateway_plugins[..] else {
        panic!("one gateway plugin: {:?}", plan.gateway_plugins);
    };
    assert_eq!(plugin.namespace().as_deref(), Some("istio-ingress"));
    assert!(plugin.spec.selector.is_none());
    let targets = serde_json::to_value(&plugin.spec.target_refs).unwrap();
    let to_public = serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}]);
    assert_eq!(targets, to_public);
    let config: virtual_env_core::PluginConfig =
        serde_json::from_value(plugin.spec.plugin_config.clone()).unwrap();
    assert_eq!(
        config.hosts["a.example.com"],
        "app-a.default.svc.cluster.local"
    );
    // The owner's edge guard judges there, attached the same way.
    let wasm = &settings().wasm;
    let guard = crate::edge_guard::plan_edge_guard(&policy, &[&ve], wasm)
        .unwrap()
        .unwrap();
    assert!(guard.plugin.spec.selector.is_none());
    assert_eq!(
        serde_json::to_value(&guard.plugin.spec.target_refs).unwrap(),
        to_public
    );
    assert_eq!(
        guard.plugin.metadata.namespace.as_deref(),
        Some("istio-ingress")
    );
}

#[test]
fn what_istio_would_not_route_or_guard_at_a_gateway_api_gateway_is_refused() {
    let refused = |gateway, policies, routes: &[Existing], why: &str| {
        let (ve, snapshot) = entered(gateway, policies, routes);
        let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
        assert!(route(&plan, "app-a.gateway").is_none(), "{why}");
        assert!(plan.gateway_plugins.is_empty(), "{why}");
        let skipped = skipped(&plan);
        assert!(skipped.contains(why), "{why} not in:\n{skipped}");
    };
    let strict = || vec![policy(by_name(), "{mode: strip}")];
    // Its listener takes routes of its own namespace only.
    refused(
        public_gateway("Same"),
        strict(),
        &[],
        "no listener of the Gateway takes an HTTPRoute of namespace default",
    );
    // The policy selects the pods by another label: Istio may ignore its guard there.
    refused(
        public_gateway("All"),
        vec![policy("{istio: ingressgateway}", "{mode: strip}")],
        &[],
        "ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY",
    );
    // Another team's HTTPRoute serves the host at that Gateway.
    let theirs = Existing::from_json(
        Kind::HttpRoute,
        &serde_json::json!({
            "metadata": {"name": "shop", "namespace": "team-b"},
            "spec": {"parentRefs": [{"name": "public", "namespace": "istio-ingress"}],
                "hostnames": ["A.example.com"], "rules": []}
        }),
        "team-b",
    );
    refused(
        public_gateway("All"),
        strict(),
        &[theirs],
        "namespace team-b's HTTPRoute shop routes it there already",
    );
}

/// An Istio Gateway of the same name is not what an HTTPRoute binds: as for a Gateway not
/// (yet) there, the route is bound as asked and its pods get no plugin.
#[test]
fn an_istio_gateway_of_the_same_name_is_not_entered_by_httproutes() {
    let istio = Existing::from_json(
        Kind::Gateway,
        &serde_json::json!({"metadata": {"name": "public", "namespace": "istio-ingress"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{"hosts": ["*/*"]}]}}),
        NS,
    );
    let (ve, snapshot) = entered(istio, vec![policy(by_name(), "{mode: strip}")], &[]);
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    assert!(plan.gateway_plugins.is_empty());
    let entry = route(&plan, "app-a.gateway").unwrap();
    assert_eq!(entry.spec().parent_refs[0].kind, "Gateway");
    assert!(
        skipped(&plan).contains("gateway istio-ingress/public: not found"),
        "{}",
        skipped(&plan)
    );
}

#[test]
fn a_policy_that_accepts_every_env_needs_no_guard_so_any_selector_admits() {
    let accept = policy("{istio: ingressgateway}", "{mode: accept}");
    let (ve, snapshot) = entered(public_gateway("All"), vec![accept], &[]);
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    assert!(
        route(&plan, "app-a.gateway").is_some(),
        "{}",
        skipped(&plan)
    );
}

/// A leaving env's rule stays in the gateway route, as in the mesh route, until the
/// gateway's plugin config no longer picks it.
#[test]
fn a_leaving_env_keeps_its_gateway_rule_until_the_plugin_config_drops_it() {
    let policies = || vec![policy(by_name(), "{mode: strip}")];
    let (ve, snapshot) = entered(public_gateway("All"), policies(), &[]);
    let before = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let owned = applied_routes(&before);
    let (ve, mut snapshot) = entered(public_gateway("All"), policies(), &[]);
    snapshot.pods.retain(|p| p.name_any() != "app-a-proj1");
    let now = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let t = transition(&now, &owned);
    let rules_of = |steps: &[Step]| {
        steps.iter().find_map(|s| match s {
            Step::MeshRoute(r) if r.name() == "app-a.gateway" => Some(r.spec().rules.len()),
            _ => None,
        })
    };
    // Kept until after the plugin config: then the route with dev only (and the default).
    assert_eq!(rules_of(&t.before), None, "the union is what is applied");
    assert_eq!(rules_of(&t.after), Some(2));
}

/// A user's route names the host at the Gateway beside a Service parent (Gateway API and
/// Istio attach it to both): still another team's host there.
#[test]
fn a_users_route_with_a_service_and_a_gateway_parent_holds_its_host() {
    let theirs = Existing::from_json(
        Kind::HttpRoute,
        &serde_json::json!({
            "metadata": {"name": "shop", "namespace": "team-b"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"},
                    {"name": "public", "namespace": "istio-ingress"}],
                "hostnames": ["a.example.com"], "rules": []}
        }),
        "team-b",
    );
    let policies = vec![policy(by_name(), "{mode: strip}")];
    let (ve, snapshot) = entered(public_gateway("All"), policies, &[theirs]);
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    assert!(route(&plan, "app-a.gateway").is_none());
    assert!(plan.gateway_plugins.is_empty());
    assert!(skipped(&plan).contains("namespace team-b's HTTPRoute shop routes it there already"));
}

/// Gateways Istio does not deploy as their own: of another class (its proxies run
/// neither plugin), or naming an existing deployment by address (whose pods may serve
/// everyone). And pods of another namespace labelled with the Gateway's name are not its.
#[test]
fn only_gateways_istio_deploys_as_their_own_are_entered() {
    let with = |spec: serde_json::Value| {
        Existing::from_json(
            Kind::KubernetesGateway,
            &serde_json::json!({"metadata": {"name": "public", "namespace": "istio-ingress"}, "spec": spec}),
            NS,
        )
    };
    let listeners = serde_json::json!([{"name": "http", "port": 80, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "All"}}}]);
    for (spec, why) in [
        (
            serde_json::json!({"gatewayClassName": "other", "listeners": listeners}),
            "gatewayClassName is \"other\"",
        ),
        (
            serde_json::json!({"gatewayClassName": "istio", "listeners": listeners,
                "addresses": [{"type": "Hostname", "value": "istio-ingressgateway.istio-system.svc.cluster.local"}]}),
            "spec.addresses of type Hostname",
        ),
    ] {
        let (ve, snapshot) = entered(with(spec), vec![policy(by_name(), "{mode: strip}")], &[]);
        let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
        assert!(route(&plan, "app-a.gateway").is_none(), "{why}");
        assert!(plan.gateway_plugins.is_empty(), "{why}");
        assert!(skipped(&plan).contains(why), "{why}: {}", skipped(&plan));
    }
    // A pod in team-x labelled `gateway-name: public` is another Gateway's of that name.
    let (ve, mut snapshot) = entered(
        public_gateway("All"),
        vec![policy(by_name(), "{mode: strip}")],
        &[],
    );
    let mut impostor = public_gateway_pod();
    impostor.metadata.namespace = Some("team-x".into());
    let cluster = GatewayCluster::from_objects(
        snapshot.elsewhere.iter(),
        snapshot
            .pods
            .iter()
            .chain([&impostor, &public_gateway_pod()]),
        vec![policy(by_name(), "{mode: strip}")],
        std::iter::once((&ve, snapshot.services.iter().collect())),
    );
    snapshot.cluster = std::sync::Arc::new(cluster);
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let at: Vec<Option<String>> = plan.gateway_plugins.iter().map(|p| p.namespace()).collect();
    assert_eq!(at, [Some("istio-ingress".to_owned())]);
}

/// When the gateway route cannot be written (its name is a user's), the service is not
/// entered at all: no host in the gateway's plugin, so nothing routes by env there.
#[test]
fn a_service_whose_gateway_route_is_not_written_is_not_entered() {
    let (ve, mut snapshot) = entered(
        public_gateway("All"),
        vec![policy(by_name(), "{mode: strip}")],
        &[],
    );
    snapshot.existing.push(Existing::from_json(
        Kind::HttpRoute,
        &serde_json::json!({"metadata": {"name": "app-a.gateway", "namespace": NS},
            "spec": {"parentRefs": [{"name": "elsewhere"}], "rules": []}}),
        NS,
    ));
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    assert!(
        plan.gateway_plugins.is_empty(),
        "{:?}",
        plan.gateway_plugins
    );
    assert!(skipped(&plan).contains("HTTPRoute app-a.gateway exist and are not managed"));
}

/// A gRPC-only service is entered by an HTTPRoute (every Istio listener takes one) with
/// the GRPCRoutes' rules, every match given HTTPRoute's every-path match.
#[test]
fn a_grpc_service_is_entered_by_an_httproute() {
    let (ve, mut snapshot) = entered(
        public_gateway("All"),
        vec![policy(by_name(), "{mode: strip}")],
        &[],
    );
    for s in &mut snapshot.services {
        for port in s.spec.as_mut().unwrap().ports.as_mut().unwrap() {
            port.app_protocol = Some("grpc".into());
        }
    }
    let plan = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    assert_eq!(route(&plan, "app-a").unwrap().kind(), Kind::GrpcRoute);
    let entry = route(&plan, "app-a.gateway").unwrap();
    assert_eq!(entry.kind(), Kind::HttpRoute);
    let rules = &entry.spec().rules;
    assert_eq!(rules.len(), 3, "the default and two envs");
    assert!(rules.iter().all(|r| !r.matches.is_empty()
        && r.matches
            .iter()
            .all(|m| m.path.as_ref().is_some_and(|p| p.value == "/"))));
}

/// Two services entered through one Gateway: each keeps its own rules across a change,
/// and a service no longer exposed has its gateway route pruned as its step.
#[test]
fn entry_routes_of_two_services_stay_apart_and_go_with_their_exposure() {
    let policies = || vec![policy(by_name(), "{mode: strip}")];
    let expose_c = |snapshot: &mut Snapshot| {
        let c = snapshot
            .services
            .iter_mut()
            .find(|s| s.name_any() == "app-c")
            .unwrap();
        c.metadata.annotations = Some(BTreeMap::from([
            (
                crate::gateway::GATEWAYS_ANNOTATION.to_owned(),
                "istio-ingress/public".to_owned(),
            ),
            (
                crate::gateway::HOSTS_ANNOTATION.to_owned(),
                "c.example.com".to_owned(),
            ),
        ]));
    };
    let (ve, mut snapshot) = entered(public_gateway("All"), policies(), &[]);
    expose_c(&mut snapshot);
    let before = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let owned = applied_routes(&before);
    // app-a's dev.proj1 leaves; app-c stays as it was.
    let (ve, mut snapshot) = entered(public_gateway("All"), policies(), &[]);
    expose_c(&mut snapshot);
    snapshot.pods.retain(|p| p.name_any() != "app-a-proj1");
    let now = plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let t = transition(&now, &owned);
    let backends = |steps: &[Step], name: &str| -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::MeshRoute(r) if r.name() == name => Some(r),
                _ => None,
            })
            .flat_map(|r| {
                r.spec()
                    .rules
                    .iter()
                    .map(|rule| rule.backend_refs[0].name.clone())
            })
            .collect()
    };
    assert!(backends(&t.after, "app-a.gateway")
        .iter()
        .all(|b| b.starts_with("app-a")));
    assert!(
        backends(&t.after, "app-c.gateway").is_empty(),
        "unchanged: not written"
    );
    // app-c no longer exposed: its gateway route is pruned, as app-c's step.
    let (ve, snapshot) = entered(public_gateway("All"), policies(), &[]);
    let plan = plan_namespace(&ve, &snapshot, &settings().clone());
    let mut snapshot = snapshot;
    snapshot.existing = owned;
    let plan = plan
        .and_then(|_| plan_namespace(&ve, &snapshot, &settings()))
        .unwrap();
    let pruned = plan
        .prune
        .iter()
        .find(|e| e.name == "app-c.gateway")
        .expect("app-c's gateway route pruned");
    assert_eq!(
        Step::Prune(pruned.clone()).service().as_deref(),
        Some("app-c")
    );
}
