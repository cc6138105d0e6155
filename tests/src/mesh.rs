//! A local mesh of real Envoy sidecars on loopback.
//!
//! Each pod of a [`Topology`] is an application process ([`crate::app`]) plus its own
//! sidecar Envoy, on its own loopback address (127.a.b.c, a and b random per mesh, so that
//! meshes do not collide), with Istio's ports: the sidecar's inbound listener on 15006, its
//! outbound listener on 15001 (which the application calls, as iptables would redirect it),
//! the application on 8080. A gateway Envoy (no listener direction) is the way in.
//!
//! The routing is what the controller writes for Istio, translated as istiod would: the
//! topology becomes Kubernetes objects, the controller's own `plan_namespace` turns them into
//! VirtualServices, DestinationRules and the plugin config, and those become one Envoy
//! cluster per subset (endpoints: the ready pods with that label), routes that match the
//! route header exactly, and the Wasm filter's config. All three reach every Envoy through
//! watched files (CDS, RDS, ECDS), as istiod's pushes do, so changes apply without restarts.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kube::ResourceExt;
use serde_json::{json, Value};
use tempfile::TempDir;
use virtual_env_controller::edge_guard::plan_edge_guard;
use virtual_env_controller::existing::{Existing, Kind};
use virtual_env_controller::gamma::ENV_SERVICE_OF_LABEL;
use virtual_env_controller::gateway::GATEWAY_NAME_LABEL;
use virtual_env_controller::gateway_admission::{GatewayAdmission, GatewayCluster};
use virtual_env_controller::istio::{DestinationRule, VirtualService};
use virtual_env_controller::offline::plan_namespaces;
use virtual_env_controller::plan::{
    Plan, Settings, Snapshot, WasmSource, INBOUND_WASM_PLUGIN_NAME, MAX_PLUGIN_CONFIG_BYTES,
    WASM_PLUGIN_NAME,
};
use virtual_env_controller::snapshot::NamespaceSnapshot;
use virtual_env_core::service_fqdn;

use crate::app::{AppConfig, Hop, TRACING_HEADERS};
use crate::envoy::{filter_wasm, poll_until, write_atomically, Envoy, Guarded};
use crate::http::{self, Protocol};
use crate::sidecar::{ecds_resource_named, http_filter_chain, http_filters_named};
use crate::topology::{selects, Topology, TopologyPod, TopologyService};

pub const APP_PORT: u16 = 8080;
pub const INBOUND_PORT: u16 = 15006;
pub const OUTBOUND_PORT: u16 = 15001;
/// Where an ambient namespace's stand-in for ztunnel listens (beside its waypoint).
pub const ZTUNNEL_PORT: u16 = 15002;
const CLUSTER_DOMAIN: &str = "cluster.local";
/// The Gateway the mesh's gateway Envoy serves: Istio's default ingress gateway.
pub const INGRESS_GATEWAY: (&str, &str) = ("istio-system", "ingressgateway");

#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// The `virtual-env-mesh` binary, whose `app` command is the test application.
    pub app_binary: PathBuf,
    /// How sidecars talk to each other.
    pub sidecar_protocol: Protocol,
    /// How applications call (HTTP/1.1, or gRPC: then every hop is HTTP/2, the sidecars'
    /// own connections to their application too).
    pub app_protocol: Protocol,
    /// Whether applications forward the env header they received.
    pub forward_env_header: bool,
    /// Other headers applications forward (their tracing headers).
    pub forward: Vec<String>,
    /// Where the mesh's files go; a temporary directory when `None`.
    pub dir: Option<PathBuf>,
}

impl MeshOptions {
    pub fn new(app_binary: PathBuf) -> Self {
        Self {
            app_binary,
            sidecar_protocol: Protocol::Http1,
            app_protocol: Protocol::Http1,
            forward_env_header: true,
            forward: TRACING_HEADERS.map(String::from).to_vec(),
            dir: None,
        }
    }
}

/// The routing files the Envoys of the mesh watch.
struct RoutingFiles {
    /// Clusters: the same for every Envoy.
    cds: PathBuf,
    /// Per namespace: its sidecars' routes (short names resolve in their own namespace),
    /// and its plugin objects: the calling side's (outbound listeners) and the called
    /// side's (inbound listeners), one file per plugin object, as istiod sends one ECDS
    /// resource per WasmPlugin to the listeners its `match` mode selects.
    namespaces: BTreeMap<String, NamespaceFiles>,
    /// The gateway's plugin: the plugin object the controller writes for the gateway when
    /// the topology exposes services through it; else the first namespace's calling side.
    ecds_gateway: PathBuf,
    /// The gateway owner's edge guard (the first GatewayPolicy's), ahead of the gateway's
    /// plugin as Istio's phase AUTHN puts it; a guard that judges nothing without one.
    ecds_edge: PathBuf,
}

struct NamespaceFiles {
    rds: PathBuf,
    ecds: PathBuf,
    ecds_inbound: PathBuf,
    /// An ambient namespace's waypoint plugin object.
    ecds_waypoint: PathBuf,
}

