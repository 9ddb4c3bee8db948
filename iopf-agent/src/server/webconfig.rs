//! `--web-config FILE`: TLS and basic auth for the metrics endpoint, in the web
//! configuration format of the Prometheus exporters (`tls_server_config`,
//! `basic_auth_users`), so one file serves both. Every field of that format is known here:
//! those the agent cannot honour are refused by name, as are unknown ones, so a setting
//! never silently does nothing. Relative paths are relative to the file's directory.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, de::IgnoredAny};
use serde_saphyr::Spanned;
use thiserror::Error;

/// A web config is a few lines; anything bigger is not one.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum WebConfigError {
    /// Not a readable regular file, too large, not text.
    #[error("web config {path}: {source}")]
    Input { path: String, source: crate::input::InputError },
    /// YAML syntax and unknown fields, as the parser located them.
    #[error("web config {path}: {message}")]
    Syntax { path: String, message: String },
    /// A field the agent does not accept, or a wrong value.
    #[error("web config {path}:{line}:{column}: {field}: {message}")]
    Field { path: String, line: u64, column: u64, field: String, message: String },
    /// A problem of the document as a whole (nothing in it to point at).
    #[error("web config {path}: {message}")]
    Document { path: String, message: String },
    /// A file the config names (certificate, key, CA) that cannot be used.
    #[error("web config {path}: {field}: {file}: {message}")]
    File { path: String, field: &'static str, file: String, message: String },
}

/// Who must present a client certificate. The exporter toolkit's other values
/// (RequestClientCert, RequireAnyClientCert) take certificates without verifying them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// What the file asks for, paths resolved; files not read yet (see `tls::load`).
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    pub tls: Option<TlsSettings>,
    /// User name and bcrypt hash, each hash checked well-formed.
    pub users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    tls_server_config: Option<Spanned<RawTls>>,
    basic_auth_users: Option<BTreeMap<String, Spanned<String>>>,
    http_server_config: Option<Spanned<IgnoredAny>>,
    rate_limit: Option<Spanned<IgnoredAny>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    client_auth_type: Option<Spanned<String>>,
    client_ca_file: Option<Spanned<String>>,
    min_version: Option<Spanned<String>>,
    max_version: Option<Spanned<String>>,
    cert: Option<Spanned<IgnoredAny>>,
    key: Option<Spanned<IgnoredAny>>,
    client_ca: Option<Spanned<IgnoredAny>>,
    cipher_suites: Option<Spanned<IgnoredAny>>,
    curve_preferences: Option<Spanned<IgnoredAny>>,
    prefer_server_cipher_suites: Option<Spanned<IgnoredAny>>,
    client_allowed_sans: Option<Spanned<IgnoredAny>>,
}

/// Reads and checks the file (bounded: a FIFO or `/dev/zero` is refused at once).
pub fn read(path: &Path) -> Result<WebConfig, WebConfigError> {
    let shown = path.display().to_string();
    let text = crate::input::read_text(path, MAX_BYTES)
        .map_err(|source| WebConfigError::Input { path: shown.clone(), source })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    parse(&shown, dir, &text)
}

