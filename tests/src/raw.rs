//! A raw HTTP/1.1 client: writes exactly the bytes it is given, so tests can send what a
//! hostile client sends (bytes 0x80-0xFF in header values, duplicate headers, values at
//! Envoy's size limit) that a well-behaved client library would refuse to build. Requests
//! go over one keep-alive connection, which Envoy serves on one worker: a request after a
//! hostile one meets the same Wasm VM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A GET of `/` with `headers` (name, raw value), `host` first.
pub fn request(host: &[u8], headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"GET / HTTP/1.1\r\nhost: ".to_vec();
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

pub struct RawConnection {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buffered: Vec<u8>,
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        Ok(Self {
            addr,
            stream: Some(stream),
            buffered: Vec::new(),
        })
    }

    /// Whether Envoy closed the connection after the last response (then the next
    /// request opens a new one, and may meet another worker).
    pub fn closed(&self) -> bool {
        self.stream.is_none()
    }

    /// Sends one request and reads its response.
    pub async fn send(&mut self, request: &[u8]) -> Result<RawResponse> {
        if self.stream.is_none() {
            self.stream = Some(TcpStream::connect(self.addr).await?);
            self.buffered.clear();
        }
        tokio::time::timeout(Duration::from_secs(10), self.exchange(request))
            .await
            .context("no response in 10 s")?
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<RawResponse> {
        let stream = self.stream.as_mut().context("not connected")?;
        stream.write_all(request).await?;
        let head_end = loop {
            if let Some(i) = find(&self.buffered, b"\r\n\r\n") {
                break i;
            }
            self.read_more().await?;
        };
        let head = String::from_utf8_lossy(&self.buffered[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, Vec<u8>)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().as_bytes().to_vec()))
            .collect();
        let find_header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let length: usize = find_header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let close = find_header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body_start = head_end + 4;
        while self.buffered.len() < body_start + length {
            self.read_more().await?;
        }
        let body = self.buffered[body_start..body_start + length].to_vec();
        self.buffered.drain(..body_start + length);
        if close {
            self.stream = None;
        }
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    async fn read_more(&mut self) -> Result<()> {
        let stream = self.stream.as_mut().context("not connected")?;
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            self.stream = None;
            bail!("connection closed mid-response");
        }
        self.buffered.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
