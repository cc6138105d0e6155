//! Trying to break the filter in real Envoy (`$ENVOY`) with what a hostile client sends.
//!
//! The sidecar runs one worker and fails open, as Istio configures the plugin: a request
//! that killed the filter's VM would not fail loudly, it would silently turn routing off.
//! So every hostile request is followed, on the same keep-alive connection (the same
//! worker, the same VM), by requests that only a live filter routes right: a valid env
//! that must be routed exactly, and a forged route header that must be overwritten.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::{ensure, Result};
use virtual_env_e2e::raw::{request, RawConnection, RawResponse};
use virtual_env_e2e::sidecar::{Sidecar, SidecarOptions, PLAIN_ROUTE_HEADER, ROUTE_HEADER};

/// An env name at the label-value limit (63 characters), which app-c has pods in.
const ENV63: &str = "dev.proj1.user-012345678901234567890123456789012345678901234567";
const ENVS: &[&str] = &["dev", "dev.proj1", "dev.proj1.user1", ENV63];
const ALIASES: [&str; 2] = ["x-env", "x-env-two"];
const TRACE_HEADERS: [&str; 4] = ["traceparent", "x-b3-traceid", "b3", "x-request-id"];
const NOT_UTF8: &[u8] = b"d\xffv\x80\xfe";
const STAT: &str = "wasmcustom.virtual_env.";

fn config_with(services: &str) -> String {
    format!(
        r#"{{"routeHeader": "{ROUTE_HEADER}", "defaultSubset": "dev",
            "headerAliases": ["x-env", "x-env-two"],
            "traceHeaders": ["traceparent", "x-b3-traceid", "b3", "x-request-id"],
            "services": {{{services}}}}}"#
    )
}

fn config() -> String {
    config_with(&format!(
        r#""app-a.default.svc.cluster.local": ["dev", "dev.proj1"],
           "app-b.default.svc.cluster.local": ["dev"],
           "app-c.default.svc.cluster.local": ["dev", "dev.proj1", "{ENV63}"],
           "app-d.default.svc.cluster.local": ["dev.proj1"]"#
    ))
}

async fn one_worker(config: &str) -> Result<Sidecar> {
    Sidecar::start_with(SidecarOptions {
        workers: 1,
        ..SidecarOptions::new("dev", ENVS, config)
    })
    .await
}

/// Sends `hostile`; a response (any status but a 5xx the filter caused) must come back.
async fn send(conn: &mut RawConnection, hostile: Vec<u8>) -> Result<RawResponse> {
    let r = conn.send(&hostile).await?;
    ensure!(r.status < 500, "HTTP {} {}", r.status, r.text());
    Ok(r)
}

/// What only a live filter does, on the same connection as the hostile request.
async fn still_routes(conn: &mut RawConnection, case: &str) -> Result<()> {
    let r = conn
        .send(&request(b"app-a", &[("x-virtual-env", b"dev.proj1")]))
        .await?;
    ensure!(
        r.text() == "dev.proj1",
        "{case}: then routed to {}",
        r.text()
    );
    let r = conn
        .send(&request(
            b"app-b",
            &[
                ("x-virtual-env", b"dev.proj1"),
                (ROUTE_HEADER, b"dev.proj1.user1"),
            ],
        ))
        .await?;
    ensure!(
        r.text() == "dev",
        "{case}: a forged route header was obeyed ({}): the filter is not running",
        r.text()
    );
    Ok(())
}

#[tokio::test]
async fn bytes_that_are_not_utf8_in_any_header_leave_the_filter_running() -> Result<()> {
    let sidecar = one_worker(&config()).await?;
    let mut conn = RawConnection::open(sidecar.outbound()).await?;
    let headers = ["x-virtual-env", ALIASES[0], ALIASES[1], "baggage"]
        .into_iter()
        .chain(TRACE_HEADERS)
        .chain([ROUTE_HEADER, PLAIN_ROUTE_HEADER]);
    for header in headers {
        let r = send(&mut conn, request(b"app-a", &[(header, NOT_UTF8)])).await?;
        // As if the value were absent: no env, the default subset.
        assert_eq!(r.text(), "dev", "{header}");
        still_routes(&mut conn, header).await?;
    }
    // In :authority: Envoy may refuse the request itself; the filter must survive either way.
    let r = conn.send(&request(b"app-\xff", &[])).await?;
    assert!(r.status < 500, "HTTP {}", r.status);
    still_routes(&mut conn, ":authority").await?;
    // Seven env-carrying headers were rejected (the route headers are not read).
    let rejected = sidecar
        .envoy
        .stat_eventually(&format!("{STAT}header_rejected"), 8)
        .await?;
    assert!(rejected >= 7, "header_rejected {rejected}");
    Ok(())
}

