//! The thin layer between Envoy and the filter's logic. Only Wasm builds compile it.
//!
//! # What may panic, and why it does not
//!
//! A panic traps the worker's VM for good (with Istio's `FAIL_OPEN` the filter is then
//! silently skipped until the pod restarts), so every call into and out of the host was
//! audited (proxy-wasm 0.2.5):
//!
//! - **Host calls: our own** (`abi.rs`). Every `proxy_wasm::hostcalls` function panics on
//!   a status it does not expect, and `get_map_value`/`get_map` also unwrap UTF-8 on
//!   header values; none of them is called (clippy's `disallowed-methods` in `clippy.toml`
//!   and `tests/no_sdk_hostcalls.rs` keep it so). `abi.rs` returns every status as a
//!   `Result` and every value as bytes; the logic validates them.
//! - **Logging: our own** [`Logger`] and panic hook. The SDK's `set_log_level` installs a
//!   logger and a panic hook that both unwrap `hostcalls::log`, so it is not called.
//! - **The SDK's dispatcher** (the exported `proxy_on_*` callbacks, via `proxy_wasm::main!`
//!   and `set_root_context`) is used. Its panics are on ABI violations by the host only:
//!   a duplicate or unknown context id, or a root context without a type (ours has one);
//!   `create_http_context` returning `None` (ours always returns `Some`). The `expect` and
//!   `set_effective_context(..).unwrap()` it has are in the HTTP/gRPC callout and queue
//!   callbacks, which this filter never triggers (it makes no callouts, has no queues).
//! - **The SDK's allocator** (`proxy_on_memory_allocate`, through which the host returns
//!   header values) allocates exactly what the host asks; Envoy bounds header sizes
//!   (`max_request_headers_kb`), and only an out-of-memory can abort it, as any allocation.
//! - **Our code** denies `unwrap`, `expect` and `panic` by lint; slicing of untrusted
//!   text is done on checked ASCII only, and the parsers of untrusted bytes are
//!   property-tested with arbitrary input (`make fuzz` runs them longer).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::abi::{self, Level};
use crate::correlation::correlation_key;
use crate::decision::Tracing;
use crate::flow::{direction_of_listener, FilterConfig, Node};
use crate::header_pairs::HeaderPairs;
use crate::host::{Host, Peer};
use crate::metrics::Metric;
use crate::reload::reload;

proxy_wasm::main! {{
    // Ours, not the SDK's: the SDK's logger and panic hook unwrap the log call.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = abi::log(Level::Critical, &format!("virtual-env: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Logs through `proxy_log`; a failed log call is dropped, never a panic.
struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => Level::Trace,
            log::Level::Debug => Level::Debug,
            log::Level::Info => Level::Info,
            log::Level::Warn => Level::Warn,
            log::Level::Error => Level::Error,
        };
        let _ = abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// How often counts reach Envoy's stats.
const METRICS_FLUSH: Duration = Duration::from_secs(1);

/// This VM's counters. Requests count in VM memory and the root context flushes the
/// counts to Envoy every [`METRICS_FLUSH`]: two host calls per request less, which the
/// benchmark measured at a third of the filter's cost over an empty filter.
#[derive(Default)]
struct Metrics {
    ids: [Option<u32>; Metric::ALL.len()],
    pending: [Cell<u64>; Metric::ALL.len()],
}

impl Metrics {
    fn define() -> Self {
        let mut metrics = Self::default();
        for metric in Metric::ALL {
            match abi::define_counter(metric.name()) {
                Ok(id) => metrics.ids[metric.index()] = Some(id),
                Err(status) => {
                    log::warn!("virtual-env: cannot define {}: {status:?}", metric.name())
                }
            }
        }
        metrics
    }

    fn count(&self, metric: Metric) {
        let pending = &self.pending[metric.index()];
        pending.set(pending.get().saturating_add(1));
    }

    fn flush(&self) {
        for (id, pending) in self.ids.iter().zip(&self.pending) {
            let delta = pending.replace(0);
            if let (Some(id), true) = (id, delta > 0) {
                let delta = i64::try_from(delta).unwrap_or(i64::MAX);
                let _ = abi::increment_metric(*id, delta);
            }
        }
    }
}

/// [`Host`] over the filter's host calls, for the request in flight (or the root context).
struct ProxyHost<'a> {
    metrics: &'a Metrics,
}

