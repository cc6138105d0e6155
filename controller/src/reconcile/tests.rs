//! API interaction tests against kube-rs's tower-test mock API server: no cluster
//! runs here, so each test scripts the API server's side and asserts the method, path
//! and body of every call one reconcile makes, in order.

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::Value;

use super::*;
use crate::plan::fixtures::*;
use crate::plan::{MANAGED_BY, MANAGED_BY_LABEL};
use kube::runtime::watcher;
use virtual_env_core::PluginConfig;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A context whose watch caches hold `caches`, and the mock API server's handle.
fn mock_context(caches: Caches) -> (Arc<Context>, Handle) {
    mock_context_with(caches, settings(), no_peers())
}

fn mock_context_with(
    caches: Caches,
    settings: Settings,
    peers: PeerDirectory,
) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let ctx = Context::new(
        client,
        settings,
        Arc::new(Metrics::default()),
        caches,
        peers,
    );
    (Arc::new(ctx), handle)
}

/// A context that publishes Events to the mock API server, as the controller does.
fn mock_context_publishing_events(caches: Caches) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let events = crate::events::Events::Api(client.clone(), "virtual-env-controller-0".into());
    let ctx = Context::new(
        client,
        settings(),
        Arc::new(Metrics::default()),
        caches,
        no_peers(),
    )
    .with_events(events);
    (Arc::new(ctx), handle)
}

/// A directory of no other namespaces (the controller knows no VirtualEnvironments).
fn no_peers() -> PeerDirectory {
    let store = kube::runtime::reflector::store::Writer::default().as_reader();
    PeerDirectory::new(store, futures::channel::mpsc::unbounded().0)
}

/// The Istio objects of a namespace, by kind, for the caches.
fn istio_objects(vss: Vec<Value>, drs: Vec<Value>, wps: Vec<Value>) -> Vec<(Kind, Value)> {
    let tagged = |kind, objects: Vec<Value>| objects.into_iter().map(move |o| (kind, o));
    tagged(Kind::VirtualService, vss)
        .chain(tagged(Kind::DestinationRule, drs))
        .chain(tagged(Kind::WasmPlugin, wps))
        .map(|(kind, mut o)| {
            if o["metadata"]["namespace"].is_null() {
                o["metadata"]["namespace"] = json!(NS);
            }
            (kind, o)
        })
        .collect()
}

/// Caches of a namespace holding `snapshot` and these Istio objects.
fn namespace(snapshot: &Snapshot, vss: Vec<Value>, drs: Vec<Value>, wps: Vec<Value>) -> Caches {
    crate::caches::testing::filled(snapshot, &istio_objects(vss, drs, wps))
}

/// The namespace where the controller applied the seed, and app-a's dev.proj1 pod has
/// gone since.
fn after_proj1_left_app_a() -> Caches {
    let mut snapshot = seed_snapshot();
    snapshot.pods.retain(|p| p.name_any() != "app-a-proj1");
    namespace(
        &snapshot,
        applied_seed("VirtualService"),
        applied_seed("DestinationRule"),
        applied_seed("WasmPlugin"),
    )
}

/// The seed's VirtualEnvironment with the route header recorded in its status that
/// `applied_seed`'s objects use, as after an earlier reconcile.
fn seed_ve_with_its_route_header() -> VirtualEnvironment {
    let mut ve = seed_ve_from_api();
    ve.status = Some(VirtualEnvironmentStatus {
        route_header: Some(
            crate::plan::plan_namespace(&seed_ve_from_api(), &seed_snapshot(), &settings())
                .unwrap()
                .route_header,
        ),
        ..VirtualEnvironmentStatus::default()
    });
    ve
}

fn seed_ve_from_api() -> VirtualEnvironment {
    let mut ve = seed_ve();
    ve.metadata.uid = Some("uid-1".into());
    ve.metadata.generation = Some(3);
    ve.metadata.resource_version = Some("41".into());
    ve
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {}, "items": items})
}

/// An object this VirtualEnvironment (uid-1) wrote earlier.
fn managed_object(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": NS, "uid": format!("obj-{name}"),
        "labels": {MANAGED_BY_LABEL: MANAGED_BY}, "ownerReferences": [{"uid": "uid-1"}]}})
}

/// Labelled as virtual-env's but owned by another VirtualEnvironment: never pruned.
fn managed_by_another(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": NS,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY}, "ownerReferences": [{"uid": "uid-2"}]}})
}

/// A user's VirtualService for `host`, in none of the controller's shapes: a uri match,
/// an unnamed route, a TCP route.
fn users_virtual_service(name: &str, host: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": NS}, "spec": {"hosts": [host],
        "http": [{"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": host}, "weight": 100}]}],
        "tcp": [{"route": [{"destination": {"host": host}}]}]}})
}

/// Every object of `kind` in Istio's Bookinfo networking samples, in namespace `NS`.
fn bookinfo(kind: &str) -> Vec<Value> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/istio/bookinfo-networking");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut value: Value = serde::Deserialize::deserialize(doc).unwrap();
            if value["kind"] == kind {
                value["metadata"]["namespace"] = json!(NS);
                out.push(value);
            }
        }
    }
    assert!(!out.is_empty(), "no {kind} in the Bookinfo samples");
    out
}

/// The API server's side: answers each expected call in turn and records it.
struct ApiServerVerifier {
    handle: Handle,
    calls: Vec<(Method, String, Value)>,
}

impl ApiServerVerifier {
    fn new(handle: Handle) -> Self {
        Self {
            handle,
            calls: Vec::new(),
        }
    }

    async fn expect(&mut self, method: Method, path: &str, reply: Value) -> Value {
        self.answer(method, path, Some(reply)).await
    }

    /// A DELETE of `path`, answered as done; returns its body (its preconditions).
    async fn expect_delete(&mut self, path: &str) -> Value {
        let done = json!({"kind": "Status", "status": "Success"});
        self.expect(Method::DELETE, path, done).await
    }

    /// The next request, checked to be `method` on `path` and granted by the RBAC.
    async fn next_request(
        &mut self,
        method: &Method,
        path: &str,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
        String,
    ) {
        let (request, send) = self.handle.next_request().await.expect("a request");
        let uri = request.uri().to_string();
        assert_eq!(request.method(), method, "{uri}");
        assert!(uri.starts_with(path), "expected {method} {path}, got {uri}");
        assert!(
            crate::rbac::permits(crate::rbac::CLUSTER, method.as_str(), &uri),
            "{method} {uri} is not in rbac::CLUSTER, so deploy/rbac.yaml does not grant it"
        );
        (request, send, uri)
    }

    /// Answers with `reply`, or with the request's own body (what an apply returns).
    async fn answer(&mut self, method: Method, path: &str, reply: Option<Value>) -> Value {
        let (request, send, uri) = self.next_request(&method, path).await;
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        self.calls.push((method, uri, body.clone()));
        let reply = reply.unwrap_or_else(|| body.clone());
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        body
    }