impl RoutingFiles {
    fn new(root: &Path, topology: &Topology) -> Result<Self> {
        let file = |kind: &str| -> Result<PathBuf> {
            let dir = root.join(kind);
            std::fs::create_dir_all(&dir)?;
            Ok(dir.join(format!("{kind}.json")))
        };
        let mut namespaces = BTreeMap::new();
        for (i, ns) in topology.all().enumerate() {
            // The first namespace keeps the file names the mesh always had.
            let kind = |kind: &str| match i {
                0 => kind.to_owned(),
                _ => format!("{kind}-{}", ns.namespace),
            };
            let files = NamespaceFiles {
                rds: file(&kind("rds"))?,
                ecds: file(&kind("ecds"))?,
                ecds_inbound: file(&kind("ecds-inbound"))?,
                ecds_waypoint: file(&kind("ecds-waypoint"))?,
            };
            namespaces.insert(ns.namespace.clone(), files);
        }
        Ok(Self {
            cds: file("cds")?,
            namespaces,
            ecds_gateway: file("ecds-gateway")?,
            ecds_edge: file("ecds-edge")?,
        })
    }
}

fn watched(path: &Path) -> Value {
    let dir = path.parent().unwrap_or(path);
    json!({
        "path_config_source": {"path": path, "watched_directory": {"path": dir}},
        "resource_api_version": "V3"
    })
}

pub struct Mesh {
    pub topology: Topology,
    pub options: MeshOptions,
    files: RoutingFiles,
    wasm: String,
    net: [u8; 2],
    gateway: SocketAddr,
    envoys: BTreeMap<String, Envoy>,
    _apps: Vec<Guarded>,
    _tmp: Option<TempDir>,
    root: PathBuf,
}

