//! `trace --json`: one JSON object per line, schema `iopf.dev/trace/v1`: the event stream's
//! object (README, "Event stream") with `schema` and `time` first, and the bit fields named.

use iopf_common::{dmar::DmarEvent, iopf::Consts, iopf::Event, vtd_report::ReportWalkEvent};

use super::{clock::WallClock, flag_names, perm_names};

pub const SCHEMA: &str = "iopf.dev/trace/v1";

/// Moves a rendered event object (`{...}\n`) into `buf` behind our leading fields.
fn splice(buf: &mut Vec<u8>, lead: &str, rendered: &[u8]) {
    buf.push(b'{');
    buf.extend_from_slice(lead.as_bytes());
    buf.push(b',');
    buf.extend_from_slice(&rendered[1..]);
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = it.map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", v.join(","))
}

pub fn iopf(buf: &mut Vec<u8>, e: &Event, consts: &Consts, clock: &WallClock, policy: Option<&str>) {
    let mut r = Vec::with_capacity(512);
    crate::iopf::ndjson::write_event(&mut r, e, consts, policy);
    let lead = format!(
        "\"schema\":\"{SCHEMA}\",\"time\":\"{}\",\"perm_names\":{},\"flag_names\":{}",
        clock.rfc3339(e.report_ns),
        names(perm_names(e.fault.perm)),
        names(flag_names(e.fault.flags, consts).into_iter())
    );
    splice(buf, &lead, &r);
}

pub fn dmar(buf: &mut Vec<u8>, e: &DmarEvent, clock: &WallClock, policy: Option<&str>) {
    let mut r = Vec::with_capacity(512);
    crate::vtd::ndjson::write_dmar(&mut r, e, policy);
    let lead = format!("\"schema\":\"{SCHEMA}\",\"time\":\"{}\"", clock.rfc3339(e.ts_ns));
    splice(buf, &lead, &r);
}

pub fn page_request(buf: &mut Vec<u8>, e: &ReportWalkEvent, clock: &WallClock, policy: Option<&str>) {
    let mut r = Vec::with_capacity(512);
    crate::vtd::ndjson::write_page_request(&mut r, e, policy);
    let lead = format!(
        "\"schema\":\"{SCHEMA}\",\"time\":\"{}\",\"perm_names\":{}",
        clock.rfc3339(e.ts_ns),
        names(perm_names(e.perm))
    );
    splice(buf, &lead, &r);
}

pub fn amdvi(buf: &mut Vec<u8>, e: &iopf_common::amdvi::AmdviEvent, clock: &WallClock, policy: Option<&str>) {
    let mut r = Vec::with_capacity(512);
    crate::amdvi::ndjson::write_amdvi(&mut r, e, policy);
    let lead = format!("\"schema\":\"{SCHEMA}\",\"time\":\"{}\"", clock.rfc3339(e.ts_ns));
    splice(buf, &lead, &r);
}

pub fn smmu(buf: &mut Vec<u8>, e: &iopf_common::smmu::SmmuEvent, clock: &WallClock, policy: Option<&str>) {
    let mut r = Vec::with_capacity(512);
    crate::smmu::ndjson::write_smmu(&mut r, e, policy);
    let lead = format!("\"schema\":\"{SCHEMA}\",\"time\":\"{}\"", clock.rfc3339(e.ts_ns));
    splice(buf, &lead, &r);
}
