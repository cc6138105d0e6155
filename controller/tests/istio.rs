//! What the controller writes is valid for Istio, and it plans around what Istio's users
//! write: every object `render` prints is checked against Istio's own CRD schemas
//! (`tests/istio/crds.yaml`, copied from Istio), and a namespace holding Istio's Bookinfo
//! samples renders, naming the services it leaves to the user's objects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::Value;
use virtual_env_core::PluginConfig;

mod common;
use common::{check_schema, docs, repo, virtual_env};

fn render(files: &[String]) -> String {
    render_with(files, &[])
}

/// `render` of `files` with the tests' module URL, a predictable route header and `more`.
fn render_with(files: &[String], more: &[&str]) -> String {
    let mut args = vec!["render"];
    for f in files {
        args.extend(["-f", f.as_str()]);
    }
    args.extend([
        "--wasm-url",
        "oci://registry.example/virtual-env-filter:0.1.0",
        "--predictable-suffix",
    ]);
    args.extend(more);
    virtual_env(&args)
}

/// The OpenAPI schema of `kind`'s `version` in Istio's CRDs.
fn istio_schema(kind: &str, version: &str) -> Value {
    let crds = std::fs::read_to_string(repo().join("tests/istio/crds.yaml")).unwrap();
    let crd = docs(&crds)
        .into_iter()
        .find(|c| c["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let version = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version && v["served"] == true)
        .unwrap_or_else(|| panic!("{kind} {version} is not served"))
        .clone();
    version["schema"]["openAPIV3Schema"].clone()
}

fn check_against_istio(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap();
    let version = object["apiVersion"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    let schema = istio_schema(kind, version);
    let mut errors = Vec::new();
    check_schema(
        &schema["properties"]["spec"],
        &object["spec"],
        &format!("{kind} {}: spec", object["metadata"]["name"]),
        &mut errors,
    );
    errors
}

/// `out` is the committed golden file at `path` (`UPDATE_GOLDEN=1` rewrites it).
fn same_as_golden(out: &str, path: &str) {
    let path = repo().join(path);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, out).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert!(
        expected == out,
        "{} differs from the output:\n{out}",
        path.display()
    );
}

fn bookinfo_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("tests/istio/bookinfo-networking"))
        .unwrap()
        .map(|e| {
            format!(
                "tests/istio/bookinfo-networking/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    files.sort();
    [
        "tests/snapshots/seed/virtualenvironment.yaml".to_owned(),
        "tests/snapshots/seed/cluster.yaml".to_owned(),
        "tests/istio/bookinfo.yaml".to_owned(),
        "tests/snapshots/bookinfo/pods.yaml".to_owned(),
    ]
    .into_iter()
    .chain(files)
    .collect()
}

#[test]
fn every_object_the_planner_writes_is_valid_for_istios_crds() {
    let seed = render(&[
        "tests/snapshots/seed/virtualenvironment.yaml".into(),
        "tests/snapshots/seed/cluster.yaml".into(),
    ]);
    let objects = docs(&seed);
    let kinds: std::collections::BTreeSet<_> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    for object in objects.iter().chain(&docs(&render(&bookinfo_files()))) {
        let errors = check_against_istio(object);
        assert!(errors.is_empty(), "{errors:#?}");
    }
}

#[test]
fn the_schema_check_catches_what_istio_would_reject() {
    let mut vs = docs(&render(&[
        "tests/snapshots/seed/virtualenvironment.yaml".into(),
        "tests/snapshots/seed/cluster.yaml".into(),
    ]))
    .into_iter()
    .find(|o| o["kind"] == "VirtualService")
    .unwrap();
    vs["spec"]["http"][0]["route"][0]["destination"]["subsett"] = "dev".into();
    vs["spec"]["hosts"] = 3.into();
    let errors = check_against_istio(&vs);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("subsett: not in the schema")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("hosts: expected")),
        "{errors:?}"
    );
    // Istio's CEL rules too: a plugin object with a URL scheme Istio does not fetch.
    let mut plugin = docs(&render(&[
        "tests/snapshots/seed/virtualenvironment.yaml".into(),
        "tests/snapshots/seed/cluster.yaml".into(),
    ]))
    .into_iter()
    .find(|o| o["kind"] == "WasmPlugin")
    .unwrap();
    assert!(check_against_istio(&plugin).is_empty());
    plugin["spec"]["url"] = "ftp://x".into();
    plugin["spec"]["selector"] = serde_json::json!({"matchLabels": {"app*": "x"}});
    plugin["spec"]["targetRefs"] = serde_json::json!([{"kind": "Gateway", "name": "gw"}]);
    let errors = check_against_istio(&plugin);
    for rule in ["isURL(self)", "!key.contains", "has(self.targetRefs)"] {
        assert!(
            errors
                .iter()
                .any(|e| e.contains("fails the rule") && e.contains(rule)),
            "{rule}: {errors:#?}"
        );
    }
}

/// Golden: the seed's namespace with Istio's Bookinfo samples in it. reviews and ratings
/// have pods in two envs, but the user's objects route them: they are skipped and named.
#[test]
fn a_namespace_with_the_bookinfo_samples_renders_around_them() {
    let out = render(&bookinfo_files());
    same_as_golden(&out, "tests/snapshots/bookinfo/render.golden.yaml");
    assert!(
        out.contains(
            "# skipped service ratings: left to DestinationRule ratings, VirtualService ratings"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "# skipped service reviews: left to DestinationRule reviews, VirtualService reviews"
        ),
        "{out}"
    );
}

/// Istio's rule for header names in matches and header operations (RFC 7230 tokens,
/// `validHeaderNameRegex` in istio/pkg/config/validation), written out independently.
fn istio_accepts_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

proptest! {
    /// Any route header name the config accepts is one Istio accepts, with its suffix too.
    #[test]
    fn header_names_the_config_accepts_are_ones_istio_accepts(name in "[ -~]{0,40}") {
        let json = serde_json::json!({"routeHeader": name}).to_string();
        if PluginConfig::from_json(json.as_bytes()).is_ok() {
            let lower = name.to_ascii_lowercase();
            let suffixed = format!("{lower}-abcdef012345");
            prop_assert!(istio_accepts_header_name(&lower));
            prop_assert!(istio_accepts_header_name(&suffixed));
        }
    }
}

fn gateway_files() -> Vec<String> {
    [
        "tests/snapshots/gateway/virtualenvironment.yaml",
        "tests/snapshots/seed/cluster.yaml",
        "tests/snapshots/gateway/entry.yaml",
    ]
    .map(String::from)
    .to_vec()
}

/// Golden: the seed's namespace with app-c exposed through `spec.gateways` and a web front
/// end through the original's annotations. Every object is valid for Istio's CRDs; the
/// VirtualServices are bound to the gateway and `mesh` with the extra hosts; the gateway's
/// plugin object selects its pods and carries only what enters there.
#[test]
fn services_exposed_through_a_gateway_render_its_plugin_object() {
    let out = render(&gateway_files());
    same_as_golden(&out, "tests/snapshots/gateway/render.golden.yaml");
    let objects = docs(&out);
    for object in &objects {
        let errors = check_against_istio(object);
        assert!(errors.is_empty(), "{errors:#?}");
    }
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}:\n{out}"))
    };
    let web = find("VirtualService", "web");
    assert_eq!(
        web["spec"]["gateways"],
        serde_json::json!(["istio-system/public-gateway", "mesh"])
    );
    // www.example.com: the Gateway's servers do not admit it, so istiod would not route
    // it; it is neither bound nor routed, and the output says why.
    assert_eq!(
        web["spec"]["hosts"],
        serde_json::json!(["web.default.svc.cluster.local", "web.example.com"])
    );
    assert!(
        out.contains("web: host www.example.com at gateway istio-system/public-gateway: the Gateway's servers[].hosts do not admit default/www.example.com"),
        "{out}"
    );
    assert!(find("VirtualService", "app-a")["spec"]["gateways"].is_null());
    let plugin = find("WasmPlugin", "virtual-env.default.public-gateway");
    assert_eq!(plugin["metadata"]["namespace"], "istio-system");
    assert_eq!(
        plugin["spec"]["selector"]["matchLabels"],
        serde_json::json!({"istio": "ingressgateway"})
    );
    let config: PluginConfig =
        serde_json::from_value(plugin["spec"]["pluginConfig"].clone()).unwrap();
    config.validate().unwrap();
    let services: Vec<&str> = config.services.keys().map(String::as_str).collect();
    assert_eq!(
        services,
        [
            "app-c.default.svc.cluster.local",
            "web.default.svc.cluster.local"
        ]
    );
    assert_eq!(
        config.hosts["c.example.com"],
        "app-c.default.svc.cluster.local"
    );
    // The policy's edge guard judges; the routing plugin under it does not.
    assert!(config.edge_trust.is_none());
    let guard = find("WasmPlugin", "virtual-env-edge.public-ingress");
    assert_eq!(guard["spec"]["phase"], "AUTHN");
    let guard: PluginConfig =
        serde_json::from_value(guard["spec"]["pluginConfig"].clone()).unwrap();
    assert!(guard.edge_trust.unwrap().admits("dev.proj1.alice"));
    // The namespace's own plugin objects carry no edge policy and no gateway hosts.
    let own = find("WasmPlugin", "virtual-env");
    assert!(own["spec"]["pluginConfig"]["edgeTrust"].is_null());
    assert!(own["spec"]["pluginConfig"]["hosts"].is_null());
}

