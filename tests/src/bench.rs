//! `make bench`: virtual-env's per-request cost in real Envoy against its baselines, run side
//! by side in one run, plus the controller's planning cost, the filter's memory and how fast
//! a config change takes effect.
//!
//! Every scenario is one Envoy (`--concurrency 1`, pinned to CPU 0) whose listener routes to
//! an upstream listener of the same Envoy (a direct response): a sidecar proxying to an
//! application, without a third process competing for the two cores. `wrk` runs on CPU 1.
//! Scenarios alternate round by round, and medians are reported.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use virtual_env_core::{Direction, PluginConfig};

use crate::envoy::{write_atomically, Envoy};
use crate::http;
use crate::sidecar::{ecds_resource, http_filters};

pub const TARGET: &str = "app-target";
/// The request's env: two levels below the project env `dev.p1`, which has pods.
pub const REQUEST_ENV: &str = "dev.p1.u1.t1";
/// The envs in which the target service has pods: dev and nine projects.
pub fn pod_envs() -> Vec<String> {
    std::iter::once("dev".to_owned())
        .chain((1..=9).map(|i| format!("dev.p{i}")))
        .collect()
}

/// `n` env names: the request's env, the nine projects with pods, then their users
/// round-robin (`dev.p1.u1`, `dev.p2.u1`, ...), so every name falls back to a project with
/// pods.
pub fn env_names(n: usize) -> Vec<String> {
    let mut names: Vec<String> = std::iter::once(REQUEST_ENV.to_owned())
        .chain((1..=9).map(|i| format!("dev.p{i}")))
        .collect();
    let mut j = 1;
    while names.len() < n {
        for i in 1..=9 {
            if names.len() < n {
                names.push(format!("dev.p{i}.u{j}"));
            }
        }
        j += 1;
    }
    names.truncate(n);
    names
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// No filter: the floor of any sidecar.
    Bare,
    /// An empty Proxy-Wasm filter: the floor of any Wasm filter.
    EmptyFilter,
    /// One rung of the cost ladder (`filter/src/ladder.rs`): the filter's outbound work up
    /// to that step, on the same routes as [`Kind::VirtualEnv`].
    Ladder(u8),
    /// virtual-env's filter and the routes the controller writes.
    VirtualEnv,
    /// virtual-env's filter on the called side (an inbound listener), trace correlation
    /// on or off.
    Inbound { correlation: bool },
    /// The original design: a Lua filter that adds the env header when missing, and an
    /// exact env-header route per env name.
    Original,
    /// Another build of the filter (`--candidate`), beside [`Kind::VirtualEnv`]: for
    /// trying a change or a build setting against the current one in the same run.
    Candidate,
}

/// The ladder's rungs and what each adds: 1 to 4 each add to the rung below, which is
/// the outbound work the design needs; 5 and 6 are measured alternatives to rung 4.
pub const RUNGS: [&str; 7] = [
    "nothing (this module's floor)",
    "read the env header",
    "read `:authority`",
    "find the service, walk the env up its table",
    "write the route header",
    "rung 4 + read `xds.listener_direction` (per request before the config said the side)",
    "rung 4, both headers read in one call for all headers",
];

