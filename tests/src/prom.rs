//! Scraping and parsing the Prometheus text exposition format (what a scraper sees).

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// family name -> type from `# TYPE`.
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// Parses the text format; panics with the offending line on malformed input.
    pub fn parse(text: &str) -> Self {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    e.types.insert(n.to_owned(), t.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            e.samples.push(parse_sample(line).unwrap_or_else(|| panic!("malformed exposition line: {line:?}")));
        }
        e
    }

    /// The single sample `name` whose labels include all of `want`.
    pub fn get(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| {
            s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|got| label_eq(k, got, v)))
        });
        let first = found.next()?;
        assert!(found.next().is_none(), "more than one {name} sample matches {want:?}");
        Some(first.value)
    }

    /// The sum of every `name` sample whose labels include `want`.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|got| label_eq(k, got, v)))
            })
            .map(|s| s.value)
            .sum()
    }

    pub fn value(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.get(name, want).unwrap_or_else(|| panic!("no sample {name}{want:?} in the scrape"))
    }
}

/// Label equality; `le` bounds compare as numbers, as Prometheus reads them ("1e-9" and
/// "0.000000001" are the same bound).
fn label_eq(key: &str, got: &str, want: &str) -> bool {
    if key == "le"
        && let (Ok(a), Ok(b)) = (got.parse::<f64>(), want.parse::<f64>())
    {
        return a == b;
    }
    got == want
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        None => (head.to_owned(), BTreeMap::new()),
        Some((n, rest)) => {
            let body = rest.strip_suffix('}')?;
            let mut labels = BTreeMap::new();
            let mut s = body;
            while !s.is_empty() {
                let (k, r) = s.split_once("=\"")?;
                // Values produced by us never contain escaped quotes; find the closing one.
                let end = r.find('"')?;
                labels.insert(k.trim_start_matches(',').to_owned(), r[..end].to_owned());
                s = r[end + 1..].trim_start_matches(',');
            }
            (n.to_owned(), labels)
        }
    };
    Some(Sample { name, labels, value })
}

/// HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Debian's `prometheus` package binary (scripts/bootstrap.sh installs it).
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A real Prometheus with `config` (YAML), its data in `dir`, serving its API on a free
/// loopback port; stopped when dropped.
pub struct Prometheus {
    child: std::process::Child,
    pub web: SocketAddr,
}

impl Prometheus {
    pub fn start(dir: &std::path::Path, config: &str) -> Self {
        assert!(
            std::path::Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} missing: install Debian's `prometheus` package (scripts/bootstrap.sh does)"
        );
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write prometheus.yml");
        let web = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let child = std::process::Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus");
        Self { child, web }
    }

    /// GET an API path, parsed as JSON (`Null` when unreachable or not JSON).
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (_, body) = http_get(self.web, path).unwrap_or_default();
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }

    /// Instant query, the whole response.
    pub fn query(&self, q: &str) -> serde_json::Value {
        self.api(&format!("/api/v1/query?query={}", url_encode(q)))
    }

    /// Instant query: the single result's value when there is exactly one series.
    pub fn query_one(&self, q: &str) -> Option<f64> {
        let v = self.query(q);
        let res = v["data"]["result"].as_array()?;
        if res.len() != 1 {
            return None;
        }
        res[0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query string value.
pub fn url_encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_values_and_types() {
        let e = Exposition::parse(
            "# HELP a_total x\n# TYPE a_total counter\na_total{kind=\"minor\",rung=\"tracepoint\"} 42\nb 1.5\nc_bucket{le=\"+Inf\"} 7\n",
        );
        assert_eq!(e.value("a_total", &[("kind", "minor")]), 42.0);
        assert_eq!(e.value("b", &[]), 1.5);
        assert_eq!(e.value("c_bucket", &[("le", "+Inf")]), 7.0);
        assert_eq!(e.types["a_total"], "counter");
        assert_eq!(e.get("a_total", &[("kind", "major")]), None);
        let d = Exposition::parse("d_bucket{le=\"1.024e-6\"} 3\n");
        assert_eq!(d.value("d_bucket", &[("le", "0.000001024")]), 3.0, "bounds compare as numbers");
    }
}
