//! The controller across many namespaces (`make bench-controller`): what one controller
//! costs, in API calls, CPU time and memory, when it first configures a cluster of
//! N namespaces x S services x E envs, when it starts again in that cluster (a restart or
//! a new leader), and when one env appears in one namespace.
//!
//! No API server runs here: [`standin::ApiStandIn`] answers the controller's calls as one
//! would (see there). The reconciles are driven as the controller's runtime drives them,
//! one at a time: every VirtualEnvironment once, then, coalesced, every namespace that
//! something queued again — the peer directory (another namespace published a change) or
//! a watch (an object of the namespace, or its VirtualEnvironment, changed) — until nothing
//! is queued. The caches are filled and kept up as the watches keep them (the objects
//! slimmed as the runtime slims them). CPU time is this thread's during the reconciles
//! (planning, the kube-rs client) less the stand-in's own; keeping the caches up is not
//! counted.

pub mod standin;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures::channel::mpsc::UnboundedReceiver;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::DynamicObject;
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::watcher::Event;
use serde::Serialize;
use serde_json::json;
use virtual_env_controller::caches::{caches, slim_object, slim_pod, slim_service, Writers};
use virtual_env_controller::crd::VirtualEnvironment;
use virtual_env_controller::extension::ExtensionApi;
use virtual_env_controller::indexed::ApplyEvents;
use virtual_env_controller::metrics::Metrics;
use virtual_env_controller::own_writes::OwnWrites;
use virtual_env_controller::peer_namespaces::PeerDirectory;
use virtual_env_controller::reconcile::{reconcile, Context};

use crate::bench::planning;
use standin::{thread_cpu, ApiStandIn, Change, Counts};

/// The cluster measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Shape {
    pub namespaces: usize,
    pub services: usize,
    /// Env names per namespace: `dev` (the default subset, every service) and `envs - 1`
    /// project envs, each with pods for its share of the services.
    pub envs: usize,
    /// Routes written as Gateway API (`spec.routing.api: HTTPRoute`): a Service per env of
    /// each service and HTTPRoutes, instead of VirtualServices and DestinationRules.
    pub http_routes: bool,
}

/// The process's heap as its allocator counts it (the bench binary installs a counting
/// allocator; tests pass [`Heap::UNCOUNTED`]).
#[derive(Clone, Copy)]
pub struct Heap {
    pub live: fn() -> u64,
    /// The most live at once since the last `reset_peak`.
    pub peak: fn() -> u64,
    pub reset_peak: fn(),
}

impl Heap {
    pub const UNCOUNTED: Heap = Heap {
        live: || 0,
        peak: || 0,
        reset_peak: || {},
    };
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub reconciles: usize,
    /// Reconciles that returned an error (none expected).
    pub failed: usize,
    #[serde(serialize_with = "calls_by_kind")]
    pub counts: Counts,
    pub cpu_ms: f64,
    /// The heap's peak during the phase above its size at the start (the reconciles'
    /// snapshots, plans and requests; also the stand-in's answers, which are small).
    pub peak_heap_bytes: u64,
    /// The process's peak resident set during the phase (includes the stand-in's copy of
    /// every object).
    pub peak_resident_bytes: u64,
}

fn calls_by_kind<S: serde::Serializer>(counts: &Counts, s: S) -> Result<S::Ok, S::Error> {
    json!({"calls": counts.calls, "total": counts.total(), "writes_that_changed_an_object": counts.effective_writes})
        .serialize(s)
}

/// The figures of every phase, and what the caches hold.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub shape: Shape,
    pub pods: usize,
    /// The caches' heap after a start's first fill, by cache (pods, services, each kind
    /// of Istio object, VirtualEnvironments).
    pub caches_heap_bytes: Vec<(String, u64)>,
    pub phases: Vec<Phase>,
}

/// Runs the phases on a thread of its own (a single-threaded runtime: every task the
/// controller's calls spawn runs on it, so its CPU clock counts them).
pub fn measure(shape: Shape, heap: Heap) -> Result<Figures> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(phases(shape, heap))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fleet bench panicked"))?
}

