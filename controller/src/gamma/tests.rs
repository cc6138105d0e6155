use k8s_openapi::api::core::v1::{Service, ServicePort};
use kube::api::ObjectMeta;
use virtual_env_core::service::is_dns_label;

use super::*;
use crate::plan::fixtures::service;

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        ..ObjectMeta::default()
    }
}

fn routing(service: &Service, envs: usize) -> GatewayApiRouting<'_> {
    GatewayApiRouting {
        service,
        env_label: "virtual-env",
        envs: (0..envs)
            .map(|i| {
                let env = format!("dev.e{i:02}");
                EnvBackend {
                    service: env_service_name(&service.name_any(), &env),
                    env,
                }
            })
            .collect(),
        default_env: Some("dev.e00".into()),
        route_header: "x-virtual-env-route-abc",
        strip: vec![
            "x-virtual-env-route-abc".into(),
            "x-virtual-env-route".into(),
        ],
        grpc_route: true,
    }
}

fn env_rules(route: &MeshRoute) -> usize {
    route
        .spec()
        .rules
        .iter()
        .filter(|r| r.matches.iter().any(|m| !m.headers.is_empty()))
        .count()
}

#[test]
fn env_service_names_are_labels_within_63_characters_and_never_anothers() {
    let long = "a".repeat(63);
    for (svc, env) in [
        ("reviews", "v2"),
        ("reviews", "dev.proj1"),
        (long.as_str(), "dev"),
        ("a", &*"E".repeat(63)),
        ("a", "..."),
    ] {
        let name = env_service_name(svc, env);
        assert!(name.len() <= 63, "{name}");
        assert!(is_dns_label(&name), "{name}");
        assert!(name.starts_with(|c: char| c.is_ascii_lowercase()), "{name}");
        assert_eq!(name, env_service_name(svc, env), "stable");
    }
    assert!(env_service_name("reviews", "dev.proj1").starts_with("reviews-dev-proj1-"));
    // `reviews` env `v2` is not a service named `reviews-v2`, nor `reviews-v2`'s env.
    assert_ne!(env_service_name("reviews", "v2"), "reviews-v2");
    assert_ne!(env_service_name("a-b", "c"), env_service_name("a", "b-c"));
    // Envs that read alike still get distinct Services.
    assert_ne!(
        env_service_name("app", "dev.x"),
        env_service_name("app", "dev-x")
    );
    assert_ne!(
        env_service_name("app", "Dev"),
        env_service_name("app", "dev")
    );
}

#[test]
fn fifteen_envs_fit_one_route_and_the_sixteenth_starts_a_second() {
    let svc = service("app-a");
    let at_limit = routing(&svc, MAX_RULES - 1).routes(&meta);
    assert_eq!(at_limit.len(), 1);
    assert_eq!(at_limit[0].spec().rules.len(), MAX_RULES);
    let over = routing(&svc, MAX_RULES).routes(&meta);
    let names: Vec<String> = over.iter().map(MeshRoute::name).collect();
    assert_eq!(names, ["app-a", "app-a.2"]);
    assert_eq!(env_rules(&over[0]) + env_rules(&over[1]), MAX_RULES);
    // The default rule (no header match) is in the first route only, and every route
    // names the same parent.
    assert_eq!(env_rules(&over[0]), MAX_RULES - 1);
    assert_eq!(env_rules(&over[1]), 1);
    assert!(over
        .iter()
        .all(|r| r.spec().parent_refs == over[0].spec().parent_refs));
    let many = routing(&svc, 100).routes(&meta);
    assert_eq!(many.len(), 101_usize.div_ceil(MAX_RULES));
    assert!(many.iter().all(|r| r.spec().rules.len() <= MAX_RULES));
}

#[test]
fn the_default_rule_sends_to_the_default_envs_service_or_the_service() {
    let svc = service("app-a");
    let mut r = routing(&svc, 2);
    let backend = |r: &GatewayApiRouting<'_>| {
        r.routes(&meta)[0].spec().rules[0].backend_refs[0]
            .name
            .clone()
    };
    assert_eq!(backend(&r), r.envs[0].service);
    r.default_env = None;
    assert_eq!(backend(&r), "app-a");
    // Every rule strips the route headers, and matches the route header exactly.
    let route = &r.routes(&meta)[0];
    for rule in &route.spec().rules {
        assert_eq!(rule.filters[0].request_header_modifier.remove, r.strip);
        assert_eq!(rule.backend_refs[0].port, 8080);
    }
    let header = &route.spec().rules[1].matches[0].headers[0];
    assert_eq!(
        (
            header.type_.as_str(),
            header.name.as_str(),
            header.value.as_str()
        ),
        ("Exact", "x-virtual-env-route-abc", "dev.e00")
    );
}

