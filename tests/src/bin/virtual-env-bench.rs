//! `virtual-env-bench [--rounds N] [--seconds S] [--connections C] [--out DIR] [--only A,B]`: the
//! benchmark `make bench` runs. Writes `results.md` and `results.json` to DIR
//! (default `bench/results`). See `virtual_env_e2e::bench` for what is measured.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;
use virtual_env_e2e::bench::{self, planning, Kind, Modules, Sample};
use virtual_env_e2e::envoy::{envoy_binary, envoy_version, filter_wasm, repo_root};

const ENV_COUNTS: [usize; 3] = [10, 100, 1000];

struct Options {
    rounds: usize,
    seconds: u64,
    connections: usize,
    out: PathBuf,
    /// Run only these scenarios (comma-separated names), e.g. when profiling.
    only: Option<Vec<String>>,
}

fn options() -> Result<Options> {
    let mut o = Options {
        rounds: 5,
        seconds: 5,
        connections: 32,
        out: repo_root().join("bench/results"),
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("missing value");
        match arg.as_str() {
            "--rounds" => o.rounds = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--connections" => o.connections = value()?.parse()?,
            "--out" => o.out = PathBuf::from(value()?),
            "--only" => o.only = Some(value()?.split(',').map(String::from).collect()),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run()))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtual-env-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

async fn run() -> Result<()> {
    let o = options()?;
    let filter = filter_wasm()?;
    let empty = repo_root().join("target/wasm32-wasip1/release/virtual_env_empty_filter.wasm");
    if !empty.is_file() {
        bail!("{} is missing: `make bench` builds it", empty.display());
    }
    let modules = Modules {
        filter: &filter,
        empty: &empty,
    };
    let version = envoy_version(&envoy_binary()?)?;
    let dir = tempfile::tempdir()?;
    let config = bench::plugin_config(1000).to_json();
    let mut scenarios = bench::scenarios(&ENV_COUNTS);
    if let Some(only) = &o.only {
        scenarios.retain(|s| only.contains(&s.name));
    }

    eprintln!(
        "starting {} Envoys {version} (pinned to CPU 0), wrk on CPU 1",
        scenarios.len()
    );
    let mut running = Vec::new();
    for s in &scenarios {
        running.push(bench::start(s, &modules, &config, dir.path()).await?);
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); scenarios.len()];
    for round in 0..o.rounds {
        // Alternate the order round by round, so drift on a shared machine hits all alike.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..scenarios.len()).collect()
        } else {
            (0..scenarios.len()).rev().collect()
        };
        for i in order {
            let pid = running[i].envoy.pid();
            bench::wrk(running[i].listener, pid, o.connections, 1)?; // warm-up
            let sample = bench::wrk(running[i].listener, pid, o.connections, o.seconds)?;
            eprintln!(
                "round {} {:<18} {:>7.0} req/s  p50 {:>5.0} us  p99 {:>5.0} us  {:>5.1} CPU us/req",
                round + 1,
                scenarios[i].name,
                sample.rps,
                sample.p50_us,
                sample.p99_us,
                sample.cpu_us_per_request
            );
            samples[i].push(sample);
        }
    }
    let summaries: Vec<_> = scenarios
        .iter()
        .zip(&samples)
        .map(|(s, r)| bench::summarize(s, r))
        .collect();
    let ratios = bench::ratios(&summaries, &ENV_COUNTS);

    let memory_of = |kind: Kind, envs: usize| {
        scenarios
            .iter()
            .position(|s| s.kind == kind && s.envs == envs)
    };
    let mut memory = Vec::new();
    for (label, index) in [
        ("bare", memory_of(Kind::Bare, 0)),
        ("empty-filter", memory_of(Kind::EmptyFilter, 0)),
        (
            "virtual-env (1,000 services)",
            memory_of(Kind::VirtualEnv, 1000),
        ),
    ] {
        if let Some(i) = index {
            memory.push((label, bench::allocated_bytes(&running[i].envoy).await?));
        }
    }
    drop(running);

    if o.only.is_some() {
        // A partial run (profiling): the throughput table only.
        print!(
            "{}",
            report(&o, &version, &summaries, &ratios, &[], &[], &[])
        );
        return Ok(());
    }
    eprintln!("measuring config change latency");
    let change_ms = bench::config_change_ms(&modules, dir.path(), 5).await?;

    eprintln!("measuring planning");
    let literal = planning::snapshot(1000, 3, |_| planning::namespace_envs());
    let sparse = planning::snapshot(1000, 3, |s| {
        let p = s % 9 + 1;
        vec![
            "dev".into(),
            format!("dev.p{p}"),
            format!("dev.p{p}.u{}", s % 10 + 1),
        ]
    });
    let plans = [
        planning::measure("every service in every env", &literal, 3),
        planning::measure(
            "every service in dev, one project, one user env",
            &sparse,
            3,
        ),
    ];

    let md = report(
        &o, &version, &summaries, &ratios, &memory, &change_ms, &plans,
    );
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(o.out.join("results.md"), &md)?;
    let json = json!({
        "machine": machine(),
        "envoy": version,
        "rounds": o.rounds, "seconds": o.seconds, "connections": o.connections,
        "scenarios": summaries,
        "ratios": ratios.iter().map(|(k, (rps, cpu))| (k.clone(), json!({"rps": rps, "cpu": cpu}))).collect::<serde_json::Map<_, _>>(),
        "memory_allocated_bytes": memory.iter().map(|(l, b)| json!({"envoy": l, "bytes": b})).collect::<Vec<_>>(),
        "config_change_ms": change_ms,
        "planning": plans,
    });
    std::fs::write(
        o.out.join("results.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    print!("{md}");
    Ok(())
}

fn report(
    o: &Options,
    version: &str,
    summaries: &[bench::Summary],
    ratios: &std::collections::BTreeMap<String, (f64, f64)>,
    memory: &[(&str, u64)],
    change_ms: &[f64],
    plans: &[planning::PlanningResult],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Envoy {version}, `--concurrency 1` pinned to CPU 0; wrk (1 thread, {} connections, HTTP/1.1) on CPU 1; {} alternating rounds of {} s, medians. Machine: {}.\n", o.connections, o.rounds, o.seconds, machine());
    let _ = writeln!(md, "| scenario | env names | req/s | p50 (µs) | p99 (µs) | Envoy CPU µs / request |\n| :-- | --: | --: | --: | --: | --: |");
    for s in summaries {
        let envs = if s.scenario.envs == 0 {
            "-".into()
        } else {
            s.scenario.envs.to_string()
        };
        let _ = writeln!(
            md,
            "| {} | {envs} | {:.0} | {:.0} | {:.0} | {:.1} |",
            s.scenario.name, s.rps, s.p50_us, s.p99_us, s.cpu_us_per_request
        );
    }
    let _ = writeln!(
        md,
        "\n| ratio (median of per-round ratios) | req/s | by CPU per request |\n| :-- | --: | --: |"
    );
    for (name, (rps, cpu)) in ratios {
        let _ = writeln!(md, "| {name} | {rps:.2} | {cpu:.2} |");
    }
    if !memory.is_empty() {
        let _ = writeln!(
            md,
            "\n| Envoy memory (admin `/memory`, allocated) | bytes |\n| :-- | --: |"
        );
        for (label, bytes) in memory {
            let _ = writeln!(md, "| {label} | {bytes} |");
        }
    }
    if !change_ms.is_empty() {
        let _ = writeln!(
            md,
            "\nConfig file change to new routing in force (local ECDS path, 1,000-service config): median {:.0} ms over {} changes.",
            bench::median(change_ms.to_vec()),
            change_ms.len()
        );
    }
    if !plans.is_empty() {
        let _ = writeln!(md, "\n| planning case | services | pods | envs | plan time (ms) | virtual-env writes (bytes) | original design (bytes) |\n| :-- | --: | --: | --: | --: | --: | --: |");
        for p in plans {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {} | {} |",
                p.case,
                p.services,
                p.pods,
                p.envs,
                p.plan_ms_median,
                p.virtual_env_bytes,
                p.original_bytes
            );
        }
    }
    md
}
