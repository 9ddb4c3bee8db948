//! SMMUv3 metric families: event records by device and what the record says, and the
//! family's own losses.

use iopf_common::{
    iopf::{IopfStats, Level},
    smmu::{class_name, event_name},
};

use crate::iopf::maps::{IopfSnapshot, dev_str};
use crate::metrics::{Family, Kind, counter, family};

pub fn families(snap: &IopfSnapshot, s: IopfStats, out: &mut Vec<Family>) {
    out.push(family(
        "iopf_smmu_events_total",
        "Arm SMMUv3 event records read as the driver takes them off the event queue, by device (the stream's master in the unit's stream tree, empty when not found), StreamID, event, class (cd, tt, in), access and the stage the S2 bit gives.",
        Kind::Counter,
        snap.smmu
            .iter()
            .map(|(k, v)| {
                let dev = dev_str(&k.dev);
                let sid = format!("{:#x}", k.sid);
                let event = format!("{:#04x}", k.id);
                let access = if k.read != 0 { "read" } else { "write" };
                counter(
                    &[
                        ("device", &dev),
                        ("sid", &sid),
                        ("event", &event),
                        ("event_name", event_name(k.id)),
                        ("class", class_name(k.class)),
                        ("access", access),
                        ("level", Level::from_u8(k.level).label()),
                    ],
                    *v,
                )
            })
            .collect(),
    ));
    out.push(family(
        "iopf_smmu_events_dropped_total",
        "SMMUv3 event record events lost because their ring buffer was full (each is still counted in iopf_smmu_events_total).",
        Kind::Counter,
        vec![counter(&[], s.smmu_events_dropped)],
    ));
    out.push(family(
        "iopf_smmu_streams_unnamed_total",
        "SMMUv3 event records whose StreamID the unit's stream tree did not name (counted in iopf_smmu_events_total with an empty device).",
        Kind::Counter,
        vec![counter(&[], s.smmu_streams_unnamed)],
    ));
}
