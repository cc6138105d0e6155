//! What the filter does to one request, against a [`Host`].
//!
//! Outbound (the calling side): find the target first; a host that is not a service of the
//! mesh's known namespaces is left untouched (no env leaks to the outside, and no work is
//! spent on it). For a mesh service: resolve the env, propagate it, choose the subset and
//! set the route header. Inbound (the called side): record the env under the request's
//! trace ids so that the outbound calls it causes can recover it.
//!
//! Every value read from the request is untrusted bytes: a value that is not UTF-8, or not
//! valid for its purpose (an env name, a trace id, a host), counts as absent and is counted
//! in `header_rejected`.

use std::borrow::Cow;

use log::debug;
use virtual_env_core::hash::HashKey;
use virtual_env_core::pattern::EnvPattern;
use virtual_env_core::{
    lowercase, validate_env_name, Choice, EdgeMode, EdgeTrust, PluginConfig, RouteTable, Target,
};

use crate::baggage::baggage_member;
use crate::correlation::CorrelationTable;
use crate::edge::{guard, Carriers};
use crate::host::Host;
use crate::metrics::Metric;
use crate::trace::trace_id;

/// Which side of the sidecar the request passes: from the config's `direction` when the
/// controller set it, else from the listener (see [`direction_of_listener`]).
pub use virtual_env_core::Direction;

/// From Envoy's `xds.listener_direction` (`envoy.config.core.v3.TrafficDirection`): 1 is
/// inbound; a gateway's listeners have no direction and count as outbound.
pub fn direction_of_listener(value: Option<i64>) -> Direction {
    match value {
        Some(1) => Direction::Inbound,
        _ => Direction::Outbound,
    }
}

/// Where a request's env came from, first hit wins in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    Header,
    Alias,
    Baggage,
    Trace,
    OwnLabel,
}

impl EnvSource {
    fn metric(source: Option<Self>) -> Metric {
        match source {
            Some(EnvSource::Header) => Metric::EnvFromHeader,
            Some(EnvSource::Alias) => Metric::EnvFromAlias,
            Some(EnvSource::Baggage) => Metric::EnvFromBaggage,
            Some(EnvSource::Trace) => Metric::EnvFromTrace,
            Some(EnvSource::OwnLabel) => Metric::EnvFromOwnLabel,
            None => Metric::EnvFromNowhere,
        }
    }
}

/// What the sidecar knows about its own pod, from Envoy's node metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// `NAMESPACE`: where short service names live.
    pub namespace: String,
    /// The pod's env label, when it is a valid env name.
    pub own_env: Option<String>,
}

/// How much of a rejected value a debug log line shows: a hostile value can be as long as
/// Envoy's header limit.
const LOGGED_VALUE_LEN: usize = 64;

fn shown(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(&bytes[..bytes.len().min(LOGGED_VALUE_LEN)])
}

/// A validated plugin config, compiled for per-request use.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    env_header: String,
    route_header: String,
    header_aliases: Vec<String>,
    /// Headers that hold the env inside other text, lower case, with their pattern.
    header_patterns: Vec<(String, EnvPattern)>,
    baggage_key: Option<String>,
    trace_headers: Vec<String>,
    correlation: Option<CorrelationTable>,
    auto_inject: bool,
    splitter: char,
    direction: Option<Direction>,
    /// Set in gateways' configs that do not accept every env from outside.
    edge_trust: Option<EdgeTrust>,
    /// What the edge guard judges (with `edge_trust` only): the own carriers and the
    /// config's `edgeCarriers`, lower case, once each.
    edge_whole: Vec<String>,
    edge_patterns: Vec<(String, EnvPattern)>,
    edge_baggage_keys: Vec<String>,
    /// A gateway owner's edge guard: an edge policy and nothing to route. It judges the
    /// request and leaves the rest to the routing plugins after it.
    guard_only: bool,
    routes: RouteTable,
}