impl Mesh {
    /// Starts every pod's application and sidecar and the gateway, and waits until all are
    /// ready (Envoy's `/ready`, the applications' ports).
    pub async fn start(topology: Topology, options: MeshOptions) -> Result<Self> {
        let (tmp, root) = match &options.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (None, dir.clone())
            }
            None => {
                let tmp = tempfile::tempdir()?;
                let root = tmp.path().to_path_buf();
                (Some(tmp), root)
            }
        };
        let files = RoutingFiles::new(&root, &topology)?;
        let wasm = filter_wasm()?.display().to_string();
        let net = random_net();
        let gateway = SocketAddr::new(ip(net, 2), OUTBOUND_PORT);
        let mut mesh = Self {
            topology,
            options,
            files,
            wasm,
            net,
            gateway,
            envoys: BTreeMap::new(),
            _apps: Vec::new(),
            _tmp: tmp,
            root,
        };
        mesh.write_routing()?;

        let mut apps = Vec::new();
        for (i, (ns, pod)) in mesh.topology.all_pods().enumerate() {
            apps.push(mesh.spawn_app(i, ns, pod)?);
        }
        mesh._apps = apps;

        // Per ambient namespace: its waypoint and its stand-in for ztunnel.
        let waypoints: Vec<(String, Value)> = mesh
            .topology
            .all()
            .filter(|ns| ns.ambient)
            .flat_map(|ns| {
                [
                    mesh.waypoint_bootstrap(ns)
                        .map(|b| (format!("waypoint-{}", ns.namespace), b)),
                    mesh.ztunnel_bootstrap(ns)
                        .map(|b| (format!("ztunnel-{}", ns.namespace), b)),
                ]
            })
            .collect::<Result<_>>()?;
        let mut starts = Vec::new();
        let mut names = Vec::new();
        // A pod in ambient mode has no sidecar; its namespace has a waypoint.
        for (i, (ns, pod)) in mesh.topology.all_pods().enumerate() {
            if ns.ambient {
                continue;
            }
            let config = mesh.sidecar_bootstrap(i, ns, pod);
            starts.push(Envoy::start(&pod.name, &mesh.root, config, 1));
            names.push(pod.name.clone());
        }
        for (name, config) in &waypoints {
            starts.push(Envoy::start(name, &mesh.root, config.clone(), 1));
            names.push(name.clone());
        }
        starts.push(Envoy::start(
            "gateway",
            &mesh.root,
            mesh.gateway_bootstrap(),
            1,
        ));
        names.push("gateway".to_owned());
        let started = futures::future::try_join_all(starts).await?;
        mesh.envoys = names.into_iter().zip(started).collect();
        // Every Envoy runs the filter but ztunnel's stand-ins.
        for (_, envoy) in mesh
            .envoys
            .iter()
            .filter(|(n, _)| !n.starts_with("ztunnel-"))
        {
            envoy.check_wasm_runtime().await?;
        }
        for i in 0..mesh.topology.all_pods().count() {
            wait_for_port(SocketAddr::new(mesh.pod_ip(i), APP_PORT)).await?;
        }
        Ok(mesh)
    }

    fn pod_ip(&self, index: usize) -> IpAddr {
        ip(self.net, 10 + index)
    }

    /// The waypoint of ambient namespace `namespace` (the mesh runs one per ambient
    /// namespace, at .3, .4, ... by the namespace's place in the topology).
    pub fn waypoint(&self, namespace: &str) -> Option<SocketAddr> {
        let (k, ns) = self
            .topology
            .all()
            .enumerate()
            .find(|(_, ns)| ns.namespace == namespace)?;
        ns.ambient
            .then(|| SocketAddr::new(ip(self.net, 3 + k), OUTBOUND_PORT))
    }

    fn pod_index(&self, name: &str) -> Result<usize> {
        self.topology
            .all_pods()
            .position(|(_, p)| p.name == name)
            .with_context(|| format!("no pod {name}"))
    }

    /// The address of a pod's sidecar inbound listener.
    pub fn pod_inbound(&self, name: &str) -> Result<SocketAddr> {
        Ok(SocketAddr::new(
            self.pod_ip(self.pod_index(name)?),
            INBOUND_PORT,
        ))
    }

    pub fn gateway(&self) -> SocketAddr {
        self.gateway
    }

    pub fn envoy(&self, name: &str) -> Option<&Envoy> {
        self.envoys.get(name)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn spawn_app(&self, index: usize, ns: &Topology, pod: &TopologyPod) -> Result<Guarded> {
        let ip = self.pod_ip(index);
        // Without a sidecar, ztunnel carries a pod's calls (see `ztunnel_bootstrap`).
        let outbound = self
            .ztunnel(&ns.namespace)
            .unwrap_or(SocketAddr::new(ip, OUTBOUND_PORT));
        let config = AppConfig {
            forward_env_header: self.options.forward_env_header,
            forward: self.options.forward.clone(),
            call_protocol: self.options.app_protocol,
            ..AppConfig::for_pod(
                &self.topology,
                ns,
                pod,
                SocketAddr::new(ip, APP_PORT),
                Some(outbound),
            )
        };
        let log = std::fs::File::create(self.root.join(format!("{}.app.log", pod.name)))?;
        Guarded::spawn(
            Command::new(&self.options.app_binary)
                .arg("app")
                .arg(serde_json::to_string(&config)?)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )
        .with_context(|| format!("starting {}", self.options.app_binary.display()))
    }

    /// The controller's plan for the first namespace as it is now.
    pub fn plan(&self) -> Result<Plan> {
        let mut plans = self.plans()?;
        plans.remove(&self.topology.namespace).context("no plan")
    }

    /// The controller's plans of every namespace, by namespace, as its reconciles end up
    /// after each has published its table to the others (`peer_namespaces.rs`).
    pub fn plans(&self) -> Result<BTreeMap<String, Plan>> {
        let settings = Settings {
            cluster_domain: CLUSTER_DOMAIN.into(),
            wasm: WasmSource {
                url: format!("file://{}", self.wasm),
                sha256: None,
            },
            max_plugin_config_bytes: MAX_PLUGIN_CONFIG_BYTES,
            extension_api: Default::default(),
            gateway_admission: GatewayAdmission::Policy,
            scope_gateway_to_namespace: false,
            gateway_api: Some(virtual_env_controller::gamma::GatewayApi::ALL),
        };
        let mut namespaces: Vec<NamespaceSnapshot> = self.topology.all().map(snapshot_of).collect();
        if self.options.app_protocol == Protocol::Grpc {
            // gRPC services declare it, as Istio reads it: GRPCRoutes where routes are
            // written as Gateway API.
            let ports = namespaces
                .iter_mut()
                .flat_map(|ns| &mut ns.snapshot.services)
                .filter_map(|s| s.spec.as_mut()?.ports.as_mut())
                .flatten();
            for port in ports {
                port.app_protocol = Some("grpc".into());
            }
        }
        let cluster = std::sync::Arc::new(self.gateway_cluster(&namespaces));
        for ns in &mut namespaces {
            ns.snapshot.cluster = std::sync::Arc::clone(&cluster);
        }
        let plans = plan_namespaces(&namespaces, &settings)?;
        Ok(self
            .topology
            .all()
            .map(|ns| ns.namespace.clone())
            .zip(plans)
            .collect())
    }

    /// Writes clusters, then routes, then the plugin config: subsets exist before routes use
    /// them, and routes before the filter sends traffic to them (as the controller orders
    /// its writes).
    pub fn write_routing(&self) -> Result<()> {
        let plans = self.plans()?;
        write_atomically(
            &self.files.cds,
            &serde_json::to_vec(&self.clusters(&plans))?,
        )?;
        for ns in self.topology.all() {
            let files = self.files_of(&ns.namespace)?;
            write_atomically(&files.rds, &serde_json::to_vec(&self.routes(ns, &plans))?)?;
        }
        for (ns, plan) in &plans {
            let inbound = plan.inbound_wasm_plugin.spec.plugin_config.to_string();
            self.push_side(Side::Inbound(ns), &inbound)?;
            self.push_side(Side::Outbound(ns), &plan.plugin_config.to_json())?;
            if let Some(waypoint) = plan.waypoint_plugins.first() {
                let config = waypoint.spec.plugin_config.to_string();
                self.push_side(Side::Waypoint(ns), &config)?;
            }
        }
        let first = &plans[&self.topology.namespace];
        let gateway = first.gateway_plugins.first().map_or_else(
            || first.plugin_config.to_json(),
            |p| p.spec.plugin_config.to_string(),
        );
        self.push_side(Side::Gateway, &gateway)?;
        match self.edge_guard_config()? {
            Some(guard) => self.push_side(Side::Edge, &guard),
            None => Ok(()),
        }
    }

    /// The edge guard's plugin config, as the controller plans it for the first
    /// GatewayPolicy with every namespace's VirtualEnvironment; none without a policy
    /// (the gateway then has no guard, as without a GatewayPolicy in a cluster).
    fn edge_guard_config(&self) -> Result<Option<String>> {
        let Some(policy) = self.topology.gateway_policies.first() else {
            return Ok(None);
        };
        let ves: Vec<_> = self.topology.all().map(|ns| ns.to_kubernetes().0).collect();
        let refs: Vec<_> = ves.iter().collect();
        let wasm = WasmSource {
            url: format!("file://{}", self.wasm),
            sha256: None,
        };
        let guard = plan_edge_guard(&policy.to_kubernetes(), &refs, &wasm)
            .map_err(|e| anyhow::anyhow!("edge guard: {e}"))?;
        Ok(guard.map(|g| g.plugin.spec.plugin_config.to_string()))
    }

    /// Replaces every plugin config (ECDS) with `json`, valid or not.
    pub fn push_plugin_config(&self, json: &str) -> Result<()> {
        for ns in self.topology.all() {
            self.push_side(Side::Inbound(&ns.namespace), json)?;
            self.push_side(Side::Outbound(&ns.namespace), json)?;
            self.push_side(Side::Waypoint(&ns.namespace), json)?;
        }
        self.push_side(Side::Gateway, json)
    }

    fn push_side(&self, side: Side<'_>, json: &str) -> Result<()> {
        let (name, path) = self.plugin(side)?;
        write_atomically(
            path,
            &serde_json::to_vec(&ecds_resource_named(name, &self.wasm, json))?,
        )
    }

    fn files_of(&self, namespace: &str) -> Result<&NamespaceFiles> {
        self.files
            .namespaces
            .get(namespace)
            .with_context(|| format!("no namespace {namespace} in the mesh"))
    }

    /// The plugin object's name and ECDS file for a side.
    fn plugin(&self, side: Side<'_>) -> Result<(&'static str, &Path)> {
        Ok(match side {
            Side::Inbound(ns) => (INBOUND_WASM_PLUGIN_NAME, &self.files_of(ns)?.ecds_inbound),
            Side::Outbound(ns) => (WASM_PLUGIN_NAME, &self.files_of(ns)?.ecds),
            Side::Waypoint(ns) => ("virtual-env-waypoint", &self.files_of(ns)?.ecds_waypoint),
            Side::Gateway => ("virtual-env-gateway", &self.files.ecds_gateway),
            Side::Edge => ("virtual-env-edge", &self.files.ecds_edge),
        })
    }

    /// The cluster as the controller sees it for gateway entry: the ingress Gateway, its
    /// pod (the mesh's gateway Envoy: `istio: ingressgateway` in `istio-system`), the
    /// topology's GatewayPolicies and every namespace's claims.
    fn gateway_cluster(&self, namespaces: &[NamespaceSnapshot]) -> GatewayCluster {
        let gateways = ingress_gateways();
        // The one gateway Envoy is the pod of both Gateways: Istio's selector, and the
        // label Istio gives the pods of a Gateway API Gateway.
        let gateway_pod = k8s_openapi::api::core::v1::Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("istio-ingressgateway".into()),
                namespace: Some(INGRESS_GATEWAY.0.into()),
                labels: Some(BTreeMap::from([
                    ("istio".into(), "ingressgateway".into()),
                    (GATEWAY_NAME_LABEL.into(), INGRESS_GATEWAY.1.into()),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        GatewayCluster::from_objects(
            gateways.iter(),
            std::iter::once(&gateway_pod),
            self.topology
                .gateway_policies
                .iter()
                .map(|p| p.to_kubernetes())
                .collect(),
            namespaces.iter().map(|ns| {
                (
                    &ns.virtual_environment,
                    ns.snapshot.services.iter().collect(),
                )
            }),
        )
    }

    /// Whether the topology exposes services through the gateway (it then runs the
    /// gateway's own plugin object, in the gateway's namespace).
    fn gateway_exposes(&self) -> bool {
        self.plan()
            .is_ok_and(|plan| !plan.gateway_plugins.is_empty())
    }

    /// Marks a pod ready or not (its processes keep running) and pushes the new routing.
    pub fn set_ready(&mut self, pod: &str, ready: bool) -> Result<()> {
        self.topology
            .pod_mut(pod)
            .with_context(|| format!("no pod {pod}"))?
            .ready = ready;
        self.write_routing()
    }

    /// A request into the mesh through the gateway, to `service`.
    pub async fn request(&self, service: &str, headers: &[(&str, &str)]) -> Result<Hop> {
        self.request_with(Protocol::Http1, service, headers).await
    }

    pub async fn request_with(
        &self,
        protocol: Protocol,
        service: &str,
        headers: &[(&str, &str)],
    ) -> Result<Hop> {
        let port = self.topology.service(service).map_or(APP_PORT, |s| s.port);
        let host = format!("{service}:{port}");
        let mut all = vec![("host", host.as_str())];
        all.extend_from_slice(headers);
        decode(http::request(protocol, self.gateway, "/", &all).await?)
    }

    /// A request from a pod in ambient mode of the first namespace (not one of the mesh's):
    /// through that namespace's waypoint, to `service`.
    pub async fn request_through_waypoint(
        &self,
        protocol: Protocol,
        service: &str,
        headers: &[(&str, &str)],
    ) -> Result<Hop> {
        let waypoint = self
            .waypoint(&self.topology.namespace)
            .context("the first namespace is not in ambient mode")?;
        let port = self.topology.service(service).map_or(APP_PORT, |s| s.port);
        let host = format!("{service}:{port}");
        let mut all = vec![("host", host.as_str())];
        all.extend_from_slice(headers);
        decode(http::request(protocol, waypoint, "/", &all).await?)
    }

    /// A request entering through the gateway for `host` (a gateway host, e.g.
    /// `shop.example.com`).
    pub async fn request_host(&self, host: &str, headers: &[(&str, &str)]) -> Result<Hop> {
        Ok(self.request_host_traced(host, headers).await?.0)
    }

    /// [`Self::request_host`], with the routing trace the response carries
    /// (`x-virtual-env-trace`), if any.
    pub async fn request_host_traced(
        &self,
        host: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Hop, Option<String>)> {
        let mut all = vec![("host", host)];
        all.extend_from_slice(headers);
        let response = http::request(Protocol::Http1, self.gateway, "/", &all).await?;
        let trace = response
            .header(virtual_env_filter::routing_trace::TRACE_HEADER)
            .map(str::to_owned);
        Ok((decode(response)?, trace))
    }

    /// A request into the mesh through the gateway to `service`, with the routing trace
    /// the response carries, if any.
    pub async fn request_traced(
        &self,
        service: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Hop, Option<String>)> {
        let port = self.topology.service(service).map_or(APP_PORT, |s| s.port);
        self.request_host_traced(&format!("{service}:{port}"), headers)
            .await
    }

    /// A request straight into a pod (its sidecar's inbound listener), as from another pod.
    pub async fn request_pod(&self, pod: &str, headers: &[(&str, &str)]) -> Result<Hop> {
        let mut all = vec![("host", pod)];
        all.extend_from_slice(headers);
        decode(http::get(self.pod_inbound(pod)?, "/", &all).await?)
    }

    /// Repeats `request` until the chain's pods are `want` (routing updates reach each
    /// Envoy on its own schedule), failing after 10 s.
    pub async fn wait_for_chain(
        &self,
        service: &str,
        headers: &[(&str, &str)],
        want: &[&str],
    ) -> Result<()> {
        let probe = async || self.request(service, headers).await;
        let (hop, reached) =
            poll_until(Duration::from_secs(10), probe, |hop| hop.pods() == want).await?;
        if !reached {
            bail!("chain is still {:?}, expected {want:?}", hop.pods());
        }
        Ok(())
    }

    fn cluster_name(ns: &Topology, service: &TopologyService, subset: Option<&str>) -> String {
        format!(
            "outbound|{}|{}|{}",
            service.port,
            subset.unwrap_or(""),
            service_fqdn(&service.name, &ns.namespace, CLUSTER_DOMAIN)
        )
    }

    /// The cluster of the Service `name` the controller wrote for an env of `service`.
    fn env_cluster_name(ns: &Topology, service: &TopologyService, name: &str) -> String {
        format!(
            "outbound|{}||{}",
            service.port,
            service_fqdn(name, &ns.namespace, CLUSTER_DOMAIN)
        )
    }

    /// One cluster per service, per DestinationRule subset and per env Service; endpoints
    /// are the sidecars of the ready pods the service (and the subset's labels, or the
    /// env Service's selector) select.
    fn clusters(&self, plans: &BTreeMap<String, Plan>) -> Value {
        let mut clusters = Vec::new();
        for (ns, service) in self.services() {
            let dr: Option<&DestinationRule> = plans.get(&ns.namespace).and_then(|plan| {
                plan.destination_rules
                    .iter()
                    .find(|d| d.metadata.name.as_deref() == Some(&service.name))
            });
            let mut subsets = vec![(Self::cluster_name(ns, service, None), BTreeMap::new())];
            if let Some(dr) = dr {
                subsets.extend(dr.spec.subsets.iter().map(|s| {
                    (
                        Self::cluster_name(ns, service, Some(&s.name)),
                        s.labels.clone(),
                    )
                }));
            }
            // Routes in Gateway API send to a Service per env: its selector is the
            // service's and the env label.
            let env_services = plans
                .get(&ns.namespace)
                .into_iter()
                .flat_map(|plan| &plan.env_services)
                .filter(|s| s.labels().get(ENV_SERVICE_OF_LABEL) == Some(&service.name));
            subsets.extend(env_services.map(|s| {
                let selector = s.spec.as_ref().and_then(|s| s.selector.clone());
                (
                    Self::env_cluster_name(ns, service, &s.name_any()),
                    selector.unwrap_or_default(),
                )
            }));
            for (name, labels) in subsets {
                let endpoints: Vec<SocketAddr> = self
                    .topology
                    .all_pods()
                    .enumerate()
                    .filter(|(_, (pod_ns, p))| {
                        pod_ns.namespace == ns.namespace
                            && p.ready
                            && selects(&service.selector, &p.labels)
                            && selects(&labels, &p.labels)
                    })
                    .map(|(i, _)| {
                        // A pod in ambient mode has no sidecar: its application is reached.
                        let port = if ns.ambient { APP_PORT } else { INBOUND_PORT };
                        SocketAddr::new(self.pod_ip(i), port)
                    })
                    .collect();
                // To a sidecar, as sidecars talk; to an application (ambient), as it serves.
                let http2 = match ns.ambient {
                    true => self.options.app_protocol == Protocol::Grpc,
                    false => self.options.sidecar_protocol != Protocol::Http1,
                };
                let mut cluster = static_cluster(&name, &endpoints, http2);
                cluster["@type"] = json!("type.googleapis.com/envoy.config.cluster.v3.Cluster");
                clusters.push(cluster);
            }
        }
        json!({"resources": clusters})
    }

    /// Every service of the mesh with its namespace.
    fn services(&self) -> impl Iterator<Item = (&Topology, &TopologyService)> {
        self.topology
            .all()
            .flat_map(|ns| ns.services.iter().map(move |s| (ns, s)))
    }

    /// The routes of the sidecars of namespace `own`: a virtual host per service of the
    /// mesh, answering every DNS spelling of it (its short name only in its own
    /// namespace); its routes are the VirtualService's of the service's namespace (exact
    /// route-header matches, then the default), or one default route for a service the
    /// controller does not route.
    fn routes(&self, own: &Topology, plans: &BTreeMap<String, Plan>) -> Value {
        let mut hosts = Vec::new();
        for (service_ns, service) in self.services() {
            let ns = &service_ns.namespace;
            let fqdn = service_fqdn(&service.name, ns, CLUSTER_DOMAIN);
            let domains = domains(own, service_ns, service);
            let vs: Option<&VirtualService> = plans.get(ns).and_then(|plan| {
                plan.virtual_services
                    .iter()
                    .find(|v| v.metadata.name.as_deref() == Some(&service.name))
            });
            let gamma = plans.get(ns).map_or(Vec::new(), |plan| {
                crate::istiod::service_routes(&service.name, &plan.mesh_routes)
            });
            let routes: Vec<Value> = match vs {
                Some(vs) => vs
                    .spec
                    .http
                    .iter()
                    .map(|route| {
                        let headers: Vec<Value> = route
                            .matches
                            .iter()
                            .flat_map(|m| &m.headers)
                            .map(|(name, m)| json!({"name": name, "string_match": {"exact": m.exact}}))
                            .collect();
                        let subset = route.route.first().and_then(|d| d.destination.subset.as_deref());
                        // Istio's `headers.request.remove` is the route's request_headers_to_remove.
                        let remove = route.headers.as_ref().map_or(&[][..], |h| &h.request.remove[..]);
                        json!({
                            "name": route.name,
                            "match": {"prefix": "/", "headers": headers},
                            "route": {"cluster": Self::cluster_name(service_ns, service, subset)},
                            "request_headers_to_remove": remove
                        })
                    })
                    .collect(),
                // Routes in Gateway API, as istiod merges and sorts them (`istiod.rs`).
                None if !gamma.is_empty() => Self::gamma_routes(service_ns, service, &gamma),
                None => vec![json!({
                    "name": "default",
                    "match": {"prefix": "/"},
                    "route": {"cluster": Self::cluster_name(service_ns, service, None)}
                })],
            };
            // The hosts a gateway-bound VirtualService adds get the same routes, as istiod
            // builds a virtual host per host of a VirtualService; a gateway HTTPRoute's
            // hostnames get the routes istiod merges from the gateway's routes.
            let extra: Vec<&String> = vs.map_or(Vec::new(), |vs| {
                vs.spec.hosts.iter().filter(|h| **h != fqdn).collect()
            });
            if !extra.is_empty() {
                hosts.push(json!({"name": format!("{fqdn}|gateway"), "domains": extra, "routes": routes.clone()}));
            }
            let entry = plans
                .get(ns)
                .and_then(|plan| crate::istiod::gateway_entry(&service.name, &plan.mesh_routes));
            if let Some((hostnames, entry)) = entry {
                let routes = Self::gamma_routes(service_ns, service, &entry);
                hosts.push(json!({"name": format!("{fqdn}|gateway-api"), "domains": hostnames, "routes": routes}));
            }
            hosts.push(json!({"name": fqdn, "domains": domains, "routes": routes}));
        }
        json!({"resources": [{
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": "outbound",
            "virtual_hosts": hosts
        }]})
    }

    /// Envoy routes for `routes` (istiod's, of a service's HTTPRoutes): each to the
    /// cluster of the Service it names (the service's, or one env's).
    fn gamma_routes(
        service_ns: &Topology,
        service: &TopologyService,
        routes: &[crate::istiod::ServiceRoute],
    ) -> Vec<Value> {
        routes
            .iter()
            .map(|route| {
                let headers: Vec<Value> = route
                    .headers
                    .iter()
                    .map(|(name, value)| json!({"name": name, "string_match": {"exact": value}}))
                    .collect();
                let cluster = if route.backend == service.name {
                    Self::cluster_name(service_ns, service, None)
                } else {
                    Self::env_cluster_name(service_ns, service, &route.backend)
                };
                json!({
                    "match": {"prefix": "/", "headers": headers},
                    "route": {"cluster": cluster},
                    "request_headers_to_remove": route.remove
                })
            })
            .collect()
    }

    fn filters(&self, side: Side<'_>) -> Value {
        // Every namespace and side got its file at start.
        let Ok((name, path)) = self.plugin(side) else {
            return json!([]);
        };
        let dir = path.parent().unwrap_or(path);
        http_filters_named(
            name,
            &path.display().to_string(),
            &dir.display().to_string(),
        )
    }

    /// The outbound listener of a sidecar of namespace `ns` (a `direction`), or the
    /// gateway's (none; it routes as a client of the first namespace).
    fn outbound_listener(
        &self,
        name: &str,
        ns: &str,
        address: IpAddr,
        direction: Option<&str>,
    ) -> Value {
        let side = match direction {
            Some(_) => Side::Outbound(ns),
            None => Side::Gateway,
        };
        let rds = self
            .files_of(ns)
            .map_or_else(|_| PathBuf::new(), |files| files.rds.clone());
        let filters = match side {
            // The edge guard (Istio phase AUTHN) before the gateway's routing plugin.
            Side::Gateway => {
                let entry = |side| {
                    self.plugin(side).ok().map(|(name, path)| {
                        let dir = path.parent().unwrap_or(path).display().to_string();
                        (name, path.display().to_string(), dir)
                    })
                };
                let guarded = self.edge_guard_config().ok().flatten().is_some();
                let guard = guarded.then(|| entry(Side::Edge)).flatten();
                let chain: Vec<_> = [guard, entry(Side::Gateway)]
                    .into_iter()
                    .flatten()
                    .collect();
                http_filter_chain(&chain)
            }
            _ => self.filters(side),
        };
        let mut listener = json!({
            "name": name,
            "address": {"socket_address": {"address": address.to_string(), "port_value": OUTBOUND_PORT}},
            "filter_chains": [{"filters": [hcm(name, json!({
                "rds": {"route_config_name": "outbound", "config_source": watched(&rds)}
            }), filters)]}]
        });
        if let Some(direction) = direction {
            listener["traffic_direction"] = json!(direction);
        }
        listener
    }

    fn sidecar_bootstrap(&self, index: usize, namespace: &Topology, pod: &TopologyPod) -> Value {
        let ip = self.pod_ip(index);
        let ns = &namespace.namespace;
        let app = static_cluster(
            "inbound|app",
            &[SocketAddr::new(ip, APP_PORT)],
            self.options.app_protocol == Protocol::Grpc,
        );
        let inbound = json!({
            "name": "inbound",
            "traffic_direction": "INBOUND",
            "address": {"socket_address": {"address": ip.to_string(), "port_value": INBOUND_PORT}},
            "filter_chains": [{"filters": [hcm("inbound", json!({"route_config": {"virtual_hosts": [{
                "name": "inbound", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound|app"}}]
            }]}}), self.filters(Side::Inbound(ns)))]}]
        });
        json!({
            "node": {
                "id": format!("sidecar~{ip}~{}.{ns}~{ns}.svc.{CLUSTER_DOMAIN}", pod.name),
                "cluster": pod.name,
                "metadata": {"NAMESPACE": ns, "LABELS": pod.labels}
            },
            "static_resources": {
                "listeners": [inbound, self.outbound_listener("outbound", ns, ip, Some("OUTBOUND"))],
                "clusters": [app]
            },
            "dynamic_resources": {"cds_config": watched(&self.files.cds)}
        })
    }

    /// Where the stand-in for ztunnel of ambient namespace `namespace` listens.
    pub fn ztunnel(&self, namespace: &str) -> Option<SocketAddr> {
        self.waypoint(namespace)
            .map(|w| SocketAddr::new(w.ip(), ZTUNNEL_PORT))
    }

    /// The stand-in for ztunnel of an ambient namespace, which carries its pods' calls at
    /// L4: a call to a service behind a waypoint (a service of an ambient namespace) goes
    /// to that waypoint; any other to any pod of the service, unrouted by env (no L7 for
    /// it). Real ztunnel picks by the service's address; this one by the host called.
    fn ztunnel_bootstrap(&self, own: &Topology) -> Result<Value> {
        let address = self
            .ztunnel(&own.namespace)
            .context("not an ambient namespace")?;
        let mut hosts = Vec::new();
        let mut waypoints = BTreeMap::new();
        for (service_ns, service) in self.services() {
            let cluster = match self.waypoint(&service_ns.namespace) {
                Some(waypoint) => {
                    let name = format!("waypoint|{}", service_ns.namespace);
                    let cluster = static_cluster(
                        &name,
                        &[waypoint],
                        self.options.app_protocol == Protocol::Grpc,
                    );
                    waypoints.insert(name.clone(), cluster);
                    name
                }
                None => Self::cluster_name(service_ns, service, None),
            };
            hosts.push(json!({
                "name": service_fqdn(&service.name, &service_ns.namespace, CLUSTER_DOMAIN),
                "domains": domains(own, service_ns, service),
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
            }));
        }
        let listener = json!({
            "name": "ztunnel",
            "address": {"socket_address": {"address": address.ip().to_string(), "port_value": address.port()}},
            "filter_chains": [{"filters": [hcm("ztunnel", json!({
                // Its clusters come by CDS, after the listener is built.
                "route_config": {"name": "ztunnel", "virtual_hosts": hosts, "validate_clusters": false}
            }), http_filter_chain(&[]))]}]
        });
        let name = &own.namespace;
        Ok(json!({
            "node": {"id": format!("ztunnel~{}~ztunnel.{name}~{name}.svc.{CLUSTER_DOMAIN}", address.ip()), "cluster": "ztunnel"},
            "static_resources": {"listeners": [listener], "clusters": waypoints.into_values().collect::<Vec<_>>()},
            "dynamic_resources": {"cds_config": watched(&self.files.cds)}
        }))
    }

    /// An ambient namespace's waypoint: one listener for the calls ztunnel's stand-in
    /// brings to the namespace's services, with the waypoint's plugin object and the
    /// namespace's routes. Istio's waypoint also knows each
    /// caller's workload (its `downstream_peer` filter state); Envoy has no such filter
    /// outside Istio's build, so here callers are unknown to it, and auto-inject by the
    /// caller's workload is left to the filter's own tests (`flow/waypoint_tests.rs`).
    fn waypoint_bootstrap(&self, ns: &Topology) -> Result<Value> {
        let address = self
            .waypoint(&ns.namespace)
            .context("not an ambient namespace")?;
        let rds = self.files_of(&ns.namespace)?.rds.clone();
        let listener = json!({
            "name": "waypoint",
            "address": {"socket_address": {"address": address.ip().to_string(), "port_value": address.port()}},
            "filter_chains": [{"filters": [hcm("waypoint", json!({
                "rds": {"route_config_name": "outbound", "config_source": watched(&rds)}
            }), self.filters(Side::Waypoint(&ns.namespace)))]}]
        });
        let name = &ns.namespace;
        Ok(json!({
            "node": {
                "id": format!("waypoint~{}~waypoint.{name}~{name}.svc.{CLUSTER_DOMAIN}", address.ip()),
                "cluster": "waypoint",
                "metadata": {"NAMESPACE": name, "LABELS": {"gateway.networking.k8s.io/gateway-name": "waypoint"}}
            },
            "static_resources": {"listeners": [listener]},
            "dynamic_resources": {"cds_config": watched(&self.files.cds)}
        }))
    }

    /// The gateway: an outbound-style listener with no direction, no pod labels. When the
    /// topology exposes services through it, it is Istio's ingress gateway in
    /// `istio-system` with its own plugin object; else a client of the namespace.
    fn gateway_bootstrap(&self) -> Value {
        let ns = if self.gateway_exposes() {
            INGRESS_GATEWAY.0
        } else {
            self.topology.namespace.as_str()
        };
        json!({
            "node": {
                "id": format!("router~{}~gateway.{ns}~{ns}.svc.{CLUSTER_DOMAIN}", self.gateway.ip()),
                "cluster": "gateway",
                "metadata": {"NAMESPACE": ns, "LABELS": {"istio": "ingressgateway"}}
            },
            "static_resources": {"listeners": [self.outbound_listener("gateway", &self.topology.namespace, self.gateway.ip(), None)]},
            "dynamic_resources": {"cds_config": watched(&self.files.cds)}
        })
    }
}

/// The side of a sidecar a plugin object is for (Istio's `match` mode SERVER or CLIENT),
/// in a namespace.
#[derive(Clone, Copy)]
enum Side<'a> {
    Inbound(&'a str),
    Outbound(&'a str),
    /// An ambient namespace's waypoint.
    Waypoint(&'a str),
    /// The gateway's own plugin object.
    Gateway,
    /// The gateway owner's edge guard.
    Edge,
}

/// What the controller reads of namespace `ns`: its objects, and the mesh's ingress
/// Gateway (the mesh's gateway Envoy is the pod of Istio's default ingress Gateway).
fn snapshot_of(ns: &Topology) -> NamespaceSnapshot {
    let (ve, services, pods) = ns.to_kubernetes();
    let snapshot = Snapshot {
        services,
        pods,
        elsewhere: ingress_gateways(),
        namespace_labels: ns.namespace_labels(),
        ..Snapshot::default()
    };
    NamespaceSnapshot {
        virtual_environment: ve,
        snapshot,
    }
}

/// The Gateways of the mesh's gateway Envoy: Istio's default ingress Gateway, and a
/// Gateway API Gateway of the same name (for namespaces that route with HTTPRoutes) whose
/// listener takes routes from every namespace.
fn ingress_gateways() -> Vec<Existing> {
    let gateway_api = json!({
        "metadata": {"name": INGRESS_GATEWAY.1, "namespace": INGRESS_GATEWAY.0},
        "spec": {"gatewayClassName": "istio", "listeners": [{
            "name": "http", "port": 80, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "All"}}}]}
    });
    vec![
        Existing::from_json(Kind::Gateway, &ingress_gateway(), INGRESS_GATEWAY.0),
        Existing::from_json(Kind::KubernetesGateway, &gateway_api, INGRESS_GATEWAY.0),
    ]
}

/// Istio's default ingress Gateway, as its Helm chart and samples install it.
fn ingress_gateway() -> Value {
    json!({
        "metadata": {"name": INGRESS_GATEWAY.1, "namespace": INGRESS_GATEWAY.0},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]
        }
    })
}

/// A cluster of fixed `endpoints`, spoken to in HTTP/2 (h2c) when `http2`.
fn static_cluster(name: &str, endpoints: &[SocketAddr], http2: bool) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|a| {
            json!({"endpoint": {"address": {"socket_address": {
                "address": a.ip().to_string(), "port_value": a.port()}}}})
        })
        .collect();
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}
    });
    if http2 {
        cluster["typed_extension_protocol_options"] = http2_options();
    }
    cluster
}

