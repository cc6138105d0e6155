//! A stand-in for the Kubernetes API server behind kube-rs's `Client` (a tower service,
//! as kube-rs's own tests build clients): no API server runs here. It keeps the objects
//! written and answers as the API server does for the calls the controller makes:
//!
//! - server-side apply replaces the fields the body sets (one field manager writes each
//!   object, so what it no longer sends goes, as with SSA); a merge patch merges;
//! - an object's `resourceVersion` moves only when the object changed: an unchanged write
//!   is a no-op that no watch sees, as in the API server;
//! - a write carrying a `resourceVersion` that is not the object's gets 409;
//! - get, list (in a namespace or the cluster, by one `key=value` label selector) and
//!   delete.
//!
//! Every call is counted by verb and resource, and the stand-in's own CPU time is kept
//! apart, so that what is measured is the controller's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{json, Value};

/// (resource plural, namespace, name).
pub type Key = (String, String, String);

/// A change a watch would deliver: the object as it is now, or as it was when deleted.
#[derive(Debug, Clone)]
pub struct Change {
    pub key: Key,
    pub object: Value,
    pub deleted: bool,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    changes: Vec<Change>,
    calls: BTreeMap<String, u64>,
    /// Writes that changed an object (apply, patch or delete).
    effective_writes: u64,
    version: u64,
    own_cpu: Duration,
}

/// Shared: the client's clones and the bench driving it see one cluster.
#[derive(Clone, Default)]
pub struct ApiStandIn {
    state: Arc<Mutex<State>>,
}

/// What the stand-in counted since the last [`ApiStandIn::take_counts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls by `verb resource` (`apply virtualservices`, `patch virtualenvironments/status`).
    pub calls: BTreeMap<String, u64>,
    pub effective_writes: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.calls.values().sum()
    }

    /// Calls whose `verb resource` starts with `prefix`.
    pub fn of(&self, prefix: &str) -> u64 {
        self.calls
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

impl ApiStandIn {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock ends the bench anyway; the data stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kube-rs client whose every call this stand-in answers.
    pub fn client(&self) -> kube::Client {
        let standin = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let standin = standin.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await?;
                let started = thread_cpu();
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                let (status, value) = standin.answer(&parts.method, &path, &content_type, &bytes);
                let response = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&value)?));
                standin.state().own_cpu += thread_cpu().saturating_sub(started);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response?)
            }
        });
        kube::Client::new(service, "default")
    }

    /// Puts `object` (with `apiVersion`, `kind` and `metadata`) into the cluster as
    /// created, uncounted.
    pub fn create(&self, plural: &str, mut object: Value) {
        let mut state = self.state();
        let key = (
            plural.to_owned(),
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        state.version += 1;
        object["metadata"]["resourceVersion"] = json!(state.version.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}-{}-{}", key.0, key.1, key.2));
        }
        state.objects.insert(key, object);
    }

    /// Every object of resource `plural`.
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        self.state()
            .objects
            .iter()
            .filter(|(k, _)| k.0 == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The changes since the last call, in order, as watches would deliver them.
    pub fn take_changes(&self) -> Vec<Change> {
        std::mem::take(&mut self.state().changes)
    }

    /// The calls counted since the last call.
    pub fn take_counts(&self) -> Counts {
        let mut state = self.state();
        Counts {
            calls: std::mem::take(&mut state.calls),
            effective_writes: std::mem::take(&mut state.effective_writes),
        }
    }

    /// The stand-in's own CPU time so far (answering, serializing), to subtract.
    pub fn own_cpu(&self) -> Duration {
        self.state().own_cpu
    }

    fn answer(&self, method: &Method, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let Some(target) = Target::parse(path) else {
            return failure(404, "NotFound", &format!("no such path {path}"));
        };
        let resource = if target.status {
            format!("{}/status", target.plural)
        } else {
            target.plural.clone()
        };
        let verb = match (method, &target.name) {
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) => "list",
            (&Method::PATCH, _) if content_type.starts_with("application/apply-patch") => "apply",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => "other",
        };
        let mut state = self.state();
        *state.calls.entry(format!("{verb} {resource}")).or_default() += 1;
        let key = (
            target.plural.clone(),
            target.namespace.clone().unwrap_or_default(),
            target.name.clone().unwrap_or_default(),
        );
        match verb {
            "get" => match state.objects.get(&key) {
                Some(object) => (200, object.clone()),
                None => failure(404, "NotFound", &format!("{resource} {} not found", key.2)),
            },
            "list" => (200, state.list(&target, path)),
            "apply" | "patch" => match serde_json::from_slice::<Value>(body) {
                Ok(patch) => state.write(key, &patch, verb == "apply"),
                Err(e) => failure(400, "BadRequest", &e.to_string()),
            },
            "delete" => match state.objects.remove(&key) {
                Some(object) => {
                    state.effective_writes += 1;
                    state.changes.push(Change {
                        key,
                        object: object.clone(),
                        deleted: true,
                    });
                    (200, object)
                }
                None => failure(404, "NotFound", &format!("{resource} {} not found", key.2)),
            },
            _ => failure(405, "MethodNotAllowed", method.as_str()),
        }
    }
}