impl FilterConfig {
    /// Compiles a config that passed [`PluginConfig::validate`]. Header names are stored
    /// lower-case, as Envoy keeps them. Without a `correlation_key` (see
    /// [`crate::correlation::correlation_key`]) trace correlation is off.
    pub fn new(config: &PluginConfig, correlation_key: Option<HashKey>) -> Self {
        let lower = |names: &[String]| names.iter().map(|h| h.to_ascii_lowercase()).collect();
        let edge_trust = config
            .edge_trust
            .clone()
            .filter(|edge| edge.mode != EdgeMode::Accept);
        let compiled = |patterns: &[virtual_env_core::HeaderPattern]| -> Vec<(String, EnvPattern)> {
            // The config passed validation, so every pattern compiles.
            patterns
                .iter()
                .filter_map(|p| Some((p.name.to_ascii_lowercase(), p.compile().ok()?)))
                .collect()
        };
        let (mut edge_whole, mut edge_patterns, mut edge_baggage_keys) = Default::default();
        if edge_trust.is_some() {
            let extra = &config.edge_carriers;
            edge_whole = std::iter::once(&config.env_header)
                .chain(&config.header_aliases)
                .chain(&extra.headers)
                .map(|h| h.to_ascii_lowercase())
                .collect();
            edge_patterns = compiled(&config.header_patterns);
            edge_patterns.extend(compiled(&extra.header_patterns));
            edge_baggage_keys = std::iter::once(&config.baggage_key)
                .chain(&extra.baggage_keys)
                .filter(|k| !k.is_empty())
                .cloned()
                .collect();
            dedup(&mut edge_whole);
            dedup(&mut edge_baggage_keys);
        }
        Self {
            env_header: config.env_header.to_ascii_lowercase(),
            route_header: config.route_header.to_ascii_lowercase(),
            header_aliases: lower(&config.header_aliases),
            header_patterns: compiled(&config.header_patterns),
            baggage_key: Some(config.baggage_key.clone()).filter(|k| !k.is_empty()),
            trace_headers: lower(&config.trace_headers),
            correlation: correlation_key.and_then(|key| {
                CorrelationTable::new(
                    config.correlation_slots,
                    config.correlation_ttl_seconds,
                    key,
                )
            }),
            auto_inject: config.auto_inject,
            splitter: config.splitter_char(),
            direction: config.direction,
            // Any edge mode: a guard that accepts everything does nothing at all.
            guard_only: config.edge_trust.is_some()
                && config.services.is_empty()
                && config.hosts.is_empty()
                && config.peers.is_empty(),
            edge_trust,
            edge_whole,
            edge_patterns,
            edge_baggage_keys,
            routes: RouteTable::new(config),
        }
    }

    /// The env header's name, lower case.
    pub fn env_header(&self) -> &str {
        &self.env_header
    }

    /// The route header's name, lower case.
    pub fn route_header(&self) -> &str {
        &self.route_header
    }

    /// The compiled route table.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The side this plugin object filters, when the config says; else the listener's.
    pub fn direction(&self) -> Option<Direction> {
        self.direction
    }

    /// The env splitter.
    pub fn splitter(&self) -> char {
        self.splitter
    }

    /// The node's own env if `label` (the pod's env label value) is a valid env name.
    pub fn own_env(&self, label: Option<String>) -> Option<String> {
        let label = label?;
        match validate_env_name(&label, self.splitter) {
            Ok(()) => Some(label),
            Err(e) => {
                log::warn!("virtual-env: ignoring this pod's env label {label:?}: {e}");
                None
            }
        }
    }

    pub fn on_request_headers(&self, node: &Node, direction: Direction, host: &mut impl Host) {
        match direction {
            Direction::Inbound => self.on_inbound(host),
            Direction::Outbound => self.on_outbound(node, host),
        }
    }

