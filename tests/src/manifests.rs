//! The demo for a real cluster (`deploy/demo/demo.yaml`), generated from the local mesh's
//! topology so that the two can never disagree: a namespace with sidecar injection, the
//! VirtualEnvironment, a Service per service and a Deployment per pod running the same
//! test application as the local mesh.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use virtual_env_controller::crd::VirtualEnvironment;

use crate::app::AppConfig;
use crate::mesh::APP_PORT;
use crate::topology::Topology;

pub const DEMO_NAMESPACE: &str = "virtual-env-demo";
pub const DEMO_IMAGE: &str = "ghcr.io/virtual-env/demo-app:0.1.0";
/// The client the README's requests are sent from, as Istio's own `samples/curl` runs it.
pub const CURL_IMAGE: &str = "curlimages/curl:8.11.1";

/// Multi-document YAML of the demo's objects.
pub fn demo_manifests(topology: &Topology, namespace: &str, image: &str) -> String {
    let mut docs: Vec<Value> = vec![json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {"istio-injection": "enabled"}}
    })];
    let mut ve = VirtualEnvironment::new("virtual-env", topology.virtual_environment.clone());
    ve.metadata.namespace = Some(namespace.to_owned());
    docs.push(serde_json::to_value(&ve).unwrap_or_default());
    for service in &topology.services {
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service.name, "namespace": namespace},
            "spec": {
                "selector": service.selector,
                "ports": [{"name": "http", "port": service.port, "targetPort": APP_PORT}]
            }
        }));
    }
    for pod in &topology.pods {
        // In a cluster the sidecar intercepts calls to the service itself: no outbound.
        let config = AppConfig::for_pod(
            topology,
            topology,
            pod,
            ([0, 0, 0, 0], APP_PORT).into(),
            None,
        );
        let labels: BTreeMap<&str, &str> = pod
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        docs.push(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": pod.name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532},
                        "containers": [{
                            "name": "app",
                            "image": image,
                            "args": ["app", serde_json::to_string(&config).unwrap_or_default()],
                            "ports": [{"name": "http", "containerPort": APP_PORT}],
                            "readinessProbe": {"tcpSocket": {"port": APP_PORT}},
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "16Mi"},
                                "limits": {"cpu": "200m", "memory": "64Mi"}
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]}
                            }
                        }]
                    }
                }
            }
        }));
    }
    // A client in the mesh: its sidecar intercepts its calls, so they are routed as any
    // pod's (a `curl` in the `istio-proxy` container is not redirected by Istio and would
    // bypass the sidecar). No env label: its requests carry only the env they are sent with.
    docs.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "curl", "namespace": namespace, "labels": {"app": "curl"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "curl"}},
            "template": {
                "metadata": {"labels": {"app": "curl"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 100, "runAsGroup": 101},
                    "containers": [{
                        "name": "curl",
                        "image": CURL_IMAGE,
                        "command": ["/bin/sleep", "infinity"],
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "16Mi"},
                            "limits": {"cpu": "200m", "memory": "64Mi"}
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}
                        }
                    }]
                }
            }
        }
    }));
    let mut out = String::from(
        "# Generated from tests/topologies/seed.yaml by `make demo-manifests`; do not edit.\n",
    );
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::repo_root;

    #[test]
    fn the_committed_demo_is_generated_from_the_seed_topology() {
        let topology = Topology::load(&repo_root().join("tests/topologies/seed.yaml")).unwrap();
        let generated = demo_manifests(&topology, DEMO_NAMESPACE, DEMO_IMAGE);
        let committed = std::fs::read_to_string(repo_root().join("deploy/demo/demo.yaml")).unwrap();
        assert!(
            generated == committed,
            "deploy/demo/demo.yaml is stale: run `make demo-manifests`"
        );
    }

    /// The README's requests come from a client whose sidecar intercepts them, in the
    /// injected namespace, without an env label of its own.
    #[test]
    fn the_demo_has_a_client_in_the_mesh_without_an_env() {
        let topology = Topology::load(&repo_root().join("tests/topologies/seed.yaml")).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&demo_manifests(
            &topology,
            DEMO_NAMESPACE,
            DEMO_IMAGE,
        ))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
        let namespace = docs.iter().find(|d| d["kind"] == "Namespace").unwrap();
        assert_eq!(
            namespace["metadata"]["labels"]["istio-injection"],
            "enabled"
        );
        let curl = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "curl")
            .unwrap();
        let labels = &curl["spec"]["template"]["metadata"]["labels"];
        assert!(labels["virtual-env"].is_null(), "{labels}");
        assert_ne!(
            curl["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"],
            "false"
        );
        let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
        assert!(
            readme.contains("exec deploy/curl -c curl -- curl"),
            "README sends from the client"
        );
        assert!(
            !readme.contains("-c istio-proxy -- \\\n    curl"),
            "not from the proxy container"
        );
    }
}
