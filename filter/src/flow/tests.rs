use super::*;
use crate::host::mock::MockHost;
use crate::metrics::Metric;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const REQUEST_ID: &str = "9a7c2f00-5d6d-4f0b-9a4e-5b2b0f3c1d2e";
const KEY: HashKey = [3, 5];
const ROUTE: &str = "x-virtual-env-route";

fn config(json: &str) -> FilterConfig {
    FilterConfig::new(
        &PluginConfig::from_json(json.as_bytes()).unwrap(),
        Some(KEY),
    )
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

fn call(cfg: &FilterConfig, authority: &str, headers: &[(&str, &str)]) -> MockHost {
    let mut host = MockHost::new().with_header(":authority", authority);
    for (k, v) in headers {
        host = host.with_header(k, v);
    }
    outbound(cfg, &node(None), host)
}

#[test]
fn the_env_header_routes_exactly_and_falls_back() {
    let cfg = seed("");
    let h = call(&cfg, "app-a:8080", &[("x-virtual-env", "dev.proj1")]);
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.count(Metric::RouteExact), 1);
    assert_eq!(h.count(Metric::EnvFromHeader), 1);

    let h = call(
        &cfg,
        "app-b.default.svc.cluster.local",
        &[("x-virtual-env", "dev.proj1")],
    );
    assert_eq!(h.header(ROUTE), Some("dev"));
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
        let h = call(&cfg, svc, &[("x-virtual-env", "dev.proj1.user1")]);
        assert_eq!(h.header(ROUTE), Some(want), "{svc}");
    }
}

#[test]
fn upper_case_hosts_route_like_lower_case() {
    let cfg = seed("");
    for host in [
        "APP-A",
        "App-A.Default:8080",
        "APP-A.DEFAULT.SVC.CLUSTER.LOCAL",
    ] {
        let h = call(&cfg, host, &[("x-virtual-env", "dev.proj1")]);
        assert_eq!(h.header(ROUTE), Some("dev.proj1"), "{host}");
    }
}

