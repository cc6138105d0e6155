//! Which Istio API carries the plugin objects. WasmPlugin is served by every Istio with
//! Wasm support; Istio 1.30 introduced TrafficExtension (`extensions.istio.io/v1alpha1`),
//! which replaces it as the primary extension API (and also reaches ambient-mode
//! waypoints). The controller writes TrafficExtensions where the cluster serves them
//! (found at start-up, or forced by `--extension-api`) and WasmPlugins elsewhere.
//!
//! Planning always builds WasmPlugin objects; [`traffic_extension`] translates one into
//! the same plugin object in the newer API, field for field.

use kube::ResourceExt;

use crate::existing::Kind;
use crate::gamma::GatewayApi;
use crate::istio::{TrafficExtension, TrafficExtensionSpec, WasmConfig, WasmPlugin};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExtensionApi {
    #[default]
    WasmPlugin,
    TrafficExtension,
}

impl ExtensionApi {
    /// The kind of the plugin objects written.
    pub fn kind(self) -> Kind {
        match self {
            ExtensionApi::WasmPlugin => Kind::WasmPlugin,
            ExtensionApi::TrafficExtension => Kind::TrafficExtension,
        }
    }

    /// From the resources the cluster serves in `extensions.istio.io` (plural names):
    /// TrafficExtension where it is served.
    pub fn detect<'a>(served: impl IntoIterator<Item = &'a str>) -> Self {
        if served.into_iter().any(|r| r == "trafficextensions") {
            ExtensionApi::TrafficExtension
        } else {
            ExtensionApi::WasmPlugin
        }
    }

    /// What a discovery of `extensions.istio.io` says: the API where it answered; WasmPlugin
    /// where the group is not served at all (404); `None` for any other failure (a
    /// timeout, a 5xx, a refused connection), which must be retried, not taken as "no
    /// TrafficExtension": writing WasmPlugins beside the TrafficExtensions of an earlier run
    /// would load the filter twice and leave those unpruned.
    pub fn from_discovery(result: Result<Vec<&str>, &kube::Error>) -> Option<Self> {
        served_or_retry(result).map(Self::detect)
    }

    /// The Istio kinds the controller watches with this API: after a switch to
    /// TrafficExtension it still reads WasmPlugins, to prune the ones it wrote before.
    pub fn watched_kinds(self, gateway_api: Option<GatewayApi>) -> Vec<Kind> {
        let mut kinds = vec![
            Kind::VirtualService,
            Kind::DestinationRule,
            Kind::WasmPlugin,
            Kind::Gateway,
        ];
        if self == ExtensionApi::TrafficExtension {
            kinds.push(Kind::TrafficExtension);
        }
        // Users' routes hold services as their VirtualServices do, and ours are pruned.
        // Gateway API's Gateways, for entry when routes are HTTPRoutes.
        if let Some(gateway_api) = gateway_api {
            if gateway_api.gateways {
                kinds.push(Kind::KubernetesGateway);
            }
            kinds.push(Kind::HttpRoute);
            if gateway_api.grpc_route {
                kinds.push(Kind::GrpcRoute);
            }
        }
        kinds
    }
}

/// What a discovery of an API group says: what it serves where it answered, nothing where
/// the group is not served at all (404); `None` for any other failure (a timeout, a 5xx,
/// a refused connection), which must be retried, not taken as "not served".
pub fn served_or_retry<T>(result: Result<Vec<T>, &kube::Error>) -> Option<Vec<T>> {
    match result {
        Ok(served) => Some(served),
        // The group is not served: kube's discovery says so with MissingApiGroup.
        Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))) => {
            Some(Vec::new())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Some(Vec::new()),
        Err(_) => None,
    }
}

/// The same plugin object as a TrafficExtension.
pub fn traffic_extension(plugin: &WasmPlugin) -> TrafficExtension {
    let spec = &plugin.spec;
    let mut object = TrafficExtension::new(
        &plugin.name_any(),
        TrafficExtensionSpec {
            selector: spec.selector.clone(),
            traffic_selectors: spec.traffic_selectors.clone(),
            target_refs: spec.target_refs.clone(),
            // The two APIs spell the default phase differently; ours are AUTHN or none.
            phase: spec.phase.clone(),
            wasm: WasmConfig {
                url: spec.url.clone(),
                sha256: spec.sha256.clone(),
                fail_strategy: spec.fail_strategy.clone(),
                plugin_config: spec.plugin_config.clone(),
            },
        },
    );
    object.metadata = plugin.metadata.clone();
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{seed_snapshot, seed_ve, settings};
    use crate::plan::plan_namespace;

    #[test]
    fn only_a_definite_answer_decides_the_api() {
        assert_eq!(
            ExtensionApi::from_discovery(Ok(vec!["wasmplugins", "trafficextensions"])),
            Some(ExtensionApi::TrafficExtension)
        );
        let status = |code| {
            kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert_eq!(
            ExtensionApi::from_discovery(Err(&status(404))),
            Some(ExtensionApi::WasmPlugin)
        );
        // What kube's discovery returns for a group the cluster does not serve.
        let missing = kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(
            "extensions.istio.io".into(),
        ));
        assert_eq!(
            ExtensionApi::from_discovery(Err(&missing)),
            Some(ExtensionApi::WasmPlugin)
        );
        assert_eq!(ExtensionApi::from_discovery(Err(&status(503))), None);
        assert_eq!(
            ExtensionApi::from_discovery(Err(&kube::Error::LinesCodecMaxLineLengthExceeded)),
            None
        );
    }

    #[test]
    fn traffic_extensions_are_detected_by_what_the_cluster_serves() {
        assert_eq!(
            ExtensionApi::detect(["wasmplugins", "trafficextensions"]),
            ExtensionApi::TrafficExtension
        );
        assert_eq!(
            ExtensionApi::detect(["wasmplugins"]),
            ExtensionApi::WasmPlugin
        );
        assert_eq!(ExtensionApi::detect([]), ExtensionApi::WasmPlugin);
    }

    #[test]
    fn a_traffic_extension_carries_the_plugin_objects_fields() {
        let plan = plan_namespace(&seed_ve(), &seed_snapshot(), &settings()).unwrap();
        let wp = &plan.wasm_plugin;
        let te = traffic_extension(wp);
        let json = serde_json::to_value(&te).unwrap();
        assert_eq!(json["apiVersion"], "extensions.istio.io/v1alpha1");
        assert_eq!(json["kind"], "TrafficExtension");
        assert_eq!(
            json["metadata"],
            serde_json::to_value(&wp.metadata).unwrap()
        );
        assert_eq!(
            json["spec"]["match"],
            serde_json::json!([{"mode": "CLIENT"}])
        );
        assert_eq!(json["spec"]["wasm"]["url"], wp.spec.url);
        assert_eq!(json["spec"]["wasm"]["failStrategy"], "FAIL_OPEN");
        assert_eq!(json["spec"]["wasm"]["pluginConfig"], wp.spec.plugin_config);
        assert!(json["spec"]["url"].is_null());
    }
}