impl Host for ProxyHost<'_> {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        abi::request_header(name).ok().flatten()
    }

    fn request_headers(&self) -> Option<Vec<(String, Vec<u8>)>> {
        let bytes = abi::request_header_pairs().ok()??;
        Some(HeaderPairs::try_parse(bytes)?.lines())
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        if let Err(status) = abi::replace_request_header(name, value) {
            log::warn!("virtual-env: cannot set header {name}: {status:?}");
        }
    }

    fn remove_request_header(&mut self, name: &str) {
        if let Err(status) = abi::remove_request_header(name) {
            log::warn!("virtual-env: cannot remove header {name}: {status:?}");
        }
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        abi::header(abi::HTTP_RESPONSE_HEADERS, name).ok().flatten()
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        if let Err(status) = abi::replace_header(abi::HTTP_RESPONSE_HEADERS, name, value) {
            log::warn!("virtual-env: cannot set response header {name}: {status:?}");
        }
    }

    fn remove_response_header(&mut self, name: &str) {
        if let Err(status) = abi::remove_header(abi::HTTP_RESPONSE_HEADERS, name) {
            log::warn!("virtual-env: cannot remove response header {name}: {status:?}");
        }
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        abi::shared_data(key).ok().flatten()
    }

    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        abi::set_shared_data(key, value, cas.unwrap_or(0)).is_ok()
    }

    fn now_unix_ms(&self) -> u64 {
        abi::now_nanos().map_or(0, |nanos| nanos / 1_000_000)
    }

    fn random(&mut self, buf: &mut [u8]) -> bool {
        abi::random(buf)
    }

    fn increment(&mut self, metric: Metric) {
        self.metrics.count(metric);
    }

    /// Istio's waypoint keeps the calling workload's metadata in filter state (its
    /// `waypoint_downstream_peer_metadata` filter, shared with the inner listener where
    /// plugins run): `downstream_peer`, a Struct in 1.25+ (fields in 1.24), and from 1.29
    /// also `downstream_peer_obj`. See docs/design/ambient-and-gateway-api.md, 1.2-1.4.
    fn downstream_peer(&self) -> Option<Peer> {
        ["downstream_peer", "downstream_peer_obj"]
            .into_iter()
            .find_map(|object| {
                let field = |name| string_property(&["filter_state", object, name]);
                peer_of(field("namespace")?, field("workload")?)
            })
    }
}

/// A peer whose namespace is a namespace name (else no peer); its workload when that is a
/// workload name (else none known: the namespace still resolves short names).
fn peer_of(namespace: String, workload: String) -> Option<Peer> {
    if !virtual_env_core::service::is_dns_label(&namespace) {
        return None;
    }
    let workload = if virtual_env_core::config::is_workload_name(&workload) {
        workload
    } else {
        String::new()
    };
    Some(Peer {
        namespace,
        workload,
    })
}

