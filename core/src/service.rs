//! Service names as Kubernetes DNS spells them.
//!
//! A service is reached as `svc`, `svc.ns`, `svc.ns.svc` or `svc.ns.svc.<cluster domain>`,
//! each with an optional port, in any letter case (DNS is case-insensitive, and so is
//! Envoy's virtual host matching). [`ServiceHost::parse`] takes such a host apart without
//! allocating; whether it really is a service of the mesh (a namespace and cluster domain
//! the route table knows) is for [`crate::RouteTable::target`] to say, so that
//! `app-a.default.svc.evil.example` is not mistaken for `app-a.default`.

use std::borrow::Cow;

/// The longest DNS label.
const MAX_LABEL: usize = 63;

/// A host that is shaped like a Kubernetes service name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceHost<'a> {
    pub name: &'a str,
    /// `None` for a short name, which lives in the caller's own namespace.
    pub namespace: Option<&'a str>,
    /// The cluster domain after `.svc.`, when spelled out.
    pub domain: Option<&'a str>,
}

impl<'a> ServiceHost<'a> {
    /// Parses an `:authority` / `Host` value that is already lower case (see [`lowercase`]).
    /// `None` for anything not shaped like a service name: IP literals, ports that are not
    /// numbers, labels with other characters, a third label other than `svc`.
    pub fn parse(authority: &'a str) -> Option<Self> {
        let host = host_of(authority)?;
        let mut labels = host.splitn(4, '.');
        let name = labels.next().filter(|l| is_label(l))?;
        let namespace = labels.next();
        let svc = labels.next();
        let domain = labels.next();
        if namespace.is_some_and(|ns| !is_label(ns)) {
            return None;
        }
        match (svc, domain) {
            (None, _) | (Some("svc"), None) => {}
            (Some("svc"), Some(domain)) if is_domain(domain) => {}
            _ => return None,
        }
        Some(Self {
            name,
            namespace,
            domain,
        })
    }
}

/// `authority` in lower case, borrowed when it already is (the common case).
pub fn lowercase(authority: &str) -> Cow<'_, str> {
    if authority.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(authority.to_ascii_lowercase())
    } else {
        Cow::Borrowed(authority)
    }
}

/// Strips the port from an `:authority` / `Host` value. IPv6 literals are not services.
pub(crate) fn host_of(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        return None;
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        Some(_) => return None,
        None => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// A lower-case DNS label (RFC 1123).
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_domain(s: &str) -> bool {
    s.split('.').all(is_label)
}

/// The service key (`svc.ns`) of a fully qualified service name as the plugin config
/// spells it (`svc.ns.svc.cluster.local`); `svc.ns` and `svc.ns.svc` are accepted too.
pub fn service_key_of_fqdn(fqdn: &str) -> Option<&str> {
    let host = ServiceHost::parse(fqdn)?;
    let ns = host.namespace?;
    Some(&fqdn[..host.name.len() + 1 + ns.len()])
}

/// The cluster domain of a fully qualified service name, if it spells one out.
pub fn cluster_domain_of_fqdn(fqdn: &str) -> Option<&str> {
    ServiceHost::parse(fqdn)?.domain
}

/// A Kubernetes namespace or service name, or one label of a DNS name (RFC 1123 label).
pub fn is_dns_label(s: &str) -> bool {
    is_label(s) && !s.starts_with('-') && !s.ends_with('-')
}

/// The fully qualified name of a service, as the config and Istio objects spell it.
pub fn service_fqdn(name: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{name}.{namespace}.svc.{cluster_domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(authority: &str) -> Option<(String, Option<String>, Option<String>)> {
        let lower = lowercase(authority);
        let h = ServiceHost::parse(&lower)?;
        Some((
            h.name.to_owned(),
            h.namespace.map(String::from),
            h.domain.map(String::from),
        ))
    }

    #[test]
    fn every_dns_spelling_names_the_service() {
        for authority in [
            "app-a.default",
            "app-a.default:80",
            "app-a.default.svc",
            "app-a.default.svc:9080",
            "app-a.default.svc.cluster.local",
            "app-a.default.svc.cluster.local:8080",
            "app-a.default.svc.cluster.local.",
            "APP-A.Default.SVC.Cluster.Local",
        ] {
            let (name, ns, _) = parse(authority).unwrap();
            assert_eq!((name.as_str(), ns.as_deref()), ("app-a", Some("default")));
        }
        assert_eq!(parse("app-a:8080"), Some(("app-a".into(), None, None)));
        assert_eq!(parse("APP-A"), Some(("app-a".into(), None, None)));
        assert_eq!(
            parse("app-a.default.svc.evil.example")
                .unwrap()
                .2
                .as_deref(),
            Some("evil.example")
        );
    }

    #[test]
    fn non_service_hosts_do_not_parse() {
        for host in [
            "[::1]:8080",
            "app:http",
            "",
            ":80",
            "app_x.default",
            "a.b.c",
            "a.b.svc..x",
            "a b",
            "app:99999999",
            "app-a.default.notsvc.cluster.local",
            "d\u{ff}v",
        ] {
            assert_eq!(parse(host), None, "{host:?}");
        }
        // Shaped like a service; only the route table knows it is none.
        assert!(parse("10.0.0.1:8080").is_none());
        assert!(parse("www.example.com").is_none());
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
            cluster_domain_of_fqdn("app-a.default.svc.corp.example"),
            Some("corp.example")
        );
        assert_eq!(
            service_fqdn("app-a", "default", "cluster.local"),
            "app-a.default.svc.cluster.local"
        );
    }
}
