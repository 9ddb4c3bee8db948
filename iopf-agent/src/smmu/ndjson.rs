//! SMMUv3 event records as NDJSON lines (`"kind":"smmu_event"`): the record's fields by
//! name, the stage from its S2 bit (method `hardware`), our walk of the unit's tables beside
//! it (method `walk`), and the raw dwords.

use iopf_common::{
    iopf::Level,
    smmu::{FLAG_IND, FLAG_PNU, FLAG_RNW, FLAG_S2, FLAG_SSV, FLAG_STALL, SmmuEvent, class_name, event_name},
};

use crate::iopf::ndjson::{Obj, name, verdict, walk};

/// The record's flag bits by the architecture's names.
pub fn flag_names(flags: u8) -> impl Iterator<Item = &'static str> {
    const FLAGS: [(u8, &str); 6] = [
        (FLAG_SSV, "ssv"),
        (FLAG_STALL, "stall"),
        (FLAG_PNU, "pnu"),
        (FLAG_IND, "ind"),
        (FLAG_RNW, "rnw"),
        (FLAG_S2, "s2"),
    ];
    FLAGS.into_iter().filter(move |(b, _)| flags & b != 0).map(|(_, n)| n)
}

/// Appends one SMMUv3 event record as a JSON line (`policy` as for the IOPF lines).
pub fn write_smmu(buf: &mut Vec<u8>, e: &SmmuEvent, policy: Option<&str>) {
    let mut o = Obj::new(buf);
    o.str("kind", b"smmu_event");
    o.str("device", name(&e.dev));
    o.hex("sid", e.sid.into(), 1);
    o.hex("event", e.id.into(), 2);
    o.str("event_name", event_name(e.id).as_bytes());
    o.str("class", class_name(e.class).as_bytes());
    o.str("access", if e.flags & FLAG_RNW != 0 { b"read" } else { b"write" });
    o.hex("addr", e.addr, 1);
    o.hex("ipa", e.ipa, 1);
    o.bool("ssv", e.flags & FLAG_SSV != 0);
    o.uint("ssid", e.ssid.into());
    o.bool("stall", e.flags & FLAG_STALL != 0);
    o.uint("stag", e.stag.into());
    // A stall the kernel reports as a recoverable fault: its report is the fault.
    o.bool("reported", e.reported != 0);
    o.names("flags", flag_names(e.flags));
    let level = Level::from_u8(e.level);
    o.str("level", level.label().as_bytes());
    o.str("method", if level == Level::Unknown { b"none" } else { b"hardware" });
    o.uint("ts_ns", e.ts_ns);
    verdict(&mut o, e.verdict, e.policy_id, policy);
    walk(&mut o, &e.walk, e.walk_ns, level);
    let raw = e.raw.map(|d| format!("{d:#018x}"));
    o.names("raw", raw.iter().map(String::as_str));
    o.end();
}

#[cfg(test)]
mod tests {
    use iopf_common::{
        smmu::Record,
        walk::{Stop, Walk},
    };
    use serde_json::json;

    use super::*;
    use crate::iopf::{maps::dev_bytes, ndjson::tests::parse};

    #[test]
    fn smmu_line_has_every_field_with_its_value() {
        // The record QEMU's SMMUv3 writes for edu reading unmapped IOVA 0x123000.
        let raw = [0x0000_0008_0000_0010, 0x0000_0208_0000_0000, 0x123000, 0];
        let r = Record::decode(raw);
        let e = SmmuEvent {
            ts_ns: 7,
            addr: r.addr,
            ipa: r.ipa,
            raw,
            sid: r.sid,
            ssid: r.ssid,
            stag: r.stag,
            id: r.id,
            class: r.class,
            flags: r.flags,
            level: r.level() as u8,
            reported: 0,
            _pad: 0,
            verdict: 0,
            policy_id: 0,
            dev: dev_bytes("0000:00:01.0"),
            walk: Walk { stop: Stop::NotPresent as u8, stage: Level::First as u8, level: 2, reads: 6, ..Walk::NONE },
            walk_ns: 2100,
        };
        let mut buf = Vec::new();
        write_smmu(&mut buf, &e, None);
        assert_eq!(
            parse(&buf),
            json!({
                "kind": "smmu_event", "device": "0000:00:01.0", "sid": "0x8", "event": "0x10",
                "event_name": "F_TRANSLATION", "class": "in", "access": "read", "addr": "0x123000", "ipa": "0x0",
                "ssv": false, "ssid": 0, "stall": false, "stag": 0, "reported": false, "flags": ["rnw"], "level": "first",
                "method": "hardware", "ts_ns": 7, "verdict": 0, "violations": [], "policy_id": 0, "policy": null,
                "walk": {
                    "method": "walk", "result": "not_present", "level": "first", "table_level": 2,
                    "permission": false, "entry": "0x0", "reads": 6, "ns": 2100, "disagrees": false,
                },
                "raw": ["0x0000000800000010", "0x0000020800000000", "0x0000000000123000", "0x0000000000000000"],
            })
        );
        // The walk found stage 2 where the S2 bit says stage 1.
        let stage2 = Walk { stage: Level::Second as u8, ..e.walk };
        let mut buf = Vec::new();
        write_smmu(&mut buf, &SmmuEvent { walk: stage2, ..e }, None);
        let v = parse(&buf);
        assert_eq!(
            (&v["level"], &v["walk"]["level"], &v["walk"]["disagrees"]),
            (&json!("first"), &json!("second"), &json!(true))
        );
        // A configuration error has no stage: no method decided one, nothing was walked.
        let bad_ste = SmmuEvent { id: 0x04, level: Level::Unknown as u8, flags: 0, walk: Walk::NONE, ..e };
        let mut buf = Vec::new();
        write_smmu(&mut buf, &bad_ste, None);
        let v = parse(&buf);
        assert_eq!(
            (&v["event_name"], &v["level"], &v["method"], &v["access"], &v["walk"]),
            (
                &json!("C_BAD_STE"),
                &json!("unknown"),
                &json!("none"),
                &json!("write"),
                &json!({"method": "walk", "result": "not_walked"})
            )
        );
    }
}
