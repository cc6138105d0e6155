//! The controller's HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, and the filter module
//! under `/filter/<sha256>.wasm` (and `/filter.wasm`), which the WasmPlugins point at. A
//! digest this replica does not hold is asked of its peers (see [`crate::peers`]).
//!
//! Two listeners: the module server, which every pod of the mesh can reach, and the probe
//! listener (`/healthz`, `/readyz`, `/metrics` only) with capacity of its own, so that no
//! load on the first can fail the kubelet's probes (a probe failing restarts the replica,
//! and new sidecars then start without the filter). On both, each client address holds at
//! most a few connections, and a connection on which nothing moves is closed (see
//! [`crate::connection`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::connection::{Busy, SourceLimit, Stall};
use crate::metrics::Metrics;
use crate::module::{digest_in, FilterModule, ModuleStore};
use crate::peers::{Fetch, Peers, PEER_PREFIX};

/// How long a digest that no peer held is answered 404 without asking again: a client
/// asking for made-up digests costs one peer round per digest and this long, not one per
/// request.
const MISSING_FOR: Duration = Duration::from_secs(30);
/// How long a digest some peer did not answer for is answered 503 without asking again:
/// short, since the peer may hold it, but long enough that asking again and again for
/// one digest costs one slow peer round per this long. (Each new made-up digest still
/// costs a round of up to [`PEER_FETCH`]; other requests then wait [`FETCH_WAIT`] and get
/// 503, and a sidecar retries: a limit to see in the threat model.)
const UNANSWERED_FOR: Duration = Duration::from_secs(5);
/// Digests remembered as missing at once (the oldest go first).
const MISSING_KEPT: usize = 256;
/// How long a request waits for the one peer fetch under way before it is told to retry.
const FETCH_WAIT: Duration = Duration::from_secs(10);
/// How long one peer fetch may take, whatever the number of peers.
const PEER_FETCH: Duration = Duration::from_secs(20);

pub struct State {
    pub metrics: Arc<Metrics>,
    pub modules: ModuleStore,
    /// The other replicas, asked for a module this one does not hold.
    pub peers: Option<Peers>,
    /// One peer fetch at a time: a burst of sidecars asking for a new digest makes one.
    pub fetching: tokio::sync::Mutex<()>,
    /// Digests not found at the peers: the outcome and until when it is answered without
    /// asking again (see [`MISSING_FOR`], [`UNANSWERED_FOR`]).
    missing: std::sync::Mutex<std::collections::VecDeque<(String, tokio::time::Instant, Fetch)>>,
    /// Set once the VirtualEnvironment CRD is served and the controller can work.
    pub ready: AtomicBool,
    /// Cleared when the controller task or the leadership ends: the process is exiting.
    pub alive: AtomicBool,
}

