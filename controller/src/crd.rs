//! The `VirtualEnvironment` resource (group `env.alibaba.com`, the seed's API).
//!
//! The seed's fields and defaults are kept as they were, so the seed's sample CR applies
//! unchanged; what the filter needs beyond them is optional, with defaults.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use virtual_env_core::config::{
    HeaderPattern, PluginConfig, DEFAULT_BAGGAGE_KEY, DEFAULT_CORRELATION_SLOTS,
    DEFAULT_CORRELATION_TTL_SECONDS, DEFAULT_ENV_LABEL, DEFAULT_ROUTE_HEADER, DEFAULT_SPLITTER,
    DEFAULT_TRACE_HEADERS,
};

/// The seed's default env header spelling.
pub const SEED_ENV_HEADER: &str = "X-Virtual-Env";

#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "env.alibaba.com",
    version = "v1alpha1",
    kind = "VirtualEnvironment",
    plural = "virtualenvironments",
    shortname = "venv",
    namespaced,
    derive = "PartialEq",
    status = "VirtualEnvironmentStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Services","type":"integer","jsonPath":".status.services"}"#,
    printcolumn = r#"{"name":"Envs","type":"integer","jsonPath":".status.envs"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualEnvironmentSpec {
    /// The header that carries the env name along the call chain.
    #[serde(default)]
    pub env_header: EnvHeader,
    /// The pod label that names a pod's env.
    #[serde(default)]
    pub env_label: EnvLabel,
    /// The header the sidecar sets to the chosen env, matched by the VirtualServices.
    #[serde(default)]
    pub route_header: RouteHeader,
    /// Recovering the env from tracing headers when an application drops the env header.
    #[serde(default)]
    pub trace_correlation: TraceCorrelation,
    /// Where sidecars fetch the filter from. Default: the controller serves the module it
    /// was built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_module: Option<WasmModule>,
    /// Services entered through Istio Gateways, as the original project's Service
    /// annotations `kt-virtual-environment/gateways` and `kt-virtual-environment/hosts` say
    /// (both are read; an entry here adds to a service's annotations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayEntry>,
    /// What the gateways do with an env that arrives from outside the mesh. Default:
    /// accept it, as the original project did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_trust: Option<EdgeTrustSpec>,
    /// Which API the routes are written in. Default: Gateway API HTTPRoutes in a
    /// namespace whose pods run in Istio's ambient mode, VirtualServices elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingSpec>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
pub struct RoutingSpec {
    /// `VirtualService` (with DestinationRule subsets) or `HTTPRoute` (Gateway API's mesh
    /// routes, GRPCRoutes for gRPC ports, and one Service per env of a service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<RoutingApi>,
}

/// The API routes are written in.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum RoutingApi {
    VirtualService,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayEntry {
    /// The service, by its name in this namespace.
    pub service: String,
    /// Istio Gateways, as a VirtualService names them: `<namespace>/<name>`, or `<name>`
    /// for one in this namespace.
    pub gateways: Vec<String>,
    /// Hosts the gateways serve the service under (e.g. `demo.example.com`). A preview host
    /// `{env}.preview.example.com` serves every env under its own name
    /// (`dev--proj1.preview.example.com` for `dev.proj1`), as if the env header had said it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeTrustSpec {
    /// `accept` any env, only an `allowList`'s, or `strip` them all.
    pub mode: EdgeTrustMode,
    /// For `allowList`: env names, or prefixes ending in `*` (`dev.proj1.*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow: Vec<String>,
    /// Whether clients from outside may ask the gateways for a routing trace (request
    /// header `x-virtual-env-debug: 1`, answered in `x-virtual-env-trace`). Default: off,
    /// the debug header is removed at the gateway and no trace leaves it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_trace: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EdgeTrustMode {
    Accept,
    AllowList,
    Strip,
}