    /// The one read of every reconcile from the API server (the rest come from the
    /// caches): the namespace's VirtualEnvironments.
    async fn list_virtual_environments(&mut self, ves: &[&VirtualEnvironment]) {
        let items = ves
            .iter()
            .map(|ve| serde_json::to_value(ve).unwrap())
            .collect();
        self.expect(
            Method::GET,
            "/apis/env.alibaba.com/v1alpha1/namespaces/default/virtualenvironments",
            list("VirtualEnvironment", items),
        )
        .await;
    }

    /// The first write of a VirtualEnvironment without a route header: the route header
    /// saved in its status, before anything uses it. Answers with `ve` as saved.
    async fn record_route_header(&mut self, ve: &VirtualEnvironment) -> String {
        let (request, send, uri) = self.next_request(&Method::PATCH, STATUS).await;
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        self.calls.push((Method::PATCH, uri, body.clone()));
        // Optimistic concurrency: a stale read gets 409 instead of overwriting a suffix.
        assert_eq!(
            body["metadata"]["resourceVersion"].as_str(),
            ve.metadata.resource_version.as_deref(),
            "{body}"
        );
        let header = body["status"]["routeHeader"].as_str().unwrap().to_owned();
        let mut saved = ve.clone();
        saved
            .status
            .get_or_insert_with(Default::default)
            .route_header = Some(header.clone());
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&saved).unwrap()))
                .unwrap(),
        );
        header
    }

    /// Answers the next request, a list of the gateway plugin objects across namespaces,
    /// with `plugins` (typed as WasmPlugins); returns its URI (its label selector). Not
    /// recorded in `calls`, which count writes and the reconcile's own reads.
    async fn list_gateway_plugins(&mut self, plugins: Vec<Value>) -> String {
        let (request, send, uri) = self
            .next_request(
                &Method::GET,
                "/apis/extensions.istio.io/v1alpha1/wasmplugins",
            )
            .await;
        drop(request);
        let plugins = plugins
            .into_iter()
            .map(|mut plugin| {
                plugin["apiVersion"] = json!("extensions.istio.io/v1alpha1");
                plugin["kind"] = json!("WasmPlugin");
                plugin
            })
            .collect();
        send.send_response(
            Response::builder()
                .body(Body::from(
                    serde_json::to_vec(&list("WasmPlugin", plugins)).unwrap(),
                ))
                .unwrap(),
        );
        uri
    }

    /// Answers the next request (`method` on `path`) with a 500 error; returns its body.
    async fn fail(&mut self, method: Method, path: &str) -> Value {
        let (request, send, uri) = self.next_request(&method, path).await;
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        self.calls.push((method, uri, body.clone()));
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "etcd is unavailable", "reason": "InternalError", "code": 500});
        send.send_response(
            Response::builder()
                .status(500)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
        body
    }

    /// The status patch that ends a reconcile of the seed's VirtualEnvironment: its body.
    async fn expect_status_patch(&mut self) -> Value {
        let reply = serde_json::to_value(seed_ve_from_api()).unwrap();
        self.expect(Method::PATCH, STATUS, reply).await
    }

    /// A first reconcile of the seed's namespace up to its routes: the one list, the route
    /// header recorded, each service's DestinationRule then VirtualService.
    async fn seed_read_and_routed(&mut self) {
        self.list_virtual_environments(&[&seed_ve_from_api()]).await;
        self.record_route_header(&seed_ve_from_api()).await;
        for name in ["app-a", "app-b", "app-c"] {
            self.apply(DR, name).await;
            self.apply(VS, name).await;
        }
    }

    /// The two plugin objects, the called side's first; returns the calling side's.
    async fn apply_plugins(&mut self) -> Value {
        let inbound = self.apply(WP, "virtual-env-inbound").await;
        assert_eq!(inbound["spec"]["match"], json!([{"mode": "SERVER"}]));
        assert_eq!(inbound["spec"]["pluginConfig"]["direction"], "inbound");
        assert_eq!(inbound["spec"]["pluginConfig"]["services"], json!({}));
        let outbound = self.apply(WP, "virtual-env").await;
        assert_eq!(outbound["spec"]["match"], json!([{"mode": "CLIENT"}]));
        assert_eq!(outbound["spec"]["pluginConfig"]["direction"], "outbound");
        outbound
    }

    async fn apply(&mut self, path: &str, name: &str) -> Value {
        let body = self
            .answer(
                Method::PATCH,
                &format!("{path}/{name}?&force=true&fieldManager=virtual-env-controller"),
                None,
            )
            .await;
        // Server-side apply needs full objects.
        assert!(
            body["apiVersion"].is_string() && body["kind"].is_string(),
            "{body}"
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
        body
    }
}

const VS: &str = "/apis/networking.istio.io/v1/namespaces/default/virtualservices";
const DR: &str = "/apis/networking.istio.io/v1/namespaces/default/destinationrules";
const WP: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins";
const STATUS: &str = "/apis/env.alibaba.com/v1alpha1/namespaces/default/virtualenvironments/example-virtualenv/status";

