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

use crate::correlation::CorrelationTable;
use crate::decision::{Decision, Destination, EdgeVerdict, Edit, Route, Tracing};
use crate::edge::{guard, Carriers};
use crate::host::Host;
use crate::routing_trace::{self, Proxy, Slots, DEBUG_HEADER, TRACE_HEADER};
use reading::Reading;

mod reading;

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
    /// In a waypoint: the env of the workload that sent the request (`workloads`).
    CallerWorkload,
    /// At a gateway: the preview host the request was sent to (`previewHosts`).
    Host,
}

/// What the sidecar knows about its own pod, from Envoy's node metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// `NAMESPACE`: where short service names live.
    pub namespace: String,
    /// The pod's env label, when it is a valid env name.
    pub own_env: Option<String>,
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
    /// A waypoint's callers: `<namespace>/<workload>` -> env.
    workloads: std::collections::BTreeMap<String, String>,
    /// Which proxy this config runs in, as the routing trace names it.
    proxy: Proxy,
    /// At a gateway: whether clients from outside may ask for a routing trace.
    trace_from_outside: bool,
    /// The debug requests' slots (with the correlation key; none without randomness).
    slots: Option<Slots>,
    /// At a gateway: the edge policy a preview host's env is judged by (`None`: accept).
    preview_trust: Option<EdgeTrust>,
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
            workloads: config.workloads.clone(),
            proxy: match config.direction {
                Some(Direction::Waypoint) => Proxy::Waypoint,
                // A gateway's routing plugin has hosts or preview hosts; its owner's guard
                // an edge policy.
                _ if !config.hosts.is_empty()
                    || !config.preview_hosts.is_empty()
                    || config.edge_trust.is_some() =>
                {
                    Proxy::Gateway
                }
                _ => Proxy::Sidecar,
            },
            trace_from_outside: config.edge_trust.as_ref().is_some_and(|e| e.allow_trace),
            slots: correlation_key.map(Slots::new),
            preview_trust: config.preview_trust.clone(),
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

    /// Decides on one request ([`Self::decide`]), applies the decision to `host` (its
    /// edits, records and counters) and returns it.
    pub fn on_request_headers<H: Host>(
        &self,
        node: &Node,
        direction: Direction,
        host: &mut H,
    ) -> Decision<'_> {
        let decision = self.decide(node, direction, &*host);
        decision.apply(host);
        decision
    }

    /// What the filter does to one request, read through `host` and never written to it.
    pub fn decide(&self, node: &Node, direction: Direction, host: &impl Host) -> Decision<'_> {
        match direction {
            Direction::Inbound => {
                let mut read = Reading::new(self, host, &[]);
                let mut decision = self.decide_inbound(&mut read);
                self.trace_served(node, &mut read, &mut decision);
                decision.rejected += read.rejected;
                decision
            }
            Direction::Outbound => self.decide_outbound(node, host),
            Direction::Waypoint => self.decide_waypoint(node, host),
        }
    }

    /// In an ambient-mode waypoint, which routes for workloads that have no sidecar: the
    /// caller is the downstream peer, so short names resolve in its namespace and
    /// auto-inject gives its workload's env (`workloads`), not the waypoint's. The env is
    /// also recorded under the trace ids, as a sidecar's called side does: the calls the
    /// application makes next find it when they pass this waypoint (this Envoy) again.
    fn decide_waypoint(&self, node: &Node, host: &impl Host) -> Decision<'_> {
        let peer = host.downstream_peer();
        let caller = Node {
            namespace: peer
                .as_ref()
                .map_or_else(|| node.namespace.clone(), |p| p.namespace.clone()),
            own_env: peer.as_ref().and_then(|p| self.workload_env(p)),
        };
        let mut read = Reading::new(self, host, &[]);
        let mut decision = self.route(&caller, &mut read);
        if let Some((env, source)) = &mut decision.env {
            if *source == EnvSource::OwnLabel {
                *source = EnvSource::CallerWorkload;
            }
            let env = env.clone();
            self.record_trace(&mut read, &env, &mut decision);
        }
        self.trace_call(&mut read, &mut decision);
        decision.rejected += read.rejected;
        decision
    }

    /// The env of the calling workload, from the waypoint's `workloads` table.
    fn workload_env(&self, peer: &crate::host::Peer) -> Option<String> {
        if peer.workload.is_empty() {
            return None;
        }
        let key = format!("{}/{}", peer.namespace, peer.workload);
        self.workloads.get(&key).cloned()
    }

    fn decide_outbound(&self, node: &Node, host: &impl Host) -> Decision<'_> {
        // A gateway's edge policy holds for every request through it, whatever its host;
        // what follows reads the request as the guard leaves it.
        let (edge, guarded) = match &self.edge_trust {
            Some(edge) => {
                let (verdict, edits) = self.guard_edge(edge, host);
                (Some(verdict), edits)
            }
            None => (None, Vec::new()),
        };
        let mut read = Reading::new(self, host, &guarded);
        let mut decision = if self.guard_only {
            Decision::default()
        } else {
            self.route(node, &mut read)
        };
        // The guard's verdict, and the preview host's env if it was not admitted.
        decision.edge = match (edge, decision.edge) {
            (Some(mut guard), Some(preview)) => {
                guard.envs_removed += preview.envs_removed;
                Some(guard)
            }
            (guard, preview) => guard.or(preview),
        };
        self.trace_call(&mut read, &mut decision);
        decision.rejected += read.rejected;
        decision.edits.splice(0..0, guarded);
        decision
    }

    /// The env, the target, the subset and the route header of an outbound request.
    fn route(&self, node: &Node, read: &mut Reading<'_, '_, impl Host>) -> Decision<'_> {
        let mut decision = Decision::default();
        let own_route_header = self.route_header.as_str();
        let authority = read.text(":authority");
        let authority = authority.as_deref().map(lowercase);
        // A preview host names the service, and the env as if the header had said it; a
        // host the gateway serves by name is that host's, whatever suffix it has.
        let preview = (authority.as_deref())
            .filter(|a| !self.routes.is_gateway_host(a))
            .and_then(|a| self.routes.preview(a));
        let target = match &preview {
            Some((target, _)) => *target,
            None => authority.as_deref().map_or(Target::Outside, |authority| {
                self.routes.target(authority, &node.namespace)
            }),
        };
        // A label that spells no env is a bad value, like a bad env header.
        if matches!(preview, Some((_, None))) {
            decision.rejected += 1;
        }
        let from_host = preview
            .and_then(|(_, env)| env)
            .filter(|env| self.preview_admits(env, &mut decision));
        if target == Target::Outside {
            decision.target = Some(Destination::Outside);
            // The route header is ours: whatever the application forwarded never leaves.
            decision.remove(own_route_header);
            decision.route_header = Some((own_route_header.into(), None));
            return decision;
        }
        let resolved = from_host
            .map(|env| (env, EnvSource::Host))
            .or_else(|| read.env_from_request())
            .or_else(|| read.env_from_trace().map(|env| (env, EnvSource::Trace)))
            .or_else(|| {
                let own = node.own_env.as_ref().filter(|_| self.auto_inject)?;
                Some((own.clone(), EnvSource::OwnLabel))
            });
        if let Some((env, source)) = &resolved {
            if *source != EnvSource::Header {
                decision.set(self.env_header.as_str(), env.as_str());
            }
        }
        decision.env = resolved;
        let Target::Service(service) = target else {
            decision.target = Some(Destination::Unrouted);
            decision.remove(own_route_header);
            decision.route_header = Some((own_route_header.into(), None));
            return decision;
        };
        let env = decision.env.as_ref().map(|(env, _)| env.as_str());
        let choice = self.routes.choose(service, env);
        debug!("virtual-env: env={:?} -> {choice:?}", decision.env);
        let subset = choice.env().map(str::to_owned);
        decision.choice = Some(match choice {
            Choice::Exact(_) => Route::Exact,
            Choice::Fallback(_) => Route::Fallback,
            Choice::Default(_) => Route::Default,
            Choice::None => Route::None,
        });
        // A service of another namespace is routed by that namespace's VirtualService,
        // which matches its own route header; ours has no business there.
        let route_header = match self.routes.peer_route_header(service) {
            None => {
                decision.target = Some(Destination::Service);
                own_route_header
            }
            Some(peer) => {
                decision.target = Some(Destination::PeerService);
                decision.remove(own_route_header);
                peer
            }
        };
        match &subset {
            Some(subset) => decision.set(route_header, subset.as_str()),
            None => decision.remove(route_header),
        }
        decision.route_header = Some((route_header.into(), subset));
        decision
    }

    /// Whether a preview host's env may enter under the gateway's edge policy; one that
    /// may not is counted as removed at the edge.
    fn preview_admits(&self, env: &str, decision: &mut Decision<'_>) -> bool {
        let admitted = self.preview_trust.as_ref().is_none_or(|t| t.admits(env));
        if !admitted {
            decision
                .edge
                .get_or_insert_with(EdgeVerdict::default)
                .envs_removed += 1;
        }
        admitted
    }

    /// At a gateway that does not accept every env: every line of every carrier is judged
    /// and only admitted envs stay (see `edge.rs`), so that neither this hop nor any
    /// behind the gateway finds another. Returns the verdict and the edits.
    fn guard_edge(&self, edge: &EdgeTrust, host: &impl Host) -> (EdgeVerdict, Vec<Edit<'_>>) {
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
            let edits = carriers
                .names()
                .map(|name| Edit::Remove(Cow::Owned(name.to_owned())))
                .collect();
            let verdict = EdgeVerdict {
                unreadable: true,
                ..EdgeVerdict::default()
            };
            return (verdict, edits);
        };
        let judged = guard(edge, &carriers, &lines);
        if judged.envs_removed > 0 {
            debug!(
                "virtual-env: removed {} envs at the edge",
                judged.envs_removed
            );
        }
        if judged.lines_unjudged > 0 {
            debug!(
                "virtual-env: removed {} carrier lines at the edge that could not be judged",
                judged.lines_unjudged
            );
        }
        let mut edits = Vec::new();
        for (name, value) in judged.headers {
            // Every line goes first: the result never depends on how the proxy's replace
            // treats a header of several lines.
            edits.push(Edit::Remove(Cow::Owned(name.clone())));
            if let Some(value) = value {
                edits.push(Edit::Set(Cow::Owned(name), value));
            }
        }
        let verdict = EdgeVerdict {
            envs_removed: judged.envs_removed,
            lines_unjudged: judged.lines_unjudged,
            unreadable: false,
        };
        (verdict, edits)
    }

    /// The called side: hand the application the env under the env header, and record it
    /// under the request's trace ids for the calls it causes.
    fn decide_inbound(&self, read: &mut Reading<'_, '_, impl Host>) -> Decision<'_> {
        let mut decision = Decision::default();
        let Some((env, source)) = read.env_from_request() else {
            return decision;
        };
        if source != EnvSource::Header {
            decision.set(self.env_header.as_str(), env.as_str());
        }
        self.record_trace(read, &env, &mut decision);
        decision.env = Some((env, source));
        decision
    }
}

