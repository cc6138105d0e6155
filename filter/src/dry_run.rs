//! The filter's own request flow run against an in-memory request, for tools that must
//! say exactly what a sidecar would do (`virtual-env explain`, the demo's table): the same
//! code decides, so they cannot drift from the filter.

use crate::decision::Decision;
use crate::flow::{Direction, FilterConfig, Node};
use crate::host::mock::MockHost;

/// The filter's decision on an outbound request with `headers` (lower-case names, raw
/// values; `:authority` names the target) from a pod described by `node`: the same
/// [`FilterConfig::decide`] a sidecar runs. Nothing is shared with earlier requests, so
/// trace correlation finds nothing.
pub fn outbound<'c>(
    config: &'c FilterConfig,
    node: &Node,
    headers: &[(&str, &[u8])],
) -> Decision<'c> {
    let mut host = MockHost::new();
    for (name, value) in headers {
        host = host.with_raw_header(name, value);
    }
    config.decide(node, Direction::Outbound, &host)
}

/// As [`outbound`], in an ambient-mode waypoint (`node`: the waypoint's) for a request
/// sent by `peer`, as Istio's waypoint knows the caller.
pub fn through_waypoint<'c>(
    config: &'c FilterConfig,
    node: &Node,
    peer: crate::host::Peer,
    headers: &[(&str, &[u8])],
) -> Decision<'c> {
    let mut host = MockHost::new();
    host.peer = Some(peer);
    for (name, value) in headers {
        host = host.with_raw_header(name, value);
    }
    config.decide(node, Direction::Waypoint, &host)
}

#[cfg(test)]
mod tests {
    use virtual_env_core::PluginConfig;

    use super::*;
    use crate::decision::{Destination, Edit, Route};
    use crate::flow::EnvSource;

    fn config() -> FilterConfig {
        let json = r#"{"defaultSubset": "dev", "autoInject": true, "services": {
            "app-a.default.svc.cluster.local": ["dev", "dev.proj1"]}}"#;
        FilterConfig::new(&PluginConfig::from_json(json.as_bytes()).unwrap(), None)
    }

    #[test]
    fn reports_what_the_filter_did() {
        let config = config();
        let node = Node {
            namespace: "default".into(),
            own_env: Some("dev.proj1".into()),
        };
        let out = outbound(
            &config,
            &node,
            &[(":authority", b"app-a"), ("x-virtual-env", b"dev.proj1.u1")],
        );
        assert_eq!(out.env, Some(("dev.proj1.u1".into(), EnvSource::Header)));
        assert_eq!(out.choice, Some(Route::Fallback));
        assert_eq!(out.target, Some(Destination::Service));
        assert_eq!(
            out.route_header,
            Some(("x-virtual-env-route".into(), Some("dev.proj1".into())))
        );
        // The edits a sidecar makes: the route header only (the env came in the header).
        assert_eq!(
            out.edits,
            [Edit::Set("x-virtual-env-route".into(), "dev.proj1".into())]
        );
        // An invalid env is ignored; the pod's own env applies under auto-inject.
        let out = outbound(
            &config,
            &node,
            &[(":authority", b"app-a"), ("x-virtual-env", b"Bad..env")],
        );
        assert_eq!(out.rejected, 1);
        assert_eq!(out.env, Some(("dev.proj1".into(), EnvSource::OwnLabel)));
        assert_eq!(out.choice, Some(Route::Exact));
        // Outside the mesh: no env, and the route header never leaves.
        let out = outbound(&config, &node, &[(":authority", b"example.com")]);
        assert_eq!((out.env, out.choice), (None, None));
        assert_eq!(out.target, Some(Destination::Outside));
        assert_eq!(out.edits, [Edit::Remove("x-virtual-env-route".into())]);
    }
}
