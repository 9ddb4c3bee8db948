//! Events as NDJSON lines, written straight into a byte buffer: the streaming path renders
//! millions of events per second, so no intermediate JSON tree and no allocation per event.
//! Field names and values match what `--trace` has always printed.

use iopf_common::{
    iopf::{Config, Consts, Event, Level, Method, Source, response_label},
    policy::VIOLATIONS,
    walk::{Stop, Walk, disagrees},
};

/// A JSON object under construction: `{"k":v,...}` followed by a newline.
pub(crate) struct Obj<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> Self {
        buf.push(b'{');
        Self { buf, first: true }
    }

    pub(crate) fn key(&mut self, k: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    pub(crate) fn uint(&mut self, k: &str, v: u64) {
        self.key(k);
        self.buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    pub(crate) fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.buf.extend_from_slice(if v { b"true" } else { b"false" });
    }

    /// A string value; escapes what JSON requires (device names come from the kernel).
    pub(crate) fn str(&mut self, k: &str, v: &[u8]) {
        self.key(k);
        self.buf.push(b'"');
        for &c in v {
            match c {
                b'"' => self.buf.extend_from_slice(b"\\\""),
                b'\\' => self.buf.extend_from_slice(b"\\\\"),
                0x00..=0x1f | 0x7f..=0xff => {
                    // Control bytes, and non-ASCII bytes (the name is not known to be UTF-8).
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.buf.extend_from_slice(b"\\u00");
                    self.buf.push(HEX[(c >> 4) as usize]);
                    self.buf.push(HEX[(c & 15) as usize]);
                }
                _ => self.buf.push(c),
            }
        }
        self.buf.push(b'"');
    }

    /// `"0x..."` with at least `width` hex digits.
    pub(crate) fn hex(&mut self, k: &str, v: u64, width: usize) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.key(k);
        self.buf.extend_from_slice(b"\"0x");
        let digits = (64 - v.leading_zeros() as usize).div_ceil(4).max(width).max(1);
        for i in (0..digits).rev() {
            self.buf.push(HEX[((v >> (i * 4)) & 15) as usize]);
        }
        self.buf.push(b'"');
    }

    /// An array of plain (unescaped) names.
    pub(crate) fn names<'s>(&mut self, k: &str, v: impl Iterator<Item = &'s str>) {
        self.key(k);
        self.buf.push(b'[');
        for (i, n) in v.enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.buf.push(b'"');
            self.buf.extend_from_slice(n.as_bytes());
            self.buf.push(b'"');
        }
        self.buf.push(b']');
    }

    /// `"policy_id":N,"policy":"name"` (`null` when no policy checked the fault, or its name
    /// is not known here).
    pub(crate) fn policy(&mut self, id: u32, name: Option<&str>) {
        self.uint("policy_id", id.into());
        match name {
            Some(n) => self.str("policy", n.as_bytes()),
            None => {
                self.key("policy");
                self.buf.extend_from_slice(b"null");
            }
        }
    }

    /// `"k":{...}`: an object inside this one, written until its `close`.
    pub(crate) fn nested(&mut self, k: &str) -> Obj<'_> {
        self.key(k);
        Obj::new(&mut *self.buf)
    }

    pub(crate) fn end(self) {
        self.buf.extend_from_slice(b"}\n");
    }

    /// Ends an object nested as a value.
    pub(crate) fn close(self) {
        self.buf.push(b'}');
    }
}

/// The device name: the bytes before the first NUL.
pub(crate) fn name(dev: &[u8]) -> &[u8] {
    &dev[..dev.iter().position(|&b| b == 0).unwrap_or(dev.len())]
}

/// Appends one IOPF event as a JSON line. `policy`: the name behind `e.policy_id`, where
/// known.
pub fn write_event(buf: &mut Vec<u8>, e: &Event, consts: &Consts, policy: Option<&str>) {
    let mut o = Obj::new(buf);
    o.str("kind", b"iopf");
    o.str("device", name(&e.dev));
    o.uint("pasid", e.fault.pasid.into());
    o.bool("pasid_valid", e.fault.flags & consts.flag_pasid_valid != 0);
    o.uint("grpid", e.fault.grpid.into());
    o.uint("perm", e.fault.perm.into());
    o.hex("addr", e.fault.addr, 1);
    o.uint("flags", e.fault.flags.into());
    o.str("config", Config::from_u8(e.config).label().as_bytes());
    o.str("level", Level::from_u8(e.level).label().as_bytes());
    o.str("method", Method::from_u8(e.method).label().as_bytes());
    o.str("response", response_label(e.code).as_bytes());
    o.uint("report_ns", e.report_ns);
    o.uint("dispatch_ns", e.dispatch_ns);
    o.uint("service_ns", e.service_ns);
    o.uint("mm_fix_ns", e.mm_fix_ns);
    o.uint("user_ns", e.user_ns);
    o.uint("hwpt_id", e.hwpt_id.into());
    verdict(&mut o, e.verdict, e.policy_id, policy);
    o.str("source", Source::from_u8(e.source).label().as_bytes());
    o.end();
}

