//! VT-d fault records as NDJSON lines (`"kind":"dmar_fault"`), with the walk beside the
//! reason code; walked page requests (`"kind":"vtd_page_request"`), the walk their only
//! classification.

use iopf_common::{
    dmar::{DmarEvent, bdf_name},
    iopf::Level,
    vtd_report::{PERM_WRITE, ReportWalkEvent},
};

use crate::iopf::ndjson::{Obj, name, verdict, walk};

/// Appends one decoded VT-d fault record as a JSON line (`policy` as for `write_event`).
pub fn write_dmar(buf: &mut Vec<u8>, e: &DmarEvent, policy: Option<&str>) {
    let mut o = Obj::new(buf);
    head(&mut o, b"dmar_fault", e.segment, e.source_id, e.addr, e.pasid, e.pasid_present);
    o.str("access", if e.read != 0 { b"read" } else { b"write" });
    o.hex("reason", e.reason.into(), 2);
    o.str("level", Level::from_u8(e.level).label().as_bytes());
    o.str("method", b"hardware");
    o.uint("record", e.index.into());
    o.uint("ts_ns", e.ts_ns);
    verdict(&mut o, e.verdict, e.policy_id, policy);
    walk(&mut o, &e.walk, e.walk_ns, Level::from_u8(e.level));
    o.end();
}

/// Appends one walked page request as a JSON line. Its `level` is the walk's (method
/// `walk`): a report carries no hardware stage. The IOPF event of the same fault (same
/// device, PASID, group id) carries the domain's classification.
pub fn write_page_request(buf: &mut Vec<u8>, e: &ReportWalkEvent, policy: Option<&str>) {
    let mut o = Obj::new(buf);
    head(&mut o, b"vtd_page_request", e.segment, e.source_id, e.addr, e.pasid, e.pasid_present);
    o.uint("grpid", e.grpid.into());
    o.hex("perm", e.perm.into(), 1);
    o.str("access", if e.perm & PERM_WRITE != 0 { b"write" } else { b"read" });
    let level = e.walk.classified_level();
    o.str("level", level.label().as_bytes());
    o.str("method", if level == Level::Unknown { b"none" } else { b"walk" });
    o.uint("ts_ns", e.ts_ns);
    verdict(&mut o, e.verdict, e.policy_id, policy);
    walk(&mut o, &e.walk, e.walk_ns, Level::Unknown);
    o.end();
}

/// The fields every VT-d line starts with: what it is, the requester and the request.
fn head(o: &mut Obj<'_>, kind: &[u8], segment: u16, source_id: u16, addr: u64, pasid: u32, pasid_present: u8) {
    o.str("kind", kind);
    o.str("device", name(&bdf_name(segment, source_id)));
    o.hex("source_id", source_id.into(), 4);
    o.hex("addr", addr, 1);
    o.uint("pasid", pasid.into());
    o.bool("pasid_valid", pasid_present != 0);
}

#[cfg(test)]
mod tests {
    use iopf_common::walk::{Stop, Walk};
    use serde_json::json;

    use super::*;
    use crate::iopf::ndjson::tests::parse;

    #[test]
    fn dmar_line_has_every_field_with_its_value() {
        let e = DmarEvent {
            source_id: 0x0018,
            segment: 0,
            addr: 0x1000,
            read: 1,
            reason: 6,
            level: Level::Second as u8,
            index: 2,
            ts_ns: 99,
            pasid: 0,
            pasid_present: 0,
            _pad: [0; 3],
            verdict: 0,
            policy_id: 0,
            walk: Walk::NONE,
            walk_ns: 0,
        };
        let mut buf = Vec::new();
        write_dmar(&mut buf, &e, None);
        assert_eq!(
            parse(&buf),
            json!({
                "kind": "dmar_fault", "device": "0000:00:03.0", "source_id": "0x0018", "addr": "0x1000", "pasid": 0, "pasid_valid": false,
                "access": "read", "reason": "0x06", "level": "second", "method": "hardware", "record": 2, "ts_ns": 99,
                "verdict": 0, "violations": [], "policy_id": 0, "policy": null, "walk": {"method": "walk", "result": "not_walked"},
            })
        );
        let walked = Walk {
            stop: Stop::NotPresent as u8,
            stage: Level::First as u8,
            level: 4,
            reads: 6,
            permission: 0,
            _pad: [0; 3],
            entry: 0,
        };
        let e = DmarEvent {
            segment: 2,
            pasid: 5,
            pasid_present: 1,
            reason: 0x70,
            level: Level::First as u8,
            read: 0,
            verdict: 1 | 1 << 4,
            policy_id: 9,
            walk: walked,
            walk_ns: 1234,
            ..e
        };
        buf.clear();
        write_dmar(&mut buf, &e, Some("edu-none"));
        assert_eq!(
            parse(&buf),
            json!({
                "kind": "dmar_fault", "device": "0002:00:03.0", "source_id": "0x0018", "addr": "0x1000", "pasid": 5, "pasid_valid": true,
                "access": "write", "reason": "0x70", "level": "first", "method": "hardware", "record": 2, "ts_ns": 99,
                "verdict": 17, "violations": ["unrecoverable"], "policy_id": 9, "policy": "edu-none",
                "walk": {
                    "method": "walk", "result": "not_present", "level": "first", "table_level": 4,
                    "permission": false, "entry": "0x0", "reads": 6, "ns": 1234, "disagrees": false,
                },
            })
        );
    }

