//! Calls across namespaces: what each namespace's plan publishes for callers elsewhere,
//! and how a caller's plugin config takes it in (the config's `peers`, see
//! `virtual_env_core::peer`).
//!
//! Why every namespace's config carries the others' tables, rather than one mesh-wide
//! table: a plugin object is namespace-scoped and a sidecar loads only its namespace's,
//! so a mesh-wide table would need a plugin object in Istio's root namespace applied to
//! every sidecar, also those of namespaces without a VirtualEnvironment, and its size would
//! grow with the whole mesh in every sidecar anyway. Per namespace, the table of a callee
//! costs only its services that route by env (a service whose only env is the default
//! subset is left out: the callee's default route sends every request there already), and
//! env names are interned once per config in compact form. docs/performance.md gives the bytes
//! measured at 20 namespaces x 200 services x 50 envs (`make bench-controller`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use virtual_env_core::{PeerNamespace, PluginConfig};

use crate::crd::VirtualEnvironment;
use crate::skip::Skip;

/// What one namespace's plan publishes for callers in other namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The env header and splitter its sidecars read the env with: a caller whose own
    /// differ cannot hand the env over, and is told so.
    pub env_header: String,
    pub splitter: String,
    pub routing: PeerNamespace,
    /// The gateway hosts it asks to be entered under (`<gateway ns>/<name>`, host): the
    /// others' admission decides who owns a host by them, so a change re-plans them too.
    pub gateway_claims: std::collections::BTreeSet<(String, String)>,
}

/// What `config` (a namespace's planned outbound config) publishes.
pub fn published(config: &PluginConfig) -> Published {
    let default = config.default_subset.as_deref();
    let services = config
        .services
        .iter()
        .filter(|(_, envs)| !(envs.len() == 1 && envs.first().map(String::as_str) == default))
        .filter_map(|(fqdn, envs)| {
            let (name, _) = fqdn.split_once('.')?;
            Some((name.to_owned(), envs.clone()))
        })
        .collect();
    Published {
        env_header: config.env_header.to_ascii_lowercase(),
        splitter: config.splitter.clone(),
        routing: PeerNamespace {
            route_header: config.route_header.clone(),
            default_subset: config.default_subset.clone(),
            services,
            service_envs: BTreeMap::new(),
        },
        gateway_claims: Default::default(),
    }
}

/// Adds the other namespaces' routing to `config` (of `namespace`). Returns why a
/// namespace was left out, for the status.
pub fn add_peers(
    config: &mut PluginConfig,
    namespace: &str,
    others: &BTreeMap<String, Published>,
) -> Vec<Skip> {
    let mut skipped = Vec::new();
    let env_header = config.env_header.to_ascii_lowercase();
    for (ns, published) in others.iter().filter(|(ns, _)| *ns != namespace) {
        let differs = if published.env_header != env_header {
            Some(format!(
                "its envHeader is {}, this namespace's {env_header}",
                published.env_header
            ))
        } else if published.splitter != config.splitter {
            Some(format!(
                "its splitter is {:?}, this namespace's {:?}",
                published.splitter, config.splitter
            ))
        } else {
            None
        };
        match differs {
            Some(why) => skipped.push(Skip::peers(format_args!(
                "calls into namespace {ns} are not routed by env: {why}"
            ))),
            None => {
                config.peers.insert(ns.clone(), published.routing.clone());
            }
        }
    }
    skipped
}

/// What each namespace published at its last plan, shared by the reconciles of one
/// controller: a namespace's reconcile reads the others' and publishes its own, and when
/// its own changed (an env came or went, a route header was chosen) every other namespace
/// with a VirtualEnvironment is planned again, so its callers learn the change at once.
pub struct PeerDirectory {
    /// What this process's plans published.
    published: Mutex<BTreeMap<String, Published>>,
    /// For namespaces not planned yet by this process: their tables as read from the
    /// cluster (parsed once, not in every other namespace's reconcile: at 100 namespaces a
    /// restart would parse 9,900 configs, each with 99 tables). A plugin object carries no
    /// gateway claims; the others read those from the VirtualEnvironments themselves.
    in_cluster: Mutex<BTreeMap<String, Published>>,
    /// The controller's VirtualEnvironments: who is planned again, and which namespaces
    /// still have one (a VirtualEnvironment deleted without our finalizer leaves no trace
    /// in reconciles, so the directory is read through this).
    virtual_environments: Store<VirtualEnvironment>,
    replan: UnboundedSender<ObjectRef<VirtualEnvironment>>,
}

impl PeerDirectory {
    pub fn new(
        virtual_environments: Store<VirtualEnvironment>,
        replan: UnboundedSender<ObjectRef<VirtualEnvironment>>,
    ) -> Self {
        Self {
            published: Mutex::new(BTreeMap::new()),
            in_cluster: Mutex::new(BTreeMap::new()),
            virtual_environments,
            replan,
        }
    }

