//! End-to-end in Istio's ambient mode (`tests/topologies/ambient.yaml`): pods without
//! sidecars whose calls reach the namespace's waypoint, an Envoy running the filter with
//! the waypoint's plugin object (`direction: waypoint`) and the routes of the HTTPRoutes
//! the controller writes for an ambient namespace, as istiod builds them; real Envoys
//! (`$ENVOY`). The mesh stands in for ztunnel by sending every call of a pod to the
//! waypoint; what Istio's waypoint knows of the calling workload (its peer metadata) has
//! no stand-in in Envoy outside Istio's build (see `Mesh::waypoint_bootstrap`).
//!
//! Meshes run one at a time (each is several Envoys; the machines have 2 cores).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::Result;

use virtual_env_controller::crd::RoutingApi;
use virtual_env_e2e::envoy::repo_root;
use virtual_env_e2e::http::Protocol;
use virtual_env_e2e::mesh::{Mesh, MeshOptions};
use virtual_env_e2e::topology::Topology;

static ONE_MESH_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn topology() -> Topology {
    Topology::load(&repo_root().join("tests/topologies/ambient.yaml")).unwrap()
}

fn options() -> MeshOptions {
    MeshOptions::new(env!("CARGO_BIN_EXE_virtual-env-mesh").into())
}

const ENV: &str = "x-virtual-env";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn the_seed_chain_falls_back_at_every_hop_through_the_waypoint() -> Result<()> {
    let _serial = ONE_MESH_AT_A_TIME.lock().await;
    let mesh = Mesh::start(topology(), options()).await?;
    let plan = mesh.plan()?;
    assert_eq!(plan.routing_api, RoutingApi::HttpRoute);
    assert_eq!(plan.waypoint_plugins.len(), 1);
    assert!(mesh.envoy("app-a-dev").is_none(), "no sidecars");
    for via_waypoint in [false, true] {
        let request = async |headers: &[(&str, &str)]| match via_waypoint {
            false => mesh.request("app-a", headers).await,
            true => {
                mesh.request_through_waypoint(Protocol::Http1, "app-a", headers)
                    .await
            }
        };
        let hop = request(&[(ENV, "dev.proj1")]).await?;
        assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
        assert!(hop
            .chain()
            .iter()
            .all(|h| h.received_env.as_deref() == Some("dev.proj1")));
        let hop = request(&[(ENV, "dev.proj9")]).await?;
        assert_eq!(hop.pods(), ["app-a-dev", "app-b-dev", "app-c-dev"]);
    }
    let waypoint = mesh.envoy("waypoint-default").unwrap();
    assert!(
        waypoint
            .stat_eventually("wasmcustom.virtual_env.route.fallback", 1)
            .await?
            >= 1
    );
    Ok(())
}

/// Applications that forward only their tracing headers: the waypoint records the env
/// of a request it routes under its trace id, and finds it again for the calls the
/// application makes next, which pass the waypoint too.
#[tokio::test]
async fn the_waypoint_keeps_the_env_by_the_trace_when_applications_drop_it() -> Result<()> {
    let _serial = ONE_MESH_AT_A_TIME.lock().await;
    let mut options = options();
    options.forward_env_header = false;
    let mesh = Mesh::start(topology(), options).await?;
    let hop = mesh
        .request_through_waypoint(
            Protocol::Http1,
            "app-a",
            &[(ENV, "dev.proj1"), ("traceparent", TRACEPARENT)],
        )
        .await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    let waypoint = mesh.envoy("waypoint-default").unwrap();
    assert!(
        waypoint
            .stat_eventually("wasmcustom.virtual_env.env_source.trace", 2)
            .await?
            >= 2
    );
    Ok(())
}