/// The rung each ladder rung is compared with.
fn rung_below(rung: usize) -> String {
    match rung {
        0 => "empty-filter".into(),
        1..=5 => format!("ladder-{}", rung - 1),
        _ => "ladder-4".into(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub kind: Kind,
    /// Env names in the namespace (virtual-env and original only).
    pub envs: usize,
}

impl Scenario {
    fn new(name: impl Into<String>, kind: Kind, envs: usize) -> Self {
        Self {
            name: name.into(),
            kind,
            envs,
        }
    }
}

/// Every scenario of a run: the floors, the ladder, virtual-env and the original design at
/// each env count, and the inbound side.
pub fn scenarios(env_counts: &[usize], candidate: bool) -> Vec<Scenario> {
    let mut out = vec![
        Scenario::new("bare", Kind::Bare, 0),
        Scenario::new("empty-filter", Kind::EmptyFilter, 0),
    ];
    for rung in 0..RUNGS.len() as u8 {
        out.push(Scenario::new(
            format!("ladder-{rung}"),
            Kind::Ladder(rung),
            0,
        ));
    }
    for &n in env_counts {
        out.push(Scenario::new(
            format!("virtual-env-{n}"),
            Kind::VirtualEnv,
            n,
        ));
        out.push(Scenario::new(format!("original-{n}"), Kind::Original, n));
    }
    if candidate {
        out.push(Scenario::new("candidate", Kind::Candidate, 0));
    }
    for correlation in [false, true] {
        let name = if correlation {
            "inbound-correlation-on"
        } else {
            "inbound-correlation-off"
        };
        out.push(Scenario::new(name, Kind::Inbound { correlation }, 0));
    }
    out
}

/// Where the listener under test sends a request once the filters are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Upstream {
    /// The chosen route answers itself (`direct_response`): the filter's share of a
    /// request is largest, as in the issue's measurements.
    Direct,
    /// The route proxies to an upstream listener of the same Envoy: a sidecar in front of
    /// an application.
    Proxied,
}

/// The plugin config of a namespace with `services` services; the target has pods in
/// dev and nine projects, the others in dev and one project each.
pub fn plugin_config(services: usize) -> PluginConfig {
    let mut config = PluginConfig {
        default_subset: Some("dev".into()),
        ..PluginConfig::default()
    };
    config
        .services
        .insert(format!("{TARGET}.default.svc.cluster.local"), pod_envs());
    for i in 1..services {
        config.services.insert(
            format!("svc-{i}.default.svc.cluster.local"),
            vec!["dev".into(), format!("dev.p{}", i % 9 + 1)],
        );
    }
    config
}

fn cluster_name(env: &str) -> String {
    format!("backend-{env}")
}

fn exact(header: &str, value: &str, env: &str) -> Value {
    json!({
        "match": {"prefix": "/", "headers": [{"name": header, "string_match": {"exact": value}}]},
        "route": {"cluster": cluster_name(env)},
        "response_headers_to_add": [{"header": {"key": "x-routed", "value": env}}]
    })
}

fn default_route() -> Value {
    json!({
        "match": {"prefix": "/"},
        "route": {"cluster": cluster_name("dev")},
        "response_headers_to_add": [{"header": {"key": "x-routed", "value": "dev"}}]
    })
}

/// The nearest ancestor of `env` in which the target has pods.
fn nearest_with_pods(env: &str) -> String {
    let pods = pod_envs();
    virtual_env_core::lineage(env, '.')
        .find(|e| pods.iter().any(|p| p == e))
        .unwrap_or("dev")
        .to_owned()
}

/// The routes of the target's virtual host for a scenario.
pub fn routes(scenario: &Scenario) -> Vec<Value> {
    let mut routes = Vec::new();
    match scenario.kind {
        // The called side routes to its own application: no env routes.
        Kind::Bare | Kind::EmptyFilter | Kind::Inbound { .. } => {}
        // What the controller writes: one exact route-header match per env with pods.
        Kind::VirtualEnv | Kind::Ladder(_) | Kind::Candidate => {
            for env in pod_envs() {
                routes.push(exact("x-virtual-env-route", &env, &env));
            }
        }
        // One exact env-header route per env name whose nearest ancestor with pods is not
        // the default subset, mapping it there; the request's env in the middle.
        Kind::Original => {
            let mut names = env_names(scenario.envs);
            names.retain(|n| n != REQUEST_ENV);
            names.insert(names.len() / 2, REQUEST_ENV.into());
            for name in names {
                let target = nearest_with_pods(&name);
                if target != "dev" {
                    routes.push(exact("x-virtual-env", &name, &target));
                }
            }
        }
    }
    routes.push(default_route());
    routes
}

const LUA: &str = r#"
function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  if headers:get("x-virtual-env") == nil then
    headers:add("x-virtual-env", "dev")
  end
end
"#;

fn wasm_filter(name: &str, wasm: &Path, config: &str, vm_configuration: &str) -> Value {
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm}},
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": vm_configuration}
                },
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config}
            }
        }
    })
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

/// What the scenarios of a run share: the modules, the plugin config and the upstream.
#[derive(Clone, Copy)]
pub struct Setup<'a> {
    pub filter: &'a Path,
    pub empty: &'a Path,
    pub ladder: &'a Path,
    pub candidate: Option<&'a Path>,
    /// Services in the plugin config.
    pub services: usize,
    pub upstream: Upstream,
}

impl Setup<'_> {
    /// The plugin config a scenario's filter gets, as JSON: the side's, as the controller
    /// writes it (the called side's has no services table).
    pub fn plugin_config(&self, kind: Kind) -> String {
        let mut config = plugin_config(self.services);
        config.direction = Some(Direction::Outbound);
        if let Kind::Inbound { correlation } = kind {
            config.direction = Some(Direction::Inbound);
            config.services.clear();
            if !correlation {
                config.correlation_slots = 0;
            }
        }
        config.to_json()
    }

    fn filters(&self, kind: Kind) -> Value {
        let config = self.plugin_config(kind);
        match kind {
            Kind::Bare => json!([router()]),
            Kind::EmptyFilter => json!([wasm_filter("empty", self.empty, "{}", ""), router()]),
            Kind::Ladder(rung) => json!([
                wasm_filter("ladder", self.ladder, &config, &rung.to_string()),
                router()
            ]),
            Kind::VirtualEnv | Kind::Inbound { .. } => json!([
                wasm_filter("virtual-env", self.filter, &config, ""),
                router()
            ]),
            Kind::Candidate => json!([
                wasm_filter(
                    "virtual-env",
                    self.candidate.unwrap_or(self.filter),
                    &config,
                    ""
                ),
                router()
            ]),
            Kind::Original => json!([{
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": LUA}
                }
            }, router()]),
        }
    }
}

