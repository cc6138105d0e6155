//! The filter's own request flow run against an in-memory request, for tools that must
//! say exactly what a sidecar would do (`virtual-env explain`, the demo's table): the same
//! code decides, so they cannot drift from the filter.

use virtual_env_core::{lowercase, Target};

use crate::flow::{Direction, EnvSource, FilterConfig, Node};
use crate::host::mock::MockHost;
use crate::metrics::Metric;

/// What the filter did to one outbound request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The request's env and where it came from; `None` when it has none.
    pub env: Option<(String, EnvSource)>,
    /// Request values ignored as invalid (env values, trace headers, hosts).
    pub rejected: u64,
    /// How the walk ended; `None` when the host is not a service the config routes.
    pub route: Option<Route>,
    /// The route header after the filter: the chosen env, or `None` (removed).
    pub route_header: Option<String>,
    /// Which header that is: the config's own, or a peer namespace's for its services.
    pub route_header_name: String,
}

/// How the fallback walk ended for a routed service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Exact,
    Fallback,
    Default,
    None,
}

/// Runs the outbound flow of `config` for a request with `headers` (lower-case names, raw
/// values; `:authority` names the target) from a pod described by `node`. Nothing is
/// shared with earlier requests, so trace correlation finds nothing.
pub fn outbound(config: &FilterConfig, node: &Node, headers: &[(&str, &[u8])]) -> Outcome {
    let mut host = MockHost::new();
    for (name, value) in headers {
        host = host.with_raw_header(name, value);
    }
    config.on_request_headers(node, Direction::Outbound, &mut host);
    let count = |m: Metric| host.count(m);
    let source = [
        (Metric::EnvFromHeader, EnvSource::Header),
        (Metric::EnvFromAlias, EnvSource::Alias),
        (Metric::EnvFromBaggage, EnvSource::Baggage),
        (Metric::EnvFromTrace, EnvSource::Trace),
        (Metric::EnvFromOwnLabel, EnvSource::OwnLabel),
    ]
    .into_iter()
    .find(|(m, _)| count(*m) > 0)
    .map(|(_, source)| source);
    let text = |name: &str| host.header(name).map(str::to_owned);
    let routes = config.routes();
    let route_header_name = host
        .header(":authority")
        .and_then(
            |authority| match routes.target(&lowercase(authority), &node.namespace) {
                Target::Service(service) => routes.peer_route_header(service),
                _ => None,
            },
        )
        .unwrap_or(config.route_header())
        .to_owned();
    let route = [
        (Metric::RouteExact, Route::Exact),
        (Metric::RouteFallback, Route::Fallback),
        (Metric::RouteDefault, Route::Default),
        (Metric::RouteNone, Route::None),
    ]
    .into_iter()
    .find(|(m, _)| count(*m) > 0)
    .map(|(_, route)| route);
    Outcome {
        env: source.and_then(|s| Some((text(config.env_header())?, s))),
        rejected: count(Metric::HeaderRejected),
        route,
        route_header: text(&route_header_name),
        route_header_name,
    }
}

#[cfg(test)]
mod tests {
    use virtual_env_core::PluginConfig;

    use super::*;

    fn config() -> FilterConfig {
        let json = r#"{"defaultSubset": "dev", "autoInject": true, "services": {
            "app-a.default.svc.cluster.local": ["dev", "dev.proj1"]}}"#;
        FilterConfig::new(&PluginConfig::from_json(json.as_bytes()).unwrap(), None)
    }

    #[test]
    fn reports_what_the_filter_did() {
        let node = Node {
            namespace: "default".into(),
            own_env: Some("dev.proj1".into()),
        };
        let out = outbound(
            &config(),
            &node,
            &[(":authority", b"app-a"), ("x-virtual-env", b"dev.proj1.u1")],
        );
        assert_eq!(out.env, Some(("dev.proj1.u1".into(), EnvSource::Header)));
        assert_eq!(out.route, Some(Route::Fallback));
        assert_eq!(out.route_header.as_deref(), Some("dev.proj1"));
        // An invalid env is ignored; the pod's own env applies under auto-inject.
        let out = outbound(
            &config(),
            &node,
            &[(":authority", b"app-a"), ("x-virtual-env", b"Bad..env")],
        );
        assert_eq!(out.rejected, 1);
        assert_eq!(out.env, Some(("dev.proj1".into(), EnvSource::OwnLabel)));
        assert_eq!(out.route, Some(Route::Exact));
        // Outside the mesh: nothing.
        let out = outbound(&config(), &node, &[(":authority", b"example.com")]);
        assert_eq!((out.env, out.route, out.route_header), (None, None, None));
    }
}
