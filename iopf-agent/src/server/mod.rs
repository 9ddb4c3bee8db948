//! The HTTP endpoint: GET /metrics (Prometheus text format), GET /healthz, GET / (a short
//! index); other paths 404, other methods 405. Serving starts only once the programs are
//! attached (or, for `simulate`, the simulation has run), so any answer means ready.
//!
//! No client can stall it: headers must arrive within `HEADER_READ_TIMEOUT` and fit in
//! `MAX_HEADER_BYTES`, a connection lives at most `CONNECTION_LIFETIME`, at most
//! `max_connections()` are open at once (more are closed at accept), and /metrics is rendered
//! on the blocking pool, off the task that accepts and reads.
//!
//! `--web-config` adds TLS (`tls`, the handshake under the same deadline and cap) and basic
//! auth on every path (`auth`), from a file in the exporters' format (`webconfig`).

pub mod auth;
mod chunks;
pub mod tls;
pub mod webconfig;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};

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
    /// A web config that cannot be used as written (a usage error: nothing was started).
    #[error(transparent)]
    WebConfig(#[from] webconfig::WebConfigError),
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

/// A bound endpoint and what its web config asked for.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<tls::Tls>>,
    auth: Option<Arc<auth::Auth>>,
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The URL and protection, for the start line: `http://ADDR/metrics` when plain.
    pub fn describe(&self) -> std::io::Result<String> {
        let addr = self.local_addr()?;
        let users = match self.auth.as_ref().map(|a| a.users()) {
            None => "off".to_owned(),
            Some(1) => "1 user".to_owned(),
            Some(n) => format!("{n} users"),
        };
        Ok(match (&self.tls, &self.auth) {
            (None, None) => format!("http://{addr}/metrics"),
            (None, Some(_)) => {
                format!(
                    "http://{addr}/metrics (no TLS: passwords cross the network in clear text; basic auth: {users})"
                )
            }
            (Some(t), _) => {
                let certs = match t.client_auth {
                    webconfig::ClientAuth::NoClientCert => "no client certificates",
                    webconfig::ClientAuth::VerifyClientCertIfGiven => "client certificates optional",
                    webconfig::ClientAuth::RequireAndVerifyClientCert => "client certificates required",
                };
                format!("https://{addr}/metrics (TLS, {certs}; basic auth: {users})")
            }
        })
    }
}

/// Reads and checks the web config, if any (certificates, key, CA and hashes included),
/// then binds: a bad config or a busy port fails before anything is loaded.
pub async fn bind(addr: SocketAddr, web_config: Option<&Path>) -> Result<Listener, ServeError> {
    let (tls, auth) = match web_config {
        None => (None, None),
        Some(path) => {
            let cfg = webconfig::read(path)?;
            let shown = path.display().to_string();
            let tls = cfg.tls.as_ref().map(|t| tls::Tls::load(&shown, t)).transpose()?;
            (tls.map(Arc::new), auth::Auth::new(&cfg.users))
        }
    };
    let tcp = TcpListener::bind(addr).await.map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => ServeError::InUse { addr },
        _ => ServeError::Bind { addr, source },
    })?;
    Ok(Listener { tcp, tls, auth })
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
    tls: Arc<tls::TlsCounters>,
    auth: Arc<auth::AuthCounters>,
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
        out.push(family(
            "iopf_http_tls_handshake_failures_total",
            "TLS handshakes that did not complete, by reason: timeout (not done within the header-read timeout), plain_http (HTTP sent to the TLS port, answered 400), client_cert (none given where required, or not signed by the client CA), peer_alert (the client gave up, often distrusting the certificate), closed, protocol. Zero without TLS.",
            Kind::Counter,
            self.tls.failures().map(|(reason, n)| counter(&[("reason", reason)], n)).collect(),
        ));
        let (ok, failed) = self.tls.reloads();
        out.push(family(
            "iopf_http_tls_certificate_reloads_total",
            "Times the TLS certificate and key were read again after their files changed, by result (error: the previous pair stays in use).",
            Kind::Counter,
            vec![counter(&[("result", "ok")], ok), counter(&[("result", "error")], failed)],
        ));
        out.push(family(
            "iopf_http_auth_failures_total",
            "Requests refused by basic auth, by reason: missing, malformed, unknown_user, wrong_password (401), busy (503: no bcrypt slot in time). Zero without basic auth.",
            Kind::Counter,
            self.auth.failures().map(|(reason, n)| counter(&[("reason", reason)], n)).collect(),
        ));
        let (bcrypt, cached) = self.auth.checks();
        out.push(family(
            "iopf_http_auth_checks_total",
            "Basic-auth password checks, by how: bcrypt (a verification on the blocking pool) or cache (the user's last good password).",
            Kind::Counter,
            vec![counter(&[("by", "bcrypt")], bcrypt), counter(&[("by", "cache")], cached)],
        ));
    }
}

fn router(registry: Registry, auth: Option<Arc<auth::Auth>>) -> Router {
    let reg = registry.clone();
    let app = Router::new()
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
                    // Rendering a large registry takes milliseconds: not on the accepting task,
                    // and sent as it is rendered.
                    let (body, mut send) = chunks::channel();
                    tokio::task::spawn_blocking(move || r.render_chunks(&mut |c| send.send(c)));
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], axum::body::Body::new(body))
                }
            }),
        )
        .route("/healthz", get(|| async { "ok: programs attached, serving\n".into_response() }))
        .route("/", get(|| async { "iopf-agent: metrics at /metrics, health at /healthz\n".into_response() }));
    // Every path, /healthz and unknown ones included, as the exporters do.
    match auth {
        Some(a) => app.layer(axum::middleware::from_fn_with_state(a, auth::require)),
        None => app,
    }
}

/// One HTTP/1.1 connection under the header-read timeout and buffer cap.
async fn http1<I>(io: I, svc: hyper_util::service::TowerToHyperService<Router>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), svc);
    // An error is the client's (bad request, reset, timeout): nothing to report.
    let _ = conn.await;
}

pub async fn serve(
    listener: Listener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    raise_fd_limit();
    let cap = max_connections();
    let open = Arc::new(Semaphore::new(cap));
    let counters = Arc::new(Counters::default());
    let Listener { tcp: listener, tls, auth } = listener;
    registry.add(EndpointSource {
        counters: counters.clone(),
        open: open.clone(),
        cap,
        tls: tls.as_ref().map(|t| t.counters.clone()).unwrap_or_default(),
        auth: auth.as_ref().map(|a| a.counters.clone()).unwrap_or_default(),
    });
    let app = router(registry, auth);
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
        let tls = tls.clone();
        tokio::spawn(async move {
            let conn = async move {
                match tls {
                    None => http1(stream, svc).await,
                    // The handshake holds the connection's permit and must be done within
                    // the header-read timeout; the request's headers then get their own.
                    Some(t) => {
                        if let Some(s) = t.accept(stream, HEADER_READ_TIMEOUT).await {
                            http1(s, svc).await;
                        }
                    }
                }
            };
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