    /// What the namespaces other than `namespace` published, of those that still have a
    /// VirtualEnvironment. A namespace this controller has not planned since it started
    /// (a restart, a new leader) or whose plan failed is taken as `applied` says it is in
    /// the cluster (its plugin object's table), so that its callers keep routing into it
    /// instead of dropping it until it is planned again.
    pub fn others(
        &self,
        namespace: &str,
        applied: impl Fn(&str) -> Option<Published>,
    ) -> BTreeMap<String, Published> {
        let live: std::collections::BTreeSet<String> = self
            .virtual_environments
            .state()
            .iter()
            .filter(|ve| ve.metadata.deletion_timestamp.is_none())
            .filter_map(|ve| ve.namespace())
            .collect();
        // What was recorded, copied under the lock; the rest is read from the cluster.
        let (mut others, missing): (BTreeMap<String, Published>, Vec<String>) = {
            let Ok(published) = self.published.lock() else {
                return BTreeMap::new();
            };
            let mut others = BTreeMap::new();
            let mut missing = Vec::new();
            for ns in live.into_iter().filter(|ns| ns != namespace) {
                match published.get(&ns) {
                    Some(p) => {
                        others.insert(ns, p.clone());
                    }
                    None => missing.push(ns),
                }
            }
            (others, missing)
        };
        for ns in missing {
            if let Some(p) = self.applied(&ns, &applied) {
                others.insert(ns, p);
            }
        }
        others
    }

    /// Namespace `ns`'s table as the cluster has it, parsed once by `applied` (not under a
    /// lock: it parses a config).
    fn applied(&self, ns: &str, applied: &impl Fn(&str) -> Option<Published>) -> Option<Published> {
        if let Some(p) = self.in_cluster.lock().ok()?.get(ns) {
            return Some(p.clone());
        }
        let p = applied(ns)?;
        if let Ok(mut in_cluster) = self.in_cluster.lock() {
            in_cluster.insert(ns.to_owned(), p.clone());
        }
        Some(p)
    }

    /// Queues the VirtualEnvironments of `namespace` for a reconcile: something they
    /// plan changed where no watch of theirs sees it (a gateway's namespace).
    pub fn replan_namespace(&self, namespace: &str) {
        for ve in self.virtual_environments.state() {
            if ve.namespace().as_deref() == Some(namespace) {
                let _ = self.replan.unbounded_send(ObjectRef::from_obj(&*ve));
            }
        }
    }

    /// Records what `namespace` publishes now (`None`: nothing, it is going away). When
    /// that changed, the other namespaces' VirtualEnvironments are queued for a reconcile.
    /// Before this process has recorded anything for `namespace` (a restart, a new
    /// leader), what its callers were given is what `applied` says is in the cluster (as
    /// in [`Self::others`]): a namespace planned as it was applied changes nothing, and a
    /// restart does not plan every namespace twice.
    pub fn publish(
        &self,
        namespace: &str,
        now: Option<Published>,
        applied: impl Fn(&str) -> Option<Published>,
    ) {
        let recorded = match self.published.lock() {
            Ok(published) => published.contains_key(namespace),
            Err(_) => return,
        };
        // Read outside the lock; only when nothing is recorded yet.
        let in_cluster = if recorded {
            None
        } else {
            self.applied(namespace, &applied)
        };
        let changed = {
            let Ok(mut published) = self.published.lock() else {
                return;
            };
            let before = match &now {
                Some(now) => published.insert(namespace.to_owned(), now.clone()),
                None => published.remove(namespace),
            };
            match before {
                Some(before) => Some(before) != now,
                None => !same_table(now.as_ref(), in_cluster.as_ref()),
            }
        };
        if !changed {
            return;
        }
        for ve in self.virtual_environments.state() {
            if ve.namespace().as_deref() != Some(namespace) {
                // The controller is gone only when shutting down: nothing left to tell.
                let _ = self.replan.unbounded_send(ObjectRef::from_obj(&*ve));
            }
        }
    }
}

