//! `status` against kube-rs's mock API server (tower-test; no API server runs here): the
//! seed's namespace as the controller leaves it (its plugin objects, its status), read and
//! printed in every format, against the committed golden.

use super::*;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The seed's namespace: its VirtualEnvironment with the status the controller wrote, its
/// pods, and the plugin objects it applied (planned from the same snapshot).
fn seed_cluster() -> (Value, Value, Value) {
    let mut reader = crate::snapshot::Reader::default();
    for file in [
        "tests/snapshots/seed/virtualenvironment.yaml",
        "tests/snapshots/seed/cluster.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        reader.read(file, &text).unwrap();
    }
    let namespaces = reader.finish("default").unwrap();
    let mut ns = namespaces[0].clone();
    ns.virtual_environment = ns.virtual_environment.with_route_header([7; 12]);
    let plan = crate::offline::plan_namespaces(
        std::slice::from_ref(&ns),
        &crate::plan::fixtures::settings(),
    )
    .unwrap()
    .remove(0);
    let mut ve = serde_json::to_value(&ns.virtual_environment).unwrap();
    let skipped: Vec<String> =
        vec!["legacy: its only port is TCP (9000): not routed by env, HTTP and gRPC only".into()];
    ve["status"]["conditions"] = json!([{"type": "Ready", "status": "True",
        "reason": "AppliedWithSkips", "message": "3 services routed by env",
        "lastTransitionTime": "2026-12-01T00:00:00Z"}]);
    ve["status"]["skipped"] = json!(skipped);
    let pods: Vec<Value> = ns
        .snapshot
        .pods
        .iter()
        .map(|p| serde_json::to_value(p).unwrap())
        .collect();
    let plugins: Vec<Value> = [&plan.wasm_plugin, &plan.inbound_wasm_plugin]
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap();
            v["metadata"]["generation"] = json!(3);
            v
        })
        .collect();
    let list = |items: Vec<Value>| json!({"metadata": {}, "items": items});
    (list(vec![ve]), list(pods), list(plugins))
}

async fn serve(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
    let (ves, pods, plugins) = seed_cluster();
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"});
    for (path, reply, code) in [
        (
            "/apis/env.alibaba.com/v1alpha1/virtualenvironments",
            ves,
            200,
        ),
        ("/api/v1/namespaces/default/pods", pods, 200),
        (
            "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins",
            plugins,
            200,
        ),
        (
            "/apis/extensions.istio.io/v1alpha1/namespaces/default/trafficextensions",
            not_found,
            404,
        ),
    ] {
        let (request, send) = handle.next_request().await.expect("a request");
        let uri = request.uri().to_string();
        assert_eq!(request.method(), http::Method::GET, "{uri}");
        assert!(
            crate::rbac::permits(crate::rbac::VIEWER, "GET", &uri),
            "GET {uri} is not in rbac::VIEWER, so deploy/viewer-rbac.yaml does not grant it"
        );
        assert!(uri.starts_with(path), "expected {path}, got {uri}");
        if path.ends_with("wasmplugins") {
            assert!(
                uri.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvirtual-env"),
                "{uri}"
            );
        }
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
}

#[tokio::test]
async fn status_reads_the_cluster_and_prints_every_format_as_the_golden() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(serve(handle));
    let view = read(client, None).await.unwrap();
    server.await.unwrap();
    let [ns] = &view[..] else {
        panic!("one namespace: {view:?}")
    };
    // The tree (the seed's cluster has a third level); app-b has no dev.proj1 pod, so
    // dev.proj1 falls back to dev there.
    let envs: Vec<(&str, Option<&str>)> = ns
        .envs
        .iter()
        .map(|e| (e.env.as_str(), e.parent.as_deref()))
        .collect();
    assert_eq!(
        envs,
        [
            ("dev", None),
            ("dev.proj1", Some("dev")),
            ("dev.proj1.user1", Some("dev.proj1"))
        ]
    );
    let app_b = ns.services.iter().find(|s| s.service == "app-b").unwrap();
    assert_eq!(app_b.reaches["dev.proj1"], "fallback:dev");
    assert_eq!(ns.skipped.len(), 1);
    let out = format!(
        "$ virtual-env status\n{}$ virtual-env status -o mermaid\n{}$ virtual-env status -o dot\n{}$ virtual-env status -o json\n{}\n",
        table(&view),
        mermaid(&view),
        dot(&view),
        serde_json::to_string_pretty(&view).unwrap()
    );
    let path = repo().join("tests/snapshots/seed/status.golden.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(expected == out, "{} differs:\n{out}", path.display());
}

/// Several roots: each env is listed right under its own parent.
#[test]
fn the_tree_lists_each_env_under_its_parent() {
    let env = |e: &str, p: Option<&str>| EnvStatus {
        env: e.into(),
        parent: p.map(Into::into),
        pods: Vec::new(),
    };
    let sorted = vec![
        env("dev", None),
        env("qa", None),
        env("dev.a", Some("dev")),
        env("qa.b", Some("qa")),
        env("dev.a.x", Some("dev.a")),
    ];
    let order: Vec<String> = in_tree_order(sorted).into_iter().map(|e| e.env).collect();
    assert_eq!(order, ["dev", "dev.a", "dev.a.x", "qa", "qa.b"]);
}
