//! The /metrics registry: sources read kernel maps at scrape time and produce families.
//! Names and labels are documented in README.md; labels are bounded sets.

use std::sync::{Arc, Mutex};

use iopf_common::{hist, pagefault::FaultKind};
use prometheus::{
    Encoder as _, TextEncoder,
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{hooks::Plan, pagefault::PfMaps};

/// Something that produces metric families when scraped.
pub trait Source: Send + Sync {
    fn collect(&self, out: &mut Vec<MetricFamily>);
}

#[derive(Default, Clone)]
pub struct Registry {
    sources: Arc<Mutex<Vec<Box<dyn Source>>>>,
}

impl Registry {
    pub fn add(&self, s: impl Source + 'static) {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(s));
    }

    /// Renders every family in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut fams = Vec::new();
        for s in self.sources.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            s.collect(&mut fams);
        }
        // The text format has no way to say "a family with no series yet": leave it out.
        fams.retain(|f| !f.get_metric().is_empty());
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid families, which we never build.
        if let Err(e) = TextEncoder::new().encode(&fams, &mut buf) {
            return format!("# encoding error: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

pub fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

pub fn counter(l: &[(&str, &str)], v: u64) -> Metric {
    let mut m = Metric::default();
    m.set_label(labels(l));
    let mut c = Counter::default();
    c.set_value(v as f64);
    m.set_counter(c);
    m
}

pub fn gauge(l: &[(&str, &str)], v: f64) -> Metric {
    let mut m = Metric::default();
    m.set_label(labels(l));
    let mut g = Gauge::default();
    g.set_value(v);
    m.set_gauge(g);
    m
}

/// A log2 nanosecond histogram as a Prometheus histogram in seconds.
pub fn histogram(l: &[(&str, &str)], h: &hist::Histogram) -> Metric {
    let mut m = Metric::default();
    m.set_label(labels(l));
    let mut ph = Histogram::default();
    let mut cum = 0;
    let mut buckets = Vec::new();
    for (i, n) in h.buckets.iter().enumerate() {
        cum += n;
        if let Some(ub) = hist::upper_bound_ns(i) {
            let mut b = Bucket::default();
            b.set_upper_bound(ub as f64 / 1e9);
            b.set_cumulative_count(cum);
            buckets.push(b);
        }
    }
    ph.set_bucket(buckets);
    ph.set_sample_count(h.count);
    ph.set_sample_sum(h.sum_ns as f64 / 1e9);
    m.set_histogram(ph);
    m
}

/// Agent identity and the attach plan: which rung each hook is on.
pub struct PlanSource {
    pub kernel: String,
    pub plans: Vec<Plan>,
}

impl Source for PlanSource {
    fn collect(&self, out: &mut Vec<MetricFamily>) {
        out.push(family(
            "iopf_agent_info",
            "Agent build and the kernel it runs on.",
            MetricType::GAUGE,
            vec![gauge(&[("version", env!("CARGO_PKG_VERSION")), ("kernel", &self.kernel)], 1.0)],
        ));
        out.push(family(
            "iopf_hook_rung",
            "1 for the attach rung each hook is on (unavailable when it cannot attach).",
            MetricType::GAUGE,
            self.plans.iter().map(|p| gauge(&[("hook", p.name), ("rung", p.rung.as_str())], 1.0)).collect(),
        ));
    }
}

/// CPU page-fault counters and latency, read from the per-CPU maps at scrape time.
pub struct PageFaultSource {
    pub maps: Mutex<PfMaps>,
    pub rung: &'static str,
}

impl Source for PageFaultSource {
    fn collect(&self, out: &mut Vec<MetricFamily>) {
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
            MetricType::COUNTER,
            FaultKind::ALL
                .iter()
                .map(|k| counter(&[("kind", k.label()), ("rung", rung)], snap.stats.faults[*k as usize]))
                .collect(),
        ));
        out.push(family(
            "iopf_page_fault_latency_seconds",
            "CPU page-fault latency, fault entry to completion (log2 buckets).",
            MetricType::HISTOGRAM,
            FaultKind::ALL
                .iter()
                .map(|k| histogram(&[("kind", k.label()), ("rung", rung)], &snap.hist[*k as usize]))
                .collect(),
        ));
        out.push(family(
            "iopf_page_fault_unmatched_total",
            "Fault entries without a completion (side=entry) and completions without an entry (side=exit).",
            MetricType::COUNTER,
            vec![
                counter(&[("side", "entry")], snap.stats.entry_unmatched),
                counter(&[("side", "exit")], snap.stats.exit_unmatched),
            ],
        ));
        out.push(family(
            "iopf_page_fault_slow_path_total",
            "Faults whose entry left its CPU's slot: parked (another thread faulted on the CPU while this one slept in its fault) or migrated (found on another CPU at completion).",
            MetricType::COUNTER,
            vec![
                counter(&[("path", "parked")], snap.stats.parked),
                counter(&[("path", "migrated")], snap.stats.migrated),
            ],
        ));
    }
}