#[tokio::test]
async fn values_at_envoys_header_size_limit() -> Result<()> {
    let sidecar = one_worker(&config()).await?;
    let mut conn = RawConnection::open(sidecar.outbound()).await?;
    // Envoy's default limit is 60 KiB for all request headers together.
    let big = vec![b'a'; 60 * 1024 - 512];
    for header in [
        "x-virtual-env",
        "x-env",
        "baggage",
        "traceparent",
        "x-request-id",
    ] {
        let r = send(&mut conn, request(b"app-a", &[(header, &big)])).await?;
        assert_eq!(r.text(), "dev", "{header}");
        still_routes(&mut conn, header).await?;
    }
    // Thousands of baggage members, the env in the last one: found, and routed.
    let mut baggage: Vec<u8> = (0..5000)
        .flat_map(|i| format!("k{i}=v,").into_bytes())
        .collect();
    baggage.extend_from_slice(b"virtual-env=dev.proj1");
    let r = send(&mut conn, request(b"app-a", &[("baggage", &baggage)])).await?;
    assert_eq!(r.text(), "dev.proj1");
    still_routes(&mut conn, "5000 baggage members").await?;
    // One byte past the limit is Envoy's to refuse (431), before any filter runs.
    let over = vec![b'a'; 61 * 1024];
    let r = conn
        .send(&request(b"app-a", &[("x-virtual-env", &over)]))
        .await?;
    assert_eq!(r.status, 431);
    let mut conn = RawConnection::open(sidecar.outbound()).await?;
    still_routes(&mut conn, "over the limit").await?;
    Ok(())
}

#[tokio::test]
async fn duplicate_env_and_route_headers() -> Result<()> {
    let sidecar = one_worker(&config()).await?;
    let mut conn = RawConnection::open(sidecar.outbound()).await?;
    let r = send(
        &mut conn,
        request(
            b"app-a",
            &[("x-virtual-env", b"dev.proj1"), ("x-virtual-env", b"dev")],
        ),
    )
    .await?;
    assert!(
        ["dev.proj1", "dev"].contains(&r.text().as_str()),
        "{}",
        r.text()
    );
    still_routes(&mut conn, "two env headers").await?;
    // Two forged route headers and an env to route: only the chosen env remains.
    let forged: &[(&str, &[u8])] = &[
        ("x-virtual-env", b"dev.proj1"),
        (ROUTE_HEADER, b"dev.proj1.user1"),
        (ROUTE_HEADER, b"dev"),
    ];
    let r = send(&mut conn, request(b"app-a", forged)).await?;
    assert_eq!(r.text(), "dev.proj1");
    assert_eq!(r.header("x-seen-route"), Some(&b"dev.proj1"[..]));
    // Nothing to choose (app-d has only dev.proj1, no default): every copy is removed.
    let none: &[(&str, &[u8])] = &[
        ("x-virtual-env", b"qa"),
        (ROUTE_HEADER, b"dev.proj1.user1"),
        (ROUTE_HEADER, b"dev"),
    ];
    let r = send(&mut conn, request(b"app-d", none)).await?;
    assert_eq!(r.text(), "default");
    still_routes(&mut conn, "two route headers").await?;
    Ok(())
}

#[tokio::test]
async fn env_names_at_and_past_the_limit_and_odd_hosts() -> Result<()> {
    let sidecar = one_worker(&config()).await?;
    let mut conn = RawConnection::open(sidecar.outbound()).await?;
    assert_eq!(ENV63.len(), 63);
    let env = |v: &str| request(b"app-c", &[("x-virtual-env", v.as_bytes())]);
    assert_eq!(send(&mut conn, env(ENV63)).await?.text(), ENV63);
    let env64 = format!("{ENV63}x");
    // One byte over: not an env name, as if absent.
    assert_eq!(send(&mut conn, env(&env64)).await?.text(), "dev");
    for odd in [".", "..", "-", "dev..proj1", " ", "dev proj1"] {
        assert_eq!(send(&mut conn, env(odd)).await?.text(), "dev", "{odd:?}");
    }
    still_routes(&mut conn, "env names").await?;
    // Upper-case hosts are the same service.
    for host in [
        &b"APP-A"[..],
        b"App-A.Default:8080",
        b"APP-A.DEFAULT.SVC.CLUSTER.LOCAL",
    ] {
        let r = send(&mut conn, request(host, &[("x-virtual-env", b"dev.proj1")])).await?;
        assert_eq!(r.text(), "dev.proj1", "{}", String::from_utf8_lossy(host));
    }
    // A host that only looks like a service gets no env and no route header.
    let r = send(
        &mut conn,
        request(
            b"app-a.default.svc.evil.example",
            &[
                ("baggage", b"virtual-env=dev.proj1"),
                (ROUTE_HEADER, b"dev"),
            ],
        ),
    )
    .await?;
    assert_eq!(r.text(), "default");
    assert_eq!(r.header("x-seen-env"), None);
    still_routes(&mut conn, "hosts").await?;
    Ok(())
}

