//! The HTTP endpoint: GET /metrics (Prometheus text format), GET /healthz, GET / (a short
//! index); other paths 404, other methods 405. Serving starts only once the programs are
//! attached (or, for `simulate`, the simulation has run), so any answer means ready.

use std::{net::SocketAddr, sync::Arc, time::Duration};

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

/// How long open connections get to finish once shutdown is asked for. A client that sent
/// half a request, or nothing, never finishes; it must not keep the agent, and with it the
/// attached programs, alive.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

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
        .route("/healthz", get(|| async { "ok: programs attached, serving\n".into_response() }))
        .route("/", get(|| async { "iopf-agent: metrics at /metrics, health at /healthz\n".into_response() }));
    let asked = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let asked = asked.clone();
        async move {
            shutdown.await;
            asked.notify_one();
        }
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    tokio::select! {
        r = server => r.map_err(ServeError::Serve),
        () = async {
            asked.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            // Dropping the server stops accepting; the connections still open end with the
            // runtime when the caller returns.
            eprintln!("iopf-agent: connections still open {SHUTDOWN_GRACE:?} after shutdown was asked: closing them");
            Ok(())
        }
    }
}
