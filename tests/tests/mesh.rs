//! End-to-end: call chains through a local mesh of real Envoy sidecars (`$ENVOY`), each
//! pod an application process plus its sidecar, routed by the controller's plan.
//!
//! Meshes run one at a time (each is several Envoys; the machines have 2 cores).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::Result;
use std::time::Duration;

use virtual_env_e2e::envoy::{poll_until, repo_root};
use virtual_env_e2e::http::Protocol;
use virtual_env_e2e::mesh::{Mesh, MeshOptions};
use virtual_env_e2e::topology::{Topology, TopologyPod};

/// Async-aware, so it can be held across awaits by tests on separate runtimes; it does not
/// poison, so one failed test does not fail the others.
static ONE_MESH_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_MESH_AT_A_TIME.lock().await
}

fn topology(name: &str) -> Topology {
    Topology::load(&repo_root().join("tests/topologies").join(name)).unwrap()
}

fn options() -> MeshOptions {
    MeshOptions::new(env!("CARGO_BIN_EXE_virtual-env-mesh").into())
}

const ENV: &str = "x-virtual-env";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn the_seed_chain_falls_back_for_b_and_returns_to_c_prime() -> Result<()> {
    let _serial = serial().await;
    let mesh = Mesh::start(topology("seed.yaml"), options()).await?;
    let hop = mesh.request("app-a", &[(ENV, "dev.proj1")]).await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    // Every application saw the env it was called with.
    assert!(hop
        .chain()
        .iter()
        .all(|h| h.received_env.as_deref() == Some("dev.proj1")));
    let hop = mesh.request("app-a", &[(ENV, "dev")]).await?;
    assert_eq!(hop.pods(), ["app-a-dev", "app-b-dev", "app-c-dev"]);
    Ok(())
}

#[tokio::test]
async fn three_levels_take_the_nearest_env_at_every_hop() -> Result<()> {
    let _serial = serial().await;
    let mesh = Mesh::start(topology("deep.yaml"), options()).await?;
    let hop = mesh.request("app-a", &[(ENV, "dev.proj1.user1")]).await?;
    assert_eq!(
        hop.pods(),
        ["app-a-user1", "app-b-proj1", "app-c-dev", "app-d-user1"]
    );
    let hop = mesh.request("app-a", &[(ENV, "dev.proj1")]).await?;
    assert_eq!(
        hop.pods(),
        ["app-a-proj1", "app-b-proj1", "app-c-dev", "app-d-proj1"]
    );
    Ok(())
}

