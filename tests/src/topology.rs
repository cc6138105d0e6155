//! The local mesh's topology file: a namespace's services and pods, which services each
//! pod's application calls next, and the `VirtualEnvironment` spec.
//!
//! ```yaml
//! namespace: default
//! virtualEnvironment:            # the spec of the VirtualEnvironment, as in the CR
//!   envHeader: {name: X-Virtual-Env, autoInject: true}
//!   envLabel: {name: virtual-env, splitter: ., defaultSubset: dev}
//! services:
//!   - name: app-a                # selector defaults to {app: <name>}, port to 8080
//! pods:
//!   - name: app-a-dev
//!     labels: {app: app-a, virtual-env: dev}
//!     calls: [app-b]             # services its application calls for each request
//!     ready: true                # default; a pod that is not ready gets no traffic
//! namespaces:                    # more namespaces, each written as the top level
//!   - namespace: pay
//!     virtualEnvironment: {envLabel: {defaultSubset: dev}}
//!     services: [{name: ledger}]
//!     pods: [{name: ledger-dev, labels: {app: ledger, virtual-env: dev}}]
//! ```
//!
//! A pod calls a service of its own namespace by name (`app-b`) and one of another
//! namespace as `name.namespace` (`ledger.pay`), as applications do in Kubernetes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus, Service, ServicePort, ServiceSpec};
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};
use virtual_env_controller::crd::{VirtualEnvironment, VirtualEnvironmentSpec};
use virtual_env_controller::gateway_policy::{GatewayPolicy, GatewayPolicySpec};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Topology {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub virtual_environment: VirtualEnvironmentSpec,
    pub services: Vec<TopologyService>,
    pub pods: Vec<TopologyPod>,
    /// More namespaces of the mesh, each with its own VirtualEnvironment (their own
    /// `namespaces` must be empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Topology>,
    /// The cluster's GatewayPolicies (top level only): what the gateway's owner admits at
    /// the mesh's ingress gateway (pods `istio: ingressgateway` in `istio-system`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_policies: Vec<TopologyGatewayPolicy>,
    /// Istio's ambient mode for the namespace (`istio.io/dataplane-mode: ambient`): its
    /// pods have no sidecar, and its services are behind one waypoint, `waypoint`
    /// (`istio.io/use-waypoint`), which the mesh runs as an Envoy of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ambient: bool,
}

/// The namespace label for ambient mode, and the waypoint a namespace's services use.
pub const AMBIENT_NAMESPACE_LABELS: [(&str, &str); 2] = [
    ("istio.io/dataplane-mode", "ambient"),
    ("istio.io/use-waypoint", "waypoint"),
];

