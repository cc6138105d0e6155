//! What the controller's objects carry, whoever builds them: the labels that mark them
//! as virtual-env's, the names of the namespace's plugin objects, where the module comes
//! from, and the plugin config as a plugin object holds it (and what that costs in the
//! stored object). A leaf: it depends on no other module of the controller.

use virtual_env_core::PluginConfig;

/// The label that marks the objects virtual-env manages (and may prune).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "virtual-env";
/// On objects in other namespaces (a gateway's plugin), which cannot have an owner
/// reference: the owning VirtualEnvironment's UID and namespace.
pub const OWNER_UID_LABEL: &str = "env.alibaba.com/owner-uid";
pub const OWNER_NAMESPACE_LABEL: &str = "env.alibaba.com/owner-namespace";
/// The original project's per-service custom route (an Istio HTTPRoute as JSON merged into
/// each generated route). Not applied here; a service that carries it is named in the
/// status, so that a route a user relied on is not dropped silently.
pub const RULE_ANNOTATION: &str = "kt-virtual-environment/rule";
/// The namespace's WasmPlugin for the calling side (outbound listeners and gateways): it
/// routes, and carries the services table.
pub const WASM_PLUGIN_NAME: &str = "virtual-env";
/// The namespace's WasmPlugin for the called side (inbound listeners): it records the env
/// for trace correlation, and needs no services table.
pub const INBOUND_WASM_PLUGIN_NAME: &str = "virtual-env-inbound";

/// Where the sidecars fetch the filter module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmSource {
    pub url: String,
    pub sha256: Option<String>,
}

/// Above this many bytes the plugin config is written in compact form (env names interned):
/// below it, the plain `services` table is easier to read with `kubectl`.
pub const COMPACT_ABOVE_BYTES: usize = 128 * 1024;
/// The most plugin config bytes written into one WasmPlugin: well under the API server's
/// ~1.5 MiB object limit, leaving room for the rest of the object and for etcd's overhead.
pub const MAX_PLUGIN_CONFIG_BYTES: usize = 1024 * 1024;

/// The plugin config as the WasmPlugin carries it: plain, or compact when large.
pub fn plugin_config_value(config: &PluginConfig) -> serde_json::Value {
    if json_len(config) > COMPACT_ABOVE_BYTES {
        serde_json::to_value(config.compacted())
    } else {
        serde_json::to_value(config)
    }
    .unwrap_or_default()
}

/// How many bytes `value` takes as compact JSON, counted without writing them: at 100
/// namespaces a calling side's config with its peers is megabytes, measured in every
/// reconcile.
pub(crate) fn json_len(value: &impl serde::Serialize) -> usize {
    /// Counts what is written to it.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter fails only where serializing itself would.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// What a plugin config costs in the stored object: its own bytes, and the entry
/// server-side apply adds to `metadata.managedFields`, which lists every map key of the
/// config (the field is schemaless, so every object key is tracked; arrays are atomic) as
/// `"f:<key>":{}`. A config of many short keys (a services table) nearly doubles there,
/// and the object must stay under etcd's 1.5 MiB whole.
pub fn stored_bytes(config: &serde_json::Value) -> usize {
    /// The managed-fields entry around the field set: manager, operation, API version,
    /// time, `FieldsV1`, and `{"f:spec":{"f:pluginConfig":...}}`.
    const ENTRY: usize = 256;
    json_len(config) + fields_v1_len(config) + ENTRY
}

/// The length of [`fields_v1`]`(value)` as JSON, without building it.
fn fields_v1_len(value: &serde_json::Value) -> usize {
    let serde_json::Value::Object(map) = value else {
        return 2; // {}
    };
    // `{` `}`, a comma between entries, and per entry `"f:<key>":<child>`: the key as
    // JSON (its quotes and escapes) plus the two characters `f:`.
    let entries: usize = map
        .iter()
        .map(|(key, child)| json_len(key) + 2 + 1 + fields_v1_len(child))
        .sum();
    2 + entries + map.len().saturating_sub(1)
}

/// The field set (`fieldsV1`) server-side apply records for `value`: the model
/// [`fields_v1_len`] counts (tests hold the two together).
#[cfg(test)]
pub(crate) fn fields_v1(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(key, child)| (format!("f:{key}"), fields_v1(child)))
                .collect(),
        ),
        _ => serde_json::json!({}),
    }
}

/// A plugin config read back from a WasmPlugin, in either form.
pub fn plugin_config_of(value: &serde_json::Value) -> Option<PluginConfig> {
    serde_json::from_value::<PluginConfig>(value.clone())
        .ok()?
        .expanded()
        .ok()
}