#[tokio::test]
async fn bad_configs_keep_the_last_good_one_and_huge_ones_load() -> Result<()> {
    let sidecar = one_worker(&config()).await?;
    let routed = |want: &'static str| {
        let sidecar = &sidecar;
        async move {
            sidecar
                .wait_route("app-a", &[("x-virtual-env", "dev.proj1")], want)
                .await
        }
    };
    routed("dev.proj1").await?;
    let rejected = format!("{STAT}config.rejected");
    let mut count = 0;
    for bad in [
        "{{{ not json".to_owned(),
        format!(r#"{{"routeHeader": "{ROUTE_HEADER}", "unknownField": 1}}"#),
        format!(
            r#"{{"routeHeader": "{ROUTE_HEADER}", "services": {{"app-a.default.svc.cluster.local": ["dev..x"]}}}}"#
        ),
        "\u{0}\u{1}".to_owned(),
    ] {
        sidecar.push_config(&bad)?;
        count += 1;
        sidecar.wait_stat(&rejected, count).await?;
        // The last good config stays in force.
        let mut conn = RawConnection::open(sidecar.outbound()).await?;
        still_routes(&mut conn, &bad).await?;
    }
    // 10,000 services load and route.
    let services: Vec<String> = (0..10_000)
        .map(|i| format!(r#""svc-{i}.default.svc.cluster.local": ["dev", "dev.proj1"]"#))
        .collect();
    sidecar.push_config(&config_with(&services.join(",")))?;
    sidecar
        .wait_route("svc-9999", &[("x-virtual-env", "dev.proj1")], "dev.proj1")
        .await?;
    // app-a is not in that config: in the pod's namespace but unrouted.
    assert_eq!(
        sidecar
            .route("app-a", &[("x-virtual-env", "dev.proj1")])
            .await?,
        "default"
    );
    // Good, bad, good: each good one takes effect, the bad one changes nothing.
    sidecar.push_config(&config())?;
    routed("dev.proj1").await?;
    sidecar.push_config("not json either")?;
    sidecar.wait_stat(&rejected, count + 1).await?;
    routed("dev.proj1").await?;
    sidecar.push_config(&config_with(
        r#""app-a.default.svc.cluster.local": ["dev"]"#,
    ))?;
    routed("dev").await?;
    Ok(())
}

/// A module that traps on every request: what a filter whose VM died looks like.
const TRAPPING_MODULE: &str = r#"(module
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))"#;

#[tokio::test]
async fn a_route_header_the_filter_did_not_set_never_selects_a_route() -> Result<()> {
    let forged = [
        (PLAIN_ROUTE_HEADER, "dev.proj1"),
        ("x-virtual-env", "dev.proj1"),
    ];
    // A pod whose sidecar has no filter (another namespace, or not injected).
    let bare = Sidecar::start_with(SidecarOptions {
        filter: false,
        ..SidecarOptions::new("dev", ENVS, &config())
    })
    .await?;
    assert_eq!(bare.route("app-a", &forged).await?, "default");

    // A filter whose VM has failed, skipped because it fails open.
    let dir = tempfile::tempdir()?;
    let trapping = dir.path().join("trapping.wasm");
    std::fs::write(&trapping, wat::parse_str(TRAPPING_MODULE)?)?;
    let failed = Sidecar::start_with(SidecarOptions {
        workers: 1,
        wasm: Some(trapping.display().to_string()),
        ..SidecarOptions::new("dev", ENVS, &config())
    })
    .await?;
    // The request that meets the trap may fail; after it, the filter is skipped.
    let _ = failed.call("app-a", &forged).await?;
    let log = failed.envoy.log_tail();
    assert!(
        log.contains("unreachable"),
        "the module did not trap:\n{log}"
    );
    for _ in 0..3 {
        let r = failed.call("app-a", &forged).await?;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "default");
    }
    // (No good config yet is in filter_in_envoy: a_bad_first_config_passes_requests_through.)
    Ok(())
}

