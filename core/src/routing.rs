//! The fallback rule: which env's pods serve a request for a service.
//!
//! Walk the request's env up its hierarchy (`a.b.c`, `a.b`, `a`) and take the first env in
//! which the service has pods; else the default subset when the service has it; else none.
//!
//! The table is compiled for per-request use: env names are interned once (each service
//! keeps a sorted slice of env ids, 4 bytes an env instead of a string), services are found
//! by namespace then name without building a key, and nothing on the request path
//! allocates. A lookup is two hash probes for the service and one per level of the env
//! name, whatever the size of the config.

use std::collections::HashMap;

use crate::config::PluginConfig;
use crate::env::lineage;
use crate::hash::FnvBuildHasher;
use crate::service::{cluster_domain_of_fqdn, host_of, ServiceHost};

type Map<K, V> = HashMap<K, V, FnvBuildHasher>;

static NO_ROUTING: Routing = Routing {
    route_header: None,
    default_subset: None,
};

/// What the walk chose for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice<'a> {
    /// The service has pods in the request's own env.
    Exact(&'a str),
    /// The nearest ancestor env with pods.
    Fallback(&'a str),
    /// No env of the lineage has pods; the default subset has.
    Default(&'a str),
    /// Nothing fits: the request goes to the service's default route.
    None,
}

impl<'a> Choice<'a> {
    /// The env to route to, if any.
    pub fn env(self) -> Option<&'a str> {
        match self {
            Choice::Exact(env) | Choice::Fallback(env) | Choice::Default(env) => Some(env),
            Choice::None => None,
        }
    }
}

/// The envs in which one service has ready pods, as sorted interned ids, and which
/// namespace's routing (route header, default subset) applies to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceEnvs {
    envs: Box<[u32]>,
    /// Index into [`RouteTable::routings`]: 0 is the config's own namespace.
    routing: u32,
}

impl ServiceEnvs {
    fn has_id(&self, id: u32) -> bool {
        // Most services have a handful of envs: a linear scan beats a binary search there.
        if self.envs.len() <= 8 {
            self.envs.contains(&id)
        } else {
            self.envs.binary_search(&id).is_ok()
        }
    }

    pub fn len(&self) -> usize {
        self.envs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.envs.is_empty()
    }
}

/// How the services of one namespace are routed: the own namespace's (the config's route
/// header and default subset), or a peer's (see [`crate::peer`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Routing {
    /// `None`: the config's own route header.
    route_header: Option<Box<str>>,
    default_subset: Option<u32>,
}

/// Where an outbound request goes, as far as routing by env is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'t> {
    /// A service of the table: route it by env.
    Service(&'t ServiceEnvs),
    /// A service of a namespace the table knows, not routed by env: the env travels on.
    Unrouted,
    /// Not a service of the mesh's known namespaces (an external host, an IP, another
    /// cluster domain): left untouched, so no env leaks out.
    Outside,
}

/// What joins an env's levels in a preview host's first label: DNS allows no `.` in a
/// label (a wildcard certificate covers one), so `dev.proj1` is `dev--proj1`.
pub const PREVIEW_SEPARATOR: &str = "--";

/// The env a preview host's first label spells: its parts between
/// [`PREVIEW_SEPARATOR`]s joined by the splitter, if that is a valid env name.
pub fn preview_env(label: &str, splitter: char) -> Option<String> {
    if label.is_empty() || label.len() > 63 {
        return None;
    }
    let env = label
        .split(PREVIEW_SEPARATOR)
        .collect::<Vec<_>>()
        .join(&splitter.to_string());
    crate::validate_env_name(&env, splitter).ok().map(|()| env)
}

