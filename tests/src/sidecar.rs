//! One sidecar Envoy with the filter, for testing the filter alone in a real proxy.
//!
//! The filter fails open, as the controller's WasmPlugin asks Istio to configure it
//! (`failStrategy: FAIL_OPEN` becomes Envoy's `failure_policy: FAIL_OPEN`): a VM that died
//! is then skipped silently, which is what production would see.
//!
//! The outbound listener's routes do what the controller's VirtualService does: an exact
//! match on the route header (its name carries a per-namespace suffix, [`ROUTE_HEADER`])
//! per env, then a default route. Each route answers directly
//! (no upstream needed) with the env it stands for and the env and route headers it saw, so
//! a response tells which subset the request was routed to. The inbound listener stands for
//! the pod's application. The plugin config arrives through a watched file, as Istio's ECDS
//! push delivers it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::envoy::{filter_wasm, poll_until, write_atomically, Envoy};
use crate::http::{self, Protocol, Response};

pub const FILTER_NAME: &str = "virtual-env";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The route header the sidecar's routes match, as the controller names one: the plain
/// name plus a suffix a client cannot guess. Test configs set `routeHeader` to it.
pub const ROUTE_HEADER: &str = "x-virtual-env-route-t3stk3y9";
/// The plain name, which a client might forge: it must never select a route.
pub const PLAIN_ROUTE_HEADER: &str = "x-virtual-env-route";

/// The ECDS resource carrying `plugin_config` (JSON text) to the Wasm filter.
pub fn ecds_resource(wasm: &str, plugin_config: &str) -> Value {
    ecds_resource_named(FILTER_NAME, wasm, plugin_config)
}

/// An ECDS resource for plugin `name`. Every plugin of the module shares one VM (one
/// `vm_id`), as the plugin objects of one module do under Istio, which sets none.
pub fn ecds_resource_named(name: &str, wasm: &str, plugin_config: &str) -> Value {
    json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": {
                "@type": WASM_TYPE,
                "config": {
                    "name": name,
                    "root_id": name,
                    "failure_policy": "FAIL_OPEN",
                    "vm_config": {
                        "vm_id": FILTER_NAME,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": plugin_config
                    }
                }
            }
        }]
    })
}

/// The HTTP filter chain: the Wasm filter from the watched ECDS file, then the router.
pub fn http_filters(ecds_path: &str, ecds_dir: &str) -> Value {
    http_filters_named(FILTER_NAME, ecds_path, ecds_dir)
}

/// The HTTP filter chain with plugin `name` from its watched ECDS file, then the router.
pub fn http_filters_named(name: &str, ecds_path: &str, ecds_dir: &str) -> Value {
    json!([
        {
            "name": name,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {
                        "path": ecds_path,
                        "watched_directory": {"path": ecds_dir}
                    }
                },
                "type_urls": [WASM_TYPE]
            }
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }
    ])
}

/// Several Wasm filters from their watched ECDS files, in order, then the router: a
/// gateway's edge guard (Istio phase AUTHN) before the routing plugins.
pub fn http_filter_chain(filters: &[(&str, String, String)]) -> Value {
    let mut chain: Vec<Value> = filters
        .iter()
        .map(|(name, path, dir)| http_filters_named(name, path, dir)[0].clone())
        .collect();
    chain.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    Value::Array(chain)
}

/// An HTTP listener with the filter chain, on a free loopback port.
pub fn listener(name: &str, direction: &str, routes: Value, filters: &Value) -> Value {
    json!({
        "name": name,
        "traffic_direction": direction,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "AUTO",
                "route_config": {"virtual_hosts": [{
                    "name": name,
                    "domains": ["*"],
                    "routes": routes,
                    "response_headers_to_add": [
                        {"header": {"key": "x-seen-env", "value": "%REQ(x-virtual-env)%"}},
                        {"header": {"key": "x-seen-route", "value": format!("%REQ({ROUTE_HEADER})%")}}
                    ]
                }]},
                "http_filters": filters
            }
        }]}]
    })
}

/// A route that answers `body` directly, optionally only when the route header is `env`.
fn answer(env: Option<&str>, body: &str) -> Value {
    let mut matcher = json!({"prefix": "/"});
    if let Some(env) = env {
        matcher["headers"] = json!([{"name": ROUTE_HEADER, "string_match": {"exact": env}}]);
    }
    json!({"match": matcher, "direct_response": {"status": 200, "body": {"inline_string": body}}})
}

pub struct Sidecar {
    pub envoy: Envoy,
    ecds: PathBuf,
    wasm: String,
    outbound: std::net::SocketAddr,
    inbound: std::net::SocketAddr,
    _dir: TempDir,
}

/// How to start a [`Sidecar`].
#[derive(Debug, Clone)]
pub struct SidecarOptions<'a> {
    /// The pod's env label.
    pub own_env: &'a str,
    /// Route header values the outbound routes match.
    pub envs: &'a [&'a str],
    pub plugin_config: &'a str,
    /// Envoy worker threads; with 1, every request meets the same VM.
    pub workers: u32,
    /// Without the filter: a pod whose sidecar does not load it.
    pub filter: bool,
    /// Another module in place of the filter (e.g. one that fails).
    pub wasm: Option<String>,
    /// HTTP filters before the filter on both listeners (e.g. `set_filter_state`, to put
    /// filter state where the filter reads it).
    pub before: Vec<Value>,
}

