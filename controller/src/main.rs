//! `virtual-env`: the controller and its offline tools.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tracing::{error, info, warn};
use virtual_env_controller::crd::{VirtualEnvironment, ROUTE_HEADER_SUFFIX_LEN};
use virtual_env_controller::extension::{served_or_retry, ExtensionApi};
use virtual_env_controller::gamma::GatewayApi;
use virtual_env_controller::gateway_admission::GatewayAdmission;
use virtual_env_controller::leader::{Elector, Timing};
use virtual_env_controller::metrics::Metrics;
use virtual_env_controller::module::FilterModule;
use virtual_env_controller::offline;
use virtual_env_controller::peers::Peers;
use virtual_env_controller::plan::{Settings, WasmSource, MAX_PLUGIN_CONFIG_BYTES};
use virtual_env_controller::runtime;
use virtual_env_controller::server::{self, State};
use virtual_env_controller::snapshot::Reader;

/// Where the CRD lives in this repository; the hint a missing CRD prints.
const CRD_INSTALL: &str =
    "kubectl apply -f deploy/crds/env.alibaba.com_virtualenvironments_crd.yaml";

/// Isolate pod communication into virtual environments by a pod label, with route
/// fallback, on Istio.
///
/// Pods labelled `virtual-env: dev.proj1` form env `dev.proj1`, a child of `dev`. A request
/// carrying `x-virtual-env: dev.proj1` reaches `dev.proj1` pods where a service has them and
/// falls back to `dev` pods where it has not.
#[derive(Parser)]
#[command(name = "virtual-env", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller in a cluster (or against the current kubeconfig context).
    Run(RunArgs),
    /// Show, from the cluster (read only, the current kubeconfig context), each namespace's
    /// env tree and ready pods, where every routed service falls back for each env, what is
    /// left alone and why, and the plugin objects in force.
    ///
    /// As a kubectl plugin (`kubectl virtual-env status`): install this binary as
    /// `kubectl-virtual_env` on the PATH (`make kubectl-plugin`).
    Status {
        /// The namespace to show; every namespace with a VirtualEnvironment when omitted.
        #[arg(short, long)]
        namespace: Option<String>,
        /// table, json, yaml, or the env trees as a mermaid or dot graph.
        #[arg(short, long, value_enum, default_value = "table")]
        output: StatusFormat,
    },
    /// Print a CustomResourceDefinition as YAML: VirtualEnvironment (the default), or
    /// GatewayPolicy.
    Crd {
        #[arg(value_enum, default_value = "virtual-environment")]
        kind: CrdKind,
    },
    /// Print the Istio objects the controller would apply for a namespace snapshot.
    ///
    /// Reads the VirtualEnvironment, services and pods from YAML files or stdin, e.g.
    /// `kubectl get virtualenvironments,services,pods -n team -o yaml | virtual-env render`.
    /// With several namespaces (`-A`), each with its VirtualEnvironment, each namespace's
    /// plugin config also carries the others' tables (`peers`), as the controller writes it.
    Render(OfflineArgs),
    /// Show how a request with an env is routed to a service in a namespace snapshot.
    ///
    /// Runs the filter's own request flow on the plugin config the controller would write:
    /// the env it takes (an invalid one is ignored, as the filter does, and the pod's own env
    /// or the default subset applies instead), the fallback walk up the env's hierarchy and
    /// the subset the sidecar chooses.
    // What explain prints does not depend on where the module is fetched from, nor on the
    // plugin objects' API: those flags are not offered (still accepted, for scripts that
    // pass the same flags to render and explain).
    #[command(
        mut_arg("wasm_url", |a| a.hide(true)),
        mut_arg("wasm_sha256", |a| a.hide(true)),
        mut_arg("public_url", |a| a.hide(true)),
        mut_arg("extension_api", |a| a.hide(true))
    )]
    Explain {
        #[command(flatten)]
        input: OfflineArgs,
        /// The request's env header (omit for a request without env).
        #[arg(long)]
        env: Option<String>,
        /// The target service: `name`, `name.namespace` or its FQDN, as the caller spells it.
        #[arg(long)]
        service: String,
        /// The pod that sends the request: its own env applies under autoInject, and short
        /// names are in its namespace.
        #[arg(long)]
        from: Option<String>,
        /// Also print the decision as the live routing trace says it
        /// (`x-virtual-env-trace`), to compare with one a request got.
        #[arg(long)]
        trace: bool,
    },
}

