//! VT-d metric families: decoded fault records by device, walked page requests by device and
//! outcome, the walks' cost, the methods' disagreements and the family's own lost events.

use iopf_common::{
    iopf::{IopfStats, Level},
    walk::{Stop, Walk},
};

use crate::iopf::maps::{IopfSnapshot, dev_str};
use crate::metrics::{Family, Kind, counter, family, histogram};

pub fn families(snap: &IopfSnapshot, s: IopfStats, out: &mut Vec<Family>) {
    out.push(family(
        "iopf_dmar_faults_total",
        "Intel VT-d unrecoverable faults decoded from the fault recording registers, by device, reason code, access and the level the reason implies.",
        Kind::Counter,
        snap.dmar
            .iter()
            .map(|(k, v)| {
                let dev = dev_str(&iopf_common::dmar::bdf_name(k.segment, k.source_id));
                let reason = format!("{:#04x}", k.reason);
                let access = if k.read != 0 { "read" } else { "write" };
                counter(&[("device", &dev), ("reason", &reason), ("access", access), ("level", Level::from_u8(k.level).label())], *v)
            })
            .collect(),
    ));
    out.push(family(
        "iopf_page_request_walks_total",
        "Recoverable reports (page requests) of Intel devices walked through their VT-d unit's tables at report time, by device, where the walk stopped (result, stage level, table level) and whether the translation present lacks the permission.",
        Kind::Counter,
        snap.page_request_walks
            .iter()
            .map(|(k, v)| {
                let dev = dev_str(&iopf_common::dmar::bdf_name(k.segment, k.source_id));
                let stop = Stop::from_u8(k.stop);
                let walk = Walk { stop: k.stop, stage: k.stage, ..Walk::NONE };
                let level = walk.classified_level();
                let table_level = k.level.to_string();
                let permission = if k.permission != 0 { "true" } else { "false" };
                counter(
                    &[
                        ("device", &dev),
                        ("result", stop.label()),
                        ("level", level.label()),
                        ("table_level", &table_level),
                        ("permission", permission),
                    ],
                    *v,
                )
            })
            .collect(),
    ));
    let mut walks = vec![];
    if snap.walk_ns.count != 0 {
        walks.push(histogram(&[("source", "vtd")], &snap.walk_ns));
    }
    if snap.page_request_walk_ns.count != 0 {
        walks.push(histogram(&[("source", "vtd_page_request")], &snap.page_request_walk_ns));
    }
    if snap.smmu_walk_ns.count != 0 {
        walks.push(histogram(&[("source", "smmuv3")], &snap.smmu_walk_ns));
    }
    out.push(family(
        "iopf_walk_seconds",
        "Cost of our walk of the translation structures: VT-d per fault record in the fault interrupt (source vtd), per recoverable report at its entry (source vtd_page_request); SMMUv3 per translation-related event record (source smmuv3).",
        Kind::Histogram,
        walks,
    ));
    out.push(family(
        "iopf_classification_disagreements_total",
        "Faults two methods classified at different stages: the VT-d reason code or the SMMUv3 record's S2 bit (hardware), or the domain type at the group handler (domain), against our table walk (walk); the SMMUv3 stall record's S2 bit (hardware) against the domain type (hardware_domain: the hardware's stage is the one reported).",
        Kind::Counter,
        vec![
            counter(&[("methods", "hardware_walk")], s.walk_disagreements),
            counter(&[("methods", "domain_walk")], s.domain_walk_disagreements),
            counter(&[("methods", "hardware_domain")], s.hardware_domain_disagreements),
        ],
    ));
    out.push(family(
        "iopf_dmar_events_dropped_total",
        "VT-d fault record events lost because the DMAR ring buffer was full (each such record is still counted in iopf_dmar_faults_total).",
        Kind::Counter,
        vec![counter(&[], s.dmar_events_dropped)],
    ));
    out.push(family(
        "iopf_page_request_walk_events_dropped_total",
        "Walked page request events lost because their ring buffer was full (each is still counted in iopf_page_request_walks_total).",
        Kind::Counter,
        vec![counter(&[], s.page_request_walks_dropped)],
    ));
}
