//! Keeps `deploy/` honest without a cluster: every document parses into its typed
//! Kubernetes object with no field the type does not know, the kustomization lists files
//! that exist, the RBAC grants exactly what the controller's code uses, the sample
//! VirtualEnvironments pass the CRD's schema, and the Deployment's probes and hardening
//! are what the controller serves and expects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

mod common;
use common::check_schema;
use virtual_env_controller::crd::VirtualEnvironment;
use virtual_env_controller::rbac::{ApiUse, CLUSTER, OWN_NAMESPACE, VIEWER};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document under `deploy/` but the kustomization, with its file.
fn documents() -> Vec<(String, Value)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy(), &mut files);
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !value.is_null() {
                docs.push((file.display().to_string(), value));
            }
        }
    }
    docs
}

/// Paths of fields in `original` that did not survive the round trip through a type.
fn lost_fields(original: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(v) => lost_fields(value, v, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn typed<K: DeserializeOwned + Serialize>(file: &str, value: &Value) -> K {
    let object: K = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{file}: {} does not parse: {e}", value["kind"]));
    let mut lost = Vec::new();
    lost_fields(
        value,
        &serde_json::to_value(&object).unwrap(),
        "",
        &mut lost,
    );
    assert!(
        lost.is_empty(),
        "{file}: {} has unknown fields {lost:?}",
        value["kind"]
    );
    object
}

#[test]
fn every_document_is_a_typed_kubernetes_object_without_unknown_fields() {
    let docs = documents();
    assert!(docs.len() >= 10, "{} documents", docs.len());
    for (file, doc) in &docs {
        match doc["kind"].as_str().unwrap_or_default() {
            "Namespace" => drop(typed::<Namespace>(file, doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(file, doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(file, doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(file, doc)),
            "Role" => drop(typed::<Role>(file, doc)),
            "RoleBinding" => drop(typed::<RoleBinding>(file, doc)),
            "Deployment" => drop(typed::<Deployment>(file, doc)),
            "PodDisruptionBudget" => drop(
                typed::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(file, doc),
            ),
            "NetworkPolicy" => drop(typed::<k8s_openapi::api::networking::v1::NetworkPolicy>(
                file, doc,
            )),
            "Service" => drop(typed::<Service>(file, doc)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(file, doc)),
            "VirtualEnvironment" => drop(typed::<VirtualEnvironment>(file, doc)),
            "GatewayPolicy" => {
                drop(typed::<virtual_env_controller::gateway_policy::GatewayPolicy>(file, doc))
            }
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
}

#[test]
fn the_kustomization_installs_every_install_manifest() {
    let text = std::fs::read_to_string(deploy().join("kustomization.yaml")).unwrap();
    let k: Value = serde_yaml::from_str(&text).unwrap();
    // The `images:` entry the README tells users to edit names the Deployment's image.
    let deployment: Deployment = one("Deployment");
    let image = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    let (name, tag) = image.rsplit_once(':').unwrap();
    assert_eq!(k["images"][0]["name"], name);
    assert_eq!(k["images"][0]["newTag"], tag);
    let resources: BTreeSet<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for r in &resources {
        assert!(
            deploy().join(r).is_file(),
            "kustomization lists {r}, which does not exist"
        );
    }
    let want = BTreeSet::from([
        "namespace.yaml",
        "crds/env.alibaba.com_virtualenvironments_crd.yaml",
        "crds/env.alibaba.com_gatewaypolicies_crd.yaml",
        "rbac.yaml",
        "viewer-rbac.yaml",
        "controller.yaml",
    ]);
    assert_eq!(resources, want);
}

/// (group, resource, verb) triples.
fn triples_of_rules(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

fn triples_of_uses(uses: &[ApiUse]) -> BTreeSet<(String, String, String)> {
    uses.iter()
        .flat_map(|u| {
            u.verbs
                .iter()
                .map(|v| (u.group.to_owned(), u.resource.to_owned(), v.to_string()))
        })
        .collect()
}

/// (group, resource, verb) -> resourceNames, for the rules that limit them.
fn names_of_rules(rules: &[PolicyRule]) -> BTreeSet<(String, String, String, Vec<String>)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        let Some(names) = rule.resource_names.clone().filter(|n| !n.is_empty()) else {
            continue;
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone(), names.clone()));
                }
            }
        }
    }
    out
}

fn names_of_uses(uses: &[ApiUse]) -> BTreeSet<(String, String, String, Vec<String>)> {
    uses.iter()
        .filter(|u| !u.names.is_empty())
        .flat_map(|u| {
            u.verbs.iter().map(|v| {
                let names = u.names.iter().map(|n| n.to_string()).collect();
                (
                    u.group.to_owned(),
                    u.resource.to_owned(),
                    v.to_string(),
                    names,
                )
            })
        })
        .collect()
}

/// The committed CRD of `kind`.
fn crd_of(kind: &str) -> CustomResourceDefinition {
    let docs = documents();
    let (file, doc) = docs
        .iter()
        .find(|(_, d)| {
            d["kind"] == "CustomResourceDefinition" && d["spec"]["names"]["kind"] == kind
        })
        .unwrap_or_else(|| panic!("no CRD of {kind} in deploy/"));
    typed(file, doc)
}

fn one<K: DeserializeOwned + Serialize>(kind: &str) -> K {
    let docs = documents();
    let (file, doc) = docs
        .iter()
        .find(|(f, d)| d["kind"] == kind && !f.contains("/demo/"))
        .unwrap_or_else(|| panic!("no {kind} in deploy/"));
    typed(file, doc)
}

/// The deployed object of `kind` named `name`.
fn named<K: DeserializeOwned + Serialize>(kind: &str, name: &str) -> K {
    let docs = documents();
    let (file, doc) = docs
        .iter()
        .find(|(f, d)| d["kind"] == kind && d["metadata"]["name"] == name && !f.contains("/demo/"))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/"));
    typed(file, doc)
}

#[test]
fn the_viewer_role_grants_exactly_what_status_reads() {
    let viewer: ClusterRole = named("ClusterRole", "virtual-env-viewer");
    assert_eq!(
        triples_of_rules(viewer.rules.as_deref().unwrap_or_default()),
        triples_of_uses(VIEWER)
    );
}

#[test]
fn rbac_grants_exactly_what_the_controller_uses() {
    let cluster_role: ClusterRole = named("ClusterRole", "virtual-env-controller");
    assert_eq!(
        triples_of_rules(cluster_role.rules.as_deref().unwrap_or_default()),
        triples_of_uses(CLUSTER)
    );
    let role: Role = one("Role");
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some("virtual-env-system")
    );
    assert_eq!(
        triples_of_rules(role.rules.as_deref().unwrap_or_default()),
        triples_of_uses(OWN_NAMESPACE)
    );
    for (rules, uses) in [
        (cluster_role.rules.as_deref().unwrap_or_default(), CLUSTER),
        (role.rules.as_deref().unwrap_or_default(), OWN_NAMESPACE),
    ] {
        assert_eq!(names_of_rules(rules), names_of_uses(uses), "resourceNames");
    }
    // The bindings give those roles to the controller's service account.
    let sa: ServiceAccount = one("ServiceAccount");
    for (subjects, role_name) in [
        (
            one::<ClusterRoleBinding>("ClusterRoleBinding").subjects,
            one::<ClusterRoleBinding>("ClusterRoleBinding")
                .role_ref
                .name,
        ),
        (
            one::<RoleBinding>("RoleBinding").subjects,
            one::<RoleBinding>("RoleBinding").role_ref.name,
        ),
    ] {
        let subject = &subjects.unwrap()[0];
        assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
        assert_eq!(subject.namespace, sa.metadata.namespace);
        assert!(
            role_name == cluster_role.metadata.name.clone().unwrap()
                || role_name == role.metadata.name.clone().unwrap()
        );
    }
    let deployment: Deployment = one("Deployment");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
}

#[test]
fn the_sample_virtual_environments_pass_the_crd_schema() {
    let crd = crd_of("VirtualEnvironment");
    let schema_of = |version: &str| {
        let v = crd
            .spec
            .versions
            .iter()
            .find(|v| v.name == version && v.served)
            .unwrap_or_else(|| panic!("the CRD does not serve {version}"));
        serde_json::to_value(&v.schema.as_ref().unwrap().open_api_v3_schema).unwrap()
    };
    let samples: Vec<(String, Value)> = documents()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "VirtualEnvironment")
        .collect();
    assert_eq!(
        samples.len(),
        3,
        "the seed's sample, the original project's v1alpha2 sample and the demo's"
    );
    for (file, sample) in samples {
        let version = sample["apiVersion"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        let mut errors = Vec::new();
        check_schema(
            &schema_of(version)["properties"]["spec"],
            &sample["spec"],
            "spec",
            &mut errors,
        );
        assert!(errors.is_empty(), "{file}: {errors:?}");
        // And the controller reads it (the API server serves it as v1alpha1 too) into a
        // valid plugin config.
        let mut as_stored = sample.clone();
        as_stored["apiVersion"] = "env.alibaba.com/v1alpha1".into();
        let ve: virtual_env_controller::crd::VirtualEnvironment =
            serde_json::from_value(as_stored).unwrap_or_else(|e| panic!("{file}: {e}"));
        let config = ve.spec.plugin_config();
        config.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        if version == "v1alpha2" {
            assert_eq!(config.header_patterns.len(), 1, "{file}");
            let pattern = config.header_patterns[0].compile().unwrap();
            assert_eq!(
                pattern.extract("a=1;VirtualEnv=dev.proj1;b=2"),
                Some("dev.proj1")
            );
        }
    }
    // Both versions have one schema, so the API server converts without a webhook.
    assert_eq!(schema_of("v1alpha1"), schema_of("v1alpha2"));
    let stored: Vec<&str> = crd
        .spec
        .versions
        .iter()
        .filter(|v| v.storage)
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(stored, ["v1alpha1"]);
    // The check itself catches what strict validation would.
    let mut errors = Vec::new();
    let bad: Value = serde_json::json!({"envHeader": {"nmae": "x", "autoInject": "yes"}});
    check_schema(
        &schema_of("v1alpha1")["properties"]["spec"],
        &bad,
        "spec",
        &mut errors,
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    // A module the API server refuses: another scheme, a digest that is not one.
    let mut errors = Vec::new();
    let bad: Value = serde_json::json!({"wasmModule": {"url": "ftp://x", "sha256": "ABC"},
        "edgeTrust": {"mode": "allowList", "allow": vec!["dev"; 65]}});
    check_schema(
        &schema_of("v1alpha1")["properties"]["spec"],
        &bad,
        "spec",
        &mut errors,
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("spec.wasmModule.url:")));
    assert!(errors
        .iter()
        .any(|e| e.starts_with("spec.wasmModule.sha256:")));
    assert!(errors
        .iter()
        .any(|e| e.starts_with("spec.edgeTrust.allow: more than 64")));
}

/// The sample GatewayPolicy is valid for its CRD, and the check catches what the API server
/// would refuse of one.
#[test]
fn the_gateway_policy_sample_is_valid_for_its_crd() {
    let crd = crd_of("GatewayPolicy");
    assert_eq!(
        crd.spec.scope, "Cluster",
        "created with cluster-level rights only"
    );
    let schema = serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap();
    let samples: Vec<(String, Value)> = documents()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "GatewayPolicy")
        .collect();
    assert_eq!(samples.len(), 1);
    for (file, sample) in &samples {
        let mut errors = Vec::new();
        check_schema(
            &schema["properties"]["spec"],
            &sample["spec"],
            "spec",
            &mut errors,
        );
        assert!(errors.is_empty(), "{file}: {errors:?}");
    }
    let mut errors = Vec::new();
    let bad = serde_json::json!({"workload": {"namespace": "", "selector": {}},
        "tenants": [{"namespace": "shop", "hosts": []}]});
    check_schema(&schema["properties"]["spec"], &bad, "spec", &mut errors);
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[tokio::test]
async fn the_controller_deployment_is_hardened_and_probes_what_it_serves() {
    let deployment: Deployment = one("Deployment");
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2), "two replicas, one leader");
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let container = &pod.containers[0];
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let resources = container.resources.as_ref().unwrap();
    assert!(resources.requests.is_some() && resources.limits.is_some());
    let env: BTreeSet<&str> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert!(
        env.contains("POD_NAME") && env.contains("POD_NAMESPACE"),
        "leader election identity"
    );

    // The probed paths answer as the probes expect, on the probe listener (its own
    // capacity: no load on the module server fails them), at the port the controller
    // listens on by default.
    let state = virtual_env_controller::server::State::new(Default::default(), None, None);
    state
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let port_of = |name: &str| {
        container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    };
    assert_eq!(port_of("probes"), Some(8081), "--probe-listen's default");
    assert_eq!(port_of("http"), Some(8080), "--listen's default");
    for probe in [&container.liveness_probe, &container.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("probes".into())
        );
        let path = get.path.clone().unwrap();
        assert_eq!(
            virtual_env_controller::server::respond_on(
                virtual_env_controller::server::Endpoints::Probes,
                &state,
                &path
            )
            .await
            .status(),
            200,
            "{path}"
        );
    }
    // Two replicas spread over nodes, never both drained at once.
    let spread = pod
        .topology_spread_constraints
        .as_deref()
        .unwrap_or_default();
    assert!(
        spread
            .iter()
            .any(|c| c.topology_key == "kubernetes.io/hostname"
                && c.label_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone())
                    == spec.selector.match_labels),
        "{spread:?}"
    );
    let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget = one("PodDisruptionBudget");
    let pdb = pdb.spec.unwrap();
    assert_eq!(
        pdb.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(
        pdb.selector.unwrap().match_labels,
        spec.selector.match_labels
    );
    // Only the two ports take connections, from the mesh's pods (any namespace).
    let policy: k8s_openapi::api::networking::v1::NetworkPolicy = one("NetworkPolicy");
    let policy = policy.spec.unwrap();
    assert_eq!(
        policy.pod_selector.unwrap().match_labels,
        spec.selector.match_labels
    );
    assert_eq!(policy.policy_types.unwrap_or_default(), ["Ingress"]);
    let ports: BTreeSet<String> = policy
        .ingress
        .iter()
        .flatten()
        .flat_map(|rule| rule.ports.iter().flatten())
        .filter_map(|p| match p.port.as_ref()? {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => Some(s.clone()),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => {
                Some(i.to_string())
            }
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from(["http".to_owned(), "probes".to_owned()])
    );
    // The Service the WasmPlugins point at is where the controller says it is.
    let service: Service = service("virtual-env");
    let url = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "VIRTUAL_ENV_PUBLIC_URL")
        .and_then(|e| e.value.clone())
        .unwrap();
    let ns = service.metadata.namespace.unwrap();
    let port = service.spec.unwrap().ports.unwrap()[0].port;
    assert_eq!(
        url,
        format!(
            "http://{}.{ns}.svc.cluster.local:{port}",
            service.metadata.name.unwrap()
        )
    );
}

