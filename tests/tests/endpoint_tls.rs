//! `--web-config`: TLS, client certificates and basic auth on the metrics endpoint, driven
//! by real clients (curl, openssl s_client, Prometheus) against `simulate --listen` (the
//! same endpoint as `run`). Certificates are made at test time with the openssl CLI; the
//! bcrypt hashes are constants made by Python's bcrypt, not by the code under test.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use iopf_tests::{
    agent::{Agent, agent_bin},
    prom::{Exposition, Prometheus},
    require_root,
};

const CURL: &str = "/usr/bin/curl";
const OPENSSL: &str = "/usr/bin/openssl";

/// bcrypt (cost 10) of "s3cret-scrape", made by Python's bcrypt 5.0.0:
/// `bcrypt.hashpw(b"s3cret-scrape", bcrypt.gensalt(rounds=10, prefix=b"2b"))`.
const ALICE_HASH: &str = "$2b$10$JF81fvzG84I1QqbPLLTgyOloX3JIz2Dvgv5YIPeK9jfM2hbNj0OKi";
const ALICE: &str = "alice:s3cret-scrape";
/// bcrypt (cost 4, `$2a$`) of "hunter2", made by Python's bcrypt 5.0.0:
/// `bcrypt.hashpw(b"hunter2", bcrypt.gensalt(rounds=4, prefix=b"2a"))`.
const BOB_HASH: &str = "$2a$04$2fLfr6247OWIyOOe.vVS6OEio2bDV4o4XWXOaLkGkwQw7.3Esusku";

/// The bootstrap installs these; a test without them fails, it does not skip.
fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} missing: install Debian's `{package}` package (scripts/bootstrap.sh does)"
    );
}

/// A scratch directory of keys and certificates made with the openssl CLI (EC P-256).
struct Pki {
    dir: PathBuf,
}

static SERIAL: AtomicU32 = AtomicU32::new(1);