/// A free loopback port (bound and released; the bench runs alone).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One Envoy: the listener under test (with `filters`, `OUTBOUND` or `INBOUND`) and the
/// upstream its routes proxy to, or answer themselves.
pub fn bootstrap(
    mut routes: Vec<Value>,
    filters: Value,
    direction: &str,
    upstream: Upstream,
    upstream_port: u16,
) -> Value {
    if upstream == Upstream::Direct {
        for route in &mut routes {
            if let Some(route) = route.as_object_mut() {
                route.remove("route");
                route.insert(
                    "direct_response".into(),
                    json!({"status": 200, "body": {"inline_string": "ok"}}),
                );
            }
        }
    }
    let clusters: Vec<Value> = pod_envs()
        .iter()
        .map(|env| json!({
            "name": cluster_name(env),
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": cluster_name(env), "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}
            ]}]}
        }))
        .collect();
    let hcm = |name: &str, route_config: Value, filters: Value| {
        json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": route_config,
                "http_filters": filters
            }
        })
    };
    json!({
        "node": {"id": "bench", "cluster": "bench", "metadata": {"NAMESPACE": "default", "LABELS": {"virtual-env": "dev"}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "sidecar",
                    "traffic_direction": direction,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [hcm("sidecar", json!({"virtual_hosts": [{
                        "name": TARGET,
                        "domains": [TARGET, format!("{TARGET}:8080"), format!("{TARGET}.default.svc.cluster.local:8080")],
                        "routes": routes
                    }]}), filters)]}]
                },
                {
                    "name": "upstream",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}},
                    "filter_chains": [{"filters": [hcm("upstream", json!({"virtual_hosts": [{
                        "name": "app", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
                    }]}), json!([router()]))]}]
                }
            ],
            "clusters": clusters
        }
    })
}

/// Pins every thread of a process to one CPU.
pub fn pin(pid: u32, cpu: usize) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset failed for pid {pid}");
    }
    Ok(())
}

/// A started scenario.
pub struct Running {
    pub envoy: Envoy,
    pub listener: SocketAddr,
}

pub async fn start(scenario: &Scenario, setup: &Setup<'_>, dir: &Path) -> Result<Running> {
    let port = free_port()?;
    let direction = match scenario.kind {
        Kind::Inbound { .. } => "INBOUND",
        _ => "OUTBOUND",
    };
    let config = bootstrap(
        routes(scenario),
        setup.filters(scenario.kind),
        direction,
        setup.upstream,
        port,
    );
    let envoy = Envoy::start(&scenario.name, dir, config, 1).await?;
    if !matches!(scenario.kind, Kind::Bare | Kind::Original) {
        envoy.check_wasm_runtime().await?;
    }
    pin(envoy.pid(), 0)?;
    let listener = envoy.listener("sidecar").await?;
    // Check that it routes as intended before measuring it.
    let r = http::get(listener, "/", &request_headers()).await?;
    let want = match scenario.kind {
        Kind::Bare | Kind::EmptyFilter | Kind::Inbound { .. } => "dev",
        // Rungs below the route header's write do not route.
        Kind::Ladder(rung) if rung < 4 => "dev",
        Kind::Ladder(_) | Kind::VirtualEnv | Kind::Original | Kind::Candidate => "dev.p1",
    };
    if r.status != 200 || r.header("x-routed") != Some(want) {
        bail!(
            "{}: routed to {:?} (HTTP {}), expected {want}",
            scenario.name,
            r.header("x-routed"),
            r.status
        );
    }
    Ok(Running { envoy, listener })
}

/// TRACE_ID of [`request_headers`]' `traceparent`.
pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Every scenario's request: a service host, an env two levels below a project, and the
/// trace headers a traced mesh request carries (the inbound side records the env under
/// them; the outbound side does not look at them when the env header is present).
pub fn request_headers() -> Vec<(&'static str, &'static str)> {
    // "Host" spelled so: wrk adds its own Host header unless it sees exactly this one.
    vec![
        ("Host", "app-target:8080"),
        ("x-virtual-env", REQUEST_ENV),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-request-id", "6a1f0a52-43d1-4f5e-9b0e-0c5e3f1d2b7a"),
    ]
}

/// One wrk run's figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Envoy's CPU time (user + system) per request: steadier than req/s on a shared
    /// machine, since time the VM is not scheduled is not counted.
    pub cpu_us_per_request: f64,
}

/// CPU time a process has used, in microseconds (`/proc/<pid>/stat` utime + stime).
pub fn cpu_time_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks * 1e6 / hz)
}

