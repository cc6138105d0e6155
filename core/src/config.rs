//! The plugin config: the JSON the controller writes into the WasmPlugin's `pluginConfig`
//! and the filter reads in every sidecar.
//!
//! This is a published interface: deployed sidecars and other tools read it. Fields may be
//! added (with a default that keeps old behaviour); none may be renamed or change meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::edge::{EdgeTrust, EdgeTrustError};
use crate::env::{validate_env_name, EnvNameError, SPLITTER_CHOICES};
use crate::pattern::{EnvPattern, PatternError};
use crate::peer::PeerNamespace;
use crate::service::{is_dns_label, service_key_of_fqdn};

pub const DEFAULT_ENV_HEADER: &str = "x-virtual-env";
pub const DEFAULT_ROUTE_HEADER: &str = "x-virtual-env-route";
pub const DEFAULT_ENV_LABEL: &str = "virtual-env";
pub const DEFAULT_SPLITTER: &str = ".";
pub const DEFAULT_BAGGAGE_KEY: &str = "virtual-env";
pub const DEFAULT_TRACE_HEADERS: [&str; 3] = ["traceparent", "x-b3-traceid", "x-request-id"];
pub const DEFAULT_CORRELATION_SLOTS: u32 = 4096;
pub const DEFAULT_CORRELATION_TTL_SECONDS: u32 = 60;

/// Bounds that keep per-request work and shared memory small whatever the config says.
pub const MAX_HEADER_ALIASES: usize = 8;
pub const MAX_TRACE_HEADERS: usize = 8;
pub const MAX_CORRELATION_SLOTS: u32 = 1 << 20;
pub const MAX_CORRELATION_TTL_SECONDS: u32 = 3600;
/// Entries of a waypoint's `workloads` table.
pub const MAX_WORKLOADS: usize = 16384;
/// Preview host suffixes of a gateway's config.
pub const MAX_PREVIEW_HOSTS: usize = 64;

/// The plugin config, exactly as serialized. Absent fields take the seed CRD's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PluginConfig {
    /// Header that carries the request's env from hop to hop.
    pub env_header: String,
    /// Header the filter sets to the chosen env; the VirtualService routes match it exactly.
    pub route_header: String,
    /// Pod label that names a pod's env (read from the sidecar's node metadata).
    pub env_label: String,
    /// One symbol separating env levels.
    pub splitter: String,
    /// Env to route to when the request's env and its ancestors have no pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_subset: Option<String>,
    /// Whether a request without env takes the calling pod's own env.
    pub auto_inject: bool,
    /// Other headers that carry the env, consulted after `envHeader`.
    pub header_aliases: Vec<String>,
    /// Headers whose value holds the env inside other text (the original project's alias
    /// `pattern`, e.g. a cookie), consulted after `headerAliases`; see [`crate::pattern`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header_patterns: Vec<HeaderPattern>,
    /// W3C baggage member that carries the env; empty disables baggage.
    pub baggage_key: String,
    /// Headers whose value identifies a trace, in the order they are tried.
    pub trace_headers: Vec<String>,
    /// Slots of the trace id -> env table in each Envoy's shared data; 0 disables it.
    pub correlation_slots: u32,
    /// How long a recorded trace id keeps its env.
    pub correlation_ttl_seconds: u32,
    /// The cluster's DNS domain (`cluster.local`). A host that spells out another domain
    /// is not a service of the mesh. Absent: the domains of the `services` names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    /// Which side of the sidecar this plugin object filters: the controller writes one
    /// object per side (Istio's `match` mode CLIENT, which also covers gateways, and
    /// SERVER). Absent: the filter asks Envoy for the listener's direction on every
    /// request, one host call more (the benchmark's ladder measures it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Service FQDN -> envs in which the service has ready pods.
    pub services: BTreeMap<String, Vec<String>>,
    /// Hosts that are not service names but reach a service through a gateway (the
    /// service's `kt-virtual-environment/hosts`): host, lower case without port -> the
    /// service's FQDN in `services`. Only gateways' plugin objects carry it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, String>,
    /// Preview hosts (gateways only): `<suffix>` -> a service FQDN of `services`. A request
    /// for `<label>.<suffix>` is for that service in the env the label spells (the env's
    /// levels joined by [`crate::routing::PREVIEW_SEPARATOR`]: `dev--proj1`), as if the
    /// env header said it, when `previewTrust` admits it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub preview_hosts: BTreeMap<String, String>,
    /// The edge policy a preview host's env is judged by (gateways only; absent: accept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_trust: Option<EdgeTrust>,
    /// What a gateway does with an env arriving from outside the mesh (see
    /// [`crate::edge`]). Only gateways' plugin objects carry it; absent: accept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_trust: Option<EdgeTrust>,
    /// More headers a gateway's `edgeTrust` judges besides this config's own carriers:
    /// those of every namespace whose services the gateway may reach. Only a gateway
    /// owner's edge guard carries it; absent: only this config's own.
    #[serde(skip_serializing_if = "EdgeCarriers::is_empty")]
    pub edge_carriers: EdgeCarriers,
    /// Other namespaces with a VirtualEnvironment, by name: their route header, default
    /// subset and services, so that a call into one is routed by its table (see
    /// [`crate::peer`]). Absent: calls into other namespaces are not routed by env.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<String, PeerNamespace>,
    /// The services table in compact form, for large namespaces (see
    /// [`PluginConfig::compacted`]): every env name once...
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env_names: Vec<String>,
    /// ...and per service FQDN the indices of its envs in `envNames`. Parsing moves these
    /// entries into `services`; a service may not be in both.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub service_envs: BTreeMap<String, Vec<u32>>,
    /// A waypoint's callers (`direction: waypoint`): `<namespace>/<workload>` -> the env of
    /// that workload's pods, Istio's workload name as the waypoint's downstream peer
    /// metadata gives it (a Deployment's name, ...). The waypoint serves many workloads,
    /// so auto-inject takes the caller's env from here instead of its own pod's label.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub workloads: BTreeMap<String, String>,
}

