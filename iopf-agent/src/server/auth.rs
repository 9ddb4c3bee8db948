//! HTTP basic authentication against the web config's bcrypt hashes, on every path.
//!
//! bcrypt is slow by design (tens of milliseconds at cost 10), so: it runs on the blocking
//! pool, at most `bcrypt_slots()` at once (a flood of wrong passwords cannot take every
//! core; waiters give up after `QUEUE_WAIT` with 503), and a user's last good password is
//! remembered as an HMAC under a per-process random key, so a scraper's every scrape does
//! not pay a bcrypt. An unknown user costs a bcrypt too, against a real user's hash, so
//! timing does not tell which user names exist.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use ring::hmac;
use tokio::sync::Semaphore;

/// How long a request waits for a bcrypt slot before it is answered 503.
const QUEUE_WAIT: Duration = Duration::from_secs(5);
const REALM: &str = "Basic realm=\"iopf-agent\"";

/// Why a request was refused (the label of iopf_http_auth_failures_total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No Authorization header.
    Missing,
    /// Not `Basic base64(user:password)`.
    Malformed,
    UnknownUser,
    WrongPassword,
    /// Every bcrypt slot stayed busy for `QUEUE_WAIT` (answered 503, not 401).
    Busy,
}

const FAILURES: [(Failure, &str); 5] = [
    (Failure::Missing, "missing"),
    (Failure::Malformed, "malformed"),
    (Failure::UnknownUser, "unknown_user"),
    (Failure::WrongPassword, "wrong_password"),
    (Failure::Busy, "busy"),
];

#[derive(Debug, Default)]
pub struct AuthCounters {
    failures: [AtomicU64; FAILURES.len()],
    bcrypt: AtomicU64,
    cached: AtomicU64,
}

impl AuthCounters {
    fn count(&self, f: Failure) {
        if let Some(i) = FAILURES.iter().position(|(x, _)| *x == f) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (reason, count) for every reason, zeros included.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FAILURES.iter().zip(&self.failures).map(|((_, name), n)| (*name, n.load(Ordering::Relaxed)))
    }

    /// (bcrypt verifications run, checks answered from the cache).
    pub fn checks(&self) -> (u64, u64) {
        (self.bcrypt.load(Ordering::Relaxed), self.cached.load(Ordering::Relaxed))
    }
}

/// At most half the CPUs (at least 1, at most 4) verify bcrypt hashes at once.
pub fn bcrypt_slots() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 2).clamp(1, 4)
}

pub struct Auth {
    users: HashMap<String, Arc<str>>,
    /// The costliest user hash: what an unknown user's password is checked against.
    decoy: Arc<str>,
    cache_key: hmac::Key,
    /// User -> HMAC of the last password that verified.
    cache: Mutex<HashMap<String, hmac::Tag>>,
    slots: Arc<Semaphore>,
    pub counters: Arc<AuthCounters>,
}

impl Auth {
    /// None without users: no authentication.
    pub fn new(users: &BTreeMap<String, String>) -> Option<Arc<Self>> {
        let cost = |h: &str| h.parse::<bcrypt::HashParts>().map_or(0, |p| p.get_cost());
        let decoy: Arc<str> = users.values().max_by_key(|h| cost(h))?.as_str().into();
        let rng = ring::rand::SystemRandom::new();
        // A random key: the cache holds nothing a password guess could be checked against
        // outside this process.
        let cache_key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok()?;
        Some(Arc::new(Auth {
            users: users.iter().map(|(u, h)| (u.clone(), h.as_str().into())).collect(),
            decoy,
            cache_key,
            cache: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(bcrypt_slots())),
            counters: Arc::new(AuthCounters::default()),
        }))
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Whether the Authorization header names a user with the right password.
    pub async fn check(&self, header: Option<&HeaderValue>) -> Result<(), Failure> {
        let header = header.ok_or(Failure::Missing)?;
        let (user, password) = credentials(header.as_bytes()).ok_or(Failure::Malformed)?;
        let hash = match self.users.get(user.as_str()) {
            Some(h) => h.clone(),
            None => {
                // Spend what a known user costs, then refuse whatever the outcome.
                let _ = self.bcrypt(password, self.decoy.clone()).await?;
                return Err(Failure::UnknownUser);
            }
        };
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&user).cloned();
        // hmac::verify compares in constant time.
        if cached.is_some_and(|tag| hmac::verify(&self.cache_key, &password, tag.as_ref()).is_ok()) {
            self.counters.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let tag = hmac::sign(&self.cache_key, &password);
        if !self.bcrypt(password, hash).await? {
            return Err(Failure::WrongPassword);
        }
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(user, tag);
        Ok(())
    }

