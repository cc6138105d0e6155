//! Which services can be routed by subset: those whose traffic goes through a sidecar's
//! HTTP route. Headless and ExternalName services bypass VirtualService routing, and a
//! service whose every port speaks something other than HTTP or gRPC has no HTTP route
//! to add a header match to.

use k8s_openapi::api::core::v1::{Service, ServicePort};

/// Istio's port-name prefixes and `appProtocol` values for HTTP and gRPC.
const HTTP: [&str; 5] = ["http", "http2", "grpc", "grpc-web", "h2c"];
/// Those for everything else Istio knows (encrypted or not HTTP at all).
const NOT_HTTP: [&str; 9] = [
    "https", "tls", "tcp", "udp", "mongo", "mysql", "redis", "thrift", "sctp",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Other,
    /// Neither named nor declared: Istio detects HTTP on it by sniffing.
    Sniffed,
}

/// The port's `appProtocol`, lower case, without `kubernetes.io/`; `None` when unset.
fn declared(port: &ServicePort) -> Option<String> {
    port.app_protocol
        .as_deref()
        .map(|p| p.trim_start_matches("kubernetes.io/").to_ascii_lowercase())
        .filter(|p| !p.is_empty())
}

fn protocol(port: &ServicePort) -> Protocol {
    if let Some(declared) = declared(port) {
        return if HTTP.contains(&declared.as_str()) {
            Protocol::Http
        } else {
            Protocol::Other
        };
    }
    if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
        return Protocol::Other;
    }
    let prefix = port
        .name
        .as_deref()
        .and_then(|n| n.split('-').next())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if HTTP.contains(&prefix.as_str()) {
        Protocol::Http
    } else if NOT_HTTP.contains(&prefix.as_str()) {
        Protocol::Other
    } else {
        Protocol::Sniffed
    }
}

/// Whether traffic on `port` takes an HTTP route (HTTP or gRPC, declared or sniffed).
pub fn routes_http(port: &ServicePort) -> bool {
    protocol(port) != Protocol::Other
}

/// Whether `port` is declared gRPC (by `appProtocol`, or Istio's port-name prefix).
pub fn is_grpc(port: &ServicePort) -> bool {
    match declared(port) {
        Some(p) => p == "grpc",
        // `grpc-web` (browsers, HTTP/1.1) is not gRPC's wire protocol.
        None => port.name.as_deref().is_some_and(|n| {
            let n = n.to_ascii_lowercase();
            (n == "grpc" || n.starts_with("grpc-")) && !n.starts_with("grpc-web")
        }),
    }
}

/// Why `service` cannot be routed by subset, or `None` when it can.
pub fn not_routable(service: &Service) -> Option<&'static str> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some(
            "an ExternalName service: its traffic leaves the mesh by DNS, past any subset",
        );
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        return Some("a headless service (clusterIP: None): clients reach its pods by their own addresses, past any subset");
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        return Some("a service without ports");
    }
    if ports.iter().all(|p| protocol(p) == Protocol::Other) {
        return Some("no HTTP or gRPC port (by appProtocol or Istio's port-name prefixes): only HTTP can be routed by header");
    }
    None
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;

    use super::*;

    fn service(spec: ServiceSpec) -> Service {
        Service {
            spec: Some(spec),
            ..Service::default()
        }
    }

    fn port(name: Option<&str>, app_protocol: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(String::from),
            app_protocol: app_protocol.map(String::from),
            port: 8080,
            ..ServicePort::default()
        }
    }

    fn with_ports(ports: Vec<ServicePort>) -> Service {
        service(ServiceSpec {
            ports: Some(ports),
            ..ServiceSpec::default()
        })
    }

    #[test]
    fn http_grpc_and_sniffed_ports_are_routable() {
        for p in [
            port(Some("http"), None),
            port(Some("http-web"), None),
            port(Some("grpc"), None),
            port(Some("grpc-web"), None),
            port(None, Some("kubernetes.io/h2c")),
            port(Some("tcp"), Some("http")),
            port(None, None),
            port(Some("web"), None),
        ] {
            assert_eq!(not_routable(&with_ports(vec![p.clone()])), None, "{p:?}");
        }
        // One HTTP port among others is enough.
        let mixed = with_ports(vec![port(Some("tcp-db"), None), port(Some("http"), None)]);
        assert_eq!(not_routable(&mixed), None);
    }

    #[test]
    fn headless_external_and_non_http_services_are_not() {
        let headless = service(ServiceSpec {
            cluster_ip: Some("None".into()),
            ports: Some(vec![port(Some("http"), None)]),
            ..ServiceSpec::default()
        });
        assert!(not_routable(&headless).unwrap().contains("headless"));
        let external = service(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some("db.example.com".into()),
            ..ServiceSpec::default()
        });
        assert!(not_routable(&external).unwrap().contains("ExternalName"));
        for p in [
            port(Some("tcp"), None),
            port(Some("https"), None),
            port(Some("mongo"), None),
            port(Some("http"), Some("tcp")),
            port(None, Some("mysql")),
        ] {
            let why = not_routable(&with_ports(vec![p.clone()])).unwrap();
            assert!(why.contains("no HTTP"), "{p:?}");
        }
        let udp = ServicePort {
            protocol: Some("UDP".into()),
            ..port(Some("dns"), None)
        };
        assert!(not_routable(&with_ports(vec![udp])).is_some());
        assert!(not_routable(&with_ports(vec![]))
            .unwrap()
            .contains("without ports"));
    }
}