impl State {
    pub fn new(metrics: Arc<Metrics>, module: Option<FilterModule>, peers: Option<Peers>) -> Self {
        Self {
            metrics,
            modules: ModuleStore::new(module),
            peers,
            fetching: tokio::sync::Mutex::new(()),
            missing: std::sync::Mutex::default(),
            ready: AtomicBool::new(false),
            alive: AtomicBool::new(true),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

impl State {
    /// The remembered outcome of a recent fetch of `digest` that found nothing.
    fn known_missing(&self, digest: &str) -> Option<Fetch> {
        let now = tokio::time::Instant::now();
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        missing.retain(|(_, until, _)| now < *until);
        missing
            .iter()
            .find(|(d, _, _)| d == digest)
            .map(|(_, _, outcome)| *outcome)
    }

    fn remember_missing(&self, digest: &str, outcome: Fetch) {
        let kept_for = match outcome {
            Fetch::Unreachable => UNANSWERED_FOR,
            _ => MISSING_FOR,
        };
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        if missing.len() >= MISSING_KEPT {
            missing.pop_front();
        }
        let until = tokio::time::Instant::now() + kept_for;
        missing.push_back((digest.to_owned(), until, outcome));
    }
}

/// What a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Modules, and (for manifests of earlier releases) the probes and metrics.
    Modules,
    /// Only `/healthz`, `/readyz` and `/metrics`.
    Probes,
}

impl Endpoints {
    fn name(self) -> &'static str {
        match self {
            Endpoints::Modules => "modules",
            Endpoints::Probes => "probes",
        }
    }
}

/// Answers one request on a listener of `endpoints`.
pub async fn respond_on(endpoints: Endpoints, state: &State, path: &str) -> Response<Full<Bytes>> {
    match (endpoints, path) {
        (Endpoints::Probes, "/healthz" | "/readyz" | "/metrics") | (Endpoints::Modules, _) => {
            respond(state, path).await
        }
        (Endpoints::Probes, _) => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Answers one request; tested directly, without a connection.
pub async fn respond(state: &State, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/healthz" if state.alive.load(Ordering::Relaxed) => text(StatusCode::OK, "ok\n"),
        "/healthz" => text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => Response::builder()
            .header("content-type", crate::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(state.metrics.render())))
            .unwrap_or_default(),
        "/filter.wasm" => match state.modules.own() {
            Some(own) => wasm(own.bytes.clone()),
            None => text(StatusCode::NOT_FOUND, NO_MODULE),
        },
        path => match path.strip_prefix(PEER_PREFIX) {
            // A peer asking: only what this replica holds, never asked further.
            Some(path) => match digest_in(path).and_then(|d| state.modules.get(d)) {
                Some(bytes) => wasm(bytes),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            None => match digest_in(path) {
                Some(digest) => module(state, digest).await,
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
        },
    }
}

const NO_MODULE: &str = "this controller was built without the filter module\n";

/// The module with `digest`: this replica's own, one fetched before, or one fetched now
/// from a peer.
async fn module(state: &State, digest: &str) -> Response<Full<Bytes>> {
    if let Some(bytes) = state.modules.get(digest) {
        return wasm(bytes);
    }
    let Some(peers) = &state.peers else {
        return text(StatusCode::NOT_FOUND, "no module with that digest here\n");
    };
    if let Some(outcome) = state.known_missing(digest) {
        return not_fetched(outcome);
    }
    let Ok(_one_at_a_time) = tokio::time::timeout(FETCH_WAIT, state.fetching.lock()).await else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy fetching another module from a peer; retry\n",
        );
    };
    // Fetched meanwhile by the request this one waited for?
    if let Some(bytes) = state.modules.get(digest) {
        return wasm(bytes);
    }
    if let Some(outcome) = state.known_missing(digest) {
        return not_fetched(outcome);
    }
    let outcome = tokio::time::timeout(PEER_FETCH, peers.fetch_into(&state.modules, digest))
        .await
        .unwrap_or(Fetch::Unreachable);
    state.metrics.peer_fetch(outcome.label());
    match state.modules.get(digest) {
        Some(bytes) => wasm(bytes),
        None => {
            // Every peer said it holds none (long), or one did not answer and may (short).
            if matches!(outcome, Fetch::NotFound | Fetch::Unreachable) {
                state.remember_missing(digest, outcome);
            }
            not_fetched(outcome)
        }
    }
}

fn not_fetched(outcome: Fetch) -> Response<Full<Bytes>> {
    match outcome {
        Fetch::Unreachable => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "a peer that may hold this module did not answer; retry\n",
        ),
        _ => text(StatusCode::NOT_FOUND, NOT_AT_PEERS),
    }
}

const NOT_AT_PEERS: &str = "no module with that digest here or at a peer\n";

fn wasm(bytes: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/wasm")
        .header("cache-control", "public, max-age=31536000, immutable")
        .body(Full::new(bytes))
        .unwrap_or_default()
}