async fn phases(shape: Shape, heap: Heap) -> Result<Figures> {
    let cluster = Cluster::new(shape);
    let everyone: Vec<String> = (0..shape.namespaces).map(namespace).collect();
    let mut phases = Vec::new();

    // First install: no Istio objects yet, no route headers chosen.
    let mut controller = cluster.start();
    phases.push(
        controller
            .phase("first install", everyone.clone(), &heap)
            .await?,
    );
    drop(controller);

    // A restart (or a new leader): the caches filled from the cluster as it is now, the
    // peer directory empty.
    let mut caches_heap_bytes = Vec::new();
    let mut controller = cluster.start_measured(&mut |cache| {
        caches_heap_bytes.push((cache.to_owned(), (heap.live)()));
    });
    let caches_heap_bytes = caches_heap_bytes
        .windows(2)
        .map(|w| (w[1].0.clone(), w[1].1.saturating_sub(w[0].1)))
        .collect();
    phases.push(controller.phase("restart", everyone, &heap).await?);

    // One env appears in one namespace: pods of a new env for 10 of its services.
    let new_env = format!("dev.p{}", shape.envs);
    for s in 0..shape.services.min(10) {
        let mut pod = cluster.pod(0, s, &new_env);
        slim_pod(&mut pod);
        controller
            .watches
            .writers
            .pods
            .apply_watcher_event(&Event::Apply(pod));
    }
    phases.push(
        controller
            .phase("one env added in one namespace", vec![namespace(0)], &heap)
            .await?,
    );
    Ok(Figures {
        shape,
        pods: cluster.pods.len(),
        caches_heap_bytes,
        phases,
    })
}

fn namespace(i: usize) -> String {
    format!("team-{i:03}")
}

/// The cluster's objects: the stand-in holds the API's, the pods and services are what
/// the watches deliver.
struct Cluster {
    standin: ApiStandIn,
    shape: Shape,
    pods: Vec<Pod>,
    services: Vec<Service>,
}

impl Cluster {
    fn new(shape: Shape) -> Self {
        let standin = ApiStandIn::default();
        let projects = shape.envs.saturating_sub(1).max(1);
        let envs_of = |s: usize| {
            let mut envs = vec!["dev".to_owned()];
            if shape.envs > 1 {
                envs.push(format!("dev.p{}", s % projects + 1));
            }
            envs
        };
        let template = planning::snapshot(shape.services, 1, envs_of);
        let (mut pods, mut services) = (Vec::new(), Vec::new());
        for i in 0..shape.namespaces {
            let ns = namespace(i);
            let mut ve = planning::virtual_environment();
            ve.metadata.namespace = Some(ns.clone());
            if shape.http_routes {
                ve.spec.routing = Some(virtual_env_controller::crd::RoutingSpec {
                    api: Some(virtual_env_controller::crd::RoutingApi::HttpRoute),
                });
            }
            ve.metadata.generation = Some(1);
            if let Ok(value) = serde_json::to_value(&ve) {
                standin.create("virtualenvironments", value);
            }
            for mut service in template.services.iter().cloned() {
                service.metadata.namespace = Some(ns.clone());
                services.push(service);
            }
            for mut pod in template.pods.iter().cloned() {
                pod.metadata.namespace = Some(ns.clone());
                pods.push(pod);
            }
        }
        Self {
            standin,
            shape,
            pods,
            services,
        }
    }

    /// A ready pod of service `s` of namespace `i` in `env`.
    fn pod(&self, i: usize, s: usize, env: &str) -> Pod {
        let mut snapshot =
            planning::snapshot(self.shape.services.max(s + 1), 1, |_| vec![env.to_owned()]);
        let mut pod = snapshot.pods.swap_remove(s);
        pod.metadata.namespace = Some(namespace(i));
        pod
    }

    /// A controller starting now: caches filled from the cluster, nothing published yet.
    fn start(&self) -> Controller {
        self.start_measured(&mut |_| {})
    }