impl FilterConfig {
    /// Records `env` under the request's trace ids, for the calls it causes.
    fn record_trace(
        &self,
        read: &mut Reading<'_, '_, impl Host>,
        env: &str,
        decision: &mut Decision<'_>,
    ) {
        let Some(table) = self.correlation else {
            return;
        };
        let now = read.host.now_unix_ms();
        // `traceparent` and B3 headers of one trace carry one id: write it once.
        let mut written: Vec<String> = Vec::new();
        for header in &self.trace_headers {
            let Some(value) = read.text(header) else {
                continue;
            };
            let Some(id) = read.trace_id(header, &value) else {
                continue;
            };
            if written.iter().any(|w| *w == *id) {
                continue;
            }
            if let Some(entry) = table.entry(&id, env, now) {
                decision.records.push((table.slot_key(&id), entry));
            }
            written.push(id.into_owned());
        }
    }
}

/// The routing trace (`routing_trace.rs`): what each side adds on the request path, and
/// the response path.
impl FilterConfig {
    /// The calling side: a call traced when the request asks (the debug header, or a
    /// slot its pod's called side opened for the trace whose env it recovered); a gateway
    /// answers only clients its edge policy lets ask, and strips the header for the rest.
    fn trace_call(&self, read: &mut Reading<'_, '_, impl Host>, decision: &mut Decision<'_>) {
        let header = read.raw(DEBUG_HEADER);
        if self.proxy == Proxy::Gateway && !self.trace_from_outside {
            if header.is_some() {
                decision.remove(DEBUG_HEADER);
            }
            decision.trace = Some(Tracing::Hidden);
            return;
        }
        if self.guard_only {
            return;
        }
        let asked = routing_trace::requested(header.as_deref());
        if header.is_some() && !asked {
            read.rejected += 1;
        }
        // A sidecar's calls go into the slot its pod's called side opened, if any.
        let slot = match (self.proxy, self.slots) {
            (Proxy::Sidecar, Some(slots)) => open_slot(read, slots, decision),
            _ => None,
        };
        if !asked && slot.is_none() {
            return;
        }
        // Asked of the next hop too, inside the mesh only.
        if !asked && decision.target != Some(Destination::Outside) {
            decision.set(DEBUG_HEADER, "1");
        }
        let to = read.text(":authority").unwrap_or_default();
        let entry = routing_trace::call_entry(self.proxy, &lowercase(&to), decision);
        decision.trace = Some(Tracing::Call { entry, slot });
    }