#[derive(Args)]
struct ModuleArgs {
    /// Where sidecars fetch the filter (http(s)://, oci://, file://). Default: this
    /// controller serves the module it was built with, under --public-url.
    #[arg(long, env = "VIRTUAL_ENV_WASM_URL")]
    wasm_url: Option<String>,
    /// SHA-256 of the module at --wasm-url (hex); checked by the sidecars when given.
    #[arg(long, env = "VIRTUAL_ENV_WASM_SHA256")]
    wasm_sha256: Option<String>,
    /// The URL at which sidecars reach this controller's Service.
    #[arg(
        long,
        env = "VIRTUAL_ENV_PUBLIC_URL",
        default_value = "http://virtual-env.virtual-env-system.svc.cluster.local:8080"
    )]
    public_url: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The API of the plugin objects: `auto` (TrafficExtension where the cluster serves
    /// it, Istio 1.30+; else WasmPlugin; offline: WasmPlugin), or one of the two.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "VIRTUAL_ENV_EXTENSION_API"
    )]
    extension_api: ExtensionApiArg,
    /// Whether a gateway whose pods serve other namespaces (Istio's ingress gateway in
    /// istio-system) needs a GatewayPolicy that admits a namespace before that namespace's
    /// services are bound to it and routed by env there (`policy`), or admits any
    /// namespace without one, each with its own edge trust (`open`: the original
    /// project's behaviour, for a cluster of one team).
    #[arg(
        long,
        value_enum,
        default_value = "policy",
        env = "VIRTUAL_ENV_GATEWAY_ADMISSION"
    )]
    gateway_admission: GatewayAdmissionArg,
    /// Set as istiod's PILOT_SCOPE_GATEWAY_TO_NAMESPACE is: a Gateway then selects pods of
    /// its own namespace only.
    #[arg(long, env = "VIRTUAL_ENV_SCOPE_GATEWAY_TO_NAMESPACE")]
    scope_gateway_to_namespace: bool,
    /// Whether routes may be written as Gateway API (HTTPRoute, GRPCRoute): `auto` (where
    /// the cluster serves HTTPRoute v1; offline: yes), `on` or `off`.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "VIRTUAL_ENV_GATEWAY_API"
    )]
    gateway_api: GatewayApiArg,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GatewayApiArg {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CrdKind {
    VirtualEnvironment,
    GatewayPolicy,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
    Yaml,
    Mermaid,
    Dot,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GatewayAdmissionArg {
    Policy,
    Open,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExtensionApiArg {
    Auto,
    WasmPlugin,
    TrafficExtension,
}

impl ModuleArgs {
    fn settings(&self, module: Option<&FilterModule>) -> Result<Settings> {
        let wasm = match (&self.wasm_url, module) {
            (Some(url), _) => WasmSource {
                url: url.clone(),
                sha256: self.wasm_sha256.clone(),
            },
            (None, Some(module)) => WasmSource {
                url: format!("{}{}", self.public_url.trim_end_matches('/'), module.path()),
                sha256: Some(module.sha256.clone()),
            },
            (None, None) => bail!(
                "this binary was built without the filter module (run `make build` before building it), so pass --wasm-url"
            ),
        };
        Ok(Settings {
            cluster_domain: self.cluster_domain.clone(),
            wasm,
            max_plugin_config_bytes: MAX_PLUGIN_CONFIG_BYTES,
            extension_api: match self.extension_api {
                ExtensionApiArg::TrafficExtension => ExtensionApi::TrafficExtension,
                ExtensionApiArg::Auto | ExtensionApiArg::WasmPlugin => ExtensionApi::WasmPlugin,
            },
            gateway_admission: match self.gateway_admission {
                GatewayAdmissionArg::Policy => GatewayAdmission::Policy,
                GatewayAdmissionArg::Open => GatewayAdmission::Open,
            },
            scope_gateway_to_namespace: self.scope_gateway_to_namespace,
            // Offline (render, explain): what the spec asks is rendered.
            gateway_api: match self.gateway_api {
                GatewayApiArg::Auto | GatewayApiArg::On => Some(GatewayApi::ALL),
                GatewayApiArg::Off => None,
            },
        })
    }
}

#[derive(Args)]
struct OfflineArgs {
    /// YAML files to read (`-` for stdin); stdin when none is given.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Namespace of objects that have none.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// For tests and diffs only: a VirtualEnvironment without a recorded
    /// `status.routeHeader` gets a suffix derived from its name instead of a random one.
    /// Anyone can compute it, so never apply such output: a client that knows the route
    /// header chooses routes wherever the filter is not running.
    #[arg(long)]
    predictable_suffix: bool,
    #[command(flatten)]
    module: ModuleArgs,
}

impl OfflineArgs {
    /// One snapshot per namespace with a VirtualEnvironment in the input.
    fn read(&self) -> Result<Vec<virtual_env_controller::snapshot::NamespaceSnapshot>> {
        let mut reader = Reader::default();
        let stdin = [PathBuf::from("-")];
        let files = if self.files.is_empty() {
            &stdin[..]
        } else {
            &self.files[..]
        };
        for file in files {
            let (name, text) = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                ("stdin".to_owned(), text)
            } else {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                (file.display().to_string(), text)
            };
            reader.read(&name, &text)?;
        }
        for warning in &reader.warnings {
            eprintln!("virtual-env: warning: {warning}");
        }
        let mut namespaces = reader.finish(&self.namespace)?;
        if !self.predictable_suffix {
            for ns in &mut namespaces {
                let ve = &mut ns.virtual_environment;
                if ve.route_header_in_force().is_some() {
                    continue;
                }
                let mut entropy = [0; ROUTE_HEADER_SUFFIX_LEN];
                getrandom::fill(&mut entropy)
                    .map_err(|e| anyhow::anyhow!("no randomness for the route header: {e}"))?;
                *ve = ve.clone().with_route_header(entropy);
                eprintln!(
                    "virtual-env: VirtualEnvironment {}/{} has no status.routeHeader: chose {} at random for this output (give the object with its status, as `kubectl get -o yaml` prints it, to see the one in force)",
                    ve.namespace().unwrap_or_default(),
                    ve.name_any(),
                    ve.route_header_in_force().unwrap_or_default()
                );
            }
        }
        Ok(namespaces)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct RunArgs {
    /// Address of the module server (the filter module for sidecars and peer replicas;
    /// also /healthz, /readyz and /metrics, for manifests of earlier releases).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics alone, with capacity of their own: no
    /// load on the module server can fail the probes.
    #[arg(long, default_value = "0.0.0.0:8081")]
    probe_listen: SocketAddr,
    #[command(flatten)]
    module: ModuleArgs,
    /// Namespace of the leader election Lease (the controller's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "virtual-env-system")]
    lease_namespace: String,
    /// This replica's name in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The other replicas, asked for a filter module this one does not hold (during a
    /// rolling upgrade): comma-separated `host:port`s, typically a headless Service's name.
    #[arg(long, env = "VIRTUAL_ENV_MODULE_PEERS")]
    module_peers: Option<String>,
    /// Run without leader election (a single replica only).
    #[arg(long)]
    no_leader_election: bool,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Status { namespace, output } => status(namespace.as_deref(), output),
        Command::Crd { kind } => {
            let crd = match kind {
                CrdKind::VirtualEnvironment => {
                    virtual_env_controller::crd::custom_resource_definition()
                }
                CrdKind::GatewayPolicy => {
                    <virtual_env_controller::gateway_policy::GatewayPolicy as kube::CustomResourceExt>::crd()
                }
            };
            serde_yaml::to_string(&crd)
                .map(|yaml| print!("{yaml}"))
                .map_err(Into::into)
        }
        Command::Render(input) => render(&input),
        Command::Explain {
            input,
            env,
            service,
            from,
            trace,
        } => explain(
            &input,
            &offline::Question {
                env: env.as_deref(),
                service: &service,
                from: from.as_deref(),
                trace,
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtual-env: {}", said_once(&e));
            ExitCode::FAILURE
        }
    }
}

fn render(input: &OfflineArgs) -> Result<()> {
    let ns = input.read()?;
    let settings = input.module.settings(FilterModule::embedded().as_ref())?;
    print!("{}", offline::render(&ns, &settings)?);
    Ok(())
}

fn explain(input: &OfflineArgs, question: &offline::Question<'_>) -> Result<()> {
    let ns = input.read()?;
    let settings = input.module.settings(FilterModule::embedded().as_ref())?;
    print!("{}", offline::explain(&ns, &settings, question)?);
    Ok(())
}

/// `virtual-env status`: reads the cluster, prints the view.
fn status(namespace: Option<&str>, format: StatusFormat) -> Result<()> {
    use virtual_env_controller::status_view;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let view = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        status_view::read(client, namespace)
            .await
            .context("reading VirtualEnvironments, pods and plugin objects")
    })?;
    if view.is_empty() {
        bail!(
            "no VirtualEnvironment {}",
            namespace.map_or_else(
                || "in any namespace".to_owned(),
                |ns| format!("in namespace {ns}")
            )
        );
    }
    let text = match format {
        StatusFormat::Table => status_view::table(&view),
        StatusFormat::Json => serde_json::to_string_pretty(&view)? + "\n",
        StatusFormat::Yaml => serde_yaml::to_string(&view)?,
        StatusFormat::Mermaid => status_view::mermaid(&view),
        StatusFormat::Dot => status_view::dot(&view),
    };
    print!("{text}");
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    let subscriber = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,kube=warn".into()),
    );
    match args.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> Result<()> {
    let module = FilterModule::embedded();
    let mut settings = args.module.settings(module.as_ref())?;
    info!(url = settings.wasm.url, "filter module");
    let metrics = Arc::new(Metrics::default());
    let peers = args.module_peers.as_deref().map(Peers::new);
    let own_digest = module.as_ref().map(|m| m.sha256.clone());
    let state = Arc::new(State::new(Arc::clone(&metrics), module, peers.clone()));
    let server = tokio::spawn(server::serve(args.listen, Arc::clone(&state)));
    let probes = tokio::spawn(server::serve_probes(args.probe_listen, Arc::clone(&state)));
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;

    wait_for_crd(&client).await;
    if args.module.extension_api == ExtensionApiArg::Auto {
        settings.extension_api = detect_extension_api(&client).await?;
    }
    info!(api = ?settings.extension_api, "plugin objects");
    if args.module.gateway_api != GatewayApiArg::Off {
        let served = served_in(&client, "gateway.networking.k8s.io").await?;
        let served = served.iter().map(|(r, v)| (r.as_str(), v.as_str()));
        settings.gateway_api = match args.module.gateway_api {
            GatewayApiArg::On => Some(GatewayApi::forced(served)),
            _ => GatewayApi::detect(served),
        };
    }
    info!(gateway_api = ?settings.gateway_api, "Gateway API routes");
    state.ready.store(true, Ordering::Relaxed);

    let mut elector = become_leader(&args, &client, peers.as_ref(), own_digest.as_deref()).await;
    metrics.set_leader(true);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut controller = tokio::spawn(runtime::run(client, settings, metrics, async move {
        let _ = stopped.await;
    }));
    let leading = !args.no_leader_election;
    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            info!("shutting down");
            let _ = stop.send(());
            // Drain up to 10 s while still leading; stop the controller before the lease
            // goes, so that nothing of this replica writes once another may lead.
            if leading {
                elector.step_down(&mut controller, Duration::from_secs(10)).await;
            } else if tokio::time::timeout(Duration::from_secs(10), &mut controller).await.is_err() {
                controller.abort();
            }
            Ok(())
        }
        // Past the renew deadline another replica may soon lead: stop writing now, no
        // grace period, and exit so that a restart starts clean.
        _ = async { if leading { elector.keep().await } else { std::future::pending().await } } => {
            controller.abort();
            Err(anyhow::anyhow!("lost the leader lease; stopped writing and exiting"))
        }
        // The controller is supervised: if it ends, so does the process.
        result = &mut controller => Err(anyhow::anyhow!("the controller stopped: {result:?}")),
        result = server => Err(anyhow::anyhow!("http server stopped: {result:?}")),
        result = probes => Err(anyhow::anyhow!("probe server stopped: {result:?}")),
    };
    if outcome.is_err() {
        state.alive.store(false, Ordering::Relaxed);
    }
    outcome
}

