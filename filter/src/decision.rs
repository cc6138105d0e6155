//! What the filter decided for one request, as a value. The flow (`flow.rs`) reads the
//! request through the host, never writing, and returns a [`Decision`]; [`Decision::apply`]
//! makes its header edits and shared-data records and counts it. `explain` and the demo
//! print the same value (`dry_run.rs`): no decision is rebuilt from counters.

use std::borrow::Cow;

use crate::flow::EnvSource;
use crate::host::Host;
use crate::metrics::Metric;

/// One header edit, made in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<'c> {
    /// The header becomes this one line, whatever lines it had.
    Set(Cow<'c, str>, String),
    /// Every line of the header goes.
    Remove(Cow<'c, str>),
}

impl Edit<'_> {
    /// The header edited (lower case).
    pub fn name(&self) -> &str {
        match self {
            Edit::Set(name, _) | Edit::Remove(name) => name,
        }
    }
}

/// What an outbound request was addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Not a service of the mesh's known namespaces: left untouched, no env leaks out.
    Outside,
    /// A service of a known namespace that does not route by env: the env travels on.
    Unrouted,
    /// A service the config routes by env, in this namespace.
    Service,
    /// A service of another namespace, routed by that namespace's table and route header.
    PeerService,
}

/// How the walk up the env's lineage ended for a routed service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The service has pods in the request's own env.
    Exact,
    /// The nearest ancestor env with pods.
    Fallback,
    /// No env of the lineage has pods; the default subset has.
    Default,
    /// Nothing fits: the service's default route.
    None,
}

/// What a gateway's edge guard did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeVerdict {
    /// Env occurrences removed (not admitted, or not valid env names).
    pub envs_removed: usize,
    /// Carrier lines removed whole because they could not be judged.
    pub lines_unjudged: usize,
    /// The host could not list the headers: every carrier was removed.
    pub unreadable: bool,
}

/// The filter's decision on one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision<'c> {
    /// The request's env and where it came from.
    pub env: Option<(String, EnvSource)>,
    /// What an outbound request was addressed to (`None`: inbound, or a guard that only
    /// judges).
    pub target: Option<Destination>,
    /// How the fallback walk ended (a routed service only).
    pub choice: Option<Route>,
    /// The route header this request carries on: its name and value, or `None` (removed).
    pub route_header: Option<(Cow<'c, str>, Option<String>)>,
    /// Request values ignored as invalid (env values, trace ids, hosts, headers).
    pub rejected: u32,
    /// A gateway's edge guard's verdict, where one judged the request.
    pub edge: Option<EdgeVerdict>,
    /// The header edits, in order.
    pub edits: Vec<Edit<'c>>,
    /// Inbound trace correlation: (shared-data key, entry) to record.
    pub records: Vec<(String, String)>,
    /// The routing trace the request asked for: what to do on the response path.
    pub trace: Option<Tracing>,
    /// A debug request's slot to open (shared-data key, value) for its pod's calls.
    pub debug_slot: Option<(String, String)>,
    /// The proxy's expired debug mark to clear (its CAS token), if nobody set it since.
    pub clear_debug_mark: Option<u32>,
}

/// What the response path does for the routing trace (`routing_trace.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracing {
    /// The calling side: its entry before what the callee answered; `slot` (shared-data
    /// key, trace id): where the pod's called side collects the call's trace.
    Call {
        entry: String,
        slot: Option<(String, String)>,
    },
    /// The called side: its entry, then the hops its pod's calls left in `slot` (else
    /// what the application answered).
    Served {
        entry: String,
        slot: Option<(String, String)>,
    },
    /// A gateway that shows no trace to clients from outside: any is removed.
    Hidden,
}

impl<'c> Decision<'c> {
    pub(crate) fn set(&mut self, name: impl Into<Cow<'c, str>>, value: impl Into<String>) {
        self.edits.push(Edit::Set(name.into(), value.into()));
    }

    pub(crate) fn remove(&mut self, name: impl Into<Cow<'c, str>>) {
        self.edits.push(Edit::Remove(name.into()));
    }

    /// Makes the edits and records on `host` and counts the decision there.
    pub fn apply(&self, host: &mut impl Host) {
        for edit in &self.edits {
            match edit {
                Edit::Set(name, value) => host.set_request_header(name, value),
                Edit::Remove(name) => host.remove_request_header(name),
            }
        }
        let mut recorded = false;
        for (key, entry) in &self.records {
            recorded |= host.set_shared_data(key, entry.as_bytes(), None);
        }
        for _ in 0..self.rejected {
            host.increment(Metric::HeaderRejected);
        }
        if recorded {
            host.increment(Metric::TraceRecorded);
        }
        if let Some((key, value)) = &self.debug_slot {
            // Only a free slot is taken (compare-and-swap): a debug request never wipes
            // another's hops.
            let now = host.now_unix_ms();
            let cas = match host.shared_data(key) {
                Some((current, cas)) => {
                    crate::routing_trace::Slots::free(&current, now).then_some(cas)
                }
                None => Some(0),
            };
            if let Some(cas) = cas {
                host.set_shared_data(key, value.as_bytes(), Some(cas).filter(|c| *c != 0));
            }
            let until = crate::routing_trace::Slots::active_until(now);
            host.set_shared_data(crate::routing_trace::ACTIVE_KEY, until.as_bytes(), None);
        }
        if let Some(cas) = self.clear_debug_mark {
            host.set_shared_data(crate::routing_trace::ACTIVE_KEY, b"", Some(cas));
        }
        for metric in self.metrics() {
            host.increment(metric);
        }
    }

    /// The counters this decision adds (rejected values and trace records apart).
    fn metrics(&self) -> impl Iterator<Item = Metric> {
        let edge = self.edge.unwrap_or_default();
        let edge = [
            (edge.unreadable || edge.lines_unjudged > 0).then_some(Metric::HeaderRejected),
            (edge.envs_removed > 0).then_some(Metric::EnvRemovedAtEdge),
        ];
        let routed = match self.target {
            None => [None, None, None],
            Some(Destination::Outside) => [Some(Metric::RouteUnknownService), None, None],
            Some(target) => [
                Some(env_source_metric(self.env.as_ref().map(|(_, s)| *s))),
                match target {
                    Destination::Unrouted => Some(Metric::RouteUnknownService),
                    _ => self.choice.map(route_metric),
                },
                (target == Destination::PeerService).then_some(Metric::RoutePeer),
            ],
        };
        edge.into_iter().chain(routed).flatten()
    }
}

fn env_source_metric(source: Option<EnvSource>) -> Metric {
    match source {
        Some(EnvSource::Header) => Metric::EnvFromHeader,
        Some(EnvSource::Alias) => Metric::EnvFromAlias,
        Some(EnvSource::Baggage) => Metric::EnvFromBaggage,
        Some(EnvSource::Trace) => Metric::EnvFromTrace,
        Some(EnvSource::OwnLabel) => Metric::EnvFromOwnLabel,
        Some(EnvSource::CallerWorkload) => Metric::EnvFromCallerWorkload,
        Some(EnvSource::Host) => Metric::EnvFromHost,
        None => Metric::EnvFromNowhere,
    }
}

fn route_metric(route: Route) -> Metric {
    match route {
        Route::Exact => Metric::RouteExact,
        Route::Fallback => Metric::RouteFallback,
        Route::Default => Metric::RouteDefault,
        Route::None => Metric::RouteNone,
    }
}