#[test]
fn a_misspelled_field_is_caught() {
    let doc: Value = serde_yaml::from_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {selectr: {app: x}, ports: [{port: 80, targetPrt: 8080}]}\n",
    )
    .unwrap();
    let object: Service = serde_json::from_value(doc.clone()).unwrap();
    let mut lost = Vec::new();
    lost_fields(&doc, &serde_json::to_value(&object).unwrap(), "", &mut lost);
    assert_eq!(lost, [".spec.ports[0].targetPrt", ".spec.selectr"]);
}

fn service(name: &str) -> Service {
    let docs = documents();
    let (file, doc) = docs
        .iter()
        .find(|(f, d)| {
            d["kind"] == "Service" && d["metadata"]["name"] == name && !f.contains("/demo/")
        })
        .unwrap_or_else(|| panic!("no Service {name} in deploy/"));
    typed(file, doc)
}

/// A rolling upgrade never leaves sidecars without a replica serving their module: a new
/// replica is ready before an old one stops, and the replicas find each other through a
/// headless Service of exactly the controller's pods.
#[test]
fn replicas_find_each_other_for_modules_of_another_build() {
    let deployment: Deployment = one("Deployment");
    let spec = deployment.spec.unwrap();
    let rolling = spec.strategy.unwrap().rolling_update.unwrap();
    assert_eq!(
        rolling.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    let container = &spec.template.spec.unwrap().containers[0];
    let peers = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "VIRTUAL_ENV_MODULE_PEERS")
        .and_then(|e| e.value.clone())
        .expect("VIRTUAL_ENV_MODULE_PEERS");
    let headless = service("virtual-env-peers");
    let ns = headless.metadata.namespace.clone().unwrap();
    let headless_spec = headless.spec.unwrap();
    assert_eq!(headless_spec.cluster_ip.as_deref(), Some("None"));
    assert_ne!(headless_spec.publish_not_ready_addresses, Some(true));
    assert_eq!(
        headless_spec.selector, spec.selector.match_labels,
        "the peers are the controller's pods"
    );
    let port = headless_spec.ports.unwrap()[0].port;
    assert_eq!(
        peers,
        format!("virtual-env-peers.{ns}.svc.cluster.local:{port}")
    );
}