/// A GatewayPolicy: its name and spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopologyGatewayPolicy {
    pub name: String,
    #[serde(flatten)]
    pub spec: GatewayPolicySpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopologyService {
    pub name: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Pod labels the service selects; `{app: <name>}` when absent.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopologyPod {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Services (names) the pod's application calls for each request it serves.
    #[serde(default)]
    pub calls: Vec<String>,
    #[serde(default = "yes")]
    pub ready: bool,
}

fn default_namespace() -> String {
    "default".into()
}
fn default_port() -> u16 {
    8080
}
fn yes() -> bool {
    true
}

impl Topology {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut topology: Self = serde_yaml::from_str(text)?;
        let default_selectors = |services: &mut Vec<TopologyService>| {
            for service in services {
                if service.selector.is_empty() {
                    service.selector.insert("app".into(), service.name.clone());
                }
            }
        };
        default_selectors(&mut topology.services);
        for ns in &mut topology.namespaces {
            default_selectors(&mut ns.services);
        }
        topology.check()?;
        Ok(topology)
    }

    fn check(&self) -> Result<()> {
        let mut namespaces = std::collections::BTreeSet::new();
        for ns in self.all() {
            if !namespaces.insert(&ns.namespace) {
                bail!("namespace {} appears twice", ns.namespace);
            }
            if ns.namespace != self.namespace
                && (!ns.namespaces.is_empty() || !ns.gateway_policies.is_empty())
            {
                bail!(
                    "namespace {}: namespaces and gatewayPolicies are listed at the top level only",
                    ns.namespace
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (ns, pod) in self.all_pods() {
            for call in &pod.calls {
                if self.call_target(ns, call).is_none() {
                    bail!("pod {} calls {call}, which is not a service", pod.name);
                }
            }
            // Pods are named across the mesh (they are its processes).
            if !names.insert(&pod.name) {
                bail!("pod {} appears twice", pod.name);
            }
        }
        Ok(())
    }

    /// This namespace and the others of the mesh.
    pub fn all(&self) -> impl Iterator<Item = &Topology> {
        std::iter::once(self).chain(&self.namespaces)
    }

    /// Every pod of the mesh with its namespace, in a fixed order (the mesh's addresses).
    pub fn all_pods(&self) -> impl Iterator<Item = (&Topology, &TopologyPod)> {
        self.all()
            .flat_map(|ns| ns.pods.iter().map(move |p| (ns, p)))
    }

    /// The namespace `name` of the mesh.
    pub fn namespace_named(&self, name: &str) -> Option<&Topology> {
        self.all().find(|ns| ns.namespace == name)
    }

    /// What a pod of namespace `from` reaches by calling `call` (`name` or
    /// `name.namespace`): the service's namespace and the service.
    pub fn call_target<'a>(
        &'a self,
        from: &'a Topology,
        call: &str,
    ) -> Option<(&'a Topology, &'a TopologyService)> {
        let (name, ns) = match call.split_once('.') {
            Some((name, ns)) => (name, self.namespace_named(ns)?),
            None => (call, from),
        };
        Some((ns, ns.service(name)?))
    }

    pub fn service(&self, name: &str) -> Option<&TopologyService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// A pod of any namespace of the mesh.
    pub fn pod(&self, name: &str) -> Option<&TopologyPod> {
        self.all_pods().map(|(_, p)| p).find(|p| p.name == name)
    }

    pub fn pod_mut(&mut self, name: &str) -> Option<&mut TopologyPod> {
        std::iter::once(&mut self.pods)
            .chain(self.namespaces.iter_mut().map(|ns| &mut ns.pods))
            .flat_map(|pods| pods.iter_mut())
            .find(|p| p.name == name)
    }

    /// The pod's env, by the VirtualEnvironment's env label.
    pub fn env_of(&self, pod: &TopologyPod) -> Option<String> {
        pod.labels
            .get(&self.virtual_environment.env_label.name)
            .cloned()
    }

    /// The services whose selector matches the pod.
    pub fn services_of<'a>(
        &'a self,
        pod: &'a TopologyPod,
    ) -> impl Iterator<Item = &'a TopologyService> {
        self.services
            .iter()
            .filter(move |s| selects(&s.selector, &pod.labels))
    }

    /// The Kubernetes objects this topology stands for, as the controller would read them.
    pub fn to_kubernetes(&self) -> (VirtualEnvironment, Vec<Service>, Vec<Pod>) {
        let meta = |name: &str, labels: Option<BTreeMap<String, String>>| ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels,
            ..ObjectMeta::default()
        };
        let mut ve = VirtualEnvironment::new("virtual-env", self.virtual_environment.clone());
        ve.metadata.namespace = Some(self.namespace.clone());
        let services = self
            .services
            .iter()
            .map(|s| Service {
                metadata: meta(&s.name, None),
                spec: Some(ServiceSpec {
                    selector: Some(s.selector.clone()),
                    ports: Some(vec![ServicePort {
                        port: i32::from(s.port),
                        ..ServicePort::default()
                    }]),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            })
            .collect();
        // The annotation Istio's CNI puts on a pod it redirected to ztunnel.
        let ambient = self.ambient.then(|| {
            BTreeMap::from([(
                virtual_env_controller::plan::AMBIENT_REDIRECTION.to_owned(),
                "enabled".to_owned(),
            )])
        });
        let pods = self
            .pods
            .iter()
            .map(|p| Pod {
                metadata: ObjectMeta {
                    annotations: ambient.clone(),
                    ..meta(&p.name, Some(p.labels.clone()))
                },
                status: Some(PodStatus {
                    conditions: Some(vec![PodCondition {
                        type_: "Ready".into(),
                        status: if p.ready { "True" } else { "False" }.into(),
                        ..PodCondition::default()
                    }]),
                    ..PodStatus::default()
                }),
                ..Pod::default()
            })
            .collect();
        (ve, services, pods)
    }

    /// The namespace's labels, as the controller reads them.
    pub fn namespace_labels(&self) -> BTreeMap<String, String> {
        match self.ambient {
            true => AMBIENT_NAMESPACE_LABELS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            false => BTreeMap::new(),
        }
    }
}

impl TopologyGatewayPolicy {
    pub fn to_kubernetes(&self) -> GatewayPolicy {
        GatewayPolicy::new(&self.name, self.spec.clone())
    }
}

pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_topologies_parse() {
        let dir = crate::envoy::repo_root().join("tests/topologies");
        for name in [
            "seed.yaml",
            "deep.yaml",
            "gateway.yaml",
            "demo.yaml",
            "gateway-api.yaml",
            "ambient.yaml",
        ] {
            let t = Topology::load(&dir.join(name)).unwrap();
            assert!(!t.pods.is_empty(), "{name}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let err = Topology::parse(
            "services: [{name: a}]\npods: [{name: p, labels: {app: a}, calls: [b]}]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("calls b"), "{err}");
        let err = Topology::parse("services: []\npods: []\nextra: 1\n").unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        let two = "services: [{name: a}]\npods: [{name: p, labels: {app: a}, calls: [b.pay]}]\n";
        let err = Topology::parse(two).unwrap_err();
        assert!(err.to_string().contains("calls b.pay"), "{err}");
        let with_pay =
            format!("{two}namespaces: [{{namespace: pay, services: [{{name: b}}], pods: []}}]\n");
        let t = Topology::parse(&with_pay).unwrap();
        let (ns, service) = t.call_target(&t, "b.pay").unwrap();
        assert_eq!((ns.namespace.as_str(), service.name.as_str()), ("pay", "b"));
        assert_eq!(
            service.selector["app"], "b",
            "selectors default in every namespace"
        );
    }
}