#[tokio::test]
async fn one_reconcile_applies_prunes_and_reports_in_order() {
    // app-old is ours and no longer wanted; a user's VirtualService, under another
    // name and in none of our shapes, routes app-b; app-stray is another
    // VirtualEnvironment's.
    let (ctx, handle) = mock_context(namespace(
        &seed_snapshot(),
        vec![
            managed_object("app-old"),
            users_virtual_service("b-canary", "app-b"),
            managed_by_another("app-stray"),
        ],
        vec![managed_object("app-old"), managed_by_another("app-stray")],
        vec![],
    ));
    let ve = seed_ve_from_api();
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&seed_ve_from_api()]).await;
        api.record_route_header(&seed_ve_from_api()).await;
        // Per service: its subsets, then its routes; then the plugin config.
        for name in ["app-a", "app-c"] {
            let body = api.apply(DR, name).await;
            assert_eq!(body["kind"], "DestinationRule");
            let body = api.apply(VS, name).await;
            assert_eq!(body["kind"], "VirtualService");
            assert_eq!(body["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        }
        let wp = api.apply_plugins().await;
        let services = &wp["spec"]["pluginConfig"]["services"];
        assert!(
            services.get("app-b.default.svc.cluster.local").is_none(),
            "{services}"
        );
        assert_eq!(
            services["app-a.default.svc.cluster.local"],
            json!(["dev", "dev.proj1"])
        );
        // Routes go before the subsets they use; each deletion is conditional on the UID.
        for path in [VS, DR] {
            let body = api.expect_delete(&format!("{path}/app-old")).await;
            assert_eq!(body["preconditions"]["uid"], "obj-app-old", "{body}");
        }
        let status = api.expect_status_patch().await;
        let status = &status["status"];
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(status["conditions"][0]["type"], "Ready");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(status["conditions"][0]["reason"], "AppliedWithSkips");
        assert_eq!(status["services"], 2);
        assert_eq!(status["envs"], 2);
        // The random route header chosen for this reconcile is recorded for the next.
        let route_header = status["routeHeader"].as_str().unwrap();
        assert!(route_header.starts_with("x-virtual-env-route-"), "{status}");
        assert_eq!(wp["spec"]["pluginConfig"]["routeHeader"], route_header);
        assert_eq!(
            status["skipped"][0],
            "app-b: left to VirtualService b-canary, which this VirtualEnvironment does not manage",
            "{status}"
        );
        api.calls.len()
    });
    let action = reconcile(Arc::new(ve), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    // 1 read (the rest come from the caches), the route header saved, 2
    // DestinationRules, 2 VirtualServices, the 2 WasmPlugins, 2 prunes, the status.
    assert_eq!(server.await.unwrap(), 11);
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("virtual_env_objects_total{kind=\"VirtualService\",action=\"pruned\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("virtual_env_reconciles_total 1"),
        "{metrics}"
    );
}

const VE_PATH: &str =
    "/apis/env.alibaba.com/v1alpha1/namespaces/default/virtualenvironments/example-virtualenv";
const GATEWAY_WP: &str =
    "/apis/extensions.istio.io/v1alpha1/namespaces/istio-system/wasmplugins/virtual-env.default.public";

/// The seed's namespace with app-a annotated for the gateway `istio-system/public`,
/// which exists on Istio's ingress gateway pods, whose owner's policy admits the
/// namespace; and `extra` Istio objects.
fn exposed_through_a_gateway(extra: Vec<(Kind, Value)>) -> Caches {
    let mut snapshot = seed_exposed_through("istio-system/public");
    snapshot.pods.push(crate::plan::fixtures::gateway_pod());
    let policy = crate::plan::fixtures::ingress_policy(
        r#"[{namespace: default, hosts: [a.example.com]}]"#,
        "{mode: accept}",
    );
    snapshot.cluster = std::sync::Arc::new(crate::gateway_admission::GatewayCluster {
        policies: vec![policy],
        ..Default::default()
    });
    let mut istio = vec![(
        Kind::Gateway,
        json!({"metadata": {"name": "public", "namespace": "istio-system"},
            "spec": {"selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["*"]}]}}),
    )];
    istio.extend(extra);
    crate::caches::testing::filled(&snapshot, &istio)
}

/// A gateway plugin object this VirtualEnvironment (uid-1) wrote earlier.
fn our_gateway_plugin() -> (Kind, Value) {
    (
        Kind::WasmPlugin,
        json!({"metadata": {"name": "virtual-env.default.public", "namespace": "istio-system",
            "uid": "gw-plugin-uid", "labels": {MANAGED_BY_LABEL: MANAGED_BY,
            crate::plan::OWNER_UID_LABEL: "uid-1", crate::plan::OWNER_NAMESPACE_LABEL: NS}},
            "spec": {}}),
    )
}

#[tokio::test]
async fn a_service_exposed_through_a_gateway_gets_the_finalizer_then_the_gateways_plugin() {
    let (ctx, handle) = mock_context(exposed_through_a_gateway(vec![]));
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&seed_ve_from_api()]).await;
        api.record_route_header(&seed_ve_from_api()).await;
        // The finalizer first: no object in another namespace exists without it.
        let reply = serde_json::to_value(seed_ve_from_api()).unwrap();
        let patch = api.expect(Method::PATCH, VE_PATH, reply).await;
        assert_eq!(
            patch["metadata"]["finalizers"],
            json!([crate::gateway::FINALIZER])
        );
        api.apply(DR, "app-a").await;
        let vs = api.apply(VS, "app-a").await;
        assert_eq!(
            vs["spec"]["gateways"],
            json!(["istio-system/public", "mesh"])
        );
        assert_eq!(
            vs["spec"]["hosts"],
            json!(["app-a.default.svc.cluster.local", "a.example.com"])
        );
        for name in ["app-b", "app-c"] {
            api.apply(DR, name).await;
            let vs = api.apply(VS, name).await;
            assert!(vs["spec"]["gateways"].is_null(), "only app-a is exposed");
        }
        let wp = api.apply_plugins().await;
        // The gateway's plugin object, in the gateway's namespace, after the
        // namespace's calling side: the same routes and route header.
        let gateway = api
            .answer(
                Method::PATCH,
                &format!("{GATEWAY_WP}?&force=true&fieldManager=virtual-env-controller"),
                None,
            )
            .await;
        assert_eq!(
            gateway["metadata"]["labels"][crate::plan::OWNER_UID_LABEL],
            "uid-1"
        );
        assert!(gateway["metadata"]["ownerReferences"].is_null());
        assert_eq!(
            gateway["spec"]["selector"]["matchLabels"],
            json!({"istio": "ingressgateway"})
        );
        let config = &gateway["spec"]["pluginConfig"];
        assert_eq!(
            config["routeHeader"],
            wp["spec"]["pluginConfig"]["routeHeader"]
        );
        assert_eq!(
            config["hosts"]["a.example.com"],
            "app-a.default.svc.cluster.local"
        );
        assert_eq!(
            config["services"],
            json!({"app-a.default.svc.cluster.local": ["dev", "dev.proj1"]})
        );
        let status = api.expect_status_patch().await;
        assert_eq!(status["status"]["conditions"][0]["status"], "True");
        api.calls.len()
    });
    reconcile(Arc::new(seed_ve_from_api()), ctx).await.unwrap();
    // The list, the route header saved, the finalizer, 6 routing objects, 2 + 1 plugin
    // objects, the status.
    assert_eq!(server.await.unwrap(), 13);
}

#[tokio::test]
async fn deleting_the_virtual_environment_deletes_its_gateway_plugins_then_the_finalizer() {
    // Not in the caches (applied just before the deletion, the watch has not caught
    // up): listed from the API server by the owner label all the same.
    let (ctx, handle) = mock_context(exposed_through_a_gateway(vec![]));
    let mut ve = seed_ve_from_api();
    ve.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    ve.metadata.finalizers = Some(vec![
        "example.com/keep".into(),
        crate::gateway::FINALIZER.into(),
    ]);
    ve.metadata.resource_version = Some("41".into());
    let reply = serde_json::to_value(&ve).unwrap();
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        let uri = api.list_gateway_plugins(vec![our_gateway_plugin().1]).await;
        assert!(
            uri.contains("labelSelector=env.alibaba.com%2Fowner-uid%3Duid-1"),
            "{uri}"
        );
        let body = api.expect_delete(GATEWAY_WP).await;
        assert_eq!(body["preconditions"]["uid"], "gw-plugin-uid");
        let patch = api.expect(Method::PATCH, VE_PATH, reply).await;
        assert_eq!(patch["metadata"]["finalizers"], json!(["example.com/keep"]));
        assert_eq!(patch["metadata"]["resourceVersion"], "41");
        api.calls.len()
    });
    let action = reconcile(Arc::new(ve), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(server.await.unwrap(), 2, "nothing else is written");
}