/// Parses `text` (named `path` in messages); relative paths are taken from `dir`.
pub fn parse(path: &str, dir: &Path, text: &str) -> Result<WebConfig, WebConfigError> {
    let raw: Option<Raw> = serde_saphyr::from_str(text).map_err(|e| syntax(path, &e))?;
    // An empty file asks for nothing, as with the exporters.
    let Some(raw) = raw else { return Ok(WebConfig::default()) };
    let field = |at: &Spanned<IgnoredAny>, field: &str, message: &str| WebConfigError::Field {
        path: path.to_owned(),
        line: at.referenced.line(),
        column: at.referenced.column(),
        field: field.to_owned(),
        message: message.to_owned(),
    };
    if let Some(at) = &raw.http_server_config {
        return Err(field(
            at,
            "http_server_config",
            "not supported: the agent serves HTTP/1.1 with its own fixed headers (remove the section)",
        ));
    }
    if let Some(at) = &raw.rate_limit {
        return Err(field(
            at,
            "rate_limit",
            "not supported: the endpoint caps connections and bcrypt checks instead (remove the section)",
        ));
    }
    let tls = match raw.tls_server_config {
        None => None,
        Some(t) => Some(tls_settings(path, dir, t)?),
    };
    let mut users = BTreeMap::new();
    for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
        let at = |message: String| WebConfigError::Field {
            path: path.to_owned(),
            line: hash.referenced.line(),
            column: hash.referenced.column(),
            field: format!("basic_auth_users.{user}"),
            message,
        };
        if user.contains(':') {
            return Err(at(
                "a user name cannot contain `:` (basic auth splits user and password at the first one): rename the user"
                    .into(),
            ));
        }
        check_bcrypt(&hash.value).map_err(at)?;
        users.insert(user, hash.value);
    }
    Ok(WebConfig { tls, users })
}

/// A well-formed bcrypt hash (`$2y$`, `$2b$`, `$2a$`; cost 4 to 31), checked at start so a
/// typo is not found at the first scrape.
fn check_bcrypt(hash: &str) -> Result<(), String> {
    let how = "give the bcrypt hash of the password (e.g. from `htpasswd -nbBC 10 USER PASSWORD`, the part after `:`)";
    if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
        return Err(format!("not a bcrypt hash (it must start with $2y$, $2b$ or $2a$): {how}"));
    }
    let parts: bcrypt::HashParts = hash.parse().map_err(|e| format!("not a valid bcrypt hash ({e}): {how}"))?;
    if !(4..=31).contains(&parts.get_cost()) {
        return Err(format!("bcrypt cost {} is outside 4..31: {how}", parts.get_cost()));
    }
    Ok(())
}