/// gRPC all the way through the waypoint (GRPCRoutes: the services declare gRPC).
#[tokio::test]
async fn a_grpc_chain_through_the_waypoint_keeps_its_env() -> Result<()> {
    let _serial = ONE_MESH_AT_A_TIME.lock().await;
    let mut options = options();
    options.sidecar_protocol = Protocol::H2c;
    options.app_protocol = Protocol::Grpc;
    let mesh = Mesh::start(topology(), options).await?;
    let hop = mesh
        .request_through_waypoint(Protocol::Grpc, "app-a", &[(ENV, "dev.proj1")])
        .await?;
    assert_eq!(hop.first_error(), None);
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    assert!(hop.chain().iter().all(|h| h.grpc), "{hop:?}");
    Ok(())
}

/// A sidecar namespace and an ambient one calling each other: the sidecar routes into the
/// ambient namespace by its table (its HTTPRoutes, to its pods directly: a sidecar client
/// applies the routes itself), and the ambient pod's call back into the sidecar
/// namespace, whose service has no waypoint, passes ztunnel only: it reaches a pod of the
/// service, not routed by env (as in Istio: no L7 for ambient callers without a waypoint).
#[tokio::test]
async fn calls_across_a_sidecar_and_an_ambient_namespace() -> Result<()> {
    let _serial = ONE_MESH_AT_A_TIME.lock().await;
    let topology =
        Topology::load(&repo_root().join("tests/topologies/ambient-mixed.yaml")).unwrap();
    let mesh = Mesh::start(topology, options()).await?;
    let plans = mesh.plans()?;
    assert_eq!(plans["default"].routing_api, RoutingApi::VirtualService);
    assert_eq!(plans["pay"].routing_api, RoutingApi::HttpRoute);
    for _ in 0..4 {
        let hop = mesh.request("app-a", &[(ENV, "dev.proj1")]).await?;
        let pods = hop.pods();
        assert_eq!(pods[..2], ["app-a-proj1", "ledger-proj1"]);
        assert!(pods[2].starts_with("app-c-"), "{pods:?}");
        let hop = mesh.request("app-a", &[(ENV, "dev.proj2")]).await?;
        assert_eq!(hop.pods()[..2], ["app-a-dev", "ledger-dev"]);
    }
    Ok(())
}

/// Entry into an ambient namespace through a Gateway API Gateway under its owner's edge
/// policy (`tests/topologies/ambient-entry.yaml`): the gateway routes the first hop by
/// env (its plugin attached by targetRefs), every later hop goes through the waypoint,
/// and an env the policy does not admit reaches no application in any spelling.
#[tokio::test]
async fn entering_an_ambient_namespace_through_a_gateway_api_gateway() -> Result<()> {
    let _serial = ONE_MESH_AT_A_TIME.lock().await;
    let topology =
        Topology::load(&repo_root().join("tests/topologies/ambient-entry.yaml")).unwrap();
    let mut options = options();
    options.forward.extend(["cookie".into(), "x-env".into()]);
    let mesh = Mesh::start(topology, options).await?;
    let plan = mesh.plan()?;
    assert_eq!(plan.routing_api, RoutingApi::HttpRoute);
    assert!(plan.mesh_routes.iter().any(|r| r.name() == "app-a.gateway"));
    assert!(plan
        .gateway_plugins
        .iter()
        .all(|p| !p.spec.target_refs.is_empty()));
    let hop = mesh
        .request_host("shop.example.com", &[(ENV, "dev.proj1")])
        .await?;
    assert_eq!(hop.pods(), ["app-a-proj1", "app-b-dev", "app-c-proj1"]);
    let hop = mesh.request_host("shop.example.com", &[]).await?;
    assert_eq!(hop.pods(), ["app-a-dev", "app-b-dev", "app-c-dev"]);
    for headers in virtual_env_e2e::smuggling::attempts("dev.other", "dev.proj1") {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let hop = mesh.request_host("shop.example.com", &headers).await?;
        let leak = virtual_env_e2e::smuggling::received(&hop, "dev.other");
        assert_eq!(leak, None, "{headers:?}");
    }
    Ok(())
}