/// On a cluster that serves Istio 1.30's TrafficExtension the plugin objects are
/// written as TrafficExtensions, and the WasmPlugins this VirtualEnvironment wrote
/// before are deleted once they are in place.
#[tokio::test]
async fn with_traffic_extension_the_plugins_switch_api_and_the_old_ones_go_after() {
    let old_plugins = vec![
        managed_object("virtual-env"),
        managed_object("virtual-env-inbound"),
    ];
    let istio = istio_objects(vec![], vec![], old_plugins);
    let caches = crate::caches::testing::filled_for(
        ExtensionApi::TrafficExtension,
        &seed_snapshot(),
        &istio,
        None,
    );
    let settings = Settings {
        extension_api: ExtensionApi::TrafficExtension,
        ..settings()
    };
    let (ctx, handle) = mock_context_with(caches, settings, no_peers());
    const TE: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/default/trafficextensions";
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.seed_read_and_routed().await;
        let inbound = api.apply(TE, "virtual-env-inbound").await;
        assert_eq!(inbound["kind"], "TrafficExtension");
        assert_eq!(inbound["spec"]["match"], json!([{"mode": "SERVER"}]));
        let outbound = api.apply(TE, "virtual-env").await;
        assert_eq!(outbound["spec"]["wasm"]["failStrategy"], "FAIL_OPEN");
        assert_eq!(
            outbound["spec"]["wasm"]["pluginConfig"]["services"]["app-a.default.svc.cluster.local"],
            json!(["dev", "dev.proj1"])
        );
        for name in ["virtual-env", "virtual-env-inbound"] {
            let body = api.expect_delete(&format!("{WP}/{name}")).await;
            assert_eq!(body["preconditions"]["uid"], format!("obj-{name}"));
        }
        let status = api.expect_status_patch().await;
        assert_eq!(status["status"]["conditions"][0]["status"], "True");
        api.calls.len()
    });
    reconcile(Arc::new(seed_ve_from_api()), ctx).await.unwrap();
    assert_eq!(
        server.await.unwrap(),
        13,
        "and the route header saved first"
    );
}

/// A namespace holding every VirtualService and DestinationRule of Istio's Bookinfo
/// samples (gateway routes, uri and header matches, weights, fault injection, TCP and
/// TLS routes, rules with only a traffic policy) beside the seed's services, and
/// Bookinfo's `reviews` with pods in two envs: the seed is routed, `reviews` is left to
/// the user's objects and named, nothing of the user's is touched.
#[tokio::test]
async fn a_namespace_with_istios_bookinfo_samples_is_reconciled_around_them() {
    let ve = seed_ve_from_api();
    let mut snapshot = seed_snapshot();
    snapshot.services.push(service("reviews"));
    for (name, env) in [("reviews-v1", "dev"), ("reviews-v2", "dev.proj1")] {
        snapshot.pods.push(pod(name, "reviews", Some(env), true));
    }
    let (vss, drs) = (bookinfo("VirtualService"), bookinfo("DestinationRule"));
    assert!(
        vss.len() >= 15 && drs.len() >= 4,
        "{} {}",
        vss.len(),
        drs.len()
    );
    // Every sample reaches the caches, whatever its shape; samples of different files
    // that share a name are one object in a namespace, as in a cluster.
    let names = |objects: &[Value], kind: &str| {
        objects
            .iter()
            .map(|o| format!("{kind}/{}", o["metadata"]["name"]))
            .collect::<BTreeSet<_>>()
    };
    let distinct = names(&vss, "vs").len() + names(&drs, "dr").len();
    let caches = namespace(&snapshot, vss, drs, vec![]);
    assert_eq!(
        caches.snapshot(NS).existing.len(),
        distinct,
        "a sample was lost"
    );
    let (ctx, handle) = mock_context_publishing_events(caches);
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.seed_read_and_routed().await;
        let wp = api.apply_plugins().await;
        let services = &wp["spec"]["pluginConfig"]["services"];
        assert!(services.get("reviews.default.svc.cluster.local").is_none());
        let status = api.expect_status_patch().await;
        let status = &status["status"];
        assert_eq!(
            status["conditions"][0]["reason"], "AppliedWithSkips",
            "{status}"
        );
        let skipped = status["skipped"][0].as_str().unwrap();
        assert!(
            skipped
                .starts_with("reviews: left to DestinationRule reviews, VirtualService reviews,"),
            "{skipped}"
        );
        // The skip is said as an Event on the VirtualEnvironment (`kubectl describe`).
        let event = api
            .answer(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/default/events",
                None,
            )
            .await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "Skipped");
        assert_eq!(event["regarding"]["kind"], "VirtualEnvironment");
        assert_eq!(event["regarding"]["name"], "example-virtualenv");
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .starts_with("reviews: left to"),
            "{event}"
        );
        // No DELETE of anything the user wrote.
        assert!(api.calls.iter().all(|(m, _, _)| m != Method::DELETE));
    });
    reconcile(Arc::new(ve), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_wasm_plugin_of_ours_name_that_is_a_users_is_not_overwritten() {
    let users =
        json!({"metadata": {"name": "virtual-env", "namespace": NS}, "spec": {"url": "oci://x"}});
    let (ctx, handle) = mock_context(namespace(&seed_snapshot(), vec![], vec![], vec![users]));
    let ve = seed_ve_from_api();
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&seed_ve_from_api()]).await;
        api.record_route_header(&seed_ve_from_api()).await;
        let body = api.expect_status_patch().await;
        assert_eq!(body["status"]["conditions"][0]["reason"], "Conflict");
        let message = body["status"]["conditions"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("WasmPlugin named virtual-env"),
            "{message}"
        );
    });
    assert_eq!(
        reconcile(Arc::new(ve), ctx).await.unwrap(),
        Action::await_change()
    );
    server.await.unwrap();
}

/// What the controller applied for the seed, as the API server lists it back.
fn applied_seed(kind: &str) -> Vec<Value> {
    let plan =
        crate::plan::plan_namespace(&seed_ve_from_api(), &seed_snapshot(), &settings()).unwrap();
    let objects: Vec<Value> = match kind {
        "DestinationRule" => plan
            .destination_rules
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect(),
        "VirtualService" => plan
            .virtual_services
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect(),
        _ => vec![
            serde_json::to_value(&plan.wasm_plugin).unwrap(),
            serde_json::to_value(&plan.inbound_wasm_plugin).unwrap(),
        ],
    };
    objects
        .into_iter()
        .map(|mut o| {
            o["metadata"]["uid"] =
                json!(format!("obj-{}", o["metadata"]["name"].as_str().unwrap()));
            o
        })
        .collect()
}

async fn reply_error(api: &mut ApiServerVerifier, method: Method, path: &str, code: u16) {
    let (_, send, _) = api.next_request(&method, path).await;
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": "Invalid", "message": format!("refused with {code}")});
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&status).unwrap()))
            .unwrap(),
    );
}