    /// The called side: on a debug request, its entry, and a slot for its pod's calls.
    fn trace_served(
        &self,
        node: &Node,
        read: &mut Reading<'_, '_, impl Host>,
        decision: &mut Decision<'_>,
    ) {
        let header = read.raw(DEBUG_HEADER);
        if !routing_trace::requested(header.as_deref()) {
            if header.is_some() {
                read.rejected += 1;
            }
            return;
        }
        let slot = self.slots.and_then(|slots| {
            let id = read.first_trace_id()?;
            Some((slots.key_of(&id), id))
        });
        if let Some((key, id)) = &slot {
            let opened = Slots::opened(id, read.host.now_unix_ms());
            decision.debug_slot = Some((key.clone(), opened));
        }
        let entry = routing_trace::served_entry(&node.namespace, node.own_env.as_deref());
        decision.trace = Some(Tracing::Served { entry, slot });
    }

    /// The response path of a request whose decision was `tracing`.
    pub fn on_response_headers(&self, tracing: &Tracing, host: &mut impl Host) {
        match tracing {
            Tracing::Hidden => {
                if host.response_header(TRACE_HEADER).is_some() {
                    host.remove_response_header(TRACE_HEADER);
                }
            }
            Tracing::Call { entry, slot } => {
                let rest = host.response_header(TRACE_HEADER);
                let trace = routing_trace::joined(entry, rest.as_deref());
                host.set_response_header(TRACE_HEADER, &trace);
                if let Some((key, id)) = slot {
                    add_to_slot(host, key, id, &trace);
                }
            }
            Tracing::Served { entry, slot } => {
                let now = host.now_unix_ms();
                let collected = slot.as_ref().and_then(|(key, id)| {
                    let (value, _) = host.shared_data(key)?;
                    let hops = Slots::hops(&value, id, now)?;
                    (!hops.is_empty()).then(|| hops.as_bytes().to_vec())
                });
                // The hops its pod's calls left, else what the application forwarded.
                let rest = collected.or_else(|| host.response_header(TRACE_HEADER));
                let trace = routing_trace::joined(entry, rest.as_deref());
                host.set_response_header(TRACE_HEADER, &trace);
            }
        }
    }
}

