//! The mesh's test application. For each request it answers who it is (service, pod, env
//! label, the env header it received) and, when configured, calls the next services through
//! its own sidecar's outbound listener and includes their answers, so the whole call chain
//! comes back in one response.
//!
//! It answers gRPC too (a unary call to [`http::GRPC_PATH`]: the same answer as the
//! message, `grpc-status` in the trailers), and makes its own calls in the protocol it is
//! configured with, so a gRPC call chain runs through the sidecars.
//!
//! It forwards the tracing headers it received, as an instrumented application does;
//! whether it also forwards the env header is a switch, so that propagation without it
//! (baggage, trace correlation) is tested.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::http::{self, Protocol};
use crate::topology::{Topology, TopologyPod};

/// The headers an instrumented application forwards: its tracing headers and baggage.
pub const TRACING_HEADERS: [&str; 3] = ["traceparent", "x-request-id", "baggage"];
/// Headers besides the env header that the test topologies use to carry an env, which the
/// application reports line by line.
pub const CARRIERS: [&str; 3] = ["x-env", "baggage", "cookie"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppConfig {
    pub listen: SocketAddr,
    pub service: String,
    pub pod: String,
    pub env: Option<String>,
    /// The pod's sidecar outbound listener; `None` in a cluster, where the sidecar
    /// intercepts calls to the service's own address.
    #[serde(default)]
    pub outbound: Option<SocketAddr>,
    /// `host:port` of each service to call per request.
    pub calls: Vec<String>,
    /// The env header's name (lower case).
    pub env_header: String,
    pub forward_env_header: bool,
    /// Other headers forwarded from the incoming request to every call.
    pub forward: Vec<String>,
    /// The protocol of its own calls.
    #[serde(default = "http1", skip_serializing_if = "is_http1")]
    pub call_protocol: Protocol,
}

fn http1() -> Protocol {
    Protocol::Http1
}

fn is_http1(protocol: &Protocol) -> bool {
    *protocol == Protocol::Http1
}

impl AppConfig {
    /// The application of `pod`: its service, env and the services it calls, forwarding the
    /// env header and [`TRACING_HEADERS`].
    /// The application of `pod` of namespace `ns` in the mesh `mesh` (whose namespaces
    /// its calls may name).
    pub fn for_pod(
        mesh: &Topology,
        ns: &Topology,
        pod: &TopologyPod,
        listen: SocketAddr,
        outbound: Option<SocketAddr>,
    ) -> Self {
        let service = ns
            .services_of(pod)
            .next()
            .map_or_else(|| pod.name.clone(), |s| s.name.clone());
        let calls = pod
            .calls
            .iter()
            .filter_map(|call| {
                let (target, s) = mesh.call_target(ns, call)?;
                Some(if target.namespace == ns.namespace {
                    format!("{}:{}", s.name, s.port)
                } else {
                    format!("{}.{}:{}", s.name, target.namespace, s.port)
                })
            })
            .collect();
        Self {
            listen,
            service,
            pod: pod.name.clone(),
            env: ns.env_of(pod),
            outbound,
            calls,
            env_header: ns.virtual_environment.env_header.name.to_ascii_lowercase(),
            forward_env_header: true,
            forward: TRACING_HEADERS.map(String::from).to_vec(),
            call_protocol: Protocol::Http1,
        }
    }
}

/// One hop's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    pub service: String,
    pub pod: String,
    /// The pod's env label.
    pub env: Option<String>,
    /// The env header the application received.
    pub received_env: Option<String>,
    /// HTTP version of the request as the application received it.
    pub protocol: String,
    /// Whether it was a gRPC call (`content-type: application/grpc`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grpc: bool,
    /// Route headers (`x-virtual-env-route*`) that reached the application: there should
    /// be none, the caller's sidecar strips them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_headers: Vec<String>,
    /// Every line received of each header that may carry an env ([`CARRIERS`] and the env
    /// header), by name: what an application could read an env from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub carriers: BTreeMap<String, Vec<String>>,
    /// Answers of the services called, or the error of a failed call.
    #[serde(default)]
    pub calls: Vec<Call>,
}

/// One call the application made: the callee's answer, or `{"error": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Call {
    Answered(Hop),
    Failed { error: String },
}

impl Hop {
    /// The chain of hops along the first call at each level.
    pub fn chain(&self) -> Vec<&Hop> {
        let mut chain = vec![self];
        while let Some(Call::Answered(next)) = chain[chain.len() - 1].calls.first() {
            chain.push(next);
        }
        chain
    }

    /// The pods along the chain, e.g. `["app-a-proj1", "app-b-dev", "app-c-proj1"]`.
    pub fn pods(&self) -> Vec<&str> {
        self.chain().iter().map(|h| h.pod.as_str()).collect()
    }

    /// The first failed call anywhere in the tree.
    pub fn first_error(&self) -> Option<&str> {
        self.calls.iter().find_map(|c| match c {
            Call::Answered(hop) => hop.first_error(),
            Call::Failed { error } => Some(error.as_str()),
        })
    }
}