/// Headers that may carry an env, besides a config's own (see `edgeCarriers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EdgeCarriers {
    /// Headers whose whole value is an env (other namespaces' env headers and aliases).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Headers with the env inside other text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header_patterns: Vec<HeaderPattern>,
    /// W3C baggage members that carry an env.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub baggage_keys: Vec<String>,
}

/// Bounds of `edgeCarriers`: every request through the gateway judges them all.
pub const MAX_EDGE_HEADERS: usize = 32;
pub const MAX_EDGE_PATTERNS: usize = 16;
pub const MAX_EDGE_BAGGAGE_KEYS: usize = 8;

impl EdgeCarriers {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.header_patterns.is_empty() && self.baggage_keys.is_empty()
    }

    fn validate(&self, route_header: &str) -> Result<(), ConfigError> {
        check_count("edgeCarriers.headers", self.headers.len(), MAX_EDGE_HEADERS)?;
        check_count(
            "edgeCarriers.headerPatterns",
            self.header_patterns.len(),
            MAX_EDGE_PATTERNS,
        )?;
        check_count(
            "edgeCarriers.baggageKeys",
            self.baggage_keys.len(),
            MAX_EDGE_BAGGAGE_KEYS,
        )?;
        let headers = self
            .headers
            .iter()
            .chain(self.header_patterns.iter().map(|p| &p.name));
        for header in headers {
            check_header("edgeCarriers.headers", header)?;
            if header.eq_ignore_ascii_case(route_header) {
                return Err(ConfigError::HeaderReused {
                    field: "edgeCarriers",
                    value: header.clone(),
                    other: "routeHeader",
                });
            }
        }
        for pattern in &self.header_patterns {
            pattern.compile().map_err(|source| ConfigError::Pattern {
                name: pattern.name.clone(),
                source,
            })?;
        }
        for key in &self.baggage_keys {
            if !is_token(key) {
                return Err(ConfigError::HeaderName {
                    field: "edgeCarriers.baggageKeys",
                    value: key.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A header whose value holds the env inside other text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderPattern {
    /// The header (e.g. `cookie`).
    pub name: String,
    /// A regular expression of the supported subset with `placeholder` where the env is.
    pub pattern: String,
    /// Default `(@)`, as in the original project.
    #[serde(default = "default_placeholder")]
    pub placeholder: String,
}

fn default_placeholder() -> String {
    crate::pattern::DEFAULT_PLACEHOLDER.to_owned()
}

impl HeaderPattern {
    pub fn compile(&self) -> Result<EnvPattern, PatternError> {
        EnvPattern::parse(&self.pattern, &self.placeholder)
    }
}

/// The side of the sidecar a plugin object filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the pod's application: the called side, which records the env for trace
    /// correlation.
    Inbound,
    /// Out of the application, or through a gateway: the calling side, which routes.
    Outbound,
    /// An ambient-mode waypoint: the calling side of workloads without a sidecar (their
    /// env from `workloads` by the downstream peer) and, for trace correlation, the called
    /// side too.
    Waypoint,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            env_header: DEFAULT_ENV_HEADER.into(),
            route_header: DEFAULT_ROUTE_HEADER.into(),
            env_label: DEFAULT_ENV_LABEL.into(),
            splitter: DEFAULT_SPLITTER.into(),
            default_subset: None,
            auto_inject: false,
            header_aliases: Vec::new(),
            header_patterns: Vec::new(),
            baggage_key: DEFAULT_BAGGAGE_KEY.into(),
            trace_headers: DEFAULT_TRACE_HEADERS.map(String::from).to_vec(),
            correlation_slots: DEFAULT_CORRELATION_SLOTS,
            correlation_ttl_seconds: DEFAULT_CORRELATION_TTL_SECONDS,
            cluster_domain: None,
            direction: None,
            services: BTreeMap::new(),
            hosts: BTreeMap::new(),
            preview_hosts: BTreeMap::new(),
            preview_trust: None,
            edge_trust: None,
            edge_carriers: EdgeCarriers::default(),
            peers: BTreeMap::new(),
            env_names: Vec::new(),
            service_envs: BTreeMap::new(),
            workloads: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("config is not valid JSON for the plugin config: {0}")]
    Json(String),
    #[error(
        "{field}: {value:?} is not a header name (non-empty, letters, digits and !#$%&'*+-.^_`|~)"
    )]
    HeaderName { field: &'static str, value: String },
    #[error("{field}: header {value:?} is also used as {other}")]
    HeaderReused {
        field: &'static str,
        value: String,
        other: &'static str,
    },
    #[error("envLabel: {0:?} is not a label key")]
    LabelKey(String),
    #[error("splitter: {0:?} must be exactly one of '.', '-', '_'")]
    Splitter(String),
    #[error("{field}: env {value:?}: {source}")]
    EnvName {
        field: String,
        value: String,
        source: EnvNameError,
    },
    #[error("clusterDomain: {0:?} is not a DNS domain")]
    ClusterDomain(String),
    #[error("services: {0:?} is not a service name of the form svc.ns.svc.<cluster domain>")]
    ServiceName(String),
    #[error("services: {first:?} and {second:?} name the same service")]
    ServiceTwice { first: String, second: String },
    #[error("{field}: at most {max} entries, got {got}")]
    TooMany {
        field: &'static str,
        max: usize,
        got: usize,
    },
    #[error("{field}.{service}: env index {index} is not in envNames ({len} names)")]
    EnvIndex {
        field: String,
        service: String,
        index: u32,
        len: usize,
    },
    #[error(transparent)]
    EdgeTrust(#[from] EdgeTrustError),
    #[error("headerPatterns.{name}: {source}")]
    Pattern { name: String, source: PatternError },
    #[error("peers.{namespace}: {reason}")]
    Peer { namespace: String, reason: String },
    #[error("hosts.{host}: {reason}")]
    GatewayHost { host: String, reason: &'static str },
    #[error("previewHosts.{suffix}: {reason}")]
    PreviewHost {
        suffix: String,
        reason: &'static str,
    },
    #[error("workloads: {0:?} is not <namespace>/<workload name>")]
    Workload(String),
    #[error("{field}: {value} is out of range 0..={max}")]
    OutOfRange {
        field: &'static str,
        value: u32,
        max: u32,
    },
}

impl PluginConfig {
    /// Parses and validates, so that a config either is entirely usable or is rejected.
    /// The compact services table, if any, is expanded into `services`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let config: Self =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        let config = config.expanded()?;
        config.validate()?;
        Ok(config)
    }

    /// The same config with `services` in compact form (`envNames` + `serviceEnvs`): each
    /// env name is written once instead of once per service that has it. At 1,000
    /// services x 100 envs of 30 characters that is a tenth of the bytes.
    pub fn compacted(&self) -> Self {
        let peer_envs = self.peers.values().flat_map(|p| p.services.values());
        let names: std::collections::BTreeSet<&String> =
            self.services.values().chain(peer_envs).flatten().collect();
        let env_names: Vec<String> = names.into_iter().cloned().collect();
        let index: BTreeMap<&str, u32> = env_names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i as u32))
            .collect();
        let ids = |table: &BTreeMap<String, Vec<String>>| -> BTreeMap<String, Vec<u32>> {
            table
                .iter()
                .map(|(service, envs)| {
                    let ids = envs.iter().filter_map(|e| index.get(e.as_str()).copied());
                    (service.clone(), ids.collect())
                })
                .collect()
        };
        let peers = self
            .peers
            .iter()
            .map(|(ns, peer)| {
                let compact = PeerNamespace {
                    route_header: peer.route_header.clone(),
                    default_subset: peer.default_subset.clone(),
                    services: BTreeMap::new(),
                    service_envs: ids(&peer.services),
                };
                (ns.clone(), compact)
            })
            .collect();
        Self {
            service_envs: ids(&self.services),
            peers,
            env_names,
            ..self.without_tables()
        }
    }

    /// This config without its services tables (its own, in either form, and the
    /// peers'), the rest cloned: the tables are most of a large config, and the configs
    /// derived from it replace them. Every field is named, so that a new one is decided on
    /// here.
    fn without_tables(&self) -> Self {
        Self {
            env_header: self.env_header.clone(),
            route_header: self.route_header.clone(),
            env_label: self.env_label.clone(),
            splitter: self.splitter.clone(),
            default_subset: self.default_subset.clone(),
            auto_inject: self.auto_inject,
            header_aliases: self.header_aliases.clone(),
            header_patterns: self.header_patterns.clone(),
            baggage_key: self.baggage_key.clone(),
            trace_headers: self.trace_headers.clone(),
            correlation_slots: self.correlation_slots,
            correlation_ttl_seconds: self.correlation_ttl_seconds,
            cluster_domain: self.cluster_domain.clone(),
            direction: self.direction,
            services: BTreeMap::new(),
            hosts: self.hosts.clone(),
            preview_hosts: self.preview_hosts.clone(),
            preview_trust: self.preview_trust.clone(),
            edge_trust: self.edge_trust.clone(),
            edge_carriers: self.edge_carriers.clone(),
            peers: BTreeMap::new(),
            env_names: Vec::new(),
            service_envs: BTreeMap::new(),
            // Not a services table: a waypoint's config keeps it compacted.
            workloads: self.workloads.clone(),
        }
    }

    /// Moves the compact services tables (the own one and the peers') into `services`.
    pub fn expanded(mut self) -> Result<Self, ConfigError> {
        let names = std::mem::take(&mut self.env_names);
        for name in &names {
            check_env("envNames".into(), name, self.splitter_char())?;
        }
        let compact = std::mem::take(&mut self.service_envs);
        expand_into(&mut self.services, compact, &names, "serviceEnvs")?;
        for (ns, peer) in &mut self.peers {
            let compact = std::mem::take(&mut peer.service_envs);
            let field = format!("peers.{ns}.serviceEnvs");
            expand_into(&mut peer.services, compact, &names, &field)?;
        }
        Ok(self)
    }

    /// The called side's config, derived from a namespace's calling side: the same
    /// settings, no services table and no peers (inbound requests are recorded, not
    /// routed), so each sidecar holds the table once.
    pub fn called_side(&self) -> Self {
        Self {
            direction: Some(Direction::Inbound),
            ..self.without_tables()
        }
    }

    /// A gateway's config, derived from a namespace's calling side: its settings with
    /// `edge_trust`, an empty services table and hosts (the gateway's placement fills
    /// them), no trace correlation (a gateway records nothing), no auto-inject (a gateway
    /// has no env of its own) and no peers (it calls only the namespace's exposed
    /// services).
    pub fn gateway(&self, edge_trust: Option<EdgeTrust>) -> Self {
        Self {
            direction: Some(Direction::Outbound),
            correlation_slots: 0,
            auto_inject: false,
            hosts: BTreeMap::new(),
            edge_trust,
            ..self.without_tables()
        }
    }

    /// A gateway owner's edge guard: nothing to route, only `edge_trust` over the
    /// default carriers and `edge_carriers`.
    pub fn edge_guard(edge_trust: EdgeTrust, edge_carriers: EdgeCarriers) -> Self {
        Self {
            direction: Some(Direction::Outbound),
            correlation_slots: 0,
            auto_inject: false,
            edge_trust: Some(edge_trust),
            edge_carriers,
            ..Self::default()
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing plain strings, bools and maps with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The splitter as a char; only meaningful on a validated config.
    pub fn splitter_char(&self) -> char {
        self.splitter.chars().next().unwrap_or('.')
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut splitter = self.splitter.chars();
        let splitter = match (splitter.next(), splitter.next()) {
            (Some(c), None) if SPLITTER_CHOICES.contains(&c) => c,
            _ => return Err(ConfigError::Splitter(self.splitter.clone())),
        };
        check_header("envHeader", &self.env_header)?;
        check_header("routeHeader", &self.route_header)?;
        if self.env_header.eq_ignore_ascii_case(&self.route_header) {
            return Err(ConfigError::HeaderReused {
                field: "routeHeader",
                value: self.route_header.clone(),
                other: "envHeader",
            });
        }
        if !is_label_key(&self.env_label) {
            return Err(ConfigError::LabelKey(self.env_label.clone()));
        }
        check_count(
            "headerAliases",
            self.header_aliases.len(),
            MAX_HEADER_ALIASES,
        )?;
        for alias in &self.header_aliases {
            check_header("headerAliases", alias)?;
            if alias.eq_ignore_ascii_case(&self.route_header) {
                return Err(ConfigError::HeaderReused {
                    field: "headerAliases",
                    value: alias.clone(),
                    other: "routeHeader",
                });
            }
        }
        check_count(
            "headerPatterns",
            self.header_patterns.len(),
            MAX_HEADER_ALIASES,
        )?;
        for pattern in &self.header_patterns {
            check_header("headerPatterns", &pattern.name)?;
            if pattern.name.eq_ignore_ascii_case(&self.route_header) {
                return Err(ConfigError::HeaderReused {
                    field: "headerPatterns",
                    value: pattern.name.clone(),
                    other: "routeHeader",
                });
            }
            pattern.compile().map_err(|source| ConfigError::Pattern {
                name: pattern.name.clone(),
                source,
            })?;
        }
        check_count("traceHeaders", self.trace_headers.len(), MAX_TRACE_HEADERS)?;
        for header in &self.trace_headers {
            check_header("traceHeaders", header)?;
        }
        if !self.baggage_key.is_empty() && !is_token(&self.baggage_key) {
            return Err(ConfigError::HeaderName {
                field: "baggageKey",
                value: self.baggage_key.clone(),
            });
        }
        check_range(
            "correlationSlots",
            self.correlation_slots,
            MAX_CORRELATION_SLOTS,
        )?;
        check_range(
            "correlationTtlSeconds",
            self.correlation_ttl_seconds,
            MAX_CORRELATION_TTL_SECONDS,
        )?;
        if let Some(domain) = &self.cluster_domain {
            let ok = !domain.is_empty()
                && domain.len() <= 253
                && domain.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(ConfigError::ClusterDomain(domain.clone()));
            }
        }
        if let Some(env) = &self.default_subset {
            check_env("defaultSubset".into(), env, splitter)?;
        }
        let mut keys = BTreeMap::new();
        for (fqdn, envs) in &self.services {
            let key =
                service_key_of_fqdn(fqdn).ok_or_else(|| ConfigError::ServiceName(fqdn.clone()))?;
            if let Some(first) = keys.insert(key, fqdn) {
                return Err(ConfigError::ServiceTwice {
                    first: first.clone(),
                    second: fqdn.clone(),
                });
            }
            for env in envs {
                check_env(format!("services.{fqdn}"), env, splitter)?;
            }
        }
        check_count("workloads", self.workloads.len(), MAX_WORKLOADS)?;
        for (key, env) in &self.workloads {
            let valid_key = key.split_once('/').is_some_and(|(ns, workload)| {
                crate::service::is_dns_label(ns) && is_workload_name(workload)
            });
            if !valid_key {
                return Err(ConfigError::Workload(key.clone()));
            }
            check_env(format!("workloads.{key}"), env, splitter)?;
        }
        if let Some((host, reason)) = self.host_table_error(
            &self.hosts,
            is_dns_name,
            "not a lower-case DNS name without port or wildcard",
        ) {
            return Err(ConfigError::GatewayHost { host, reason });
        }
        if let Some((suffix, reason)) = self.host_table_error(
            &self.preview_hosts,
            |s| is_dns_name(s) && s.contains('.'),
            "not a lower-case DNS name of two labels or more, without port or wildcard",
        ) {
            return Err(ConfigError::PreviewHost { suffix, reason });
        }
        check_count("previewHosts", self.preview_hosts.len(), MAX_PREVIEW_HOSTS)?;
        for edge in self.edge_trust.iter().chain(&self.preview_trust) {
            edge.validate(splitter)?;
        }
        self.edge_carriers.validate(&self.route_header)?;
        self.validate_peers(splitter, &keys)
    }

    /// The first entry of a gateway's host table (`hosts`, `previewHosts`: host -> service
    /// FQDN) that is wrong, and why: a host `valid` refuses (`not_valid` says how), or a
    /// service not in `services`.
    fn host_table_error(
        &self,
        table: &BTreeMap<String, String>,
        valid: impl Fn(&str) -> bool,
        not_valid: &'static str,
    ) -> Option<(String, &'static str)> {
        table.iter().find_map(|(host, fqdn)| {
            let reason = if !valid(host) {
                not_valid
            } else if !self.services.contains_key(fqdn) {
                "names a service that is not in services"
            } else {
                return None;
            };
            Some((host.clone(), reason))
        })
    }

    /// Each peer: a namespace name that the own table does not use, a route header that
    /// is not one of the headers the env is read from, service names, env names.
    fn validate_peers(
        &self,
        splitter: char,
        own_keys: &BTreeMap<&str, &String>,
    ) -> Result<(), ConfigError> {
        let own_namespaces: std::collections::BTreeSet<&str> = own_keys
            .keys()
            .filter_map(|key| key.split_once('.').map(|(_, ns)| ns))
            .collect();
        for (ns, peer) in &self.peers {
            let fail = |reason: String| ConfigError::Peer {
                namespace: ns.clone(),
                reason,
            };
            if !is_dns_label(ns) {
                return Err(fail("not a namespace name".into()));
            }
            if own_namespaces.contains(ns.as_str()) {
                return Err(fail("the namespace is also in services".into()));
            }
            if !is_token(&peer.route_header) {
                return Err(fail(format!(
                    "routeHeader {:?} is not a header name",
                    peer.route_header
                )));
            }
            let read_from = std::iter::once(&self.env_header)
                .chain(&self.header_aliases)
                .chain(self.header_patterns.iter().map(|p| &p.name));
            for header in read_from {
                if header.eq_ignore_ascii_case(&peer.route_header) {
                    return Err(fail(format!(
                        "routeHeader {:?} is also a header the env is read from",
                        peer.route_header
                    )));
                }
            }
            if let Some(env) = &peer.default_subset {
                check_env(format!("peers.{ns}.defaultSubset"), env, splitter)?;
            }
            for (service, envs) in &peer.services {
                if !is_dns_label(service) {
                    return Err(fail(format!("{service:?} is not a service name")));
                }
                for env in envs {
                    check_env(format!("peers.{ns}.services.{service}"), env, splitter)?;
                }
            }
        }
        Ok(())
    }
}

/// Moves a compact table (service -> indices into `names`) into its plain form.
fn expand_into(
    services: &mut BTreeMap<String, Vec<String>>,
    compact: BTreeMap<String, Vec<u32>>,
    names: &[String],
    field: &str,
) -> Result<(), ConfigError> {
    for (service, ids) in compact {
        let envs = ids
            .iter()
            .map(|&index| {
                names
                    .get(index as usize)
                    .cloned()
                    .ok_or(ConfigError::EnvIndex {
                        field: field.to_owned(),
                        service: service.clone(),
                        index,
                        len: names.len(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if services.contains_key(&service) {
            return Err(ConfigError::ServiceTwice {
                first: service.clone(),
                second: service,
            });
        }
        services.insert(service, envs);
    }
    Ok(())
}

/// A lower-case DNS name (RFC 1123 labels), as a gateway host without port.
/// A workload name as Istio gives one: an object's name, or the value of a pod's
/// `service.istio.io/workload-name` label (a label value: letters of either case, digits,
/// `-`, `_`, `.`); at most 253 characters.
pub fn is_workload_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn check_env(field: String, env: &str, splitter: char) -> Result<(), ConfigError> {
    validate_env_name(env, splitter).map_err(|source| ConfigError::EnvName {
        field,
        value: env.to_owned(),
        source,
    })
}

fn check_header(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if is_token(value) {
        Ok(())
    } else {
        Err(ConfigError::HeaderName {
            field,
            value: value.to_owned(),
        })
    }
}

fn check_count(field: &'static str, got: usize, max: usize) -> Result<(), ConfigError> {
    if got > max {
        return Err(ConfigError::TooMany { field, max, got });
    }
    Ok(())
}

fn check_range(field: &'static str, value: u32, max: u32) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::OutOfRange { field, value, max });
    }
    Ok(())
}

/// Longest header name the config accepts: real ones are far shorter, and a bound keeps
/// every per-request string the filter builds from them small.
pub const MAX_HEADER_NAME_LEN: usize = 128;

/// An HTTP field name (RFC 9110 token) of at most [`MAX_HEADER_NAME_LEN`] characters.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_HEADER_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A Kubernetes label key: optional DNS prefix and `/`, then a name of at most 63 characters.
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    name_ok && prefix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"{
      "envHeader": "x-virtual-env",
      "routeHeader": "x-virtual-env-route",
      "envLabel": "virtual-env",
      "splitter": ".",
      "defaultSubset": "dev",
      "autoInject": true,
      "baggageKey": "virtual-env",
      "traceHeaders": ["traceparent", "x-b3-traceid", "x-request-id"],
      "services": {
        "app-a.default.svc.cluster.local": ["dev", "dev.proj1"],
        "app-b.default.svc.cluster.local": ["dev"]
      }
    }"#;

    fn err(json: &str) -> String {
        PluginConfig::from_json(json.as_bytes())
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn edge_carriers_are_checked_and_optional() {
        let ok = PluginConfig::from_json(
            br#"{"edgeCarriers": {"headers": ["x-team-env"], "baggageKeys": ["team-env"],
                "headerPatterns": [{"name": "cookie", "pattern": ".*e=(@);?.*"}]}}"#,
        )
        .unwrap();
        assert_eq!(ok.edge_carriers.headers, ["x-team-env"]);
        let plain = serde_json::to_string(&PluginConfig::default()).unwrap();
        assert!(
            !plain.contains("edgeCarriers"),
            "absent when empty: older filters read it"
        );
        for bad in [
            r#"{"edgeCarriers": {"headers": ["bad header"]}}"#,
            r#"{"edgeCarriers": {"headers": ["x-virtual-env-route"]}}"#,
            r#"{"edgeCarriers": {"baggageKeys": ["a,b"]}}"#,
            r#"{"edgeCarriers": {"headerPatterns": [{"name": "cookie", "pattern": "[a](@)"}]}}"#,
            r#"{"edgeCarriers": {"other": []}}"#,
        ] {
            assert!(PluginConfig::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_EDGE_HEADERS).map(|i| format!("x-h{i}")).collect();
        let json = serde_json::json!({"edgeCarriers": {"headers": many}}).to_string();
        assert!(PluginConfig::from_json(json.as_bytes()).is_err());
    }

    #[test]
    fn gateway_hosts_and_edge_trust_are_checked() {
        let base = r#""services": {"a.default.svc.cluster.local": ["dev"]}"#;
        let ok = format!(
            r#"{{{base}, "hosts": {{"demo.example.com": "a.default.svc.cluster.local"}},
                "edgeTrust": {{"mode": "allowList", "allow": ["dev", "dev.proj1.*"]}}}}"#
        );
        let config = PluginConfig::from_json(ok.as_bytes()).unwrap();
        assert_eq!(config.hosts.len(), 1);
        assert!(config.edge_trust.unwrap().admits("dev.proj1.x"));
        for (hosts, expected) in [
            (
                r#"{"Demo.example.com": "a.default.svc.cluster.local"}"#,
                "not a lower-case DNS name",
            ),
            (
                r#"{"demo.example.com:80": "a.default.svc.cluster.local"}"#,
                "not a lower-case DNS name",
            ),
            (
                r#"{"*.example.com": "a.default.svc.cluster.local"}"#,
                "not a lower-case DNS name",
            ),
            (
                r#"{"demo.example.com": "b.default.svc.cluster.local"}"#,
                "not in services",
            ),
        ] {
            let json = format!(r#"{{{base}, "hosts": {hosts}}}"#);
            assert!(err(&json).contains(expected), "{hosts}: {}", err(&json));
        }
        let json = format!(r#"{{{base}, "edgeTrust": {{"mode": "allowList"}}}}"#);
        assert!(err(&json).contains("at least one entry"), "{}", err(&json));
        let json = format!(r#"{{{base}, "edgeTrust": {{"mode": "trustEveryone"}}}}"#);
        assert!(err(&json).contains("not valid JSON"), "{}", err(&json));
    }

    #[test]
    fn configs_without_the_gateway_fields_serialize_as_before() {
        let json = PluginConfig::default().to_json();
        assert!(
            !json.contains("hosts") && !json.contains("edgeTrust"),
            "{json}"
        );
    }

    #[test]
    fn the_design_example_parses() {
        let config = PluginConfig::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(config.default_subset.as_deref(), Some("dev"));
        assert!(config.auto_inject);
        assert_eq!(config.services.len(), 2);
        assert_eq!(
            config.services["app-a.default.svc.cluster.local"],
            ["dev", "dev.proj1"]
        );
    }

    #[test]
    fn absent_fields_take_the_seed_defaults() {
        let config = PluginConfig::from_json(b"{}").unwrap();
        assert_eq!(config, PluginConfig::default());
        assert_eq!(config.env_header, "x-virtual-env");
        assert_eq!(config.route_header, "x-virtual-env-route");
        assert_eq!(config.env_label, "virtual-env");
        assert_eq!(config.splitter, ".");
        assert!(!config.auto_inject);
        assert_eq!(config.default_subset, None);
    }

    #[test]
    fn round_trips_in_camel_case() {
        let config = PluginConfig::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        let json = config.to_json();
        assert!(json.contains("\"envHeader\""), "{json}");
        assert!(json.contains("\"correlationTtlSeconds\""), "{json}");
        assert_eq!(PluginConfig::from_json(json.as_bytes()).unwrap(), config);
    }

    #[test]
    fn the_direction_is_optional_and_spelled_in_lower_case() {
        assert_eq!(PluginConfig::from_json(b"{}").unwrap().direction, None);
        let inbound = PluginConfig::from_json(br#"{"direction": "inbound"}"#).unwrap();
        assert_eq!(inbound.direction, Some(Direction::Inbound));
        assert!(inbound.to_json().contains(r#""direction":"inbound""#));
        // Absent stays absent: configs written before the field existed are unchanged.
        assert!(!PluginConfig::default().to_json().contains("direction"));
        let msg = err(r#"{"direction": "sideways"}"#);
        assert!(
            msg.contains("sideways") && msg.contains("outbound"),
            "{msg}"
        );
    }

    #[test]
    fn the_compact_table_reads_as_the_plain_one() {
        let plain = PluginConfig::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        let compact = plain.compacted();
        assert!(compact.services.is_empty());
        assert_eq!(compact.env_names, ["dev", "dev.proj1"]);
        assert_eq!(
            compact.service_envs["app-a.default.svc.cluster.local"],
            [0, 1]
        );
        let json = compact.to_json();
        assert!(json.contains(r#""envNames":["dev","dev.proj1"]"#), "{json}");
        assert_eq!(PluginConfig::from_json(json.as_bytes()).unwrap(), plain);
        // The plain form is written as before: no empty compact fields.
        assert!(!plain.to_json().contains("envNames"));
        // A waypoint's workloads table stays as it is.
        let mut waypoint = plain.clone();
        waypoint.direction = Some(Direction::Waypoint);
        waypoint.workloads = BTreeMap::from([("default/app-a".into(), "dev.proj1".into())]);
        let json = waypoint.compacted().to_json();
        assert_eq!(PluginConfig::from_json(json.as_bytes()).unwrap(), waypoint);
    }

    const WITH_PEERS: &str = r#"{
      "defaultSubset": "dev",
      "services": {"a.default.svc.cluster.local": ["dev", "dev.proj1"]},
      "peers": {"pay": {"routeHeader": "x-route-pay", "defaultSubset": "dev",
                        "services": {"ledger": ["dev", "dev.proj2"]}}}
    }"#;

    #[test]
    fn peers_share_the_compact_env_names() {
        let plain = PluginConfig::from_json(WITH_PEERS.as_bytes()).unwrap();
        let compact = plain.compacted();
        assert_eq!(compact.env_names, ["dev", "dev.proj1", "dev.proj2"]);
        assert_eq!(compact.peers["pay"].service_envs["ledger"], [0, 2]);
        assert!(compact.peers["pay"].services.is_empty());
        let json = compact.to_json();
        assert_eq!(PluginConfig::from_json(json.as_bytes()).unwrap(), plain);
        // Configs without peers are written as before.
        assert!(!PluginConfig::default().to_json().contains("peers"));
    }

    #[test]
    fn peers_are_checked() {
        let with = |peer: &str| {
            format!(
                r#"{{"services": {{"a.default.svc.cluster.local": ["dev"]}}, "peers": {peer}}}"#
            )
        };
        for (peer, expected) in [
            (
                r#"{"Pay": {"routeHeader": "x-r"}}"#,
                "peers.Pay: not a namespace name",
            ),
            (r#"{"default": {"routeHeader": "x-r"}}"#, "also in services"),
            (r#"{"pay": {"routeHeader": "x r"}}"#, "not a header name"),
            (
                r#"{"pay": {"routeHeader": "X-Virtual-Env"}}"#,
                "the env is read from",
            ),
            (
                r#"{"pay": {"routeHeader": "x-r", "services": {"a.b": ["dev"]}}}"#,
                "not a service name",
            ),
            (
                r#"{"pay": {"routeHeader": "x-r", "services": {"a": ["dev/x"]}}}"#,
                "peers.pay.services.a: env",
            ),
            (
                r#"{"pay": {"routeHeader": "x-r", "defaultSubset": ".dev"}}"#,
                "peers.pay.defaultSubset",
            ),
            (
                r#"{"pay": {"routeHeader": "x-r", "serviceEnvs": {"a": [3]}}}"#,
                "peers.pay.serviceEnvs.a: env index 3",
            ),
            (r#"{"pay": {"routeHeader": "x-r", "colour": 1}}"#, "colour"),
            (r#"{"pay": {}}"#, "routeHeader"),
        ] {
            let msg = err(&with(peer));
            assert!(msg.contains(expected), "{peer}: {msg}");
        }
    }

    #[test]
    fn a_compact_table_that_does_not_add_up_is_rejected() {
        let msg =
            err(r#"{"envNames": ["dev"], "serviceEnvs": {"a.ns.svc.cluster.local": [0, 1]}}"#);
        assert!(
            msg.starts_with("serviceEnvs.a.ns.svc.cluster.local: env index 1"),
            "{msg}"
        );
        let msg = err(r#"{"envNames": ["dev/x"], "serviceEnvs": {"a.ns.svc.cluster.local": [0]}}"#);
        assert!(msg.contains("dev/x"), "{msg}");
        let msg = err(
            r#"{"envNames": ["dev"], "serviceEnvs": {"a.ns.svc.cluster.local": [0]},
            "services": {"a.ns.svc.cluster.local": ["dev"]}}"#,
        );
        assert!(msg.contains("name the same service"), "{msg}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let msg = err(r#"{"envHeadr": "x"}"#);
        assert!(msg.contains("envHeadr"), "{msg}");
    }

    #[test]
    fn invalid_values_say_what_is_wrong() {
        assert!(err(r#"{"envHeader": ""}"#).starts_with("envHeader: \"\" is not a header name"));
        assert!(err(r#"{"routeHeader": "a b"}"#).starts_with("routeHeader:"));
        assert!(err(r#"{"splitter": "::"}"#).starts_with("splitter:"));
        assert!(err(r#"{"splitter": "/"}"#).starts_with("splitter:"));
        assert!(err(r#"{"splitter": ""}"#).starts_with("splitter:"));
        assert!(err(r#"{"envLabel": "bad label!"}"#).starts_with("envLabel:"));
        assert!(err(r#"{"defaultSubset": "dev..x"}"#).starts_with("defaultSubset: env \"dev..x\""));
        let msg = err(r#"{"services": {"a.default.svc.cluster.local": ["dev", "dev/x"]}}"#);
        assert!(
            msg.starts_with("services.a.default.svc.cluster.local: env \"dev/x\""),
            "{msg}"
        );
        assert!(err(r#"{"services": {"10.0.0.1": ["dev"]}}"#).starts_with("services:"));
        assert!(err(r#"{"envHeader": "x-a", "routeHeader": "X-A"}"#).contains("also used"));
        assert!(err(r#"{"correlationSlots": 99999999}"#).starts_with("correlationSlots:"));
        assert!(
            err(r#"{"traceHeaders": ["a","b","c","d","e","f","g","h","i"]}"#)
                .starts_with("traceHeaders: at most 8")
        );
        assert!(err(r#"{"autoInject": "yes"}"#).contains("invalid type"));
        assert!(err(r#"{"clusterDomain": "a..b"}"#).starts_with("clusterDomain:"));
        let long = format!(r#"{{"envHeader": "{}"}}"#, "x".repeat(129));
        assert!(err(&long).starts_with("envHeader:"));
        let msg = err(r#"{"services": {"a.ns": ["dev"], "a.ns.svc.cluster.local": ["dev"]}}"#);
        assert!(msg.contains("name the same service"), "{msg}");
    }

    #[test]
    fn the_splitter_decides_what_an_empty_level_is() {
        let ok =
            r#"{"splitter": "-", "services": {"a.ns.svc.cluster.local": ["dev-p1", "dev.x"]}}"#;
        assert!(PluginConfig::from_json(ok.as_bytes()).is_ok());
        assert!(err(r#"{"splitter": "-", "defaultSubset": "dev--x"}"#).contains("empty level"));
    }

    #[test]
    fn seed_style_mixed_case_headers_are_valid() {
        let config = PluginConfig::from_json(br#"{"envHeader": "X-Virtual-Env"}"#).unwrap();
        assert_eq!(config.env_header, "X-Virtual-Env");
    }

    #[test]
    fn label_keys() {
        assert!(is_label_key("virtual-env"));
        assert!(is_label_key("example.com/virtual-env"));
        assert!(!is_label_key(""));
        assert!(!is_label_key("/env"));
        assert!(!is_label_key("Example.com/env"));
        assert!(!is_label_key("-env"));
    }
}
