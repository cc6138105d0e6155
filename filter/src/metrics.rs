//! The filter's Envoy stats. Envoy shows them prefixed, e.g.
//! `wasmcustom.virtual_env.env_source.header`.

/// One counter of the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Outbound requests by where their env came from.
    EnvFromHeader,
    EnvFromAlias,
    EnvFromBaggage,
    EnvFromTrace,
    EnvFromOwnLabel,
    /// In a waypoint: the env of the workload that sent the request.
    EnvFromCallerWorkload,
    EnvFromHost,
    EnvFromNowhere,
    /// Outbound routing outcomes for services in the config.
    RouteExact,
    RouteFallback,
    RouteDefault,
    RouteNone,
    /// Outbound requests to a service the config does not list.
    RouteUnknownService,
    /// Env values (header, alias or baggage) ignored because they are not valid env names.
    HeaderRejected,
    /// Inbound requests whose env was recorded under their trace ids.
    TraceRecorded,
    /// Plugin configs accepted / rejected (counted once per config, not once per worker).
    ConfigLoaded,
    ConfigRejected,
    /// Requests at a gateway whose env was removed by its `edgeTrust`.
    EnvRemovedAtEdge,
    /// Outbound requests routed by another namespace's table (`peers`), counted besides
    /// their routing outcome.
    RoutePeer,
}

impl Metric {
    pub const ALL: [Metric; 19] = [
        Metric::EnvFromHeader,
        Metric::EnvFromAlias,
        Metric::EnvFromBaggage,
        Metric::EnvFromTrace,
        Metric::EnvFromOwnLabel,
        Metric::EnvFromCallerWorkload,
        Metric::EnvFromHost,
        Metric::EnvFromNowhere,
        Metric::RouteExact,
        Metric::RouteFallback,
        Metric::RouteDefault,
        Metric::RouteNone,
        Metric::RouteUnknownService,
        Metric::HeaderRejected,
        Metric::TraceRecorded,
        Metric::ConfigLoaded,
        Metric::ConfigRejected,
        Metric::EnvRemovedAtEdge,
        Metric::RoutePeer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::EnvFromHeader => "virtual_env.env_source.header",
            Metric::EnvFromAlias => "virtual_env.env_source.alias",
            Metric::EnvFromBaggage => "virtual_env.env_source.baggage",
            Metric::EnvFromTrace => "virtual_env.env_source.trace",
            Metric::EnvFromOwnLabel => "virtual_env.env_source.own_label",
            Metric::EnvFromCallerWorkload => "virtual_env.env_source.caller_workload",
            Metric::EnvFromHost => "virtual_env.env_source.host",
            Metric::EnvFromNowhere => "virtual_env.env_source.none",
            Metric::RouteExact => "virtual_env.route.exact",
            Metric::RouteFallback => "virtual_env.route.fallback",
            Metric::RouteDefault => "virtual_env.route.default",
            Metric::RouteNone => "virtual_env.route.none",
            Metric::RouteUnknownService => "virtual_env.route.unknown_service",
            Metric::HeaderRejected => "virtual_env.header_rejected",
            Metric::TraceRecorded => "virtual_env.trace_recorded",
            Metric::ConfigLoaded => "virtual_env.config.loaded",
            Metric::ConfigRejected => "virtual_env.config.rejected",
            Metric::EnvRemovedAtEdge => "virtual_env.edge.env_removed",
            Metric::RoutePeer => "virtual_env.route.peer_namespace",
        }
    }

    /// Position in [`Metric::ALL`], for adapters that keep metric ids in an array.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_metric_in_index_order() {
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
        }
        let names: std::collections::BTreeSet<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Metric::ALL.len());
    }
}
