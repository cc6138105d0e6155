//! Fuzzing of the filter's parsers of untrusted bytes, and of the whole request flow, with
//! arbitrary input. A bounded run is part of `cargo test`; `make fuzz` runs many more
//! cases (`PROPTEST_CASES`). Failing cases are kept under `src/regressions/`.

use proptest::prelude::*;
use virtual_env_core::hash::HashKey;
use virtual_env_core::{validate_env_name, PluginConfig};

use crate::baggage::baggage_member;
use crate::correlation::{CorrelationTable, MAX_ENTRY_LEN, SLOT_KEY_PREFIX};
use crate::flow::{Direction, FilterConfig, Node};
use crate::host::mock::MockHost;
use crate::trace::{trace_id, MAX_OPAQUE_ID_LEN, MIN_OPAQUE_ID_LEN};

pub(crate) fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

const KEY: HashKey = [1, 2];
const ROUTE: &str = "x-route-fuzz";
/// The route header of the peer namespace `pay`.
const PAY_ROUTE: &str = "x-route-pay";
const HEADERS: [&str; 10] = [
    ":authority",
    "x-virtual-env",
    "x-env",
    "baggage",
    "traceparent",
    "x-b3-traceid",
    "b3",
    "x-request-id",
    ROUTE,
    PAY_ROUTE,
];

/// Header values: mostly near-valid text, sometimes raw bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::sample::select(vec![
            "app-a",
            "APP-A:80",
            "app-b.default.svc.cluster.local",
            "app-a.default.svc.evil.x",
            "ledger.pay",
            "LEDGER.PAY.svc.cluster.local:80",
            "dev",
            "dev.proj1",
            "dev.proj1.user1",
            "dev..x",
            ".",
            "virtual-env=dev.proj1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "80f198ee56343ba8",
            "5d6d6ec8-93a1-4f0b-9a4e-5b2b0f3c1d2e",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        proptest::string::string_regex("[a-zA-Z0-9.=,;%|: \\-]{0,70}")
            .expect("a valid regex")
            .prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..70),
    ]
}

