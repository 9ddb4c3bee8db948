//! The /metrics registry: sources read kernel maps at scrape time and produce families.
//! Names and labels are documented in README.md; labels are bounded sets.

use std::sync::{Arc, Mutex};

use iopf_common::{hist, pagefault::FaultKind};

use crate::{hooks::Plan, pagefault::PfMaps};

/// Something that produces metric families when scraped.
pub trait Source: Send + Sync {
    fn collect(&self, out: &mut Vec<Family>);
}

#[derive(Default, Clone)]
pub struct Registry {
    sources: Arc<Mutex<Vec<Box<dyn Source>>>>,
}

impl Registry {
    pub fn add(&self, s: impl Source + 'static) {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(s));
    }

    /// Every family the sources produce now, series or not: name, type, help, and the label
    /// names its series carry (`/metrics/families`, and docs/metrics.md from it).
    pub fn describe(&self) -> Vec<FamilyInfo> {
        let mut fams = Vec::new();
        for s in self.sources.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            s.collect(&mut fams);
        }
        fams.iter()
            .map(|f| {
                let mut labels: Vec<String> = f
                    .series
                    .iter()
                    .flat_map(|s| label_names(&s.labels))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if f.kind == Kind::Histogram && !f.series.is_empty() {
                    labels.push("le".into());
                }
                FamilyInfo { name: f.name, kind: f.kind.as_str(), help: f.help, labels }
            })
            .collect()
    }

    /// Renders every family in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_chunks(&mut |chunk| {
            out.push_str(&chunk);
            true
        });
        out
    }

    /// Renders every family, handing the text to `send` in chunks of about `CHUNK` bytes;
    /// stops early when `send` returns false (the client is gone).
    pub fn render_chunks(&self, send: &mut dyn FnMut(String) -> bool) {
        let mut fams = Vec::new();
        for s in self.sources.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            s.collect(&mut fams);
        }
        let mut out = String::with_capacity(CHUNK + CHUNK / 4);
        for f in &fams {
            if !f.encode(&mut out, &mut |buf| send(std::mem::replace(buf, String::with_capacity(CHUNK + CHUNK / 4)))) {
                return;
            }
        }
        if !out.is_empty() {
            send(out);
        }
    }
}

/// Bytes of exposition per chunk handed on: big enough that a 90 MB body is a few hundred
/// writes, small enough to stay in the allocator's reused heap (no fresh pages per scrape).
const CHUNK: usize = 256 * 1024;

/// What `/metrics/families` says of one family.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FamilyInfo {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub help: &'static str,
    pub labels: Vec<String>,
}

/// The label names of an already rendered `k="v",...` list (values may hold escaped quotes).
fn label_names(rendered: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = rendered.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let Some(eq) = rendered[i..].find("=\"") else { break };
        out.push(rendered[i..i + eq].trim_start_matches(',').to_owned());
        // Skip the quoted value.
        let mut j = i + eq + 2;
        while j < b.len() && b[j] != b'"' {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        i = j + 1;
    }
    out
}

/// Metric type, as the `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Box<hist::Histogram>),
}

/// One series: its labels and value.
#[derive(Debug, Clone)]
pub struct Series {
    /// `name="value",...` already escaped, without braces.
    labels: String,
    value: Value,
}

/// A metric family: name, help, type and series.
#[derive(Debug, Clone)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    series: Vec<Series>,
}

/// Label values may hold anything (device names come from the kernel): escape `\`, `"`
/// and newlines as the text format requires.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        escape_into(&mut s, v);
        s.push('"');
    }
    s
}

pub fn family(name: &'static str, help: &'static str, kind: Kind, series: Vec<Series>) -> Family {
    Family { name, help, kind, series }
}

pub fn counter(l: &[(&str, &str)], v: u64) -> Series {
    Series { labels: labels(l), value: Value::Counter(v) }
}

pub fn gauge(l: &[(&str, &str)], v: f64) -> Series {
    Series { labels: labels(l), value: Value::Gauge(v) }
}

/// A log2 nanosecond histogram, exported as a Prometheus histogram in seconds.
pub fn histogram(l: &[(&str, &str)], h: &hist::Histogram) -> Series {
    Series { labels: labels(l), value: Value::Histogram(Box::new(*h)) }
}

/// `le="…"` labels of the finite buckets, in seconds, formatted once; exponent form keeps the
/// exposition short (it is most of the bytes of a large scrape).
fn le_strings() -> &'static [String] {
    static LE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LE.get_or_init(|| {
        (0..hist::BUCKETS).filter_map(hist::upper_bound_ns).map(|ns| format!("le=\"{:e}\"", ns as f64 / 1e9)).collect()
    })
}

