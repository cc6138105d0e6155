//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas only
//! one writes. The holder renews the lease every `renew` interval; another replica takes it
//! over once it has not been renewed for `duration`. Writes carry the lease's
//! resourceVersion, so two replicas racing for it cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

/// What to do with the lease as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease.
    Wait,
}

/// Pure: whether `me` may hold the lease at `now`.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp, duration: Duration) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) => {
            let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
            let lease_secs = spec
                .lease_duration_seconds
                .map_or(duration.as_secs(), |s| u64::try_from(s).unwrap_or(0));
            let expired = renewed.is_none_or(|t| {
                let age = now.duration_since(t.0);
                age.as_secs() >= 0 && age.as_secs().unsigned_abs() >= lease_secs
            });
            if expired {
                Decision::Acquire
            } else {
                Decision::Wait
            }
        }
    }
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// One round: returns whether we hold the lease afterwards.
    pub async fn try_hold(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
            self.duration,
        );
        if decision == Decision::Wait {
            return Ok(false);
        }
        let transitions = current
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        let acquire_time = match (decision, current.as_ref().and_then(|l| l.spec.as_ref())) {
            (Decision::Renew, Some(spec)) => spec.acquire_time.clone(),
            _ => Some(MicroTime(now)),
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: current
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: i32::try_from(self.duration.as_secs()).ok(),
                acquire_time,
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(if decision == Decision::Acquire {
                    transitions + 1
                } else {
                    transitions
                }),
                ..LeaseSpec::default()
            }),
        };
        let result = match current {
            None => self.api.create(&PostParams::default(), &lease).await,
            Some(_) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => {
                if decision == Decision::Acquire {
                    info!(identity = self.identity, "acquired the leader lease");
                }
                Ok(true)
            }
            // Someone else wrote the lease since we read it.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Blocks until this replica holds the lease.
    pub async fn acquire(&self, retry: Duration) {
        loop {
            match self.try_hold().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!("leader election: {e}"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews every `renew` until a renewal fails for longer than the lease lasts; returns
    /// then, when another replica may already have taken over.
    pub async fn keep(&self, renew: Duration) {
        let mut last_held = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(renew).await;
            match self.try_hold().await {
                Ok(true) => last_held = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!("lost the leader lease to another replica");
                    return;
                }
                Err(e) => warn!("renewing the leader lease: {e}"),
            }
            if last_held.elapsed() >= self.duration {
                warn!("could not renew the leader lease in time");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn held_by(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                now - k8s_openapi::jiff::SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..LeaseSpec::default()
        }
    }

    mod api {
        //! The Lease calls against kube-rs's tower-test mock API server (no cluster here).

        use http::{Method, Request, Response};
        use kube::client::Body;
        use kube::Client;
        use serde_json::{json, Value};

        use super::*;

        const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/virtual-env-system/leases";

        fn elector() -> (
            Elector,
            tower_test::mock::Handle<Request<Body>, Response<Body>>,
        ) {
            let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let api = Api::namespaced(
                Client::new(service, "virtual-env-system"),
                "virtual-env-system",
            );
            (
                Elector::new(api, "virtual-env-controller", "pod-a", LEASE),
                handle,
            )
        }

        fn reply(code: u16, body: &Value) -> Response<Body> {
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap()
        }

        fn not_found() -> Value {
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"})
        }

        fn lease(holder: &str, renewed: Timestamp) -> Value {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "virtual-env-controller", "resourceVersion": "7"},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                         "renewTime": MicroTime(renewed), "leaseTransitions": 2}})
        }

        async fn body(req: Request<Body>) -> Value {
            let uri = req.uri().to_string();
            assert!(
                crate::rbac::permits(crate::rbac::OWN_NAMESPACE, req.method().as_str(), &uri),
                "{} {uri} is not in rbac::OWN_NAMESPACE",
                req.method()
            );
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap()
        }

        #[tokio::test]
        async fn creates_the_lease_when_there_is_none() {
            let (elector, mut handle) = elector();
            let server = tokio::spawn(async move {
                let (req, send) = handle.next_request().await.unwrap();
                assert_eq!(req.method(), Method::GET);
                assert_eq!(req.uri().path(), format!("{LEASES}/virtual-env-controller"));
                send.send_response(reply(404, &not_found()));
                let (req, send) = handle.next_request().await.unwrap();
                assert_eq!(req.method(), Method::POST);
                assert_eq!(req.uri().path(), LEASES);
                let created = body(req).await;
                assert_eq!(created["spec"]["holderIdentity"], "pod-a");
                assert_eq!(created["spec"]["leaseTransitions"], 1);
                send.send_response(reply(201, &created));
            });
            assert!(elector.try_hold().await.unwrap());
            server.await.unwrap();
        }

        #[tokio::test]
        async fn takes_over_an_expired_lease_with_its_resource_version() {
            let (elector, mut handle) = elector();
            let server = tokio::spawn(async move {
                let (_, send) = handle.next_request().await.unwrap();
                let stale = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60);
                send.send_response(reply(200, &lease("pod-b", stale)));
                let (req, send) = handle.next_request().await.unwrap();
                assert_eq!(req.method(), Method::PUT);
                let replaced = body(req).await;
                assert_eq!(replaced["metadata"]["resourceVersion"], "7");
                assert_eq!(replaced["spec"]["holderIdentity"], "pod-a");
                assert_eq!(replaced["spec"]["leaseTransitions"], 3);
                send.send_response(reply(200, &replaced));
            });
            assert!(elector.try_hold().await.unwrap());
            server.await.unwrap();
        }

        #[tokio::test]
        async fn waits_while_another_replica_holds_it_and_loses_a_race_gracefully() {
            let (elector, mut handle) = elector();
            let server = tokio::spawn(async move {
                // Held and fresh: no write at all.
                let (_, send) = handle.next_request().await.unwrap();
                send.send_response(reply(200, &lease("pod-b", Timestamp::now())));
                // Expired, but another replica writes first: 409 on our replace.
                let (_, send) = handle.next_request().await.unwrap();
                let stale = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60);
                send.send_response(reply(200, &lease("pod-b", stale)));
                let (req, send) = handle.next_request().await.unwrap();
                assert_eq!(req.method(), Method::PUT);
                send.send_response(reply(409, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict", "message": "conflict"})));
            });
            assert!(!elector.try_hold().await.unwrap());
            assert!(!elector.try_hold().await.unwrap());
            server.await.unwrap();
        }
    }

    #[test]
    fn a_missing_or_unheld_lease_is_taken() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now, LEASE), Decision::Acquire);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", now, LEASE),
            Decision::Acquire
        );
    }

    #[test]
    fn the_holder_renews_and_others_wait_until_it_expires() {
        let now = Timestamp::now();
        assert_eq!(
            decide(Some(&held_by("a", 3)), "a", now, LEASE),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held_by("a", 3)), "b", now, LEASE),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&held_by("a", 16)), "b", now, LEASE),
            Decision::Acquire
        );
    }
}
