//! End-to-end with routes written as Gateway API (`spec.routing.api: HTTPRoute`): the
//! controller's HTTPRoutes and env Services, turned into each sidecar's routes as istiod
//! merges and sorts them (`tests/src/istiod.rs`), on real Envoys (`$ENVOY`).
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
    Topology::load(&repo_root().join("tests/topologies/gateway-api.yaml")).unwrap()
}

fn options() -> MeshOptions {
    MeshOptions::new(env!("CARGO_BIN_EXE_virtual-env-mesh").into())
}

const ENV: &str = "x-virtual-env";

#[tokio::test]
async fn httproutes_fall_back_at_every_hop_and_at_any_depth() -> Result<()> {
    let _serial = ONE_MESH_AT_A_TIME.lock().await;
    let mut mesh = Mesh::start(topology(), options()).await?;
    let plan = mesh.plan()?;
    assert_eq!(plan.routing_api, RoutingApi::HttpRoute);
    assert!(plan.virtual_services.is_empty() && plan.destination_rules.is_empty());
    assert_eq!(plan.mesh_routes.len(), 4);
    let hop = mesh.request("app-a", &[(ENV, "dev.proj1.user1")]).await?;
    assert_eq!(
        hop.pods(),
        ["app-a-user1", "app-b-proj1", "app-c-dev", "app-d-user1"]
    );
    assert!(hop
        .chain()
        .iter()
        .all(|h| h.received_env.as_deref() == Some("dev.proj1.user1")));
    let hop = mesh.request("app-a", &[(ENV, "dev.proj1")]).await?;
    assert_eq!(
        hop.pods(),
        ["app-a-proj1", "app-b-proj1", "app-c-dev", "app-d-proj1"]
    );
    // An env nobody deploys, and none at all: the default rule, to dev's Service.
    for headers in [&[(ENV, "dev.proj9")][..], &[]] {
        let hop = mesh.request("app-a", headers).await?;
        assert_eq!(
            hop.pods(),
            ["app-a-dev", "app-b-dev", "app-c-dev", "app-d-dev"]
        );
    }
    // C'' becomes ready: its Service and its rule arrive, and the chain takes it.
    mesh.set_ready("app-c-user1", true)?;
    let plan = mesh.plan()?;
    assert_eq!(
        plan.env_services
            .iter()
            .filter(|s| s
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("app-c-")))
            .count(),
        2
    );
    mesh.wait_for_chain(
        "app-a",
        &[(ENV, "dev.proj1.user1")],
        &["app-a-user1", "app-b-proj1", "app-c-user1", "app-d-user1"],
    )
    .await?;
    Ok(())
}

/// gRPC all the way (HTTP/2, `application/grpc`, trailers) through GRPCRoutes.
#[tokio::test]
async fn a_grpc_chain_through_grpcroutes_keeps_its_env() -> Result<()> {
    let _serial = ONE_MESH_AT_A_TIME.lock().await;
    let mut options = options();
    options.sidecar_protocol = Protocol::H2c;
    options.app_protocol = Protocol::Grpc;
    let mesh = Mesh::start(topology(), options).await?;
    // The services declare gRPC (appProtocol): their routes are GRPCRoutes.
    let plan = mesh.plan()?;
    assert!(
        plan.mesh_routes
            .iter()
            .all(|r| r.kind() == virtual_env_controller::existing::Kind::GrpcRoute),
        "{:?}",
        plan.mesh_routes
    );
    let hop = mesh
        .request_with(Protocol::Grpc, "app-a", &[(ENV, "dev.proj1.user1")])
        .await?;
    assert_eq!(hop.first_error(), None);
    assert_eq!(
        hop.pods(),
        ["app-a-user1", "app-b-proj1", "app-c-dev", "app-d-user1"]
    );
    assert!(hop.chain().iter().all(|h| h.grpc), "{hop:?}");
    Ok(())
}

const SHOP: &str = "shop.example.com";
const PROJ1_CHAIN: [&str; 3] = ["app-a-proj1", "app-b-dev", "app-c-proj1"];
const DEV_CHAIN: [&str; 3] = ["app-a-dev", "app-b-dev", "app-c-dev"];

/// Entry through a Gateway API Gateway (`tests/topologies/gateway-api-entry.yaml`): the
/// gateway Envoy runs the plugin object the controller attaches to the Gateway by
/// `targetRefs`, the routes istiod builds from the HTTPRoute bound to it, and its owner's
/// edge guard (`allowList: [dev.proj1, dev.proj1.*]`). An admitted env from any carrier
/// falls back at every hop; an env the policy does not admit reaches no application in
/// any spelling a hostile client tries (the applications forward every carrier).
#[tokio::test]
async fn entering_through_a_gateway_api_gateway_falls_back_within_the_edge_policy() -> Result<()> {
    let _serial = ONE_MESH_AT_A_TIME.lock().await;
    let topology = Topology::load(&repo_root().join("tests/topologies/gateway-api-entry.yaml"))?;
    let mut options = options();
    options.forward.extend(["cookie".into(), "x-env".into()]);
    let mesh = Mesh::start(topology, options).await?;
    let plan = mesh.plan()?;
    assert!(plan.mesh_routes.iter().any(|r| r.name() == "app-a.gateway"));
    let targets: Vec<&str> = plan
        .gateway_plugins
        .iter()
        .flat_map(|p| &p.spec.target_refs)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(targets, ["ingressgateway"]);
    for (source, env) in [
        ((ENV, "dev.proj1"), "dev.proj1"),
        (("x-env", "dev.proj1"), "dev.proj1"),
        (
            ("baggage", "userId=alice,virtual-env=dev.proj1"),
            "dev.proj1",
        ),
        (
            ("cookie", "session=42; env=dev.proj1; theme=dark"),
            "dev.proj1",
        ),
        ((ENV, "dev.proj1.alice"), "dev.proj1.alice"),
    ] {
        let hop = mesh.request_host(SHOP, &[source]).await?;
        assert_eq!(hop.pods(), PROJ1_CHAIN, "{source:?}");
        assert_eq!(hop.chain()[0].received_env.as_deref(), Some(env));
    }
    let hop = mesh.request_host(SHOP, &[]).await?;
    assert_eq!(hop.pods(), DEV_CHAIN, "no env: the default subset");
    // Not admitted: stripped at the gateway, so the baseline serves and no one sees it.
    let hop = mesh.request_host(SHOP, &[(ENV, "dev.other")]).await?;
    assert_eq!(hop.pods(), DEV_CHAIN);
    assert_eq!(hop.chain()[0].received_env, None);
    for headers in virtual_env_e2e::smuggling::attempts("dev.other", "dev.proj1") {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let hop = mesh.request_host(SHOP, &headers).await?;
        let leak = virtual_env_e2e::smuggling::received(&hop, "dev.other");
        assert_eq!(leak, None, "{headers:?}");
        for h in hop.chain() {
            assert_ne!(h.env.as_deref(), Some("dev.other"), "{headers:?}");
        }
    }
    let gateway = mesh.envoy("gateway").unwrap();
    assert!(
        gateway
            .stat_eventually("wasmcustom.virtual_env.route.exact", 5)
            .await?
            >= 5
    );
    Ok(())
}
