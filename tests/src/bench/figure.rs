//! One benchmark figure as `target/bench/results.json` holds it, and the rule that gives its
//! verdict: a target is met only when the interval's bound on the bad side is within it
//! (for "<= X" the upper bound), missed when the whole interval is outside, unresolved when
//! it straddles the target.

use serde_json::{Value, json};

use super::stats::{Summary, summarize};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    Unresolved,
    /// No target.
    None,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "missed",
            Self::Unresolved => "unresolved",
            Self::None => "none",
        }
    }
}

pub fn verdict(s: &Summary, target: Option<Target>) -> Verdict {
    match target {
        None => Verdict::None,
        Some(Target::AtMost(x)) if s.ci_high <= x => Verdict::Met,
        Some(Target::AtMost(x)) if s.ci_low > x => Verdict::Missed,
        Some(Target::AtLeast(x)) if s.ci_low >= x => Verdict::Met,
        Some(Target::AtLeast(x)) if s.ci_high < x => Verdict::Missed,
        Some(_) => Verdict::Unresolved,
    }
}

/// Where a figure was taken.
#[derive(Clone, Debug)]
pub struct Context {
    pub kernel: String,
    /// The attach rung the measured programs ran on ("tracepoint", "fentry", "kprobe", or
    /// "none" where no hook is involved).
    pub rung: String,
    /// UTC date, YYYY-MM-DD.
    pub date: String,
}

impl Context {
    /// This machine's kernel and today's date.
    pub fn here(rung: &str) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        Self { kernel, rung: rung.to_owned(), date: utc_date() }
    }
}

/// Today (UTC) as YYYY-MM-DD, from the system clock.
pub fn utc_date() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d) = iopf_agent::trace::clock::civil((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A measured figure: its per-round values and what they summarise to.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub values: Vec<f64>,
    pub summary: Summary,
    pub target: Option<Target>,
    pub verdict: Verdict,
    pub context: Context,
    /// What the figure is, in a sentence (BENCHMARKS.md prints it).
    pub what: String,
}

impl Figure {
    pub fn new(name: &str, unit: &str, what: &str, values: Vec<f64>, target: Option<Target>, ctx: &Context) -> Self {
        let summary = summarize(&values);
        Self {
            name: name.into(),
            unit: unit.into(),
            verdict: verdict(&summary, target),
            values,
            summary,
            target,
            context: ctx.clone(),
            what: what.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        let s = &self.summary;
        let target = self.target.map(|t| match t {
            Target::AtMost(x) => json!({"op": "<=", "value": x}),
            Target::AtLeast(x) => json!({"op": ">=", "value": x}),
        });
        json!({
            "name": self.name, "unit": self.unit, "median": s.median, "ci_low": s.ci_low,
            "ci_high": s.ci_high, "min": s.min, "max": s.max, "rounds": s.rounds,
            "target": target, "verdict": self.verdict.label(),
            "kernel": self.context.kernel, "rung": self.context.rung, "date": self.context.date,
            "what": self.what, "values": self.values,
        })
    }

    /// One line for the terminal.
    pub fn line(&self) -> String {
        let s = &self.summary;
        let t = match self.target {
            None => String::new(),
            Some(Target::AtMost(x)) => format!("<= {x}"),
            Some(Target::AtLeast(x)) => format!(">= {x}"),
        };
        format!(
            "{:<34} {:>12.3} [{:.3}, {:.3}] range {:.3}..{:.3} n={} {} {} {}",
            self.name,
            s.median,
            s.ci_low,
            s.ci_high,
            s.min,
            s.max,
            s.rounds,
            self.unit,
            t,
            self.verdict.label()
        )
    }
}

/// Merges `figures` into the results file at `path`: figures of the same name are replaced,
/// others kept (so `--only` runs and the VM's figures add to one file).
pub fn merge_into(path: &std::path::Path, figures: &[Figure]) -> std::io::Result<()> {
    merge_json(path, &figures.iter().map(Figure::to_json).collect::<Vec<_>>())
}

/// As `merge_into`, for figures already in their JSON form (objects with a `name`).
pub fn merge_json(path: &std::path::Path, figures: &[Value]) -> std::io::Result<()> {
    let mut all: Vec<Value> = match std::fs::read(path) {
        Ok(b) => serde_json::from_slice::<Vec<Value>>(&b).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    for f in figures.iter().filter(|f| f["name"].is_string()) {
        all.retain(|v| v["name"] != f["name"]);
        all.push(f.clone());
    }
    all.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(&all)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(lo: f64, hi: f64) -> Summary {
        Summary { median: (lo + hi) / 2.0, ci_low: lo, ci_high: hi, min: lo, max: hi, rounds: 15 }
    }

    #[test]
    fn at_most_targets() {
        let t = Some(Target::AtMost(1.25));
        assert_eq!(verdict(&s(1.0, 1.25), t), Verdict::Met);
        assert_eq!(verdict(&s(1.2, 1.3), t), Verdict::Unresolved);
        assert_eq!(verdict(&s(1.25, 1.3), t), Verdict::Unresolved);
        assert_eq!(verdict(&s(1.26, 1.3), t), Verdict::Missed);
    }

    #[test]
    fn at_least_targets() {
        let t = Some(Target::AtLeast(1e6));
        assert_eq!(verdict(&s(1e6, 2e6), t), Verdict::Met);
        assert_eq!(verdict(&s(0.9e6, 1.1e6), t), Verdict::Unresolved);
        assert_eq!(verdict(&s(0.5e6, 0.9e6), t), Verdict::Missed);
        assert_eq!(verdict(&s(0.5e6, 0.9e6), None), Verdict::None);
    }

    #[test]
    fn dates() {
        assert_eq!(iopf_agent::trace::clock::civil(0), (1970, 1, 1));
        assert_eq!(iopf_agent::trace::clock::civil(20_423), (2025, 12, 1));
        assert_eq!(iopf_agent::trace::clock::civil(11_016), (2000, 2, 29));
    }

    #[test]
    fn merge_replaces_by_name() {
        let dir = std::env::temp_dir().join(format!("iopf-fig-{}", std::process::id()));
        let path = dir.join("results.json");
        let ctx = Context { kernel: "k".into(), rung: "none".into(), date: "2026-12-02".into() };
        let a = Figure::new("a", "ns", "A", vec![1.0], None, &ctx);
        let b = Figure::new("b", "ns", "B", vec![2.0], Some(Target::AtMost(3.0)), &ctx);
        merge_into(&path, &[a, b]).unwrap();
        let a2 = Figure::new("a", "ns", "A", vec![5.0], None, &ctx);
        merge_into(&path, &[a2]).unwrap();
        let v: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0]["name"].as_str(), v[0]["median"].as_f64()), (Some("a"), Some(5.0)));
        assert_eq!((v[1]["verdict"].as_str(), v[1]["target"]["op"].as_str()), (Some("met"), Some("<=")));
        for k in ["unit", "ci_low", "ci_high", "min", "max", "rounds", "kernel", "rung", "date"] {
            assert!(!v[1][k].is_null(), "{k} present");
        }
    }
}
