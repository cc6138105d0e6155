//! The controller's HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, and the filter module
//! under `/filter/<sha256>.wasm` (and `/filter.wasm`), which the WasmPlugins point at.

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

use crate::metrics::Metrics;
use crate::module::FilterModule;

pub struct State {
    pub metrics: Arc<Metrics>,
    pub module: Option<FilterModule>,
    /// Set once the VirtualEnvironment CRD is served and the controller can work.
    pub ready: AtomicBool,
    /// Cleared when the controller task or the leadership ends: the process is exiting.
    pub alive: AtomicBool,
}

/// Answers one request; pure of I/O, so it is tested directly.
pub fn respond(state: &State, path: &str) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match path {
        "/healthz" if state.alive.load(Ordering::Relaxed) => text(StatusCode::OK, "ok\n".into()),
        "/healthz" => text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into()),
        "/readyz" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/metrics" => Response::builder()
            .header("content-type", crate::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(state.metrics.render())))
            .unwrap_or_default(),
        path if path == "/filter.wasm" || path.starts_with("/filter/") => match &state.module {
            Some(module) if path == "/filter.wasm" || path == module.path() => Response::builder()
                .header("content-type", "application/wasm")
                .header("cache-control", "public, max-age=31536000, immutable")
                .body(Full::new(Bytes::from_static(module.bytes)))
                .unwrap_or_default(),
            // Another digest: another build's module, which this replica must not pass off.
            Some(_) => text(
                StatusCode::NOT_FOUND,
                "no module with that digest here\n".into(),
            ),
            None => text(
                StatusCode::NOT_FOUND,
                "this controller was built without the filter module\n".into(),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Bounds on the server's connections: sidecars fetch the module through it, so a burst of
/// them, or a client that never finishes its request, must not exhaust the process.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_read: Duration,
    /// How long any one connection may last (the module is a few hundred KB).
    pub connection: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read: Duration::from_secs(10),
            connection: Duration::from_secs(60),
        }
    }
}

/// Serves until the process ends.
pub async fn serve(addr: SocketAddr, state: Arc<State>) -> std::io::Result<()> {
    serve_on(TcpListener::bind(addr).await?, state, Limits::default()).await
}

/// Serves on `listener` within `limits`. A failed accept (out of file descriptors, a
/// connection reset before it was accepted) is logged and retried, never the end.
pub async fn serve_on(
    listener: TcpListener,
    state: Arc<State>,
    limits: Limits,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return Ok(()); // the semaphore is never closed
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&state, req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(TokioIo::new(stream), service);
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

    fn state(module: Option<FilterModule>) -> State {
        State {
            metrics: Arc::new(Metrics::default()),
            module,
            ready: AtomicBool::new(false),
            alive: AtomicBool::new(true),
        }
    }

    async fn body(r: Response<Full<Bytes>>) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let s = state(None);
        assert_eq!(respond(&s, "/healthz").status(), 200);
        assert_eq!(respond(&s, "/readyz").status(), 503);
        s.ready.store(true, Ordering::Relaxed);
        assert_eq!(respond(&s, "/readyz").status(), 200);
        s.alive.store(false, Ordering::Relaxed);
        assert_eq!(respond(&s, "/healthz").status(), 503);
        let metrics = body(respond(&s, "/metrics")).await;
        assert!(String::from_utf8_lossy(&metrics).contains("virtual_env_reconciles_total 0"));
        assert_eq!(respond(&s, "/nope").status(), 404);
    }

    #[tokio::test]
    async fn serves_the_module_only_under_its_own_digest() {
        let module = FilterModule {
            bytes: b"\0asm\x01\0\0\0",
            sha256: "ab".repeat(32),
        };
        let s = state(Some(module.clone()));
        let r = respond(&s, &module.path());
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/wasm");
        assert_eq!(&body(r).await[..], module.bytes);
        assert_eq!(respond(&s, "/filter.wasm").status(), 200);
        assert_eq!(
            respond(&s, &format!("/filter/{}.wasm", "cd".repeat(32))).status(),
            404
        );
        assert_eq!(respond(&state(None), "/filter.wasm").status(), 404);
    }
}
