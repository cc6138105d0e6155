//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas only
//! one writes. Safe by construction, as client-go's leader election is:
//!
//! - **No clock is compared with another machine's.** A replica waiting for the lease
//!   notes, by its own monotonic clock, when it first saw the lease record as it is; it
//!   takes the lease only once the record has not changed for a whole lease duration. The
//!   `renewTime` written in the lease is for people, never compared.
//! - **The leader stops before anyone can take over.** It must renew within the renew
//!   deadline (shorter than the lease), counted from when it *sent* its last successful
//!   renewal; every API call is bounded by that deadline. Past it, [`Elector::keep`]
//!   returns and the caller stops writing at once (no grace period), while a waiting
//!   replica still waits out the rest of the lease.
//! - **The lease is released on shutdown**, so the next leader does not wait for expiry.
//!
//! Writes carry the lease's resourceVersion, so two replicas racing for it cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
use tracing::{info, warn};

/// The election's durations (client-go's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease record must stay unchanged before another replica takes it.
    pub lease: Duration,
    /// How long the leader may go without a successful renewal before it stops writing.
    pub renew_deadline: Duration,
    /// Between attempts to acquire or renew.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What to do with the lease as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder has not renewed it for a whole lease: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease.
    Wait,
}

/// Pure: whether `me` may hold the lease, given how long this replica has seen the lease
/// record unchanged (`unchanged_for`, by its own clock).
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    lease: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) => {
            // The holder's own lease duration when it wrote one, else ours.
            let lease = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(lease, Duration::from_secs);
            if unchanged_for >= lease {
                Decision::Acquire
            } else {
                Decision::Wait
            }
        }
    }
}

