//! The built `.wasm` in a real Envoy (`$ENVOY`), driven by real HTTP requests.
//!
//! `make test` runs this suite once per supported Envoy version, so that route re-selection
//! after the filter sets the route header is proven on each of them.

use anyhow::Result;
use virtual_env_e2e::http::Protocol;
use virtual_env_e2e::sidecar::{Sidecar, PLAIN_ROUTE_HEADER, ROUTE_HEADER};

const ENVS: &[&str] = &["dev", "dev.proj1", "dev.proj1.user1"];
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The seed's services: A and C have `dev.proj1` pods, B only `dev`; C also has a user env.
fn config(extra: &str) -> String {
    format!(
        r#"{{ {extra} "routeHeader": "{ROUTE_HEADER}", "services": {{
            "app-a.default.svc.cluster.local": ["dev", "dev.proj1"],
            "app-b.default.svc.cluster.local": ["dev"],
            "app-c.default.svc.cluster.local": ["dev", "dev.proj1", "dev.proj1.user1"]
        }} }}"#
    )
}

#[tokio::test]
async fn the_env_header_selects_the_route_and_falls_back_across_three_levels() -> Result<()> {
    let sidecar = Sidecar::start("dev", ENVS, &config("")).await?;
    let env = [("x-virtual-env", "dev.proj1.user1")];
    assert_eq!(sidecar.route("app-c", &env).await?, "dev.proj1.user1");
    assert_eq!(
        sidecar.route("app-a.default:8080", &env).await?,
        "dev.proj1"
    );
    assert_eq!(
        sidecar
            .route("app-b.default.svc.cluster.local", &env)
            .await?,
        "dev"
    );
    let seed = [("x-virtual-env", "dev.proj1")];
    assert_eq!(sidecar.route("app-a", &seed).await?, "dev.proj1");
    assert_eq!(sidecar.route("app-b", &seed).await?, "dev");
    assert_eq!(sidecar.route("app-c", &seed).await?, "dev.proj1");
    // No env, no auto-inject, no default subset: the service's default route.
    assert_eq!(sidecar.route("app-a", &[]).await?, "default");

    let stat = |s: &str| format!("wasmcustom.virtual_env.{s}");
    assert_eq!(
        sidecar
            .envoy
            .stat_eventually(&stat("env_source.header"), 6)
            .await?,
        6
    );
    assert_eq!(
        sidecar
            .envoy
            .stat_eventually(&stat("route.exact"), 3)
            .await?,
        3
    );
    assert_eq!(
        sidecar
            .envoy
            .stat_eventually(&stat("route.fallback"), 3)
            .await?,
        3
    );
    assert_eq!(
        sidecar
            .envoy
            .stat_eventually(&stat("route.none"), 1)
            .await?,
        1
    );
    assert_eq!(sidecar.envoy.stat(&stat("config.loaded")).await?, 1);
    Ok(())
}