/// The slot this request's pod opened for its trace: looked for only while a debug
/// request is in flight in the proxy (one shared-data read otherwise); an expired mark is
/// cleared (by the decision), so that the look stays one read.
fn open_slot(
    read: &mut Reading<'_, '_, impl Host>,
    slots: Slots,
    decision: &mut Decision<'_>,
) -> Option<(String, String)> {
    let (mark, cas) = read.host.shared_data(routing_trace::ACTIVE_KEY)?;
    let now = read.host.now_unix_ms();
    if !Slots::active(&mark, now)? {
        decision.clear_debug_mark = Some(cas);
        return None;
    }
    let id = read.first_trace_id()?;
    let key = slots.key_of(&id);
    let (value, _) = read.host.shared_data(&key)?;
    Slots::hops(&value, &id, now)?;
    Some((key, id))
}

/// Adds a call's `trace` to the slot `key` of trace `id`, if the slot is still the
/// trace's; a concurrent writer is retried a few times (compare-and-swap).
fn add_to_slot(host: &mut impl Host, key: &str, id: &str, trace: &str) {
    for _ in 0..4 {
        let Some((value, cas)) = host.shared_data(key) else {
            return;
        };
        let Some(added) = Slots::added(&value, id, trace, host.now_unix_ms()) else {
            return;
        };
        if host.set_shared_data(key, added.as_bytes(), Some(cas)) {
            return;
        }
    }
}

/// Keeps the first of each name, in order.
fn dedup(names: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod waypoint_tests;

#[cfg(test)]
mod trace_tests;
