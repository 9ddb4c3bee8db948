//! TLS for the metrics endpoint (rustls on ring): the server configuration from a web
//! config's `tls_server_config`, the certificate re-read when its files change, and the
//! handshake under the endpoint's deadline.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::webconfig::{ClientAuth, TlsSettings, TlsVersion, WebConfigError};

/// PEM files of a certificate chain, a key or CAs are a few KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Why a handshake did not complete (the label of iopf_http_tls_handshake_failures_total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not done within the header-read timeout (idle socket, half a ClientHello).
    Timeout,
    /// The client spoke plain HTTP to the TLS port (answered 400).
    PlainHttp,
    /// No client certificate where one is required, or one the CA did not sign.
    ClientCert,
    /// The client aborted with an alert, most often because it does not trust our certificate.
    PeerAlert,
    /// The client closed or reset the connection mid-handshake.
    Closed,
    /// Anything else that is not TLS as rustls accepts it.
    Protocol,
}

const FAILURES: [(Failure, &str); 6] = [
    (Failure::Timeout, "timeout"),
    (Failure::PlainHttp, "plain_http"),
    (Failure::ClientCert, "client_cert"),
    (Failure::PeerAlert, "peer_alert"),
    (Failure::Closed, "closed"),
    (Failure::Protocol, "protocol"),
];

/// Handshake failures by reason, and certificate reloads by result.
#[derive(Debug, Default)]
pub struct TlsCounters {
    failures: [AtomicU64; FAILURES.len()],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl TlsCounters {
    fn count(&self, f: Failure) {
        if let Some(i) = FAILURES.iter().position(|(x, _)| *x == f) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (reason, count) for every reason, zeros included.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FAILURES.iter().zip(&self.failures).map(|((_, name), n)| (*name, n.load(Ordering::Relaxed)))
    }

    /// (succeeded, failed) certificate reloads.
    pub fn reloads(&self) -> (u64, u64) {
        (self.reloads_ok.load(Ordering::Relaxed), self.reloads_failed.load(Ordering::Relaxed))
    }
}

/// A loaded TLS setup: what `serve` hands each accepted connection to.
pub struct Tls {
    acceptor: TlsAcceptor,
    pub client_auth: ClientAuth,
    pub counters: Arc<TlsCounters>,
}

impl Tls {
    /// Reads the certificate, key and CA the settings name and checks that they fit
    /// together; `config` names the web config in messages.
    pub fn load(config: &str, s: &TlsSettings) -> Result<Self, WebConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let counters = Arc::new(TlsCounters::default());
        let file_err = |field: &'static str, file: &Path, message: String| WebConfigError::File {
            path: config.to_owned(),
            field,
            file: file.display().to_string(),
            message,
        };
        let key =
            certified_key(&provider, &s.cert_file, &s.key_file).map_err(|(field, file, m)| file_err(field, file, m))?;
        let versions: Vec<&'static SupportedProtocolVersion> =
            [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
                .into_iter()
                .filter(|(v, _)| (s.min_version..=s.max_version).contains(v))
                .map(|(_, p)| p)
                .collect();
        let doc_err = |message: String| WebConfigError::Document { path: config.to_owned(), message };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| doc_err(format!("TLS versions unusable: {e}")))?;
        let builder = match (&s.client_ca_file, s.client_auth) {
            (Some(ca), ClientAuth::RequireAndVerifyClientCert | ClientAuth::VerifyClientCertIfGiven) => {
                let roots = client_roots(ca).map_err(|m| file_err("client_ca_file", ca, m))?;
                let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if s.client_auth == ClientAuth::VerifyClientCertIfGiven {
                    v = v.allow_unauthenticated();
                }
                let v =
                    v.build().map_err(|e| file_err("client_ca_file", ca, format!("unusable as a client CA: {e}")))?;
                builder.with_client_cert_verifier(v)
            }
            _ => builder.with_no_client_auth(),
        };
        let resolver = Reloading {
            cert_file: s.cert_file.clone(),
            key_file: s.key_file.clone(),
            provider,
            counters: counters.clone(),
            state: Mutex::new(State {
                current: Arc::new(key),
                loaded: stamps(&s.cert_file, &s.key_file),
                failed: None,
            }),
        };
        let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
        // HTTP/1.1 is all the endpoint serves; say so to clients that offer h2.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(cfg)), client_auth: s.client_auth, counters })
    }

    /// The handshake, done within `deadline` or not at all; a failure is counted.
    pub async fn accept(&self, stream: TcpStream, deadline: Duration) -> Option<TlsStream<TcpStream>> {
        let r = tokio::time::timeout(deadline, self.handshake(stream)).await.unwrap_or(Err(Failure::Timeout));
        r.inspect_err(|f| self.counters.count(*f)).ok()
    }

    async fn handshake(&self, mut stream: TcpStream) -> Result<TlsStream<TcpStream>, Failure> {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return Err(Failure::Closed),
            Ok(_) => {}
        }
        // 0x16 starts every TLS handshake record; a capital letter starts an HTTP method.
        if first[0] != 0x16 {
            if first[0].is_ascii_uppercase() {
                plain_http_reply(&mut stream).await;
                return Err(Failure::PlainHttp);
            }
            return Err(Failure::Protocol);
        }
        self.acceptor.accept(stream).await.map_err(|e| classify(&e))
    }
}

