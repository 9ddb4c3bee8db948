use iopf_common::{
    dmar::DmarEvent,
    iopf::{Config, Event, Level, Method, RESP_INVALID, RESP_SUCCESS},
    policy::{VERDICT_CHECKED, VIOLATION_CODE},
};
use serde_json::json;

use super::{Filter, Format, TraceOutput, clock::WallClock, filter::Kind};
use crate::{iopf::maps::dev_bytes, kabi::iopf::CURRENT_CONSTS};

/// 2026-12-02T04:46:10Z at monotonic 0.
const OFFSET: i128 = 1_796_186_770_000_000_000;

fn event(dev: &str, pasid: u32, code: u8, service_ns: u64, verdict: u32) -> Event {
    // SAFETY: Event is plain integers and byte arrays; all-zero is a valid value.
    let mut e: Event = unsafe { std::mem::zeroed() };
    e.dev = dev_bytes(dev);
    e.fault.pasid = pasid;
    e.fault.flags = CURRENT_CONSTS.flag_pasid_valid | CURRENT_CONSTS.flag_last_page;
    e.fault.perm = 1 | 2;
    e.fault.addr = 0xdead_0000;
    e.fault.grpid = 7;
    e.config = Config::Nested as u8;
    e.level = Level::First as u8;
    e.method = Method::Domain as u8;
    e.code = code;
    e.report_ns = 1_500_000_000;
    e.service_ns = service_ns;
    e.verdict = verdict;
    e
}

fn dmar() -> DmarEvent {
    // SAFETY: plain integers (and a Pod walk record): all-zero is valid.
    let mut e: DmarEvent = unsafe { std::mem::zeroed() };
    e.source_id = 0x18;
    e.addr = 0x123000;
    e.reason = 0x06;
    e.read = 1;
    e.level = Level::Second as u8;
    e.ts_ns = 2_000_000_000;
    e
}

fn out(format: Format, filter: Filter) -> TraceOutput {
    TraceOutput {
        format,
        filter,
        clock: WallClock::with_offset(OFFSET),
        policies: crate::policy::PolicyNames::default(),
    }
}

fn render_iopf(t: &TraceOutput, e: &Event) -> String {
    let mut b = Vec::new();
    t.iopf(&mut b, e, &CURRENT_CONSTS);
    String::from_utf8(b).unwrap()
}

#[test]
fn json_lines_lead_with_schema_time_and_bit_names() {
    let t = out(Format::Json, Filter::default());
    let line = render_iopf(&t, &event("0000:6a:01.0", 3, RESP_SUCCESS, 42_000, VERDICT_CHECKED));
    assert!(
        line.starts_with("{\"schema\":\"iopf.dev/trace/v1\",\"time\":\"2026-12-02T04:46:11.500000000Z\","),
        "{line}"
    );
    assert!(line.ends_with("}\n"));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["perm_names"], json!(["read", "write"]));
    assert_eq!(v["flag_names"], json!(["pasid_valid", "last_page"]));
    assert_eq!(
        (v["kind"].as_str(), v["device"].as_str(), v["pasid"].as_u64()),
        (Some("iopf"), Some("0000:6a:01.0"), Some(3))
    );
    assert_eq!((v["service_ns"].as_u64(), v["response"].as_str()), (Some(42_000), Some("success")));
    let mut b = Vec::new();
    t.dmar(&mut b, &dmar());
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        (v["schema"].as_str(), v["time"].as_str(), v["kind"].as_str(), v["device"].as_str(), v["reason"].as_str()),
        (
            Some("iopf.dev/trace/v1"),
            Some("2026-12-02T04:46:12.000000000Z"),
            Some("dmar_fault"),
            Some("0000:00:03.0"),
            Some("0x06")
        )
    );
}

#[test]
fn human_lines_are_columns_and_violations_are_red_only_with_colour() {
    let e = event("0000:6a:01.0", 3, RESP_INVALID, 42_000, VERDICT_CHECKED | VIOLATION_CODE);
    let plain = render_iopf(&out(Format::Human { color: false }, Filter::default()), &e);
    assert_eq!(
        plain,
        "04:46:11.500000 iopf  0000:6a:01.0         3 0xdead0000         read,write  nested/first (domain) invalid      42.0us response_code\n"
    );
    let red = render_iopf(&out(Format::Human { color: true }, Filter::default()), &e);
    assert_eq!(red, format!("\x1b[31m{}\x1b[0m\n", plain.trim_end()));
    let mut b = Vec::new();
    out(Format::Human { color: false }, Filter::default()).dmar(&mut b, &dmar());
    assert_eq!(
        String::from_utf8(b).unwrap(),
        "04:46:12.000000 dmar  0000:00:03.0         - 0x123000           read        reason 0x06/second   -                 - -\n"
    );
}