/// Load from `wrk` on CPU 1 against `target`, served by the Envoy with `pid`.
pub fn wrk(target: SocketAddr, pid: u32, connections: usize, seconds: u64) -> Result<Sample> {
    let cpu_before = cpu_time_us(pid)?;
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        "1",
        "wrk",
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for (k, v) in request_headers() {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd
        .arg(format!("http://{target}/"))
        .output()
        .context("running wrk")?;
    let cpu = cpu_time_us(pid)? - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains("Non-2xx") {
        bail!(
            "wrk failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (mut sample, requests) = parse_wrk(&text)?;
    sample.cpu_us_per_request = cpu / requests.max(1.0);
    Ok(sample)
}

/// The figures of wrk's report, and the number of requests it made.
pub fn parse_wrk(text: &str) -> Result<(Sample, f64)> {
    let value = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = value("Requests/sec:").context("no Requests/sec")?.parse()?;
    let p50 = duration_us(value("50%").context("no 50% latency")?)?;
    let p99 = duration_us(value("99%").context("no 99% latency")?)?;
    let requests: f64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .context("no request count")?
        .0
        .parse()?;
    Ok((
        Sample {
            rps,
            p50_us: p50,
            p99_us: p99,
            cpu_us_per_request: f64::NAN,
        },
        requests,
    ))
}

fn duration_us(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .context("no unit")?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        other => bail!("unknown unit {other}"),
    })
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Bytes of memory Envoy reports as allocated (admin `/memory`).
pub async fn allocated_bytes(envoy: &Envoy) -> Result<u64> {
    let r = http::get(envoy.admin(), "/memory", &[]).await?;
    let v: Value = serde_json::from_slice(&r.body)?;
    v["allocated"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no allocated in /memory")
}

/// Envoy's memory with `kind`'s filter and a `services`-service config, with one and with
/// two workers: the difference is what each further worker holds (its VM and its copy of
/// the route table). Per Envoy: (allocated bytes, resident bytes). Both, because Envoy's
/// allocator does not see the Wasm VMs' linear memory (V8 maps it itself); the resident
/// set does, once touched.
pub async fn memory(
    setup: &Setup<'_>,
    kind: Kind,
    services: usize,
    dir: &Path,
) -> Result<[(u64, u64); 2]> {
    let setup = Setup { services, ..*setup };
    let scenario = Scenario::new(format!("memory-{services}"), kind, 0);
    let mut bytes = [(0, 0); 2];
    for (workers, bytes) in [1, 2].into_iter().zip(&mut bytes) {
        let config = bootstrap(
            routes(&scenario),
            setup.filters(kind),
            "OUTBOUND",
            setup.upstream,
            free_port()?,
        );
        let envoy = Envoy::start(&scenario.name, dir, config, workers).await?;
        // The config is loaded on each worker at start; no request is needed.
        *bytes = (allocated_bytes(&envoy).await?, resident_bytes(envoy.pid())?);
    }
    Ok(bytes)
}

/// A process's resident set (`VmRSS` of `/proc/<pid>/status`).
pub fn resident_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// Milliseconds from an ECDS file change to the new routing being in force, per run.
pub async fn config_change_ms(setup: &Setup<'_>, dir: &Path, runs: usize) -> Result<Vec<f64>> {
    let ecds_dir = dir.join("ecds");
    std::fs::create_dir_all(&ecds_dir)?;
    let ecds = ecds_dir.join("virtual-env.json");
    let wasm = setup.filter.display().to_string();
    let mut before = plugin_config(1000);
    let key = format!("{TARGET}.default.svc.cluster.local");
    let mut after = before.clone();
    after
        .services
        .entry(key.clone())
        .or_default()
        .push(REQUEST_ENV.into());
    before
        .services
        .entry(key)
        .or_default()
        .retain(|e| e != REQUEST_ENV);
    write_atomically(
        &ecds,
        &serde_json::to_vec(&ecds_resource(&wasm, &before.to_json()))?,
    )?;
    let mut routes: Vec<Value> = pod_envs()
        .iter()
        .map(|e| exact("x-virtual-env-route", e, e))
        .collect();
    routes.insert(0, exact("x-virtual-env-route", REQUEST_ENV, "dev.p1"));
    // The user env's route goes to the project's backend but says which route it was.
    routes[0]["response_headers_to_add"] =
        json!([{"header": {"key": "x-routed", "value": REQUEST_ENV}}]);
    routes.push(default_route());
    let filters = http_filters(&ecds.display().to_string(), &ecds_dir.display().to_string());
    let envoy = Envoy::start(
        "config-change",
        dir,
        bootstrap(routes, filters, "OUTBOUND", setup.upstream, free_port()?),
        1,
    )
    .await?;
    let listener = envoy.listener("sidecar").await?;
    let mut times = Vec::new();
    for run in 0..runs * 2 {
        let (config, want) = if run % 2 == 0 {
            (&after, REQUEST_ENV)
        } else {
            (&before, "dev.p1")
        };
        let started = Instant::now();
        write_atomically(
            &ecds,
            &serde_json::to_vec(&ecds_resource(&wasm, &config.to_json()))?,
        )?;
        loop {
            let r = http::get(listener, "/", &request_headers()).await?;
            if r.header("x-routed") == Some(want) {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("config change not in force after 10 s");
            }
        }
        if run % 2 == 0 {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(times)
}

/// Median figures of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub cpu_us_per_request: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub rounds: Vec<Sample>,
}

pub fn summarize(scenario: &Scenario, rounds: &[Sample]) -> Summary {
    Summary {
        scenario: scenario.clone(),
        rps: median(rounds.iter().map(|s| s.rps).collect()),
        cpu_us_per_request: median(rounds.iter().map(|s| s.cpu_us_per_request).collect()),
        p50_us: median(rounds.iter().map(|s| s.p50_us).collect()),
        p99_us: median(rounds.iter().map(|s| s.p99_us).collect()),
        rounds: rounds.to_vec(),
    }
}

/// Ratios of virtual-env against each baseline at each env count: the median over rounds
/// of the ratio within a round (pairs measured minutes apart, not hours, so slow drift of a
/// shared machine cancels). Returns (throughput ratio, baseline CPU / virtual-env CPU per
/// request): above 1 is virtual-env doing better.
pub fn ratios(summaries: &[Summary], env_counts: &[usize]) -> BTreeMap<String, (f64, f64)> {
    let get = |name: &str| summaries.iter().find(|s| s.scenario.name == name);
    let mut out = BTreeMap::new();
    for n in env_counts {
        let Some(ve) = get(&format!("virtual-env-{n}")) else {
            continue;
        };
        for (base, label) in [
            ("bare".to_owned(), "bare"),
            ("empty-filter".to_owned(), "empty filter"),
            (format!("original-{n}"), "original design"),
        ] {
            let Some(b) = get(&base) else { continue };
            out.insert(format!("virtual-env-{n} / {label}"), pair_ratio(ve, b));
        }
    }
    for side in ["inbound-correlation-off", "inbound-correlation-on"] {
        if let (Some(v), Some(b)) = (get(side), get("empty-filter")) {
            out.insert(format!("{side} / empty filter"), pair_ratio(v, b));
        }
    }
    out
}

/// (throughput ratio, baseline CPU / scenario CPU per request), medians of per-round ratios.
fn pair_ratio(v: &Summary, b: &Summary) -> (f64, f64) {
    let pairs = v.rounds.iter().zip(&b.rounds);
    let rps = median(pairs.clone().map(|(v, b)| v.rps / b.rps).collect());
    let cpu = median(
        pairs
            .map(|(v, b)| b.cpu_us_per_request / v.cpu_us_per_request)
            .collect(),
    );
    (rps, cpu)
}

/// One row of the ladder's report: a rung's CPU per request and what it adds to the rung
/// below (the median over rounds of the within-round difference).
#[derive(Debug, Clone, Serialize)]
pub struct Rung {
    pub scenario: String,
    pub step: String,
    /// The scenario `added_us` is measured against.
    pub compared_with: String,
    pub cpu_us_per_request: f64,
    pub added_us: f64,
}

/// The ladder from the empty filter to the full filter (`full`, a virtual-env scenario,
/// compared with rung 4, the work the design needs).
pub fn ladder(summaries: &[Summary], full: &str) -> Vec<Rung> {
    let get = |name: &str| summaries.iter().find(|s| s.scenario.name == name);
    let mut rows: Vec<(String, String, Option<String>)> = vec![(
        "empty-filter".into(),
        "the empty filter (the floor)".into(),
        None,
    )];
    for (rung, step) in RUNGS.iter().enumerate().take(5) {
        rows.push((
            format!("ladder-{rung}"),
            (*step).into(),
            Some(rung_below(rung)),
        ));
    }
    rows.push((
        full.into(),
        "the full filter: context, validation, counters, env sources".into(),
        Some("ladder-4".into()),
    ));
    for (rung, step) in RUNGS.iter().enumerate().skip(5) {
        rows.push((
            format!("ladder-{rung}"),
            (*step).into(),
            Some(rung_below(rung)),
        ));
    }
    let mut out = Vec::new();
    for (name, step, below) in rows {
        let Some(summary) = get(&name) else { continue };
        let added_us = below.as_deref().and_then(get).map_or(f64::NAN, |b| {
            median(
                summary
                    .rounds
                    .iter()
                    .zip(&b.rounds)
                    .map(|(s, b)| s.cpu_us_per_request - b.cpu_us_per_request)
                    .collect(),
            )
        });
        out.push(Rung {
            scenario: name,
            step,
            compared_with: below.unwrap_or_default(),
            cpu_us_per_request: summary.cpu_us_per_request,
            added_us,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_fall_back_to_projects_with_pods() {
        assert_eq!(env_names(10).len(), 10);
        assert_eq!(env_names(1000).len(), 1000);
        assert!(env_names(10).contains(&REQUEST_ENV.to_owned()));
        assert_eq!(nearest_with_pods("dev.p3.u7"), "dev.p3");
        assert_eq!(nearest_with_pods("dev.p10"), "dev");
    }

    #[test]
    fn the_original_table_grows_with_env_names_and_virtual_env_does_not() {
        let count = |kind, envs| {
            routes(&Scenario {
                name: String::new(),
                kind,
                envs,
            })
            .len()
        };
        assert_eq!(count(Kind::VirtualEnv, 10), count(Kind::VirtualEnv, 1000));
        assert_eq!(count(Kind::Original, 10), 11);
        assert_eq!(count(Kind::Original, 1000), 1001);
        // The request's route sits in the middle of the original table.
        let table = routes(&Scenario {
            name: String::new(),
            kind: Kind::Original,
            envs: 1000,
        });
        let at = table
            .iter()
            .position(|r| r["match"]["headers"][0]["string_match"]["exact"] == REQUEST_ENV)
            .unwrap();
        assert_eq!(at, 499);
    }

    #[test]
    fn parses_wrk_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/\n  Latency Distribution\n     50%  412.00us\n     75%  500.00us\n     90%  600.00us\n     99%    1.20ms\n  100 requests in 5.00s\nRequests/sec:  71234.56\nTransfer/sec: 1MB\n";
        let (s, requests) = parse_wrk(text).unwrap();
        assert_eq!(requests, 100.0);
        assert_eq!(s.rps, 71234.56);
        assert_eq!(s.p50_us, 412.0);
        assert_eq!(s.p99_us, 1200.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}

pub mod planning {
    //! The controller's planning at scale, and the bytes it writes against the original
    //! design's per-env enumeration for the same cluster.

    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Instant;

    use k8s_openapi::api::core::v1::{
        ContainerStatus, Pod, PodCondition, PodStatus, Service, ServicePort, ServiceSpec,
    };
    use kube::api::ObjectMeta;
    use serde::Serialize;
    use serde_json::json;
    use virtual_env_controller::crd::VirtualEnvironment;
    use virtual_env_controller::istio::{HttpMatchRequest, StringMatch, VirtualService};
    use virtual_env_controller::plan::{
        plan_namespace, Plan, Settings, Snapshot, WasmSource, MAX_PLUGIN_CONFIG_BYTES,
    };
    use virtual_env_core::lineage;

    /// 100 env names: dev, 9 projects, 90 users (10 per project).
    pub fn namespace_envs() -> Vec<String> {
        let mut envs = vec!["dev".to_owned()];
        for p in 1..=9 {
            envs.push(format!("dev.p{p}"));
            for u in 1..=10 {
                envs.push(format!("dev.p{p}.u{u}"));
            }
        }
        envs
    }

    fn pod(name: String, service: &str, env: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([
                    ("app".to_owned(), service.to_owned()),
                    ("virtual-env".to_owned(), env.to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    /// `services` services, each with `replicas` ready pods in each env `envs_of` gives it.
    pub fn snapshot(
        services: usize,
        replicas: usize,
        envs_of: impl Fn(usize) -> Vec<String>,
    ) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for s in 0..services {
            let name = format!("svc-{s}");
            snapshot.services.push(Service {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some("default".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(ServiceSpec {
                    selector: Some(BTreeMap::from([("app".to_owned(), name.clone())])),
                    ports: Some(vec![ServicePort {
                        name: Some("http".into()),
                        port: 8080,
                        ..ServicePort::default()
                    }]),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            });
            for env in envs_of(s) {
                for r in 0..replicas {
                    snapshot
                        .pods
                        .push(pod(format!("{name}-{env}-{r}"), &name, &env));
                }
            }
        }
        snapshot
    }

    pub fn virtual_environment() -> VirtualEnvironment {
        let mut ve = VirtualEnvironment::new(
            "bench",
            serde_yaml::from_str("envLabel: {defaultSubset: dev}").unwrap_or_default(),
        );
        ve.metadata.namespace = Some("default".into());
        ve
    }

    pub fn settings() -> Settings {
        Settings {
            cluster_domain: "cluster.local".into(),
            wasm: WasmSource {
                url: format!(
                    "http://virtual-env.virtual-env-system.svc.cluster.local:8080/filter/{}.wasm",
                    "0".repeat(64)
                ),
                sha256: Some("0".repeat(64)),
            },
            max_plugin_config_bytes: MAX_PLUGIN_CONFIG_BYTES,
            extension_api: Default::default(),
            gateway_admission: Default::default(),
            scope_gateway_to_namespace: false,
            gateway_api: Some(virtual_env_controller::gamma::GatewayApi::ALL),
        }
    }

    fn json_len<T: Serialize>(objects: &[T]) -> usize {
        objects
            .iter()
            .map(|o| serde_json::to_vec(o).map_or(0, |v| v.len()))
            .sum()
    }

    /// Bytes of the objects virtual-env writes (as sent to the API server).
    pub fn plan_bytes(plan: &Plan) -> usize {
        json_len(&plan.virtual_services)
            + json_len(&plan.destination_rules)
            + json_len(&[&plan.wasm_plugin, &plan.inbound_wasm_plugin])
    }

    /// `n` env names of 30 characters, as teams name them (`dev.team-payments-feat-000042`).
    pub fn long_env_names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("dev.team-payments-feat-{i:06}"))
            .collect()
    }

    /// The original design for the same cluster: per service, an exact env-header route for
    /// every env name of the namespace whose nearest ancestor with pods is not the default
    /// subset, mapped to that ancestor's subset; the same DestinationRules.
    pub fn original_bytes(plan: &Plan, envs: &[String]) -> usize {
        let mut vss = Vec::new();
        for (vs, dr) in plan.virtual_services.iter().zip(&plan.destination_rules) {
            let with_pods: BTreeSet<&str> = dr
                .spec
                .subsets
                .iter()
                .filter_map(|s| s.labels.values().next().map(String::as_str))
                .collect();
            let subset_of = |env: &str| {
                dr.spec
                    .subsets
                    .iter()
                    .find(|s| s.labels.values().any(|v| v == env))
                    .map(|s| s.name.clone())
            };
            let template = vs.spec.http[0].clone();
            let mut http = Vec::new();
            for env in envs {
                let Some(nearest) = lineage(env, '.').find(|e| with_pods.contains(e)) else {
                    continue;
                };
                if nearest == "dev" {
                    continue;
                }
                let mut route = template.clone();
                route.name = format!("env-{env}");
                route.matches = vec![HttpMatchRequest {
                    headers: BTreeMap::from([(
                        "x-virtual-env".to_owned(),
                        StringMatch { exact: env.clone() },
                    )]),
                }];
                route.route[0].destination.subset = subset_of(nearest);
                http.push(route);
            }
            http.push(vs.spec.http[vs.spec.http.len() - 1].clone());
            let mut original: VirtualService = vs.clone();
            original.spec.http = http;
            vss.push(original);
        }
        json_len(&vss) + json_len(&plan.destination_rules)
    }

    /// A pod as the API server sends it to a watch: spec with the application and the
    /// sidecar, Istio's annotations, container statuses (about 5 KB of JSON).
    fn full_pod(name: String, service: &str, env: &str) -> Pod {
        let mut pod = pod(name, service, env);
        let value = json!({
            "metadata": {"annotations": {
                "sidecar.istio.io/status": format!("{{\"initContainers\":[\"istio-init\"],\"containers\":[\"istio-proxy\"],\"volumes\":[\"istio-envoy\",\"istio-data\",\"istio-podinfo\",\"istio-token\",\"istiod-ca-cert\"],\"imagePullSecrets\":null,\"revision\":\"default\"}}"),
                "kubectl.kubernetes.io/default-container": service,
                "prometheus.io/path": "/stats/prometheus", "prometheus.io/port": "15020", "prometheus.io/scrape": "true"}},
            "spec": {"containers": [
                {"name": service, "image": format!("registry.example/{service}:1.0.0"),
                 "env": (0..10).map(|i| json!({"name": format!("VAR_{i}"), "value": "x".repeat(40)})).collect::<Vec<_>>(),
                 "ports": [{"containerPort": 8080, "name": "http"}]},
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.30.0",
                 "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local", "--proxyLogLevel=warning"],
                 "env": (0..25).map(|i| json!({"name": format!("ISTIO_META_{i}"), "value": "y".repeat(30)})).collect::<Vec<_>>()}
            ]},
        });
        if let Ok(extra) = serde_json::from_value::<Pod>(value) {
            pod.metadata.annotations = extra.metadata.annotations;
            pod.spec = extra.spec;
        }
        if let Some(status) = pod.status.as_mut() {
            status.container_statuses = Some(
                ["app", "istio-proxy"]
                    .map(|c| ContainerStatus {
                        name: c.into(),
                        image: "registry.example/image:1.0.0".into(),
                        image_id: format!("registry.example/image@sha256:{}", "0".repeat(64)),
                        ready: true,
                        ..ContainerStatus::default()
                    })
                    .to_vec(),
            );
        }
        pod
    }

    /// This process's peak resident set (`VmHWM`).
    pub fn peak_resident_bytes() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
                line.trim_start_matches("VmHWM:")
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// The controller's memory for one namespace of `services` services with
    /// `pods_per_service` ready pods each: the watch caches filled as the reflectors fill
    /// them (full objects in, slimmed objects kept), then one reconcile's snapshot and
    /// plan. Returns (what the caches add to the process's resident memory, which includes
    /// what the allocator keeps of the full objects parsed meanwhile; the heap bytes the
    /// caches hold, by `live_heap`, the process's allocator's count; the peak resident
    /// bytes over the whole process), from `/proc/self` and `live_heap`; run it before
    /// anything else big in the process.
    pub fn controller_memory(
        services: usize,
        pods_per_service: usize,
        live_heap: &dyn Fn() -> u64,
    ) -> (u64, u64, u64) {
        use kube::runtime::watcher::Event;
        use virtual_env_controller::caches::{caches, slim_pod, slim_service};
        use virtual_env_controller::indexed::ApplyEvents;

        let before = super::resident_bytes(std::process::id()).unwrap_or(0);
        let heap_before = live_heap();
        let (caches, mut writers) = caches(
            virtual_env_controller::extension::ExtensionApi::WasmPlugin,
            None,
        );
        writers.pods.apply_watcher_event(&Event::Init);
        writers.services.apply_watcher_event(&Event::Init);
        let envs = ["dev", "dev.p1", "dev.p1.u1"];
        for s in 0..services {
            let name = format!("svc-{s}");
            let mut service = snapshot(1, 0, |_| Vec::new()).services.remove(0);
            service.metadata.name = Some(name.clone());
            if let Some(spec) = service.spec.as_mut() {
                spec.selector = Some(BTreeMap::from([("app".to_owned(), name.clone())]));
            }
            slim_service(&mut service);
            writers
                .services
                .apply_watcher_event(&Event::InitApply(service));
            for p in 0..pods_per_service {
                let mut pod = full_pod(format!("{name}-{p}"), &name, envs[p % envs.len()]);
                slim_pod(&mut pod);
                writers.pods.apply_watcher_event(&Event::InitApply(pod));
            }
        }
        writers.pods.apply_watcher_event(&Event::InitDone);
        writers.services.apply_watcher_event(&Event::InitDone);
        for (_, writer) in &mut writers.istio {
            writer.apply_watcher_event(&Event::Init);
            writer.apply_watcher_event(&Event::InitDone);
        }
        let cached = super::resident_bytes(std::process::id())
            .unwrap_or(0)
            .saturating_sub(before);
        let cached_heap = live_heap().saturating_sub(heap_before);
        let snapshot = caches.snapshot("default");
        let plan = plan_namespace(&virtual_environment(), &snapshot, &settings());
        drop((plan, snapshot));
        (cached, cached_heap, peak_resident_bytes())
    }

    /// The calling side's plugin config of one namespace among `namespaces` alike ones
    /// (each `services` services with the envs `envs_of` gives each, the same env names in
    /// every namespace, as a project spans namespaces), as written: (bytes with its own
    /// table only, bytes with the other namespaces' tables as `peers`), planned as the
    /// controller's reconciles end up (`offline::plan_namespaces`).
    pub fn cross_namespace_bytes(
        namespaces: usize,
        services: usize,
        envs_of: impl Fn(usize) -> Vec<String>,
    ) -> (usize, usize) {
        use virtual_env_controller::offline::plan_namespaces;
        use virtual_env_controller::snapshot::NamespaceSnapshot;
        let snapshot = snapshot(services, 1, envs_of);
        let settings = settings();
        let namespaces: Vec<NamespaceSnapshot> = (0..namespaces)
            .map(|i| {
                let mut ve = virtual_environment();
                ve.metadata.namespace = Some(format!("team-{i:02}"));
                // Each namespace has its own route header, as the random suffix gives it.
                ve.status = Some(virtual_env_controller::crd::VirtualEnvironmentStatus {
                    route_header: Some(format!("x-virtual-env-route-{i:06}")),
                    ..Default::default()
                });
                NamespaceSnapshot {
                    virtual_environment: ve,
                    snapshot: snapshot.clone(),
                }
            })
            .collect();
        // The first namespace's calling-side config as written, alone and among the others.
        let first_config_bytes = |namespaces: &[NamespaceSnapshot]| {
            plan_namespaces(namespaces, &settings).map_or(0, |plans| {
                plans[0].wasm_plugin.spec.plugin_config.to_string().len()
            })
        };
        let own = first_config_bytes(&namespaces[..1]);
        let all = first_config_bytes(&namespaces);
        (own, all)
    }

    #[derive(Debug, Clone, Serialize)]
    pub struct PlanningResult {
        pub case: String,
        pub services: usize,
        pub pods: usize,
        pub envs: usize,
        pub plan_ms_median: f64,
        pub virtual_env_bytes: usize,
        pub original_bytes: usize,
        /// The calling side's plugin config as written (compact when large), and in plain
        /// form.
        pub plugin_config_bytes: usize,
        pub plugin_config_plain_bytes: usize,
    }

    /// Plans `snapshot` `runs` times; `envs` are the namespace's env names (for the
    /// original design's routes).
    pub fn measure(
        case: &str,
        snapshot: &Snapshot,
        envs: &[String],
        runs: usize,
    ) -> PlanningResult {
        let ve = virtual_environment();
        let settings = settings();
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..runs {
            let started = Instant::now();
            let plan = plan_namespace(&ve, snapshot, &settings);
            times.push(started.elapsed().as_secs_f64() * 1e3);
            last = plan.ok();
        }
        let plan = last.unwrap_or_else(|| panic!("planning failed"));
        PlanningResult {
            case: case.to_owned(),
            services: snapshot.services.len(),
            pods: snapshot.pods.len(),
            envs: plan.envs.len(),
            plan_ms_median: super::median(times),
            virtual_env_bytes: plan_bytes(&plan),
            original_bytes: original_bytes(&plan, envs),
            plugin_config_bytes: plan.wasm_plugin.spec.plugin_config.to_string().len(),
            plugin_config_plain_bytes: plan.plugin_config.to_json().len(),
        }
    }
}