impl State {
    fn list(&self, target: &Target, path: &str) -> Value {
        let selector = query(path, "labelSelector");
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(k, _)| k.0 == target.plural)
            .filter(|(k, _)| target.namespace.as_ref().is_none_or(|ns| *ns == k.1))
            .filter(|(_, v)| selector.as_deref().is_none_or(|s| has_label(v, s)))
            .map(|(_, v)| v.clone())
            .collect();
        json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": self.version.to_string()}, "items": items})
    }

    fn write(&mut self, key: Key, patch: &Value, apply: bool) -> (u16, Value) {
        let old = self.objects.get(&key).cloned();
        let expected = patch["metadata"]["resourceVersion"].as_str();
        let current = old
            .as_ref()
            .and_then(|o| o["metadata"]["resourceVersion"].as_str());
        if expected.is_some() && expected != current {
            return failure(409, "Conflict", "the object has been modified");
        }
        let Some(mut object) = old
            .clone()
            .or_else(|| apply.then(|| json!({"metadata": {}})))
        else {
            return failure(404, "NotFound", &format!("{} {} not found", key.0, key.2));
        };
        for (field, value) in patch.as_object().into_iter().flatten() {
            if field == "metadata" {
                merge(&mut object["metadata"], value);
            } else if apply {
                object[field] = value.clone();
            } else {
                merge(&mut object[field], value);
            }
        }
        object["metadata"]["name"] = json!(key.2);
        if !key.1.is_empty() {
            object["metadata"]["namespace"] = json!(key.1);
        }
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}-{}-{}", key.0, key.1, key.2));
        }
        object["metadata"]["resourceVersion"] = json!(current.unwrap_or("0"));
        if old.as_ref() != Some(&object) {
            self.version += 1;
            object["metadata"]["resourceVersion"] = json!(self.version.to_string());
            self.effective_writes += 1;
            self.changes.push(Change {
                key: key.clone(),
                object: object.clone(),
                deleted: false,
            });
        }
        self.objects.insert(key, object.clone());
        (200, object)
    }
}

/// What a request's path names.
struct Target {
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    /// `/api/v1/...` or `/apis/<group>/<version>/...`, then `[namespaces/<ns>/]<plural>
    /// [/<name>[/status]]`.
    fn parse(path: &str) -> Option<Target> {
        let path = path.split('?').next()?;
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let rest = match *parts.first()? {
            "api" => parts.get(2..)?,
            "apis" => parts.get(3..)?,
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
            _ => (None, rest),
        };
        Some(Target {
            plural: (*rest.first()?).to_owned(),
            namespace,
            name: rest.get(1).map(|n| (*n).to_owned()),
            status: rest.get(2) == Some(&"status"),
        })
    }
}

/// The (percent-decoded) value of `name` in `path`'s query.
fn query(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            v.replace("%3D", "=")
                .replace("%3d", "=")
                .replace("%2F", "/")
                .replace("%2f", "/")
        })
    })
}

/// Whether `object` has the label `selector` (`key=value`) names.
fn has_label(object: &Value, selector: &str) -> bool {
    let Some((key, value)) = selector.split_once('=') else {
        return false;
    };
    object["metadata"]["labels"][key].as_str() == Some(value)
}

/// JSON merge patch (RFC 7386): objects merge key by key, `null` removes, anything else
/// replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            if let Some(map) = target.as_object_mut() {
                map.remove(key);
            }
        } else {
            merge(&mut target[key], value);
        }
    }
}

fn failure(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code}),
    )
}

/// This thread's CPU time.
pub fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill; the clock id is a constant.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_resource_namespace_and_object() {
        let t = Target::parse("/apis/networking.istio.io/v1/namespaces/a/virtualservices/b?x=1")
            .unwrap();
        assert_eq!(
            (t.plural.as_str(), t.namespace.as_deref(), t.name.as_deref()),
            ("virtualservices", Some("a"), Some("b"))
        );
        let t = Target::parse(
            "/apis/env.alibaba.com/v1alpha1/namespaces/a/virtualenvironments/v/status",
        )
        .unwrap();
        assert!(t.status);
        let t = Target::parse("/apis/extensions.istio.io/v1alpha1/wasmplugins?labelSelector=a%3Db")
            .unwrap();
        assert_eq!(
            (t.plural.as_str(), t.namespace, t.name),
            ("wasmplugins", None, None)
        );
        assert_eq!(
            query("/x?labelSelector=a%3Db", "labelSelector").as_deref(),
            Some("a=b")
        );
    }

    #[test]
    fn an_unchanged_apply_moves_nothing_and_a_stale_version_conflicts() {
        let standin = ApiStandIn::default();
        let mut state = standin.state();
        let key: Key = ("things".into(), "ns".into(), "a".into());
        let body = json!({"apiVersion": "x/v1", "kind": "Thing", "metadata": {"name": "a"}, "spec": {"n": 1, "old": true}});
        let (code, first) = state.write(key.clone(), &body, true);
        assert_eq!(code, 200);
        let (_, again) = state.write(key.clone(), &body, true);
        assert_eq!(first, again);
        assert_eq!(state.effective_writes, 1);
        // Apply replaces what the manager sends: a field no longer sent goes.
        let (_, replaced) = state.write(key.clone(), &json!({"spec": {"n": 2}}), true);
        assert_eq!(replaced["spec"], json!({"n": 2}));
        assert_ne!(
            replaced["metadata"]["resourceVersion"],
            first["metadata"]["resourceVersion"]
        );
        let stale = json!({"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}});
        assert_eq!(state.write(key, &stale, false).0, 409);
    }
}
