//! The HTTP endpoint: GET /metrics (Prometheus text format) and GET / (a short index).

use std::net::SocketAddr;

use axum::{Router, http::header, response::IntoResponse, routing::get};
use thiserror::Error;
use tokio::net::TcpListener;

use crate::metrics::Registry;

/// Default listen address: loopback only; 9447 is unassigned in Prometheus' port list.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9447";

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: address already in use (pick another with --listen ADDR:PORT)")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => ServeError::InUse { addr },
        _ => ServeError::Bind { addr, source },
    })
}

pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let r = registry.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], r.render()) }
            }),
        )
        .route("/", get(|| async { "iopf-agent: metrics at /metrics\n".into_response() }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(ServeError::Serve)
}