/// A lease record as an observer tells versions apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    resource_version: Option<String>,
    holder: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        Self {
            resource_version: lease.metadata.resource_version.clone(),
            holder: lease.spec.as_ref().and_then(|s| s.holder_identity.clone()),
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The record last seen and when (our clock) it was first seen as it is.
    observed: Option<(Record, Instant)>,
    /// When the last successful acquire or renewal was started (before its read): the
    /// renew deadline counts from here, never from a later moment.
    renewed_at: Option<Instant>,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: None,
            renewed_at: None,
        }
    }

    fn observe(&mut self, record: Record) -> Duration {
        let now = Instant::now();
        match &self.observed {
            Some((seen, since)) if *seen == record => now.duration_since(*since),
            _ => {
                self.observed = Some((record, now));
                Duration::ZERO
            }
        }
    }

    /// One API call, bounded so that no call can outlast the renew deadline.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ElectionError> {
        let limit = self.timing.renew_deadline / 2;
        match tokio::time::timeout(limit, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ElectionError::Timeout(limit)),
        }
    }

    /// One round: returns whether we hold the lease afterwards.
    pub async fn try_hold(&mut self) -> Result<bool, ElectionError> {
        let started = Instant::now();
        let current = self.call(self.api.get_opt(&self.name)).await?;
        let unchanged_for = match &current {
            Some(lease) => self.observe(Record::of(lease)),
            None => Duration::ZERO,
        };
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.identity, unchanged_for, self.timing.lease);
        if decision == Decision::Wait {
            return Ok(false);
        }
        let now = Timestamp::now();
        let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
        let acquire_time = match (decision, spec) {
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
                lease_duration_seconds: i32::try_from(self.timing.lease.as_secs()).ok(),
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
        let pp = PostParams::default();
        let result = match current {
            None => self.call(self.api.create(&pp, &lease)).await,
            Some(_) => self.call(self.api.replace(&self.name, &pp, &lease)).await,
        };
        match result {
            Ok(written) => {
                self.observe(Record::of(&written));
                self.renewed_at = Some(started);
                if decision == Decision::Acquire {
                    info!(identity = self.identity, "acquired the leader lease");
                }
                Ok(true)
            }
            // Someone else wrote the lease since we read it.
            Err(ElectionError::Api(kube::Error::Api(e))) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Blocks until this replica holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_hold().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!("leader election: {e}"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Renews every `retry` while it can; returns as soon as the lease is lost or was not
    /// renewed within the renew deadline, counted from when the last successful acquire or
    /// renewal started. The caller must stop writing at once.
    pub async fn keep(&mut self) {
        loop {
            // Not held at all (no acquire): nothing to keep.
            let Some(renewed_at) = self.renewed_at else {
                return;
            };
            let deadline = renewed_at + self.timing.renew_deadline;
            tokio::time::sleep_until((Instant::now() + self.timing.retry).min(deadline)).await;
            if Instant::now() >= deadline {
                warn!(
                    "could not renew the leader lease within {:?}",
                    self.timing.renew_deadline
                );
                return;
            }
            match tokio::time::timeout_at(deadline, self.try_hold()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    warn!("lost the leader lease to another replica");
                    return;
                }
                Ok(Err(e)) => warn!("renewing the leader lease: {e}"),
                Err(_) => {}
            }
        }
    }

    /// Shuts `work` (the controller, already asked to stop) down as a leader must: it may
    /// finish what it is writing for up to `drain` while the lease is still renewed; at
    /// the renew deadline, or when the drain is over, it is aborted; only then is the
    /// lease released, so nothing of this replica writes once another may lead.
    pub async fn step_down<T>(&mut self, work: &mut tokio::task::JoinHandle<T>, drain: Duration) {
        let finished = tokio::select! {
            done = tokio::time::timeout(drain, &mut *work) => done.is_ok(),
            () = self.keep() => false,
        };
        if !finished {
            work.abort();
            // Cancelled (or finished meanwhile): either way it writes no more.
            let _ = (&mut *work).await;
        }
        if let Err(e) = self.release().await {
            warn!("could not release the leader lease: {e}");
        }
    }

    /// Gives the lease up (on shutdown), so that another replica takes over at once rather
    /// than after the lease expires. Does nothing if another replica holds it.
    pub async fn release(&mut self) -> Result<(), ElectionError> {
        let Some(current) = self.call(self.api.get_opt(&self.name)).await? else {
            return Ok(());
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: current.metadata.resource_version.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..spec
            }),
        };
        let pp = PostParams::default();
        self.call(self.api.replace(&self.name, &pp, &lease)).await?;
        info!(identity = self.identity, "released the leader lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        lease: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry: Duration::from_secs(2),
    };

    fn held_by(holder: &str, lease_secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(lease_secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_or_unheld_lease_is_taken() {
        let zero = Duration::ZERO;
        assert_eq!(decide(None, "a", zero, TIMING.lease), Decision::Acquire);
        let unheld = LeaseSpec::default();
        assert_eq!(
            decide(Some(&unheld), "a", zero, TIMING.lease),
            Decision::Acquire
        );
    }

    #[test]
    fn the_holder_renews_and_others_wait_out_a_whole_lease_without_change() {
        let held = held_by("a", 15);
        let secs = Duration::from_secs;
        assert_eq!(
            decide(Some(&held), "a", secs(0), TIMING.lease),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held), "b", secs(14), TIMING.lease),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&held), "b", secs(15), TIMING.lease),
            Decision::Acquire
        );
        // The holder's own lease duration counts, not the observer's.
        let long = held_by("a", 30);
        assert_eq!(
            decide(Some(&long), "b", secs(20), TIMING.lease),
            Decision::Wait
        );
    }

    #[test]
    fn the_renew_deadline_ends_before_the_lease() {
        let t = Timing::default();
        assert!(t.renew_deadline < t.lease && t.retry < t.renew_deadline);
    }

    mod api {
        //! The Lease calls against kube-rs's tower-test mock API server (no cluster here),
        //! on tokio's paused clock: the durations are the real ones, the waiting is not.

        use http::{Method, Request, Response};
        use kube::client::Body;
        use kube::Client;
        use serde_json::{json, Value};
        use tower_test::mock::{Handle, SendResponse};

        use super::*;

        const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/virtual-env-system/leases";

        fn elector() -> (Elector, Handle<Request<Body>, Response<Body>>) {
            let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let api = Api::namespaced(
                Client::new(service, "virtual-env-system"),
                "virtual-env-system",
            );
            (
                Elector::new(api, "virtual-env-controller", "pod-a", TIMING),
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

        /// A lease held by `holder` at resourceVersion `rv`. Its renewTime is an hour old:
        /// a replica must not conclude anything from another machine's clock.
        fn lease(holder: &str, rv: &str) -> Value {
            let old = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(3600);
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "virtual-env-controller", "resourceVersion": rv},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                         "renewTime": MicroTime(old), "leaseTransitions": 2}})
        }

        async fn next(
            handle: &mut Handle<Request<Body>, Response<Body>>,
            method: Method,
        ) -> (Value, SendResponse<Response<Body>>) {
            let (req, send) = handle.next_request().await.expect("a request");
            let uri = req.uri().to_string();
            assert_eq!(req.method(), method, "{uri}");
            assert!(uri.starts_with(LEASES), "{uri}");
            assert!(
                crate::rbac::permits(crate::rbac::OWN_NAMESPACE, req.method().as_str(), &uri),
                "{} {uri} is not in rbac::OWN_NAMESPACE",
                req.method()
            );
            let bytes = req.into_body().collect_bytes().await.unwrap();
            (serde_json::from_slice(&bytes).unwrap_or(Value::Null), send)
        }

        #[tokio::test]
        async fn creates_the_lease_when_there_is_none() {
            let (mut elector, mut handle) = elector();
            let server = tokio::spawn(async move {
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(404, &not_found()));
                let (created, send) = next(&mut handle, Method::POST).await;
                assert_eq!(created["spec"]["holderIdentity"], "pod-a");
                assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
                assert_eq!(created["spec"]["leaseTransitions"], 1);
                send.send_response(reply(201, &created));
            });
            assert!(elector.try_hold().await.unwrap());
            server.await.unwrap();
        }

        #[tokio::test(start_paused = true)]
        async fn another_replicas_lease_is_taken_only_after_a_whole_lease_without_change() {
            let (mut elector, mut handle) = elector();
            let server = tokio::spawn(async move {
                // First sight, 14 s later, a renewal (new resourceVersion), 14 s later: wait.
                for rv in ["7", "7", "8", "8"] {
                    let (_, send) = next(&mut handle, Method::GET).await;
                    send.send_response(reply(200, &lease("pod-b", rv)));
                }
                // 15 s after the renewal was first seen: taken, with its resourceVersion.
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(200, &lease("pod-b", "8")));
                let (replaced, send) = next(&mut handle, Method::PUT).await;
                assert_eq!(replaced["metadata"]["resourceVersion"], "8");
                assert_eq!(replaced["spec"]["holderIdentity"], "pod-a");
                assert_eq!(replaced["spec"]["leaseTransitions"], 3);
                send.send_response(reply(200, &replaced));
            });
            let secs = |s| tokio::time::advance(Duration::from_secs(s));
            assert!(!elector.try_hold().await.unwrap());
            secs(14).await;
            assert!(!elector.try_hold().await.unwrap());
            assert!(!elector.try_hold().await.unwrap());
            secs(14).await;
            assert!(!elector.try_hold().await.unwrap());
            secs(1).await;
            assert!(elector.try_hold().await.unwrap());
            server.await.unwrap();
        }

        #[tokio::test(start_paused = true)]
        async fn a_lost_race_for_the_lease_is_not_an_error() {
            let (mut elector, mut handle) = elector();
            let server = tokio::spawn(async move {
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(200, &lease("pod-b", "7")));
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(200, &lease("pod-b", "7")));
                let (_, send) = next(&mut handle, Method::PUT).await;
                send.send_response(reply(409, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict", "message": "conflict"})));
            });
            assert!(!elector.try_hold().await.unwrap());
            tokio::time::advance(TIMING.lease).await;
            assert!(!elector.try_hold().await.unwrap());
            server.await.unwrap();
        }

        #[tokio::test(start_paused = true)]
        async fn a_leader_whose_renewals_hang_stops_within_the_renew_deadline() {
            let (mut elector, mut handle) = elector();
            // The lease is created; from then on the API server accepts every request and
            // never answers.
            let server = tokio::spawn(async move {
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(404, &not_found()));
                let (created, send) = next(&mut handle, Method::POST).await;
                send.send_response(reply(201, &created));
                let mut pending = Vec::new();
                while let Some((_, send)) = handle.next_request().await {
                    pending.push(send);
                }
            });
            let started = Instant::now();
            assert!(elector.try_hold().await.unwrap());
            elector.keep().await;
            let held_on = started.elapsed();
            assert!(held_on >= TIMING.renew_deadline, "{held_on:?}");
            // Stopped before any other replica could take over (a whole lease unchanged).
            assert!(held_on < TIMING.lease, "{held_on:?}");
            server.abort();
        }

        #[tokio::test(start_paused = true)]
        async fn a_leader_renews_until_another_replica_holds_the_lease() {
            let (mut elector, mut handle) = elector();
            let server = tokio::spawn(async move {
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(404, &not_found()));
                let (created, send) = next(&mut handle, Method::POST).await;
                send.send_response(reply(201, &created));
                for rv in ["1", "2", "3"] {
                    let (_, send) = next(&mut handle, Method::GET).await;
                    send.send_response(reply(200, &lease("pod-a", rv)));
                    let (renewed, send) = next(&mut handle, Method::PUT).await;
                    assert_eq!(renewed["metadata"]["resourceVersion"], rv);
                    assert_eq!(renewed["spec"]["holderIdentity"], "pod-a");
                    send.send_response(reply(200, &renewed));
                }
                // Someone else holds it now (e.g. after a partition): stop.
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(200, &lease("pod-b", "9")));
            });
            assert!(elector.try_hold().await.unwrap());
            elector.keep().await;
            server.await.unwrap();
        }

        /// On shutdown the controller drains while the lease is still renewed, and is
        /// stopped before the lease is released: a write may never follow the release.
        #[tokio::test(start_paused = true)]
        async fn stepping_down_renews_during_the_drain_and_releases_after_the_work_stopped() {
            let (mut elector, mut handle) = elector();
            let (wrote, mut writes) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let server = tokio::spawn(async move {
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(404, &not_found()));
                let (created, send) = next(&mut handle, Method::POST).await;
                send.send_response(reply(201, &created));
                // Renewed during the 5 s drain (every 2 s).
                for rv in ["1", "2"] {
                    let (_, send) = next(&mut handle, Method::GET).await;
                    send.send_response(reply(200, &lease("pod-a", rv)));
                    let (renewed, send) = next(&mut handle, Method::PUT).await;
                    assert_eq!(renewed["spec"]["holderIdentity"], "pod-a");
                    send.send_response(reply(200, &renewed));
                }
                // Then released.
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(200, &lease("pod-a", "3")));
                let (released, send) = next(&mut handle, Method::PUT).await;
                assert!(released["spec"].get("holderIdentity").is_none());
                let released_at = Instant::now();
                send.send_response(reply(200, &released));
                released_at
            });
            assert!(elector.try_hold().await.unwrap());
            // A controller that keeps writing and does not stop by itself.
            let mut work = tokio::spawn(async move {
                loop {
                    let _ = wrote.send(Instant::now());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
            elector.step_down(&mut work, Duration::from_secs(5)).await;
            let released_at = server.await.unwrap();
            let mut last_write = None;
            while let Ok(at) = writes.try_recv() {
                last_write = Some(at);
            }
            assert!(
                last_write.unwrap() < released_at,
                "no write after the release"
            );
            assert!(work.is_finished());
        }

        #[tokio::test]
        async fn the_lease_is_released_on_shutdown() {
            let (mut elector, mut handle) = elector();
            let server = tokio::spawn(async move {
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(200, &lease("pod-a", "9")));
                let (released, send) = next(&mut handle, Method::PUT).await;
                assert_eq!(released["metadata"]["resourceVersion"], "9");
                assert!(
                    released["spec"].get("holderIdentity").is_none(),
                    "{released}"
                );
                assert_eq!(released["spec"]["leaseDurationSeconds"], 1);
                send.send_response(reply(200, &released));
                // Another replica's lease is left alone: one read, no write.
                let (_, send) = next(&mut handle, Method::GET).await;
                send.send_response(reply(200, &lease("pod-b", "10")));
            });
            elector.release().await.unwrap();
            elector.release().await.unwrap();
            server.await.unwrap();
        }
    }
}
