//! A real HTTP client (hyper), speaking HTTP/1.1 or HTTP/2 without TLS (h2c).
//!
//! The connection goes to `addr` (a sidecar's listener) while the `host` header, or
//! `:authority` in HTTP/2, names the service, as an application behind a sidecar does.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2c,
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
}

/// GET `path` from `addr` over HTTP/1.1. Headers may include `host`.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request(Protocol::Http1, addr, path, headers).await
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