fn string_property(path: &[&str]) -> Option<String> {
    abi::property(path)
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// `xds.listener_direction`, encoded once: without a `direction` in the config it is read
/// on every request.
const LISTENER_DIRECTION: &[u8] = b"xds\0listener_direction\0";

/// Envoy serializes integer properties as 8 little-endian bytes.
fn listener_direction() -> Option<i64> {
    let bytes: [u8; 8] = abi::encoded_property(LISTENER_DIRECTION)
        .ok()
        .flatten()?
        .try_into()
        .ok()?;
    Some(i64::from_le_bytes(bytes))
}

/// What a root context hands to each HTTP context: the config in force, the node and the
/// counters, behind one `Rc` (one reference count per request, no more).
struct Active {
    config: FilterConfig,
    node: Node,
    metrics: Rc<Metrics>,
}

#[derive(Default)]
struct Root {
    metrics: Rc<Metrics>,
    active: Option<Rc<Active>>,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        self.metrics.flush();
        true
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Envoy drops messages below its own level anyway; not formatting them saves work.
        let level = match abi::log_level() {
            Ok(Level::Trace) => log::LevelFilter::Trace,
            Ok(Level::Debug) => log::LevelFilter::Debug,
            Ok(Level::Info) | Err(_) => log::LevelFilter::Info,
            Ok(Level::Warn) => log::LevelFilter::Warn,
            Ok(Level::Error) => log::LevelFilter::Error,
            Ok(Level::Critical) => log::LevelFilter::Off,
        };
        log::set_max_level(level);
        self.metrics = Rc::new(Metrics::define());
        true
    }

    fn on_tick(&mut self) {
        self.metrics.flush();
    }

    /// Always succeeds: a rejected config keeps the last good one (or passes traffic
    /// through), it never fails the listener.
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        if self.metrics.ids.iter().all(Option::is_none) {
            self.metrics = Rc::new(Metrics::define());
        }
        if let Err(status) = abi::set_tick_period_ms(METRICS_FLUSH.as_millis() as u32) {
            log::warn!("virtual-env: no tick, counters reach Envoy only on shutdown: {status:?}");
        }
        let bytes = abi::buffer(abi::PLUGIN_CONFIGURATION)
            .ok()
            .flatten()
            .unwrap_or_default();
        let plugin = string_property(&["plugin_name"]).unwrap_or_default();
        let mut host = ProxyHost {
            metrics: &self.metrics,
        };
        let reloaded = reload(&mut host, &plugin, &bytes);
        let key = correlation_key(&mut host);
        // Config loads are rare and looked for at once: no waiting for the tick.
        self.metrics.flush();
        if let Some(error) = &reloaded.rejected {
            let kept = if reloaded.active.is_some() {
                "keeping the last good config"
            } else {
                "no good config yet, passing requests through"
            };
            log::error!("virtual-env: plugin config rejected ({kept}): {error}");
        }
        if key.is_none() {
            log::warn!("virtual-env: the host has no randomness; trace correlation is off");
        }
        self.active = reloaded.active.map(|config| {
            let filter = FilterConfig::new(&config, key);
            let own_label =
                string_property(&["xds", "node", "metadata", "LABELS", &config.env_label]);
            let node = Node {
                namespace: string_property(&["xds", "node", "metadata", "NAMESPACE"])
                    .unwrap_or_default(),
                own_env: filter.own_env(own_label),
            };
            log::info!(
                "virtual-env: config in force: {} services, namespace {:?}, own env {:?}",
                config.services.len(),
                node.namespace,
                node.own_env
            );
            Rc::new(Active {
                config: filter,
                node,
                metrics: Rc::clone(&self.metrics),
            })
        });
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            active: self.active.clone(),
            tracing: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    active: Option<Rc<Active>>,
    /// The routing trace this request asked for, for its response path.
    tracing: Option<Tracing>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(active) = &self.active {
            let direction = active
                .config
                .direction()
                .unwrap_or_else(|| direction_of_listener(listener_direction()));
            let mut host = ProxyHost {
                metrics: &active.metrics,
            };
            let decision = active
                .config
                .on_request_headers(&active.node, direction, &mut host);
            self.tracing = decision.trace;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(active), Some(tracing)) = (&self.active, &self.tracing) {
            let mut host = ProxyHost {
                metrics: &active.metrics,
            };
            active.config.on_response_headers(tracing, &mut host);
        }
        Action::Continue
    }
}
