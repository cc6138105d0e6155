//! Fuzzing of core's parsers with arbitrary input, and the routing invariants as
//! properties. A bounded run is part of `cargo test`; `make fuzz` runs many more cases
//! (`PROPTEST_CASES`). A failing case is saved by proptest under `proptest-regressions/`
//! (committed, so it is replayed first forever after) and gets a unit test of its own.

use proptest::prelude::*;

use crate::env::{lineage, validate_env_name, MAX_ENV_LEN};
use crate::routing::{Choice, RouteTable, Target};
use crate::service::{lowercase, ServiceHost};
use crate::PluginConfig;

/// Cases per property: `PROPTEST_CASES`, else a quick default for `cargo test`.
pub fn cases() -> ProptestConfig {
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

/// Strings from the characters env names, hosts and configs are made of, and some that
/// are not, so that both sides of every check are reached.
fn texty() -> BoxedStrategy<String> {
    proptest::string::string_regex("[a-zA-Z0-9._:\\-\\[\\]% ,;=|\u{e9}\u{0}]{0,80}")
        .expect("a valid regex")
        .boxed()
}

fn bytes_as_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u8>(), 0..120)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A `peers` value: namespaces (some valid) with route headers, default subsets and
/// services of arbitrary text, sometimes a field of the wrong type or an unknown one.
fn peers_shaped() -> BoxedStrategy<serde_json::Value> {
    let peer = (
        texty(),
        proptest::option::of(texty()),
        proptest::collection::btree_map(texty(), proptest::collection::vec(texty(), 0..3), 0..3),
        proptest::sample::select(vec!["", "serviceEnvs", "colour"]),
    )
        .prop_map(|(route_header, default_subset, services, extra)| {
            let mut peer = serde_json::json!({"routeHeader": route_header, "services": services});
            if let Some(d) = default_subset {
                peer["defaultSubset"] = d.into();
            }
            if !extra.is_empty() {
                peer[extra] = serde_json::json!([0]);
            }
            peer
        });
    let namespace = prop_oneof![
        proptest::sample::select(vec!["pay", "default", "team-1"]).prop_map(String::from),
        texty()
    ];
    proptest::collection::btree_map(namespace, peer, 0..3)
        .prop_map(|m| serde_json::json!(m))
        .boxed()
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn env_names_never_panic_and_valid_ones_walk_valid_ancestors(
        name in prop_oneof![texty(), bytes_as_text()],
        splitter in proptest::sample::select(vec!['.', '-', '_']),
    ) {
        if validate_env_name(&name, splitter).is_ok() {
            prop_assert!(name.len() <= MAX_ENV_LEN);
            let mut previous: Option<&str> = None;
            for ancestor in lineage(&name, splitter) {
                prop_assert!(validate_env_name(ancestor, splitter).is_ok(), "{ancestor}");
                prop_assert!(name.starts_with(ancestor));
                if let Some(p) = previous {
                    prop_assert!(ancestor.len() < p.len());
                }
                previous = Some(ancestor);
            }
        }
    }

    #[test]
    fn hosts_never_panic_and_parse_to_labels(
        authority in prop_oneof![texty(), bytes_as_text()],
    ) {
        let lower = lowercase(&authority);
        if let Some(host) = ServiceHost::parse(&lower) {
            for label in [Some(host.name), host.namespace].into_iter().flatten() {
                prop_assert!(!label.is_empty() && label.len() <= 63);
                prop_assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }
    }

    #[test]
    fn plugin_configs_from_arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let _ = PluginConfig::from_json(&bytes);
    }

    #[test]
    fn plugin_configs_from_json_shaped_input_are_usable_or_rejected(
        fields in proptest::collection::btree_map(
            proptest::sample::select(vec![
                "envHeader", "routeHeader", "envLabel", "splitter", "defaultSubset",
                "autoInject", "headerAliases", "baggageKey", "traceHeaders",
                "correlationSlots", "correlationTtlSeconds", "clusterDomain", "services",
                "peers", "unknownField",
            ]),
            prop_oneof![
                peers_shaped(),
                texty().prop_map(serde_json::Value::String),
                any::<bool>().prop_map(serde_json::Value::Bool),
                any::<u32>().prop_map(serde_json::Value::from),
                proptest::collection::vec(texty(), 0..4).prop_map(|v| serde_json::json!(v)),
                proptest::collection::btree_map(texty(), proptest::collection::vec(texty(), 0..3), 0..3)
                    .prop_map(|m| serde_json::json!(m)),
            ],
            0..6,
        ),
    ) {
        let json = serde_json::to_vec(&fields).unwrap_or_default();
        if let Ok(config) = PluginConfig::from_json(&json) {
            // Usable: valid, and the same after a round trip.
            prop_assert!(config.validate().is_ok());
            let again = PluginConfig::from_json(config.to_json().as_bytes());
            prop_assert_eq!(again.ok(), Some(config.clone()));
            let table = RouteTable::new(&config);
            let peer_services: usize = config.peers.values().map(|p| p.services.len()).sum();
            prop_assert!(table.len() <= config.services.len() + peer_services);
            // The compact form reads back as the same config, peers included.
            let compact = config.compacted().to_json();
            prop_assert_eq!(PluginConfig::from_json(compact.as_bytes()).ok(), Some(config));
        }
    }

    /// A peer namespace's service is walked with the peer's default subset and routed in
    /// the peer's route header; the own namespace's keep the own ones.
    #[test]
    fn a_peers_services_are_routed_by_the_peers_settings(
        own_envs in proptest::collection::btree_set(
            proptest::sample::select(vec!["dev", "dev.p1", "qa"]), 0..3),
        peer_envs in proptest::collection::btree_set(
            proptest::sample::select(vec!["dev", "dev.p1", "qa"]), 0..3),
        own_default in proptest::option::of(proptest::sample::select(vec!["dev", "qa"])),
        peer_default in proptest::option::of(proptest::sample::select(vec!["dev", "qa"])),
        env in proptest::option::of(proptest::sample::select(vec!["dev.p1.u1", "qa.x", "other"])),
    ) {
        let to_vec = |envs: &std::collections::BTreeSet<&str>| envs.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let json = serde_json::json!({
            "routeHeader": "x-route-own",
            "defaultSubset": own_default,
            "services": {"a.own.svc.cluster.local": to_vec(&own_envs)},
            "peers": {"pay": {"routeHeader": "x-route-pay", "defaultSubset": peer_default,
                              "services": {"a": to_vec(&peer_envs)}}}
        });
        let config = PluginConfig::from_json(json.to_string().as_bytes()).expect("valid");
        let table = RouteTable::new(&config);
        for (host, envs, default, header) in [
            ("a", &own_envs, own_default, None),
            ("a.pay", &peer_envs, peer_default, Some("x-route-pay")),
        ] {
            let Target::Service(service) = table.target(host, "own") else {
                return Err(TestCaseError::fail(format!("{host} not found")));
            };
            prop_assert_eq!(table.peer_route_header(service), header);
            let walked = env.and_then(|e| lineage(e, '.').find(|a| envs.contains(a)));
            let want = walked
                .map(Choice::Fallback)
                .or_else(|| default.filter(|d| envs.contains(d)).map(Choice::Default))
                .unwrap_or(Choice::None);
            prop_assert_eq!(table.choose(service, env), want, "{}", host);
        }
    }

    /// The chosen env is one the service has, or the default subset, or nothing; it is
    /// the deepest ancestor of the request's env that the service has.
    #[test]
    fn the_walk_chooses_the_deepest_env_the_service_has(
        services in proptest::collection::btree_map(
            "[a-c]",
            proptest::collection::btree_set(
                proptest::sample::select(vec!["dev", "dev.p1", "dev.p1.u1", "dev.p2", "qa", "qa.x"]),
                0..5,
            ),
            1..4,
        ),
        default_subset in proptest::option::of(proptest::sample::select(vec!["dev", "qa"])),
        env in proptest::option::of(proptest::sample::select(vec![
            "dev", "dev.p1", "dev.p1.u1", "dev.p1.u2", "dev.p2.u1", "qa.x.y", "other",
        ])),
    ) {
        let mut config = PluginConfig {
            default_subset: default_subset.map(String::from),
            ..PluginConfig::default()
        };
        for (svc, envs) in &services {
            config.services.insert(
                format!("{svc}.ns.svc.cluster.local"),
                envs.iter().map(|e| e.to_string()).collect(),
            );
        }
        prop_assert!(config.validate().is_ok());
        let table = RouteTable::new(&config);
        for (svc, envs) in &services {
            let Target::Service(service) = table.target(&format!("{svc}.ns"), "x") else {
                return Err(TestCaseError::fail(format!("{svc} not found")));
            };
            let want = env
                .and_then(|e| lineage(e, '.').find(|a| envs.contains(a)))
                .map(|a| if Some(a) == env { Choice::Exact(a) } else { Choice::Fallback(a) })
                .or_else(|| default_subset.filter(|d| envs.contains(d)).map(Choice::Default))
                .unwrap_or(Choice::None);
            prop_assert_eq!(table.choose(service, env), want);
            if let Some(chosen) = table.choose(service, env).env() {
                prop_assert!(envs.contains(chosen));
            }
        }
    }
}
