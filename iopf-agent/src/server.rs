//! The HTTP endpoint: GET /metrics (Prometheus text format), GET /healthz, GET / (a short
//! index); other paths 404, other methods 405. Serving starts only once the programs are
//! attached (or, for `simulate`, the simulation has run), so any answer means ready.
//!
//! No client can stall it: headers must arrive within `HEADER_READ_TIMEOUT` and fit in
//! `MAX_HEADER_BYTES`, a connection lives at most `CONNECTION_LIFETIME`, at most
//! `max_connections()` are open at once (more are closed at accept), and /metrics is rendered
//! on the blocking pool, off the task that accepts and reads.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::{net::TcpListener, sync::Semaphore};

use crate::metrics::{Family, Kind, Registry, Source, counter, family, gauge};

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
/// A request's headers must be in by then (slowloris, half-sent requests, idle sockets).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection, busy or idle (Prometheus reconnects as needed).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Request line and headers larger than this are answered 431 (hyper's smallest buffer).
pub const MAX_HEADER_BYTES: usize = 8192;
/// Most connections open at once, and the file descriptors kept free for everything else
/// (maps, rings, policy files, a reload).
const CONNECTIONS_MAX: u64 = 4096;
const FD_RESERVE: u64 = 64;

/// Connection cap: `CONNECTIONS_MAX`, or what the descriptor limit leaves after the reserve.
pub fn max_connections() -> usize {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we own.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 { r.rlim_cur } else { 1024 };
    soft.saturating_sub(FD_RESERVE).clamp(1, CONNECTIONS_MAX) as usize
}

/// Raises the soft descriptor limit towards the hard one (up to what the cap needs), so a
/// default 1024 does not cap a fleet's scrapers and idle clients; lowered limits are kept.
pub fn raise_fd_limit() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a struct we own; a failure leaves the limit as it was.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            let want = (CONNECTIONS_MAX + FD_RESERVE).min(r.rlim_max);
            if want > r.rlim_cur {
                r.rlim_cur = want;
                libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            }
        }
    }
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => ServeError::InUse { addr },
        _ => ServeError::Bind { addr, source },
    })
}

/// Connections refused at the cap, and accept errors (descriptors exhausted).
#[derive(Default)]
struct Counters {
    refused: AtomicU64,
    accept_errors: AtomicU64,
}

struct EndpointSource {
    counters: Arc<Counters>,
    open: Arc<Semaphore>,
    cap: usize,
}

impl Source for EndpointSource {
    fn collect(&self, out: &mut Vec<Family>) {
        out.push(family(
            "iopf_http_connections",
            "HTTP connections open now, and the cap.",
            Kind::Gauge,
            vec![
                gauge(&[("state", "open")], (self.cap - self.open.available_permits()) as f64),
                gauge(&[("state", "max")], self.cap as f64),
            ],
        ));
        out.push(family(
            "iopf_http_connections_refused_total",
            "HTTP connections closed at accept, by reason: at the cap, or an accept error (e.g. no descriptors).",
            Kind::Counter,
            vec![
                counter(&[("reason", "cap")], self.counters.refused.load(Ordering::Relaxed)),
                counter(&[("reason", "accept_error")], self.counters.accept_errors.load(Ordering::Relaxed)),
            ],
        ));
    }
}

fn router(registry: Registry) -> Router {
    let reg = registry.clone();
    Router::new()
        .route(
            "/metrics/families",
            get(move || {
                let r = reg.clone();
                async move {
                    let body = serde_json::to_string_pretty(&r.describe()).unwrap_or_default();
                    ([(header::CONTENT_TYPE, "application/json")], body + "\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let r = registry.clone();
                async move {
                    // Rendering a large registry takes milliseconds: not on the accepting task.
                    let body = tokio::task::spawn_blocking(move || r.render()).await.unwrap_or_default();
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok: programs attached, serving\n".into_response() }))
        .route("/", get(|| async { "iopf-agent: metrics at /metrics, health at /healthz\n".into_response() }))
}

pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    raise_fd_limit();
    let cap = max_connections();
    let open = Arc::new(Semaphore::new(cap));
    let counters = Arc::new(Counters::default());
    registry.add(EndpointSource { counters: counters.clone(), open: open.clone(), cap });
    let app = router(registry);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: say it once in a while, back off, keep serving.
                if counters.accept_errors.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                    eprintln!("iopf-agent: accepting a connection failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), svc);
            // An error is the client's (bad request, reset, timeout): nothing to report.
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
    // Give open connections the grace period, then leave: their tasks end with the runtime.
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, open.acquire_many(all)).await.is_err() {
        eprintln!("iopf-agent: connections still open {SHUTDOWN_GRACE:?} after shutdown was asked: closing them");
    }
    Ok(())
}
