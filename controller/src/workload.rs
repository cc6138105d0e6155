//! The workload name Istio gives a pod, which an ambient-mode waypoint's downstream peer
//! metadata carries (`workload`): the waypoint's plugin config maps it to the env of the
//! workload's pods (`workloads`, see `waypoint.rs`).
//!
//! As istio/istio `pkg/kube/util.go` derives it (`GetWorkloadMetaFromPod`, used for the
//! ambient workload API's `workload_name` in `pilot/pkg/serviceregistry/ambient`): the
//! `service.istio.io/workload-name` label; else, for a pod whose name was generated, its
//! controller: a ReplicaSet without its `pod-template-hash` (a Deployment), likewise for
//! Argo Rollouts, a ReplicationController of an OpenShift DeploymentConfig by its
//! `deploymentconfig` label, a Job without a `-<8 to 10 digits>` suffix (a CronJob's);
//! any other controller by its name; else the pod's name.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";

/// Istio's workload name of `pod`.
pub fn workload_name(pod: &Pod) -> String {
    let labels = pod.labels();
    if let Some(name) = labels.get(WORKLOAD_NAME_LABEL) {
        return name.clone();
    }
    let generated = pod
        .metadata
        .generate_name
        .as_deref()
        .is_some_and(|g| !g.is_empty());
    let controller = pod
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true));
    let (Some(owner), true) = (controller, generated) else {
        return pod.name_any();
    };
    let trimmed = |hash_label: &str| {
        let hash = labels.get(hash_label).filter(|h| !h.is_empty())?;
        owner
            .name
            .strip_suffix(hash.as_str())?
            .strip_suffix('-')
            .map(str::to_owned)
    };
    let name = match owner.kind.as_str() {
        "ReplicaSet" => trimmed("pod-template-hash")
            .or_else(|| trimmed("rollouts-pod-template-hash"))
            .unwrap_or_else(|| owner.name.clone()),
        "ReplicationController" => labels
            .get("deploymentconfig")
            .filter(|d| !d.is_empty())
            .cloned()
            .unwrap_or_else(|| owner.name.clone()),
        "Job" => cron_job_of(&owner.name).unwrap_or(&owner.name).to_owned(),
        _ => owner.name.clone(),
    };
    if name.is_empty() {
        pod.name_any()
    } else {
        name
    }
}

/// `(.+)-\d{8,10}$`: the CronJob a Job's name was made from.
fn cron_job_of(job: &str) -> Option<&str> {
    let (base, digits) = job.rsplit_once('-')?;
    ((8..=10).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !base.is_empty())
    .then_some(base)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(
        name: &str,
        generated: bool,
        owner: Option<(&str, &str)>,
        labels: &[(&str, &str)],
    ) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                generate_name: generated.then(|| format!("{name}-")),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                owner_references: owner.map(|(kind, name)| {
                    vec![OwnerReference {
                        kind: kind.into(),
                        name: name.into(),
                        controller: Some(true),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn workload_names_as_istio_derives_them() {
        let rs = Some(("ReplicaSet", "reviews-v2-5d8f7b9c4"));
        for (pod, want) in [
            // A Deployment's pod: the ReplicaSet without its hash.
            (
                pod(
                    "reviews-v2-5d8f7b9c4-x7k2p",
                    true,
                    rs,
                    &[("pod-template-hash", "5d8f7b9c4")],
                ),
                "reviews-v2",
            ),
            // Without the hash label (or not its suffix): the ReplicaSet.
            (
                pod("reviews-v2-5d8f7b9c4-x7k2p", true, rs, &[]),
                "reviews-v2-5d8f7b9c4",
            ),
            (
                pod("p", true, rs, &[("pod-template-hash", "zzz")]),
                "reviews-v2-5d8f7b9c4",
            ),
            // Argo Rollouts.
            (
                pod(
                    "p",
                    true,
                    Some(("ReplicaSet", "canary-7f9c")),
                    &[("rollouts-pod-template-hash", "7f9c")],
                ),
                "canary",
            ),
            // A CronJob's Job, a Job, a StatefulSet.
            (
                pod("p", true, Some(("Job", "backup-28312345")), &[]),
                "backup",
            ),
            (
                pod("p", true, Some(("Job", "migrate-1234")), &[]),
                "migrate-1234",
            ),
            (pod("db-0", true, Some(("StatefulSet", "db")), &[]), "db"),
            // OpenShift.
            (
                pod(
                    "p",
                    true,
                    Some(("ReplicationController", "web-3")),
                    &[("deploymentconfig", "web")],
                ),
                "web",
            ),
            // A pod made by hand, or whose name was not generated: its own name.
            (pod("debug", false, None, &[]), "debug"),
            (
                pod(
                    "named",
                    false,
                    Some(("ReplicaSet", "x-1")),
                    &[("pod-template-hash", "1")],
                ),
                "named",
            ),
            // The label wins over everything.
            (
                pod(
                    "p",
                    true,
                    rs,
                    &[("service.istio.io/workload-name", "custom")],
                ),
                "custom",
            ),
        ] {
            assert_eq!(workload_name(&pod), want, "{:?}", pod.metadata);
        }
    }
}