#[tokio::test]
async fn an_env_nobody_deploys_falls_back_to_dev_at_every_hop() -> Result<()> {
    let _serial = serial().await;
    let mesh = Mesh::start(topology("seed.yaml"), options()).await?;
    let hop = mesh.request("app-a", &[(ENV, "dev.proj9")]).await?;
    assert_eq!(hop.pods(), ["app-a-dev", "app-b-dev", "app-c-dev"]);
    let gateway = mesh.envoy("gateway").unwrap();
    assert_eq!(
        gateway
            .stat_eventually("wasmcustom.virtual_env.route.fallback", 1)
            .await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn without_a_header_auto_inject_takes_the_callers_env() -> Result<()> {
    let _serial = serial().await;
    let mesh = Mesh::start(topology("seed.yaml"), options()).await?;
    // A request arrives at A' without any env: A' calls on in its own env.
    let hop = mesh.request_pod("app-a-proj1", &[]).await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    assert_eq!(hop.chain()[1].received_env.as_deref(), Some("dev.proj1"));
    Ok(())
}

#[tokio::test]
async fn without_a_header_and_without_auto_inject_the_default_subset_serves() -> Result<()> {
    let _serial = serial().await;
    let mut topology = topology("seed.yaml");
    topology.virtual_environment.env_header.auto_inject = false;
    let mesh = Mesh::start(topology, options()).await?;
    let hop = mesh.request_pod("app-a-proj1", &[]).await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-dev"]);
    assert_eq!(hop.chain()[1].received_env, None);
    Ok(())
}

#[tokio::test]
async fn the_env_travels_in_baggage_alone() -> Result<()> {
    let _serial = serial().await;
    let mut topology = topology("seed.yaml");
    // No trace correlation, and applications forward only baggage.
    topology.virtual_environment.trace_correlation.slots = 0;
    topology.virtual_environment.env_header.auto_inject = false;
    let mut options = options();
    options.forward_env_header = false;
    options.forward = vec!["baggage".into()];
    let mesh = Mesh::start(topology, options).await?;
    let hop = mesh
        .request(
            "app-a",
            &[("baggage", "userId=alice,virtual-env=dev.proj1")],
        )
        .await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    Ok(())
}

#[tokio::test]
async fn the_env_survives_an_application_that_forwards_only_trace_headers() -> Result<()> {
    let _serial = serial().await;
    let mut topology = topology("seed.yaml");
    topology.virtual_environment.env_header.auto_inject = false;
    let mut options = options();
    options.forward_env_header = false;
    options.forward = vec!["traceparent".into(), "x-request-id".into()];
    let mesh = Mesh::start(topology, options).await?;
    let hop = mesh
        .request("app-a", &[(ENV, "dev.proj1"), ("traceparent", TRACEPARENT)])
        .await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    // x-request-id alone works too (Envoy generates one when the client sends none).
    let hop = mesh
        .request(
            "app-a",
            &[(ENV, "dev.proj1"), ("x-request-id", "demo-req-42-5d6d6ec8")],
        )
        .await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    let a_prime = mesh.envoy("app-a-proj1").unwrap();
    assert_eq!(
        a_prime
            .stat_eventually("wasmcustom.virtual_env.env_source.trace", 2)
            .await?,
        2
    );
    // Without any way to carry it, the env is lost: the default subset serves.
    let mut stripped = MeshOptions::new(env!("CARGO_BIN_EXE_virtual-env-mesh").into());
    stripped.forward_env_header = false;
    stripped.forward = vec![];
    drop(mesh);
    let mut topology = Topology::load(&repo_root().join("tests/topologies/seed.yaml"))?;
    topology.virtual_environment.env_header.auto_inject = false;
    let mesh = Mesh::start(topology, stripped).await?;
    let hop = mesh.request("app-a", &[(ENV, "dev.proj1")]).await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-dev"]);
    Ok(())
}

#[tokio::test]
async fn sidecars_talk_http2_to_each_other_and_clients_may_too() -> Result<()> {
    let _serial = serial().await;
    let mut options = options();
    options.sidecar_protocol = Protocol::H2c;
    let mesh = Mesh::start(topology("seed.yaml"), options).await?;
    let hop = mesh
        .request_with(Protocol::H2c, "app-a", &[(ENV, "dev.proj1")])
        .await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    let a_prime = mesh.envoy("app-a-proj1").unwrap();
    let h2 = a_prime
        .stat("cluster.outbound|8080|dev|app-b.default.svc.cluster.local.upstream_cx_http2_total")
        .await?;
    assert_eq!(h2, 1, "A' should reach B over HTTP/2");
    Ok(())
}

/// A gRPC call chain (HTTP/2 all the way, `application/grpc`, the status in trailers):
/// every application calls the next over gRPC, and the env falls back at every hop.
#[tokio::test]
async fn a_grpc_call_chain_keeps_its_env_and_falls_back() -> Result<()> {
    let _serial = serial().await;
    let mut options = options();
    options.sidecar_protocol = Protocol::H2c;
    options.app_protocol = Protocol::Grpc;
    let mesh = Mesh::start(topology("seed.yaml"), options).await?;
    let hop = mesh
        .request_with(Protocol::Grpc, "app-a", &[(ENV, "dev.proj1")])
        .await?;
    assert_eq!(hop.first_error(), None);
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    assert!(
        hop.chain().iter().all(|h| h.grpc
            && h.protocol == "HTTP/2.0"
            && h.received_env.as_deref() == Some("dev.proj1")),
        "{hop:?}"
    );
    let hop = mesh
        .request_with(Protocol::Grpc, "app-a", &[(ENV, "dev.proj9")])
        .await?;
    assert_eq!(hop.pods(), ["app-a-dev", "app-b-dev", "app-c-dev"]);
    assert!(hop.chain().iter().all(|h| h.grpc), "{hop:?}");
    Ok(())
}

#[tokio::test]
async fn a_route_header_forged_by_the_client_selects_nothing_and_reaches_no_application(
) -> Result<()> {
    let _serial = serial().await;
    let mesh = Mesh::start(topology("seed.yaml"), options()).await?;
    let route_header = mesh.plan()?.route_header;
    for forged in ["x-virtual-env-route", route_header.as_str()] {
        let hop = mesh
            .request("app-a", &[(ENV, "dev"), (forged, "dev.proj1")])
            .await?;
        assert_eq!(
            hop.pods(),
            ["app-a-dev", "app-b-dev", "app-c-dev"],
            "{forged}"
        );
        // Every sidecar strips the route headers after routing: no application sees one,
        // so none can learn the suffix or forward it.
        for h in hop.chain() {
            assert!(
                h.route_headers.is_empty(),
                "{} got {:?}",
                h.pod,
                h.route_headers
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_invalid_env_header_is_ignored() -> Result<()> {
    let _serial = serial().await;
    let mesh = Mesh::start(topology("seed.yaml"), options()).await?;
    let hop = mesh.request("app-a", &[(ENV, "dev..proj1")]).await?;
    assert_eq!(hop.pods(), ["app-a-dev", "app-b-dev", "app-c-dev"]);
    let gateway = mesh.envoy("gateway").unwrap();
    assert_eq!(
        gateway
            .stat_eventually("wasmcustom.virtual_env.header_rejected", 1)
            .await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn routing_follows_pods_becoming_ready_and_leaving_without_restarts() -> Result<()> {
    let _serial = serial().await;
    let mut topology = topology("seed.yaml");
    topology.pods.push(TopologyPod {
        name: "app-b-proj1".into(),
        labels: [("app", "app-b"), ("virtual-env", "dev.proj1")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        calls: vec!["app-c".into()],
        ready: false,
    });
    let mut mesh = Mesh::start(topology, options()).await?;
    let env = [(ENV, "dev.proj1")];
    assert_eq!(
        mesh.request("app-a", &env).await?.pods(),
        ["app-a-proj1", "app-b-dev", "app-c-proj1"]
    );
    // B' becomes ready: traffic of dev.proj1 moves to it.
    mesh.set_ready("app-b-proj1", true)?;
    mesh.wait_for_chain(
        "app-a",
        &env,
        &["app-a-proj1", "app-b-proj1", "app-c-proj1"],
    )
    .await?;
    // C' goes away: dev.proj1 falls back to C in dev.
    mesh.set_ready("app-c-proj1", false)?;
    mesh.wait_for_chain("app-a", &env, &["app-a-proj1", "app-b-proj1", "app-c-dev"])
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_bad_config_update_keeps_the_previous_routing() -> Result<()> {
    let _serial = serial().await;
    let mesh = Mesh::start(topology("seed.yaml"), options()).await?;
    let env = [(ENV, "dev.proj1")];
    let before = ["app-a-proj1", "app-b-dev", "app-c-proj1"];
    assert_eq!(mesh.request("app-a", &env).await?.pods(), before);
    mesh.push_plugin_config(r#"{"splitter": "::", "services": {}}"#)?;
    let gateway = mesh.envoy("gateway").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gateway
        .stat("wasmcustom.virtual_env.config.rejected")
        .await?
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the bad config never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        assert_eq!(mesh.request("app-a", &env).await?.pods(), before);
    }
    Ok(())
}

#[tokio::test]
async fn the_demo_table_shows_the_seed_chain() -> Result<()> {
    let _serial = serial().await;
    let mesh = Mesh::start(topology("seed.yaml"), options()).await?;
    let table = virtual_env_e2e::demo::run(&mesh).await?;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let proj1 = rows
        .iter()
        .position(|r| r.first() == Some(&"dev.proj1"))
        .expect(&table);
    assert_eq!(
        rows[proj1],
        [
            "dev.proj1",
            "1",
            "app-a",
            "app-a-proj1",
            "dev.proj1",
            "exact"
        ]
    );
    assert_eq!(
        rows[proj1 + 1],
        ["2", "app-b", "app-b-dev", "dev", "fallback"]
    );
    assert_eq!(
        rows[proj1 + 2],
        ["3", "app-c", "app-c-proj1", "dev.proj1", "exact"]
    );
    assert!(!table.contains("error"), "{table}");
    Ok(())
}

const SHOP: &str = "shop.example.com";
const PROJ1_CHAIN: [&str; 3] = ["app-a-proj1", "app-b-dev", "app-c-proj1"];
const DEV_CHAIN: [&str; 3] = ["app-a-dev", "app-b-dev", "app-c-dev"];

/// The gateway Envoy runs the plugin object the controller writes for Istio's ingress
/// gateway (in `istio-system`, only the exposed service, its host): a request for
/// `shop.example.com` with an env from any source gets the fallback at every hop.
#[tokio::test]
async fn entering_through_the_gateway_with_an_env_from_any_source_falls_back_at_every_hop(
) -> Result<()> {
    let _serial = serial().await;
    let mesh = Mesh::start(topology("gateway.yaml"), options()).await?;
    for source in [
        (ENV, "dev.proj1"),
        ("x-env", "dev.proj1"),
        ("baggage", "userId=alice,virtual-env=dev.proj1"),
        ("cookie", "session=42; env=dev.proj1; theme=dark"),
    ] {
        let hop = mesh.request_host(SHOP, &[source]).await?;
        assert_eq!(hop.pods(), PROJ1_CHAIN, "{source:?}");
        assert_eq!(hop.chain()[0].received_env.as_deref(), Some("dev.proj1"));
    }
    let hop = mesh.request_host(SHOP, &[(ENV, "dev.proj1.alice")]).await?;
    assert_eq!(hop.pods(), PROJ1_CHAIN, "two levels of fallback");
    let hop = mesh.request_host(SHOP, &[]).await?;
    assert_eq!(hop.pods(), DEV_CHAIN, "no env: the default subset");
    let gateway = mesh.envoy("gateway").unwrap();
    assert_eq!(
        gateway
            .stat_eventually("wasmcustom.virtual_env.route.exact", 4)
            .await?,
        4
    );
    Ok(())
}

/// What each edge-trust mode lets in from outside.
#[tokio::test]
async fn the_gateways_edge_trust_decides_which_envs_enter() -> Result<()> {
    let _serial = serial().await;
    for (edge, proj1_enters, alice_enters) in [
        ("{mode: accept}", true, true),
        ("{mode: allowList, allow: [dev.proj1.*]}", false, true),
        ("{mode: strip}", false, false),
    ] {
        let mut topology = topology("gateway.yaml");
        topology.gateway_policies[0].spec.edge_trust = Some(serde_yaml::from_str(edge)?);
        let mesh = Mesh::start(topology, options()).await?;
        for (env, enters) in [
            ("dev.proj1", proj1_enters),
            ("dev.proj1.alice", alice_enters),
        ] {
            let hop = mesh
                .request_host(
                    SHOP,
                    &[(ENV, env), ("baggage", &format!("virtual-env={env}"))],
                )
                .await?;
            let (want, seen) = match enters {
                true => (PROJ1_CHAIN, Some(env)),
                false => (DEV_CHAIN, None),
            };
            assert_eq!(hop.pods(), want, "{edge}: {env}");
            assert_eq!(
                hop.chain()[0].received_env.as_deref(),
                seen,
                "{edge}: {env}"
            );
        }
    }
    Ok(())
}

/// What a hostile client sends to carry an env past a gateway whose edge policy does not
/// admit it (`dev.proj1` here): repeated lines of one carrier after an admitted or
/// harmless first line, other carriers beside an admitted one, a cookie longer than the
/// mesh searches, and other hosts the gateway serves. The applications forward what they
/// receive (baggage, cookie and alias lines joined, as HTTP libraries join them), so an
/// env that got in would be routed by the next sidecar. None gets in: no application
/// receives it in any line, and every hop is the baseline's.
#[tokio::test]
async fn no_env_passes_the_gateways_edge_policy_in_any_spelling() -> Result<()> {
    let _serial = serial().await;
    let attempts = virtual_env_e2e::smuggling::attempts("dev.proj1", "dev");
    for edge in ["{mode: allowList, allow: [dev]}", "{mode: strip}"] {
        let mut topology = topology("gateway.yaml");
        topology.gateway_policies[0].spec.edge_trust = Some(serde_yaml::from_str(edge)?);
        let mut options = options();
        options.forward.extend(["cookie".into(), "x-env".into()]);
        let mesh = Mesh::start(topology, options).await?;
        for headers in &attempts {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let headers = &headers[..];
            // The exposed host, and another the gateway serves (app-b's in-mesh name).
            let through_shop = mesh.request_host(SHOP, headers).await?;
            let through_other = mesh.request("app-b", headers).await?;
            for hop in [&through_shop, &through_other] {
                let leak = virtual_env_e2e::smuggling::received(hop, "dev.proj1");
                assert_eq!(leak, None, "{edge}: {headers:?}");
                for h in hop.chain() {
                    assert_eq!(h.env.as_deref(), Some("dev"), "{edge}: {headers:?}");
                }
            }
            assert_eq!(through_shop.pods(), DEV_CHAIN, "{edge}: {headers:?}");
        }
    }
    Ok(())
}

/// The gateway owner's edge guard holds for every request through the gateway, also where
/// no namespace is routed by env at it, and for the carriers of every namespace it admits:
/// here no routing plugin runs at the gateway, the policy strips envs, and namespace
/// `team` (admitted) reads its env from `x-team-env`. Without the guard both envs would
/// reach the sidecars behind the gateway and be routed.
#[tokio::test]
async fn the_gateway_owners_edge_guard_holds_where_nothing_is_routed_by_env() -> Result<()> {
    let _serial = serial().await;
    let mut topology = topology("gateway.yaml");
    // Namespace team is admitted (for a host it does not use): its carriers are judged.
    // Namespace default is not: nothing of it is routed by env at the gateway.
    topology.gateway_policies[0].spec.tenants =
        serde_yaml::from_str("[{namespace: team, hosts: [t.example.com]}]")?;
    topology.gateway_policies[0].spec.edge_trust = Some(serde_yaml::from_str("{mode: strip}")?);
    topology.namespaces.push(Topology::parse(
        r#"
namespace: team
virtualEnvironment:
  envHeader: {name: x-team-env}
  envLabel: {defaultSubset: dev}
services: [{name: t}]
pods:
  - {name: t-dev,   labels: {app: t, virtual-env: dev}}
  - {name: t-proj1, labels: {app: t, virtual-env: dev.proj1}}
"#,
    )?);
    let mesh = Mesh::start(topology, options()).await?;
    assert!(
        mesh.plan()?.gateway_plugins.is_empty(),
        "no namespace is routed by env at the gateway"
    );
    let hop = mesh.request("app-b", &[(ENV, "dev.proj1")]).await?;
    assert_eq!(hop.pods(), ["app-b-dev", "app-c-dev"]);
    assert_eq!(hop.chain()[0].received_env, None);
    let hop = mesh
        .request("t.team", &[("x-team-env", "dev.proj1")])
        .await?;
    assert_eq!(hop.pods(), ["t-dev"]);
    let gateway = mesh.envoy("gateway").unwrap();
    assert_eq!(
        gateway
            .stat_eventually("wasmcustom.virtual_env.edge.env_removed", 2)
            .await?,
        2
    );
    Ok(())
}

/// The demo's topology: the seed entered at shop.example.com, app-c calling the ledger of
/// namespace `pay`, which has its own VirtualEnvironment (route header, table). The env
/// falls back by the table of the namespace each hop is in, on both sides.
#[tokio::test]
async fn a_call_into_another_namespace_is_routed_by_that_namespaces_table() -> Result<()> {
    let _serial = serial().await;
    let mut mesh = Mesh::start(topology("demo.yaml"), options()).await?;
    // dev.proj1 has no ledger in pay: pay's fallback to dev.
    let hop = mesh.request_host(SHOP, &[(ENV, "dev.proj1")]).await?;
    assert_eq!(
        hop.pods(),
        ["app-a-proj1", "app-b-dev", "app-c-proj1", "ledger-dev"]
    );
    // dev.proj2 has only a ledger: fallbacks in default, exact in pay, where only pay's
    // route header, which app-c's sidecar set, can have sent it.
    let hop = mesh.request_host(SHOP, &[(ENV, "dev.proj2")]).await?;
    assert_eq!(
        hop.pods(),
        ["app-a-dev", "app-b-dev", "app-c-dev", "ledger-proj2"]
    );
    assert_eq!(hop.chain()[3].received_env.as_deref(), Some("dev.proj2"));
    // No route header, ours or pay's, reaches an application.
    for h in hop.chain() {
        assert!(
            h.route_headers.is_empty(),
            "{}: {:?}",
            h.pod,
            h.route_headers
        );
    }
    let caller = mesh.envoy("app-c-dev").unwrap();
    let peer = "wasmcustom.virtual_env.route.peer_namespace";
    assert!(caller.stat_eventually(peer, 1).await? >= 1);
    // pay's table changes (its dev.proj2 ledger is no longer ready): the callers in
    // default learn it, and dev.proj2 falls back to dev in pay too.
    mesh.set_ready("ledger-proj2", false)?;
    let probe = async || mesh.request_host(SHOP, &[(ENV, "dev.proj2")]).await;
    let want = ["app-a-dev", "app-b-dev", "app-c-dev", "ledger-dev"];
    let (hop, reached) = poll_until(Duration::from_secs(10), probe, |h| h.pods() == want).await?;
    assert!(reached, "chain is still {:?}", hop.pods());
    Ok(())
}

/// The routing trace on demand: a request with `x-virtual-env-debug: 1` gets, in
/// `x-virtual-env-trace`, what every proxy of the chain decided and the env of each pod
/// that answered, though the applications forward no response header and (here) only
/// their tracing headers: each pod's called side collects what its calling side traced.
/// At a gateway whose edge policy does not let clients ask, nothing is traced or shown.
#[tokio::test]
async fn a_debug_request_gets_the_routing_trace_of_every_hop() -> Result<()> {
    let _serial = serial().await;
    let mut options = options();
    options.forward_env_header = false;
    let mesh = Mesh::start(topology("seed.yaml"), options).await?;
    let (hop, trace) = mesh
        .request_traced("app-a", &[(ENV, "dev.proj1"), ("x-virtual-env-debug", "1")])
        .await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    let trace = trace.expect("a trace");
    let hops: Vec<String> = trace
        .split(", ")
        .map(|h| {
            // The ports are the topology's: not what this test is about.
            let (before, after) = h.split_once(";to=").unwrap_or((h, ""));
            let after = after.split_once(';').map_or("", |(_, rest)| rest);
            match after {
                "" => before.to_owned(),
                rest => format!("{before};{rest}"),
            }
        })
        .collect();
    assert_eq!(
        hops,
        [
            "call;by=sidecar;env=dev.proj1;from=header;route=exact;subset=dev.proj1",
            "served;ns=default;env=dev.proj1",
            "call;by=sidecar;env=dev.proj1;from=trace;route=fallback;subset=dev",
            "served;ns=default;env=dev",
            "call;by=sidecar;env=dev.proj1;from=trace;route=exact;subset=dev.proj1",
            "served;ns=default;env=dev.proj1",
        ],
        "{trace}"
    );
    assert!(trace.contains(";to=app-b:"), "{trace}");
    // Without the debug header: no trace.
    let (_, none) = mesh.request_traced("app-a", &[(ENV, "dev.proj1")]).await?;
    assert_eq!(none, None);
    drop(mesh);
    // The shared gateway's policy does not let clients from outside ask.
    let mesh = Mesh::start(topology("gateway.yaml"), crate::options()).await?;
    let (hop, trace) = mesh
        .request_host_traced(SHOP, &[(ENV, "dev.proj1"), ("x-virtual-env-debug", "1")])
        .await?;
    assert_eq!(hop.pods(), PROJ1_CHAIN);
    assert_eq!(trace, None);
    Ok(())
}

/// Preview URLs: with `{env}.preview.example.com` among a service's gateway hosts, a
/// browser opens an env by its name in the URL (`dev--proj1.preview.example.com` for
/// `dev.proj1`), no header needed: the gateway's plugin selects it as if the header had
/// said it (over a header's env), writes the env header for the next hops, and the edge
/// policy holds for it as for a header.
#[tokio::test]
async fn preview_urls_open_envs_by_name_within_the_edge_policy() -> Result<()> {
    let _serial = serial().await;
    for (edge, proj1_enters) in [
        ("{mode: accept}", true),
        ("{mode: allowList, allow: [dev]}", false),
    ] {
        let mut topology = topology("gateway.yaml");
        topology.virtual_environment.gateways[0]
            .hosts
            .push("{env}.preview.example.com".into());
        let policy = &mut topology.gateway_policies[0].spec;
        policy.tenants[0].hosts.push("*.preview.example.com".into());
        policy.edge_trust = Some(serde_yaml::from_str(edge)?);
        let mesh = Mesh::start(topology, options()).await?;
        let hop = mesh
            .request_host("dev--proj1.preview.example.com", &[])
            .await?;
        let (want, seen) = match proj1_enters {
            true => (PROJ1_CHAIN, Some("dev.proj1")),
            false => (DEV_CHAIN, None),
        };
        assert_eq!(hop.pods(), want, "{edge}");
        assert_eq!(hop.chain()[0].received_env.as_deref(), seen, "{edge}");
        // The other env by its URL, whatever the header says.
        let hop = mesh
            .request_host("dev.preview.example.com", &[(ENV, "dev.proj1")])
            .await?;
        assert_eq!(hop.pods(), DEV_CHAIN, "{edge}");
        assert_eq!(
            hop.chain()[0].received_env.as_deref(),
            Some("dev"),
            "{edge}"
        );
    }
    Ok(())
}