    /// As [`Self::start`], calling `filled` before the first cache is filled (with "")
    /// and after each one (with its name).
    fn start_measured(&self, filled: &mut dyn FnMut(&str)) -> Controller {
        filled("");
        let gateway_api = Some(virtual_env_controller::gamma::GatewayApi::ALL);
        let (mut caches, mut writers) = caches(ExtensionApi::WasmPlugin, gateway_api);
        let (ve_store, mut ves) = reflector::store::<VirtualEnvironment>();
        caches.virtual_environments = Some(ve_store.clone());
        fill(
            &mut writers.pods,
            self.pods.iter().cloned().map(|mut p| {
                slim_pod(&mut p);
                p
            }),
        );
        filled("pods");
        // The users' services, and those the controller wrote (env Services).
        let written = self
            .standin
            .objects("services")
            .into_iter()
            .filter_map(|s| serde_json::from_value::<Service>(s).ok());
        fill(
            &mut writers.services,
            self.services.iter().cloned().chain(written).map(|mut s| {
                slim_service(&mut s);
                s
            }),
        );
        filled("services");
        fill(&mut writers.policies, std::iter::empty());
        fill(&mut writers.namespaces, std::iter::empty());
        for (kind, writer) in &mut writers.istio {
            let objects = self.standin.objects(&kind.api_resource().plural);
            fill(writer, objects.into_iter().filter_map(dynamic));
            filled(kind.name());
        }
        fill(
            &mut ves,
            self.standin
                .objects("virtualenvironments")
                .into_iter()
                .filter_map(|v| serde_json::from_value(v).ok()),
        );
        filled("VirtualEnvironment");
        self.standin.take_changes();
        let (replan, replans) = futures::channel::mpsc::unbounded();
        let ctx = Context::new(
            self.standin.client(),
            planning::settings(),
            Arc::new(Metrics::default()),
            caches,
            PeerDirectory::new(ve_store.clone(), replan),
        );
        Controller {
            ctx: Arc::new(ctx),
            standin: self.standin.clone(),
            watches: Watches {
                writers,
                ves,
                ve_store,
            },
            replans,
            limit: self.shape.namespaces * 10,
        }
    }
}

/// An object from the API as a watch caches it.
fn dynamic(value: serde_json::Value) -> Option<DynamicObject> {
    let mut object: DynamicObject = serde_json::from_value(value).ok()?;
    slim_object(&mut object);
    Some(object)
}

fn fill<K>(writer: &mut impl ApplyEvents<K>, objects: impl Iterator<Item = K>)
where
    K: kube::Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer.apply_watcher_event(&Event::Init);
    for object in objects {
        writer.apply_watcher_event(&Event::InitApply(object));
    }
    writer.apply_watcher_event(&Event::InitDone);
}

/// The writing ends of one controller's caches, kept up with the cluster.
struct Watches {
    writers: Writers,
    ves: Writer<VirtualEnvironment>,
    ve_store: Store<VirtualEnvironment>,
}

impl Watches {
    /// Delivers `change` as the watch of its kind would; true when the runtime's mapper
    /// for that kind queues the namespace (not for the echo of the controller's own write).
    fn deliver(&mut self, change: &Change, own_writes: &OwnWrites) -> bool {
        let plural = change.key.0.as_str();
        if plural == "services" {
            let Ok(mut service) = serde_json::from_value::<Service>(change.object.clone()) else {
                return false;
            };
            let echo = !change.deleted && own_writes.is_echo("Service", &service);
            slim_service(&mut service);
            self.writers
                .services
                .apply_watcher_event(&event(service, change.deleted));
            return !echo;
        }
        if plural == "virtualenvironments" {
            if let Ok(ve) = serde_json::from_value::<VirtualEnvironment>(change.object.clone()) {
                self.ves.apply_watcher_event(&event(ve, change.deleted));
            }
            return true;
        }
        let Some((kind, writer)) = self
            .writers
            .istio
            .iter_mut()
            .find(|(kind, _)| kind.api_resource().plural == plural)
        else {
            return false;
        };
        let Some(object) = dynamic(change.object.clone()) else {
            return false;
        };
        let echo = !change.deleted && own_writes.is_echo(kind.name(), &object);
        writer.apply_watcher_event(&event(object, change.deleted));
        !echo
    }
}

fn event<K>(object: K, deleted: bool) -> Event<K> {
    if deleted {
        Event::Delete(object)
    } else {
        Event::Apply(object)
    }
}

/// One running controller.
struct Controller {
    ctx: Arc<Context>,
    standin: ApiStandIn,
    watches: Watches,
    replans: UnboundedReceiver<ObjectRef<VirtualEnvironment>>,
    /// Reconciles after which a phase counts as not settling (a loop).
    limit: usize,
}