/// The policy's verdict on a line's fault and the policy that gave it.
pub(crate) fn verdict(o: &mut Obj<'_>, verdict: u32, policy_id: u32, policy: Option<&str>) {
    o.uint("verdict", verdict.into());
    o.names("violations", VIOLATIONS.iter().filter(|(bit, _)| verdict & bit != 0).map(|(_, n)| *n));
    o.policy(policy_id, policy);
}

/// `"walk": {...}`: our walk of the tables (VT-d or SMMUv3), the second method beside the
/// hardware's (`hardware`: the stage the record itself gives).
pub(crate) fn walk(o: &mut Obj<'_>, w: &Walk, ns: u64, hardware: Level) {
    let stop = Stop::from_u8(w.stop);
    let mut inner = o.nested("walk");
    inner.str("method", b"walk");
    inner.str("result", stop.label().as_bytes());
    if stop != Stop::NotWalked {
        inner.str("level", w.classified_level().label().as_bytes());
        inner.uint("table_level", w.level.into());
        inner.bool("permission", w.permission != 0);
        inner.hex("entry", w.entry, 1);
        inner.uint("reads", w.reads.into());
        inner.uint("ns", ns);
        inner.bool("disagrees", disagrees(w, hardware));
    }
    inner.close();
}

#[cfg(test)]
pub(crate) mod tests {
    use iopf_common::iopf::{Fault, RESP_INVALID};
    use serde_json::{Value, json};

    use super::*;
    use crate::kabi::iopf::CURRENT_CONSTS;

    /// One newline-terminated JSON line, parsed (the VT-d family's line tests use it too).
    pub(crate) fn parse(buf: &[u8]) -> Value {
        assert_eq!(buf.last(), Some(&b'\n'), "one line, newline-terminated");
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(buf).expect("valid JSON")
    }

    #[test]
    fn event_line_has_every_field_with_its_value() {
        let mut dev = [0u8; iopf_common::iopf::DEV_NAME_LEN];
        dev[..12].copy_from_slice(b"0000:00:03.0");
        let e = Event {
            dev,
            fault: Fault {
                addr: 0xdead_b000,
                fault_type: 0,
                flags: CURRENT_CONSTS.flag_pasid_valid | 1,
                pasid: 7,
                grpid: 3,
                perm: 2,
                _pad: 0,
            },
            report_ns: 1,
            dispatch_ns: 20,
            service_ns: 300,
            mm_fix_ns: u64::MAX,
            user_ns: 250,
            verdict: 0,
            config: Config::Nested as u8,
            level: Level::First as u8,
            method: Method::Domain as u8,
            code: RESP_INVALID,
            source: Source::Simulated as u8,
            _pad: [0; 3],
            hwpt_id: 12,
            policy_id: 0,
            _pad_end: 0,
        };
        let mut buf = Vec::new();
        write_event(&mut buf, &e, &CURRENT_CONSTS, None);
        assert_eq!(
            parse(&buf),
            json!({
                "kind": "iopf", "device": "0000:00:03.0", "pasid": 7, "pasid_valid": true, "grpid": 3,
                "perm": 2, "addr": "0xdeadb000", "flags": CURRENT_CONSTS.flag_pasid_valid | 1,
                "config": "nested", "level": "first", "method": "domain", "response": "invalid",
                "report_ns": 1, "dispatch_ns": 20, "service_ns": 300, "mm_fix_ns": u64::MAX,
                "user_ns": 250, "hwpt_id": 12, "verdict": 0, "violations": [], "policy_id": 0, "policy": null,
                "source": "simulated",
            })
        );
        // Checked under a policy: its id and name.
        buf.clear();
        write_event(&mut buf, &Event { verdict: 1, policy_id: 77, ..e }, &CURRENT_CONSTS, Some("sva-tenant-a"));
        assert_eq!(
            (parse(&buf)["policy_id"].clone(), parse(&buf)["policy"].clone()),
            (json!(77), json!("sva-tenant-a"))
        );
    }

    #[test]
    fn violations_are_named() {
        use iopf_common::policy::{VERDICT_CHECKED, VIOLATION_CODE, VIOLATION_LEVEL};
        let e = Event { verdict: VERDICT_CHECKED | VIOLATION_LEVEL | VIOLATION_CODE, ..unsafe_zeroed_event() };
        let mut buf = Vec::new();
        write_event(&mut buf, &e, &CURRENT_CONSTS, None);
        assert_eq!(parse(&buf)["violations"], json!(["level", "response_code"]));
        assert_eq!(parse(&buf)["verdict"], json!(11));
    }

    #[test]
    fn device_names_are_escaped() {
        let mut dev = [0u8; iopf_common::iopf::DEV_NAME_LEN];
        dev[..6].copy_from_slice(b"a\"b\\\x01\xff");
        let e = Event { dev, ..unsafe_zeroed_event() };
        let mut buf = Vec::new();
        write_event(&mut buf, &e, &CURRENT_CONSTS, None);
        assert_eq!(parse(&buf)["device"], json!("a\"b\\\u{1}\u{ff}"));
    }

    fn unsafe_zeroed_event() -> Event {
        // SAFETY: Event is plain integers and byte arrays; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }
}