/// Bounds on a listener's connections: sidecars fetch the module through it, so a burst
/// of them, a client that never finishes its request, or one pod opening connections
/// without end must not exhaust the process nor crowd out the others.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one client address may hold; more are closed at once.
    pub per_source: usize,
    /// How long a client may take to send a request's headers.
    pub header_read: Duration,
    /// How long nothing may move on a connection (no byte read or written) before it is
    /// closed: idle keep-alive, a client that stopped reading.
    pub idle: Duration,
    /// How long any one connection may last (the module is a few hundred KB: the slowest
    /// client served still gets ~7 KB/s).
    pub connection: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            per_source: 16,
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(10),
            connection: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// The probe listener's: a few short requests at a time (the kubelet, Prometheus).
    pub fn probes() -> Self {
        Self {
            max_connections: 32,
            per_source: 8,
            header_read: Duration::from_secs(5),
            idle: Duration::from_secs(5),
            connection: Duration::from_secs(10),
        }
    }
}

/// Serves the modules (and the probes, for older manifests) until the process ends.
pub async fn serve(addr: SocketAddr, state: Arc<State>) -> std::io::Result<()> {
    serve_on(TcpListener::bind(addr).await?, state, Limits::default()).await
}

/// Serves the probes and metrics alone, with their own capacity, until the process ends.
pub async fn serve_probes(addr: SocketAddr, state: Arc<State>) -> std::io::Result<()> {
    serve_endpoints(
        TcpListener::bind(addr).await?,
        state,
        Limits::probes(),
        Endpoints::Probes,
    )
    .await
}

/// Serves the modules on `listener` within `limits`.
pub async fn serve_on(
    listener: TcpListener,
    state: Arc<State>,
    limits: Limits,
) -> std::io::Result<()> {
    serve_endpoints(listener, state, limits, Endpoints::Modules).await
}

