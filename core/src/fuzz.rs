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
                "unknownField",
            ]),
            prop_oneof![
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
            prop_assert!(table.len() <= config.services.len());
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