#[tokio::test]
async fn the_configs_direction_decides_the_side_not_the_listener() -> Result<()> {
    let env = [("x-virtual-env", "dev.proj1")];
    let outbound = Sidecar::start("dev", ENVS, &config(r#""direction": "outbound","#)).await?;
    assert_eq!(outbound.route("app-a", &env).await?, "dev.proj1");
    // The called side's config, even on an outbound listener, records and routes nothing.
    let inbound = Sidecar::start("dev", ENVS, &config(r#""direction": "inbound","#)).await?;
    assert_eq!(inbound.route("app-a", &env).await?, "default");
    Ok(())
}

/// A gateway's plugin config: the seed's table, `demo.example.com` reaching app-a, the
/// default subset `dev`, and `edge` (an `edgeTrust` or nothing).
fn gateway_config(edge: &str) -> String {
    config(&format!(
        r#""direction": "outbound", "defaultSubset": "dev",
           "hosts": {{"demo.example.com": "app-a.default.svc.cluster.local"}}, {edge}"#
    ))
}

#[tokio::test]
async fn a_gateway_routes_its_hosts_by_env_within_its_edge_trust() -> Result<()> {
    let env = [("x-virtual-env", "dev.proj1.user1")];
    let accept = Sidecar::start("", ENVS, &gateway_config("")).await?;
    let r = accept.call("demo.example.com", &env).await?;
    assert_eq!(r.text(), "dev.proj1", "fallback through a gateway host");
    assert_eq!(r.header("x-seen-env"), Some("dev.proj1.user1"));
    assert_eq!(accept.route("demo.example.com:443", &[]).await?, "dev");

    let listed = r#""edgeTrust": {"mode": "allowList", "allow": ["dev.proj1.*"]},"#;
    let allow = Sidecar::start("", ENVS, &gateway_config(listed)).await?;
    assert_eq!(allow.route("demo.example.com", &env).await?, "dev.proj1");
    let r = allow
        .call(
            "demo.example.com",
            &[
                ("x-virtual-env", "dev.proj1"),
                ("baggage", "virtual-env=dev.proj1,k=v"),
            ],
        )
        .await?;
    assert_eq!(r.text(), "dev", "not listed: removed, the default subset");
    assert_eq!(r.header("x-seen-env"), None, "no env left for the next hop");

    let strip = Sidecar::start(
        "",
        ENVS,
        &gateway_config(r#""edgeTrust": {"mode": "strip"},"#),
    )
    .await?;
    let r = strip.call("demo.example.com", &env).await?;
    assert_eq!(r.text(), "dev");
    assert_eq!(r.header("x-seen-env"), None);
    assert_eq!(strip.route("demo.example.com", &env).await?, "dev");
    assert_eq!(
        strip
            .envoy
            .stat_eventually("wasmcustom.virtual_env.edge.env_removed", 2)
            .await?,
        2,
        "the two requests with an env"
    );
    Ok(())
}

#[tokio::test]
async fn the_compact_services_table_routes_the_same() -> Result<()> {
    // What the controller writes for a large namespace: env names once, indices per service.
    let compact = format!(
        r#"{{ "routeHeader": "{ROUTE_HEADER}", "envNames": ["dev", "dev.proj1", "dev.proj1.user1"],
            "serviceEnvs": {{
                "app-a.default.svc.cluster.local": [0, 1],
                "app-b.default.svc.cluster.local": [0],
                "app-c.default.svc.cluster.local": [0, 1, 2]
            }} }}"#
    );
    let sidecar = Sidecar::start("dev", ENVS, &compact).await?;
    let env = [("x-virtual-env", "dev.proj1.user1")];
    assert_eq!(sidecar.route("app-c", &env).await?, "dev.proj1.user1");
    assert_eq!(sidecar.route("app-a", &env).await?, "dev.proj1");
    assert_eq!(sidecar.route("app-b", &env).await?, "dev");
    Ok(())
}

#[tokio::test]
async fn http2_requests_are_routed_the_same() -> Result<()> {
    let sidecar = Sidecar::start("dev", ENVS, &config("")).await?;
    let env = [("x-virtual-env", "dev.proj1")];
    let r = sidecar.call_with(Protocol::H2c, "app-b", &env).await?;
    assert_eq!(r.text(), "dev");
    let r = sidecar.call_with(Protocol::H2c, "app-a", &env).await?;
    assert_eq!(r.text(), "dev.proj1");
    Ok(())
}

#[tokio::test]
async fn the_env_comes_from_baggage_and_is_propagated_as_the_header() -> Result<()> {
    let sidecar = Sidecar::start("dev", ENVS, &config(r#""headerAliases": ["x-env"],"#)).await?;
    let r = sidecar
        .call(
            "app-c",
            &[("baggage", "userId=alice,virtual-env=dev.proj1.user1")],
        )
        .await?;
    assert_eq!(r.text(), "dev.proj1.user1");
    assert_eq!(r.header("x-seen-env"), Some("dev.proj1.user1"));

    let r = sidecar.call("app-a", &[("x-env", "dev.proj1")]).await?;
    assert_eq!(r.text(), "dev.proj1");
    assert_eq!(r.header("x-seen-env"), Some("dev.proj1"));
    Ok(())
}

#[tokio::test]
async fn without_a_header_the_pods_own_env_applies_only_with_auto_inject() -> Result<()> {
    let on = Sidecar::start("dev.proj1", ENVS, &config(r#""autoInject": true,"#)).await?;
    let r = on.call("app-a", &[]).await?;
    assert_eq!(r.text(), "dev.proj1");
    assert_eq!(r.header("x-seen-env"), Some("dev.proj1"));
    assert_eq!(on.route("app-b", &[]).await?, "dev");

    let off = Sidecar::start("dev.proj1", ENVS, &config(r#""defaultSubset": "dev","#)).await?;
    let r = off.call("app-a", &[]).await?;
    assert_eq!(r.text(), "dev");
    assert_eq!(r.header("x-seen-env"), None);
    Ok(())
}

#[tokio::test]
async fn the_env_recorded_inbound_is_found_by_trace_id_outbound() -> Result<()> {
    let sidecar = Sidecar::start("dev", ENVS, &config("")).await?;
    let r = sidecar
        .receive(&[
            ("x-virtual-env", "dev.proj1"),
            ("traceparent", TRACEPARENT),
            ("x-request-id", "9a7c2f00-req-5d6d6ec8"),
        ])
        .await?;
    assert_eq!(r.status, 200);
    // The application forwards only its tracing headers.
    let r = sidecar
        .call("app-c", &[("traceparent", TRACEPARENT)])
        .await?;
    assert_eq!(r.text(), "dev.proj1");
    assert_eq!(r.header("x-seen-env"), Some("dev.proj1"));
    assert_eq!(
        sidecar
            .route("app-b", &[("x-request-id", "9a7c2f00-req-5d6d6ec8")])
            .await?,
        "dev"
    );
    // Another trace knows nothing.
    let other = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert_eq!(
        sidecar.route("app-c", &[("traceparent", other)]).await?,
        "default"
    );
    assert_eq!(
        sidecar
            .envoy
            .stat_eventually("wasmcustom.virtual_env.env_source.trace", 2)
            .await?,
        2
    );
    Ok(())
}

#[tokio::test]
async fn a_forwarded_route_header_is_replaced() -> Result<()> {
    let sidecar = Sidecar::start("dev", ENVS, &config("")).await?;
    let forged = (ROUTE_HEADER, "dev.proj1.user1");
    let r = sidecar
        .call("app-b", &[("x-virtual-env", "dev.proj1"), forged])
        .await?;
    assert_eq!(r.text(), "dev");
    assert_eq!(r.header("x-seen-route"), Some("dev"));
    // No choice: the forged header is removed, not obeyed.
    let r = sidecar
        .call("app-b", &[("x-virtual-env", "qa"), forged])
        .await?;
    assert_eq!(r.text(), "default");
    assert_eq!(r.header("x-seen-route"), None);
    // A host the config does not know: removed as well.
    let r = sidecar.call("example.com", &[forged]).await?;
    assert_eq!(r.text(), "default");
    Ok(())
}

#[tokio::test]
async fn an_invalid_env_header_is_ignored_and_counted() -> Result<()> {
    let sidecar = Sidecar::start("dev", ENVS, &config(r#""defaultSubset": "dev","#)).await?;
    for bad in ["dev..proj1", ".dev", "dev.", "dev/proj1", "dev%20x"] {
        let r = sidecar.call("app-a", &[("x-virtual-env", bad)]).await?;
        assert_eq!(r.text(), "dev", "{bad}");
        assert_eq!(r.header("x-seen-route"), Some("dev"), "{bad}");
    }
    let long = "a".repeat(64);
    assert_eq!(
        sidecar.route("app-a", &[("x-virtual-env", &long)]).await?,
        "dev"
    );
    assert_eq!(
        sidecar
            .envoy
            .stat_eventually("wasmcustom.virtual_env.header_rejected", 6)
            .await?,
        6
    );
    Ok(())
}

#[tokio::test]
async fn config_updates_take_effect_without_a_restart_and_bad_ones_are_rejected() -> Result<()> {
    let sidecar = Sidecar::start("dev", ENVS, &config("")).await?;
    let env = [("x-virtual-env", "dev.proj1")];
    assert_eq!(sidecar.route("app-b", &env).await?, "dev");

    // app-b gains dev.proj1 pods: traffic moves there.
    sidecar.push_config(&format!(
        r#"{{"routeHeader": "{ROUTE_HEADER}", "services": {{"app-b.default.svc.cluster.local": ["dev", "dev.proj1"]}}}}"#
    ))?;
    sidecar.wait_route("app-b", &env, "dev.proj1").await?;

    // A config that fails validation leaves the last good one in force.
    sidecar.push_config(&format!(
        r#"{{"routeHeader": "{ROUTE_HEADER}", "services": {{"app-b.default.svc.cluster.local": ["dev..x"]}}}}"#
    ))?;
    sidecar
        .wait_stat("wasmcustom.virtual_env.config.rejected", 1)
        .await?;
    sidecar
        .wait_stat(
            "extension_config_discovery.http_filter.virtual-env.config_reload",
            3,
        )
        .await?;
    for _ in 0..20 {
        assert_eq!(sidecar.route("app-b", &env).await?, "dev.proj1");
    }

    // dev.proj1 disappears again: traffic falls back.
    sidecar.push_config(&format!(
        r#"{{"routeHeader": "{ROUTE_HEADER}", "services": {{"app-b.default.svc.cluster.local": ["dev"]}}}}"#
    ))?;
    sidecar.wait_route("app-b", &env, "dev").await?;
    assert_eq!(
        sidecar
            .envoy
            .stat("wasmcustom.virtual_env.config.loaded")
            .await?,
        3
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_first_config_passes_requests_through() -> Result<()> {
    let sidecar = Sidecar::start("dev", ENVS, r#"{"splitter": "::"}"#).await?;
    let r = sidecar
        .call(
            "app-a",
            &[
                ("x-virtual-env", "dev.proj1"),
                (PLAIN_ROUTE_HEADER, "dev.proj1"),
            ],
        )
        .await?;
    // Untouched: the request still flows, nothing was chosen; and a route header the
    // filter did not set selects no route (the routes match only the suffixed name).
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "default");
    assert_eq!(
        sidecar
            .envoy
            .stat("wasmcustom.virtual_env.config.rejected")
            .await?,
        1
    );
    Ok(())
}

/// The filter configured for an ambient-mode waypoint (`direction: waypoint`) in a real
/// Envoy, which has none of Istio's peer-metadata filter state: the calling workload is
/// unknown, so auto-inject gives nothing, and never the waypoint's own pod's env; a
/// `downstream_peer` that is not Istio's field-bearing object (here a plain string, as
/// Envoy's `set_filter_state` makes one) is no peer either; the env header still routes.
/// Every property read of a missing or other-shaped filter state is survived.
#[tokio::test]
async fn a_waypoint_without_istios_peer_metadata_routes_by_header_only() -> Result<()> {
    use virtual_env_e2e::sidecar::SidecarOptions;
    let plugin_config = config(
        r#""direction": "waypoint", "autoInject": true,
        "workloads": {"default/app": "dev.proj1", "default/pod-1": "dev.proj1"},"#,
    );
    let set_peer = serde_json::json!({
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers": [{
                "object_key": "downstream_peer",
                "factory_key": "envoy.string",
                "format_string": {"text_format_source": {"inline_string": "default/app"}}
            }]
        }
    });
    for before in [vec![], vec![set_peer]] {
        let sidecar = Sidecar::start_with(SidecarOptions {
            before: before.clone(),
            ..SidecarOptions::new("dev", ENVS, &plugin_config)
        })
        .await?;
        // The node's own label is dev: a sidecar would auto-inject it; a waypoint not.
        assert_eq!(sidecar.route("app-a", &[]).await?, "default", "{before:?}");
        assert_eq!(
            sidecar
                .route("app-a", &[("x-virtual-env", "dev.proj1")])
                .await?,
            "dev.proj1"
        );
        assert_eq!(
            sidecar
                .envoy
                .stat_eventually("wasmcustom.virtual_env.env_source.none", 1)
                .await?,
            1
        );
    }
    Ok(())
}
