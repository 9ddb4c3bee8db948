//! `iopf-agent replay FILE`: a recording through the trace renderers, and a summary per
//! device of what it holds (faults, responses, VT-d records, SMMUv3 records, AMD-Vi entries,
//! violations).

use std::{collections::BTreeMap, io::Write as _, path::Path};

use iopf_common::{
    dmar::bdf_name,
    iopf::response_label,
    policy::{VERDICT_CHECKED, VIOLATIONS},
};

use super::{Reader, Record};
use crate::{
    error::AgentError,
    iopf::maps::dev_str,
    kabi::iopf::CURRENT_CONSTS,
    trace::{Filter, Format, TraceOutput, clock::WallClock},
};

/// Per device: IOPF faults, by response, VT-d records, SMMUv3 records, AMD-Vi entries, by
/// violation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    pub faults: u64,
    pub responses: BTreeMap<&'static str, u64>,
    pub dmar: u64,
    pub smmu: u64,
    pub amdvi: u64,
    pub violations: BTreeMap<&'static str, u64>,
}

pub type Summary = BTreeMap<String, DeviceSummary>;

fn add_violations(s: &mut DeviceSummary, verdict: u32) {
    if verdict & !VERDICT_CHECKED == 0 {
        return;
    }
    for (bit, n) in VIOLATIONS {
        if verdict & bit != 0 {
            *s.violations.entry(n).or_default() += 1;
        }
    }
}

pub fn summarize(summary: &mut Summary, r: &Record) {
    match r {
        Record::Iopf(e) => {
            let s = summary.entry(dev_str(&e.dev)).or_default();
            s.faults += 1;
            *s.responses.entry(response_label(e.code)).or_default() += 1;
            add_violations(s, e.verdict);
        }
        Record::Dmar(e) => {
            let s = summary.entry(dev_str(&bdf_name(e.segment, e.source_id))).or_default();
            s.dmar += 1;
            add_violations(s, e.verdict);
        }
        // The fault itself is its IOPF record's; the walk adds only its stage's verdict.
        Record::PageRequest(e) => {
            let s = summary.entry(dev_str(&bdf_name(e.segment, e.source_id))).or_default();
            add_violations(s, e.verdict);
        }
        Record::Smmu(e) => {
            let s = summary.entry(dev_str(&e.dev)).or_default();
            s.smmu += 1;
            add_violations(s, e.verdict);
        }
        Record::Amdvi(e) => {
            let s = summary.entry(dev_str(&e.dev)).or_default();
            s.amdvi += 1;
            add_violations(s, e.verdict);
        }
    }
}

pub fn write_summary(out: &mut impl std::io::Write, summary: &Summary) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6}  violations",
        "device", "faults", "success", "invalid", "failure", "none", "dmar", "smmu", "amdvi"
    )?;
    for (dev, s) in summary {
        let r = |k: &str| s.responses.get(k).copied().unwrap_or(0);
        let v: Vec<String> = s.violations.iter().map(|(k, n)| format!("{k}={n}")).collect();
        writeln!(
            out,
            "{dev:<20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6}  {}",
            s.faults,
            r("success"),
            r("invalid"),
            r("failure"),
            r("none"),
            s.dmar,
            s.smmu,
            s.amdvi,
            if v.is_empty() { "-".into() } else { v.join(" ") }
        )?;
    }
    Ok(())
}

/// Prints the recording's events (unless `summary_only`) and then its summary.
pub fn run(path: &Path, format: Format, summary_only: bool) -> Result<(), AgentError> {
    let mut reader = Reader::open(path)?;
    let h = reader.header.clone();
    let attached = h.hooks.iter().filter(|p| p.state == "attached").count();
    eprintln!(
        "iopf-agent: recording {}: agent {}, kernel {}, {} source, started {}, {attached} of {} hooks attached",
        path.display(),
        h.agent_version,
        h.kernel,
        h.source,
        h.started,
        h.hooks.len()
    );
    let consts = h.consts.apply(CURRENT_CONSTS);
    let t = TraceOutput {
        format,
        filter: Filter::default(),
        clock: WallClock::with_offset(h.clock_offset_ns.into()),
        policies: crate::policy::PolicyNames::from_pairs(h.policies.clone()),
    };
    let mut out = std::io::stdout().lock();
    let mut summary = Summary::new();
    let mut buf = Vec::with_capacity(1 << 16);
    if !summary_only && let Some(head) = t.header() {
        buf.extend_from_slice(head.as_bytes());
    }
    let mut n = 0u64;
    while let Some(r) = reader.next_record()? {
        n += 1;
        summarize(&mut summary, &r);
        if summary_only {
            continue;
        }
        match &r {
            Record::Iopf(e) => t.iopf(&mut buf, e, &consts),
            Record::Dmar(e) => t.dmar(&mut buf, e),
            Record::PageRequest(e) => t.page_request(&mut buf, e),
            Record::Smmu(e) => t.smmu(&mut buf, e),
            Record::Amdvi(e) => t.amdvi(&mut buf, e),
        }
        if buf.len() > 1 << 15 {
            if let Err(e) = out.write_all(&buf) {
                return quiet(e);
            }
            buf.clear();
        }
    }
    if let Err(e) = out.write_all(&buf) {
        return quiet(e);
    }
    drop(out);
    let mut table = Vec::new();
    let _ = writeln!(table, "{n} records");
    let _ = write_summary(&mut table, &summary);
    let r = if summary_only {
        std::io::stdout().lock().write_all(&table)
    } else {
        std::io::stderr().lock().write_all(&table)
    };
    r.or_else(quiet)
}

/// A reader that went away is not an error.
fn quiet(e: std::io::Error) -> Result<(), AgentError> {
    if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e.into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smmu_and_amdvi_records_count_in_their_columns() {
        // SAFETY: plain integers and byte arrays: all-zero is valid.
        let mut s: iopf_common::smmu::SmmuEvent = unsafe { std::mem::zeroed() };
        s.dev[..12].copy_from_slice(b"0000:00:01.0");
        s.verdict = VERDICT_CHECKED | iopf_common::policy::VIOLATION_UNRECOVERABLE;
        // SAFETY: as above.
        let mut a: iopf_common::amdvi::AmdviEvent = unsafe { std::mem::zeroed() };
        a.dev[..12].copy_from_slice(b"0000:00:04.0");
        let mut sum = Summary::new();
        for r in [Record::Smmu(s), Record::Smmu(s), Record::Amdvi(a)] {
            summarize(&mut sum, &r);
        }
        let mut out = Vec::new();
        write_summary(&mut out, &sum).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "device                 faults  success  invalid  failure     none   dmar   smmu  amdvi  violations\n\
             0000:00:01.0                0        0        0        0        0      0      2      0  unrecoverable=2\n\
             0000:00:04.0                0        0        0        0        0      0      0      1  -\n"
        );
    }
}