/// A cluster's upstream protocol: HTTP/2 (h2c).
fn http2_options() -> Value {
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    })
}

/// Every DNS spelling of `service` from a pod of namespace `own`, with and without its port
/// (its short name only in its own namespace).
fn domains(own: &Topology, service_ns: &Topology, service: &TopologyService) -> Vec<String> {
    let ns = &service_ns.namespace;
    let mut names = vec![
        format!("{}.{ns}", service.name),
        format!("{}.{ns}.svc", service.name),
        service_fqdn(&service.name, ns, CLUSTER_DOMAIN),
    ];
    if *ns == own.namespace {
        names.push(service.name.clone());
    }
    names
        .iter()
        .flat_map(|n| [n.clone(), format!("{n}:{}", service.port)])
        .collect()
}

fn hcm(name: &str, routes: Value, filters: Value) -> Value {
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "http_filters": filters
    });
    if let (Some(config), Some(routes)) = (config.as_object_mut(), routes.as_object()) {
        config.extend(routes.clone());
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": config})
}

fn decode(response: http::Response) -> Result<Hop> {
    if response.status != 200 {
        bail!("HTTP {}: {}", response.status, response.text());
    }
    if let Some(error) = response.protocol_error() {
        bail!("{error}");
    }
    serde_json::from_slice(&response.body).with_context(|| response.text())
}

fn ip(net: [u8; 2], host: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        net[0],
        net[1],
        u8::try_from(host).unwrap_or(255),
    ))
}

/// A random 127.a.b.0/24, so that meshes started at the same time do not share addresses.
fn random_net() -> [u8; 2] {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let r = hasher.finish();
    [100 + (r % 150) as u8, (r >> 8) as u8]
}

async fn wait_for_port(addr: SocketAddr) -> Result<()> {
    let probe = async || Ok(tokio::net::TcpStream::connect(addr).await.is_ok());
    let (_, listening) = poll_until(Duration::from_secs(20), probe, |up| *up).await?;
    if !listening {
        bail!("nothing listens on {addr} after 20s");
    }
    Ok(())
}