/// Trace ids to send through one sidecar's inbound side; `VIRTUAL_ENV_TRACE_IDS` raises
/// it (`make soak` sends a million).
fn trace_ids() -> u64 {
    std::env::var("VIRTUAL_ENV_TRACE_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[tokio::test]
async fn many_distinct_trace_ids_keep_memory_flat_and_recent_traces_found() -> Result<()> {
    const SLOTS: u64 = 1024;
    let config = format!(
        r#"{{"routeHeader": "{ROUTE_HEADER}", "correlationSlots": {SLOTS},
            "services": {{"app-a.default.svc.cluster.local": ["dev", "dev.proj1"]}}}}"#
    );
    let sidecar = one_worker(&config).await?;
    let total = trace_ids().max(4 * SLOTS);
    let mut inbound = RawConnection::open(sidecar.inbound()).await?;
    let traceparent = |i: u64| format!("00-{:032x}-00f067aa0ba902b7-01", i + 1);
    let mut record = async |i: u64| -> Result<()> {
        let tp = traceparent(i);
        let r = inbound
            .send(&request(
                b"app",
                &[
                    ("x-virtual-env", b"dev.proj1"),
                    ("traceparent", tp.as_bytes()),
                ],
            ))
            .await?;
        ensure!(r.status == 200, "HTTP {}", r.status);
        Ok(())
    };
    // Warm up: every slot written at least once, so later writes only replace.
    for i in 0..2 * SLOTS {
        record(i).await?;
    }
    let warm = sidecar.envoy.memory_allocated().await?;
    for i in 2 * SLOTS..total {
        record(i).await?;
    }
    let after = sidecar.envoy.memory_allocated().await?;
    let growth = after.saturating_sub(warm);
    println!(
        "{total} trace ids: Envoy allocated {warm} bytes after {} and {after} after all ({growth} more)",
        2 * SLOTS
    );
    assert!(growth < 512 * 1024, "memory grew by {growth} bytes");
    // The latest trace is found on the outbound side.
    let recent = traceparent(total - 1);
    assert_eq!(
        sidecar.route("app-a", &[("traceparent", &recent)]).await?,
        "dev.proj1"
    );
    Ok(())
}

/// A gateway that strips envs from outside: hostile bytes in any env carrier are removed
/// like a valid env, and nothing the client sends reaches the route or the next hop.
#[tokio::test]
async fn a_stripping_gateway_removes_hostile_env_carriers_and_keeps_running() -> Result<()> {
    let gateway = format!(
        r#"{{"routeHeader": "{ROUTE_HEADER}", "defaultSubset": "dev", "direction": "outbound",
            "headerAliases": ["x-env", "x-env-two"],
            "headerPatterns": [{{"name": "cookie", "pattern": ".*env=(@);?.*"}}],
            "hosts": {{"demo.example.com": "app-a.default.svc.cluster.local"}},
            "edgeTrust": {{"mode": "strip"}},
            "services": {{"app-a.default.svc.cluster.local": ["dev", "dev.proj1"]}}}}"#
    );
    let sidecar = one_worker(&gateway).await?;
    let mut conn = RawConnection::open(sidecar.outbound()).await?;
    for header in [
        "x-virtual-env",
        ALIASES[0],
        ALIASES[1],
        "baggage",
        "cookie",
        ROUTE_HEADER,
    ] {
        for value in [NOT_UTF8, b"dev.proj1", b"virtual-env=dev.proj1"] {
            let r = send(&mut conn, request(b"demo.example.com", &[(header, value)])).await?;
            assert_eq!(r.text(), "dev", "{header}: {value:?}");
            assert_eq!(r.header("x-seen-env"), None, "{header}: {value:?}");
        }
    }
    // A cookie past the pattern's search limit, the env at its end: not searched.
    let long = format!("{}; env=dev.proj1", "k=v".repeat(16_000));
    let r = send(
        &mut conn,
        request(b"demo.example.com", &[("cookie", long.as_bytes())]),
    )
    .await?;
    assert_eq!(r.text(), "dev");
    // Still running: a forged route header is still overwritten with the default.
    let r = send(
        &mut conn,
        request(b"demo.example.com", &[(ROUTE_HEADER, b"dev.proj1")]),
    )
    .await?;
    assert_eq!(r.text(), "dev");
    Ok(())
}
