//! AMD-Vi metric families: event log entries by device and what the entry says, and the
//! family's own losses.

use iopf_common::{
    amdvi::{FLAG_NAMES, event_name},
    iopf::IopfStats,
};

use crate::iopf::maps::{IopfSnapshot, dev_str};
use crate::metrics::{Family, Kind, counter, family};

/// The set flags by name, `+`-joined (`gn+i`), `none` when no flag is set.
pub fn flag_label(flags: u16) -> String {
    let names: Vec<&str> = FLAG_NAMES.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| *n).collect();
    if names.is_empty() { "none".into() } else { names.join("+") }
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
}

#[cfg(test)]
mod tests {
    #[test]
    fn flag_labels() {
        assert_eq!(super::flag_label(0x9), "gn+i");
        assert_eq!(super::flag_label(0x120), "rw+tr");
        assert_eq!(super::flag_label(0), "none");
    }
}