/// This replica's elector, holding the lease once this returns (unless leader election
/// is off).
async fn become_leader(
    args: &RunArgs,
    client: &Client,
    peers: Option<&Peers>,
    own_digest: Option<&str>,
) -> Elector {
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "virtual-env".into());
    let mut elector = Elector::new(
        Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        virtual_env_controller::rbac::LEASE_NAME,
        &identity,
        Timing::default(),
    );
    // Lead (and so pin this build's module in the WasmPlugins) only once the Service hands
    // the module out: this replica must first pass its readiness probe. Waiting here, before
    // the lease, leaves the current leader undisturbed meanwhile.
    if let (Some(peers), Some(digest), None) = (peers, own_digest, &args.module.wasm_url) {
        if !peers
            .wait_until_served(digest, Duration::from_secs(60))
            .await
        {
            warn!("no ready replica serves this build's module after 60 s; going on");
        }
    }
    if !args.no_leader_election {
        info!(identity, "waiting for the leader lease");
        elector.acquire().await;
    }
    elector
}

/// TrafficExtension where the cluster serves it; WasmPlugin where it does not.
async fn detect_extension_api(client: &Client) -> Result<ExtensionApi> {
    let served = served_in(client, "extensions.istio.io").await?;
    Ok(ExtensionApi::detect(served.iter().map(|(r, _)| r.as_str())))
}