/// A namespace where dev.proj1 left app-a: its subset and route stay until the plugin
/// config no longer selects it, then the route goes, then the subset. Only what
/// changes is written: the union objects are what is there already (app-a still has
/// both), app-b and app-c and the called side's plugin are unchanged.
#[tokio::test]
async fn a_leaving_env_is_removed_route_first_after_the_plugin_config() {
    let (ctx, handle) = mock_context(after_proj1_left_app_a());
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&seed_ve_from_api()]).await;
        let wp = api.apply(WP, "virtual-env").await;
        assert_eq!(
            wp["spec"]["pluginConfig"]["services"]["app-a.default.svc.cluster.local"],
            json!(["dev"])
        );
        let vs = api.apply(VS, "app-a").await;
        assert_eq!(vs["spec"]["http"].as_array().unwrap().len(), 2, "{vs}");
        let dr = api.apply(DR, "app-a").await;
        assert_eq!(dr["spec"]["subsets"].as_array().unwrap().len(), 1, "{dr}");
        let body = api.expect_status_patch().await;
        assert_eq!(body["status"]["conditions"][0]["reason"], "Applied");
        api.calls.len()
    });
    // The route header recorded earlier, so that only dev.proj1's leaving differs.
    let ve = seed_ve_with_its_route_header();
    reconcile(Arc::new(ve), ctx).await.unwrap();
    // The list, the calling side's plugin, app-a's route and rule, the status.
    assert_eq!(server.await.unwrap(), 5);
}

/// Namespace `pay` has a VirtualEnvironment and published its table: the seed's
/// namespace, otherwise as applied, writes only its calling side's plugin object, now
/// with pay's table, and its own first publication queues pay for a reconcile.
#[tokio::test]
async fn a_namespace_takes_in_the_table_another_published() {
    let mut ves = kube::runtime::reflector::store::Writer::default();
    let mut pay_ve = seed_ve();
    pay_ve.metadata.namespace = Some("pay".into());
    for ve in [seed_ve_from_api(), pay_ve] {
        ves.apply_watcher_event(&watcher::Event::Apply(ve));
    }
    let (replan, mut replans) = futures::channel::mpsc::unbounded();
    let peers = PeerDirectory::new(ves.as_reader(), replan);
    let pay = PluginConfig {
        route_header: "x-virtual-env-route-pay123".into(),
        default_subset: Some("dev".into()),
        services: [("ledger", vec!["dev", "dev.proj1"]), ("fx", vec!["dev"])]
            .into_iter()
            .map(|(name, envs)| {
                let envs = envs.into_iter().map(String::from).collect();
                (format!("{name}.pay.svc.cluster.local"), envs)
            })
            .collect(),
        ..PluginConfig::default()
    };
    peers.publish("pay", Some(published(&pay)), |_| None);
    while replans.try_recv().is_ok() {}
    let caches = namespace(
        &seed_snapshot(),
        applied_seed("VirtualService"),
        applied_seed("DestinationRule"),
        applied_seed("WasmPlugin"),
    );
    let (ctx, handle) = mock_context_with(caches, settings(), peers);
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&seed_ve_from_api()]).await;
        let wp = api.apply(WP, "virtual-env").await;
        let config = &wp["spec"]["pluginConfig"];
        assert_eq!(
            config["peers"],
            json!({"pay": {"routeHeader": "x-virtual-env-route-pay123", "defaultSubset": "dev",
                           "services": {"ledger": ["dev", "dev.proj1"]}}}),
            "{config}"
        );
        api.expect_status_patch().await;
        api.calls.len()
    });
    reconcile(Arc::new(seed_ve_with_its_route_header()), ctx)
        .await
        .unwrap();
    assert_eq!(
        server.await.unwrap(),
        3,
        "the list, the plugin object, the status"
    );
    let queued = replans.try_recv().expect("pay is planned again");
    assert_eq!(queued.namespace.as_deref(), Some("pay"));
    assert!(replans.try_recv().is_err(), "only pay");
}

/// After a restart (or a leader change) the directory of published tables is empty:
/// a namespace not planned yet since is taken as its plugin object in the cluster says,
/// so calls into it keep their env instead of being rewritten without it.
#[tokio::test]
async fn after_a_restart_calls_into_another_namespace_keep_its_table() {
    let mut ves = kube::runtime::reflector::store::Writer::default();
    let mut pay_ve = seed_ve();
    pay_ve.metadata.namespace = Some("pay".into());
    pay_ve.metadata.uid = Some("pay-uid".into());
    let mut shop_ve = seed_ve();
    shop_ve.metadata.namespace = Some("shop".into());
    shop_ve.metadata.uid = Some("shop-uid".into());
    crate::caches::testing::fill(&mut ves, vec![seed_ve_from_api(), pay_ve, shop_ve]);
    let peers = PeerDirectory::new(ves.as_reader(), futures::channel::mpsc::unbounded().0);
    let table = |route_header: &str| PluginConfig {
        route_header: route_header.into(),
        default_subset: Some("dev".into()),
        services: [(
            "ledger.pay.svc.cluster.local".to_owned(),
            vec!["dev".to_owned(), "dev.proj1".to_owned()],
        )]
        .into(),
        ..PluginConfig::default()
    };
    let plugin = |ns: &str, owner: Option<&str>, config: &PluginConfig| {
        let mut object = managed_object("virtual-env");
        object["metadata"]["namespace"] = json!(ns);
        object["metadata"]["ownerReferences"] = match owner {
            Some(uid) => json!([{"apiVersion": "env.alibaba.com/v1alpha1",
                "kind": "VirtualEnvironment", "name": "example-virtualenv", "uid": uid,
                "controller": true}]),
            None => json!([]),
        };
        object["spec"] = json!({"url": "http://x/filter.wasm", "failStrategy": "FAIL_OPEN",
            "pluginConfig": serde_json::to_value(config).unwrap()});
        (Kind::WasmPlugin, object)
    };
    let mut objects = istio_objects(
        applied_seed("VirtualService"),
        applied_seed("DestinationRule"),
        applied_seed("WasmPlugin"),
    );
    // pay's calling side as an earlier run of the controller applied it; in shop, an
    // object of that name and label a tenant wrote itself (no owner): not believed.
    objects.push(plugin(
        "pay",
        Some("pay-uid"),
        &table("x-virtual-env-route-pay123"),
    ));
    objects.push(plugin("shop", None, &table("x-virtual-env-route-forged")));
    let mut caches = crate::caches::testing::filled(&seed_snapshot(), &objects);
    caches.virtual_environments = Some(ves.as_reader());
    let (ctx, handle) = mock_context_with(caches, settings(), peers);
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        // No list of the namespace's VirtualEnvironments: the cache of them holds it.
        let wp = api.apply(WP, "virtual-env").await;
        let peers = &wp["spec"]["pluginConfig"]["peers"];
        assert_eq!(
            peers["pay"]["services"],
            json!({"ledger": ["dev", "dev.proj1"]}),
            "{peers}"
        );
        assert!(peers.get("shop").is_none(), "a forged table: {peers}");
        api.expect_status_patch().await;
    });
    reconcile(Arc::new(seed_ve_with_its_route_header()), ctx)
        .await
        .unwrap();
    server.await.unwrap();
}

