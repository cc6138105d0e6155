//! The routing trace through the flow: a chain of proxies on mock hosts, each pod's two
//! sides sharing one proxy's shared data, as in a sidecar.

use super::*;
use crate::host::mock::MockHost;
use crate::metrics::Metric;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const KEY: HashKey = [3, 5];
const SERVICES: &str = r#""services": {
    "app-a.default.svc.cluster.local": ["dev", "dev.proj1"],
    "app-b.default.svc.cluster.local": ["dev"]
}"#;

fn config(json: &str) -> FilterConfig {
    FilterConfig::new(
        &PluginConfig::from_json(json.as_bytes()).unwrap(),
        Some(KEY),
    )
}

fn sidecar() -> FilterConfig {
    config(&format!("{{ {SERVICES} }}"))
}

fn gateway(edge: &str) -> FilterConfig {
    config(&format!(
        r#"{{ {SERVICES}, "hosts": {{"shop.example.com": "app-a.default.svc.cluster.local"}}, "correlationSlots": 0 {edge} }}"#
    ))
}

fn node(own_env: Option<&str>) -> Node {
    Node {
        namespace: "default".into(),
        own_env: own_env.map(String::from),
    }
}

fn request(headers: &[(&str, &str)]) -> MockHost {
    headers
        .iter()
        .fold(MockHost::new(), |h, (k, v)| h.with_header(k, v))
}

/// One side of one proxy: the request path on `host`, then the response (carrying
/// `answered`, what the next hop answered, if any) back through it.
fn pass(
    cfg: &FilterConfig,
    own: &Node,
    direction: Direction,
    host: &mut MockHost,
) -> Option<Tracing> {
    cfg.on_request_headers(own, direction, host).trace
}

fn respond(cfg: &FilterConfig, tracing: &Option<Tracing>, host: &mut MockHost) {
    if let Some(tracing) = tracing {
        cfg.on_response_headers(tracing, host);
    }
}

/// gateway -> pod A (dev.proj1) -> B (dev): the app in A forwards `traceparent` (and
/// the env header, or not), never the debug header, and no application forwards any
/// response header. The trace still holds every hop.
#[test]
fn the_whole_chain_reaches_the_client_though_applications_forward_nothing() {
    for (forwarded, from) in [
        (&[][..], "trace"),
        (&[("x-virtual-env", "dev.proj1")][..], "header"),
    ] {
        let hops = chain(forwarded);
        assert_eq!(
            hops,
            [
                "call;by=gateway;to=shop.example.com;env=dev.proj1;from=header;route=exact;subset=dev.proj1",
                "served;ns=default;env=dev.proj1",
                &format!("call;by=sidecar;to=app-b:8080;env=dev.proj1;from={from};route=fallback;subset=dev"),
                "served;ns=default;env=dev",
            ],
            "{forwarded:?}"
        );
    }
}