type Body = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

async fn handle(config: Arc<AppConfig>, req: Request<Incoming>) -> Response<Body> {
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let hop = answer(&config, &req).await;
    let json = Bytes::from(serde_json::to_vec(&hop).unwrap_or_default());
    let (content_type, frames) = if grpc {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
        (
            "application/grpc",
            vec![
                Ok(Frame::data(http::grpc_frame(&json))),
                Ok(Frame::trailers(trailers)),
            ],
        )
    } else {
        ("application/json", vec![Ok(Frame::data(json))])
    };
    Response::builder()
        .header("content-type", content_type)
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap_or_else(|_| Response::new(StreamBody::new(futures::stream::iter(Vec::new()))))
}

async fn answer(config: &AppConfig, req: &Request<Incoming>) -> Hop {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let received_env = header(&config.env_header);
    let route_headers = req
        .headers()
        .keys()
        .filter(|name| name.as_str().starts_with("x-virtual-env-route"))
        .map(|name| name.as_str().to_owned())
        .collect();
    let lines = |name: &str| -> Vec<String> {
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let carriers: BTreeMap<String, Vec<String>> = CARRIERS
        .iter()
        .copied()
        .chain([config.env_header.as_str()])
        .map(|name| (name.to_owned(), lines(name)))
        .filter(|(_, lines)| !lines.is_empty())
        .collect();
    // A header received in several lines is forwarded as one, joined as HTTP libraries
    // join them (Node.js, for one): what the next hop sees of a repeated header.
    let mut forwarded: Vec<(String, String)> = config
        .forward
        .iter()
        .filter_map(|name| {
            let separator = if name == "cookie" { "; " } else { ", " };
            let all = lines(name);
            (!all.is_empty()).then(|| (name.clone(), all.join(separator)))
        })
        .collect();
    if config.forward_env_header {
        if let Some(env) = &received_env {
            forwarded.push((config.env_header.clone(), env.clone()));
        }
    }
    let headers: Vec<(&str, &str)> = forwarded
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut calls = Vec::new();
    for target in &config.calls {
        let mut with_host = vec![("host", target.as_str())];
        with_host.extend_from_slice(&headers);
        let answer = match call(config.call_protocol, config.outbound, target, &with_host).await {
            Ok(r) if r.protocol_error().is_some() => Err(format!(
                "{target}: {}",
                r.protocol_error().unwrap_or_default()
            )),
            Ok(r) if r.status == 200 => {
                serde_json::from_slice::<Hop>(&r.body).map_err(|e| format!("{target}: {e}"))
            }
            Ok(r) => Err(format!("{target}: HTTP {} {}", r.status, r.text())),
            Err(e) => Err(format!("{target}: {e:#}")),
        };
        calls.push(match answer {
            Ok(hop) => Call::Answered(hop),
            Err(error) => Call::Failed { error },
        });
    }
    Hop {
        service: config.service.clone(),
        pod: config.pod.clone(),
        env: config.env.clone(),
        received_env,
        protocol: format!("{:?}", req.version()),
        grpc: req
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
        route_headers,
        carriers,
        calls,
    }
}

async fn call(
    protocol: Protocol,
    outbound: Option<SocketAddr>,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<http::Response> {
    let addr = match outbound {
        Some(addr) => addr,
        None => tokio::net::lookup_host(target)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{target} does not resolve"))?,
    };
    http::request(protocol, addr, "/", headers).await
}

/// Serves until the process ends. HTTP/1.1 and HTTP/2 (h2c) on the same port.
pub async fn serve(config: AppConfig) -> Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    let config = Arc::new(config);
    loop {
        let (stream, _) = listener.accept().await?;
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let config = Arc::clone(&config);
                async move { Ok::<_, Infallible>(handle(config, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(pod: &str, calls: Vec<Call>) -> Hop {
        Hop {
            service: "svc".into(),
            pod: pod.into(),
            env: Some("dev".into()),
            received_env: None,
            protocol: "HTTP/1.1".into(),
            grpc: false,
            route_headers: Vec::new(),
            carriers: BTreeMap::new(),
            calls,
        }
    }

    #[test]
    fn calls_are_the_answer_itself_or_an_error() {
        let tree = hop(
            "a",
            vec![
                Call::Answered(hop("b", vec![])),
                Call::Failed {
                    error: "c: HTTP 503".into(),
                },
            ],
        );
        let json = serde_json::to_value(&tree).unwrap();
        assert_eq!(json["calls"][0]["pod"], "b");
        assert_eq!(json["calls"][1]["error"], "c: HTTP 503");
        let back: Hop = serde_json::from_value(json).unwrap();
        assert_eq!(back, tree);
        assert_eq!(back.pods(), ["a", "b"]);
        assert_eq!(back.first_error(), Some("c: HTTP 503"));
    }
}
