//! `trace` for people: one aligned line per event; violations red, unanswered or failed
//! responses yellow (ANSI, only on a terminal unless --no-color).

use iopf_common::{
    dmar::{DmarEvent, bdf_name},
    iopf::{Config, Consts, Event, Level, Method, response_label},
    policy::{VERDICT_CHECKED, VIOLATIONS},
    vtd_report::ReportWalkEvent,
    walk::Stop,
};

use super::{clock::WallClock, perm_names};
use crate::iopf::maps::dev_str;

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

pub fn header() -> String {
    format!(
        "{:<15} {:<5} {:<14} {:>7} {:<18} {:<11} {:<20} {:<8} {:>10} {}\n",
        "TIME", "KIND", "DEVICE", "PASID", "ADDR", "ACCESS", "CONFIG/LEVEL", "RESPONSE", "SERVICE", "VERDICT"
    )
}

/// `-` (no policy checked it), `ok` or the violations, then the policy that checked it.
fn verdict(v: u32, policy_id: u32, policy: Option<&str>) -> String {
    if v & VERDICT_CHECKED == 0 {
        return "-".into();
    }
    let broken: Vec<&str> = VIOLATIONS.iter().filter(|(b, _)| v & b != 0).map(|(_, n)| *n).collect();
    let what = if broken.is_empty() { "ok".into() } else { broken.join(",") };
    match policy {
        Some(p) => format!("{what} ({p})"),
        None if policy_id != 0 => format!("{what} (policy #{policy_id})"),
        None => what,
    }
}

