//! AMD-Vi event log entries as NDJSON lines (`"kind":"amdvi_event"`): the entry's fields by
//! name, its flags by the specification's names, and the raw words. The entries carry no
//! stage: `level` is `unknown`, `method` `none`.

use iopf_common::amdvi::{AmdviEvent, FLAG_NAMES, FLAG_RW, event_name};

use crate::iopf::ndjson::{Obj, name, verdict};

/// Appends one AMD-Vi entry as a JSON line (`policy` as for the IOPF lines).
pub fn write_amdvi(buf: &mut Vec<u8>, e: &AmdviEvent, policy: Option<&str>) {
    let mut o = Obj::new(buf);
    o.str("kind", b"amdvi_event");
    o.str("device", name(&e.dev));
    o.hex("devid", e.devid.into(), 4);
    o.uint("segment", e.segment.into());
    o.hex("event", e.event.into(), 1);
    o.str("event_name", event_name(e.event).as_bytes());
    o.hex("domain", e.domain.into(), 4);
    o.hex("addr", e.addr, 1);
    o.hex("flags", e.flags.into(), 4);
    o.names("flag_names", FLAG_NAMES.iter().filter(|(b, _)| e.flags & b != 0).map(|(_, n)| *n));
    o.str("access", if e.flags & FLAG_RW != 0 { b"write" } else { b"read" });
    o.str("level", b"unknown");
    o.str("method", b"none");
    o.uint("index", e.index.into());
    o.uint("ts_ns", e.ts_ns);
    verdict(&mut o, e.verdict, e.policy_id, policy);
    let raw = e.raw.map(|w| format!("{w:#010x}"));
    o.names("raw", raw.iter().map(String::as_str));
    o.end();
}

#[cfg(test)]
mod tests {
    use iopf_common::amdvi::Entry;
    use serde_json::json;

    use super::*;
    use crate::iopf::{maps::dev_bytes, ndjson::tests::parse};

    #[test]
    fn amdvi_line_has_every_field_with_its_value() {
        // The entry QEMU 11's amd-iommu writes for edu (00:03.0) reading: flags 0x0009.
        let raw = [0x0000_0018, 0x2009_0000, 0, 0];
        let en = Entry::decode(raw);
        let e = AmdviEvent {
            ts_ns: 7,
            addr: en.addr,
            raw,
            domain: en.domain,
            devid: en.devid,
            segment: 0,
            flags: en.flags,
            index: 3,
            event: en.event,
            _pad: [0; 3],
            verdict: 0,
            policy_id: 0,
            dev: dev_bytes("0000:00:03.0"),
        };
        let mut buf = Vec::new();
        write_amdvi(&mut buf, &e, None);
        assert_eq!(
            parse(&buf),
            json!({
                "kind": "amdvi_event", "device": "0000:00:03.0", "devid": "0x0018", "segment": 0, "event": "0x2",
                "event_name": "IO_PAGE_FAULT", "domain": "0x0000", "addr": "0x0", "flags": "0x0009",
                "flag_names": ["gn", "i"], "access": "read", "level": "unknown", "method": "none", "index": 3,
                "ts_ns": 7, "verdict": 0, "violations": [], "policy_id": 0, "policy": null,
                "raw": ["0x00000018", "0x20090000", "0x00000000", "0x00000000"],
            })
        );
    }
}
