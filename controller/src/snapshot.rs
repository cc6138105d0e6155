//! Reading a namespace snapshot from YAML, for `virtual-env render` and `explain`.
//!
//! Accepts what `kubectl get -o yaml` prints (a `List`), multi-document YAML and single
//! objects, in any mix: the `VirtualEnvironment`, services, pods, and the VirtualServices,
//! DestinationRules and WasmPlugins already in the namespace, whatever their content (a
//! service another's object routes is then left alone, as the controller would).

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::crd::VirtualEnvironment;
use crate::existing::{Existing, Kind};
use crate::gateway_admission::GatewayCluster;
use crate::gateway_policy::GatewayPolicy;
use crate::plan::Snapshot;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("{source_name}: not YAML: {error}")]
    Yaml {
        source_name: String,
        error: serde_yaml::Error,
    },
    #[error("{source_name}: {kind} {name}: {error}")]
    Object {
        source_name: String,
        kind: String,
        name: String,
        error: serde_json::Error,
    },
    #[error("no VirtualEnvironment in the input: pass its YAML too")]
    NoVirtualEnvironment,
    #[error(
        "several VirtualEnvironments in namespace {0} in the input; pass the one that manages it"
    )]
    SeveralVirtualEnvironments(String),
}

/// A `VirtualEnvironment` and what is in its namespace.
#[derive(Debug, Clone)]
pub struct NamespaceSnapshot {
    pub virtual_environment: VirtualEnvironment,
    pub snapshot: Snapshot,
}

/// Objects read so far, before they are tied to a namespace.
#[derive(Default)]
pub struct Reader {
    ves: Vec<VirtualEnvironment>,
    services: Vec<Service>,
    pods: Vec<Pod>,
    /// Istio objects already there, read untyped; namespace-less ones resolved at `finish`.
    existing: Vec<(Kind, Value)>,
    policies: Vec<GatewayPolicy>,
    /// Namespaces' labels, by name.
    namespace_labels:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// The VirtualEnvironments' specs as written, for the unknown fields.
    raw_specs: Vec<Value>,
    /// What was read but means nothing (a VirtualEnvironment's unknown fields), each with
    /// its file and line: said, never fatal.
    pub warnings: Vec<String>,
}