/// The chain above, A's application forwarding `forwarded` besides `traceparent`: the
/// trace the client gets, hop by hop.
fn chain(forwarded: &[(&str, &str)]) -> Vec<String> {
    let gw = gateway(r#", "edgeTrust": {"mode": "accept", "allowTrace": true}"#);
    let side = sidecar();
    // Gateway: the client asks.
    let mut at_gateway = request(&[
        (":authority", "shop.example.com"),
        ("x-virtual-env", "dev.proj1"),
        (DEBUG_HEADER, "1"),
        ("traceparent", TRACEPARENT),
    ]);
    let gw_trace = pass(&gw, &node(None), Direction::Outbound, &mut at_gateway);
    // Pod A's called side: the request as the gateway sent it.
    let mut a_in = MockHost {
        headers: at_gateway.headers.clone(),
        ..MockHost::new()
    };
    let a = node(Some("dev.proj1"));
    let a_in_trace = pass(&side, &a, Direction::Inbound, &mut a_in);
    // A's application calls B: A's calling side (same proxy).
    let mut a_out = a_in
        .next_request()
        .with_header(":authority", "app-b:8080")
        .with_header("traceparent", TRACEPARENT);
    for (name, value) in forwarded {
        a_out = a_out.with_header(name, value);
    }
    let a_out_trace = pass(&side, &a, Direction::Outbound, &mut a_out);
    assert_eq!(
        a_out.header(DEBUG_HEADER),
        Some("1"),
        "asked of the next hop"
    );
    // B's called side, on another proxy.
    let mut b_in = MockHost {
        headers: a_out.headers.clone(),
        ..MockHost::new()
    };
    let b_in_trace = pass(&side, &node(Some("dev")), Direction::Inbound, &mut b_in);
    // Responses, innermost first; no application forwards the trace.
    respond(&side, &b_in_trace, &mut b_in);
    let mut a_out_back = a_out.next_request();
    a_out_back.response_headers = b_in.response_headers.clone();
    respond(&side, &a_out_trace, &mut a_out_back);
    let mut a_in_back = a_in.next_request();
    respond(&side, &a_in_trace, &mut a_in_back);
    let mut gw_back = at_gateway.next_request();
    gw_back.response_headers = a_in_back.response_headers.clone();
    respond(&gw, &gw_trace, &mut gw_back);
    let trace = gw_back.response(TRACE_HEADER).unwrap();
    trace.split(", ").map(str::to_owned).collect()
}

/// Once the debug request's mark expires, a calling side clears it: a request that is not
/// traced reads one shared-data value again, and the next debug request sets it anew.
#[test]
fn an_expired_debug_mark_is_cleared_by_the_next_call() {
    let side = sidecar();
    let mut inbound = request(&[(DEBUG_HEADER, "1"), ("traceparent", TRACEPARENT)]);
    pass(&side, &node(None), Direction::Inbound, &mut inbound);
    let mark = |h: &MockHost| {
        h.shared
            .borrow()
            .get(routing_trace::ACTIVE_KEY)
            .map(|(v, _)| v.clone())
    };
    assert!(mark(&inbound).is_some_and(|m| !m.is_empty()));
    let mut later = inbound
        .next_request()
        .with_header(":authority", "app-b:8080");
    later.now_ms = 3_600_000;
    assert_eq!(
        pass(&side, &node(None), Direction::Outbound, &mut later),
        None
    );
    assert_eq!(mark(&later).as_deref(), Some(&b""[..]));
    assert_eq!(later.header(DEBUG_HEADER), None);
}

/// A gateway whose edge policy does not let clients ask: the debug header does not pass,
/// and a trace an application answered with does not leave.
#[test]
fn a_gateway_shows_no_trace_to_outside_clients_unless_its_edge_policy_says() {
    for edge in ["", r#", "edgeTrust": {"mode": "strip"}"#] {
        let gw = gateway(edge);
        let mut host = request(&[(":authority", "shop.example.com"), (DEBUG_HEADER, "1")]);
        let tracing = pass(&gw, &node(None), Direction::Outbound, &mut host);
        assert_eq!(host.header(DEBUG_HEADER), None, "{edge}");
        let mut back = host
            .next_request()
            .with_response_header(TRACE_HEADER, "served;ns=default;env=dev.secret");
        respond(&gw, &tracing, &mut back);
        assert_eq!(back.response(TRACE_HEADER), None, "{edge}");
    }
    // The owner's guard strips the header as well, for hosts no routing plugin serves.
    let guard = config(r#"{"edgeTrust": {"mode": "strip"}, "correlationSlots": 0}"#);
    let mut host = request(&[(":authority", "other.example.com"), (DEBUG_HEADER, "1")]);
    let tracing = pass(&guard, &node(None), Direction::Outbound, &mut host);
    assert_eq!(host.header(DEBUG_HEADER), None);
    assert_eq!(tracing, Some(Tracing::Hidden));
}

/// Without the debug header nothing is traced, nothing is written, and other values
/// are rejected like any other bad header value.
#[test]
fn only_a_debug_request_is_traced_and_hostile_values_are_rejected() {
    let side = sidecar();
    let mut plain = request(&[(":authority", "app-a:8080"), ("traceparent", TRACEPARENT)]);
    assert_eq!(
        pass(&side, &node(None), Direction::Outbound, &mut plain),
        None
    );
    let mut inbound = request(&[("traceparent", TRACEPARENT)]);
    assert_eq!(
        pass(&side, &node(None), Direction::Inbound, &mut inbound),
        None
    );
    assert!(inbound
        .shared
        .borrow()
        .keys()
        .all(|k| !k.starts_with(routing_trace::SLOT_PREFIX)));
    for bad in ["true", "1\r\nx: y", "yes"] {
        let mut host = request(&[(":authority", "app-a:8080"), (DEBUG_HEADER, bad)]);
        assert_eq!(
            pass(&side, &node(None), Direction::Outbound, &mut host),
            None
        );
        assert_eq!(host.count(Metric::HeaderRejected), 1, "{bad:?}");
    }
    // A forged trace in the callee's answer is cleaned and bounded.
    let mut host = request(&[(":authority", "app-a:8080"), (DEBUG_HEADER, "1")]);
    let tracing = pass(&side, &node(None), Direction::Outbound, &mut host);
    let forged = format!("x\u{7f}y{}", "z".repeat(10_000));
    let mut back = host
        .next_request()
        .with_response_header(TRACE_HEADER, &forged);
    respond(&side, &tracing, &mut back);
    let trace = back.response(TRACE_HEADER).unwrap();
    assert!(trace.len() <= routing_trace::MAX_TRACE_LEN);
    assert!(trace.starts_with("call;by=sidecar;to=app-a:8080;env=-;from=none;route=none"));
    assert!(!trace.contains('\u{7f}'));
}

/// A gateway whose plugin has only preview hosts is a gateway all the same: outside
/// clients get no trace unless its edge policy lets them ask.
#[test]
fn a_gateway_with_only_preview_hosts_shows_no_trace_to_outside_clients() {
    let gw = config(&format!(
        r#"{{ {SERVICES}, "previewHosts": {{"preview.example.com": "app-a.default.svc.cluster.local"}}, "correlationSlots": 0 }}"#
    ));
    let mut host = request(&[
        (":authority", "dev.preview.example.com"),
        (DEBUG_HEADER, "1"),
    ]);
    let tracing = pass(&gw, &node(None), Direction::Outbound, &mut host);
    assert_eq!(tracing, Some(Tracing::Hidden));
    assert_eq!(host.header(DEBUG_HEADER), None);
}

/// A debug request never takes a slot another live debug request holds.
#[test]
fn a_live_slot_of_another_request_is_not_taken() {
    let side = sidecar();
    let other = "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-00f067aa0ba902b7-01";
    let mut first = request(&[(DEBUG_HEADER, "1"), ("traceparent", TRACEPARENT)]);
    pass(&side, &node(None), Direction::Inbound, &mut first);
    let key = Slots::new(KEY).key_of("4bf92f3577b34da6a3ce929d0e0e4736");
    let held = first.shared.borrow()[&key].0.clone();
    // Another trace id that lands in the same slot (64 slots: search one).
    let colliding = (0..10_000)
        .map(|i| format!("00-{i:032x}-00f067aa0ba902b7-01"))
        .find(|tp| Slots::new(KEY).key_of(&tp[3..35]) == key)
        .unwrap_or_else(|| other.to_owned());
    let mut second = first
        .next_request()
        .with_header(DEBUG_HEADER, "1")
        .with_header("traceparent", &colliding);
    pass(&side, &node(None), Direction::Inbound, &mut second);
    assert_eq!(
        second.shared.borrow()[&key].0,
        held,
        "kept for the first request"
    );
}