/// Where the cluster serves Istio 1.30's TrafficExtension, the plugin objects are
/// TrafficExtensions, valid for Istio's CRD, carrying exactly what the WasmPlugins carry.
#[test]
fn with_traffic_extension_the_plugin_objects_are_valid_traffic_extensions() {
    let mut args = gateway_files();
    let wasm_plugins = docs(&render(&args));
    args.push("--extension-api=traffic-extension".into());
    let out = virtual_env(
        &std::iter::once("render")
            .chain(args.iter().flat_map(|f| {
                if f.starts_with("--") {
                    vec![f.as_str()]
                } else {
                    vec!["-f", f.as_str()]
                }
            }))
            .chain([
                "--wasm-url",
                "oci://registry.example/virtual-env-filter:0.1.0",
                "--predictable-suffix",
            ])
            .collect::<Vec<_>>(),
    );
    let objects = docs(&out);
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"WasmPlugin"), "{kinds:?}");
    let extensions: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "TrafficExtension")
        .collect();
    let plugins: Vec<&Value> = wasm_plugins
        .iter()
        .filter(|o| o["kind"] == "WasmPlugin")
        .collect();
    assert_eq!(
        extensions.len(),
        4,
        "calling side, called side, the gateway's, the gateway owner's edge guard"
    );
    for (te, wp) in extensions.iter().zip(&plugins) {
        assert_eq!(te["metadata"], wp["metadata"]);
        assert_eq!(
            te["spec"]["wasm"]["pluginConfig"],
            wp["spec"]["pluginConfig"]
        );
        assert_eq!(te["spec"]["wasm"]["url"], wp["spec"]["url"]);
        assert_eq!(te["spec"]["match"], wp["spec"]["match"]);
        assert_eq!(te["spec"]["selector"], wp["spec"]["selector"]);
    }
    for object in &objects {
        let errors = check_against_istio(object);
        assert!(errors.is_empty(), "{errors:#?}");
    }
    // The check sees a TrafficExtension with two kinds of filter, and a bad mode.
    let mut broken = extensions[0].clone();
    broken["spec"]["lua"] = serde_json::json!({"inlineCode": "function envoy_on_request(h) end"});
    broken["spec"]["match"][0]["mode"] = "SIDEWAYS".into();
    let errors = check_against_istio(&broken);
    assert!(errors.iter().any(|e| e.contains("oneOf")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("SIDEWAYS")), "{errors:?}");
}