fn seed_config() -> FilterConfig {
    let json = format!(
        r#"{{"routeHeader": "{ROUTE}", "headerAliases": ["x-env"], "autoInject": true,
            "traceHeaders": ["traceparent", "x-b3-traceid", "b3", "x-request-id"],
            "correlationSlots": 8,
            "services": {{
                "app-a.default.svc.cluster.local": ["dev", "dev.proj1"],
                "app-b.default.svc.cluster.local": ["dev"]}},
            "peers": {{"pay": {{"routeHeader": "{PAY_ROUTE}", "services": {{"ledger": ["dev.proj1"]}}}}}}}}"#
    );
    let config = PluginConfig::from_json(json.as_bytes()).expect("a valid config");
    FilterConfig::new(&config, Some(KEY))
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn trace_ids_never_panic_and_are_well_formed(
        header in proptest::sample::select(vec!["traceparent", "x-b3-traceid", "b3", "x-request-id"]),
        value in value(),
    ) {
        let text = String::from_utf8_lossy(&value);
        if let Some(id) = trace_id(header, &text) {
            if header == "x-request-id" {
                prop_assert!((MIN_OPAQUE_ID_LEN..=MAX_OPAQUE_ID_LEN).contains(&id.len()));
                prop_assert!(!id.contains('|'));
            } else {
                prop_assert_eq!(id.len(), 32);
                prop_assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
        }
    }

    #[test]
    fn baggage_never_panics(value in value(), key in "[a-z-]{1,12}") {
        let text = String::from_utf8_lossy(&value);
        let _ = baggage_member(&text, &key);
    }

    #[test]
    fn slot_values_never_panic_and_entries_stay_bounded(
        slot in proptest::collection::vec(any::<u8>(), 0..300),
        id in "[ -~]{1,140}",
        env in "[a-z.]{1,70}",
        now in any::<u64>(),
    ) {
        let table = CorrelationTable::new(8, 60, KEY).expect("enabled");
        let _ = table.lookup(&slot, &id, now);
        if let Some(entry) = table.entry(&id, &env, now) {
            prop_assert!(entry.len() <= MAX_ENTRY_LEN);
            prop_assert_eq!(table.lookup(entry.as_bytes(), &id, now), Some(env.as_str()));
        }
    }

    /// Any request, outbound or inbound: no panic; the route header, when set, names an
    /// env the target service has; an env header written is a valid env name; the
    /// correlation table never has more than its slots.
    #[test]
    fn any_request_leaves_routing_sound(
        headers in proptest::collection::vec(
            (proptest::sample::select(HEADERS.to_vec()), value()),
            0..8,
        ),
        inbound in any::<bool>(),
        own_env in proptest::option::of(proptest::sample::select(vec!["dev", "dev.proj1", "bad..env"])),
    ) {
        let cfg = seed_config();
        let node = Node {
            namespace: "default".into(),
            own_env: cfg.own_env(own_env.map(String::from)),
        };
        let mut host = MockHost::new();
        for (name, value) in &headers {
            host = host.with_raw_header(name, value);
        }
        let direction = if inbound { Direction::Inbound } else { Direction::Outbound };
        cfg.on_request_headers(&node, direction, &mut host);
        let original = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_slice());
        if let Some(route) = host.header_bytes(ROUTE) {
            prop_assert!(!inbound || original(ROUTE) == Some(route));
            if !inbound {
                let route = std::str::from_utf8(route).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let authority = original(":authority").unwrap_or_default().to_ascii_lowercase();
                let allowed: &[&str] = if authority.starts_with(b"app-a") { &["dev", "dev.proj1"] } else { &["dev"] };
                prop_assert!(allowed.contains(&route), "{route} for {:?}", String::from_utf8_lossy(&authority));
            }
        }
        // Into the peer namespace: only the peer's route header, only an env it has there;
        // the peer's header is never set for a call elsewhere.
        if !inbound {
            let authority = original(":authority").unwrap_or_default().to_ascii_lowercase();
            let to_pay = authority.starts_with(b"ledger.pay");
            if let Some(route) = host.header_bytes(PAY_ROUTE) {
                if original(PAY_ROUTE) != Some(route) || to_pay {
                    prop_assert!(to_pay && route == b"dev.proj1", "{:?}", String::from_utf8_lossy(route));
                }
            }
            if to_pay {
                prop_assert!(host.header_bytes(ROUTE).is_none());
            }
        }
        if let Some(env) = host.header_bytes("x-virtual-env") {
            if original("x-virtual-env") != Some(env) {
                let env = std::str::from_utf8(env).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(validate_env_name(env, '.').is_ok(), "{env}");
            }
        }
        let slots = host.shared.borrow().keys().filter(|k| k.starts_with(SLOT_KEY_PREFIX)).count();
        prop_assert!(slots <= 8);
    }
}

/// A gateway's config with a cookie pattern and `edge` (allowList of `dev` and
/// `dev.public`, or strip).
fn edge_config(strip: bool) -> FilterConfig {
    let edge = if strip {
        r#"{"mode": "strip"}"#
    } else {
        r#"{"mode": "allowList", "allow": ["dev", "dev.public"]}"#
    };
    let json = format!(
        r#"{{"routeHeader": "{ROUTE}", "headerAliases": ["x-env"], "direction": "outbound",
            "headerPatterns": [{{"name": "cookie", "pattern": ".*env=(@);?.*"}}],
            "correlationSlots": 0, "defaultSubset": "dev",
            "services": {{"app-a.default.svc.cluster.local": ["dev", "dev.public", "dev.secret"]}},
            "hosts": {{"shop.example.com": "app-a.default.svc.cluster.local"}},
            "edgeTrust": {edge}}}"#
    );
    let config = PluginConfig::from_json(json.as_bytes()).expect("a valid config");
    FilterConfig::new(&config, None)
}

