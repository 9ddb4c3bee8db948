//! AMD-Vi metric families: event log entries by device and what the entry says, and the
//! family's own losses.

use iopf_common::{
    amdvi::{FLAG_NAMES, PPR_FLAG_NAMES, PPR_REQ_FAULT, event_name},
    iopf::IopfStats,
};

use crate::iopf::maps::{IopfSnapshot, dev_str};
use crate::metrics::{Family, Kind, counter, family, histogram};

/// The set flags of `names` by name, `+`-joined (`gn+i`), `none` when no flag is set.
fn names_label(names: &[(u16, &str)], flags: u16) -> String {
    let set: Vec<&str> = names.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| *n).collect();
    if set.is_empty() { "none".into() } else { set.join("+") }
}

/// An event log entry's flags by the specification's names.
pub fn flag_label(flags: u16) -> String {
    names_label(&FLAG_NAMES, flags)
}

/// A PPR log entry's flags by name.
pub fn ppr_flag_label(flags: u16) -> String {
    names_label(&PPR_FLAG_NAMES, flags)
}

/// A COMPLETE_PPR response code: the IOMMU core's codes the driver passes on (0, 1, 2), and
/// PCIe's response failure (0xf), which kernels before 6.9 sent.
pub fn ppr_status_label(status: u8) -> String {
    match status {
        0 => "success".into(),
        1 => "invalid".into(),
        2 | 0xf => "failure".into(),
        s => format!("{s:#x}"),
    }
}

pub fn families(snap: &IopfSnapshot, s: IopfStats, out: &mut Vec<Family>) {
    out.push(family(
        "iopf_amdvi_events_total",
        "AMD-Vi event log entries read as the driver drains the log, by device (the unit's PCI segment and the entry's DeviceID), event, and flags (the specification's names, + joined; the entries carry no stage).",
        Kind::Counter,
        snap.amdvi
            .iter()
            .map(|(k, v)| {
                let dev = dev_str(&k.dev);
                let event = format!("{:#x}", k.event);
                let flags = flag_label(k.flags);
                counter(
                    &[("device", &dev), ("event", &event), ("event_name", event_name(k.event)), ("flags", &flags)],
                    *v,
                )
            })
            .collect(),
    ));
    out.push(family(
        "iopf_amdvi_events_dropped_total",
        "AMD-Vi event log entry events lost because their ring buffer was full (each is still counted in iopf_amdvi_events_total).",
        Kind::Counter,
        vec![counter(&[], s.amdvi_events_dropped)],
    ));
    out.push(family(
        "iopf_amdvi_entries_undecoded_total",
        "AMD-Vi event log entries pending in one drain past the decoded ones (32 per drain), or not yet written by the unit: counted here, not in iopf_amdvi_events_total.",
        Kind::Counter,
        vec![counter(&[], s.amdvi_entries_undecoded)],
    ));
    out.push(family(
        "iopf_amdvi_page_requests_total",
        "AMD-Vi PPR log entries read as the driver drains the log, by device, request type (page_request, or the type's number), flags (exec, read, write, us, rsvd, gn; + joined) and whether the entry is the last of its group. Entries the driver rejects before iommu_report_device_fault (PASID 0; in recent kernels also gn clear or rsvd set) count here too.",
        Kind::Counter,
        snap.amdvi_ppr
            .iter()
            .map(|(k, v)| {
                let dev = dev_str(&k.dev);
                let kind = if k.kind == PPR_REQ_FAULT { "page_request".to_string() } else { format!("{:#x}", k.kind) };
                let flags = ppr_flag_label(k.flags);
                let last = if k.last != 0 { "true" } else { "false" };
                counter(&[("device", &dev), ("type", &kind), ("flags", &flags), ("last", last)], *v)
            })
            .collect(),
    ));
    out.push(family(
        "iopf_amdvi_ppr_responses_total",
        "AMD-Vi answers to page requests (amd_iommu_complete_ppr: the COMPLETE_PPR command), by device, response code, and whether the request was read from the PPR log (request=seen) or not (unseen: before the agent started, past the 32 decoded per drain, not yet written or written after the drain read the tail, aged out, a rejected group's second and later entries, or a kernel whose PPR log drain is not hooked, before 6.9).",
        Kind::Counter,
        snap.amdvi_ppr_responses
            .iter()
            .map(|(k, v)| {
                let dev = dev_str(&k.dev);
                let status = ppr_status_label(k.status);
                counter(&[("device", &dev), ("code", &status), ("request", if k.seen != 0 { "seen" } else { "unseen" })], *v)
            })
            .collect(),
    ));
    out.push(family(
        "iopf_amdvi_ppr_response_seconds",
        "Time from the PPR log drain that read a page request to the driver's answer to it, all devices (requests answered without being seen are not observed).",
        Kind::Histogram,
        if snap.amdvi_ppr_response_ns.count != 0 { vec![histogram(&[], &snap.amdvi_ppr_response_ns)] } else { vec![] },
    ));
    out.push(family(
        "iopf_amdvi_ppr_undecoded_total",
        "AMD-Vi PPR log entries pending in one drain past the decoded ones (32 per drain), or not yet written by the unit: counted here, not in iopf_amdvi_page_requests_total.",
        Kind::Counter,
        vec![counter(&[], s.amdvi_ppr_undecoded)],
    ));
}

#[cfg(test)]
mod tests {
    #[test]
    fn flag_labels() {
        assert_eq!(super::flag_label(0x9), "gn+i");
        assert_eq!(super::flag_label(0x120), "rw+tr");
        assert_eq!(super::flag_label(0), "none");
        assert_eq!(super::ppr_flag_label(0x164), "read+write+us+gn");
        assert_eq!(super::ppr_flag_label(0x200), "none");
        assert_eq!(
            [0, 1, 2, 0xf, 5].map(super::ppr_status_label),
            ["success", "invalid", "failure", "failure", "0x5"].map(String::from)
        );
    }
}
