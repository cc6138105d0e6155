//! Kubernetes Events on the VirtualEnvironment (`kubectl describe venv`, `kubectl events`):
//! what changed in its status, said once when it changes, not at every reconcile: each
//! service or gateway newly left alone (with the reason and what to do, as the status
//! says it) and each no longer left alone (`Resolved`), and a condition that turns to a
//! failure (`Conflict`, `InvalidSpec`, `ConfigTooLarge`, `ApplyFailed`) or back to
//! applied.
//!
//! `to_say` is pure; [`Events`] creates `events.k8s.io/v1` Events itself (kube-runtime's
//! `Recorder` folds Events of one object, type and reason into one series for minutes,
//! keeping the first note: two services skipped at once would be said as one), or keeps
//! them in memory for tests.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::crd::{VirtualEnvironment, VirtualEnvironmentStatus};

/// The Events API's bound on a note.
const MAX_NOTE: usize = 1024;

/// One Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    pub warning: bool,
    /// PascalCase, as `kubectl describe` shows it.
    pub reason: String,
    pub note: String,
}

/// The Events that the change of status from `old` to `new` calls for.
pub fn to_say(old: Option<&VirtualEnvironmentStatus>, new: &VirtualEnvironmentStatus) -> Vec<Said> {
    let mut out = Vec::new();
    let reason_of = |s: Option<&VirtualEnvironmentStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let (before, now) = (reason_of(old), reason_of(Some(new)));
    if let Some((status, reason, message)) = &now {
        let changed = before.as_ref().is_none_or(|(s, r, m)| {
            s != status || r != reason || (status != "True" && m != message)
        });
        if changed {
            match status.as_str() {
                "True" if before.as_ref().is_some_and(|(s, _, _)| s != "True") => {
                    out.push(said(false, "Applied", message))
                }
                "True" => {}
                _ => out.push(said(true, reason, message)),
            }
        }
    }
    let had: &[String] = old.map_or(&[], |s| &s.skipped);
    for skip in new.skipped.iter().filter(|s| !had.contains(s)) {
        out.push(said(true, "Skipped", skip));
    }
    // Gone from the list while applied (a failure keeps the last list).
    if now.as_ref().is_some_and(|(status, _, _)| status == "True") {
        for skip in had.iter().filter(|s| !new.skipped.contains(s)) {
            out.push(said(false, "Resolved", &format!("no longer: {skip}")));
        }
    }
    out
}

fn said(warning: bool, reason: &str, note: &str) -> Said {
    let mut note = note.to_owned();
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    Said {
        warning,
        reason: reason.to_owned(),
        note,
    }
}

/// Who reports the Events (`reportingController`, `reportingInstance`).
pub const REPORTER: &str = "virtual-env-controller";

/// Where the Events go.
#[derive(Clone)]
pub enum Events {
    /// The Events API: a client, and this replica's name.
    Api(kube::Client, String),
    /// Kept in memory (tests).
    Kept(Arc<Mutex<Vec<Said>>>),
}

impl Events {
    /// Publishes `said` on `ve`; a failure is logged, never fails the reconcile (an Event
    /// is a courtesy: the status says the same).
    pub async fn say(&self, ve: &VirtualEnvironment, said: Vec<Said>) {
        match self {
            Events::Kept(kept) => {
                if let Ok(mut kept) = kept.lock() {
                    kept.extend(said);
                }
            }
            Events::Api(client, instance) => {
                let ns = ve.namespace().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                for (i, s) in said.into_iter().enumerate() {
                    let event = event_of(ve, &s, instance, i);
                    if let Err(e) = api.create(&PostParams::default(), &event).await {
                        warn!(reason = %s.reason, "could not publish an Event: {e}");
                    }
                }
            }
        }
    }
}

/// The Event saying `s` about `ve`, the `i`-th of its batch (names must differ).
fn event_of(ve: &VirtualEnvironment, s: &Said, instance: &str, i: usize) -> Event {
    let now = k8s_openapi::jiff::Timestamp::now();
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}{i:02x}",
                ve.name_any(),
                now.as_nanosecond()
            )),
            namespace: ve.namespace(),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(if s.warning { "Warning" } else { "Normal" }.into()),
        reason: Some(s.reason.clone()),
        note: Some(s.note.clone()),
        action: Some("Reconcile".into()),
        regarding: Some(ve.object_ref(&())),
        reporting_controller: Some(REPORTER.into()),
        reporting_instance: Some(instance.to_owned()),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn status(
        ready: bool,
        reason: &str,
        message: &str,
        skipped: &[&str],
    ) -> VirtualEnvironmentStatus {
        VirtualEnvironmentStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            skipped: skipped.iter().map(|s| s.to_string()).collect(),
            ..VirtualEnvironmentStatus::default()
        }
    }

    #[test]
    fn each_change_is_said_once() {
        let skip = "reviews: its host is routed by VirtualService reviews, which this VirtualEnvironment does not manage";
        let first = status(true, "AppliedWithSkips", "1 service; skipped: ...", &[skip]);
        let said = to_say(None, &first);
        assert_eq!(
            said,
            [Said {
                warning: true,
                reason: "Skipped".into(),
                note: skip.into()
            }]
        );
        // The same status again (a resync): nothing.
        assert_eq!(to_say(Some(&first), &first), []);
        // A failure, then the same failure: once.
        let conflict = status(
            false,
            "Conflict",
            "another VirtualEnvironment manages namespace default",
            &[skip],
        );
        let said = to_say(Some(&first), &conflict);
        assert_eq!(said.len(), 1);
        assert!(said[0].warning && said[0].reason == "Conflict");
        assert_eq!(to_say(Some(&conflict), &conflict), []);
        // Back to applied: said, and the skip it had already is not said again.
        let back = status(true, "AppliedWithSkips", "1 service", &[skip]);
        let said = to_say(Some(&conflict), &back);
        assert_eq!(
            said,
            [Said {
                warning: false,
                reason: "Applied".into(),
                note: "1 service".into()
            }]
        );
        // Two services newly left alone: two Events, each named; one of them fixed: said.
        let two = status(
            true,
            "AppliedWithSkips",
            "",
            &[skip, "ratings: its only port is TCP"],
        );
        let said = to_say(Some(&back), &two);
        assert_eq!(said.len(), 1);
        assert_eq!(said[0].note, "ratings: its only port is TCP");
        let fixed = status(true, "Applied", "", &[skip]);
        let said = to_say(Some(&two), &fixed);
        assert_eq!(
            said,
            [Said {
                warning: false,
                reason: "Resolved".into(),
                note: "no longer: ratings: its only port is TCP".into()
            }]
        );
        // A long note is cut within the Events API's bound.
        let long = status(false, "ApplyFailed", &"x".repeat(5000), &[]);
        assert!(to_say(None, &long)[0].note.len() <= MAX_NOTE);
    }
}