/// The preview host label of `env`: its levels joined by [`PREVIEW_SEPARATOR`]; `None`
/// when that is no DNS label (upper case, `--` in a level, over 63 characters).
pub fn preview_label(env: &str, splitter: char) -> Option<String> {
    let label = env
        .split(splitter)
        .collect::<Vec<_>>()
        .join(PREVIEW_SEPARATOR);
    let dns = crate::service::is_dns_label(&label);
    let round_trip = preview_env(&label, splitter).as_deref() == Some(env);
    (dns && round_trip && !env.split(splitter).any(|l| l.contains(PREVIEW_SEPARATOR)))
        .then_some(label)
}

/// The compiled `services` table of a plugin config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    splitter: char,
    /// The own namespace's routing first, then one per peer namespace.
    routings: Vec<Routing>,
    env_ids: Map<Box<str>, u32>,
    env_names: Vec<Box<str>>,
    /// namespace -> service name -> envs.
    namespaces: Map<Box<str>, Map<Box<str>, ServiceEnvs>>,
    cluster_domains: Vec<Box<str>>,
    /// Gateway hosts (`hosts`): host -> (namespace, service name).
    gateway_hosts: Map<Box<str>, (Box<str>, Box<str>)>,
    /// Preview hosts (`previewHosts`): suffix -> (namespace, service name).
    preview_hosts: Map<Box<str>, (Box<str>, Box<str>)>,
    services: usize,
}

impl RouteTable {
    /// Builds the table from a config that passed [`PluginConfig::validate`].
    pub fn new(config: &PluginConfig) -> Self {
        let mut table = Self {
            splitter: config.splitter_char(),
            ..Self::default()
        };
        if let Some(domain) = &config.cluster_domain {
            table
                .cluster_domains
                .push(domain.to_ascii_lowercase().into());
        }
        let own = Routing {
            route_header: None,
            default_subset: config.default_subset.as_deref().map(|d| table.intern(d)),
        };
        table.routings.push(own);
        for (fqdn, envs) in &config.services {
            let fqdn = fqdn.to_ascii_lowercase();
            let Some(host) = ServiceHost::parse(&fqdn) else {
                continue;
            };
            let Some(ns) = host.namespace else {
                continue;
            };
            if let Some(domain) = cluster_domain_of_fqdn(&fqdn) {
                if !table.cluster_domains.iter().any(|d| **d == *domain) {
                    table.cluster_domains.push(domain.into());
                }
            }
            table.insert(ns, host.name, envs, 0);
        }
        for (ns, peer) in &config.peers {
            let routing = Routing {
                route_header: Some(peer.route_header.to_ascii_lowercase().into()),
                default_subset: peer.default_subset.as_deref().map(|d| table.intern(d)),
            };
            let index = u32::try_from(table.routings.len()).unwrap_or(u32::MAX);
            table.routings.push(routing);
            // Known even without services: a call into it carries the env on.
            table.namespaces.entry(ns.as_str().into()).or_default();
            for (name, envs) in &peer.services {
                table.insert(ns, name, envs, index);
            }
        }
        for (hosts, into) in [
            (&config.hosts, &mut table.gateway_hosts),
            (&config.preview_hosts, &mut table.preview_hosts),
        ] {
            for (host, fqdn) in hosts {
                let fqdn = fqdn.to_ascii_lowercase();
                if let Some(ServiceHost {
                    name,
                    namespace: Some(ns),
                    ..
                }) = ServiceHost::parse(&fqdn)
                {
                    into.insert(host.to_ascii_lowercase().into(), (ns.into(), name.into()));
                }
            }
        }
        table
    }

    /// Whether `authority` (lower case) is one of the gateway's `hosts`.
    pub fn is_gateway_host(&self, authority: &str) -> bool {
        !self.gateway_hosts.is_empty()
            && host_of(authority).is_some_and(|h| self.gateway_hosts.contains_key(h))
    }

