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