fn tls_settings(path: &str, dir: &Path, t: Spanned<RawTls>) -> Result<TlsSettings, WebConfigError> {
    let err = |line: u64, column: u64, field: &str, message: String| WebConfigError::Field {
        path: path.to_owned(),
        line,
        column,
        field: format!("tls_server_config.{field}"),
        message,
    };
    let refuse = |at: &Option<Spanned<IgnoredAny>>, name: &str, why: &str| match at {
        Some(at) => Err(err(at.referenced.line(), at.referenced.column(), name, format!("not supported: {why}"))),
        None => Ok(()),
    };
    let raw = t.value;
    refuse(&raw.cert, "cert", "put the certificate in a file and name it in cert_file")?;
    refuse(&raw.key, "key", "put the key in a file and name it in key_file")?;
    refuse(&raw.client_ca, "client_ca", "put the CA certificates in a file and name it in client_ca_file")?;
    refuse(&raw.cipher_suites, "cipher_suites", "rustls offers only its own safe suites (remove the field)")?;
    refuse(&raw.curve_preferences, "curve_preferences", "rustls chooses among its own safe groups (remove the field)")?;
    refuse(
        &raw.prefer_server_cipher_suites,
        "prefer_server_cipher_suites",
        "rustls always prefers the server's order (remove the field)",
    )?;
    refuse(
        &raw.client_allowed_sans,
        "client_allowed_sans",
        "any client certificate the CA signed is accepted (remove the field, or use a CA only for scrapers)",
    )?;
    let file = |v: &Option<Spanned<String>>, name: &str| -> Result<PathBuf, WebConfigError> {
        match v {
            Some(s) if !s.value.is_empty() => Ok(dir.join(&s.value)),
            Some(s) => Err(err(s.referenced.line(), s.referenced.column(), name, "is empty: name a PEM file".into())),
            None => Err(WebConfigError::Document {
                path: path.to_owned(),
                message: format!(
                    "tls_server_config.{name} is missing: name the PEM file (both cert_file and key_file are needed)"
                ),
            }),
        }
    };
    let cert_file = file(&raw.cert_file, "cert_file")?;
    let key_file = file(&raw.key_file, "key_file")?;
    let client_auth = match &raw.client_auth_type {
        None => ClientAuth::NoClientCert,
        Some(s) => {
            let e = |m: String| err(s.referenced.line(), s.referenced.column(), "client_auth_type", m);
            match s.value.as_str() {
                "NoClientCert" => ClientAuth::NoClientCert,
                "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
                "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
                v @ ("RequestClientCert" | "RequireAnyClientCert") => {
                    return Err(e(format!(
                        "`{v}` is not supported: it takes client certificates without verifying them (use VerifyClientCertIfGiven or RequireAndVerifyClientCert, with client_ca_file)"
                    )));
                }
                v => {
                    return Err(e(format!(
                        "`{}` is not one of NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert",
                        echo(v)
                    )));
                }
            }
        }
    };
    let client_ca_file = match (&raw.client_ca_file, client_auth) {
        (Some(s), ClientAuth::NoClientCert) => {
            return Err(err(
                s.referenced.line(),
                s.referenced.column(),
                "client_ca_file",
                "given, but client_auth_type is NoClientCert, so no client certificate is asked for (set client_auth_type: RequireAndVerifyClientCert or VerifyClientCertIfGiven, or remove client_ca_file)"
                    .into(),
            ));
        }
        (Some(_), _) => Some(file(&raw.client_ca_file, "client_ca_file")?),
        (None, ClientAuth::NoClientCert) => None,
        (None, _) => {
            return Err(WebConfigError::Document {
                path: path.to_owned(),
                message: "tls_server_config.client_ca_file is missing: client certificates are verified against it (name the CA's PEM file)".into(),
            });
        }
    };
    let version = |v: &Option<Spanned<String>>, name: &str, default: TlsVersion| match v {
        None => Ok(default),
        Some(s) => match s.value.as_str() {
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            "TLS10" | "TLS11" => Err(err(
                s.referenced.line(),
                s.referenced.column(),
                name,
                format!("`{}` is not supported: rustls speaks TLS 1.2 and 1.3 only (use TLS12 or TLS13)", s.value),
            )),
            other => Err(err(
                s.referenced.line(),
                s.referenced.column(),
                name,
                format!("`{}` is not one of TLS12, TLS13", echo(other)),
            )),
        },
    };
    let min_version = version(&raw.min_version, "min_version", TlsVersion::Tls12)?;
    let max_version = version(&raw.max_version, "max_version", TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err(WebConfigError::Document {
            path: path.to_owned(),
            message: "tls_server_config.min_version is above max_version: no TLS version is left (lower min_version or raise max_version)".into(),
        });
    }
    Ok(TlsSettings { cert_file, key_file, client_auth, client_ca_file, min_version, max_version })
}