/// The route header's suffix is saved before anything routes by it: when the save
/// fails nothing is applied (the next reconcile picks a suffix again, and nothing was
/// published under this one); the error is reported without touching the rest of the
/// status.
#[tokio::test]
async fn a_route_header_that_could_not_be_saved_is_used_nowhere() {
    let (ctx, handle) = mock_context(namespace(&seed_snapshot(), vec![], vec![], vec![]));
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&seed_ve_from_api()]).await;
        let save = api.fail(Method::PATCH, STATUS).await;
        assert!(save["status"]["routeHeader"].is_string());
        // The error, merged: only the condition and the generation.
        let report = api
            .expect(
                Method::PATCH,
                STATUS,
                serde_json::to_value(seed_ve_from_api()).unwrap(),
            )
            .await;
        assert_eq!(
            report["status"]["conditions"][0]["reason"],
            "ReconcileError"
        );
        let fields: Vec<&String> = report["status"].as_object().unwrap().keys().collect();
        assert_eq!(fields, ["conditions", "observedGeneration"]);
        api.calls.len()
    });
    reconcile(Arc::new(seed_ve_from_api()), ctx)
        .await
        .unwrap_err();
    assert_eq!(server.await.unwrap(), 3, "no apply");
}

/// The route header saved from a stale read (the object changed since: perhaps another
/// run saved a suffix) is refused by the API server (409, on the resourceVersion sent):
/// nothing is applied, no error lands in the status, and the reconcile runs again soon
/// from the fresh object.
#[tokio::test]
async fn a_route_header_saved_from_a_stale_read_is_refused_and_retried_quietly() {
    let (ctx, handle) = mock_context(namespace(&seed_snapshot(), vec![], vec![], vec![]));
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&seed_ve_from_api()]).await;
        reply_error(&mut api, Method::PATCH, STATUS, 409).await;
        // The mock API server goes: any further request (an apply, an error written
        // into the status) would fail the reconcile.
    });
    let action = reconcile(Arc::new(seed_ve_from_api()), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(1)));
    server.await.unwrap();
}

/// A reconcile that fails after the route header was saved (the caches not filled in
/// time, here) reports the error from the object it was given, which has no route
/// header yet: the report must not take the saved one out of the status.
#[tokio::test]
async fn an_error_after_the_route_header_was_saved_keeps_it() {
    let caches =
        crate::caches::testing::filled_but(&seed_snapshot(), &[], Some(Kind::VirtualService));
    let (ctx, handle) = mock_context(caches);
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&seed_ve_from_api()]).await;
        api.record_route_header(&seed_ve_from_api()).await;
        let (request, send, _) = api.next_request(&Method::PATCH, STATUS).await;
        let content_type = request.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let report: Value = serde_json::from_slice(&bytes).unwrap();
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&seed_ve_from_api()).unwrap(),
        )));
        (content_type, report)
    });
    reconcile(Arc::new(seed_ve_from_api()), ctx)
        .await
        .unwrap_err();
    let (content_type, report) = server.await.unwrap();
    assert_eq!(content_type, "application/merge-patch+json");
    assert!(report["status"]["routeHeader"].is_null(), "{report}");
    assert_eq!(
        report["status"]["conditions"][0]["reason"],
        "ReconcileError"
    );
}

/// A Gateway in istio-system reconciles the VirtualEnvironments of every namespace
/// (they may expose services through it); a pod only its own namespace's.
#[test]
fn a_gateway_change_reaches_every_namespace() {
    let mut ves = kube::runtime::reflector::store::Writer::default();
    for ns in ["default", "pay"] {
        let mut ve = seed_ve();
        ve.metadata.namespace = Some(ns.into());
        ves.apply_watcher_event(&watcher::Event::Apply(ve));
    }
    let gateway: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "ingressgateway", "namespace": "istio-system"}
    }))
    .unwrap();
    assert_eq!(
        crate::runtime::every(ves.as_reader())(gateway.clone()).len(),
        2
    );
    assert!(crate::runtime::in_same_namespace(ves.as_reader())(gateway).is_empty());
    let pod = seed_snapshot().pods.remove(0);
    assert_eq!(
        crate::runtime::in_same_namespace(ves.as_reader())(pod).len(),
        1
    );
}

/// A resync of a namespace that is as planned writes nothing but the status.
#[tokio::test]
async fn an_unchanged_namespace_is_not_written_again() {
    let ve = seed_ve_with_its_route_header();
    let (ctx, handle) = mock_context(namespace(
        &seed_snapshot(),
        applied_seed("VirtualService"),
        applied_seed("DestinationRule"),
        applied_seed("WasmPlugin"),
    ));
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&seed_ve_from_api()]).await;
        api.expect_status_patch().await;
        api.calls.len()
    });
    reconcile(Arc::new(ve), ctx).await.unwrap();
    assert_eq!(server.await.unwrap(), 2);
}

/// 422 on one service's rule, 500 on another's routes, a timeout on nothing: the rest is
/// applied, the failed services keep their previous plugin entry and skip their later
/// steps, the status names every failure, and the reconcile fails for a retry.
#[tokio::test(start_paused = true)]
async fn failed_writes_do_not_stop_the_rest_and_are_named() {
    // The rules are gone (so each is written, and can fail); the routes and the plugin
    // config are the ones applied before dev.proj1 left app-a.
    let mut snapshot = seed_snapshot();
    snapshot.pods.retain(|p| p.name_any() != "app-a-proj1");
    let (ctx, handle) = mock_context(namespace(
        &snapshot,
        applied_seed("VirtualService"),
        vec![],
        applied_seed("WasmPlugin"),
    ));
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&seed_ve_from_api()]).await;
        api.record_route_header(&seed_ve_from_api()).await;
        reply_error(&mut api, Method::PATCH, &format!("{DR}/app-a"), 422).await;
        api.apply(VS, "app-a").await;
        api.apply(DR, "app-b").await;
        reply_error(&mut api, Method::PATCH, &format!("{VS}/app-b"), 500).await;
        api.apply(DR, "app-c").await;
        // app-c's routes: the API server never answers; the write times out.
        let (_request, _never_answered, _) = api
            .next_request(&Method::PATCH, &format!("{VS}/app-c"))
            .await;
        let wp = api.apply_plugins().await;
        // app-a failed: it keeps dev.proj1 in the plugin config, as its old routes do.
        let services = &wp["spec"]["pluginConfig"]["services"];
        assert_eq!(
            services["app-a.default.svc.cluster.local"],
            json!(["dev", "dev.proj1"])
        );
        // No later step for the failed services (app-a's final route and rule).
        let body = api.expect_status_patch().await;
        let condition = &body["status"]["conditions"][0];
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], "ApplyFailed");
        let message = condition["message"].as_str().unwrap();
        for named in [
            "DestinationRule app-a",
            "VirtualService app-b",
            "VirtualService app-c",
            "did not answer",
        ] {
            assert!(message.contains(named), "{named}: {message}");
        }
    });
    let err = reconcile(Arc::new(seed_ve_from_api()), ctx)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Apply { failed: 3 }), "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn an_invalid_spec_writes_nothing_but_the_status() {
    let (ctx, handle) = mock_context(namespace(&seed_snapshot(), vec![], vec![], vec![]));
    let mut ve = ve("envLabel: {splitter: '::'}");
    ve.metadata.uid = Some("uid-1".into());
    let listed = ve.clone();
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&listed]).await;
        api.record_route_header(&listed).await;
        let body = api
            .expect(
                Method::PATCH,
                STATUS,
                serde_json::to_value(&listed).unwrap(),
            )
            .await;
        assert_eq!(body["status"]["conditions"][0]["status"], "False");
        assert_eq!(body["status"]["conditions"][0]["reason"], "InvalidSpec");
        assert!(body["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("splitter"));
    });
    let action = reconcile(Arc::new(ve), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
}