impl Reader {
    /// Reads every document of `text` (named `source_name` in errors).
    pub fn read(&mut self, source_name: &str, text: &str) -> Result<(), SnapshotError> {
        let before = self.raw_specs.len();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = Value::deserialize(doc).map_err(|error| SnapshotError::Yaml {
                source_name: source_name.to_owned(),
                error,
            })?;
            self.add(source_name, value)?;
        }
        self.warn_unknown_fields(source_name, text, before);
        Ok(())
    }

    /// Warns of the unknown fields of the VirtualEnvironments read from `text` (those
    /// from index `first` on), each at its line.
    fn warn_unknown_fields(&mut self, source_name: &str, text: &str, first: usize) {
        let crd = serde_json::to_value(<VirtualEnvironment as kube::CustomResourceExt>::crd())
            .unwrap_or_default();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        // The k-th VirtualEnvironment of the file starts near its k-th `kind:` line (its
        // `apiVersion` just before; in a List, after the previous item).
        let lines: Vec<&str> = text.lines().collect();
        let starts: Vec<usize> = (lines.iter().enumerate())
            .filter(|(_, l)| {
                let line = l
                    .trim_start()
                    .trim_start_matches("- ")
                    .replace(['"', '\''], "");
                line.trim_end() == "kind: VirtualEnvironment"
            })
            .map(|(i, _)| {
                let doc = lines[..i].iter().rposition(|l| l.starts_with("---"));
                doc.unwrap_or(0).max(i.saturating_sub(2))
            })
            .collect();
        for (k, value) in self.raw_specs[first..].iter().enumerate() {
            for unknown in crate::unknown_fields::unknown_in_spec(schema, value) {
                let from = starts.get(k).copied().unwrap_or(0);
                let line = crate::unknown_fields::line_of(text, from, &unknown.path)
                    .map_or_else(String::new, |l| format!(":{l}"));
                let meant = unknown
                    .meant
                    .map_or_else(String::new, |m| format!(" (did you mean {m}?)"));
                self.warnings.push(format!(
                    "{source_name}{line}: {} is not a field of VirtualEnvironment; ignored{meant}",
                    unknown.path
                ));
            }
        }
    }

    fn add(&mut self, source_name: &str, value: Value) -> Result<(), SnapshotError> {
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        if kind == "List" || kind.ends_with("List") {
            if let Some(items) = value["items"].as_array() {
                for item in items {
                    self.add(source_name, item.clone())?;
                }
            }
            return Ok(());
        }
        let name = value["metadata"]["name"].as_str().unwrap_or("?").to_owned();
        let error = |error| SnapshotError::Object {
            source_name: source_name.to_owned(),
            kind: kind.clone(),
            name: name.clone(),
            error,
        };
        match kind.as_str() {
            "VirtualEnvironment" => {
                self.raw_specs
                    .push(serde_json::json!({"spec": value["spec"].clone()}));
                self.ves.push(serde_json::from_value(value).map_err(error)?)
            }
            "Service" => self
                .services
                .push(serde_json::from_value(value).map_err(error)?),
            "Pod" => self
                .pods
                .push(serde_json::from_value(value).map_err(error)?),
            "VirtualService" => self.existing.push((Kind::VirtualService, value)),
            "DestinationRule" => self.existing.push((Kind::DestinationRule, value)),
            "WasmPlugin" => self.existing.push((Kind::WasmPlugin, value)),
            // Istio's Gateway, or Gateway API's (gateway.networking.k8s.io).
            "Gateway" => {
                let api_version = value["apiVersion"].as_str().unwrap_or_default();
                if api_version.starts_with("networking.istio.io/") {
                    self.existing.push((Kind::Gateway, value))
                } else if api_version.starts_with("gateway.networking.k8s.io/") {
                    self.existing.push((Kind::KubernetesGateway, value))
                }
            }
            "Namespace" => {
                let labels =
                    serde_json::from_value(value["metadata"]["labels"].clone()).unwrap_or_default();
                self.namespace_labels.insert(name.clone(), labels);
            }
            "HTTPRoute" => self.existing.push((Kind::HttpRoute, value)),
            "GRPCRoute" => self.existing.push((Kind::GrpcRoute, value)),
            "TrafficExtension" => self.existing.push((Kind::TrafficExtension, value)),
            "GatewayPolicy" => self
                .policies
                .push(serde_json::from_value(value).map_err(error)?),
            // Anything else (deployments, the WasmPlugin, ...) plays no part in planning.
            _ => {}
        }
        Ok(())
    }

    /// What planning namespace `ns` reads: its services, pods and objects, the plugin
    /// objects of its gateways elsewhere, every Gateway, and the `cluster`'s view.
    fn namespace(
        &self,
        ns: &str,
        default_namespace: &str,
        cluster: &std::sync::Arc<GatewayCluster>,
    ) -> Snapshot {
        let in_ns = |obj_ns: Option<String>| obj_ns.as_deref().unwrap_or(default_namespace) == ns;
        let (mut existing, mut elsewhere) = (Vec::new(), Vec::new());
        for (kind, value) in &self.existing {
            let object = Existing::from_json(*kind, value, default_namespace);
            let labels: std::collections::BTreeMap<String, String> =
                serde_json::from_value(value["metadata"]["labels"].clone()).unwrap_or_default();
            match kind {
                kind if kind.is_gateway() => elsewhere.push(object),
                _ if object.namespace == ns => existing.push(object),
                kind if kind.is_plugin()
                    && crate::gateway::of_namespace(&object.name, &labels, ns) =>
                {
                    elsewhere.push(object)
                }
                _ => {}
            }
        }
        Snapshot {
            services: (self.services.iter())
                .filter(|s| in_ns(s.namespace()))
                .cloned()
                .collect(),
            pods: (self.pods.iter())
                .filter(|p| in_ns(p.namespace()))
                .cloned()
                .collect(),
            existing,
            elsewhere,
            // Filled in by planning from the other namespaces' plans (see
            // `offline::plan_namespaces`).
            peers: Default::default(),
            cluster: std::sync::Arc::clone(cluster),
            namespace_labels: self.namespace_labels.get(ns).cloned().unwrap_or_default(),
        }
    }

    /// Ties the objects to their `VirtualEnvironment`s' namespaces: one snapshot per
    /// namespace with a VirtualEnvironment, sorted by namespace. Objects without a
    /// namespace are taken to be in `default_namespace`.
    pub fn finish(
        mut self,
        default_namespace: &str,
    ) -> Result<Vec<NamespaceSnapshot>, SnapshotError> {
        if self.ves.is_empty() {
            return Err(SnapshotError::NoVirtualEnvironment);
        }
        let mut ves = std::mem::take(&mut self.ves);
        for ve in &mut ves {
            if ve.namespace().is_none() {
                ve.metadata.namespace = Some(default_namespace.to_owned());
            }
        }
        ves.sort_by_key(|ve| ve.namespace());
        if let Some(pair) = ves
            .windows(2)
            .find(|w| w[0].namespace() == w[1].namespace())
        {
            return Err(SnapshotError::SeveralVirtualEnvironments(
                pair[0].namespace().unwrap_or_default(),
            ));
        }
        let in_ns =
            |obj_ns: Option<String>, ns: &str| obj_ns.as_deref().unwrap_or(default_namespace) == ns;
        let mut pods = self.pods.clone();
        for pod in &mut pods {
            if pod.namespace().is_none() {
                pod.metadata.namespace = Some(default_namespace.to_owned());
            }
        }
        let objects: Vec<Existing> = self
            .existing
            .iter()
            .filter(|(kind, _)| {
                kind.is_gateway() || kind.is_route() || *kind == Kind::VirtualService
            })
            .map(|(kind, value)| Existing::from_json(*kind, value, default_namespace))
            .collect();
        let cluster = std::sync::Arc::new(GatewayCluster::from_objects(
            objects.iter(),
            pods.iter(),
            self.policies.clone(),
            ves.iter().map(|ve| {
                let ns = ve.namespace().unwrap_or_default();
                let services = self
                    .services
                    .iter()
                    .filter(|s| in_ns(s.namespace(), &ns))
                    .collect();
                (ve, services)
            }),
        ));
        let out = ves
            .into_iter()
            .map(|ve| {
                let ns = ve.namespace().unwrap_or_default();
                let snapshot = self.namespace(&ns, default_namespace, &cluster);
                NamespaceSnapshot {
                    virtual_environment: ve,
                    snapshot,
                }
            })
            .collect();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECTL_LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: app-a, namespace: team}
  spec: {selector: {app: app-a}, ports: [{port: 80}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: app-a-1, namespace: team, labels: {app: app-a, virtual-env: dev}}
  status: {conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: elsewhere, namespace: other, labels: {app: app-a, virtual-env: dev}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: ignored, namespace: team}
"#;

    #[test]
    fn reads_lists_and_documents_and_keeps_the_virtual_environments_namespaces() {
        let mut reader = Reader::default();
        reader.read("pods.yaml", KUBECTL_LIST).unwrap();
        reader
            .read(
                "ve.yaml",
                "apiVersion: env.alibaba.com/v1alpha1\nkind: VirtualEnvironment\nmetadata: {name: ve, namespace: team}\nspec: {}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: app-a, namespace: team}\nspec: {}\n",
            )
            .unwrap();
        let ns = reader.finish("default").unwrap().remove(0);
        assert_eq!(ns.snapshot.services.len(), 1);
        assert_eq!(ns.snapshot.pods.len(), 1);
        let names: Vec<_> = ns.snapshot.existing.iter().map(|e| e.describe()).collect();
        assert_eq!(names, ["VirtualService app-a"]);
        // A second namespace with a VirtualEnvironment gets its own snapshot, in order.
        let mut reader = Reader::default();
        reader.read("pods.yaml", KUBECTL_LIST).unwrap();
        for ns in ["team", "other"] {
            let ve = format!("apiVersion: env.alibaba.com/v1alpha1\nkind: VirtualEnvironment\nmetadata: {{name: ve, namespace: {ns}}}\nspec: {{}}\n");
            reader.read("ve.yaml", &ve).unwrap();
        }
        let all = reader.finish("default").unwrap();
        let namespaces: Vec<_> = all
            .iter()
            .map(|n| n.virtual_environment.namespace().unwrap())
            .collect();
        assert_eq!(namespaces, ["other", "team"]);
        assert_eq!(all[0].snapshot.pods.len(), 1, "the pod of namespace other");
        assert!(all[0].snapshot.services.is_empty());
    }

    #[test]
    fn errors_name_the_source_and_object() {
        let mut reader = Reader::default();
        let err = reader
            .read(
                "bad.yaml",
                "kind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n",
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("bad.yaml: Pod p:"), "{msg}");
        assert!(matches!(
            Reader::default().finish("default"),
            Err(SnapshotError::NoVirtualEnvironment)
        ));
        let mut reader = Reader::default();
        for name in ["a", "b"] {
            let ve = format!("kind: VirtualEnvironment\nmetadata: {{name: {name}}}\nspec: {{}}\n");
            reader.read("ve.yaml", &ve).unwrap();
        }
        let msg = reader.finish("team").unwrap_err().to_string();
        assert!(msg.contains("namespace team"), "{msg}");
    }
}