    /// A request for a preview host (`<label>.<suffix>` of `previewHosts`; `authority` in
    /// lower case): the service, and the env the label spells if it spells one (its
    /// levels joined by [`PREVIEW_SEPARATOR`], each a valid env level).
    pub fn preview(&self, authority: &str) -> Option<(Target<'_>, Option<String>)> {
        if self.preview_hosts.is_empty() {
            return None;
        }
        let (label, suffix) = host_of(authority)?.split_once('.')?;
        let (ns, name) = self.preview_hosts.get(suffix)?;
        let target = (self.namespaces.get(ns))
            .and_then(|services| services.get(name))
            .map_or(Target::Unrouted, Target::Service);
        Some((target, preview_env(label, self.splitter)))
    }

    fn insert(&mut self, ns: &str, name: &str, envs: &[String], routing: u32) {
        let mut ids: Vec<u32> = envs.iter().map(|e| self.intern(e)).collect();
        ids.sort_unstable();
        ids.dedup();
        let services = self.namespaces.entry(ns.into()).or_default();
        let envs = ServiceEnvs {
            envs: ids.into(),
            routing,
        };
        if services.insert(name.into(), envs).is_none() {
            self.services += 1;
        }
    }

    fn intern(&mut self, env: &str) -> u32 {
        if let Some(&id) = self.env_ids.get(env) {
            return id;
        }
        let id = u32::try_from(self.env_names.len()).unwrap_or(u32::MAX);
        self.env_names.push(env.into());
        self.env_ids.insert(env.into(), id);
        id
    }

    /// Services in the table.
    pub fn len(&self) -> usize {
        self.services
    }

    pub fn is_empty(&self) -> bool {
        self.services == 0
    }

    /// Distinct env names in the table.
    pub fn env_count(&self) -> usize {
        self.env_names.len()
    }