/// Without Istio's CRDs the VirtualService watch keeps failing and its cache is never
/// filled: the reconcile says so (and what to install) instead of planning from an
/// empty cache. On tokio's paused clock: the 30 s wait passes at once.
#[tokio::test(start_paused = true)]
async fn missing_istio_crds_are_an_error_that_says_what_to_install() {
    let caches =
        crate::caches::testing::filled_but(&seed_snapshot(), &[], Some(Kind::VirtualService));
    let (ctx, handle) = mock_context(caches);
    let ve = seed_ve_from_api();
    let listed = ve.clone();
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&listed]).await;
        api.record_route_header(&listed).await;
        let body = api.expect_status_patch().await;
        assert_eq!(body["status"]["conditions"][0]["reason"], "ReconcileError");
    });
    let err = reconcile(Arc::new(ve), ctx).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("VirtualService cache") && message.contains("Istio"),
        "{message}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_second_virtual_environment_in_a_namespace_stands_aside() {
    let (ctx, handle) = mock_context(namespace(&seed_snapshot(), vec![], vec![], vec![]));
    let mut older = seed_ve_from_api();
    older.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
    let mut newer = seed_ve_from_api();
    newer.metadata.name = Some("newer".into());
    newer.metadata.creation_timestamp = Some(Time("2026-06-01T00:00:00Z".parse().unwrap()));
    let (older_listed, newer_listed) = (older, newer.clone());
    let reply = serde_json::to_value(&newer).unwrap();
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&older_listed, &newer_listed])
            .await;
        let body = api.expect(Method::PATCH, "/apis/env.alibaba.com/v1alpha1/namespaces/default/virtualenvironments/newer/status", reply).await;
        assert_eq!(body["status"]["conditions"][0]["reason"], "Conflict");
    });
    let action = reconcile(Arc::new(newer), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
}

/// The controller's cache of VirtualEnvironments (another watch's) still holds an older
/// one that was deleted: the conflict it suggests is checked with a list from the API,
/// which has only this one, and this one goes on to manage the namespace (a conflict
/// reported from the cache would wait for a change that never comes).
#[tokio::test]
async fn a_conflict_only_a_stale_cache_shows_is_checked_with_the_api() {
    let mut caches = namespace(&seed_snapshot(), vec![], vec![], vec![]);
    let mut deleted = seed_ve_from_api();
    deleted.metadata.name = Some("deleted".into());
    deleted.metadata.uid = Some("uid-0".into());
    deleted.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
    let mut ours = seed_ve_from_api();
    ours.metadata.creation_timestamp = Some(Time("2026-06-01T00:00:00Z".parse().unwrap()));
    let mut ves = kube::runtime::reflector::store::Writer::default();
    crate::caches::testing::fill(&mut ves, vec![deleted, ours.clone()]);
    caches.virtual_environments = Some(ves.as_reader());
    let (ctx, handle) = mock_context(caches);
    let listed = ours.clone();
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&listed]).await;
        // Not a Conflict: the route header is saved, as for the namespace's only one.
        let header = api.record_route_header(&listed).await;
        assert!(header.starts_with("x-virtual-env-route"), "{header}");
    });
    // The rest of the reconcile is not scripted: it fails once the server stops answering.
    let _ = reconcile(Arc::new(ours), ctx).await;
    server.await.unwrap();
}

#[test]
fn backoff_doubles_and_is_capped() {
    let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
}

#[tokio::test]
async fn failures_are_counted_per_object_until_a_success() {
    let (ctx, _handle) = mock_context(namespace(&seed_snapshot(), vec![], vec![], vec![]));
    let counts: Vec<u32> = (0..3).map(|_| ctx.failures("ns/ve", true)).collect();
    assert_eq!(counts, [1, 2, 3]);
    assert_eq!(ctx.failures("other/ve", true), 1);
    assert_eq!(ctx.failures("ns/ve", false), 0);
    assert_eq!(ctx.failures("ns/ve", true), 1);
}

/// A gateway plugin object whose VirtualEnvironment is gone (removed while no controller
/// ran, or its finalizer taken off by hand) is deleted by the sweep, conditionally on what
/// was listed; one whose owner lives is kept. Everything is read from the (mock) API
/// server, plugin objects before owners.
#[tokio::test]
async fn the_sweep_deletes_gateway_plugins_whose_owner_is_gone_and_only_those() {
    // A VirtualEnvironment recreated in the orphan's owner namespace: planned again after
    // the sweep, since no watch of its namespace sees the gateway's.
    let mut recreated = seed_ve_from_api();
    recreated.metadata.namespace = Some("gone".into());
    recreated.metadata.uid = Some("uid-new".into());
    let mut writer = kube::runtime::reflector::store::Writer::default();
    writer.apply_watcher_event(&watcher::Event::Apply(recreated));
    let (replan, mut replans) = futures::channel::mpsc::unbounded();
    let (ctx, handle) = mock_context_with(
        namespace(&seed_snapshot(), vec![], vec![], vec![]),
        settings(),
        PeerDirectory::new(writer.as_reader(), replan),
    );
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        let living = our_gateway_plugin().1;
        let mut orphan = our_gateway_plugin().1;
        orphan["metadata"]["name"] = json!("virtual-env.gone.public");
        orphan["metadata"]["uid"] = json!("orphan-uid");
        orphan["metadata"]["resourceVersion"] = json!("77");
        orphan["metadata"]["labels"][crate::plan::OWNER_UID_LABEL] = json!("uid-gone");
        orphan["metadata"]["labels"][crate::plan::OWNER_NAMESPACE_LABEL] = json!("gone");
        let uri = api.list_gateway_plugins(vec![living, orphan]).await;
        assert!(
            uri.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvirtual-env%2Cenv.alibaba.com%2Fowner-uid"),
            "{uri}"
        );
        let owners = serde_json::to_value(seed_ve_from_api()).unwrap();
        api.expect(
            Method::GET,
            "/apis/env.alibaba.com/v1alpha1/virtualenvironments",
            list("VirtualEnvironment", vec![owners]),
        )
        .await;
        let body = api.expect_delete("/apis/extensions.istio.io/v1alpha1/namespaces/istio-system/wasmplugins/virtual-env.gone.public").await;
        assert_eq!(body["preconditions"]["uid"], "orphan-uid");
        assert_eq!(body["preconditions"]["resourceVersion"], "77");
        // Nothing else: the living owner's plugin is not touched.
        let more = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            api.handle.next_request(),
        )
        .await;
        assert!(more.is_err(), "an unexpected request after the sweep");
    });
    let swept = crate::sweep::sweep_orphans(&ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(swept, 1);
    let queued = replans
        .try_recv()
        .expect("the owner namespace planned again");
    assert_eq!(queued.namespace.as_deref(), Some("gone"));
    assert!(replans.try_recv().is_err(), "and nobody else");
    assert!(ctx
        .metrics
        .render()
        .contains("virtual_env_objects_total{kind=\"WasmPlugin\",action=\"pruned\"} 1"));
}

