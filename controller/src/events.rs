//! Kubernetes Events on the VirtualEnvironment (`kubectl describe venv`, `kubectl events`):
//! what changed in its status, said once when it changes, not at every reconcile: each
//! service or gateway newly left alone (with the reason and what to do, as the status
//! says it), and a condition that turns to a failure (`Conflict`, `InvalidSpec`,
//! `ConfigTooLarge`, `ApplyFailed`, `ReconcileError`) or back to applied.
//!
//! `to_say` is pure; [`Events`] publishes through kube-runtime's `Recorder` (which folds
//! repeats into an Event series), or keeps them in memory for tests.

use std::sync::{Arc, Mutex};

use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;
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

/// Where the Events go.
#[derive(Clone)]
pub enum Events {
    /// The Events API, through kube-runtime's recorder.
    Api(Recorder),
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
            Events::Api(recorder) => {
                let reference = ve.object_ref(&());
                for s in said {
                    let event = Event {
                        type_: if s.warning {
                            EventType::Warning
                        } else {
                            EventType::Normal
                        },
                        reason: s.reason.clone(),
                        note: Some(s.note.clone()),
                        action: "Reconcile".into(),
                        secondary: None,
                    };
                    if let Err(e) = recorder.publish(&event, &reference).await {
                        warn!(reason = %s.reason, "could not publish an Event: {e}");
                    }
                }
            }
        }
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
        // A long note is cut within the Events API's bound.
        let long = status(false, "ApplyFailed", &"x".repeat(5000), &[]);
        assert!(to_say(None, &long)[0].note.len() <= MAX_NOTE);
    }
}
