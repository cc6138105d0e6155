//! Reconciling a `GatewayPolicy`: its edge guard (`edge_guard.rs`) applied to the
//! gateway's pods, an older one (another namespace, the other plugin API) pruned, and
//! the status. The guard carries every VirtualEnvironment's carriers, so any
//! VirtualEnvironment's change reconciles every policy; deleting the policy deletes the
//! guard through its owner reference.

use std::sync::Arc;
use std::time::Instant;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use tracing::{info, instrument, warn};

use crate::crd::VirtualEnvironment;
use crate::edge_guard::{plan_edge_guard, EdgeGuard, POLICY_LABEL};
use crate::existing::Existing;
use crate::gateway_policy::{GatewayPolicy, GatewayPolicyStatus};
use crate::istio::WasmPlugin;
use crate::reconcile::{
    apply_plugin, apply_status, is_current, prune_plugin, ready_condition, Context, Error,
    CACHE_WAIT, RESYNC,
};

#[instrument(skip_all, fields(policy = policy.name_any()))]
pub async fn reconcile_policy(
    policy: Arc<GatewayPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if policy.metadata.deletion_timestamp.is_some() {
        // Its guard goes with it (owner reference).
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    ctx.caches.ready(CACHE_WAIT).await?;
    let ves: Vec<Arc<VirtualEnvironment>> = ctx
        .caches
        .virtual_environments
        .as_ref()
        .map(|store| store.state())
        .unwrap_or_default();
    let ves: Vec<&VirtualEnvironment> = ves.iter().map(|ve| &**ve).collect();
    let api: Api<GatewayPolicy> = Api::all(ctx.client.clone());
    let guard = match plan_edge_guard(&policy, &ves, &ctx.settings.wasm) {
        Ok(guard) => guard,
        Err(why) => {
            warn!("no edge guard: {why}");
            // The guard in force, if any, stays: a bad edit never opens the edge.
            patch_status(
                &api,
                &policy,
                status(&policy, None, false, "InvalidSpec", &why),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let ours: Vec<_> = ctx
        .caches
        .plugins_labelled(POLICY_LABEL, &policy.name_any())
        .into_iter()
        .filter(|e| e.labelled && e.managed_by(policy.uid().as_deref()))
        .collect();
    let Some(guard) = guard else {
        // Accepting every env: nothing to judge, so no guard.
        prune_all(&ctx, ours.iter()).await?;
        let message = "edgeTrust accept: envs from outside are routed as they come; no edge guard";
        patch_status(
            &api,
            &policy,
            status(&policy, None, true, "Accepted", message),
        )
        .await?;
        return Ok(Action::requeue(RESYNC));
    };
    apply_guard(&ctx, &api, &policy, &guard.plugin, &ours).await?;
    let (at, ready, reason, message) = guard_report(&guard);
    patch_status(
        &api,
        &policy,
        status(&policy, Some(at), ready, reason, &message),
    )
    .await?;
    info!(took = ?started.elapsed(), "edge guard reconciled");
    Ok(Action::requeue(RESYNC))
}

/// Applies the policy's guard (unless it is in force already) and prunes any other guard
/// of the policy (another namespace, the other API); a failed apply is reported.
async fn apply_guard(
    ctx: &Context,
    api: &Api<GatewayPolicy>,
    policy: &GatewayPolicy,
    plugin: &WasmPlugin,
    ours: &[Existing],
) -> Result<(), Error> {
    let kind = ctx.settings.extension_api.kind();
    let is_planned = |e: &Existing| {
        e.kind == kind
            && e.name == plugin.name_any()
            && Some(e.namespace.as_str()) == plugin.namespace().as_deref()
    };
    let current = is_current(ctx, &ours.iter().collect::<Vec<_>>(), plugin);
    if let Err(e) = apply_plugin(ctx, plugin, current).await {
        let message = format!("applying the edge guard: {e}");
        patch_status(
            api,
            policy,
            status(policy, None, false, "ApplyFailed", &message),
        )
        .await?;
        return Err(e);
    }
    if !current {
        ctx.metrics.applied(kind.name());
    }
    prune_all(ctx, ours.iter().filter(|e| !is_planned(e))).await
}

async fn prune_all<'a>(
    ctx: &Context,
    stale: impl Iterator<Item = &'a Existing>,
) -> Result<(), Error> {
    for plugin in stale {
        if prune_plugin(ctx, plugin).await? {
            ctx.metrics.pruned(plugin.kind.name());
        }
    }
    Ok(())
}

/// Where the guard runs, whether the policy is Ready, why, and the message saying so.
fn guard_report(guard: &EdgeGuard) -> (String, bool, &'static str, String) {
    let plugin = &guard.plugin;
    let at = format!(
        "{}/{}",
        plugin.namespace().unwrap_or_default(),
        plugin.name_any()
    );
    let mut message = format!("edge guard {at} judges every request through the gateway");
    if !guard.left_out.is_empty() {
        message.push_str(&format!("; not judged: {}", guard.left_out.join(", ")));
    }
    // Carriers left out for the bounds pass the edge unjudged: that needs someone's eye.
    let (ready, reason) = match guard.overflow {
        false => (true, "Applied"),
        true => (false, "CarriersLeftOut"),
    };
    (at, ready, reason, message)
}

pub fn error_policy(policy: Arc<GatewayPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed();
    warn!(policy = policy.name_any(), %error, "reconcile failed, retrying");
    Action::requeue(std::time::Duration::from_secs(30))
}

fn status(
    policy: &GatewayPolicy,
    guard: Option<String>,
    ready: bool,
    reason: &str,
    message: &str,
) -> GatewayPolicyStatus {
    let previous = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    GatewayPolicyStatus {
        observed_generation: generation,
        conditions: vec![ready_condition(
            &previous.conditions,
            generation,
            ready,
            reason,
            message,
        )],
        // The guard in force: the new one, none when the policy needs none, else the
        // last one (a failed write or a bad edit leaves it where it is).
        guard: match (ready, guard) {
            (_, Some(guard)) => Some(guard),
            (true, None) => None,
            (false, None) => previous.guard,
        },
    }
}

async fn patch_status(
    api: &Api<GatewayPolicy>,
    policy: &GatewayPolicy,
    status: GatewayPolicyStatus,
) -> Result<(), Error> {
    apply_status(api, &policy.name_any(), "GatewayPolicy", &status).await
}

#[cfg(test)]
mod tests {
    //! Against kube-rs's tower-test mock API server (no API server runs here): each request
    //! is checked for method, path and RBAC, and answered.

    use http::{Method, Request, Response};
    use kube::client::Body;
    use kube::runtime::reflector::store::Writer;
    use kube::Client;
    use serde_json::Value;

    use super::*;
    use crate::caches::testing::{fill, filled};
    use crate::existing::Kind;
    use crate::metrics::Metrics;
    use crate::peer_namespaces::PeerDirectory;
    use crate::plan::fixtures::{ingress_policy, seed_ve, settings};
    use crate::plan::Snapshot;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    const GUARD: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/istio-system/wasmplugins/virtual-env-edge.ingressgateway";
    const STATUS: &str = "/apis/env.alibaba.com/v1alpha1/gatewaypolicies/ingressgateway/status";

    fn context(istio: &[(Kind, Value)], ves: Vec<VirtualEnvironment>) -> (Arc<Context>, Handle) {
        let mut caches = filled(&Snapshot::default(), istio);
        let mut writer = Writer::default();
        fill(&mut writer, ves);
        caches.virtual_environments = Some(writer.as_reader());
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let peers = PeerDirectory::new(
            Writer::default().as_reader(),
            futures::channel::mpsc::unbounded().0,
        );
        let ctx = Context::new(
            Client::new(service, "default"),
            settings(),
            Arc::new(Metrics::default()),
            caches,
            peers,
        );
        (Arc::new(ctx), handle)
    }

    /// The next request: `method` on `path`, granted by the RBAC; answered with its own
    /// body (what an apply returns). Returns the body.
    async fn answer(handle: &mut Handle, method: Method, path: &str) -> Value {
        let (request, send) = handle.next_request().await.expect("a request");
        let uri = request.uri().to_string();
        assert_eq!(request.method(), method, "{uri}");
        assert!(uri.starts_with(path), "expected {method} {path}, got {uri}");
        assert!(
            crate::rbac::permits(crate::rbac::CLUSTER, method.as_str(), &uri),
            "{method} {uri} is not granted"
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let reply = if method == Method::DELETE {
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})
        } else if path == STATUS {
            serde_json::to_value(policy()).unwrap()
        } else {
            body.clone()
        };
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&reply).unwrap(),
        )));
        body
    }

    fn policy() -> GatewayPolicy {
        let mut policy = ingress_policy(r#"[{namespace: "*", hosts: ["*"]}]"#, "{mode: strip}");
        policy.metadata.uid = Some("policy-uid".into());
        policy.metadata.generation = Some(2);
        policy
    }

    /// The guard goes onto the gateway's pods with every VirtualEnvironment's carriers; a
    /// guard of this policy left in another namespace (the workload moved) is pruned; the
    /// status names the guard.
    #[tokio::test]
    async fn a_policy_applies_its_edge_guard_prunes_an_old_one_and_says_so() {
        let old_guard = (
            Kind::WasmPlugin,
            serde_json::json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                "metadata": {"name": "virtual-env-edge.ingressgateway", "namespace": "old-gateways",
                "uid": "old-guard", "labels": {crate::plan::MANAGED_BY_LABEL: crate::plan::MANAGED_BY,
                    POLICY_LABEL: "ingressgateway"},
                "ownerReferences": [{"apiVersion": "env.alibaba.com/v1alpha1", "kind": "GatewayPolicy",
                    "name": "ingressgateway", "uid": "policy-uid"}]},
                "spec": {}}),
        );
        let mut team = seed_ve();
        team.metadata.namespace = Some("team".into());
        team.spec.env_header.name = "x-team-env".into();
        let (ctx, mut handle) = context(&[old_guard], vec![seed_ve(), team]);
        let server = tokio::spawn(async move {
            let guard = answer(&mut handle, Method::PATCH, GUARD).await;
            assert_eq!(guard["spec"]["phase"], "AUTHN");
            assert_eq!(
                guard["spec"]["selector"]["matchLabels"]["istio"],
                "ingressgateway"
            );
            assert_eq!(guard["metadata"]["ownerReferences"][0]["uid"], "policy-uid");
            let config = &guard["spec"]["pluginConfig"];
            assert_eq!(config["edgeTrust"]["mode"], "strip");
            assert_eq!(
                config["edgeCarriers"]["headers"],
                serde_json::json!(["x-team-env"])
            );
            answer(
                &mut handle,
                Method::DELETE,
                "/apis/extensions.istio.io/v1alpha1/namespaces/old-gateways/wasmplugins/virtual-env-edge.ingressgateway",
            )
            .await;
            let status = answer(&mut handle, Method::PATCH, STATUS).await;
            assert_eq!(status["status"]["conditions"][0]["status"], "True");
            assert_eq!(
                status["status"]["guard"],
                "istio-system/virtual-env-edge.ingressgateway"
            );
        });
        reconcile_policy(Arc::new(policy()), ctx).await.unwrap();
        server.await.unwrap();
    }

    /// A policy whose edge policy is not valid keeps the guard in force (nothing is
    /// written but the status): a bad edit never opens the edge.
    #[tokio::test]
    async fn an_invalid_policy_writes_only_its_status() {
        let mut bad = policy();
        bad.spec.edge_trust = Some(crate::crd::EdgeTrustSpec {
            mode: crate::crd::EdgeTrustMode::AllowList,
            allow: vec![],
            allow_trace: false,
        });
        let (ctx, mut handle) = context(&[], vec![]);
        let server = tokio::spawn(async move {
            let status = answer(&mut handle, Method::PATCH, STATUS).await;
            assert_eq!(status["status"]["conditions"][0]["status"], "False");
            assert_eq!(status["status"]["conditions"][0]["reason"], "InvalidSpec");
            assert!(status["status"]["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("at least one entry"));
        });
        reconcile_policy(Arc::new(bad), ctx).await.unwrap();
        server.await.unwrap();
    }
}
