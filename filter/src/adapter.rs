//! The thin layer between proxy-wasm and the filter's logic. Only Wasm builds compile it.
//!
//! Every host call goes through `proxy_wasm::hostcalls`, whose functions return `Result`:
//! the SDK's convenience getters unwrap internally, and a panic kills the VM, so a surprising
//! status here is logged (or treated as absent), never a crash.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::flow::{Direction, FilterConfig, Node};
use crate::host::Host;
use crate::metrics::Metric;
use crate::reload::reload;

proxy_wasm::main! {{
    // Also installs a panic hook that logs at Critical.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

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
            match hostcalls::define_metric(MetricType::Counter, metric.name()) {
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
                let _ = hostcalls::increment_metric(*id, delta);
            }
        }
    }
}

/// [`Host`] over proxy-wasm host calls, for the request in flight (or the root context).
struct ProxyHost<'a> {
    metrics: &'a Metrics,
}

impl Host for ProxyHost<'_> {
    fn request_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        if let Err(status) =
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
        {
            log::warn!("virtual-env: cannot set header {name}: {status:?}");
        }
    }

    fn remove_request_header(&mut self, name: &str) {
        if let Err(status) = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name) {
            log::warn!("virtual-env: cannot remove header {name}: {status:?}");
        }
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas.unwrap_or(0))),
            _ => None,
        }
    }

    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }

    fn now_unix_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn increment(&mut self, metric: Metric) {
        self.metrics.count(metric);
    }
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

fn string_property(path: &[&str]) -> Option<String> {
    property(path).and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Envoy serializes integer properties as 8 little-endian bytes.
fn int_property(path: &[&str]) -> Option<i64> {
    let bytes: [u8; 8] = property(path)?.try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}

/// What a root context hands to each HTTP context: the config in force and the node.
struct Active {
    config: FilterConfig,
    node: Node,
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
        let level = hostcalls::get_log_level().unwrap_or(LogLevel::Info);
        proxy_wasm::set_log_level(level);
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
        if let Err(status) = hostcalls::set_tick_period(METRICS_FLUSH) {
            log::warn!("virtual-env: no tick, counters reach Envoy only on shutdown: {status:?}");
        }
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let plugin = string_property(&["plugin_name"]).unwrap_or_default();
        let mut host = ProxyHost {
            metrics: &self.metrics,
        };
        let reloaded = reload(&mut host, &plugin, &bytes);
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
        self.active = reloaded.active.map(|config| {
            let filter = FilterConfig::new(&config);
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
            })
        });
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            metrics: Rc::clone(&self.metrics),
            active: self.active.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    metrics: Rc<Metrics>,
    active: Option<Rc<Active>>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(active) = &self.active {
            let direction =
                Direction::from_listener_direction(int_property(&["xds", "listener_direction"]));
            let mut host = ProxyHost {
                metrics: &self.metrics,
            };
            active
                .config
                .on_request_headers(&active.node, direction, &mut host);
        }
        Action::Continue
    }
}