/// A value echoed in a message, cut to a readable length.
fn echo(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// serde-saphyr's message on one line, its location as `path:line:column`, and what to do
/// about an unknown field.
fn syntax(path: &str, e: &serde_saphyr::Error) -> WebConfigError {
    let rendered = e.without_snippet().to_string();
    let first = rendered.lines().next().unwrap_or(&rendered).trim_start_matches("error: ");
    let located = first.rsplit_once(" at line ").and_then(|(message, at)| {
        let (line, column) = at.split_once(", column ")?;
        Some((message, line.parse::<u64>().ok()?, column.parse::<u64>().ok()?))
    });
    let (head, message) = match located {
        Some((m, line, column)) => (format!("{path}:{line}:{column}"), m),
        None => (path.to_owned(), first),
    };
    let fix = if message.starts_with("unknown field") { " (remove it, or correct its name)" } else { "" };
    WebConfigError::Syntax { path: head, message: format!("{message}{fix}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    // bcrypt of "secret" at cost 4, made by Python's bcrypt 5.0.0:
    // bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4, prefix=b"2b")).
    const HASH: &str = "$2b$04$c1MU1OgLXGpFB.OUsezqN.dEYXlGD7yox3GvfnmAzpKbhfB7zZsee";

    fn parse_str(text: &str) -> Result<WebConfig, String> {
        parse("w.yml", Path::new("/etc/iopf"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_the_supported_fields() {
        let c = parse_str(&format!(
            "tls_server_config:\n  cert_file: s.crt\n  key_file: /abs/s.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\nbasic_auth_users:\n  alice: '{HASH}'\n"
        ))
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.cert_file, Path::new("/etc/iopf/s.crt"));
        assert_eq!(t.key_file, Path::new("/abs/s.key"));
        assert_eq!(t.client_ca_file.as_deref(), Some(Path::new("/etc/iopf/ca.crt")));
        assert_eq!(t.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!((t.min_version, t.max_version), (TlsVersion::Tls13, TlsVersion::Tls13));
        assert_eq!(c.users["alice"], HASH);
        let empty = parse_str("").unwrap();
        assert!(empty.tls.is_none() && empty.users.is_empty());
    }

    #[test]
    fn the_shipped_example_is_accepted() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/web-config.yml"));
        let c = read(path).unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(t.cert_file, path.parent().unwrap().join("server.crt"));
        assert_eq!(c.users.keys().collect::<Vec<_>>(), ["prometheus"]);
    }

    #[test]
    fn refuses_by_name_what_it_cannot_honour() {
        let tls = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        let cases = [
            (
                format!("{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
                "w.yml:4:18: tls_server_config.cipher_suites: not supported",
            ),
            (format!("{tls}  curve_preferences: [X25519]\n"), "tls_server_config.curve_preferences: not supported"),
            (format!("{tls}  prefer_server_cipher_suites: true\n"), "prefer_server_cipher_suites: not supported"),
            (format!("{tls}  client_allowed_sans: [x]\n"), "client_allowed_sans: not supported"),
            (format!("{tls}  max_version: TLS11\n"), "`TLS11` is not supported: rustls speaks TLS 1.2 and 1.3 only"),
            (format!("{tls}  min_version: TLS14\n"), "`TLS14` is not one of TLS12, TLS13"),
            (
                format!("{tls}  client_auth_type: RequireAnyClientCert\n  client_ca_file: c\n"),
                "`RequireAnyClientCert` is not supported",
            ),
            (format!("{tls}  client_auth_type: RequestClientCert\n"), "`RequestClientCert` is not supported"),
            (format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"), "client_ca_file is missing"),
            (format!("{tls}  client_ca_file: c\n"), "client_auth_type is NoClientCert"),
            (format!("{tls}  min_version: TLS13\n  max_version: TLS12\n"), "min_version is above max_version"),
            (format!("{tls}  cert: inline\n"), "tls_server_config.cert: not supported"),
            (format!("{tls}  certfile: a\n"), "w.yml:4:3: unknown field `certfile`"),
            ("tls_server_config:\n  key_file: b\n".into(), "tls_server_config.cert_file is missing"),
            ("http_server_config:\n  http2: false\n".into(), "http_server_config: not supported"),
            ("rate_limit:\n  interval: 1s\n".into(), "rate_limit: not supported"),
            ("basic_auth_user:\n  a: b\n".into(), "unknown field `basic_auth_user`"),
            ("basic_auth_users:\n  a: plain\n".into(), "basic_auth_users.a: not a bcrypt hash"),
            (format!("basic_auth_users:\n  a: '{}'\n", &HASH[..50]), "basic_auth_users.a: not a valid bcrypt hash"),
            (format!("basic_auth_users:\n  a: '{}'\n", HASH.replace("$04$", "$99$")), "bcrypt cost 99 is outside"),
            (format!("basic_auth_users:\n  'a:b': '{HASH}'\n"), "cannot contain `:`"),
            (format!("basic_auth_users:\n  a: '{HASH}'\n  a: '{HASH}'\n"), "duplicate"),
            ("tls_server_config: [\n".into(), "web config w.yml:1:"),
        ];
        for (text, want) in cases {
            let got = parse_str(&text).expect_err(&text);
            assert!(got.contains(want), "{text:?}: {got:?} lacks {want:?}");
            assert!(!got.contains('\n'), "one line: {got:?}");
        }
    }
}
