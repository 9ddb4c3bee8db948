//! Violations out of ring-buffer records (IOPF events, VT-d fault records and walked page
//! requests, SMMUv3 event records, AMD-Vi event log entries).

use iopf_common::{
    dmar::{DmarEvent, bdf_name},
    iopf::{Consts, Event},
    policy::{NO_PASID, VERDICT_CHECKED, VIOLATIONS, fault_pasid},
};

use super::dispatch::Violation;
use crate::iopf::{maps::dev_str, ndjson};

/// The violation an IOPF event records, if any.
pub fn from_event(e: &Event, consts: &Consts) -> Option<Violation> {
    let names = names(e.verdict)?;
    let mut buf = Vec::with_capacity(512);
    ndjson::write_event(&mut buf, e, consts, None);
    let pasid = fault_pasid(&e.fault, consts.flag_pasid_valid);
    Some(Violation { device: dev_str(&e.dev), pasid, policy_id: e.policy_id, violations: names, event: object(buf) })
}

/// A violation of a fault checked without a PASID scope (unrecoverable faults and walked
/// page requests: the kernel side's rule), its event line written by `line`.
fn unscoped(dev: &[u8], verdict: u32, policy_id: u32, line: impl FnOnce(&mut Vec<u8>)) -> Option<Violation> {
    let names = names(verdict)?;
    let mut buf = Vec::with_capacity(512);
    line(&mut buf);
    Some(Violation { device: dev_str(dev), pasid: NO_PASID, policy_id, violations: names, event: object(buf) })
}

/// The violation a walked page request carries, if any: its stage against the device's
/// levels.
pub fn from_page_request(e: &iopf_common::vtd_report::ReportWalkEvent) -> Option<Violation> {
    unscoped(&bdf_name(e.segment, e.source_id), e.verdict, e.policy_id, |b| {
        crate::vtd::ndjson::write_page_request(b, e, None)
    })
}

/// The violation a VT-d fault record carries, if any.
pub fn from_dmar(e: &DmarEvent) -> Option<Violation> {
    unscoped(&bdf_name(e.segment, e.source_id), e.verdict, e.policy_id, |b| crate::vtd::ndjson::write_dmar(b, e, None))
}

/// The violation an AMD-Vi event log entry carries, if any.
pub fn from_amdvi(e: &iopf_common::amdvi::AmdviEvent) -> Option<Violation> {
    unscoped(&e.dev, e.verdict, e.policy_id, |b| crate::amdvi::ndjson::write_amdvi(b, e, None))
}

/// The violation an SMMUv3 event record carries, if any.
pub fn from_smmu(e: &iopf_common::smmu::SmmuEvent) -> Option<Violation> {
    unscoped(&e.dev, e.verdict, e.policy_id, |b| crate::smmu::ndjson::write_smmu(b, e, None))
}

fn names(verdict: u32) -> Option<Vec<&'static str>> {
    if verdict & !VERDICT_CHECKED == 0 {
        return None;
    }
    Some(VIOLATIONS.iter().filter(|(bit, _)| verdict & bit != 0).map(|(_, n)| *n).collect())
}

/// An NDJSON line as one JSON value (the renderer's output is ASCII JSON).
fn object(mut line: Vec<u8>) -> String {
    while line.last() == Some(&b'\n') {
        line.pop();
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[cfg(test)]
mod tests {
    use iopf_common::policy::{VIOLATION_LEVEL, VIOLATION_UNRECOVERABLE};

    use super::*;

    fn dmar(verdict: u32) -> DmarEvent {
        // SAFETY: DmarEvent is plain integers (and a Pod walk record): all-zero is valid.
        let mut e: DmarEvent = unsafe { std::mem::zeroed() };
        e.source_id = 0x18;
        e.verdict = verdict;
        e
    }

    #[test]
    fn only_violating_records_become_violations() {
        assert!(from_dmar(&dmar(0)).is_none());
        assert!(from_dmar(&dmar(VERDICT_CHECKED)).is_none());
        let v = from_dmar(&dmar(VERDICT_CHECKED | VIOLATION_LEVEL | VIOLATION_UNRECOVERABLE)).unwrap();
        assert_eq!(v.device, "0000:00:03.0");
        assert_eq!(v.violations, ["level", "unrecoverable"]);
        let parsed: serde_json::Value = serde_json::from_str(&v.event).unwrap();
        assert_eq!((parsed["kind"].as_str(), parsed["device"].as_str()), (Some("dmar_fault"), Some("0000:00:03.0")));
    }
}