/// A namespace in ambient mode: the waypoint's plugin object (`targetRefs` to the
/// waypoint's Gateway, no `selector`, no `match`) is valid for Istio's WasmPlugin and
/// TrafficExtension CRDs (their CEL rules: one of `selector` or `targetRefs`, no
/// cross-namespace reference), and the whole render is the committed golden.
#[test]
fn a_waypoints_plugin_object_is_valid_for_istios_crds_in_both_apis() {
    let files = [
        "tests/snapshots/seed/virtualenvironment.yaml".to_owned(),
        "tests/snapshots/ambient/cluster.yaml".to_owned(),
    ];
    let out = render(&files);
    same_as_golden(&out, "tests/snapshots/ambient/render.golden.yaml");
    let as_traffic_extensions = render_with(&files, &["--extension-api", "traffic-extension"]);
    for text in [&out, &as_traffic_extensions] {
        let objects = docs(text);
        let waypoint: Vec<&Value> = objects
            .iter()
            .filter(|o| o["spec"]["targetRefs"].is_array())
            .collect();
        // The namespace's waypoint by its Gateway; app-b, behind another namespace's
        // waypoint, by its Service.
        assert_eq!(waypoint.len(), 2, "{text}");
        let kinds: Vec<&Value> = waypoint
            .iter()
            .map(|w| &w["spec"]["targetRefs"][0]["kind"])
            .collect();
        assert_eq!(kinds, ["Gateway", "Service"], "{text}");
        assert!(waypoint.iter().all(|w| w["spec"]["selector"].is_null()));
        for object in objects
            .iter()
            .filter(|o| o["apiVersion"].as_str().unwrap().contains("istio.io"))
        {
            let errors = check_against_istio(object);
            assert!(errors.is_empty(), "{errors:#?}");
        }
    }
    // The schema check does hold the CEL rule: a selector beside targetRefs fails it.
    let mut both = docs(&out)
        .into_iter()
        .find(|o| o["spec"]["targetRefs"].is_array())
        .unwrap();
    both["spec"]["selector"] = serde_json::json!({"matchLabels": {"app": "x"}});
    let errors = check_against_istio(&both);
    assert!(
        errors.iter().any(|e| e.contains("fails the rule")),
        "{errors:#?}"
    );
}

