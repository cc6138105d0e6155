//! What the filter does to one request, against a [`Host`].
//!
//! Outbound (the calling side): resolve the env, propagate it, choose the subset of the
//! target service and set the route header. Inbound (the called side): record the env under
//! the request's trace ids so that the outbound calls it causes can recover it.

use std::borrow::Cow;

use log::debug;
use virtual_env_core::{service_key, validate_env_name, Choice, PluginConfig, RouteTable};

use crate::baggage::baggage_member;
use crate::correlation::{CorrelationTable, TraceKey};
use crate::host::Host;
use crate::metrics::Metric;
use crate::trace::trace_id;

/// Which side of the sidecar the request passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Into the pod's application (Envoy's `listener_direction` 1).
    Inbound,
    /// Out of the application; also a gateway, whose listeners have no direction.
    Outbound,
}

impl Direction {
    /// From Envoy's `xds.listener_direction` (`envoy.config.core.v3.TrafficDirection`).
    pub fn from_listener_direction(value: Option<i64>) -> Self {
        match value {
            Some(1) => Direction::Inbound,
            _ => Direction::Outbound,
        }
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

/// A validated plugin config, compiled for per-request use.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    env_header: String,
    route_header: String,
    header_aliases: Vec<String>,
    baggage_key: Option<String>,
    trace_headers: Vec<String>,
    correlation: Option<CorrelationTable>,
    auto_inject: bool,
    splitter: char,
    routes: RouteTable,
}

impl FilterConfig {
    /// Compiles a config that passed [`PluginConfig::validate`]. Header names are stored
    /// lower-case, as Envoy keeps them.
    pub fn new(config: &PluginConfig) -> Self {
        let lower = |names: &[String]| names.iter().map(|h| h.to_ascii_lowercase()).collect();
        Self {
            env_header: config.env_header.to_ascii_lowercase(),
            route_header: config.route_header.to_ascii_lowercase(),
            header_aliases: lower(&config.header_aliases),
            baggage_key: Some(config.baggage_key.clone()).filter(|k| !k.is_empty()),
            trace_headers: lower(&config.trace_headers),
            correlation: CorrelationTable::new(
                config.correlation_slots,
                config.correlation_ttl_seconds,
            ),
            auto_inject: config.auto_inject,
            splitter: config.splitter_char(),
            routes: RouteTable::new(config),
        }
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

        let authority = host.request_header(":authority").unwrap_or_default();
        let service =
            service_key(&authority, &node.namespace).and_then(|key| self.routes.service(&key));
        let Some(service) = service else {
            host.increment(Metric::RouteUnknownService);
            // The route header is ours: whatever the application forwarded never leaves.
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
        debug!("virtual-env: {authority} env={env:?} from {source:?} -> {choice:?}");
        match choice.env() {
            Some(subset) => host.set_request_header(&self.route_header, subset),
            None => host.remove_request_header(&self.route_header),
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
        for header in &self.trace_headers {
            let Some(value) = host.request_header(header) else {
                continue;
            };
            let Some(id) = trace_id(header, &value) else {
                continue;
            };
            let trace = TraceKey::new(header, id);
            let entry = table.entry(&trace, &env, now);
            recorded |= host.set_shared_data(&table.slot_key(&trace), entry.as_bytes(), None);
        }
        if recorded {
            host.increment(Metric::TraceRecorded);
        }
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
        let key = self.baggage_key.as_deref()?;
        let baggage = host.request_header("baggage")?;
        let member = baggage_member(&baggage, key)?;
        let env = self.accept(host, "baggage", member)?;
        Some((env, EnvSource::Baggage))
    }

    fn header_env(&self, host: &mut impl Host, header: &str) -> Option<String> {
        let value = host.request_header(header)?;
        self.accept(host, header, Cow::Owned(value))
    }

    /// An env value from the request, if it is a valid env name; else it is as if absent.
    fn accept(&self, host: &mut impl Host, origin: &str, value: Cow<'_, str>) -> Option<String> {
        match validate_env_name(&value, self.splitter) {
            Ok(()) => Some(value.into_owned()),
            Err(e) => {
                debug!("virtual-env: ignoring {origin} value {value:?}: {e}");
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
            let value = host.request_header(header)?;
            let trace = TraceKey::new(header, trace_id(header, &value)?);
            let (slot, _) = host.shared_data(&table.slot_key(&trace))?;
            let env = table.lookup(&slot, &trace, now)?;
            // Shared data is writable by any filter in the proxy: check before trusting.
            validate_env_name(env, self.splitter).ok()?;
            Some(env.to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn config(json: &str) -> FilterConfig {
        FilterConfig::new(&PluginConfig::from_json(json.as_bytes()).unwrap())
    }

    /// The seed's example: A and C have `dev.proj1` pods, B has only `dev`.
    fn seed(extra: &str) -> FilterConfig {
        config(&format!(
            r#"{{ {extra} "services": {{
                "app-a.default.svc.cluster.local": ["dev", "dev.proj1"],
                "app-b.default.svc.cluster.local": ["dev"],
                "app-c.default.svc.cluster.local": ["dev", "dev.proj1", "dev.proj1.user1"]
            }} }}"#
        ))
    }

    fn node(own_env: Option<&str>) -> Node {
        Node {
            namespace: "default".into(),
            own_env: own_env.map(String::from),
        }
    }

    fn outbound(cfg: &FilterConfig, node: &Node, host: MockHost) -> MockHost {
        let mut host = host;
        cfg.on_request_headers(node, Direction::Outbound, &mut host);
        host
    }

    #[test]
    fn the_env_header_routes_exactly_and_falls_back() {
        let cfg = seed("");
        let h = outbound(
            &cfg,
            &node(None),
            MockHost::new()
                .with_header(":authority", "app-a:8080")
                .with_header("x-virtual-env", "dev.proj1"),
        );
        assert_eq!(h.header("x-virtual-env-route"), Some("dev.proj1"));
        assert_eq!(h.count(Metric::RouteExact), 1);
        assert_eq!(h.count(Metric::EnvFromHeader), 1);

        let h = outbound(
            &cfg,
            &node(None),
            h.next_request()
                .with_header(":authority", "app-b.default.svc.cluster.local")
                .with_header("x-virtual-env", "dev.proj1"),
        );
        assert_eq!(h.header("x-virtual-env-route"), Some("dev"));
        assert_eq!(h.count(Metric::RouteFallback), 1);
    }

    #[test]
    fn three_levels() {
        let cfg = seed("");
        for (svc, want) in [
            ("app-c", "dev.proj1.user1"),
            ("app-a", "dev.proj1"),
            ("app-b", "dev"),
        ] {
            let h = outbound(
                &cfg,
                &node(None),
                MockHost::new()
                    .with_header(":authority", svc)
                    .with_header("x-virtual-env", "dev.proj1.user1"),
            );
            assert_eq!(h.header("x-virtual-env-route"), Some(want), "{svc}");
        }
    }

    #[test]
    fn aliases_and_baggage_are_propagated_as_the_env_header() {
        let cfg = seed(r#""headerAliases": ["x-env"],"#);
        let h = outbound(
            &cfg,
            &node(None),
            MockHost::new()
                .with_header(":authority", "app-a")
                .with_header("x-env", "dev.proj1"),
        );
        assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
        assert_eq!(h.header("x-virtual-env-route"), Some("dev.proj1"));
        assert_eq!(h.count(Metric::EnvFromAlias), 1);

        let h = outbound(
            &cfg,
            &node(None),
            MockHost::new()
                .with_header(":authority", "app-a")
                .with_header("baggage", "user=x,virtual-env=dev.proj1;p=1"),
        );
        assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
        assert_eq!(h.header("x-virtual-env-route"), Some("dev.proj1"));
        assert_eq!(h.count(Metric::EnvFromBaggage), 1);
    }

    #[test]
    fn own_label_only_with_auto_inject() {
        let off = seed("");
        let h = outbound(
            &off,
            &node(Some("dev.proj1")),
            MockHost::new().with_header(":authority", "app-a"),
        );
        assert_eq!(h.header("x-virtual-env"), None);
        assert_eq!(h.header("x-virtual-env-route"), None);
        assert_eq!(h.count(Metric::EnvFromNowhere), 1);
        assert_eq!(h.count(Metric::RouteNone), 1);

        let on = seed(r#""autoInject": true,"#);
        let h = outbound(
            &on,
            &node(Some("dev.proj1")),
            MockHost::new().with_header(":authority", "app-a"),
        );
        assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
        assert_eq!(h.header("x-virtual-env-route"), Some("dev.proj1"));
        assert_eq!(h.count(Metric::EnvFromOwnLabel), 1);
    }

    #[test]
    fn no_env_goes_to_the_default_subset() {
        let cfg = seed(r#""defaultSubset": "dev","#);
        let h = outbound(
            &cfg,
            &node(None),
            MockHost::new().with_header(":authority", "app-a"),
        );
        assert_eq!(h.header("x-virtual-env-route"), Some("dev"));
        assert_eq!(h.count(Metric::RouteDefault), 1);
    }

    #[test]
    fn a_forwarded_route_header_is_replaced_or_removed() {
        let cfg = seed("");
        let forged = || {
            MockHost::new()
                .with_header("x-virtual-env", "dev.proj1")
                .with_header("x-virtual-env-route", "prod")
        };
        let h = outbound(
            &cfg,
            &node(None),
            forged().with_header(":authority", "app-a"),
        );
        assert_eq!(h.header("x-virtual-env-route"), Some("dev.proj1"));
        // No choice for the service: the forged value must not survive.
        let h = outbound(
            &cfg,
            &node(None),
            forged()
                .with_header(":authority", "app-a")
                .with_header("x-virtual-env", "other"),
        );
        assert_eq!(h.header("x-virtual-env-route"), None);
        // Not a service of the config: same.
        let h = outbound(
            &cfg,
            &node(None),
            forged().with_header(":authority", "example.com"),
        );
        assert_eq!(h.header("x-virtual-env-route"), None);
        assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
        assert_eq!(h.count(Metric::RouteUnknownService), 1);
    }

    #[test]
    fn invalid_env_values_are_ignored_and_counted() {
        let cfg = seed(r#""autoInject": true,"#);
        for bad in ["dev..x", ".dev", "dev.", "dev/x", "", &"a".repeat(64)] {
            let h = outbound(
                &cfg,
                &node(Some("dev")),
                MockHost::new()
                    .with_header(":authority", "app-a")
                    .with_header("x-virtual-env", bad),
            );
            // As if absent: the own env applies and overwrites the bad value.
            assert_eq!(h.header("x-virtual-env-route"), Some("dev"), "{bad:?}");
            assert_eq!(h.header("x-virtual-env"), Some("dev"), "{bad:?}");
            assert_eq!(h.count(Metric::HeaderRejected), 1, "{bad:?}");
            assert_eq!(h.count(Metric::EnvFromOwnLabel), 1, "{bad:?}");
        }
        let h = outbound(
            &seed(""),
            &node(None),
            MockHost::new()
                .with_header(":authority", "app-a")
                .with_header("baggage", "virtual-env=dev%2Fx"),
        );
        assert_eq!(h.header("x-virtual-env-route"), None);
        assert_eq!(h.count(Metric::HeaderRejected), 1);
    }

    #[test]
    fn the_env_comes_back_by_trace_id_within_the_ttl() {
        let cfg = seed(r#""correlationTtlSeconds": 10,"#);
        let mut inbound = MockHost::new()
            .with_header("x-virtual-env", "dev.proj1")
            .with_header("traceparent", TRACEPARENT)
            .with_header("x-request-id", "req-1");
        inbound.now_ms = 1_000;
        cfg.on_request_headers(&node(Some("dev")), Direction::Inbound, &mut inbound);
        assert_eq!(inbound.count(Metric::TraceRecorded), 1);

        // The application forwarded only traceparent.
        let mut out = inbound
            .next_request()
            .with_header(":authority", "app-c")
            .with_header("traceparent", TRACEPARENT);
        out.now_ms = 5_000;
        let h = outbound(&cfg, &node(Some("dev")), out);
        assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
        assert_eq!(h.header("x-virtual-env-route"), Some("dev.proj1"));
        assert_eq!(h.count(Metric::EnvFromTrace), 1);

        // Only x-request-id: still found, under that header's key.
        let h = outbound(
            &cfg,
            &node(None),
            h.next_request()
                .with_header(":authority", "app-c")
                .with_header("x-request-id", "req-1"),
        );
        assert_eq!(h.header("x-virtual-env-route"), Some("dev.proj1"));

        // After the TTL the entry is dead.
        let mut late = h
            .next_request()
            .with_header(":authority", "app-c")
            .with_header("traceparent", TRACEPARENT);
        late.now_ms = 11_000;
        let h = outbound(&cfg, &node(None), late);
        assert_eq!(h.header("x-virtual-env-route"), None);
    }

    #[test]
    fn inbound_passes_alias_and_baggage_on_to_the_application() {
        let cfg = seed(r#""headerAliases": ["x-env"],"#);
        let mut h = MockHost::new().with_header("baggage", "virtual-env=dev.proj1");
        cfg.on_request_headers(&node(None), Direction::Inbound, &mut h);
        assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
        // Inbound never routes.
        assert_eq!(h.header("x-virtual-env-route"), None);
    }

    #[test]
    fn disabled_correlation_records_nothing() {
        let cfg = seed(r#""correlationSlots": 0,"#);
        let mut h = MockHost::new()
            .with_header("x-virtual-env", "dev.proj1")
            .with_header("traceparent", TRACEPARENT);
        cfg.on_request_headers(&node(None), Direction::Inbound, &mut h);
        assert!(h.shared.borrow().is_empty());
        assert_eq!(h.count(Metric::TraceRecorded), 0);
    }

    #[test]
    fn mixed_case_header_names_in_config_match_envoys_lower_case() {
        let cfg = seed(r#""envHeader": "X-Virtual-Env", "routeHeader": "X-Route","#);
        let h = outbound(
            &cfg,
            &node(None),
            MockHost::new()
                .with_header(":authority", "app-a")
                .with_header("x-virtual-env", "dev.proj1"),
        );
        assert_eq!(h.header("x-route"), Some("dev.proj1"));
    }

    #[test]
    fn direction_from_the_listener_property() {
        assert_eq!(
            Direction::from_listener_direction(Some(1)),
            Direction::Inbound
        );
        assert_eq!(
            Direction::from_listener_direction(Some(2)),
            Direction::Outbound
        );
        assert_eq!(
            Direction::from_listener_direction(None),
            Direction::Outbound
        );
    }

    #[test]
    fn an_invalid_own_label_is_not_an_env() {
        let cfg = seed("");
        assert_eq!(
            cfg.own_env(Some("dev.proj1".into())),
            Some("dev.proj1".into())
        );
        assert_eq!(cfg.own_env(Some("dev..x".into())), None);
        assert_eq!(cfg.own_env(None), None);
    }
}