    /// Where a request to `authority` (already lower case) from a pod in `own_namespace`
    /// goes. A spelled-out cluster domain must be one the table's services use.
    pub fn target(&self, authority: &str, own_namespace: &str) -> Target<'_> {
        if !self.gateway_hosts.is_empty() {
            let gateway_host = host_of(authority).and_then(|h| self.gateway_hosts.get(h));
            if let Some((ns, name)) = gateway_host {
                return self
                    .namespaces
                    .get(ns)
                    .and_then(|services| services.get(name))
                    .map_or(Target::Unrouted, Target::Service);
            }
        }
        let Some(host) = ServiceHost::parse(authority) else {
            return Target::Outside;
        };
        if let Some(domain) = host.domain {
            if !self.cluster_domains.iter().any(|d| **d == *domain) {
                return Target::Outside;
            }
        }
        let ns = host.namespace.unwrap_or(own_namespace);
        match self.namespaces.get(ns) {
            Some(services) => services
                .get(host.name)
                .map_or(Target::Unrouted, Target::Service),
            None if !ns.is_empty() && ns == own_namespace => Target::Unrouted,
            None => Target::Outside,
        }
    }

    /// The envs of a service by its key (`svc.ns`); `None` when the table does not have it.
    pub fn service(&self, key: &str) -> Option<&ServiceEnvs> {
        let (name, ns) = key.split_once('.')?;
        self.namespaces.get(ns)?.get(name)
    }

    /// The route header a request to `service` carries its choice in, when it is not the
    /// config's own: a service of a peer namespace is routed by that namespace's
    /// VirtualServices, which match its route header.
    pub fn peer_route_header(&self, service: &ServiceEnvs) -> Option<&str> {
        self.routing(service).route_header.as_deref()
    }

    /// The default subset of the namespace `service` is in (a peer's own, for its services).
    pub fn default_subset(&self, service: &ServiceEnvs) -> Option<&str> {
        let id = self.routing(service).default_subset?;
        self.env_names.get(id as usize).map(|name| &**name)
    }

    fn routing(&self, service: &ServiceEnvs) -> &Routing {
        // Every ServiceEnvs comes from this table, so its index is in range; the own
        // routing is a harmless answer for one that is not.
        self.routings
            .get(service.routing as usize)
            .or(self.routings.first())
            .unwrap_or(&NO_ROUTING)
    }

    /// Whether `service` has pods in `env`.
    pub fn has(&self, service: &ServiceEnvs, env: &str) -> bool {
        self.env_ids.get(env).is_some_and(|&id| service.has_id(id))
    }

    /// The env names of a service, sorted by name.
    pub fn envs_of(&self, service: &ServiceEnvs) -> Vec<&str> {
        let mut names: Vec<&str> = service
            .envs
            .iter()
            .filter_map(|&id| self.env_names.get(id as usize).map(|n| &**n))
            .collect();
        names.sort_unstable();
        names
    }

    /// The fallback walk for a request with `env` (or none) to `service`.
    pub fn choose<'a>(&'a self, service: &ServiceEnvs, env: Option<&'a str>) -> Choice<'a> {
        if let Some(env) = env {
            let mut walk = lineage(env, self.splitter);
            if let Some(own) = walk.next().filter(|e| self.has(service, e)) {
                return Choice::Exact(own);
            }
            if let Some(ancestor) = walk.find(|e| self.has(service, e)) {
                return Choice::Fallback(ancestor);
            }
        }
        match self.routing(service).default_subset {
            Some(id) if service.has_id(id) => self
                .env_names
                .get(id as usize)
                .map_or(Choice::None, |name| Choice::Default(name)),
            _ => Choice::None,
        }
    }

    /// Every step of the walk with whether the service has pods there, then the choice:
    /// what `virtual-env explain` prints.
    pub fn explain<'a>(
        &'a self,
        service: &ServiceEnvs,
        env: Option<&'a str>,
    ) -> (Vec<(&'a str, bool)>, Choice<'a>) {
        let steps = env
            .map(|env| {
                lineage(env, self.splitter)
                    .map(|e| (e, self.has(service, e)))
                    .collect()
            })
            .unwrap_or_default();
        (steps, self.choose(service, env))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(default_subset: Option<&str>) -> RouteTable {
        let mut config = PluginConfig {
            default_subset: default_subset.map(String::from),
            ..PluginConfig::default()
        };
        for (svc, envs) in [
            ("a", &["dev", "dev.proj1"][..]),
            ("b", &["dev"][..]),
            ("c", &["dev", "dev.proj1", "dev.proj1.user1"][..]),
            ("d", &["dev.proj1"][..]),
        ] {
            config.services.insert(
                format!("{svc}.default.svc.cluster.local"),
                envs.iter().map(|e| e.to_string()).collect(),
            );
        }
        config.validate().unwrap();
        RouteTable::new(&config)
    }

    fn choose(t: &RouteTable, svc: &str, env: Option<&str>) -> String {
        let service = t.service(&format!("{svc}.default")).unwrap();
        format!("{:?}", t.choose(service, env))
    }

    #[test]
    fn the_seed_chain() {
        let t = table(Some("dev"));
        let env = Some("dev.proj1");
        assert_eq!(choose(&t, "a", env), "Exact(\"dev.proj1\")");
        assert_eq!(choose(&t, "b", env), "Fallback(\"dev\")");
        assert_eq!(choose(&t, "c", env), "Exact(\"dev.proj1\")");
    }

    #[test]
    fn three_levels_fall_back_to_the_nearest_ancestor() {
        let t = table(None);
        let env = Some("dev.proj1.user1");
        assert_eq!(choose(&t, "c", env), "Exact(\"dev.proj1.user1\")");
        assert_eq!(choose(&t, "a", env), "Fallback(\"dev.proj1\")");
        assert_eq!(choose(&t, "b", env), "Fallback(\"dev\")");
    }

    #[test]
    fn default_subset_only_when_the_service_has_it() {
        let t = table(Some("dev"));
        assert_eq!(choose(&t, "b", Some("other")), "Default(\"dev\")");
        assert_eq!(choose(&t, "b", None), "Default(\"dev\")");
        assert_eq!(choose(&t, "d", Some("other")), "None");
        let t = table(None);
        assert_eq!(choose(&t, "b", Some("other")), "None");
        assert_eq!(choose(&t, "b", None), "None");
    }

    #[test]
    fn gateway_hosts_reach_their_service_with_or_without_port() {
        let mut config = PluginConfig::default();
        config
            .services
            .insert("a.default.svc.cluster.local".into(), vec!["dev".into()]);
        config.hosts.insert(
            "demo.example.com".into(),
            "a.default.svc.cluster.local".into(),
        );
        config.validate().unwrap();
        let t = RouteTable::new(&config);
        let a = t.service("a.default").unwrap();
        for authority in ["demo.example.com", "demo.example.com:443"] {
            assert_eq!(t.target(authority, "istio-system"), Target::Service(a));
        }
        assert_eq!(
            t.target("other.example.com", "istio-system"),
            Target::Outside
        );
        // Service names still resolve as before.
        assert_eq!(t.target("a.default", "istio-system"), Target::Service(a));
    }

    #[test]
    fn a_preview_host_names_its_service_and_spells_the_env() {
        let mut config = PluginConfig::default();
        config
            .services
            .insert("a.default.svc.cluster.local".into(), vec!["dev".into()]);
        config.preview_hosts.insert(
            "preview.example.com".into(),
            "a.default.svc.cluster.local".into(),
        );
        config.validate().unwrap();
        let t = RouteTable::new(&config);
        let a = t.service("a.default").unwrap();
        for (authority, env) in [
            ("dev.preview.example.com", Some("dev")),
            (
                "dev--proj1--alice.preview.example.com:443",
                Some("dev.proj1.alice"),
            ),
            ("feature-42.preview.example.com", Some("feature-42")),
            ("dev----x.preview.example.com", None),
            ("-dev.preview.example.com", None),
        ] {
            let (target, spelled) = t.preview(authority).unwrap();
            assert_eq!(target, Target::Service(a), "{authority}");
            assert_eq!(spelled.as_deref(), env, "{authority}");
        }
        for other in [
            "preview.example.com",
            "x.y.preview.example.com",
            "dev.example.com",
        ] {
            assert_eq!(t.preview(other), None, "{other}");
        }
        // Not a preview host elsewhere: a sidecar's table has none.
        assert_eq!(
            RouteTable::new(&PluginConfig::default()).preview("dev.preview.example.com"),
            None
        );
    }

    #[test]
    fn an_env_has_a_preview_label_where_dns_allows_one() {
        for (env, splitter, label) in [
            ("dev.proj1", '.', Some("dev--proj1")),
            ("dev-proj1", '-', Some("dev--proj1")),
            ("dev_proj1", '_', Some("dev--proj1")),
            ("Dev.proj1", '.', None),
            ("dev.a--b", '.', None),
        ] {
            assert_eq!(preview_label(env, splitter).as_deref(), label, "{env}");
            if let Some(label) = label {
                assert_eq!(preview_env(label, splitter).as_deref(), Some(env));
            }
        }
        let deep = ["level"; 12].join(".");
        assert_eq!(preview_label(&deep, '.'), None, "over 63 characters");
    }

    #[test]
    fn preview_hosts_are_checked() {
        let base = r#""services": {"a.default.svc.cluster.local": ["dev"]}"#;
        for (hosts, expected) in [
            (
                r#"{"example": "a.default.svc.cluster.local"}"#,
                "two labels",
            ),
            (
                r#"{"*.example.com": "a.default.svc.cluster.local"}"#,
                "wildcard",
            ),
            (
                r#"{"p.example.com": "b.default.svc.cluster.local"}"#,
                "not in services",
            ),
        ] {
            let json = format!(r#"{{{base}, "previewHosts": {hosts}}}"#);
            let err = PluginConfig::from_json(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("previewHosts.") && err.contains(expected),
                "{err}"
            );
        }
    }

    /// A config of namespace `default` that also carries the table of namespace `pay`.
    fn with_peer() -> RouteTable {
        let json = r#"{
          "routeHeader": "x-route-own", "defaultSubset": "dev",
          "services": {"a.default.svc.cluster.local": ["dev", "dev.proj1"]},
          "peers": {
            "pay": {"routeHeader": "X-Route-Pay", "defaultSubset": "base",
                    "services": {"ledger": ["base", "dev.proj1"], "fx": ["dev"]}},
            "empty": {"routeHeader": "x-route-empty"}
          }
        }"#;
        RouteTable::new(&PluginConfig::from_json(json.as_bytes()).unwrap())
    }

    #[test]
    fn a_peer_namespace_is_routed_by_its_own_table_and_header() {
        let t = with_peer();
        let Target::Service(ledger) = t.target("ledger.pay:8080", "default") else {
            panic!("ledger.pay is a service of the table");
        };
        assert_eq!(t.peer_route_header(ledger), Some("x-route-pay"));
        assert_eq!(
            t.choose(ledger, Some("dev.proj1.user1")),
            Choice::Fallback("dev.proj1")
        );
        // The peer's default subset, not the own one.
        assert_eq!(t.choose(ledger, Some("dev")), Choice::Default("base"));
        assert_eq!(t.default_subset(ledger), Some("base"));
        let fx = t.service("fx.pay").unwrap();
        assert_eq!(t.choose(fx, Some("other")), Choice::None);
        // The own namespace keeps its own header and default.
        let a = t.service("a.default").unwrap();
        assert_eq!(t.peer_route_header(a), None);
        assert_eq!(t.choose(a, Some("other")), Choice::Default("dev"));
        // A peer's service it does not route, and a peer without routed services: the env
        // travels on; a namespace without a VirtualEnvironment stays outside.
        assert_eq!(t.target("other.pay", "default"), Target::Unrouted);
        assert_eq!(
            t.target("x.empty.svc.cluster.local", "default"),
            Target::Unrouted
        );
        assert_eq!(t.target("x.nowhere", "default"), Target::Outside);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn unknown_services_are_not_in_the_table() {
        let t = table(None);
        assert!(t.service("zzz.default").is_none());
        assert!(t.service("a.other").is_none());
        assert_eq!(t.len(), 4);
        assert_eq!(t.env_count(), 3);
    }

    #[test]
    fn targets_are_services_unrouted_hosts_or_outside() {
        let t = table(None);
        let svc = |s: &str, ns: &str| matches!(t.target(s, ns), Target::Service(_));
        assert!(svc("a", "default"));
        assert!(svc("a.default:8080", "elsewhere"));
        assert!(svc("a.default.svc.cluster.local", "default"));
        // In a namespace the table knows, or the pod's own: the env travels on.
        assert_eq!(t.target("zzz", "default"), Target::Unrouted);
        assert_eq!(t.target("zzz.default.svc", "x"), Target::Unrouted);
        assert_eq!(t.target("zzz", "own"), Target::Unrouted);
        // Only looks like a service, or in a namespace nobody routes: untouched.
        assert_eq!(
            t.target("a.default.svc.evil.example", "default"),
            Target::Outside
        );
        assert_eq!(t.target("example.com", "default"), Target::Outside);
        assert_eq!(t.target("www.example.com", "default"), Target::Outside);
        assert_eq!(t.target("10.0.0.1:80", "default"), Target::Outside);
        assert_eq!(t.target("a", ""), Target::Outside);
    }

    #[test]
    fn explain_lists_every_step() {
        let t = table(Some("dev"));
        let service = t.service("b.default").unwrap();
        let (steps, choice) = t.explain(service, Some("dev.proj1.user1"));
        assert_eq!(
            steps,
            [
                ("dev.proj1.user1", false),
                ("dev.proj1", false),
                ("dev", true)
            ]
        );
        assert_eq!(choice, Choice::Fallback("dev"));
        assert_eq!(choice.env(), Some("dev"));
        assert_eq!(t.envs_of(service), ["dev"]);
    }
}