#[test]
fn a_multi_port_service_gets_a_route_per_http_port_and_grpc_ports_get_grpcroutes() {
    let mut svc = service("app-a");
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        ..ServicePort::default()
    };
    svc.spec.as_mut().unwrap().ports = Some(vec![
        port("http", 80),
        port("grpc-api", 9090),
        port("tcp-db", 5432),
    ]);
    let routes = routing(&svc, 2).routes(&meta);
    let seen: Vec<(Kind, String, Option<i32>)> = routes
        .iter()
        .map(|r| (r.kind(), r.name(), r.spec().parent_refs[0].port))
        .collect();
    assert_eq!(
        seen,
        [
            (Kind::HttpRoute, "app-a.80".to_owned(), Some(80)),
            (Kind::GrpcRoute, "app-a.9090".to_owned(), Some(9090)),
        ]
    );
    // A GRPCRoute has no path match; its default rule has no match at all.
    let grpc = routes[1].spec();
    assert!(grpc.rules[0].matches.is_empty());
    assert!(grpc.rules[1].matches[0].path.is_none());
    assert!(grpc.rules.iter().all(|r| r.backend_refs[0].port == 9090));
    // Without GRPCRoute served, the gRPC port gets an HTTPRoute.
    let mut r = routing(&svc, 2);
    r.grpc_route = false;
    assert!(r.routes(&meta).iter().all(|r| r.kind() == Kind::HttpRoute));
}

#[test]
fn env_services_select_the_env_and_spell_out_the_api_servers_defaults() {
    let svc = service("app-a");
    let r = routing(&svc, 2);
    let services = r.env_services(&meta);
    assert_eq!(services.len(), 2);
    let spec = services[1].spec.as_ref().unwrap();
    let selector = spec.selector.as_ref().unwrap();
    assert_eq!(selector["app"], "app-a");
    assert_eq!(selector["virtual-env"], "dev.e01");
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
    );
    assert_eq!(services[1].labels()[ENV_SERVICE_OF_LABEL], "app-a");
    assert_eq!(services[1].annotations()[ENV_ANNOTATION], "dev.e01");
    assert_eq!(services[1].name_any(), r.envs[1].service);
}

#[test]
fn what_the_cluster_serves_decides_the_routes() {
    assert_eq!(GatewayApi::detect([]), None);
    // Gateway API before v1.0: HTTPRoute only as v1beta1, which is not written.
    assert_eq!(GatewayApi::detect([("httproutes", "v1beta1")]), None);
    assert_eq!(
        GatewayApi::detect([("httproutes", "v1"), ("gateways", "v1")]),
        Some(GatewayApi {
            grpc_route: false,
            gateways: true
        })
    );
    // The routes alone, for the mesh: no entry through Gateways to read.
    assert_eq!(
        GatewayApi::detect([("httproutes", "v1"), ("grpcroutes", "v1")]),
        Some(GatewayApi {
            grpc_route: true,
            gateways: false
        })
    );
}

#[test]
fn an_env_service_is_exported_where_its_service_is() {
    let mut svc = service("app-a");
    svc.metadata.annotations = Some(std::collections::BTreeMap::from([(
        EXPORT_TO_ANNOTATION.to_owned(),
        ".,istio-system".to_owned(),
    )]));
    let services = routing(&svc, 1).env_services(&meta);
    assert_eq!(
        services[0].annotations()[EXPORT_TO_ANNOTATION],
        ".,istio-system"
    );
}

#[test]
fn grpc_web_is_not_grpc() {
    let port = |name: &str, app: Option<&str>| ServicePort {
        name: Some(name.into()),
        app_protocol: app.map(Into::into),
        port: 80,
        ..ServicePort::default()
    };
    assert!(crate::routable::is_grpc(&port("grpc", None)));
    assert!(crate::routable::is_grpc(&port("grpc-api", None)));
    assert!(crate::routable::is_grpc(&port(
        "http",
        Some("kubernetes.io/grpc")
    )));
    assert!(!crate::routable::is_grpc(&port("grpc-web", None)));
    assert!(!crate::routable::is_grpc(&port("grpc-web-ui", None)));
    assert!(!crate::routable::is_grpc(&port("grpcx", None)));
    assert!(!crate::routable::is_grpc(&port("grpc", Some("grpc-web"))));
}
