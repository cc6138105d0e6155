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
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::warn;

use crate::metrics::Metrics;
use crate::module::FilterModule;

pub struct State {
    pub metrics: Arc<Metrics>,
    pub module: Option<FilterModule>,
    /// Set once the VirtualEnvironment CRD is served and the controller can work.
    pub ready: AtomicBool,
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
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/metrics" => text(StatusCode::OK, state.metrics.render()),
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

/// Serves until the process ends.
pub async fn serve(addr: SocketAddr, state: Arc<State>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&state, req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                warn!("http connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn state(module: Option<FilterModule>) -> State {
        State {
            metrics: Arc::new(Metrics::default()),
            module,
            ready: AtomicBool::new(false),
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