impl<'a> SidecarOptions<'a> {
    pub fn new(own_env: &'a str, envs: &'a [&'a str], plugin_config: &'a str) -> Self {
        Self {
            own_env,
            envs,
            plugin_config,
            workers: 2,
            filter: true,
            wasm: None,
            before: Vec::new(),
        }
    }
}

impl Sidecar {
    /// A sidecar of a pod in namespace `default` with env label `own_env`, routing on the
    /// route header values `envs`, with `plugin_config` (JSON) in force.
    pub async fn start(own_env: &str, envs: &[&str], plugin_config: &str) -> Result<Self> {
        Self::start_with(SidecarOptions::new(own_env, envs, plugin_config)).await
    }

    pub async fn start_with(options: SidecarOptions<'_>) -> Result<Self> {
        let SidecarOptions {
            own_env,
            envs,
            plugin_config,
            workers,
            filter,
            wasm,
            before,
        } = options;
        let dir = tempfile::tempdir()?;
        let wasm = match wasm {
            Some(wasm) => wasm,
            None => filter_wasm()?.display().to_string(),
        };
        let ecds_dir = dir.path().join("ecds");
        std::fs::create_dir(&ecds_dir)?;
        let ecds = ecds_dir.join("virtual-env.json");
        write_atomically(
            &ecds,
            &serde_json::to_vec(&ecds_resource(&wasm, plugin_config))?,
        )?;
        let mut filters =
            http_filters(&ecds.display().to_string(), &ecds_dir.display().to_string());
        if let Some(chain) = filters.as_array_mut() {
            if !filter {
                chain.remove(0);
            }
            chain.splice(0..0, before);
        }
        let mut routes: Vec<Value> = envs.iter().map(|e| answer(Some(e), e)).collect();
        routes.push(answer(None, "default"));
        let config = json!({
            "node": {
                "id": "sidecar~127.0.0.1~pod-1.default~default.svc.cluster.local",
                "cluster": "app",
                "metadata": {"NAMESPACE": "default", "LABELS": {"app": "app", "virtual-env": own_env}}
            },
            "static_resources": {"listeners": [
                listener("outbound", "OUTBOUND", json!(routes), &filters),
                listener("inbound", "INBOUND", json!([answer(None, "app")]), &filters),
            ]}
        });
        let envoy = Envoy::start("sidecar", dir.path(), config, workers).await?;
        if filter {
            envoy.check_wasm_runtime().await?;
        }
        let outbound = envoy.listener("outbound").await?;
        let inbound = envoy.listener("inbound").await?;
        Ok(Self {
            envoy,
            ecds,
            wasm,
            outbound,
            inbound,
            _dir: dir,
        })
    }

    /// An outbound call from the application to `authority`: returns the response, whose
    /// body is the env the request was routed to (`default` for the default route).
    pub async fn call(&self, authority: &str, headers: &[(&str, &str)]) -> Result<Response> {
        self.call_with(Protocol::Http1, authority, headers).await
    }

    pub async fn call_with(
        &self,
        protocol: Protocol,
        authority: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        let mut all = vec![("host", authority)];
        all.extend_from_slice(headers);
        http::request(protocol, self.outbound, "/", &all).await
    }

    /// The subset an outbound call to `authority` is routed to.
    pub async fn route(&self, authority: &str, headers: &[(&str, &str)]) -> Result<String> {
        Ok(self.call(authority, headers).await?.text())
    }

    /// The outbound listener's address, for raw clients.
    pub fn outbound(&self) -> std::net::SocketAddr {
        self.outbound
    }

    /// The inbound listener's address, for raw clients.
    pub fn inbound(&self) -> std::net::SocketAddr {
        self.inbound
    }

    /// An inbound request into the pod (from another pod's sidecar).
    pub async fn receive(&self, headers: &[(&str, &str)]) -> Result<Response> {
        let mut all = vec![("host", "app.default.svc.cluster.local")];
        all.extend_from_slice(headers);
        http::get(self.inbound, "/", &all).await
    }

    /// Pushes a new plugin config, as an ECDS update.
    pub fn push_config(&self, plugin_config: &str) -> Result<()> {
        let resource = ecds_resource(&self.wasm, plugin_config);
        write_atomically(&self.ecds, &serde_json::to_vec(&resource)?)
    }

    /// Waits until the Envoy stat reaches `at_least`.
    pub async fn wait_stat(&self, name: &str, at_least: u64) -> Result<()> {
        let probe = async || self.envoy.stat(name).await;
        let (value, reached) =
            poll_until(Duration::from_secs(10), probe, |v| *v >= at_least).await?;
        if !reached {
            bail!("{name} is {value}, expected at least {at_least}");
        }
        Ok(())
    }

    /// Waits until an outbound call to `authority` routes to `want` (a config update reaches
    /// every worker shortly after the main thread).
    pub async fn wait_route(
        &self,
        authority: &str,
        headers: &[(&str, &str)],
        want: &str,
    ) -> Result<()> {
        let probe = async || self.route(authority, headers).await;
        let (got, reached) = poll_until(Duration::from_secs(10), probe, |got| got == want).await?;
        if !reached {
            bail!("{authority} still routes to {got}, expected {want}");
        }
        Ok(())
    }
}
