//! Routes written as Gateway API are valid for Gateway API: every HTTPRoute and GRPCRoute
//! `render` prints is checked against the v1 schemas of Gateway API's own CRDs (v1.6,
//! `tests/gateway-api/`, copied from kubernetes-sigs/gateway-api) with their CEL rules,
//! and is already in the form the API server stores after applying the schemas' defaults
//! (else every reconcile would find it changed and write it again). The envs' Services are
//! checked against Kubernetes' naming rules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;

mod common;
use common::{check_schema, docs, repo, virtual_env};

const SNAPSHOT: [&str; 2] = [
    "tests/snapshots/gateway-api/virtualenvironment.yaml",
    "tests/snapshots/gateway-api/cluster.yaml",
];

/// Bookinfo routed with Gateway API, entered through Istio's own Gateway API sample.
const BOOKINFO: [&str; 4] = [
    "tests/snapshots/bookinfo-gateway-api/virtualenvironment.yaml",
    "tests/istio/bookinfo.yaml",
    "tests/snapshots/bookinfo-gateway-api/pods.yaml",
    "tests/istio/gateway-api/bookinfo-gateway.yaml",
];

fn render() -> String {
    render_files(&SNAPSHOT)
}

fn render_files(files: &[&str]) -> String {
    let mut args = vec!["render"];
    for f in files {
        args.extend(["-f", f]);
    }
    args.extend([
        "--wasm-url",
        "oci://registry.example/virtual-env-filter:0.1.0",
        "--predictable-suffix",
    ]);
    virtual_env(&args)
}

/// The `v1` schema of Gateway API's CRD for `kind`.
fn schema(kind: &str) -> Value {
    let file = format!(
        "tests/gateway-api/gateway.networking.k8s.io_{}s.yaml",
        kind.to_ascii_lowercase()
    );
    let crd = docs(&std::fs::read_to_string(repo().join(file)).unwrap()).remove(0);
    let version = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1" && v["served"] == true && v["storage"] == true)
        .unwrap_or_else(|| panic!("{kind} v1 is not the stored version"))
        .clone();
    version["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

fn check(route: &Value) -> Vec<String> {
    let kind = route["kind"].as_str().unwrap();
    let mut errors = Vec::new();
    check_schema(
        &schema(kind),
        &route["spec"],
        &format!("{kind} {}: spec", route["metadata"]["name"]),
        &mut errors,
    );
    errors
}

/// `value` with the schema's defaults applied where a field is absent, as the API server
/// applies them on every write (structural schema defaulting).
fn defaulted(schema: &Value, value: &Value) -> Value {
    let mut value = value.clone();
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object_mut()) {
        for (key, sub) in props {
            match obj.get(key) {
                Some(v) => {
                    let v = defaulted(sub, v);
                    obj.insert(key.clone(), v);
                }
                None => {
                    if let Some(default) = sub.get("default") {
                        obj.insert(key.clone(), defaulted(sub, default));
                    }
                }
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array_mut()) {
        for v in array.iter_mut() {
            *v = defaulted(items, v);
        }
    }
    value
}

fn routes() -> Vec<Value> {
    docs(&render())
        .into_iter()
        .filter(|o| o["apiVersion"] == "gateway.networking.k8s.io/v1")
        .collect()
}

#[test]
fn every_route_is_valid_for_gateway_apis_crds_and_stored_as_written() {
    let routes = routes();
    let names: Vec<(&str, &str)> = routes
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    // app-a: 17 envs and the default are 18 rules, two routes, and two more for its
    // entry through the Gateway; app-b: gRPC; app-c: one route per HTTP or gRPC port,
    // none for its TCP port.
    assert_eq!(
        names,
        [
            ("HTTPRoute", "app-a"),
            ("HTTPRoute", "app-a.2"),
            ("GRPCRoute", "app-b"),
            ("HTTPRoute", "app-c.80"),
            ("GRPCRoute", "app-c.9090"),
            ("HTTPRoute", "app-a.gateway"),
            ("HTTPRoute", "app-a.gateway.2"),
        ]
    );
    assert_eq!(routes[0]["spec"]["rules"].as_array().unwrap().len(), 16);
    for route in &routes {
        let errors = check(route);
        assert!(errors.is_empty(), "{errors:#?}");
        let kind = route["kind"].as_str().unwrap();
        assert_eq!(
            defaulted(&schema(kind), &route["spec"]),
            route["spec"],
            "{kind} {} would be stored otherwise than written",
            route["metadata"]["name"]
        );
    }
}

#[test]
fn the_schema_check_catches_what_the_api_server_would_reject() {
    let routes = routes();
    // One rule too many, a header match of a type Gateway API does not have, and a
    // backend without the port a Service reference must have.
    let mut route = routes[0].clone();
    let extra = route["spec"]["rules"][1].clone();
    route["spec"]["rules"].as_array_mut().unwrap().push(extra);
    route["spec"]["rules"][1]["matches"][0]["headers"][0]["type"] = "Prefix".into();
    route["spec"]["rules"][2]["backendRefs"][0]
        .as_object_mut()
        .unwrap()
        .remove("port");
    let errors = check(&route);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("rules[2].backendRefs[0]") && e.contains("fails the rule")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("more than 16 items")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"Prefix\" is not one of")),
        "{errors:#?}"
    );
    // 64 matches in each of three rules: over the CEL rule's 128 matches per route.
    let mut route = routes[0].clone();
    let rules = route["spec"]["rules"].as_array_mut().unwrap();
    rules.truncate(3);
    for rule in rules.iter_mut() {
        let one = rule["matches"][0].clone();
        rule["matches"] = Value::Array(vec![one; 64]);
    }
    let errors = check(&route);
    assert!(
        errors.iter().any(|e| e.contains("fails the rule")),
        "{errors:#?}"
    );
}

