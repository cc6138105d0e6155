//! Module fetches that survive a rolling upgrade of the controller.
//!
//! Sidecars fetch the filter module by digest from the controller's Service, which
//! balances over every ready replica. During an upgrade, replicas of two builds run side by
//! side, each embedding its own module, so a fetch can land on a replica that does not have
//! the digest asked for. Such a replica asks its peers (every ready replica, found through
//! a headless Service's DNS name), checks the bytes against the digest, keeps them, and
//! serves them: no sidecar gets a 404 while any ready replica holds the module it pins.
//!
//! Peers are asked under [`PEER_PREFIX`], which serves only modules a replica already holds
//! and never asks further, so two replicas can never ask each other in a loop.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::module::{path_of, FilterModule, ModuleStore};

/// Peers are asked for `/peer/filter/<sha256>.wasm`.
pub const PEER_PREFIX: &str = "/peer";

/// Limits of one peer request: a module is a few hundred KB.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_MODULE_BYTES: usize = 32 << 20;

/// Where the other replicas are: `host:port` names, each resolved on every fetch (a
/// headless Service's name resolves to the addresses of its ready pods).
#[derive(Debug, Clone)]
pub struct Peers {
    names: Vec<String>,
}

/// The result of asking the peers for one digest, also the `result` label of
/// `virtual_env_module_peer_fetches_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    Fetched,
    /// Every peer answered, and none holds it.
    NotFound,
    /// A peer answered with bytes of another digest (not kept, not served).
    Mismatch,
    /// Some peer did not answer (or none was found): it may hold it.
    Unreachable,
}

impl Fetch {
    pub fn label(self) -> &'static str {
        match self {
            Fetch::Fetched => "fetched",
            Fetch::NotFound => "not_found",
            Fetch::Mismatch => "mismatch",
            Fetch::Unreachable => "unreachable",
        }
    }
}

impl Peers {
    /// `names`: comma-separated `host:port`s.
    pub fn new(names: &str) -> Self {
        Self {
            names: names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    pub async fn addresses(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for name in &self.names {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => out.extend(addrs),
                Err(e) => debug!(name, "resolving module peers: {e}"),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Asks each peer in turn for the module with `sha256` and keeps the first whose bytes
    /// have that digest in `store`.
    pub async fn fetch_into(&self, store: &ModuleStore, sha256: &str) -> Fetch {
        let addresses = self.addresses().await;
        let mut outcome = if addresses.is_empty() {
            Fetch::Unreachable
        } else {
            Fetch::NotFound
        };
        for addr in addresses {
            match ask(addr, sha256).await {
                Asked::Held(module) => {
                    info!(%addr, sha256, bytes = module.bytes.len(), "fetched a module from a peer");
                    store.keep(module);
                    return Fetch::Fetched;
                }
                Asked::OtherDigest => {
                    warn!(%addr, sha256, "a peer answered with a module of another digest");
                    outcome = Fetch::Mismatch;
                }
                Asked::NotHeld => {}
                Asked::NoAnswer => {
                    if outcome == Fetch::NotFound {
                        outcome = Fetch::Unreachable;
                    }
                }
            }
        }
        outcome
    }

    /// Waits until some ready replica serves `sha256` through the peers' name (at most
    /// `limit`), so that a leader pins its module in the WasmPlugins only once the Service
    /// can hand it out. Returns whether it did.
    pub async fn wait_until_served(&self, sha256: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            for addr in self.addresses().await {
                if let Asked::Held(_) = ask(addr, sha256).await {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// What one peer answered for a digest.
enum Asked {
    /// The module, its bytes checked against the digest.
    Held(FilterModule),
    /// Bytes of another digest (a bug, a proxy in the way): not to be believed.
    OtherDigest,
    /// Not held (404).
    NotHeld,
    /// No answer (refused, timed out, another status).
    NoAnswer,
}

async fn ask(addr: SocketAddr, sha256: &str) -> Asked {
    let path = format!("{PEER_PREFIX}{}", path_of(sha256));
    match get(addr, &path).await {
        Ok(Some(bytes)) => {
            let module = FilterModule::new(bytes);
            if module.sha256 == sha256 {
                Asked::Held(module)
            } else {
                Asked::OtherDigest
            }
        }
        Ok(None) => Asked::NotHeld,
        Err(e) => {
            debug!(%addr, "asking a peer for a module: {e}");
            Asked::NoAnswer
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum GetError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error("body: {0}")]
    Body(String),
    #[error("no answer within {PEER_TIMEOUT:?}")]
    Timeout,
}

/// One GET over plain HTTP/1.1: `Ok(None)` for any status but 200.
async fn get(addr: SocketAddr, path: &str) -> Result<Option<Bytes>, GetError> {
    let request = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(GetError::Status(status)),
        }
        let body = Limited::new(response.into_body(), MAX_MODULE_BYTES)
            .collect()
            .await
            .map_err(|e| GetError::Body(e.to_string()))?;
        Ok(Some(body.to_bytes()))
    };
    tokio::time::timeout(PEER_TIMEOUT, request)
        .await
        .map_err(|_| GetError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_comma_separated() {
        let peers = Peers::new(" a.svc:8080, ,b:1 ");
        assert_eq!(peers.names, ["a.svc:8080", "b:1"]);
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_no_peer() {
        let peers = Peers::new("no-such-host.invalid:8080,127.0.0.1:9");
        assert_eq!(peers.addresses().await, ["127.0.0.1:9".parse().unwrap()]);
        let store = ModuleStore::new(None);
        // Nobody listens at 127.0.0.1:9: no answer, so it may hold the module.
        assert_eq!(
            peers.fetch_into(&store, &"a".repeat(64)).await,
            Fetch::Unreachable
        );
        let nobody = Peers::new("no-such-host.invalid:8080");
        assert_eq!(
            nobody.fetch_into(&store, &"a".repeat(64)).await,
            Fetch::Unreachable
        );
    }
}
