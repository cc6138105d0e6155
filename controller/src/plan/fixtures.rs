//! Services, pods and VirtualEnvironments for tests.

use k8s_openapi::api::core::v1::{PodCondition, PodStatus, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::crd::VirtualEnvironmentSpec;

pub const NS: &str = "default";

pub fn ve(spec_yaml: &str) -> VirtualEnvironment {
    let spec: VirtualEnvironmentSpec = serde_yaml::from_str(spec_yaml).unwrap();
    let mut ve = VirtualEnvironment::new("example-virtualenv", spec);
    ve.metadata.namespace = Some(NS.into());
    ve
}

/// The seed's sample: auto-inject on, default subset `dev`.
pub fn seed_ve() -> VirtualEnvironment {
    ve("envHeader: {name: X-Virtual-Env, autoInject: true}\nenvLabel: {name: virtual-env, splitter: ., defaultSubset: dev}")
}

pub fn service(name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".into(), name.into())])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 8080,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn pod(name: &str, app: &str, env: Option<&str>, ready: bool) -> Pod {
    let mut labels = BTreeMap::from([("app".to_owned(), app.to_owned())]);
    if let Some(env) = env {
        labels.insert("virtual-env".into(), env.into());
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

pub fn terminating(mut pod: Pod) -> Pod {
    pod.metadata.deletion_timestamp = Some(Time(Default::default()));
    pod
}

/// The seed's example: A, B, C in `dev`; A' and C' in `dev.proj1`.
/// The seed's namespace with app-a annotated to be entered through `gateways` under
/// the host `a.example.com` (the original project's Service annotations).
pub fn seed_exposed_through(gateways: &str) -> Snapshot {
    let mut snapshot = seed_snapshot();
    if let Some(a) = snapshot
        .services
        .iter_mut()
        .find(|s| s.name_any() == "app-a")
    {
        a.metadata.annotations = Some(BTreeMap::from([
            (
                crate::gateway::GATEWAYS_ANNOTATION.to_owned(),
                gateways.to_owned(),
            ),
            (
                crate::gateway::HOSTS_ANNOTATION.to_owned(),
                "a.example.com".to_owned(),
            ),
        ]));
    }
    snapshot
}

/// A pod of Istio's ingress gateway in `istio-system` (`istio: ingressgateway`).
pub fn gateway_pod() -> Pod {
    let mut gateway = pod("istio-ingressgateway-1", "istio-ingressgateway", None, true);
    gateway.metadata.namespace = Some("istio-system".into());
    gateway
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("istio".into(), "ingressgateway".into());
    gateway
}

/// The ingress gateway owner's policy, with `tenants` (YAML) and `edge` (YAML or "").
pub fn ingress_policy(tenants: &str, edge: &str) -> crate::gateway_policy::GatewayPolicy {
    let edge = if edge.is_empty() {
        String::new()
    } else {
        format!("\nedgeTrust: {edge}")
    };
    let spec = serde_yaml::from_str(&format!(
        "workload: {{namespace: istio-system, selector: {{istio: ingressgateway}}}}\ntenants: {tenants}{edge}"
    ))
    .unwrap();
    crate::gateway_policy::GatewayPolicy::new("ingressgateway", spec)
}

/// `snapshot`'s view of the cluster: its Gateways, its pods and the ingress gateway's,
/// `policies`, and `ve`'s claims (as the caches would compute it).
pub fn with_cluster(
    snapshot: &mut Snapshot,
    ve: &VirtualEnvironment,
    policies: Vec<crate::gateway_policy::GatewayPolicy>,
) {
    let gateway = gateway_pod();
    let cluster = GatewayCluster::from_objects(
        snapshot.elsewhere.iter(),
        snapshot.pods.iter().chain(std::iter::once(&gateway)),
        policies,
        std::iter::once((ve, snapshot.services.iter().collect())),
    );
    snapshot.cluster = std::sync::Arc::new(cluster);
}

pub fn seed_snapshot() -> Snapshot {
    Snapshot {
        services: ["app-a", "app-b", "app-c"].map(service).to_vec(),
        pods: vec![
            pod("app-a-dev", "app-a", Some("dev"), true),
            pod("app-b-dev", "app-b", Some("dev"), true),
            pod("app-c-dev", "app-c", Some("dev"), true),
            pod("app-a-proj1", "app-a", Some("dev.proj1"), true),
            pod("app-c-proj1", "app-c", Some("dev.proj1"), true),
        ],
        ..Snapshot::default()
    }
}

pub fn settings() -> Settings {
    Settings {
        cluster_domain: "cluster.local".into(),
        wasm: WasmSource {
            url: "http://virtual-env.virtual-env-system.svc:8080/filter.wasm".into(),
            sha256: Some("ab".repeat(32)),
        },
        max_plugin_config_bytes: MAX_PLUGIN_CONFIG_BYTES,
        extension_api: Default::default(),
        gateway_admission: Default::default(),
        scope_gateway_to_namespace: false,
        gateway_api: Some(crate::gamma::GatewayApi::ALL),
    }
}

/// `services` services, each with a ready pod in each of `envs` envs whose names are
/// 30 characters long (`team-payments-feature-0000042`-like).
pub fn wide_snapshot(services: usize, envs: usize) -> Snapshot {
    let names: Vec<String> = (0..envs)
        .map(|e| format!("dev.team-payments-feat-{e:06}"))
        .collect();
    let mut snapshot = Snapshot::default();
    for s in 0..services {
        let svc = format!("svc-{s:04}");
        snapshot.services.push(service(&svc));
        for env in &names {
            let name = format!("{svc}-{}", env.replace('.', "-"));
            snapshot.pods.push(pod(&name, &svc, Some(env), true));
        }
    }
    snapshot
}
