//! The operations HTTP server: `/metrics` (Prometheus text), `/healthz` (the process is alive and
//! its engine is not stuck) and `/readyz` (ready for work: 200, else 503; the body says why, as JSON).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use super::health::Health;

/// Prometheus scrape path.
pub const METRICS_PATH: &str = "/metrics";
/// Liveness probe path.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness probe path.
pub const READYZ_PATH: &str = "/readyz";

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Longest wait for a request's headers (a client that sends nothing is dropped).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves in the background; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "http server listening (/metrics /healthz /readyz)");
    // Histograms keep their samples until upkeep drains them into buckets.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving once it passes.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let r = respond(&req, &metrics, &health);
                    async move { Ok::<_, Infallible>(r) }
                });
                let served = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = served.await {
                    tracing::debug!(error = %e, "http connection");
                }
                drop(slot);
            });
        }
    });
    Ok(bound)
}

fn respond(
    req: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        METRICS_PATH => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        HEALTHZ_PATH => match health.liveness() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n"),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("stuck: {why}\n"),
            ),
        },
        READYZ_PATH => {
            let r = health.readiness();
            let status = if r.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string(&r).expect("readiness serialises") + "\n";
            reply(status, "application/json", body)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[tokio::test(start_paused = true)]
    async fn silent_clients_are_dropped_and_cannot_starve_the_probes() {
        let handle = crate::telemetry::metrics::install().unwrap();
        let health = Arc::new(Health::default());
        let addr = serve("127.0.0.1:0".parse().unwrap(), handle, health)
            .await
            .unwrap();
        // Every connection slot taken by a client that never sends a byte.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut probe = TcpStream::connect(addr).await.unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(HEADER_READ_TIMEOUT * 3, probe.read_to_string(&mut answer))
            .await
            .expect("the probe is answered once the silent clients time out")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // The silent ones were closed by the server.
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(1), idle[0].read(&mut buf))
            .await
            .expect("closed, not left open")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
