//! `virtual-env-mesh`: the local mesh of real Envoy sidecars.
//!
//! - `virtual-env-mesh demo [--topology FILE] [--keep]`: start the mesh, send a request from
//!   every env, print the call chains, stop (or, with `--keep`, wait for Ctrl-C).
//! - `virtual-env-mesh app CONFIG_JSON`: the test application of one pod (the mesh starts it).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use virtual_env_e2e::app::{self, AppConfig};
use virtual_env_e2e::envoy::{envoy_binary, envoy_version, repo_root};
use virtual_env_e2e::manifests;
use virtual_env_e2e::mesh::{Mesh, MeshOptions};
use virtual_env_e2e::topology::Topology;

const USAGE: &str = "usage: virtual-env-mesh demo [--topology FILE] [--keep]
       virtual-env-mesh manifests [--topology FILE]   (the demo for a real cluster)
       virtual-env-mesh app CONFIG_JSON";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("virtual-env-mesh: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.first().map(String::as_str) {
            Some("app") => {
                let config: AppConfig = serde_json::from_str(args.get(1).context(USAGE)?)?;
                app::serve(config).await
            }
            Some("demo") => demo(&args[1..]).await,
            Some("manifests") => {
                let topology = match args.get(1).map(String::as_str) {
                    Some("--topology") => PathBuf::from(args.get(2).context(USAGE)?),
                    Some(other) => bail!("unknown argument {other}\n{USAGE}"),
                    None => repo_root().join("tests/topologies/seed.yaml"),
                };
                let topology = Topology::load(&topology)?;
                print!(
                    "{}",
                    manifests::demo_manifests(
                        &topology,
                        manifests::DEMO_NAMESPACE,
                        manifests::DEMO_IMAGE
                    )
                );
                Ok(())
            }
            _ => bail!(USAGE),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtual-env-mesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: &[String]) -> Result<()> {
    let mut topology_path = repo_root().join("tests/topologies/demo.yaml");
    let mut keep = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--topology" => topology_path = PathBuf::from(args.next().context(USAGE)?),
            "--keep" => keep = true,
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let topology = Topology::load(&topology_path)?;
    let envoy = envoy_binary()?;
    println!(
        "Starting {} pods (application + Envoy {} sidecar each) and a gateway on loopback, topology {}",
        topology.all_pods().count(),
        envoy_version(&envoy)?,
        topology_path.display()
    );
    let options = MeshOptions::new(std::env::current_exe()?);
    let mesh = Mesh::start(topology, options).await?;
    let entry = virtual_env_e2e::demo::Entry::of(&mesh);
    match &entry {
        virtual_env_e2e::demo::Entry::GatewayHost(host) => println!(
            "Requests through the ingress gateway to {host} ({}):\n",
            mesh.topology.services[0].name
        ),
        virtual_env_e2e::demo::Entry::Service(service) => {
            println!("Requests through the gateway to {service}:\n")
        }
    }
    print!("{}", virtual_env_e2e::demo::run(&mesh).await?);
    if keep {
        let gw = mesh.gateway();
        let first = &mesh.topology.services[0];
        let host = match &entry {
            virtual_env_e2e::demo::Entry::GatewayHost(host) => host.clone(),
            virtual_env_e2e::demo::Entry::Service(_) => format!("{}:{}", first.name, first.port),
        };
        println!(
            "\nThe mesh keeps running (files and logs in {}). Try:",
            mesh.root().display()
        );
        println!("  curl -s -H 'host: {host}' -H 'x-virtual-env: dev.proj1' http://{gw}/ | python3 -m json.tool");
        println!("  curl -s -H 'host: {host}' -H 'baggage: virtual-env=dev.proj1' http://{gw}/ | python3 -m json.tool");
        if let Some(envoy) = mesh.envoy("gateway") {
            println!(
                "  curl -s http://{}/stats | grep virtual_env",
                envoy.admin()
            );
        }
        println!("Ctrl-C stops it.");
        tokio::signal::ctrl_c().await?;
    }
    println!("\nStopping the mesh.");
    Ok(())
}