    #[test]
    fn page_request_line_takes_its_level_from_the_walk() {
        let walk = Walk {
            stop: Stop::Present as u8,
            stage: Level::Second as u8,
            level: 1,
            reads: 7,
            permission: 1,
            _pad: [0; 3],
            entry: 0x1234_5001,
        };
        let e = ReportWalkEvent {
            ts_ns: 42,
            addr: 0x10_0000,
            walk_ns: 900,
            pasid: 0,
            grpid: 3,
            perm: PERM_WRITE,
            segment: 0,
            source_id: 0x0018,
            pasid_present: 0,
            _pad: [0; 7],
            verdict: 0,
            policy_id: 0,
            walk,
        };
        let mut buf = Vec::new();
        write_page_request(&mut buf, &e, None);
        assert_eq!(
            parse(&buf),
            json!({
                "kind": "vtd_page_request", "device": "0000:00:03.0", "source_id": "0x0018", "addr": "0x100000",
                "pasid": 0, "pasid_valid": false, "grpid": 3, "perm": "0x2", "access": "write",
                "level": "second", "method": "walk", "ts_ns": 42,
                "verdict": 0, "violations": [], "policy_id": 0, "policy": null,
                "walk": {
                    "method": "walk", "result": "translation_present", "level": "second", "table_level": 1,
                    "permission": true, "entry": "0x12345001", "reads": 7, "ns": 900, "disagrees": false,
                },
            })
        );
        // A walk that proves nothing classifies nothing.
        let e = ReportWalkEvent {
            pasid: 5,
            pasid_present: 1,
            perm: 1,
            walk: Walk { stop: Stop::ReadFailed as u8, stage: 0, level: 0, reads: 2, ..walk },
            ..e
        };
        buf.clear();
        write_page_request(&mut buf, &e, None);
        let v = parse(&buf);
        assert_eq!(
            (&v["level"], &v["method"], &v["access"], &v["pasid"], &v["walk"]["result"], &v["walk"]["level"]),
            (&json!("unknown"), &json!("none"), &json!("read"), &json!(5), &json!("read_failed"), &json!("unknown"))
        );
    }

    #[test]
    fn a_page_request_walk_names_the_policy_its_stage_breaks() {
        let e = ReportWalkEvent {
            ts_ns: 1,
            addr: 0x101000,
            walk_ns: 2,
            pasid: 0,
            grpid: 1,
            perm: 1,
            segment: 0,
            source_id: 0x0018,
            pasid_present: 0,
            _pad: [0; 7],
            verdict: iopf_common::policy::VERDICT_CHECKED | iopf_common::policy::VIOLATION_LEVEL,
            policy_id: 3,
            walk: Walk { stop: Stop::NotPresent as u8, stage: Level::Second as u8, level: 1, reads: 7, ..Walk::NONE },
        };
        let mut buf = Vec::new();
        write_page_request(&mut buf, &e, Some("edu-pinned"));
        let v = parse(&buf);
        assert_eq!(
            (&v["level"], &v["violations"], &v["policy_id"], &v["policy"]),
            (&json!("second"), &json!(["level"]), &json!(3), &json!("edu-pinned"))
        );
    }
}