    fn on_outbound(&self, node: &Node, host: &mut impl Host) {
        // A gateway's edge policy holds for every request through it, whatever its host.
        if let Some(edge) = &self.edge_trust {
            self.guard_edge(edge, host);
        }
        if self.guard_only {
            return;
        }
        let authority = self.text(host, ":authority");
        let target = authority.as_deref().map_or(Target::Outside, |authority| {
            self.routes.target(&lowercase(authority), &node.namespace)
        });
        if target == Target::Outside {
            host.increment(Metric::RouteUnknownService);
            // The route header is ours: whatever the application forwarded never leaves.
            host.remove_request_header(&self.route_header);
            return;
        }
        let resolved = self
            .env_from_request(host)
            .or_else(|| self.env_from_trace(host).map(|env| (env, EnvSource::Trace)))
            .or_else(|| {
                let own = node.own_env.as_ref().filter(|_| self.auto_inject)?;
                Some((own.clone(), EnvSource::OwnLabel))
            });
        let (env, source) = match resolved {
            Some((env, source)) => (Some(env), Some(source)),
            None => (None, None),
        };
        host.increment(EnvSource::metric(source));
        if let (Some(env), Some(source)) = (&env, source) {
            if source != EnvSource::Header {
                host.set_request_header(&self.env_header, env);
            }
        }
        let Target::Service(service) = target else {
            host.increment(Metric::RouteUnknownService);
            host.remove_request_header(&self.route_header);
            return;
        };
        let choice = self.routes.choose(service, env.as_deref());
        host.increment(match choice {
            Choice::Exact(_) => Metric::RouteExact,
            Choice::Fallback(_) => Metric::RouteFallback,
            Choice::Default(_) => Metric::RouteDefault,
            Choice::None => Metric::RouteNone,
        });
        debug!("virtual-env: env={env:?} from {source:?} -> {choice:?}");
        // A service of another namespace is routed by that namespace's VirtualService,
        // which matches its own route header; ours has no business there.
        let route_header = match self.routes.peer_route_header(service) {
            None => self.route_header.as_str(),
            Some(peer) => {
                host.increment(Metric::RoutePeer);
                host.remove_request_header(&self.route_header);
                peer
            }
        };
        match choice.env() {
            Some(subset) => host.set_request_header(route_header, subset),
            None => host.remove_request_header(route_header),
        }
    }

    /// At a gateway that does not accept every env: every line of every carrier is judged
    /// and only admitted envs stay (see `edge.rs`), so that neither this hop nor any
    /// behind the gateway finds another.
    fn guard_edge(&self, edge: &EdgeTrust, host: &mut impl Host) {
        let carriers = Carriers {
            whole: &self.edge_whole,
            patterns: &self.edge_patterns,
            baggage_keys: &self.edge_baggage_keys,
            splitter: self.splitter,
        };
        let Some(lines) = host.request_headers() else {
            // Nothing to judge by: no carrier passes unjudged.
            log::warn!(
                "virtual-env: cannot read the request's headers; removing every env carrier"
            );
            host.increment(Metric::HeaderRejected);
            for name in carriers.names() {
                host.remove_request_header(name);
            }
            return;
        };
        let edits = guard(edge, &carriers, &lines);
        if edits.envs_removed > 0 {
            debug!(
                "virtual-env: removed {} envs at the edge",
                edits.envs_removed
            );
            host.increment(Metric::EnvRemovedAtEdge);
        }
        if edits.lines_unjudged > 0 {
            debug!(
                "virtual-env: removed {} carrier lines at the edge that could not be judged",
                edits.lines_unjudged
            );
            host.increment(Metric::HeaderRejected);
        }
        for (name, value) in &edits.headers {
            // Every line goes first: the result never depends on how the proxy's replace
            // treats a header of several lines.
            host.remove_request_header(name);
            if let Some(value) = value {
                host.set_request_header(name, value);
            }
        }
    }