#[test]
fn hosts_outside_the_mesh_are_left_untouched() {
    let cfg = seed(r#""autoInject": true,"#);
    for host in [
        "app-a.default.svc.evil.example",
        "example.com",
        "www.example.com:443",
        "10.0.0.1",
        "[::1]:80",
    ] {
        let h = outbound(
            &cfg,
            &node(Some("dev.proj1")),
            MockHost::new()
                .with_header(":authority", host)
                .with_header("baggage", "virtual-env=dev.proj1")
                .with_header(ROUTE, "dev"),
        );
        // No env header leaks out, and a forwarded route header never leaves.
        assert_eq!(h.header("x-virtual-env"), None, "{host}");
        assert_eq!(h.header(ROUTE), None, "{host}");
        assert_eq!(h.count(Metric::RouteUnknownService), 1, "{host}");
        assert_eq!(h.count(Metric::EnvFromOwnLabel), 0, "{host}");
    }
}

#[test]
fn a_service_the_table_does_not_route_still_gets_the_env() {
    // app-z is in the pod's namespace but has no entry: the env must travel on through it.
    let cfg = seed(r#""autoInject": true,"#);
    let h = outbound(
        &cfg,
        &node(Some("dev.proj1")),
        MockHost::new().with_header(":authority", "app-z:8080"),
    );
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
    assert_eq!(h.header(ROUTE), None);
    assert_eq!(h.count(Metric::RouteUnknownService), 1);
}

#[test]
fn aliases_and_baggage_are_propagated_as_the_env_header() {
    let cfg = seed(r#""headerAliases": ["x-env"],"#);
    let h = call(&cfg, "app-a", &[("x-env", "dev.proj1")]);
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.count(Metric::EnvFromAlias), 1);

    let h = call(
        &cfg,
        "app-a",
        &[("baggage", "user=x,virtual-env=dev.proj1;p=1")],
    );
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
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
    assert_eq!(h.header(ROUTE), None);
    assert_eq!(h.count(Metric::EnvFromNowhere), 1);
    assert_eq!(h.count(Metric::RouteNone), 1);

    let on = seed(r#""autoInject": true,"#);
    let h = outbound(
        &on,
        &node(Some("dev.proj1")),
        MockHost::new().with_header(":authority", "app-a"),
    );
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.count(Metric::EnvFromOwnLabel), 1);
}

#[test]
fn no_env_goes_to_the_default_subset() {
    let cfg = seed(r#""defaultSubset": "dev","#);
    let h = call(&cfg, "app-a", &[]);
    assert_eq!(h.header(ROUTE), Some("dev"));
    assert_eq!(h.count(Metric::RouteDefault), 1);
}

#[test]
fn a_forwarded_route_header_is_replaced_or_removed() {
    let cfg = seed("");
    let forged = [("x-virtual-env", "dev.proj1"), (ROUTE, "prod")];
    let h = call(&cfg, "app-a", &forged);
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    // No choice for the service: the forged value must not survive.
    let h = call(
        &cfg,
        "app-a",
        &[("x-virtual-env", "other"), (ROUTE, "prod")],
    );
    assert_eq!(h.header(ROUTE), None);
    // Not a service of the mesh: same.
    let h = call(&cfg, "example.com", &forged);
    assert_eq!(h.header(ROUTE), None);
    assert_eq!(h.count(Metric::RouteUnknownService), 1);
}

#[test]
fn invalid_env_values_are_ignored_and_counted() {
    let cfg = seed(r#""autoInject": true,"#);
    let long = "a".repeat(64);
    for bad in ["dev..x", ".dev", "dev.", "dev/x", "", ".", &long] {
        let h = outbound(
            &cfg,
            &node(Some("dev")),
            MockHost::new()
                .with_header(":authority", "app-a")
                .with_header("x-virtual-env", bad),
        );
        // As if absent: the own env applies and overwrites the bad value.
        assert_eq!(h.header(ROUTE), Some("dev"), "{bad:?}");
        assert_eq!(h.header("x-virtual-env"), Some("dev"), "{bad:?}");
        assert_eq!(h.count(Metric::HeaderRejected), 1, "{bad:?}");
        assert_eq!(h.count(Metric::EnvFromOwnLabel), 1, "{bad:?}");
    }
    let h = call(&seed(""), "app-a", &[("baggage", "virtual-env=dev%2Fx")]);
    assert_eq!(h.header(ROUTE), None);
    assert_eq!(h.count(Metric::HeaderRejected), 1);
}

#[test]
fn bytes_that_are_not_utf8_are_rejected_wherever_they_appear() {
    let cfg = seed(r#""headerAliases": ["x-env"], "defaultSubset": "dev","#);
    let bad = b"d\xffv";
    for header in [
        "x-virtual-env",
        "x-env",
        "baggage",
        "traceparent",
        "x-request-id",
        ROUTE,
    ] {
        let h = outbound(
            &cfg,
            &node(None),
            MockHost::new()
                .with_header(":authority", "app-a")
                .with_raw_header(header, bad),
        );
        assert_eq!(h.header(ROUTE), Some("dev"), "{header}");
        let want = u64::from(header != ROUTE);
        assert_eq!(h.count(Metric::HeaderRejected), want, "{header}");
    }
    let h = outbound(
        &cfg,
        &node(None),
        MockHost::new()
            .with_raw_header(":authority", b"app-\xff")
            .with_header(ROUTE, "dev"),
    );
    assert_eq!(h.header(ROUTE), None);
    assert_eq!(h.count(Metric::HeaderRejected), 1);
}

#[test]
fn the_env_comes_back_by_trace_id_within_the_ttl() {
    let cfg = seed(r#""correlationTtlSeconds": 10,"#);
    let mut inbound = MockHost::new()
        .with_header("x-virtual-env", "dev.proj1")
        .with_header("traceparent", TRACEPARENT)
        .with_header("x-request-id", REQUEST_ID);
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
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.count(Metric::EnvFromTrace), 1);

    // Only x-request-id: still found.
    let h = outbound(
        &cfg,
        &node(None),
        h.next_request()
            .with_header(":authority", "app-c")
            .with_header("x-request-id", REQUEST_ID),
    );
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));

    // After the TTL the entry is dead.
    let mut late = h
        .next_request()
        .with_header(":authority", "app-c")
        .with_header("traceparent", TRACEPARENT);
    late.now_ms = 11_000;
    let h = outbound(&cfg, &node(None), late);
    assert_eq!(h.header(ROUTE), None);
}

#[test]
fn one_trace_in_two_formats_is_written_once_and_found_by_either() {
    let cfg = seed(r#""traceHeaders": ["traceparent", "x-b3-traceid"],"#);
    let mut inbound = MockHost::new()
        .with_header("x-virtual-env", "dev.proj1")
        .with_header("traceparent", TRACEPARENT)
        .with_header("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736");
    cfg.on_request_headers(&node(None), Direction::Inbound, &mut inbound);
    let slots = inbound
        .shared
        .borrow()
        .keys()
        .filter(|k| k.starts_with("virtual-env.trace."))
        .count();
    assert_eq!(slots, 1);
    let h = outbound(
        &cfg,
        &node(None),
        inbound
            .next_request()
            .with_header(":authority", "app-a")
            .with_header("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
    );
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
}

#[test]
fn short_opaque_ids_do_not_correlate() {
    let cfg = seed("");
    let mut inbound = MockHost::new()
        .with_header("x-virtual-env", "dev.proj1")
        .with_header("x-request-id", "1");
    cfg.on_request_headers(&node(None), Direction::Inbound, &mut inbound);
    assert_eq!(inbound.count(Metric::TraceRecorded), 0);
    let h = outbound(
        &cfg,
        &node(None),
        inbound
            .next_request()
            .with_header(":authority", "app-a")
            .with_header("x-request-id", "1"),
    );
    assert_eq!(h.header(ROUTE), None);
}

#[test]
fn inbound_passes_alias_and_baggage_on_to_the_application() {
    let cfg = seed(r#""headerAliases": ["x-env"],"#);
    let mut h = MockHost::new().with_header("baggage", "virtual-env=dev.proj1");
    cfg.on_request_headers(&node(None), Direction::Inbound, &mut h);
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
    // Inbound never routes.
    assert_eq!(h.header(ROUTE), None);
}

#[test]
fn disabled_correlation_records_nothing() {
    for cfg in [
        seed(r#""correlationSlots": 0,"#),
        FilterConfig::new(&PluginConfig::default(), None),
    ] {
        let mut h = MockHost::new()
            .with_header("x-virtual-env", "dev.proj1")
            .with_header("traceparent", TRACEPARENT);
        cfg.on_request_headers(&node(None), Direction::Inbound, &mut h);
        assert!(h.shared.borrow().is_empty());
        assert_eq!(h.count(Metric::TraceRecorded), 0);
    }
}

#[test]
fn mixed_case_header_names_in_config_match_envoys_lower_case() {
    let cfg = seed(r#""envHeader": "X-Virtual-Env", "routeHeader": "X-Route","#);
    let h = call(&cfg, "app-a", &[("x-virtual-env", "dev.proj1")]);
    assert_eq!(h.header("x-route"), Some("dev.proj1"));
}

#[test]
fn the_direction_comes_from_the_config_when_it_says() {
    assert_eq!(seed("").direction(), None);
    assert_eq!(
        seed(r#""direction": "inbound","#).direction(),
        Some(Direction::Inbound)
    );
}

#[test]
fn direction_from_the_listener_property() {
    assert_eq!(direction_of_listener(Some(1)), Direction::Inbound);
    assert_eq!(direction_of_listener(Some(2)), Direction::Outbound);
    assert_eq!(direction_of_listener(None), Direction::Outbound);
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

/// A gateway's config: the seed's table, `demo.example.com` for app-a, and `edge`.
fn gateway(edge: &str) -> FilterConfig {
    seed(&format!(
        r#""direction": "outbound", "defaultSubset": "dev", "headerAliases": ["x-env"],
           "hosts": {{"demo.example.com": "app-a.default.svc.cluster.local"}}, {edge}"#
    ))
}

fn at_gateway(cfg: &FilterConfig, headers: &[(&str, &str)]) -> MockHost {
    let mut host = MockHost::new().with_header(":authority", "demo.example.com:443");
    for (k, v) in headers {
        host = host.with_header(k, v);
    }
    let gateway_node = Node {
        namespace: "istio-system".into(),
        own_env: None,
    };
    outbound(cfg, &gateway_node, host)
}

#[test]
fn a_gateway_host_routes_its_service_by_env() {
    let cfg = gateway("");
    let h = at_gateway(&cfg, &[("x-virtual-env", "dev.proj1.alice")]);
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1.alice"));
    let h = at_gateway(&cfg, &[("baggage", "virtual-env=dev.proj1")]);
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"), "propagated");
}

#[test]
fn edge_trust_accept_is_the_default_behaviour() {
    let cfg = gateway(r#""edgeTrust": {"mode": "accept"},"#);
    let h = at_gateway(&cfg, &[("x-virtual-env", "dev.proj1")]);
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.count(Metric::EnvRemovedAtEdge), 0);
}

#[test]
fn edge_trust_strip_removes_every_carrier_and_takes_the_default() {
    let cfg = gateway(r#""edgeTrust": {"mode": "strip"},"#);
    let h = at_gateway(
        &cfg,
        &[
            ("x-virtual-env", "dev.proj1"),
            ("x-env", "dev.proj1"),
            ("baggage", "userId=alice,virtual-env=dev.proj1"),
            (ROUTE, "dev.proj1"),
        ],
    );
    assert_eq!(h.header(ROUTE), Some("dev"), "the default subset");
    assert_eq!(h.header("x-virtual-env"), None);
    assert_eq!(h.header("x-env"), None);
    assert_eq!(h.header("baggage"), Some("userId=alice"));
    assert_eq!(h.count(Metric::EnvRemovedAtEdge), 1);
    // Baggage with only the env member goes entirely; an invalid env goes too.
    let h = at_gateway(
        &cfg,
        &[
            ("baggage", "virtual-env=dev.proj1"),
            ("x-virtual-env", ".."),
        ],
    );
    assert_eq!(h.header("baggage"), None);
    assert_eq!(h.header("x-virtual-env"), None);
}

#[test]
fn edge_trust_allow_list_admits_listed_envs_only() {
    let cfg = gateway(r#""edgeTrust": {"mode": "allowList", "allow": ["dev", "dev.proj1.*"]},"#);
    let h = at_gateway(&cfg, &[("x-virtual-env", "dev.proj1.alice")]);
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1.alice"));
    let h = at_gateway(&cfg, &[("x-env", "dev.proj1")]);
    assert_eq!(
        h.header(ROUTE),
        Some("dev"),
        "dev.proj1 itself is not listed"
    );
    assert_eq!(h.header("x-env"), None);
    assert_eq!(h.header("x-virtual-env"), None);
    assert_eq!(h.count(Metric::EnvRemovedAtEdge), 1);
}

/// The gateway serves other hosts too (other namespaces', other teams'): the edge policy
/// holds for them as well, or a client would carry its env in through any of them.
#[test]
fn edge_trust_holds_for_hosts_outside_the_table_too() {
    let cfg = gateway(r#""edgeTrust": {"mode": "strip"},"#);
    let mut host = MockHost::new()
        .with_header(":authority", "elsewhere.example.com")
        .with_header("x-virtual-env", "dev.proj1")
        .with_header("baggage", "virtual-env=dev.proj1");
    cfg.on_request_headers(&node(None), Direction::Outbound, &mut host);
    assert_eq!(host.header("x-virtual-env"), None);
    assert_eq!(host.header("baggage"), None);
    assert_eq!(host.count(Metric::EnvRemovedAtEdge), 1);
}

/// What a hostile client sends: a second line of a carrier after an admitted (or harmless)
/// first one, other carriers beside an admitted one. Envoy's getter returns only the first
/// line, but the application receives them all and may forward any.
#[test]
fn edge_trust_judges_every_line_of_every_carrier() {
    let cfg = with_cookie_pattern(
        r#""direction": "outbound", "defaultSubset": "dev", "headerAliases": ["x-env"],
           "hosts": {"demo.example.com": "app-a.default.svc.cluster.local"},
           "edgeTrust": {"mode": "allowList", "allow": ["dev", "dev.proj1"]},"#,
    );
    let h = at_gateway(
        &cfg,
        &[
            ("x-virtual-env", "dev.proj1"),
            ("x-virtual-env", "dev.secret"),
            ("x-env", "dev.proj1"),
            ("x-env", "dev.secret"),
            ("baggage", "a=b"),
            ("baggage", "virtual-env=dev.secret"),
            ("cookie", "session=1"),
            ("cookie", "env=dev.secret"),
        ],
    );
    assert_eq!(
        h.header(ROUTE),
        Some("dev.proj1"),
        "the admitted env routes"
    );
    assert_eq!(h.header_lines("x-virtual-env"), ["dev.proj1"]);
    assert_eq!(h.header_lines("x-env"), ["dev.proj1"]);
    assert_eq!(h.header_lines("baggage"), ["a=b"]);
    assert_eq!(h.header_lines("cookie"), ["session=1; env="]);
    assert_eq!(h.count(Metric::EnvRemovedAtEdge), 1);

    // Strip: nothing of an env is left, whatever line it was on.
    let cfg = with_cookie_pattern(
        r#""direction": "outbound", "defaultSubset": "dev",
           "hosts": {"demo.example.com": "app-a.default.svc.cluster.local"},
           "edgeTrust": {"mode": "strip"},"#,
    );
    let h = at_gateway(
        &cfg,
        &[
            ("baggage", "a=b"),
            ("baggage", "virtual-env=dev.secret"),
            ("cookie", "theme=dark"),
            ("cookie", "env=dev.secret"),
        ],
    );
    assert_eq!(h.header(ROUTE), Some("dev"));
    assert_eq!(h.header_lines("baggage"), ["a=b"]);
    assert_eq!(h.header_lines("cookie"), ["theme=dark; env="]);
}

/// A value too long to search is not passed unjudged: its line goes.
#[test]
fn edge_trust_removes_a_carrier_too_long_to_judge() {
    let cfg = with_cookie_pattern(
        r#""direction": "outbound", "defaultSubset": "dev",
           "hosts": {"demo.example.com": "app-a.default.svc.cluster.local"},
           "edgeTrust": {"mode": "strip"},"#,
    );
    let long = format!(
        "{}; env=dev.secret",
        "pad=x".repeat(virtual_env_core::pattern::MAX_EDGE_VALUE_LEN / 4)
    );
    let h = at_gateway(&cfg, &[("cookie", &long)]);
    assert_eq!(h.header("cookie"), None);
    assert_eq!(h.count(Metric::HeaderRejected), 1);
}

/// The original project's alias pattern: the env inside a cookie.
fn with_cookie_pattern(extra: &str) -> FilterConfig {
    seed(&format!(
        r#""headerPatterns": [{{"name": "Cookie", "pattern": ".*env=(@);?.*"}}], {extra}"#
    ))
}

#[test]
fn the_env_in_a_cookie_routes_and_is_propagated_as_the_header() {
    let cfg = with_cookie_pattern("");
    let h = call(
        &cfg,
        "app-a",
        &[("cookie", "session=abc; env=dev.proj1; theme=dark")],
    );
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
    assert_eq!(h.count(Metric::EnvFromAlias), 1);
    // The env header comes first; a cookie without the env is no env.
    let h = call(
        &cfg,
        "app-a",
        &[("x-virtual-env", "dev"), ("cookie", "env=dev.proj1")],
    );
    assert_eq!(h.header(ROUTE), Some("dev"));
    let h = call(&cfg, "app-b", &[("cookie", "session=abc")]);
    assert_eq!(h.count(Metric::EnvFromNowhere), 1);
    // What the pattern captures must still be a valid env name.
    let h = call(&cfg, "app-a", &[("cookie", "env=-bad-")]);
    assert_eq!(h.count(Metric::HeaderRejected), 1);
}

#[test]
fn a_stripping_gateway_removes_only_the_env_from_a_cookie() {
    let cfg = seed(
        r#""direction": "outbound", "defaultSubset": "dev",
           "headerPatterns": [{"name": "cookie", "pattern": ".*env=(@);?.*"}],
           "hosts": {"demo.example.com": "app-a.default.svc.cluster.local"},
           "edgeTrust": {"mode": "strip"},"#,
    );
    let h = at_gateway(
        &cfg,
        &[("cookie", "session=abc; env=dev.proj1; theme=dark")],
    );
    assert_eq!(h.header(ROUTE), Some("dev"));
    assert_eq!(h.header("cookie"), Some("session=abc; env=; theme=dark"));
    assert_eq!(h.count(Metric::EnvRemovedAtEdge), 1);
}

/// The seed's namespace, whose pods also call namespace `pay` (its own route header and
/// default subset `base`).
fn with_peer(extra: &str) -> FilterConfig {
    seed(&format!(
        r#"{extra} "peers": {{"pay": {{"routeHeader": "x-virtual-env-route-pay",
            "defaultSubset": "base", "services": {{"ledger": ["base", "dev.proj1"]}}}}}},"#
    ))
}

#[test]
fn a_call_into_a_peer_namespace_is_routed_by_its_table_and_header() {
    let cfg = with_peer("");
    let forged = [("x-virtual-env", "dev.proj1.user1"), (ROUTE, "prod")];
    let h = call(&cfg, "ledger.pay:8080", &forged);
    assert_eq!(h.header("x-virtual-env-route-pay"), Some("dev.proj1"));
    // Our own route header (here forged by the application) does not go along.
    assert_eq!(h.header(ROUTE), None);
    assert_eq!(h.count(Metric::RouteFallback), 1);
    assert_eq!(h.count(Metric::RoutePeer), 1);
    // Nothing of the lineage there: the peer's default subset, not ours.
    let h = call(
        &cfg,
        "ledger.pay.svc.cluster.local",
        &[("x-virtual-env", "dev")],
    );
    assert_eq!(h.header("x-virtual-env-route-pay"), Some("base"));
    // A call in the own namespace is as before.
    let h = call(&cfg, "app-b", &[("x-virtual-env", "dev.proj1")]);
    assert_eq!(h.header(ROUTE), Some("dev"));
    assert_eq!(h.header("x-virtual-env-route-pay"), None);
    assert_eq!(h.count(Metric::RoutePeer), 0);
}

#[test]
fn a_peer_service_without_a_table_entry_carries_the_env_on() {
    let cfg = with_peer(r#""autoInject": true,"#);
    let h = outbound(
        &cfg,
        &node(Some("dev.proj1")),
        MockHost::new()
            .with_header(":authority", "fx.pay:8080")
            .with_header(ROUTE, "prod"),
    );
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1"));
    assert_eq!(h.header(ROUTE), None);
    // A namespace without a VirtualEnvironment is outside: no env leaks into it.
    let h = outbound(
        &cfg,
        &node(Some("dev.proj1")),
        MockHost::new().with_header(":authority", "x.elsewhere:8080"),
    );
    assert_eq!(h.header("x-virtual-env"), None);
}

/// A gateway owner's edge guard: no services of its own, the edge policy, and the carriers
/// of every namespace the gateway may reach (`edgeCarriers`). Every request through the
/// gateway is judged, whatever its host, with all of them.
#[test]
fn an_edge_guard_judges_every_namespaces_carriers_on_every_request() {
    let json = r#"{"direction": "outbound", "correlationSlots": 0,
        "edgeTrust": {"mode": "allowList", "allow": ["dev"]},
        "edgeCarriers": {"headers": ["X-Team-Env"], "baggageKeys": ["team-env"],
            "headerPatterns": [{"name": "x-pref", "pattern": "env:(@)"}]},
        "services": {}}"#;
    let config = PluginConfig::from_json(json.as_bytes()).unwrap();
    let cfg = FilterConfig::new(&config, None);
    let mut host = MockHost::new()
        .with_header(":authority", "anything.example.com")
        .with_header("x-virtual-env", "dev.secret")
        .with_header("x-team-env", "dev")
        .with_header("x-team-env", "dev.secret")
        .with_header("baggage", "team-env=dev.secret,virtual-env=dev")
        .with_header("x-pref", "env:dev.secret");
    cfg.on_request_headers(&node(None), Direction::Outbound, &mut host);
    assert_eq!(host.header("x-virtual-env"), None);
    assert_eq!(host.header_lines("x-team-env"), ["dev"]);
    assert_eq!(host.header_lines("baggage"), ["virtual-env=dev"]);
    assert_eq!(host.header_lines("x-pref"), ["env:"]);
    assert_eq!(host.count(Metric::EnvRemovedAtEdge), 1);
    // A guard only judges: the routing plugins after it resolve, propagate and route.
    assert_eq!(host.count(Metric::EnvFromHeader), 0);
    assert_eq!(host.count(Metric::RouteUnknownService), 0);
    let mut admitted = MockHost::new()
        .with_header(":authority", "app-a")
        .with_header("baggage", "virtual-env=dev");
    cfg.on_request_headers(&node(None), Direction::Outbound, &mut admitted);
    assert_eq!(
        admitted.header("x-virtual-env"),
        None,
        "not propagated by the guard"
    );
}

/// A preview host at a gateway: the first label spells the env (levels joined by `--`),
/// as if the env header had said it, within the gateway's edge policy; it wins over an
/// env header, and one the policy does not admit is removed at the edge.
#[test]
fn a_preview_host_selects_the_env_within_the_edge_policy() {
    let gateway = |trust: &str| {
        config(&format!(
            r#"{{ "services": {{"app-a.default.svc.cluster.local": ["dev", "dev.proj1"]}},
                "previewHosts": {{"preview.example.com": "app-a.default.svc.cluster.local"}},
                "correlationSlots": 0 {trust} }}"#
        ))
    };
    let open = gateway("");
    for (host, env, route) in [
        ("dev--proj1.preview.example.com", "dev.proj1", "dev.proj1"),
        (
            "DEV--PROJ1.Preview.Example.com:443",
            "dev.proj1",
            "dev.proj1",
        ),
        (
            "dev--proj1--alice.preview.example.com",
            "dev.proj1.alice",
            "dev.proj1",
        ),
        ("dev.preview.example.com", "dev", "dev"),
    ] {
        let h = call(&open, host, &[("x-virtual-env", "dev")]);
        assert_eq!(h.header("x-virtual-env"), Some(env), "{host}");
        assert_eq!(h.header(ROUTE), Some(route), "{host}");
        assert_eq!(h.count(Metric::EnvFromHost), 1, "{host}");
    }
    // A label that spells no env: the header's env, as for any host of the service.
    let h = call(
        &open,
        "a..b.preview.example.com",
        &[("x-virtual-env", "dev.proj1")],
    );
    assert_eq!(h.header(ROUTE), None, "not a preview host: outside");
    let h = call(
        &open,
        "dev----x.preview.example.com",
        &[("x-virtual-env", "dev.proj1")],
    );
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
    assert_eq!(h.count(Metric::EnvFromHeader), 1);
    assert_eq!(
        h.count(Metric::HeaderRejected),
        1,
        "the label is counted as rejected"
    );
    // A host the gateway serves by name is that host's, whatever suffix it has.
    let both = config(
        r#"{ "services": {"app-a.default.svc.cluster.local": ["dev", "dev.proj1"],
                          "app-b.default.svc.cluster.local": ["dev"]},
            "hosts": {"b.preview.example.com": "app-b.default.svc.cluster.local"},
            "previewHosts": {"preview.example.com": "app-a.default.svc.cluster.local"},
            "correlationSlots": 0 }"#,
    );
    let h = call(
        &both,
        "b.preview.example.com",
        &[("x-virtual-env", "dev.proj1")],
    );
    assert_eq!(
        h.header(ROUTE),
        Some("dev"),
        "app-b's fallback, not app-a's dev.proj1"
    );
    assert_eq!(h.count(Metric::EnvFromHost), 0);
    // The edge policy: an env it does not admit is removed, counted, and not routed.
    let strict = gateway(r#", "previewTrust": {"mode": "allowList", "allow": ["dev.proj1.*"]}"#);
    let h = call(&strict, "dev--proj1.preview.example.com", &[]);
    assert_eq!(h.header(ROUTE), None);
    assert_eq!(h.count(Metric::EnvRemovedAtEdge), 1);
    let h = call(&strict, "dev--proj1--bob.preview.example.com", &[]);
    assert_eq!(h.header("x-virtual-env"), Some("dev.proj1.bob"));
    assert_eq!(h.header(ROUTE), Some("dev.proj1"));
}