const SERVICES: &str = "/api/v1/namespaces/default/services";
const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes";

/// Routes written as Gateway API: the envs' Services, then the HTTPRoutes, before the
/// plugin config; a Service of ours no longer needed goes after it; a user's HTTPRoute for
/// a service leaves that service alone. Every call is one `deploy/rbac.yaml` grants.
#[tokio::test]
async fn routes_in_gateway_api_write_env_services_then_httproutes_then_the_plugin_config() {
    let mut ve = seed_ve_from_api();
    ve.spec.routing = Some(crate::crd::RoutingSpec {
        api: Some(crate::crd::RoutingApi::HttpRoute),
    });
    let mut snapshot = seed_snapshot();
    let mut stale = service("app-old-dev-0123abcd");
    stale.metadata.uid = Some("obj-app-old-dev".into());
    stale.metadata.labels = Some(std::collections::BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (
            crate::gamma::ENV_SERVICE_OF_LABEL.to_owned(),
            "app-old".to_owned(),
        ),
    ]));
    stale.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            uid: "uid-1".into(),
            ..Default::default()
        },
    ]);
    snapshot.services.push(stale);
    let users_route = json!({"metadata": {"name": "b-canary", "namespace": NS},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "app-b"}],
                 "rules": [{"backendRefs": [{"name": "app-b", "port": 8080}]}]}});
    let caches =
        crate::caches::testing::filled(&snapshot, &[(Kind::HttpRoute, users_route.clone())]);
    snapshot
        .existing
        .push(Existing::from_json(Kind::HttpRoute, &users_route, NS));
    let expected = crate::plan::plan_namespace(&ve, &snapshot, &settings()).unwrap();
    let env_services: Vec<String> = expected.env_services.iter().map(|s| s.name_any()).collect();
    assert_eq!(env_services.len(), 4, "app-a and app-c, two envs each");
    let (ctx, handle) = mock_context(caches);
    let answer_ve = ve.clone();
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&answer_ve]).await;
        api.record_route_header(&answer_ve).await;
        for name in &env_services {
            let body = api.apply(SERVICES, name).await;
            assert_eq!(body["kind"], "Service");
            assert!(
                body["spec"]["selector"]["virtual-env"].is_string(),
                "{body}"
            );
        }
        for name in ["app-a", "app-c"] {
            let body = api.apply(HTTP_ROUTES, name).await;
            assert_eq!(body["apiVersion"], "gateway.networking.k8s.io/v1");
            assert_eq!(body["spec"]["parentRefs"][0]["name"], name);
        }
        let wp = api.apply_plugins().await;
        let services = &wp["spec"]["pluginConfig"]["services"];
        assert!(
            services.get("app-b.default.svc.cluster.local").is_none(),
            "{services}"
        );
        let body = api
            .expect_delete(&format!("{SERVICES}/app-old-dev-0123abcd"))
            .await;
        assert_eq!(body["preconditions"]["uid"], "obj-app-old-dev", "{body}");
        let status = api.expect_status_patch().await;
        assert_eq!(
            status["status"]["skipped"][0],
            "app-b: left to HTTPRoute b-canary, which this VirtualEnvironment does not manage",
            "{status}"
        );
        api.calls.len()
    });
    reconcile(Arc::new(ve), ctx.clone()).await.unwrap();
    // 1 read, the route header, 4 Services, 2 HTTPRoutes, 2 plugins, 1 prune, the status.
    assert_eq!(server.await.unwrap(), 12);
}

/// A namespace routed with Gateway API whose env Services and routes are in the caches as
/// the last reconcile applied them (the Services with what the API server adds): nothing
/// is written but the status.
#[tokio::test]
async fn an_unchanged_namespace_routed_with_gateway_api_is_not_written_again() {
    let mut ve = seed_ve_with_its_route_header();
    ve.spec.routing = Some(crate::crd::RoutingSpec {
        api: Some(crate::crd::RoutingApi::HttpRoute),
    });
    let plan = crate::plan::plan_namespace(&ve, &seed_snapshot(), &settings()).unwrap();
    assert!(!plan.env_services.is_empty() && !plan.mesh_routes.is_empty());
    let mut snapshot = seed_snapshot();
    for service in &plan.env_services {
        let mut service = service.clone();
        service.metadata.uid = Some(format!("obj-{}", service.name_any()));
        let spec = service.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.96.0.17".into());
        spec.cluster_ips = Some(vec!["10.96.0.17".into()]);
        spec.session_affinity = Some("None".into());
        spec.ip_families = Some(vec!["IPv4".into()]);
        snapshot.services.push(service);
    }
    let with_uid = |mut o: Value| {
        o["metadata"]["uid"] = json!(format!("obj-{}", o["metadata"]["name"].as_str().unwrap()));
        o
    };
    let mut objects: Vec<(Kind, Value)> = plan
        .mesh_routes
        .iter()
        .map(|r| (r.kind(), with_uid(r.to_value())))
        .collect();
    for plugin in [&plan.wasm_plugin, &plan.inbound_wasm_plugin] {
        objects.push((
            Kind::WasmPlugin,
            with_uid(serde_json::to_value(plugin).unwrap()),
        ));
    }
    let (ctx, handle) = mock_context(crate::caches::testing::filled(&snapshot, &objects));
    let answer_ve = ve.clone();
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.list_virtual_environments(&[&answer_ve]).await;
        api.expect_status_patch().await;
        api.calls.len()
    });
    reconcile(Arc::new(ve), ctx).await.unwrap();
    assert_eq!(server.await.unwrap(), 2, "only the list and the status");
}

/// A namespace enrolled in its waypoint (the namespace's `istio.io/use-waypoint`, read
/// from the namespaces' cache): the waypoint's plugin object, attached by `targetRefs`, is
/// written after the calling side's, as the gateways' are.
#[tokio::test]
async fn a_waypoints_plugin_object_is_written_after_the_calling_side() {
    let mut snapshot = seed_snapshot();
    snapshot.namespace_labels = std::collections::BTreeMap::from([(
        crate::waypoint::USE_WAYPOINT.to_owned(),
        "waypoint".to_owned(),
    )]);
    let (ctx, handle) = mock_context(crate::caches::testing::filled(&snapshot, &[]));
    let ve = seed_ve_from_api();
    let server = tokio::spawn(async move {
        let mut api = ApiServerVerifier::new(handle);
        api.seed_read_and_routed().await;
        let outbound = api.apply_plugins().await;
        let waypoint = api.apply(WP, "virtual-env-waypoint-waypoint").await;
        assert_eq!(
            waypoint["spec"]["targetRefs"],
            json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}])
        );
        assert!(waypoint["spec"]["match"].is_null() && waypoint["spec"]["selector"].is_null());
        let config = &waypoint["spec"]["pluginConfig"];
        assert_eq!(config["direction"], "waypoint");
        assert_eq!(
            config["services"],
            outbound["spec"]["pluginConfig"]["services"]
        );
        api.expect_status_patch().await;
        api.calls.len()
    });
    reconcile(Arc::new(ve), ctx).await.unwrap();
    assert_eq!(server.await.unwrap(), 12);
}