    /// One bcrypt verification on the blocking pool, in a slot.
    async fn bcrypt(&self, password: Vec<u8>, hash: Arc<str>) -> Result<bool, Failure> {
        let slot = tokio::time::timeout(QUEUE_WAIT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Failure::Busy)?
            .map_err(|_| Failure::Busy)?;
        self.counters.bcrypt.fetch_add(1, Ordering::Relaxed);
        let ok = tokio::task::spawn_blocking(move || {
            let ok = bcrypt::verify(&password, &hash).unwrap_or(false);
            drop(slot);
            ok
        })
        .await
        .unwrap_or(false);
        Ok(ok)
    }
}

/// `Basic base64(user:password)` as (user, password bytes).
fn credentials(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim_ascii()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// axum middleware: the request goes on only with good credentials.
pub async fn require(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    match auth.check(req.headers().get(header::AUTHORIZATION)).await {
        Ok(()) => next.run(req).await,
        Err(f) => {
            auth.counters.count(f);
            if f == Failure::Busy {
                return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "busy checking passwords\n")
                    .into_response();
            }
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, REALM)], "401 Unauthorized\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // bcrypt of "secret" at cost 4, made by Python's bcrypt 5.0.0:
    // bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4, prefix=b"2b")).
    const HASH: &str = "$2b$04$c1MU1OgLXGpFB.OUsezqN.dEYXlGD7yox3GvfnmAzpKbhfB7zZsee";

    fn basic(s: &str) -> HeaderValue {
        let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        HeaderValue::from_str(&v).unwrap()
    }

    #[test]
    fn parses_the_header() {
        assert_eq!(credentials(b"Basic YTpiOmM="), Some(("a".into(), b"b:c".to_vec())));
        assert_eq!(credentials(b"basic YTo="), Some(("a".into(), Vec::new())));
        assert_eq!(credentials(b"Bearer YTpi"), None);
        assert_eq!(credentials(b"Basic YWJj"), None, "no colon");
        assert_eq!(credentials(b"Basic !!"), None);
        assert_eq!(credentials(b"Basic"), None);
    }

    #[tokio::test]
    async fn checks_passwords_and_caches_only_good_ones() {
        let auth = Auth::new(&BTreeMap::from([("alice".to_owned(), HASH.to_owned())])).unwrap();
        assert_eq!(auth.check(None).await, Err(Failure::Missing));
        assert_eq!(auth.check(Some(&HeaderValue::from_static("Basic %%"))).await, Err(Failure::Malformed));
        assert_eq!(auth.check(Some(&basic("alice:wrong"))).await, Err(Failure::WrongPassword));
        assert_eq!(auth.check(Some(&basic("bob:secret"))).await, Err(Failure::UnknownUser));
        assert_eq!(auth.counters.checks(), (2, 0), "the unknown user cost a bcrypt too");
        assert_eq!(auth.check(Some(&basic("alice:secret"))).await, Ok(()));
        assert_eq!(auth.check(Some(&basic("alice:secret"))).await, Ok(()));
        assert_eq!(auth.counters.checks(), (3, 1), "the second good check came from the cache");
        assert_eq!(auth.check(Some(&basic("alice:secret2"))).await, Err(Failure::WrongPassword));
        assert_eq!(auth.check(Some(&basic("alice:secret"))).await, Ok(()), "a wrong try does not evict");
        assert!(Auth::new(&BTreeMap::new()).is_none());
    }
}