/// `12.3us`, `4.56ms`, `1.20s`.
fn duration(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

fn line(buf: &mut Vec<u8>, s: &str, color: Option<&str>) {
    match color {
        Some(c) => {
            buf.extend_from_slice(c.as_bytes());
            buf.extend_from_slice(s.trim_end().as_bytes());
            buf.extend_from_slice(RESET.as_bytes());
            buf.push(b'\n');
        }
        None => buf.extend_from_slice(s.as_bytes()),
    }
}

/// One line in the header's columns: time, kind, device, PASID, address, access,
/// configuration/level, response, service time, verdict.
#[allow(clippy::too_many_arguments)]
fn row(
    time: &str,
    kind: &str,
    device: &str,
    pasid: &str,
    addr: u64,
    access: &str,
    class: &str,
    response: &str,
    service: &str,
    verdict: &str,
) -> String {
    let addr = format!("{addr:#x}");
    format!(
        "{time:<15} {kind:<5} {device:<14} {pasid:>7} {addr:<18} {access:<11} {class:<20} {response:<8} {service:>10} {verdict}\n"
    )
}

pub fn iopf(buf: &mut Vec<u8>, e: &Event, consts: &Consts, clock: &WallClock, color: bool, policy: Option<&str>) {
    let pasid_valid = e.fault.flags & consts.flag_pasid_valid != 0;
    let pasid = if pasid_valid { e.fault.pasid.to_string() } else { "-".into() };
    let access: Vec<&str> = perm_names(e.fault.perm).collect();
    let cl = format!(
        "{}/{} ({})",
        Config::from_u8(e.config).label(),
        Level::from_u8(e.level).label(),
        Method::from_u8(e.method).label()
    );
    let resp = response_label(e.code);
    let s = row(
        &clock.time_of_day(e.report_ns),
        "iopf",
        &dev_str(&e.dev),
        &pasid,
        e.fault.addr,
        &if access.is_empty() { "-".into() } else { access.join(",") },
        &cl,
        resp,
        &duration(e.service_ns),
        &verdict(e.verdict, e.policy_id, policy),
    );
    let c = if !color {
        None
    } else if e.verdict & !VERDICT_CHECKED != 0 {
        Some(RED)
    } else if resp != "success" {
        Some(YELLOW)
    } else {
        None
    };
    line(buf, &s, c);
}

pub fn dmar(buf: &mut Vec<u8>, e: &DmarEvent, clock: &WallClock, color: bool, policy: Option<&str>) {
    let pasid = if e.pasid_present != 0 { e.pasid.to_string() } else { "-".into() };
    let s = row(
        &clock.time_of_day(e.ts_ns),
        "dmar",
        &dev_str(&bdf_name(e.segment, e.source_id)),
        &pasid,
        e.addr,
        if e.read != 0 { "read" } else { "write" },
        &format!("reason {:#04x}/{}", e.reason, Level::from_u8(e.level).label()),
        "-",
        "-",
        &verdict(e.verdict, e.policy_id, policy),
    );
    let c = if color && e.verdict & !VERDICT_CHECKED != 0 { Some(RED) } else { None };
    line(buf, &s, c);
}

/// An SMMUv3 event record (KIND `smmu`): the event and class with the stage its S2 bit gives
/// where the IOPF line has its configuration, then our walk's stage, table level and result
/// where it walked; the SubstreamID as the PASID when valid.
pub fn smmu(buf: &mut Vec<u8>, e: &iopf_common::smmu::SmmuEvent, clock: &WallClock, color: bool, policy: Option<&str>) {
    use iopf_common::smmu::{FLAG_RNW, FLAG_SSV, class_name, event_name};
    let pasid = if e.flags & FLAG_SSV != 0 { e.ssid.to_string() } else { "-".into() };
    let dev = dev_str(&e.dev);
    let dev = if dev.is_empty() { format!("sid:{:#x}", e.sid) } else { dev };
    let s = row(
        &clock.time_of_day(e.ts_ns),
        "smmu",
        &dev,
        &pasid,
        e.addr,
        if e.flags & FLAG_RNW != 0 { "read" } else { "write" },
        &format!("{}/{}/{}{}", event_name(e.id), class_name(e.class), Level::from_u8(e.level).label(), walked(&e.walk)),
        "-",
        "-",
        &verdict(e.verdict, e.policy_id, policy),
    );
    let c = if color && e.verdict & !VERDICT_CHECKED != 0 { Some(RED) } else { None };
    line(buf, &s, c);
}

/// ` walk first/L2 not_present` after the hardware's stage; empty when not walked.
fn walked(w: &iopf_common::walk::Walk) -> String {
    if Stop::from_u8(w.stop) == Stop::NotWalked { String::new() } else { format!(" walk {}", walk_class(w)) }
}

/// A walk's stage, table level and result: `first/L2 not_present` (`,no_permission` where the
/// translation lacks it).
fn walk_class(w: &iopf_common::walk::Walk) -> String {
    let perm = if w.permission != 0 { ",no_permission" } else { "" };
    format!("{}/L{} {}{perm}", w.classified_level().label(), w.level, Stop::from_u8(w.stop).label())
}

/// An AMD-Vi event log entry (KIND `amdvi`): the event and its flags where the IOPF line has
/// its configuration (no stage: the entry has none).
pub fn amdvi(
    buf: &mut Vec<u8>,
    e: &iopf_common::amdvi::AmdviEvent,
    clock: &WallClock,
    color: bool,
    policy: Option<&str>,
) {
    use iopf_common::amdvi::{FLAG_RW, event_name};
    let s = row(
        &clock.time_of_day(e.ts_ns),
        "amdvi",
        &dev_str(&e.dev),
        "-",
        e.addr,
        if e.flags & FLAG_RW != 0 { "write" } else { "read" },
        &format!("{}/{}", event_name(e.event), crate::amdvi::metrics::flag_label(e.flags)),
        "-",
        "-",
        &verdict(e.verdict, e.policy_id, policy),
    );
    let c = if color && e.verdict & !VERDICT_CHECKED != 0 { Some(RED) } else { None };
    line(buf, &s, c);
}

/// A walked page request (KIND `walk`): the walk's stage, table level and result where the
/// IOPF line has its configuration, its cost as the service time, and the verdict of its stage
/// against the device's policy (the fault's own `iopf` line follows when it is answered).
pub fn page_request(buf: &mut Vec<u8>, e: &ReportWalkEvent, clock: &WallClock, color: bool, policy: Option<&str>) {
    let pasid = if e.pasid_present != 0 { e.pasid.to_string() } else { "-".into() };
    let access: Vec<&str> = perm_names(e.perm).collect();
    let class = walk_class(&e.walk);
    let s = row(
        &clock.time_of_day(e.ts_ns),
        "walk",
        &dev_str(&bdf_name(e.segment, e.source_id)),
        &pasid,
        e.addr,
        &if access.is_empty() { "-".into() } else { access.join(",") },
        &class,
        "-",
        &duration(e.walk_ns),
        &verdict(e.verdict, e.policy_id, policy),
    );
    let c = if !color {
        None
    } else if e.verdict & !VERDICT_CHECKED != 0 {
        Some(RED)
    } else if Stop::from_u8(e.walk.stop) == Stop::ReadFailed {
        Some(YELLOW)
    } else {
        None
    };
    line(buf, &s, c);
}