impl EdgeTrustSpec {
    /// The plugin config's form.
    pub fn to_config(&self) -> virtual_env_core::EdgeTrust {
        virtual_env_core::EdgeTrust {
            mode: match self.mode {
                EdgeTrustMode::Accept => virtual_env_core::EdgeMode::Accept,
                EdgeTrustMode::AllowList => virtual_env_core::EdgeMode::AllowList,
                EdgeTrustMode::Strip => virtual_env_core::EdgeMode::Strip,
            },
            allow: self.allow.clone(),
            allow_trace: self.allow_trace,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvHeader {
    /// Name of header to keep env name in trace.
    #[serde(default = "seed_env_header")]
    pub name: String,
    /// Whether the sidecar injects the pod's own env when a request has none.
    #[serde(default)]
    pub auto_inject: bool,
    /// Other headers that carry the env, tried after `name`: a header name, or (the
    /// original project's v1alpha2 form) `{name, pattern, placeholder}` for an env inside
    /// the header's value, e.g. a cookie.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<HeaderAlias>,
    /// W3C baggage member that carries the env; empty disables baggage.
    #[serde(default = "default_baggage_key")]
    pub baggage_key: String,
}

impl Default for EnvHeader {
    fn default() -> Self {
        Self {
            name: seed_env_header(),
            auto_inject: false,
            aliases: Vec::new(),
            baggage_key: default_baggage_key(),
        }
    }
}

/// One `envHeader.aliases` entry, in either API version's form. An object with a field
/// of neither form (`patern:`) is [`HeaderAlias::Invalid`], reported, never read as a
/// whole-value alias of its `name`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged, deny_unknown_fields)]
pub enum HeaderAlias {
    /// A header whose whole value is the env (v1alpha1).
    Name(String),
    /// The env inside the header's value (v1alpha2): `pattern` is a regular expression
    /// (the subset in `virtual_env_core::pattern`) with `placeholder` (default `(@)`)
    /// where the env stands; an empty pattern is the whole value.
    Pattern {
        name: String,
        #[serde(default)]
        pattern: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        placeholder: Option<String>,
    },
    /// Anything else: the schema cannot reject it (it admits both forms), so it is read
    /// as is, never failing the watch of every VirtualEnvironment, and reported by
    /// planning as an invalid spec.
    Invalid(serde_json::Value),
}

/// Both forms in one schema: a string or an object (so that v1alpha1 and v1alpha2 have
/// the same schema and need no conversion webhook); the controller validates the entry.
impl JsonSchema for HeaderAlias {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HeaderAlias".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A header name, or {name, pattern, placeholder}: the env inside the header's value, matched by pattern (placeholder, default (@), where the env stands)",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvLabel {
    /// Name of pod label to mark virtual environment name.
    #[serde(default = "default_env_label")]
    pub name: String,
    /// Symbol to split virtual environment levels (one of `.`, `-`, `_`).
    #[serde(default = "default_splitter")]
    pub splitter: String,
    /// Env to route to when the request's env matches nothing (empty: the whole service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_subset: Option<String>,
}

impl Default for EnvLabel {
    fn default() -> Self {
        Self {
            name: default_env_label(),
            splitter: default_splitter(),
            default_subset: None,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteHeader {
    /// The route header's name before its per-namespace suffix: the controller appends a
    /// random suffix once (kept in `status.routeHeader`), so that a route header a client
    /// forges, guesses or forwards never selects a route.
    #[serde(default = "default_route_header")]
    pub name: String,
}

impl Default for RouteHeader {
    fn default() -> Self {
        Self {
            name: default_route_header(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceCorrelation {
    /// Headers whose value identifies a trace, in the order they are tried.
    #[serde(default = "default_trace_headers")]
    pub headers: Vec<String>,
    /// Slots of the trace id -> env table in each sidecar; 0 disables correlation.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// How long a recorded trace id keeps its env.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u32,
}

impl Default for TraceCorrelation {
    fn default() -> Self {
        Self {
            headers: default_trace_headers(),
            slots: default_slots(),
            ttl_seconds: default_ttl(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmModule {
    /// `http(s)://`, `oci://` or `file://` URL of the filter module. Used by this
    /// namespace's own plugin objects only: a gateway's in another namespace always loads
    /// the controller's module.
    #[schemars(length(max = 2048), pattern(r"^(oci|https?|file)://[^\s]+$"))]
    pub url: String,
    /// SHA-256 of the module (64 lower-case hex digits), checked by the sidecar when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,
}

impl WasmModule {
    /// What the CRD's schema says, checked again: a cluster may still serve an older CRD,
    /// and `render` reads files. `Err` names the field and what to write instead.
    pub fn validate(&self) -> Result<(), String> {
        let scheme_ok = ["oci://", "https://", "http://", "file://"]
            .iter()
            .any(|scheme| {
                self.url
                    .strip_prefix(scheme)
                    .is_some_and(|rest| !rest.is_empty())
            });
        if !scheme_ok || self.url.len() > 2048 || self.url.contains(char::is_whitespace) {
            return Err(format!(
                "spec.wasmModule.url: {:?} is not an oci://, https://, http:// or file:// URL",
                self.url
            ));
        }
        if let Some(sha) = &self.sha256 {
            if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(format!(
                    "spec.wasmModule.sha256: {sha:?} is not 64 lower-case hex digits"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualEnvironmentStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the routing for the namespace is applied; when False, the reason says why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Services routed by env.
    #[serde(default)]
    pub services: u32,
    /// Envs with ready pods in the namespace.
    #[serde(default)]
    pub envs: u32,
    /// Services left alone, with the reason (e.g. a VirtualService someone else manages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// The route header in force: `spec.routeHeader.name` plus the random suffix chosen
    /// once for this VirtualEnvironment. Kept, so routes and sidecars keep agreeing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_header: Option<String>,
    /// The API the routes are written in. Without `spec.routing.api` it is kept, so that
    /// the default (from the pods' data plane) is decided once and does not flip as pods
    /// come and go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_api: Option<RoutingApi>,
}

/// The original project's last API version, served beside v1alpha1 with the same schema
/// (so a CR written for the original applies unchanged); v1alpha1 is stored, and since the
/// schemas are equal the API server converts between them by changing `apiVersion` only.
pub mod v1alpha2 {
    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    #[derive(
        CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema,
    )]
    #[kube(
        group = "env.alibaba.com",
        version = "v1alpha2",
        kind = "VirtualEnvironment",
        plural = "virtualenvironments",
        shortname = "venv",
        namespaced,
        derive = "PartialEq",
        status = "super::VirtualEnvironmentStatus",
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Services","type":"integer","jsonPath":".status.services"}"#,
        printcolumn = r#"{"name":"Envs","type":"integer","jsonPath":".status.envs"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )]
    pub struct VirtualEnvironmentSpec {
        #[serde(flatten)]
        pub spec: super::VirtualEnvironmentSpec,
    }
}

/// The CRD: v1alpha1 (stored) and v1alpha2, one schema.
pub fn custom_resource_definition(
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    // Both come from derives of one group, kind and scope: the merge cannot fail.
    kube::core::crd::merge_crds(
        vec![
            VirtualEnvironment::crd(),
            v1alpha2::VirtualEnvironment::crd(),
        ],
        "v1alpha1",
    )
    .unwrap_or_else(|_| VirtualEnvironment::crd())
}

/// Length of the route header's random suffix: 12 of `[a-z0-9]`, about 62 bits.
pub const ROUTE_HEADER_SUFFIX_LEN: usize = 12;

impl VirtualEnvironment {
    /// The route header recorded in the status, if it still belongs to the spec's name.
    pub fn route_header_in_force(&self) -> Option<&str> {
        let prefix = self.spec.route_header.name.to_ascii_lowercase();
        self.status
            .as_ref()?
            .route_header
            .as_deref()
            .filter(|name| {
                name.strip_prefix(prefix.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|suffix| {
                        suffix.len() == ROUTE_HEADER_SUFFIX_LEN
                            && suffix
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    })
            })
    }

    /// This VirtualEnvironment with a route header in force: the recorded one, or the
    /// spec's name plus a suffix made from `entropy` (random in the controller; a stable
    /// stand-in offline).
    pub fn with_route_header(mut self, entropy: [u8; ROUTE_HEADER_SUFFIX_LEN]) -> Self {
        if self.route_header_in_force().is_none() {
            const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let suffix: String = entropy
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
                .collect();
            let name = format!(
                "{}-{suffix}",
                self.spec.route_header.name.to_ascii_lowercase()
            );
            self.status
                .get_or_insert_with(Default::default)
                .route_header = Some(name);
        }
        self
    }
}

impl VirtualEnvironmentSpec {
    /// The filter's settings; the `services` table is filled in by planning, and the route
    /// header is the spec's name until planning puts the one in force.
    pub fn plugin_config(&self) -> PluginConfig {
        // Whole-value aliases (a name, or a pattern left empty) and pattern aliases.
        let mut header_aliases = Vec::new();
        let mut header_patterns = Vec::new();
        for alias in &self.env_header.aliases {
            match alias {
                HeaderAlias::Name(name) => header_aliases.push(name.clone()),
                HeaderAlias::Pattern { name, pattern, .. } if pattern.is_empty() => {
                    header_aliases.push(name.clone())
                }
                HeaderAlias::Pattern {
                    name,
                    pattern,
                    placeholder,
                } => header_patterns.push(HeaderPattern {
                    name: name.clone(),
                    pattern: pattern.clone(),
                    placeholder: placeholder.clone().unwrap_or_else(|| {
                        virtual_env_core::pattern::DEFAULT_PLACEHOLDER.to_owned()
                    }),
                }),
                // Reported by planning as an invalid spec.
                HeaderAlias::Invalid(_) => {}
            }
        }
        PluginConfig {
            env_header: self.env_header.name.clone(),
            route_header: self.route_header.name.clone(),
            env_label: self.env_label.name.clone(),
            splitter: self.env_label.splitter.clone(),
            default_subset: self
                .env_label
                .default_subset
                .clone()
                .filter(|s| !s.is_empty()),
            auto_inject: self.env_header.auto_inject,
            header_aliases,
            header_patterns,
            baggage_key: self.env_header.baggage_key.clone(),
            trace_headers: self.trace_correlation.headers.clone(),
            correlation_slots: self.trace_correlation.slots,
            correlation_ttl_seconds: self.trace_correlation.ttl_seconds,
            cluster_domain: None,
            direction: None,
            services: Default::default(),
            // Both only in gateways' plugin objects, which planning fills in.
            hosts: Default::default(),
            preview_hosts: Default::default(),
            preview_trust: None,
            edge_trust: None,
            // Only in a gateway owner's edge guard (see `edge_guard.rs`).
            edge_carriers: Default::default(),
            // Filled in by the controller from the other namespaces' plans.
            peers: Default::default(),
            env_names: Vec::new(),
            service_envs: Default::default(),
            // Only in waypoints' plugin objects, which planning fills in.
            workloads: Default::default(),
        }
    }
}

fn seed_env_header() -> String {
    SEED_ENV_HEADER.into()
}
fn default_baggage_key() -> String {
    DEFAULT_BAGGAGE_KEY.into()
}
fn default_env_label() -> String {
    DEFAULT_ENV_LABEL.into()
}
fn default_splitter() -> String {
    DEFAULT_SPLITTER.into()
}
fn default_route_header() -> String {
    DEFAULT_ROUTE_HEADER.into()
}
fn default_trace_headers() -> Vec<String> {
    DEFAULT_TRACE_HEADERS.map(String::from).to_vec()
}
fn default_slots() -> u32 {
    DEFAULT_CORRELATION_SLOTS
}
fn default_ttl() -> u32 {
    DEFAULT_CORRELATION_TTL_SECONDS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's sample CR, verbatim.
    pub const SEED_SAMPLE: &str = r#"
apiVersion: env.alibaba.com/v1alpha1
kind: VirtualEnvironment
metadata:
  name: example-virtualenv
spec:
  envHeader:
    name: X-Virtual-Env
    autoInject: true
  envLabel:
    name: virtual-env
    splitter: .
    defaultSubset: dev
"#;

    #[test]
    fn the_seed_sample_parses_with_its_meaning() {
        let ve: VirtualEnvironment = serde_yaml::from_str(SEED_SAMPLE).unwrap();
        let config = ve.spec.plugin_config();
        config.validate().unwrap();
        assert_eq!(config.env_header, "X-Virtual-Env");
        assert!(config.auto_inject);
        assert_eq!(config.env_label, "virtual-env");
        assert_eq!(config.splitter, ".");
        assert_eq!(config.default_subset.as_deref(), Some("dev"));
    }

    #[test]
    fn the_route_header_suffix_is_chosen_once_and_kept() {
        let ve: VirtualEnvironment = serde_yaml::from_str(SEED_SAMPLE).unwrap();
        assert_eq!(ve.route_header_in_force(), None);
        let ve = ve.with_route_header([7; ROUTE_HEADER_SUFFIX_LEN]);
        let name = ve.route_header_in_force().unwrap().to_owned();
        assert_eq!(name, "x-virtual-env-route-hhhhhhhhhhhh");
        // Other entropy later changes nothing: the recorded one stays.
        let ve = ve.with_route_header([1; ROUTE_HEADER_SUFFIX_LEN]);
        assert_eq!(ve.route_header_in_force(), Some(name.as_str()));
        // A spec that renames the header gets a new one.
        let mut renamed = ve.clone();
        renamed.spec.route_header.name = "x-route".into();
        assert_eq!(renamed.route_header_in_force(), None);
        let renamed = renamed.with_route_header([1; ROUTE_HEADER_SUFFIX_LEN]);
        assert_eq!(
            renamed.route_header_in_force(),
            Some("x-route-bbbbbbbbbbbb")
        );
    }

    #[test]
    fn an_empty_spec_takes_the_seed_table_defaults() {
        let ve: VirtualEnvironment = serde_yaml::from_str(
            "apiVersion: env.alibaba.com/v1alpha1\nkind: VirtualEnvironment\nmetadata: {name: x}\nspec: {}\n",
        )
        .unwrap();
        let config = ve.spec.plugin_config();
        assert_eq!(config.env_header, "X-Virtual-Env");
        assert!(!config.auto_inject);
        assert_eq!(config.env_label, "virtual-env");
        assert_eq!(config.splitter, ".");
        assert_eq!(config.default_subset, None);
        assert_eq!(config.route_header, "x-virtual-env-route");
    }
}