#[test]
fn env_services_have_valid_names_and_select_their_env() {
    let objects = docs(&render());
    let services: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Service").collect();
    // app-a 17, app-b 2, app-c 2.
    assert_eq!(services.len(), 21);
    let label = regex::Regex::new("^[a-z]([-a-z0-9]*[a-z0-9])?$").unwrap();
    for service in services {
        let name = service["metadata"]["name"].as_str().unwrap();
        assert!(name.len() <= 63 && label.is_match(name), "{name}");
        let env = &service["metadata"]["annotations"]["env.alibaba.com/env"];
        assert_eq!(service["spec"]["selector"]["virtual-env"], *env);
        // Every backend a route names is one of these Services, or a routed service.
    }
    let names: std::collections::BTreeSet<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "Service")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    for route in routes() {
        for rule in route["spec"]["rules"].as_array().unwrap() {
            let backend = rule["backendRefs"][0]["name"].as_str().unwrap();
            assert!(names.contains(backend), "{backend} is not written");
        }
    }
}

fn same_as_golden(out: &str, path: &str) {
    let path = repo().join(path);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, out).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert!(expected == out, "{} differs:\n{out}", path.display());
}

#[test]
fn the_render_is_the_committed_golden() {
    same_as_golden(&render(), "tests/snapshots/gateway-api/render.golden.yaml");
}

/// The Gateways the tests enter through are Gateways the API server would take: the
/// shared one of the snapshot, and Istio's Bookinfo sample's.
#[test]
fn the_gateways_entered_are_valid_gateway_api_gateways() {
    let mut gateways = Vec::new();
    for file in [SNAPSHOT[1], BOOKINFO[3]] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        for doc in docs(&text) {
            let items = match doc["items"].as_array() {
                Some(items) => items.clone(),
                None => vec![doc],
            };
            gateways.extend(items.into_iter().filter(|o| {
                o["kind"] == "Gateway" && o["apiVersion"] == "gateway.networking.k8s.io/v1"
            }));
        }
    }
    assert_eq!(gateways.len(), 2);
    for gateway in &gateways {
        let errors = check(gateway);
        assert!(errors.is_empty(), "{errors:#?}");
    }
    // The check holds the Gateway's own rules.
    let mut broken = gateways[0].clone();
    broken["spec"]["listeners"][0]["protocol"] = "HTTP!".into();
    assert!(!check(&broken).is_empty());
}

/// Istio's Bookinfo sample entered through its own Gateway API Gateway: productpage's
/// route bound to it under its host (the sample's HTTPRoute left as it is), the gateway's
/// plugin attached to it by `targetRefs` in its namespace (the tenant's own gateway: its
/// edge policy, no GatewayPolicy needed).
#[test]
fn bookinfo_is_entered_through_its_own_gateway_api_gateway() {
    let out = render_files(&BOOKINFO);
    same_as_golden(
        &out,
        "tests/snapshots/bookinfo-gateway-api/render.golden.yaml",
    );
    let objects = docs(&out);
    let named = |name: &str| {
        objects
            .iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))
    };
    let entry = named("productpage.gateway");
    assert_eq!(
        entry["spec"]["parentRefs"],
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway",
            "name": "bookinfo-gateway", "namespace": "default"}])
    );
    assert_eq!(
        entry["spec"]["hostnames"],
        serde_json::json!(["bookinfo.example.com"])
    );
    assert!(check(entry).is_empty(), "{:#?}", check(entry));
    let plugin = named("virtual-env.default.bookinfo-gateway");
    assert_eq!(plugin["metadata"]["namespace"], "default");
    assert!(plugin["spec"]["selector"].is_null());
    assert_eq!(
        plugin["spec"]["targetRefs"],
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "bookinfo-gateway"}])
    );
    assert!(objects.iter().all(|o| o["metadata"]["name"] != "bookinfo"));
}
