//! A real HTTP client (hyper), speaking HTTP/1.1, HTTP/2 without TLS (h2c), or gRPC over
//! h2c (a unary call: POST, `content-type: application/grpc`, a length-prefixed message,
//! the status in trailers).
//!
//! The connection goes to `addr` (a sidecar's listener) while the `host` header, or
//! `:authority` in HTTP/2, names the service, as an application behind a sidecar does.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2c,
    Grpc,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// For a gRPC response: why it failed (no `grpc-status` trailer, or not 0).
    pub fn protocol_error(&self) -> Option<String> {
        let is_grpc = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/grpc"));
        match self.header("grpc-status") {
            _ if !is_grpc => None,
            Some("0") => None,
            Some(code) => Some(format!(
                "grpc-status {code}: {}",
                self.header("grpc-message").unwrap_or_default()
            )),
            None => Some("no grpc-status trailer".into()),
        }
    }
}

/// GET `path` from `addr` over HTTP/1.1. Headers may include `host`.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request(Protocol::Http1, addr, path, headers).await
}

/// The method the test application serves over gRPC.
pub const GRPC_PATH: &str = "/virtualenv.test.Hop/Call";

/// One gRPC message frame: not compressed, 4-byte big-endian length, the message.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

/// The message of one gRPC frame.
pub fn grpc_message(frame: &[u8]) -> Option<Bytes> {
    let len = u32::from_be_bytes(frame.get(1..5)?.try_into().ok()?) as usize;
    frame
        .get(5..5 + len)
        .filter(|_| frame[0] == 0)
        .map(Bytes::copy_from_slice)
}

pub async fn request(
    protocol: Protocol,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    tokio::time::timeout(Duration::from_secs(10), send(protocol, addr, path, headers))
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
}

async fn send(
    protocol: Protocol,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    let host = match map.remove(HOST) {
        Some(host) => host.to_str()?.to_owned(),
        None => addr.to_string(),
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let io = TokioIo::new(stream);
    let response = match protocol {
        Protocol::Http1 => {
            let mut req = hyper::Request::get(path).body(Empty::<Bytes>::new())?;
            *req.headers_mut() = map;
            req.headers_mut()
                .insert(HOST, HeaderValue::from_str(&host)?);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        }
        Protocol::H2c => {
            let uri = format!("http://{host}{path}");
            let mut req = hyper::Request::get(uri).body(Empty::<Bytes>::new())?;
            *req.headers_mut() = map;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        }
        Protocol::Grpc => {
            let uri = format!("http://{host}{GRPC_PATH}");
            let mut req = hyper::Request::post(uri).body(Full::new(grpc_frame(b"{}")))?;
            *req.headers_mut() = map;
            req.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            req.headers_mut()
                .insert("te", HeaderValue::from_static("trailers"));
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            let response = sender.send_request(req).await?;
            let status = response.status().as_u16();
            let mut headers = response.headers().clone();
            let collected = response.into_body().collect().await?;
            // The call's outcome is in the trailers: they are the gRPC status.
            if let Some(trailers) = collected.trailers() {
                headers.extend(trailers.clone());
            }
            let frame = collected.to_bytes();
            let body = grpc_message(&frame).unwrap_or(frame);
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Response {
        status,
        headers,
        body,
    })
}