fn push_float(out: &mut String, v: f64) {
    use std::fmt::Write as _;
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

impl Family {
    /// Appends the family in the text format; a family with no series is left out (the
    /// format has no way to say "no series yet").
    /// `flush` takes the text so far once it passes `CHUNK` (between series); false from it
    /// stops the encoding, and `encode` returns false.
    fn encode(&self, out: &mut String, flush: &mut dyn FnMut(&mut String) -> bool) -> bool {
        if self.series.is_empty() {
            return true;
        }
        let name = self.name;
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        out.push_str(&self.help.replace('\\', "\\\\").replace('\n', "\\n"));
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(self.kind.as_str());
        out.push('\n');
        let mut num = itoa::Buffer::new();
        for s in &self.series {
            let sample = |out: &mut String, suffix: &str, extra: &str| {
                out.push_str(name);
                out.push_str(suffix);
                if !s.labels.is_empty() || !extra.is_empty() {
                    out.push('{');
                    out.push_str(&s.labels);
                    if !s.labels.is_empty() && !extra.is_empty() {
                        out.push(',');
                    }
                    out.push_str(extra);
                    out.push('}');
                }
                out.push(' ');
            };
            match &s.value {
                Value::Counter(v) => {
                    sample(out, "", "");
                    out.push_str(num.format(*v));
                }
                Value::Gauge(v) => {
                    sample(out, "", "");
                    push_float(out, *v);
                }
                Value::Histogram(h) => {
                    let mut cum = 0u64;
                    let les = le_strings();
                    for (i, n) in h.buckets.iter().enumerate() {
                        cum += n;
                        let Some(le) = les.get(i) else { break };
                        sample(out, "_bucket", le);
                        out.push_str(num.format(cum));
                        out.push('\n');
                    }
                    sample(out, "_bucket", "le=\"+Inf\"");
                    out.push_str(num.format(h.count));
                    out.push('\n');
                    sample(out, "_sum", "");
                    push_float(out, h.sum_ns as f64 / 1e9);
                    out.push('\n');
                    sample(out, "_count", "");
                    out.push_str(num.format(h.count));
                }
            }
            out.push('\n');
            if out.len() >= CHUNK && !flush(out) {
                return false;
            }
        }
        true
    }
}

/// Agent identity and the attach plan: which rung each hook is on.
pub struct PlanSource {
    pub kernel: String,
    pub plans: Vec<Plan>,
}

impl Source for PlanSource {
    fn collect(&self, out: &mut Vec<Family>) {
        out.push(family(
            "iopf_agent_info",
            "Agent build and the kernel it runs on.",
            Kind::Gauge,
            vec![gauge(&[("version", env!("CARGO_PKG_VERSION")), ("kernel", &self.kernel)], 1.0)],
        ));
        out.push(family(
            "iopf_hook_rung",
            "1 for the rung each hook is attached on after the attach attempt (unavailable when the kernel offers none or the attach failed).",
            Kind::Gauge,
            self.plans.iter().map(|p| gauge(&[("hook", p.name), ("rung", p.rung.as_str())], 1.0)).collect(),
        ));
        out.push(family(
            "iopf_hook_state",
            "1 for each hook's state: attached, failed (planned, the attach failed), absent (no rung on this kernel), unused (not needed by this run).",
            Kind::Gauge,
            self.plans.iter().map(|p| gauge(&[("hook", p.name), ("state", p.state.as_str())], 1.0)).collect(),
        ));
    }
}

/// CPU page-fault counters and latency, read from the per-CPU maps at scrape time.
pub struct PageFaultSource {
    pub maps: Mutex<PfMaps>,
    pub rung: &'static str,
}

impl Source for PageFaultSource {
    fn collect(&self, out: &mut Vec<Family>) {
        let snap = match self.maps.lock().unwrap_or_else(|p| p.into_inner()).snapshot() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("iopf-agent: page-fault maps unreadable: {}", crate::error::chain(&e));
                return;
            }
        };
        let rung = self.rung;
        out.push(family(
            "iopf_page_faults_total",
            "Completed CPU page faults of the traced tasks.",
            Kind::Counter,
            FaultKind::ALL
                .iter()
                .map(|k| counter(&[("kind", k.label()), ("rung", rung)], snap.stats.faults[*k as usize]))
                .collect(),
        ));
        out.push(family(
            "iopf_page_fault_latency_seconds",
            "CPU page-fault latency, fault entry to completion (log2 buckets).",
            Kind::Histogram,
            FaultKind::ALL
                .iter()
                .map(|k| histogram(&[("kind", k.label()), ("rung", rung)], &snap.hist[*k as usize]))
                .collect(),
        ));
        out.push(family(
            "iopf_page_fault_unmatched_total",
            "Fault entries without a completion (side=entry) and completions without an entry (side=exit).",
            Kind::Counter,
            vec![
                counter(&[("side", "entry")], snap.stats.entry_unmatched),
                counter(&[("side", "exit")], snap.stats.exit_unmatched),
            ],
        ));
        out.push(family(
            "iopf_page_fault_slow_path_total",
            "Faults whose entry left its CPU's slot: parked (another thread faulted on the CPU while this one slept in its fault) or migrated (found on another CPU at completion).",
            Kind::Counter,
            vec![
                counter(&[("path", "parked")], snap.stats.parked),
                counter(&[("path", "migrated")], snap.stats.migrated),
            ],
        ));
    }
}