/// The resources (plural, version) `group` serves in its preferred version; none where
/// the group is not served. A failed discovery is retried (1 s doubling to 30 s): a
/// transient error must not switch an API (see `served_or_retry`); after 5 minutes the
/// process exits and is restarted.
async fn served_in(client: &Client, group: &str) -> Result<Vec<(String, String)>> {
    let mut delay = Duration::from_secs(1);
    let started = std::time::Instant::now();
    loop {
        let result = kube::discovery::group(client, group).await.map(|g| {
            g.recommended_resources()
                .into_iter()
                .map(|(r, _)| (r.plural, r.version))
                .collect::<Vec<_>>()
        });
        match served_or_retry(result.as_ref().map(Clone::clone)) {
            Some(served) => return Ok(served),
            None => {
                if let Err(e) = result {
                    if started.elapsed() > Duration::from_secs(300) {
                        bail!("discovering {group} failed for 5 minutes: {e}");
                    }
                    warn!("discovering {group}: {e}; retrying in {delay:?}");
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Retries until the VirtualEnvironment CRD is served, saying how to install it.
async fn wait_for_crd(client: &Client) {
    let api = Api::<VirtualEnvironment>::all(client.clone());
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                error!(
                    "the VirtualEnvironment CRD is not installed; install it with: {CRD_INSTALL}"
                )
            }
            Err(e) => error!("cannot list VirtualEnvironments: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// An error and its causes, each said once: many errors (kube's, thiserror's with
/// `{0}` in their message) already say their cause, which the chain then gives again.
fn said_once(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        // Said already: the message so far ends with it (a `: {source}` message), or
        // holds it whole (kube's `(…)`), unless it is too short to be sure.
        let text_said = text.trim();
        if out.ends_with(text_said) || (text_said.len() >= 16 && out.contains(text_said)) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod said_once_tests {
    use super::said_once;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn a_cause_the_message_already_says_is_not_said_again() {
        let e = anyhow::Error::new(Outer(Inner)).context("connecting");
        assert_eq!(said_once(&e), "connecting: outer: inner");
        let plain = anyhow::anyhow!("alone");
        assert_eq!(said_once(&plain), "alone");
    }
}