/// The policy that checked a fault is named in every format, from the id the event carries;
/// an id whose name is not known here is shown as the id.
#[test]
fn the_checking_policy_is_named_by_the_id_the_event_carries() {
    let mut ids = crate::policy::PolicyIds::default();
    let mut set = crate::policy::PolicySet::parse(
        "p.yaml".as_ref(),
        &crate::policy::tests::policy("sva-tenant-a", "{name: \"0000:6a:01.0\"}"),
    )
    .unwrap();
    set.assign_ids(&mut ids);
    let id = set.policies()[0].rule().policy_id;
    let mut t = out(Format::Human { color: false }, Filter::default());
    t.policies = crate::policy::PolicyNames::of(&ids);
    let e = Event { policy_id: id, ..event("0000:6a:01.0", 3, RESP_INVALID, 42_000, VERDICT_CHECKED | VIOLATION_CODE) };
    assert!(render_iopf(&t, &e).ends_with(" response_code (sva-tenant-a)\n"), "{}", render_iopf(&t, &e));
    let ok = Event { verdict: VERDICT_CHECKED, ..e };
    assert!(render_iopf(&t, &ok).ends_with(" ok (sva-tenant-a)\n"));
    let unknown = Event { policy_id: id ^ 1, ..e };
    assert!(render_iopf(&t, &unknown).ends_with(&format!(" response_code (policy #{})\n", id ^ 1)));
    t.format = Format::Json;
    let v: serde_json::Value = serde_json::from_str(&render_iopf(&t, &e)).unwrap();
    assert_eq!((v["policy_id"].as_u64(), v["policy"].as_str()), (Some(u64::from(id)), Some("sva-tenant-a")));
    let mut b = Vec::new();
    t.dmar(&mut b, &DmarEvent { verdict: VERDICT_CHECKED, policy_id: id, ..dmar() });
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["policy"].as_str(), Some("sva-tenant-a"));
}

#[test]
fn filters_combine_with_and_and_repeat_with_or() {
    let ok = event("0000:6a:01.0", 3, RESP_SUCCESS, 42_000, VERDICT_CHECKED);
    let slow_bad = event("0000:6a:02.0", 5, RESP_INVALID, 5_000_000, VERDICT_CHECKED | VIOLATION_CODE);
    let shown = |f: Filter| {
        let t = out(Format::Stream, f);
        [&ok, &slow_bad].iter().filter(|e| !render_iopf(&t, e).is_empty()).count()
            + usize::from({
                let mut b = Vec::new();
                t.dmar(&mut b, &dmar());
                !b.is_empty()
            }) * 10
    };
    assert_eq!(shown(Filter::default()), 12);
    assert_eq!(shown(Filter { devices: vec!["0000:6a:02.0".into(), "0000:00:03.0".into()], ..Filter::default() }), 11);
    assert_eq!(shown(Filter { pasids: vec![3], ..Filter::default() }), 1);
    assert_eq!(shown(Filter { min_latency_ns: Some(1_000_000), ..Filter::default() }), 1);
    assert_eq!(shown(Filter { responses: vec!["success".into()], ..Filter::default() }), 1);
    assert_eq!(shown(Filter { levels: vec!["second".into()], ..Filter::default() }), 10);
    assert_eq!(shown(Filter { kinds: vec![Kind::Dmar], ..Filter::default() }), 10);
    assert_eq!(shown(Filter { violations_only: true, ..Filter::default() }), 1);
    assert_eq!(shown(Filter { configs: vec!["nested".into()], pasids: vec![5], ..Filter::default() }), 1);
}

fn walked() -> iopf_common::vtd_report::ReportWalkEvent {
    // SAFETY: plain integers (and a Pod walk record): all-zero is valid.
    let mut e: iopf_common::vtd_report::ReportWalkEvent = unsafe { std::mem::zeroed() };
    e.source_id = 0x18;
    e.addr = 0x100000;
    e.perm = 2;
    e.grpid = 4;
    e.ts_ns = 3_000_000_000;
    e.walk_ns = 1_500;
    e.walk = iopf_common::walk::Walk {
        stop: iopf_common::walk::Stop::Present as u8,
        stage: Level::Second as u8,
        level: 1,
        reads: 7,
        permission: 1,
        _pad: [0; 3],
        entry: 0x1000_0001,
    };
    e
}

#[test]
fn walked_page_requests_in_each_format_and_under_the_filters() {
    let mut b = Vec::new();
    out(Format::Human { color: false }, Filter::default()).page_request(&mut b, &walked());
    assert_eq!(
        String::from_utf8(b).unwrap(),
        "04:46:13.000000 walk  0000:00:03.0         - 0x100000           write       second/L1 translation_present,no_permission -             1.5us -\n"
    );
    let breaks = iopf_common::vtd_report::ReportWalkEvent {
        verdict: VERDICT_CHECKED | iopf_common::policy::VIOLATION_LEVEL,
        ..walked()
    };
    let mut b = Vec::new();
    out(Format::Stream, Filter { violations_only: true, ..Filter::default() }).page_request(&mut b, &breaks);
    assert!(!b.is_empty(), "a walk whose stage breaks the levels rule is a violation");
    let mut b = Vec::new();
    out(Format::Json, Filter::default()).page_request(&mut b, &walked());
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        (v["schema"].as_str(), v["time"].as_str(), v["kind"].as_str(), &v["perm_names"], v["grpid"].as_u64()),
        (
            Some("iopf.dev/trace/v1"),
            Some("2026-12-02T04:46:13.000000000Z"),
            Some("vtd_page_request"),
            &json!(["write"]),
            Some(4)
        )
    );
    let shown = |f: Filter| {
        let mut b = Vec::new();
        out(Format::Stream, f).page_request(&mut b, &walked());
        !b.is_empty()
    };
    assert!(shown(Filter::default()));
    assert!(shown(Filter { kinds: vec![Kind::PageRequest], levels: vec!["second".into()], ..Filter::default() }));
    assert!(!shown(Filter { kinds: vec![Kind::Iopf, Kind::Dmar], ..Filter::default() }));
    assert!(!shown(Filter { levels: vec!["first".into()], ..Filter::default() }));
    assert!(!shown(Filter { pasids: vec![0], ..Filter::default() }), "a request without a PASID has none to match");
    // Without a violation of its stage, and answering nothing, those filters leave it out.
    assert!(!shown(Filter { violations_only: true, ..Filter::default() }));
    assert!(!shown(Filter { responses: vec!["success".into()], ..Filter::default() }));
}