/// What a scraper configured with http:// sees instead of a reset: a 400 saying why. The
/// request is read first, so closing does not reset the connection before the answer.
async fn plain_http_reply(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf).await;
    let body = "client sent an HTTP request to the TLS port: use https://\n";
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(reply.as_bytes()).await.is_ok() && stream.shutdown().await.is_ok() {
        // Drain until the client closes (bounded by the caller's deadline).
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    }
}

fn classify(e: &std::io::Error) -> Failure {
    use std::io::ErrorKind::*;
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => Failure::ClientCert,
        Some(rustls::Error::AlertReceived(_)) => Failure::PeerAlert,
        Some(_) => Failure::Protocol,
        None if matches!(e.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe) => Failure::Closed,
        None => Failure::Protocol,
    }
}

/// The chain and key, checked to belong together; an error names the field and file at
/// fault.
fn certified_key<'p>(
    provider: &CryptoProvider,
    cert_file: &'p Path,
    key_file: &'p Path,
) -> Result<CertifiedKey, (&'static str, &'p Path, String)> {
    let read = |field: &'static str, p: &'p Path| {
        crate::input::read_text(p, MAX_PEM_BYTES).map_err(|e| {
            let fix = match e {
                crate::input::InputError::Io(_) => " (fix the path: relative ones are from the web config's directory)",
                _ => "",
            };
            (field, p, format!("{e}{fix}"))
        })
    };
    let cert_text = read("cert_file", cert_file)?;
    let chain = CertificateDer::pem_slice_iter(cert_text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ("cert_file", cert_file, format!("not PEM ({e}): give the certificate chain in PEM")))?;
    if chain.is_empty() {
        return Err(("cert_file", cert_file, "no CERTIFICATE in it: give the certificate chain in PEM".into()));
    }
    let key_text = read("key_file", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|e| {
        let why = match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY in it".to_owned(),
            e => format!("not PEM ({e})"),
        };
        ("key_file", key_file, format!("{why}: give the certificate's private key in PEM (PKCS#8, PKCS#1 or SEC1)"))
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| ("key_file", key_file, format!("unusable key ({e}): give an RSA, ECDSA or Ed25519 key")))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err((
            "key_file",
            key_file,
            format!("not the key of the certificate in {} (give the matching pair)", cert_file.display()),
        )),
        Err(e) => {
            Err(("cert_file", cert_file, format!("unusable certificate ({e}): give an X.509 certificate in PEM")))
        }
    }
}

fn client_roots(ca: &Path) -> Result<RootCertStore, String> {
    let text = crate::input::read_text(ca, MAX_PEM_BYTES).map_err(|e| e.to_string())?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM ({e}): give the CA certificates in PEM"))?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        return Err(format!("{ignored} of its certificates cannot be parsed: give CA certificates in PEM"));
    }
    if added == 0 {
        return Err("no CERTIFICATE in it: give the CA certificates in PEM".into());
    }
    Ok(roots)
}

/// What identifies a file's content without reading it: a rename over it changes the inode,
/// a rewrite the time or size.
type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

fn stamps(cert: &Path, key: &Path) -> (Stamp, Stamp) {
    (stamp(cert), stamp(key))
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    /// The files as they were when `current` was read.
    loaded: (Stamp, Stamp),
    /// Files that failed to load as they are now: not retried (or logged) until they change.
    failed: Option<(Stamp, Stamp)>,
}

/// Serves the certificate, re-reading the pair at the first handshake after either file
/// changed: rotation needs no restart, and a bad pair keeps the old one.
#[derive(Debug)]
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    counters: Arc<TlsCounters>,
    state: Mutex<State>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = stamps(&self.cert_file, &self.key_file);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now != st.loaded && st.failed != Some(now) {
            match certified_key(&self.provider, &self.cert_file, &self.key_file) {
                Ok(k) => {
                    st.current = Arc::new(k);
                    st.loaded = now;
                    st.failed = None;
                    self.counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                    eprintln!("iopf-agent: TLS certificate reloaded from {}", self.cert_file.display());
                }
                Err((field, file, m)) => {
                    st.failed = Some(now);
                    self.counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "iopf-agent: TLS certificate not reloaded: {field}: {}: {m}; still serving the previous one (they are read again when the files change)",
                        file.display()
                    );
                }
            }
        }
        Some(st.current.clone())
    }
}