/// Serves `endpoints` on `listener` within `limits`. A failed accept (out of file
/// descriptors, a connection reset before it was accepted) is logged and retried, never
/// the end.
pub async fn serve_endpoints(
    listener: TcpListener,
    state: Arc<State>,
    limits: Limits,
    endpoints: Endpoints,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let sources = SourceLimit::new(limits.per_source);
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return Ok(()); // the semaphore is never closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = sources.admit(peer.ip()) else {
            // Closed at once: the client holds its share already.
            state
                .metrics
                .connection_refused(endpoints.name(), "per_source");
            debug!("{peer}: over {} connections, closed", limits.per_source);
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _held = (permit, slot);
            let busy = Busy::default();
            let answering = busy.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let state = Arc::clone(&state);
                // Held while this request is answered: not the client's stall.
                let answering = answering.answering();
                async move {
                    let response = respond_on(endpoints, &state, req.uri().path()).await;
                    drop(answering);
                    Ok::<_, Infallible>(response)
                }
            });
            let io = TokioIo::new(Stall::new(stream, limits.idle, busy));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(io, service);
            match tokio::time::timeout(limits.connection, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("http connection: {e}"),
                Err(_) => debug!("http connection closed after {:?}", limits.connection),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// A real server on loopback with tight limits.
    async fn server(limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_on(listener, Arc::new(state(None)), limits));
        addr
    }

    async fn get_healthz(stream: &mut tokio::net::TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = server(Limits {
            header_read: Duration::from_millis(200),
            ..Limits::default()
        })
        .await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection was not closed");
    }

    #[tokio::test]
    async fn connections_over_the_limit_wait_for_a_free_one() {
        use tokio::io::AsyncWriteExt;
        let addr = server(Limits {
            max_connections: 1,
            header_read: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        // The one connection allowed, held by a client that sends half a request...
        let mut holder = tokio::net::TcpStream::connect(addr).await.unwrap();
        holder.write_all(b"GET /").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...so the next is served only once the first is cut off, and then it is.
        let started = std::time::Instant::now();
        let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
        let reply = get_healthz(&mut next).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    /// A client connection from `source` (another loopback address stands for another pod).
    async fn connect_from(source: [u8; 4], addr: SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// One pod opens far more connections than its share and leaves them idle or
    /// half-sent; the probes (on their own listener) and another pod's module fetch are
    /// still answered at once, and the flooder's extra connections are closed at once.
    #[tokio::test]
    async fn a_flood_from_one_client_leaves_probes_and_other_clients_answered() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ours = module(b"\0asm ours");
        let state = Arc::new(state(Some(ours.clone())));
        state.ready.store(true, Ordering::Relaxed);
        let modules = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let modules_addr = modules.local_addr().unwrap();
        let limits = Limits {
            max_connections: 16,
            per_source: 4,
            ..Limits::default()
        };
        tokio::spawn(serve_on(modules, Arc::clone(&state), limits));
        let probes = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let probes_addr = probes.local_addr().unwrap();
        tokio::spawn(serve_endpoints(
            probes,
            Arc::clone(&state),
            Limits::probes(),
            Endpoints::Probes,
        ));

        // The flood: 64 connections from 127.0.0.1, half of them with half a request.
        let mut flood = Vec::new();
        for i in 0..64 {
            let mut stream = connect_from([127, 0, 0, 1], modules_addr).await;
            if i % 2 == 0 {
                let _ = stream.write_all(b"GET /filter/").await;
            }
            flood.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // All but its share were closed at once.
        let mut open = 0;
        for stream in &mut flood {
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                _ => open += 1,
            }
        }
        assert_eq!(open, 4, "the flooder keeps only its share");

        // Another pod's fetch and the kubelet's probes are answered promptly.
        let started = std::time::Instant::now();
        let mut other = connect_from([127, 0, 0, 2], modules_addr).await;
        let request = format!(
            "GET {} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            ours.path()
        );
        other.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        other.read_to_end(&mut reply).await.unwrap();
        assert!(
            reply.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
        assert!(reply.ends_with(&ours.bytes));
        for path in ["/healthz", "/readyz"] {
            let mut probe = connect_from([127, 0, 0, 3], probes_addr).await;
            let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            probe.write_all(request.as_bytes()).await.unwrap();
            let mut reply = String::new();
            probe.read_to_string(&mut reply).await.unwrap();
            assert!(reply.starts_with("HTTP/1.1 200"), "{path}: {reply}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let metrics = state.metrics.render();
        assert!(
            metrics.contains(
                "virtual_env_http_connections_refused_total{listener=\"modules\",reason=\"per_source\"} 60"
            ),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn the_probe_listener_serves_no_module() {
        let s = state(Some(module(b"\0asm ours")));
        assert_eq!(
            respond_on(Endpoints::Probes, &s, "/filter.wasm")
                .await
                .status(),
            404
        );
        assert_eq!(
            respond_on(Endpoints::Probes, &s, "/metrics").await.status(),
            200
        );
        assert_eq!(
            respond_on(Endpoints::Modules, &s, "/filter.wasm")
                .await
                .status(),
            200
        );
    }

    /// A digest no peer holds is asked once, then answered from memory for a while: made-up
    /// digests cannot keep the one peer fetch busy.
    #[tokio::test]
    async fn a_digest_no_peer_holds_is_not_asked_again_at_once() {
        let (peer_listener, peer_name) = listener().await;
        tokio::spawn(serve_on(
            peer_listener,
            Arc::new(state(Some(module(b"\0asm theirs")))),
            Limits::default(),
        ));
        let (addr, state) = replica(module(b"\0asm ours"), &peer_name).await;
        let unknown = crate::module::path_of(&"ef".repeat(32));
        for _ in 0..5 {
            assert_eq!(get(&addr.to_string(), &unknown).await.0, 404);
        }
        let metrics = state.metrics.render();
        assert!(
            metrics.contains("virtual_env_module_peer_fetches_total{result=\"not_found\"} 1"),
            "{metrics}"
        );
    }

    fn state(module: Option<FilterModule>) -> State {
        State::new(Arc::new(Metrics::default()), module, None)
    }

    async fn body(r: Response<Full<Bytes>>) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let s = state(None);
        assert_eq!(respond(&s, "/healthz").await.status(), 200);
        assert_eq!(respond(&s, "/readyz").await.status(), 503);
        s.ready.store(true, Ordering::Relaxed);
        assert_eq!(respond(&s, "/readyz").await.status(), 200);
        s.alive.store(false, Ordering::Relaxed);
        assert_eq!(respond(&s, "/healthz").await.status(), 503);
        let metrics = body(respond(&s, "/metrics").await).await;
        assert!(String::from_utf8_lossy(&metrics).contains("virtual_env_reconciles_total 0"));
        assert_eq!(respond(&s, "/nope").await.status(), 404);
    }

    fn module(bytes: &'static [u8]) -> FilterModule {
        FilterModule::new(Bytes::from_static(bytes))
    }

    #[tokio::test]
    async fn serves_the_module_only_under_its_own_digest() {
        let module = module(b"\0asm\x01\0\0\0");
        let s = state(Some(module.clone()));
        let r = respond(&s, &module.path()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/wasm");
        assert_eq!(body(r).await, module.bytes);
        assert_eq!(respond(&s, "/filter.wasm").await.status(), 200);
        let other = crate::module::path_of(&"cd".repeat(32));
        assert_eq!(respond(&s, &other).await.status(), 404);
        assert_eq!(respond(&state(None), "/filter.wasm").await.status(), 404);
    }

    /// A replica on loopback serving `module`, asking `peers` for other digests.
    async fn replica(module: FilterModule, peers: &str) -> (SocketAddr, Arc<State>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = (!peers.is_empty()).then(|| Peers::new(peers));
        let state = Arc::new(State::new(
            Arc::new(Metrics::default()),
            Some(module),
            peers,
        ));
        tokio::spawn(serve_on(listener, Arc::clone(&state), Limits::default()));
        (addr, state)
    }

    /// A replica's listener, bound before the replica exists, so that two replicas can
    /// name each other as peers.
    async fn listener() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let name = listener.local_addr().unwrap().to_string();
        (listener, name)
    }

    async fn get(addr: &str, path: &str) -> (u16, Bytes) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
        (status, Bytes::copy_from_slice(&out[end..]))
    }

    /// Two replicas of two builds behind one Service, as during a rolling upgrade: a
    /// sidecar's fetch of either build's digest succeeds on either replica.
    #[tokio::test]
    async fn during_a_rolling_upgrade_either_replica_serves_either_build() {
        let old = module(b"\0asm old build");
        let new = module(b"\0asm new build");
        let ((old_listener, old_name), (new_listener, new_name)) =
            (listener().await, listener().await);
        let peers = format!("{old_name},{new_name}");
        for (listener, module) in [(old_listener, &old), (new_listener, &new)] {
            let state = Arc::new(State::new(
                Arc::new(Metrics::default()),
                Some(module.clone()),
                Some(Peers::new(&peers)),
            ));
            tokio::spawn(serve_on(listener, state, Limits::default()));
        }
        for replica in [&old_name, &new_name] {
            for module in [&old, &new] {
                let (status, bytes) = get(replica, &module.path()).await;
                assert_eq!(status, 200, "{} from {replica}", module.sha256);
                assert_eq!(bytes, module.bytes);
            }
        }
    }

    #[tokio::test]
    async fn a_module_fetched_from_a_peer_is_kept_after_the_peer_is_gone() {
        let theirs = module(b"\0asm theirs");
        let (peer_listener, peer_name) = listener().await;
        let peer = tokio::spawn(serve_on(
            peer_listener,
            Arc::new(state(Some(theirs.clone()))),
            Limits::default(),
        ));
        let (addr, state) = replica(module(b"\0asm ours"), &peer_name).await;
        let addr = addr.to_string();
        assert_eq!(
            get(&addr, &theirs.path()).await,
            (200, theirs.bytes.clone())
        );
        peer.abort();
        let _ = peer.await;
        assert_eq!(
            get(&addr, &theirs.path()).await,
            (200, theirs.bytes.clone())
        );
        // Unknown here, and the peer does not answer: it may hold it, so "retry", and it
        // is remembered only briefly (a second ask within that is answered without a
        // peer round, so made-up digests cannot keep the one fetch busy).
        let unknown = crate::module::path_of(&"ef".repeat(32));
        assert_eq!(get(&addr, &unknown).await.0, 503);
        assert_eq!(
            state.known_missing(&"ef".repeat(32)),
            Some(Fetch::Unreachable)
        );
        assert_eq!(get(&addr, &unknown).await.0, 503);
        let metrics = state.metrics.render();
        assert!(
            metrics.contains("virtual_env_module_peer_fetches_total{result=\"fetched\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("virtual_env_module_peer_fetches_total{result=\"unreachable\"} 1"),
            "{metrics}"
        );
    }

    /// A peer asked for a digest serves only what it holds: it never asks its own peers,
    /// so two replicas missing a module cannot ask each other in a loop.
    #[tokio::test]
    async fn a_peer_request_is_never_passed_on() {
        let theirs = module(b"\0asm theirs");
        let (far_listener, far_name) = listener().await;
        tokio::spawn(serve_on(
            far_listener,
            Arc::new(state(Some(theirs.clone()))),
            Limits::default(),
        ));
        let (addr, _) = replica(module(b"\0asm ours"), &far_name).await;
        let peer_path = format!("{PEER_PREFIX}{}", theirs.path());
        assert_eq!(get(&addr.to_string(), &peer_path).await.0, 404);
        // Through the sidecars' path it is fetched, and then also held for peers.
        assert_eq!(get(&addr.to_string(), &theirs.path()).await.0, 200);
        assert_eq!(get(&addr.to_string(), &peer_path).await.0, 200);
    }

    /// A peer that answers with other bytes (a bug, a proxy in the way) is not believed.
    #[tokio::test]
    async fn bytes_that_do_not_have_the_digest_are_neither_served_nor_kept() {
        let wanted = module(b"\0asm wanted");
        let liar = Arc::new(State::new(
            Arc::new(Metrics::default()),
            Some(module(b"\0asm something else")),
            None,
        ));
        // The liar holds other bytes under the wanted digest.
        liar.modules.keep(FilterModule {
            bytes: Bytes::from_static(b"\0asm something else"),
            sha256: wanted.sha256.clone(),
        });
        let (liar_listener, liar_name) = listener().await;
        tokio::spawn(serve_on(liar_listener, liar, Limits::default()));
        let (addr, state) = replica(module(b"\0asm ours"), &liar_name).await;
        assert_eq!(get(&addr.to_string(), &wanted.path()).await.0, 404);
        assert_eq!(state.modules.get(&wanted.sha256), None);
        assert!(state
            .metrics
            .render()
            .contains("virtual_env_module_peer_fetches_total{result=\"mismatch\"} 1"));
    }

    #[tokio::test]
    async fn the_leader_waits_until_its_module_is_served() {
        let ours = module(b"\0asm ours");
        let (listener, name) = listener().await;
        let peers = Peers::new(&name);
        // Nothing listens yet: not served within the limit.
        let waited = peers
            .wait_until_served(&ours.sha256, Duration::from_millis(10))
            .await;
        assert!(!waited);
        tokio::spawn(serve_on(
            listener,
            Arc::new(state(Some(ours.clone()))),
            Limits::default(),
        ));
        assert!(
            peers
                .wait_until_served(&ours.sha256, Duration::from_secs(5))
                .await
        );
    }
}
