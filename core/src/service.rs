//! Service names as Kubernetes DNS spells them.
//!
//! A service is reached as `svc`, `svc.ns`, `svc.ns.svc` or `svc.ns.svc.<cluster domain>`,
//! each with an optional port. All of them name the same service key `svc.ns`, which is
//! what the route table is indexed by; the cluster domain is not assumed to be
//! `cluster.local`.

use std::borrow::Cow;

/// Strips the port from an `:authority` / `Host` value. IPv6 literals are not services.
fn host_of(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        return None;
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return None,
        None => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// The service key (`svc.ns`) of a host name, given the namespace that short names live in.
///
/// Returns `None` for anything that is not a Kubernetes service name (IP literals, external
/// hosts with a `svc` label in the wrong place are looked up and simply not found).
/// Borrows from `authority` except for a short name, which gains the namespace.
pub fn service_key<'a>(authority: &'a str, own_namespace: &str) -> Option<Cow<'a, str>> {
    let host = host_of(authority)?;
    let mut labels = host.splitn(4, '.');
    let name = labels.next()?;
    match (labels.next(), labels.next()) {
        (None, _) => {
            if own_namespace.is_empty() {
                return None;
            }
            Some(Cow::Owned(format!("{name}.{own_namespace}")))
        }
        (Some(ns), None) => Some(Cow::Borrowed(&host[..name.len() + 1 + ns.len()])),
        (Some(ns), Some("svc")) => Some(Cow::Borrowed(&host[..name.len() + 1 + ns.len()])),
        (Some(_), Some(_)) => None,
    }
    .filter(|key| {
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    })
}

/// The service key of a fully qualified service name as the plugin config spells it
/// (`svc.ns.svc.cluster.local`); `svc.ns` and `svc.ns.svc` are accepted too.
pub fn service_key_of_fqdn(fqdn: &str) -> Option<&str> {
    match service_key(fqdn, "")? {
        Cow::Borrowed(key) => Some(key),
        Cow::Owned(_) => None,
    }
}

/// The fully qualified name of a service, as the config and Istio objects spell it.
pub fn service_fqdn(name: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{name}.{namespace}.svc.{cluster_domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dns_spelling_names_the_same_service() {
        for authority in [
            "app-a",
            "app-a:8080",
            "app-a.default",
            "app-a.default:80",
            "app-a.default.svc",
            "app-a.default.svc:9080",
            "app-a.default.svc.cluster.local",
            "app-a.default.svc.cluster.local:8080",
            "app-a.default.svc.cluster.local.",
            "app-a.default.svc.corp.example",
        ] {
            assert_eq!(
                service_key(authority, "default").as_deref(),
                Some("app-a.default"),
                "{authority}"
            );
        }
    }

    #[test]
    fn short_names_take_the_own_namespace() {
        assert_eq!(
            service_key("app-b", "team1").as_deref(),
            Some("app-b.team1")
        );
        assert_eq!(
            service_key("app-b.other", "team1").as_deref(),
            Some("app-b.other")
        );
        // Without a known namespace a short name cannot be resolved.
        assert_eq!(service_key("app-b", ""), None);
    }

    #[test]
    fn non_service_hosts_have_no_key() {
        assert_eq!(service_key("[::1]:8080", "default"), None);
        assert_eq!(service_key("10.0.0.1:8080", "default"), None);
        assert_eq!(service_key("www.example.com", "default"), None);
        assert_eq!(service_key("app:http", "default"), None);
        assert_eq!(service_key("", "default"), None);
        assert_eq!(service_key("app_x.default", "default"), None);
    }

    #[test]
    fn fqdn_keys() {
        assert_eq!(
            service_key_of_fqdn("app-a.default.svc.cluster.local"),
            Some("app-a.default")
        );
        assert_eq!(service_key_of_fqdn("app-a.default"), Some("app-a.default"));
        assert_eq!(service_key_of_fqdn("app-a"), None);
        assert_eq!(
            service_fqdn("app-a", "default", "cluster.local"),
            "app-a.default.svc.cluster.local"
        );
    }
}