/// Entry through a Gateway API Gateway: the gateway's plugin object and its owner's edge
/// guard attach by `targetRefs` to the Gateway, in its namespace, with no `selector`
/// (Istio ignores selectors on such pods where `ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY`
/// is off), valid for Istio's WasmPlugin and TrafficExtension CRDs.
#[test]
fn a_gateway_api_gateways_plugin_objects_attach_by_target_refs_in_both_apis() {
    let files = [
        "tests/snapshots/gateway-api/virtualenvironment.yaml".to_owned(),
        "tests/snapshots/gateway-api/cluster.yaml".to_owned(),
    ];
    for more in [&[][..], &["--extension-api", "traffic-extension"]] {
        let text = render_with(&files, more);
        let objects = docs(&text);
        let at_gateway: Vec<&Value> = objects
            .iter()
            .filter(|o| o["metadata"]["namespace"] == "istio-ingress")
            .collect();
        let names: Vec<&str> = at_gateway
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["virtual-env.default.public", "virtual-env-edge.public"],
            "{text}"
        );
        for object in &at_gateway {
            assert!(object["spec"]["selector"].is_null(), "{object}");
            assert_eq!(
                object["spec"]["targetRefs"],
                serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}])
            );
        }
        for object in objects
            .iter()
            .filter(|o| o["apiVersion"].as_str().unwrap().contains("istio.io"))
        {
            let errors = check_against_istio(object);
            assert!(errors.is_empty(), "{errors:#?}");
        }
    }
}