impl Pki {
    fn new(test: &str) -> Self {
        require_tool(OPENSSL, "openssl");
        require_tool(CURL, "curl");
        let dir = std::env::temp_dir().join(format!("iopf-tls-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new(OPENSSL).args(args).current_dir(&self.dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// NAME.crt and NAME.key: a self-signed CA.
    fn ca(&self, name: &str) {
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
        ]);
    }

    /// NAME.crt and NAME.key signed by CA, for `usage` (serverAuth: valid for 127.0.0.1).
    fn leaf(&self, name: &str, ca: &str, usage: &str, subject: &str) {
        let (crt, key, csr, ext) =
            (format!("{name}.crt"), format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"));
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ]);
        let san = if usage == "serverAuth" { "subjectAltName=IP:127.0.0.1,DNS:localhost\n" } else { "" };
        std::fs::write(self.dir.join(&ext), format!("{san}basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"))
            .unwrap();
        let serial = format!("{}", 1000 + SERIAL.fetch_add(1, Ordering::Relaxed));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &serial,
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    /// web.yml with `text` (relative paths in it are relative to this directory).
    fn web_config(&self, text: &str) -> String {
        std::fs::write(self.dir.join("web.yml"), text).unwrap();
        self.path("web.yml")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn agent(web_config: &str) -> Agent {
    let scn = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/scenarios/small.yaml");
    Agent::start_with(&["simulate", "--scenario", scn, "--listen", "127.0.0.1:0", "--web-config", web_config])
}

/// What curl got: its exit code, the HTTP status (0 without an answer), headers and body.
#[derive(Debug)]
struct Got {
    exit: Option<i32>,
    status: u16,
    head: String,
    body: String,
    took: Duration,
}

fn curl(args: &[&str]) -> Got {
    let t0 = Instant::now();
    let out = Command::new(CURL)
        .args(["-sS", "-i", "--max-time", "15", "-w", "\n<<%{http_code}>>"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (resp, code) = text.rsplit_once("\n<<").unwrap_or((&text, "0>>"));
    let status = code.trim_end_matches(">>").parse().unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    Got { exit: out.status.code(), status, head: head.to_owned(), body: body.to_owned(), took }
}

fn url(a: &Agent, path: &str) -> String {
    format!("https://{}{path}", a.addr)
}

/// A scrape with the CA (and credentials when given), parsed.
fn scrape(a: &Agent, pki: &Pki, extra: &[&str]) -> Exposition {
    let ca = pki.path("ca.crt");
    let mut args = vec!["--cacert", ca.as_str()];
    args.extend_from_slice(extra);
    let u = url(a, "/metrics");
    args.push(&u);
    let g = curl(&args);
    assert_eq!(g.status, 200, "{g:?}");
    Exposition::parse(&g.body)
}

fn server_pki(test: &str) -> Pki {
    let pki = Pki::new(test);
    pki.ca("ca");
    pki.leaf("server", "ca", "serverAuth", "/CN=localhost");
    pki
}

#[test]
fn https_needs_the_ca_and_plain_http_is_answered_400() {
    if !require_root("https_needs_the_ca_and_plain_http_is_answered_400") {
        return;
    }
    let pki = server_pki("https");
    let web = pki.web_config("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
    let a = agent(&web);
    let banner = a.log.last().unwrap();
    assert_eq!(
        banner,
        &format!(
            "iopf-agent: serving metrics on https://{}/metrics (TLS, no client certificates; basic auth: off)",
            a.addr
        )
    );
    let ca = pki.path("ca.crt");
    let ok = curl(&["--cacert", &ca, &url(&a, "/metrics")]);
    assert_eq!((ok.exit, ok.status), (Some(0), 200), "{ok:?}");
    assert!(
        ok.body.contains("# TYPE iopf_faults_total counter"),
        "metrics body: {}",
        &ok.body[..ok.body.len().min(400)]
    );
    // curl's own trust store does not hold our CA: verification fails (exit 60).
    let untrusted = curl(&[&url(&a, "/metrics")]);
    assert_eq!((untrusted.exit, untrusted.status), (Some(60), 0), "{untrusted:?}");
    // Plain HTTP to the TLS port: an immediate 400 that says why, then the close.
    let plain = curl(&[&format!("http://{}/metrics", a.addr)]);
    println!("plain HTTP to the TLS port answered in {:?}", plain.took);
    assert_eq!((plain.exit, plain.status), (Some(0), 400), "{plain:?}");
    assert_eq!(plain.body, "client sent an HTTP request to the TLS port: use https://\n");
    assert!(plain.took < Duration::from_secs(2), "{:?}", plain.took);
    let e = scrape(&a, &pki, &[]);
    assert_eq!(e.value("iopf_http_tls_handshake_failures_total", &[("reason", "plain_http")]), 1.0);
    assert_eq!(
        e.value("iopf_http_tls_handshake_failures_total", &[("reason", "peer_alert")]),
        1.0,
        "curl without the CA"
    );
    assert_eq!(e.value("iopf_http_tls_handshake_failures_total", &[("reason", "timeout")]), 0.0);
    assert_eq!(e.value("iopf_http_auth_failures_total", &[("reason", "missing")]), 0.0, "no basic auth configured");
    let (code, _) = a.stop();
    assert_eq!(code, Some(0));
}

#[test]
fn basic_auth_refuses_wrong_unknown_and_missing_credentials() {
    if !require_root("basic_auth_refuses_wrong_unknown_and_missing_credentials") {
        return;
    }
    let pki = server_pki("auth");
    let web = pki.web_config(&format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: {ALICE_HASH}\n  bob: '{BOB_HASH}'\n"
    ));
    let a = agent(&web);
    assert!(a.log.last().unwrap().ends_with("(TLS, no client certificates; basic auth: 2 users)"), "{:?}", a.log);
    let ca = pki.path("ca.crt");
    let get = |extra: &[&str], path: &str| {
        let mut args = vec!["--cacert", ca.as_str()];
        args.extend_from_slice(extra);
        let u = url(&a, path);
        args.push(&u);
        curl(&args)
    };
    let refused = |g: &Got| {
        assert_eq!((g.exit, g.status), (Some(0), 401), "{g:?}");
        assert!(g.head.lines().any(|l| l == "www-authenticate: Basic realm=\"iopf-agent\""), "{}", g.head);
        assert_eq!(g.body, "401 Unauthorized\n");
    };
    let first = get(&["-u", ALICE], "/metrics");
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.body.contains("iopf_http_auth_checks_total"));
    // Every path is behind the password, /healthz and unknown paths too.
    assert_eq!(get(&["-u", ALICE], "/healthz").status, 200);
    assert_eq!(get(&["-u", "bob:hunter2"], "/healthz").status, 200);
    assert_eq!(get(&["-u", ALICE], "/nope").status, 404);
    refused(&get(&[], "/healthz"));
    refused(&get(&[], "/nope"));
    refused(&get(&["-u", "alice:wrong"], "/metrics"));
    refused(&get(&["-u", "mallory:s3cret-scrape"], "/metrics"));
    refused(&get(&["-H", "Authorization: Basic !!!"], "/metrics"));
    refused(&get(&["-H", "Authorization: Bearer abc"], "/metrics"));

    // Cost 10: a wrong password and an unknown user both pay a bcrypt; a good password pays
    // it once, later checks come from the cache.
    let median = |extra: &[&str]| {
        let mut t: Vec<Duration> = (0..5).map(|_| get(extra, "/healthz").took).collect();
        t.sort();
        t[2]
    };
    let wrong = median(&["-u", "alice:wrong"]);
    let unknown = median(&["-u", "mallory:wrong"]);
    let cached = median(&["-u", ALICE]);
    // Printed, not asserted (timings on a shared host are not a test); the check counters
    // below say exactly which requests paid a bcrypt and which the cache answered.
    println!(
        "curl round trip, median of 5: wrong password {wrong:?}, unknown user {unknown:?}, cached good password {cached:?}"
    );

    let e = scrape(&a, &pki, &["-u", ALICE]);
    let fail = |r: &str| e.value("iopf_http_auth_failures_total", &[("reason", r)]);
    assert_eq!(
        (fail("missing"), fail("malformed"), fail("unknown_user"), fail("wrong_password")),
        (2.0, 2.0, 6.0, 6.0)
    );
    assert_eq!(fail("busy"), 0.0);
    // bcrypt ran for: alice's first good check, bob's, and the 12 refused (wrong or unknown).
    assert_eq!(e.value("iopf_http_auth_checks_total", &[("by", "bcrypt")]), 14.0);
    // The cache answered alice's other good checks: /healthz, /nope, 5 timed, and this scrape.
    assert_eq!(e.value("iopf_http_auth_checks_total", &[("by", "cache")]), 8.0);
    let _ = a.stop();
}

#[test]
fn client_certificates_required_and_verified() {
    if !require_root("client_certificates_required_and_verified") {
        return;
    }
    let pki = server_pki("mtls");
    pki.leaf("client", "ca", "clientAuth", "/CN=prometheus");
    pki.ca("other-ca");
    pki.leaf("stranger", "other-ca", "clientAuth", "/CN=prometheus");
    let web = pki.web_config(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
    );
    let a = agent(&web);
    assert!(a.log.last().unwrap().ends_with("(TLS, client certificates required; basic auth: off)"));
    let ca = pki.path("ca.crt");
    let with = |name: &str| {
        curl(&[
            "--cacert",
            &ca,
            "--cert",
            &pki.path(&format!("{name}.crt")),
            "--key",
            &pki.path(&format!("{name}.key")),
            &url(&a, "/healthz"),
        ])
    };
    let none = curl(&["--cacert", &ca, &url(&a, "/healthz")]);
    assert_ne!(none.exit, Some(0), "{none:?}");
    assert_eq!(none.status, 0, "{none:?}");
    let good = with("client");
    assert_eq!((good.exit, good.status, good.body.as_str()), (Some(0), 200, "ok: programs attached, serving\n"));
    let stranger = with("stranger");
    assert_ne!(stranger.exit, Some(0), "{stranger:?}");
    assert_eq!(stranger.status, 0);
    let e = scrape(&a, &pki, &["--cert", &pki.path("client.crt"), "--key", &pki.path("client.key")]);
    assert_eq!(e.value("iopf_http_tls_handshake_failures_total", &[("reason", "client_cert")]), 2.0);
    let _ = a.stop();
}

#[test]
fn optional_client_certificates_are_verified_when_given() {
    if !require_root("optional_client_certificates_are_verified_when_given") {
        return;
    }
    let pki = server_pki("mtls-opt");
    pki.ca("other-ca");
    pki.leaf("stranger", "other-ca", "clientAuth", "/CN=prometheus");
    let web = pki.web_config(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n  min_version: TLS13\n",
    );
    let a = agent(&web);
    assert!(a.log.last().unwrap().ends_with("(TLS, client certificates optional; basic auth: off)"));
    let ca = pki.path("ca.crt");
    assert_eq!(curl(&["--cacert", &ca, &url(&a, "/healthz")]).status, 200);
    let stranger = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &pki.path("stranger.crt"),
        "--key",
        &pki.path("stranger.key"),
        &url(&a, "/healthz"),
    ]);
    assert_eq!(stranger.status, 0, "{stranger:?}");
    // min_version TLS13: a TLS 1.2-only client is refused.
    let old = curl(&["--cacert", &ca, "--tls-max", "1.2", &url(&a, "/healthz")]);
    assert_eq!(old.status, 0, "{old:?}");
    let e = scrape(&a, &pki, &[]);
    assert_eq!(e.value("iopf_http_tls_handshake_failures_total", &[("reason", "client_cert")]), 1.0);
    let _ = a.stop();
}

/// Half a ClientHello: the record header claims 200 bytes, 10 arrive.
const HALF_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03, 1, 2, 3, 4, 5];

/// How long until the server closes `s` (EOF or reset on read), at most 15 s.
fn until_closed(mut s: TcpStream, t0: Instant) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return t0.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn silent_and_half_hello_clients_are_cut_off_at_the_header_timeout() {
    if !require_root("silent_and_half_hello_clients_are_cut_off_at_the_header_timeout") {
        return;
    }
    let pki = server_pki("slow");
    let web = pki.web_config("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
    let a = agent(&web);
    let t0 = Instant::now();
    let silent = TcpStream::connect(a.addr).unwrap();
    let mut half = TcpStream::connect(a.addr).unwrap();
    half.write_all(HALF_HELLO).unwrap();
    let waiters = [silent, half].map(|s| std::thread::spawn(move || until_closed(s, t0)));
    std::thread::sleep(Duration::from_secs(1));
    // Meanwhile a good scrape answers at once, and sees the two stuck connections.
    let t1 = Instant::now();
    let e = scrape(&a, &pki, &[]);
    let scrape_took = t1.elapsed();
    assert!(scrape_took < Duration::from_secs(1), "{scrape_took:?}");
    assert_eq!(e.value("iopf_http_connections", &[("state", "open")]), 3.0, "two stuck and the scrape");
    let closed: Vec<Duration> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    println!(
        "silent client closed after {:?}, half-ClientHello client after {:?}; scrape meanwhile {scrape_took:?}",
        closed[0], closed[1]
    );
    for c in &closed {
        assert!(*c >= Duration::from_millis(4900) && *c < Duration::from_secs(7), "closed after {c:?}");
    }
    let e = scrape(&a, &pki, &[]);
    assert_eq!(e.value("iopf_http_tls_handshake_failures_total", &[("reason", "timeout")]), 2.0);
    assert_eq!(e.value("iopf_http_connections", &[("state", "open")]), 1.0);
    let _ = a.stop();
}

#[test]
fn sigterm_during_a_stuck_handshake_exits_within_the_grace_period() {
    if !require_root("sigterm_during_a_stuck_handshake_exits_within_the_grace_period") {
        return;
    }
    let pki = server_pki("term");
    let web = pki.web_config("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
    let a = agent(&web);
    let mut half = TcpStream::connect(a.addr).unwrap();
    half.write_all(HALF_HELLO).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let (code, _) = a.stop_within(Duration::from_secs(3)).expect("exits");
    let took = t0.elapsed();
    println!("exited {took:?} after SIGTERM with a half handshake open");
    assert_eq!(code, Some(0));
    // The handshake holds a connection slot, so shutdown waited the 1 s grace for it, no more.
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
    drop(half);
}

/// Runs the agent to its end (at most 10 s): (exit code, stdout, stderr, time taken).
fn run_briefly(args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let t0 = Instant::now();
    let mut child = Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iopf-agent");
    while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t0.elapsed();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into(), took)
}

#[test]
fn bad_web_configs_exit_2_before_anything_loads() {
    if !require_root("bad_web_configs_exit_2_before_anything_loads") {
        return;
    }
    let pki = server_pki("bad");
    pki.ca("other-ca");
    let fifo = pki.path("fifo.yml");
    let c = std::ffi::CString::new(fifo.as_str()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let web = pki.path("web.yml");
    let cases: Vec<(String, String, String)> = vec![
        (web.clone(), format!("{tls}  certfile: x\n"), format!("web config {web}:4:3: unknown field `certfile`")),
        (
            web.clone(),
            format!("{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
            format!("web config {web}:4:18: tls_server_config.cipher_suites: not supported: rustls offers only its own safe suites (remove the field)"),
        ),
        (
            web.clone(),
            format!("{tls}  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.crt\n"),
            "tls_server_config.client_auth_type: `RequireAnyClientCert` is not supported: it takes client certificates without verifying them".into(),
        ),
        (
            web.clone(),
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n".into(),
            format!("web config {web}: cert_file: {}: cannot read: No such file or directory", pki.path("missing.crt")),
        ),
        (
            web.clone(),
            "tls_server_config:\n  cert_file: server.crt\n  key_file: other-ca.key\n".into(),
            format!("key_file: {}: not the key of the certificate in {}", pki.path("other-ca.key"), pki.path("server.crt")),
        ),
        (
            web.clone(),
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n".into(),
            "cert_file: ".to_owned() + &pki.path("server.key") + ": no CERTIFICATE in it",
        ),
        (
            web.clone(),
            "basic_auth_users:\n  alice: $2b$10$tooShort\n".into(),
            format!("web config {web}:2:10: basic_auth_users.alice: not a valid bcrypt hash"),
        ),
        ("/dev/zero".into(), String::new(), "web config /dev/zero: not a regular file (a character device): give the path of a file".into()),
        (fifo.clone(), String::new(), format!("web config {fifo}: not a regular file (a FIFO): give the path of a file")),
    ];
    for (path, text, want) in cases {
        if path == web {
            std::fs::write(&web, &text).unwrap();
        }
        // `run`: nothing may be loaded into the kernel, so no attach plan is logged.
        let (code, stdout, stderr, took) = run_briefly(&["run", "--listen", "127.0.0.1:0", "--web-config", &path]);
        println!("{took:?}: {}", stderr.trim_end());
        assert_eq!(code, Some(2), "{text:?}: {stderr}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        assert!(stderr.starts_with("iopf-agent: error: web config "), "{stderr:?}");
        assert!(stderr.contains(&want), "{stderr:?} lacks {want:?}");
        assert!(stdout.is_empty());
    }
    // And simulate refuses the same way.
    std::fs::write(&web, format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n")).unwrap();
    let scn = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/scenarios/small.yaml");
    let (code, stdout, stderr, _) =
        run_briefly(&["simulate", "--scenario", scn, "--listen", "127.0.0.1:0", "--web-config", &web]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("tls_server_config.client_ca_file is missing"), "{stderr}");
    assert!(stdout.is_empty(), "the simulation did not run: {stdout}");
}

/// The PEM of the certificate the server presents, as `openssl s_client` shows it.
fn presented(addr: SocketAddr, pki: &Pki) -> String {
    let out = Command::new(OPENSSL)
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile", &pki.path("ca.crt")])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("no certificate: {text}"));
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin + "-----END CERTIFICATE-----".len();
    text[begin..end].to_owned()
}

fn pem(pki: &Pki, name: &str) -> String {
    std::fs::read_to_string(pki.dir.join(name)).unwrap().trim().to_owned()
}

#[test]
fn certificate_rotation_needs_no_restart() {
    if !require_root("certificate_rotation_needs_no_restart") {
        return;
    }
    let pki = server_pki("rotate");
    pki.leaf("next", "ca", "serverAuth", "/CN=localhost/O=rotated");
    let web = pki.web_config("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
    let a = agent(&web);
    let first = pem(&pki, "server.crt");
    assert_eq!(presented(a.addr, &pki), first);
    // Rotate as cert managers do: new files renamed over the old ones.
    std::fs::rename(pki.dir.join("next.key"), pki.dir.join("server.key")).unwrap();
    std::fs::rename(pki.dir.join("next.crt"), pki.dir.join("server.crt")).unwrap();
    let next = pem(&pki, "server.crt");
    assert_ne!(first, next);
    assert_eq!(presented(a.addr, &pki), next, "the next connection presents the new certificate");
    assert!(a.wait_line("TLS certificate reloaded from").is_some());
    // A broken replacement keeps the current pair, and is logged once.
    std::fs::write(pki.dir.join("server.crt.tmp"), "not a certificate\n").unwrap();
    std::fs::rename(pki.dir.join("server.crt.tmp"), pki.dir.join("server.crt")).unwrap();
    assert_eq!(presented(a.addr, &pki), next);
    assert_eq!(presented(a.addr, &pki), next);
    let e = scrape(&a, &pki, &[]);
    assert_eq!(e.value("iopf_http_tls_certificate_reloads_total", &[("result", "ok")]), 1.0);
    assert_eq!(e.value("iopf_http_tls_certificate_reloads_total", &[("result", "error")]), 1.0);
    let (_, rest) = a.stop();
    let logged: Vec<&String> = rest.iter().filter(|l| l.contains("TLS certificate not reloaded")).collect();
    assert_eq!(logged.len(), 1, "{rest:?}");
    assert!(
        logged[0].contains("no CERTIFICATE in it") && logged[0].contains("still serving the previous one"),
        "{logged:?}"
    );
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    if !require_root("prometheus_scrapes_over_tls_with_basic_auth") {
        return;
    }
    let pki = server_pki("prom");
    let web = pki.web_config(&format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: {ALICE_HASH}\n"
    ));
    let a = agent(&web);
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {}\n    basic_auth:\n      username: alice\n      password: {password}\n    static_configs:\n      - targets: ['{}']\n",
            pki.path("ca.crt"),
            a.addr
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}",
        job("iopf-tls", "s3cret-scrape"),
        job("iopf-tls-wrong", "not-the-password")
    );
    let prom = Prometheus::start(&pki.dir, &config);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut good, mut wrong, mut max, mut refused) = (None, None, None, None);
    while Instant::now() < deadline {
        good = prom.query_one("up{job=\"iopf-tls\"}");
        wrong = prom.query_one("up{job=\"iopf-tls-wrong\"}");
        max = prom.query_one("iopf_http_connections{job=\"iopf-tls\",state=\"max\"}");
        // The good job stores the agent's count of the wrong job's refusals.
        refused = prom.query_one("iopf_http_auth_failures_total{job=\"iopf-tls\",reason=\"wrong_password\"}");
        if good == Some(1.0) && wrong == Some(0.0) && max.is_some() && refused.is_some_and(|r| r >= 1.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(prom);
    let e = scrape(&a, &pki, &["-u", ALICE]);
    let _ = a.stop();
    assert_eq!(good, Some(1.0), "the job with the password is up");
    assert_eq!(wrong, Some(0.0), "the job with a wrong password is down");
    assert_eq!(max, Some(e.value("iopf_http_connections", &[("state", "max")])), "an agent metric, as stored");
    assert!(refused.is_some_and(|r| r >= 1.0), "{refused:?}");
    assert_eq!(e.value("iopf_http_tls_handshake_failures_total", &[("reason", "peer_alert")]), 0.0);
}