/// A carrier line as a hostile client writes one: envs admitted or not (or invalid) in
/// every spelling the carriers take, or arbitrary bytes.
fn carrier_line() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let env = proptest::sample::select(vec![
        "dev",
        "dev.public",
        "dev.secret",
        "dev.public.x",
        "bad..env",
        "",
    ]);
    let template = proptest::sample::select(vec![
        "{}",
        "virtual-env={}",
        "a=b, virtual-env={};p=1",
        "virtual-env = {} ,virtual-env={}",
        "env={}; theme=dark",
        "session=1; env={}",
        "env=\"{}\"",
        "env = {}; a=1",
        "env=dev%2E{}",
        "env=env={}{}",
        "{};env={}",
    ]);
    let name = proptest::sample::select(vec![
        "x-virtual-env",
        "x-env",
        "baggage",
        "cookie",
        ":authority",
    ]);
    prop_oneof![
        4 => (name.clone(), template, env.clone(), env).prop_map(|(name, t, a, b)| {
            let mut parts = t.splitn(3, "{}");
            let line = format!(
                "{}{}{}{}{}",
                parts.next().unwrap_or(""),
                a,
                parts.next().unwrap_or(""),
                b,
                parts.next().unwrap_or("")
            );
            // A template with one placeholder: the second env is not used.
            let line = if t.matches("{}").count() == 1 {
                t.replace("{}", a)
            } else {
                line
            };
            (name, line.into_bytes())
        }),
        1 => (name, value()),
    ]
}

proptest! {
    #![proptest_config(cases())]

    /// Whatever lines of whatever carriers a client sends through a gateway whose edge
    /// policy is allowList or strip, the request the application receives holds no env
    /// the gateway does not admit, read in any of the ways a reader might: each line of
    /// the env header and alias, every baggage member under the key, every place the
    /// cookie pattern lets an env stand; also after joining repeated lines, as
    /// applications' HTTP libraries do. And the route is one the gateway admits.
    #[test]
    fn no_env_passes_the_edge_unadmitted(
        lines in proptest::collection::vec(carrier_line(), 0..10),
        strip in any::<bool>(),
    ) {
        let cfg = edge_config(strip);
        let admitted = |env: &str| !strip && (env == "dev" || env == "dev.public");
        let mut host = MockHost::new().with_header(":authority", "shop.example.com");
        for (name, value) in &lines {
            host = host.with_raw_header(name, value);
        }
        let gateway = Node { namespace: "istio-system".into(), own_env: None };
        cfg.on_request_headers(&gateway, Direction::Outbound, &mut host);

        for name in ["x-virtual-env", "x-env"] {
            for line in host.header_lines(name) {
                prop_assert!(admitted(&line), "{name}: {line:?} from {lines:?}");
            }
        }
        let baggage = host.header_lines("baggage").join(",");
        for member in baggage.split(',') {
            let member = member.split(';').next().unwrap_or("");
            if let Some((k, v)) = member.split_once('=') {
                if k.trim() == "virtual-env" {
                    let env = baggage_member(member, "virtual-env");
                    prop_assert!(
                        env.as_deref().is_some_and(admitted),
                        "baggage {v:?} in {baggage:?} from {lines:?}"
                    );
                }
            }
        }
        let cookie = host.header_lines("cookie").join("; ");
        let pattern = virtual_env_core::pattern::EnvPattern::parse(".*env=(@);?.*", "(@)")
            .expect("a valid pattern");
        let found = pattern
            .occurrences(&cookie, virtual_env_core::pattern::MAX_EDGE_VALUE_LEN)
            .unwrap_or_default();
        for (i, j) in found {
            prop_assert!(admitted(&cookie[i..j]), "cookie {cookie:?} from {lines:?}");
        }
        // Read leniently too (quotes and spaces dropped, %XX decoded), as some readers do.
        let lenient = crate::edge::leniently_read(&cookie);
        let found = pattern
            .occurrences(&lenient, virtual_env_core::pattern::MAX_EDGE_VALUE_LEN)
            .unwrap_or_default();
        for (i, j) in found {
            prop_assert!(admitted(&lenient[i..j]), "cookie {lenient:?} from {lines:?}");
        }
        let route = host.header(ROUTE).unwrap_or("dev");
        prop_assert!(route == "dev" || admitted(route), "routed to {route}");
    }
}
