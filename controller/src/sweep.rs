//! The sweep of orphaned gateway plugin objects.
//!
//! A VirtualEnvironment's plugin objects in a gateway's namespace cannot carry an owner
//! reference to it (owner references do not cross namespaces), so Kubernetes' garbage
//! collection does not reach them: they name their owner by the
//! `env.alibaba.com/owner-uid` label, and the VirtualEnvironment's finalizer deletes them.
//! One removed while no controller ran, or whose finalizer was taken off by hand (the way
//! out of a `Terminating` uninstall), leaves them in the gateway, still routing. The sweep
//! deletes every such object whose owner is gone.

use std::collections::BTreeSet;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Preconditions};
use kube::ResourceExt;
use tracing::{info, warn};

use crate::crd::VirtualEnvironment;
use crate::objects::{MANAGED_BY, MANAGED_BY_LABEL, OWNER_NAMESPACE_LABEL, OWNER_UID_LABEL};
use crate::reconcile::{timed, Context, Error};

/// Deletes the plugin objects whose owning VirtualEnvironment no longer exists; returns
/// how many went.
///
/// Everything is read from the API server, not the caches (a cache still filling would
/// make every owner look gone): the plugin objects first, then the VirtualEnvironments,
/// so an owner that existed when its object was listed is seen. Each delete is
/// conditional on the object's UID and resourceVersion as listed: an object changed or
/// replaced meanwhile is left alone. After a delete the owner's namespace is planned
/// again: a VirtualEnvironment recreated there under the same name (a new UID) left the
/// old object alone as another's, and can now apply its own without waiting for a resync.
pub async fn sweep_orphans(ctx: &Context) -> Result<usize, Error> {
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY},{OWNER_UID_LABEL}");
    let mut labelled = Vec::new();
    for kind in ctx
        .settings
        .extension_api
        .watched_kinds(ctx.settings.gateway_api)
    {
        if !kind.is_plugin() {
            continue;
        }
        let all: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &kind.api_resource());
        match timed(all.list(&ListParams::default().labels(&selector))).await {
            Ok(list) => labelled.extend(list.items.into_iter().map(|o| (kind, o))),
            // The kind is not served (any more): nothing of it to sweep.
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    if labelled.is_empty() {
        return Ok(0);
    }
    let ves: Api<VirtualEnvironment> = Api::all(ctx.client.clone());
    let owners: BTreeSet<String> = timed(ves.list(&ListParams::default()))
        .await?
        .items
        .iter()
        .filter_map(|ve| ve.uid())
        .collect();
    let mut swept = 0;
    for (kind, object) in labelled {
        let Some(owner) = object.labels().get(OWNER_UID_LABEL) else {
            continue;
        };
        if owners.contains(owner) {
            continue;
        }
        let namespace = object.namespace().unwrap_or_default();
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &namespace, &kind.api_resource());
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: object.uid(),
                resource_version: object.resource_version(),
            }),
            ..DeleteParams::default()
        };
        match timed(api.delete(&object.name_any(), &params)).await {
            Ok(_) => {
                info!(
                    "deleted {} {namespace}/{}: its VirtualEnvironment ({owner}) is gone",
                    kind.name(),
                    object.name_any()
                );
                ctx.metrics.pruned(kind.name());
                swept += 1;
                if let Some(owner_namespace) = object.labels().get(OWNER_NAMESPACE_LABEL) {
                    ctx.peers.replan_namespace(owner_namespace);
                }
            }
            // Gone already, or changed since it was listed: not ours to judge now.
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!("cannot delete orphaned {}: {e}", object.name_any()),
        }
    }
    Ok(swept)
}