#[cfg(test)]
mod describe_tests {
    #[test]
    fn label_names_survive_escaped_values() {
        let l = super::labels(&[("device", "a\"b,c=\"d"), ("policy", "p")]);
        assert_eq!(super::label_names(&l), ["device", "policy"]);
        assert!(super::label_names("").is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_escapes_labels_and_writes_cumulative_buckets() {
        let mut h = hist::Histogram::ZERO;
        h.record(1);
        h.record(3);
        h.record(1 << 45);
        let fams = vec![
            family("a_total", "A \\ b.", Kind::Counter, vec![counter(&[("device", "x\"y\\z\nw")], 42)]),
            family("empty_total", "Never shown.", Kind::Counter, vec![]),
            family("g", "G.", Kind::Gauge, vec![gauge(&[], 1.5)]),
            family("h_seconds", "H.", Kind::Histogram, vec![histogram(&[("k", "v")], &h)]),
        ];
        let mut out = String::new();
        for f in &fams {
            assert!(f.encode(&mut out, &mut |_| panic!("a few lines are one chunk")));
        }
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "# HELP a_total A \\\\ b.");
        assert_eq!(lines[1], "# TYPE a_total counter");
        assert_eq!(lines[2], "a_total{device=\"x\\\"y\\\\z\\nw\"} 42");
        assert_eq!(lines[3], "# HELP g G.");
        assert_eq!(lines[5], "g 1.5");
        assert!(!out.contains("empty_total"));
        assert_eq!(lines[8], "h_seconds_bucket{k=\"v\",le=\"1e-9\"} 1", "1 ns is in the first bucket");
        assert_eq!(lines[9], "h_seconds_bucket{k=\"v\",le=\"2e-9\"} 1");
        assert_eq!(lines[10], "h_seconds_bucket{k=\"v\",le=\"4e-9\"} 2", "3 ns: cumulative");
        let inf = lines.iter().position(|l| l.contains("le=\"+Inf\"")).unwrap();
        assert_eq!(inf, 8 + hist::BUCKETS - 1, "one line per finite bound, then +Inf");
        assert_eq!(lines[inf - 1], "h_seconds_bucket{k=\"v\",le=\"2.74877906944e2\"} 2", "2^38 ns");
        assert_eq!(lines[inf], "h_seconds_bucket{k=\"v\",le=\"+Inf\"} 3");
        assert!(lines[inf + 1].starts_with("h_seconds_sum{k=\"v\"} 35184.37"), "{}", lines[inf + 1]);
        assert_eq!(lines[inf + 2], "h_seconds_count{k=\"v\"} 3");
    }

    /// A source of `n` counters (each line about 40 bytes).
    struct Many(usize);
    impl Source for Many {
        fn collect(&self, out: &mut Vec<Family>) {
            let series = (0..self.0).map(|i| counter(&[("device", &format!("dev{i:06}"))], i as u64)).collect();
            out.push(family("many_total", "Many.", Kind::Counter, series));
        }
    }

    #[test]
    fn a_large_exposition_comes_in_chunks_that_add_up_and_stop_when_told() {
        let r = Registry::default();
        r.add(Many(30_000));
        let whole = r.render();
        assert_eq!(whole.lines().count(), 30_002);
        let mut chunks = Vec::new();
        r.render_chunks(&mut |c| {
            chunks.push(c);
            true
        });
        assert_eq!(chunks.concat(), whole);
        assert!(chunks.len() <= whole.len().div_ceil(CHUNK));
        assert!(chunks.len() > 1 && chunks[..chunks.len() - 1].iter().all(|c| c.len() >= CHUNK));
        // Every chunk ends at a line's end: no sample is split between writes.
        assert!(chunks.iter().all(|c| c.ends_with('\n')));
        let mut calls = 0;
        r.render_chunks(&mut |_| {
            calls += 1;
            false
        });
        assert_eq!(calls, 1, "a refused chunk ends the rendering");
    }
}
