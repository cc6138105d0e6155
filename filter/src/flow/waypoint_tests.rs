//! The filter in an ambient-mode waypoint (`direction: waypoint`): the caller is the
//! downstream peer Istio's waypoint identifies.

use super::*;
use crate::host::mock::MockHost;
use crate::metrics::Metric;

const KEY: HashKey = [3, 5];
const ROUTE: &str = "x-virtual-env-route";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A waypoint of namespace `default` whose callers are A' (dev.proj1) and B (dev), with
/// the seed's table, and namespace `pay`'s ledger among its peers.
fn waypoint(auto_inject: bool) -> FilterConfig {
    let json = format!(
        r#"{{ "autoInject": {auto_inject}, "direction": "waypoint",
        "workloads": {{"default/app-a-proj1": "dev.proj1", "default/app-b": "dev", "pay/ledger-dev": "dev"}},
        "services": {{
            "app-a.default.svc.cluster.local": ["dev", "dev.proj1"],
            "app-b.default.svc.cluster.local": ["dev"],
            "app-c.default.svc.cluster.local": ["dev", "dev.proj1"]
        }},
        "peers": {{"pay": {{"routeHeader": "x-pay-route", "defaultSubset": "dev",
            "services": {{"app-c": ["dev", "dev.proj1"]}}}}}} }}"#
    );
    FilterConfig::new(
        &PluginConfig::from_json(json.as_bytes()).unwrap(),
        Some(KEY),
    )
}

/// The waypoint's own node: its pod has no env.
fn waypoint_node() -> Node {
    Node {
        namespace: "default".into(),
        own_env: None,
    }
}

fn through(cfg: &FilterConfig, host: MockHost) -> MockHost {
    let mut host = host;
    cfg.on_request_headers(&waypoint_node(), Direction::Waypoint, &mut host);
    host
}

#[test]
fn auto_inject_gives_the_calling_workloads_env_not_the_waypoints() {
    let cfg = waypoint(true);
    let h = through(
        &cfg,
        MockHost::new()
            .with_header(":authority", "app-c:8080")
            .from_peer("default", "app-a-proj1"),
    );
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.count(Metric::EnvFromCallerWorkload), 1);
    let d = cfg.decide(
        &waypoint_node(),
        Direction::Waypoint,
        &MockHost::new()
            .with_header(":authority", "app-c")
            .from_peer("default", "app-a-proj1"),
    );
    assert_eq!(d.env, Some(("dev.proj1".into(), EnvSource::CallerWorkload)));
    // A caller the table does not know, or none at all: no env of anyone else's.
    for host in [
        MockHost::new().from_peer("default", "stranger"),
        MockHost::new().from_peer("other", "app-a-proj1"),
        MockHost::new(),
    ] {
        let h = through(&cfg, host.with_header(":authority", "app-c"));
        assert_eq!(h.header("x-virtual-env"), None);
        assert_eq!(h.header(ROUTE), None, "no env: the default route");
        assert_eq!(h.count(Metric::EnvFromNowhere), 1);
    }
    // Without auto-inject the caller's env is not given.
    let h = through(
        &waypoint(false),
        MockHost::new()
            .with_header(":authority", "app-c")
            .from_peer("default", "app-a-proj1"),
    );
    assert_eq!(h.header("x-virtual-env"), None);
}

#[test]
fn the_env_header_wins_over_the_callers_workload() {
    let h = through(
        &waypoint(true),
        MockHost::new()
            .with_header(":authority", "app-a")
            .with_header("x-virtual-env", "dev")
            .from_peer("default", "app-a-proj1"),
    );
    assert_eq!(h.header(ROUTE), Some("dev"));
    assert_eq!(h.count(Metric::EnvFromHeader), 1);
}

#[test]
fn a_caller_without_a_workload_name_still_resolves_short_names_in_its_namespace() {
    let mut host = MockHost::new()
        .with_header(":authority", "app-c")
        .from_peer("pay", "ledger-dev");
    host.peer.as_mut().unwrap().workload.clear();
    let h = through(&waypoint(true), host);
    assert_eq!(
        h.header("x-pay-route"),
        Some("dev"),
        "pay's app-c, by pay's default"
    );
    assert_eq!(h.header("x-virtual-env"), None, "no workload, no env");
}

#[test]
fn short_names_resolve_in_the_callers_namespace() {
    // A caller in `pay` calling `app-c` means pay's app-c: routed by pay's table and
    // route header, ours removed.
    let h = through(
        &waypoint(true),
        MockHost::new()
            .with_header(":authority", "app-c")
            .with_header(ROUTE, "forged")
            .from_peer("pay", "ledger-dev"),
    );
    assert_eq!(h.header("x-pay-route"), Some("dev"));
    assert_eq!(h.header(ROUTE), None);
    assert_eq!(h.count(Metric::RoutePeer), 1);
}

#[test]
fn the_env_is_recorded_for_the_calls_the_application_makes_next() {
    let cfg = waypoint(true);
    // A' is called with dev.proj1 (from its caller's workload) and a trace id.
    let first = through(
        &cfg,
        MockHost::new()
            .with_header(":authority", "app-a")
            .with_header("traceparent", TRACEPARENT)
            .from_peer("default", "app-b"),
    );
    assert_eq!(first.header(ROUTE), Some("dev"));
    // Its application then calls C, forwarding only the trace: the same waypoint finds
    // the env by the trace id, before the caller's own workload env.
    let h = through(
        &cfg,
        first
            .next_request()
            .with_header(":authority", "app-c")
            .with_header("traceparent", TRACEPARENT)
            .from_peer("default", "app-a-proj1"),
    );
    assert_eq!(h.header("x-virtual-env"), Some("dev"));
    assert_eq!(h.count(Metric::EnvFromTrace), 1);
}

#[test]
fn a_waypoint_config_is_checked_like_any_other() {
    for bad in [
        r#"{"workloads": {"app-a": "dev"}}"#,
        r#"{"workloads": {"Default/app-a": "dev"}}"#,
        r#"{"workloads": {"default/": "dev"}}"#,
        r#"{"workloads": {"default/app-a": "dev..x"}}"#,
    ] {
        assert!(PluginConfig::from_json(bad.as_bytes()).is_err(), "{bad}");
    }
    // A workload name may be a label value (service.istio.io/workload-name).
    assert!(PluginConfig::from_json(
        br#"{"direction": "waypoint", "workloads": {"default/app-a": "dev", "default/Reviews_V2": "dev"}}"#
    )
    .is_ok());
    assert!(PluginConfig::from_json(br#"{"workloads": {"default/a b": "dev"}}"#).is_err());
}
