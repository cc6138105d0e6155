//! The fallback rule: which env's pods serve a request for a service.
//!
//! Walk the request's env up its hierarchy (`a.b.c`, `a.b`, `a`) and take the first env in
//! which the service has pods; else the default subset when the service has it; else none.
//! Lookups are hashed and the walk is as deep as the env name, so the cost per request does
//! not grow with the number of services or envs in the config.

use std::collections::{HashMap, HashSet};

use crate::config::PluginConfig;
use crate::env::lineage;
use crate::service::service_key_of_fqdn;

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

/// The envs in which one service has ready pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceEnvs(HashSet<Box<str>>);

impl ServiceEnvs {
    pub fn has(&self, env: &str) -> bool {
        self.0.contains(env)
    }
}

/// The compiled `services` table of a plugin config, indexed by service key (`svc.ns`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    splitter: char,
    default_subset: Option<Box<str>>,
    services: HashMap<Box<str>, ServiceEnvs>,
}

impl RouteTable {
    /// Builds the table from a config that passed [`PluginConfig::validate`].
    pub fn new(config: &PluginConfig) -> Self {
        let services = config
            .services
            .iter()
            .filter_map(|(fqdn, envs)| {
                let key = service_key_of_fqdn(fqdn)?;
                let envs = envs.iter().map(|e| Box::from(e.as_str())).collect();
                Some((Box::from(key), ServiceEnvs(envs)))
            })
            .collect();
        Self {
            splitter: config.splitter_char(),
            default_subset: config.default_subset.as_deref().map(Box::from),
            services,
        }
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The envs of a service by its key (`svc.ns`); `None` when the config does not know it.
    pub fn service(&self, key: &str) -> Option<&ServiceEnvs> {
        self.services.get(key)
    }

    /// The fallback walk for a request with `env` (or none) to `service`.
    pub fn choose<'a>(&'a self, service: &ServiceEnvs, env: Option<&'a str>) -> Choice<'a> {
        if let Some(env) = env {
            let mut walk = lineage(env, self.splitter);
            if let Some(own) = walk.next().filter(|e| service.has(e)) {
                return Choice::Exact(own);
            }
            if let Some(ancestor) = walk.find(|e| service.has(e)) {
                return Choice::Fallback(ancestor);
            }
        }
        match self.default_subset.as_deref() {
            Some(default) if service.has(default) => Choice::Default(default),
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
                    .map(|e| (e, service.has(e)))
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
    fn unknown_services_are_not_in_the_table() {
        let t = table(None);
        assert!(t.service("zzz.default").is_none());
        assert!(t.service("a.other").is_none());
        assert_eq!(t.len(), 4);
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
    }
}