/// Whether `now` gives callers what the cluster's plugin object gave them (gateway claims
/// apart: no plugin object carries them).
fn same_table(now: Option<&Published>, in_cluster: Option<&Published>) -> bool {
    match (now, in_cluster) {
        (Some(now), Some(in_cluster)) => {
            now.env_header == in_cluster.env_header
                && now.splitter == in_cluster.splitter
                && now.routing == in_cluster.routing
        }
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ns: &str, services: &[(&str, &[&str])]) -> PluginConfig {
        PluginConfig {
            route_header: format!("x-virtual-env-route-{ns}"),
            default_subset: Some("dev".into()),
            services: services
                .iter()
                .map(|(name, envs)| {
                    let envs = envs.iter().map(|e| e.to_string()).collect();
                    (format!("{name}.{ns}.svc.cluster.local"), envs)
                })
                .collect(),
            ..PluginConfig::default()
        }
    }

    #[test]
    fn a_namespace_publishes_the_services_that_route_by_env() {
        let pay = config(
            "pay",
            &[("ledger", &["dev", "dev.proj1"]), ("fx", &["dev"])],
        );
        let published = published(&pay);
        assert_eq!(published.routing.route_header, "x-virtual-env-route-pay");
        assert_eq!(published.routing.default_subset.as_deref(), Some("dev"));
        // fx only in the default subset: its default route does the same.
        assert_eq!(
            published.routing.services,
            BTreeMap::from([("ledger".into(), vec!["dev".into(), "dev.proj1".into()])])
        );
    }

    #[test]
    fn a_caller_takes_in_the_others_and_not_itself() {
        let pay = published(&config("pay", &[("ledger", &["dev", "dev.proj1"])]));
        let mut shop = config("shop", &[("cart", &["dev", "dev.proj1"])]);
        let mut odd = pay.clone();
        odd.splitter = "-".into();
        let mut other_header = pay.clone();
        other_header.env_header = "x-env".into();
        let others = BTreeMap::from([
            ("pay".to_owned(), pay.clone()),
            ("shop".to_owned(), published(&shop)),
            ("odd".to_owned(), odd),
            ("legacy".to_owned(), other_header),
        ]);
        let skipped = add_peers(&mut shop, "shop", &others);
        assert_eq!(shop.peers.keys().collect::<Vec<_>>(), ["pay"]);
        assert_eq!(shop.peers["pay"], pay.routing);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("namespace legacy") && skipped[0].contains("x-env"));
        assert!(skipped[1].contains("namespace odd") && skipped[1].contains("splitter"));
        // What the filter reads back is valid.
        let json = shop.compacted().to_json();
        assert_eq!(PluginConfig::from_json(json.as_bytes()).unwrap(), shop);
    }

    fn ve_in(ns: &str) -> VirtualEnvironment {
        let mut ve = VirtualEnvironment::new("virtual-env", Default::default());
        ve.metadata.namespace = Some(ns.into());
        ve
    }

    #[test]
    fn a_change_replans_the_other_namespaces_and_only_a_change() {
        let mut writer = kube::runtime::reflector::store::Writer::default();
        for ns in ["shop", "pay", "web"] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(ve_in(ns)));
        }
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        let directory = PeerDirectory::new(writer.as_reader(), tx);
        let pay = published(&config("pay", &[("ledger", &["dev", "dev.proj1"])]));
        let mut queued = || {
            let mut names = Vec::new();
            while let Ok(r) = rx.try_recv() {
                names.push(r.namespace.unwrap_or_default());
            }
            names.sort();
            names
        };
        directory.publish("pay", Some(pay.clone()), |_| None);
        assert_eq!(queued(), ["shop", "web"]);
        directory.publish("pay", Some(pay.clone()), |_| None);
        assert!(queued().is_empty(), "unchanged: nobody is planned again");
        assert_eq!(
            directory
                .others("shop", |_| None)
                .keys()
                .collect::<Vec<_>>(),
            ["pay"]
        );
        assert!(directory.others("pay", |_| None).is_empty());
        // A namespace whose VirtualEnvironment is gone is not offered, published or not.
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Delete(ve_in("pay")));
        assert!(directory.others("shop", |_| None).is_empty());
        directory.publish("pay", None, |_| None);
        assert_eq!(queued(), ["shop", "web"]);
    }

    #[test]
    fn after_a_restart_a_namespace_planned_as_applied_replans_nobody() {
        let mut writer = kube::runtime::reflector::store::Writer::default();
        for ns in ["shop", "pay"] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(ve_in(ns)));
        }
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        let directory = PeerDirectory::new(writer.as_reader(), tx);
        let pay = published(&config("pay", &[("ledger", &["dev", "dev.proj1"])]));
        let in_cluster = |ns: &str| (ns == "pay").then(|| pay.clone());
        // Planned with gateway claims, which no plugin object carries: the same table.
        let mut claiming = pay.clone();
        claiming
            .gateway_claims
            .insert(("istio-system/public".into(), "pay.example.com".into()));
        directory.publish("pay", Some(claiming), in_cluster);
        assert!(rx.try_recv().is_err(), "as applied: shop keeps what it has");
        // What the cluster has is not what this process records: a later change counts.
        let grown = published(&config("pay", &[("ledger", &["dev", "dev.proj2"])]));
        directory.publish("pay", Some(grown), in_cluster);
        assert_eq!(
            rx.try_recv().ok().and_then(|r| r.namespace).as_deref(),
            Some("shop")
        );
        // Planned differently from what was applied: the callers learn it at once.
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        let directory = PeerDirectory::new(writer.as_reader(), tx);
        let other = published(&config("pay", &[("ledger", &["dev"])]));
        directory.publish("pay", Some(other), in_cluster);
        assert!(rx.try_recv().is_ok());
    }
}