impl Controller {
    /// Reconciles `first`, then whatever they queue, until nothing is queued.
    async fn phase(
        &mut self,
        name: &'static str,
        first: Vec<String>,
        heap: &Heap,
    ) -> Result<Phase> {
        self.standin.take_counts();
        (heap.reset_peak)();
        let live = (heap.live)();
        reset_peak_resident();
        let (reconciles, failed, cpu) = self.settle(first).await?;
        Ok(Phase {
            name,
            reconciles,
            failed,
            counts: self.standin.take_counts(),
            cpu_ms: cpu.as_secs_f64() * 1e3,
            peak_heap_bytes: (heap.peak)().saturating_sub(live),
            peak_resident_bytes: planning::peak_resident_bytes(),
        })
    }

    async fn settle(&mut self, first: Vec<String>) -> Result<(usize, usize, Duration)> {
        let mut queued: BTreeSet<String> = first.iter().cloned().collect();
        let mut queue: VecDeque<String> = first.into();
        let (mut reconciles, mut failed, mut cpu) = (0, 0, Duration::ZERO);
        while let Some(ns) = queue.pop_front() {
            queued.remove(&ns);
            let key = ObjectRef::new("bench").within(&ns);
            let ve = self
                .watches
                .ve_store
                .get(&key)
                .with_context(|| format!("no VirtualEnvironment in {ns}"))?;
            let (started, standin_before) = (thread_cpu(), self.standin.own_cpu());
            let result = reconcile(ve, Arc::clone(&self.ctx)).await;
            let standin = self.standin.own_cpu().saturating_sub(standin_before);
            cpu += thread_cpu().saturating_sub(started).saturating_sub(standin);
            reconciles += 1;
            if let Err(e) = result {
                eprintln!("reconcile of {ns} failed: {e}");
                failed += 1;
            }
            // What queues a namespace again in the controller: the peer directory's
            // re-plans, and its watches seeing one of its objects changed by someone else
            // or its VirtualEnvironment changed.
            let mut next = Vec::new();
            while let Ok(replan) = self.replans.try_recv() {
                next.extend(replan.namespace);
            }
            for change in self.standin.take_changes() {
                if self.watches.deliver(&change, &self.ctx.own_writes) {
                    next.push(change.key.1);
                }
            }
            for ns in next {
                if queued.insert(ns.clone()) {
                    queue.push_back(ns);
                }
            }
            if reconciles > self.limit {
                bail!("{reconciles} reconciles and still queued: the controller does not settle");
            }
        }
        Ok((reconciles, failed, cpu))
    }
}

/// Resets this process's `VmHWM` to its resident set now (Linux's `clear_refs` 5).
fn reset_peak_resident() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The figures as a Markdown table, with how to read it.
pub fn table(figures: &Figures) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let shape = figures.shape;
    let caches: u64 = figures.caches_heap_bytes.iter().map(|(_, b)| b).sum();
    let by_cache: Vec<String> = figures
        .caches_heap_bytes
        .iter()
        .map(|(cache, bytes)| format!("{cache} {:.1}", mb(*bytes)))
        .collect();
    let mut out = format!(
        "Controller across namespaces (`make bench-controller`): {} namespaces x {} services x {} envs ({} pods), one controller, reconciles one at a time against an in-memory API server; the caches hold {:.1} MB of heap after a start ({}).\n\n",
        shape.namespaces,
        shape.services,
        shape.envs,
        figures.pods,
        mb(caches),
        by_cache.join(", ")
    );
    out.push_str("| phase | reconciles | API calls | writes that changed an object | applies | status writes | lists | controller CPU (ms) | peak heap above start (MB) | process peak resident (MB) |\n| :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n");
    for p in &figures.phases {
        let c = &p.counts;
        let status =
            c.of("apply virtualenvironments/status") + c.of("patch virtualenvironments/status");
        out.push_str(&format!(
            "| {} | {}{} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} |\n",
            p.name,
            p.reconciles,
            if p.failed > 0 {
                format!(" ({} failed)", p.failed)
            } else {
                String::new()
            },
            c.total(),
            c.effective_writes,
            c.of("apply") - c.of("apply virtualenvironments/status"),
            status,
            c.of("list"),
            p.cpu_ms,
            mb(p.peak_heap_bytes),
            mb(p.peak_resident_bytes),
        ));
    }
    out.push('\n');
    for p in &figures.phases {
        let calls: Vec<String> = p
            .counts
            .calls
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!("- {}: {}\n", p.name, calls.join(", ")));
    }
    out
}