    fn on_inbound(&self, host: &mut impl Host) {
        let Some((env, source)) = self.env_from_request(host) else {
            return;
        };
        // Hand the application the env under the header it is asked to forward.
        if source != EnvSource::Header {
            host.set_request_header(&self.env_header, &env);
        }
        let Some(table) = self.correlation else {
            return;
        };
        let now = host.now_unix_ms();
        let mut recorded = false;
        // `traceparent` and B3 headers of one trace carry one id: write it once.
        let mut written: Vec<String> = Vec::new();
        for header in &self.trace_headers {
            let Some(value) = self.text(host, header) else {
                continue;
            };
            let Some(id) = self.trace_id(host, header, &value) else {
                continue;
            };
            if written.iter().any(|w| *w == *id) {
                continue;
            }
            if let Some(entry) = table.entry(&id, &env, now) {
                recorded |= host.set_shared_data(&table.slot_key(&id), entry.as_bytes(), None);
            }
            written.push(id.into_owned());
        }
        if recorded {
            host.increment(Metric::TraceRecorded);
        }
    }

    /// A header as text; a value that is not UTF-8 counts as absent and is counted.
    fn text(&self, host: &mut impl Host, header: &str) -> Option<String> {
        let bytes = host.request_header(header)?;
        match String::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(e) => {
                debug!(
                    "virtual-env: ignoring {header}: not UTF-8: {}",
                    shown(e.as_bytes())
                );
                host.increment(Metric::HeaderRejected);
                None
            }
        }
    }

    fn trace_id<'v>(
        &self,
        host: &mut impl Host,
        header: &str,
        value: &'v str,
    ) -> Option<Cow<'v, str>> {
        let id = trace_id(header, value);
        if id.is_none() {
            debug!(
                "virtual-env: ignoring {header}: not a trace id: {}",
                shown(value.as_bytes())
            );
            host.increment(Metric::HeaderRejected);
        }
        id
    }

    /// The env carried by the request itself: env header, aliases, baggage.
    fn env_from_request(&self, host: &mut impl Host) -> Option<(String, EnvSource)> {
        if let Some(env) = self.header_env(host, &self.env_header) {
            return Some((env, EnvSource::Header));
        }
        for alias in &self.header_aliases {
            if let Some(env) = self.header_env(host, alias) {
                return Some((env, EnvSource::Alias));
            }
        }
        for (header, pattern) in &self.header_patterns {
            let Some(value) = self.text(host, header) else {
                continue;
            };
            if let Some(env) = pattern.extract(&value) {
                if let Some(env) = self.accept(host, header, Cow::Borrowed(env)) {
                    return Some((env, EnvSource::Alias));
                }
            }
        }
        let key = self.baggage_key.as_deref()?;
        let baggage = self.text(host, "baggage")?;
        let member = baggage_member(&baggage, key)?;
        let env = self.accept(host, "baggage", member)?;
        Some((env, EnvSource::Baggage))
    }

    fn header_env(&self, host: &mut impl Host, header: &str) -> Option<String> {
        let value = self.text(host, header)?;
        self.accept(host, header, Cow::Owned(value))
    }

    /// An env value from the request, if it is a valid env name; else it is as if absent.
    fn accept(&self, host: &mut impl Host, origin: &str, value: Cow<'_, str>) -> Option<String> {
        match validate_env_name(&value, self.splitter) {
            Ok(()) => Some(value.into_owned()),
            Err(e) => {
                debug!(
                    "virtual-env: ignoring {origin} value {}: {e}",
                    shown(value.as_bytes())
                );
                host.increment(Metric::HeaderRejected);
                None
            }
        }
    }

    /// The env recorded on the inbound side for one of the request's trace ids.
    fn env_from_trace(&self, host: &mut impl Host) -> Option<String> {
        let table = self.correlation?;
        let now = host.now_unix_ms();
        self.trace_headers.iter().find_map(|header| {
            let value = self.text(host, header)?;
            let id = self.trace_id(host, header, &value)?;
            let (slot, _) = host.shared_data(&table.slot_key(&id))?;
            let env = table.lookup(&slot, &id, now)?;
            // Shared data is writable by any filter in the proxy: check before trusting.
            validate_env_name(env, self.splitter).ok()?;
            Some(env.to_owned())
        })
    }
}

/// Keeps the first of each name, in order.
fn dedup(names: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
}

#[cfg(test)]
mod tests;
