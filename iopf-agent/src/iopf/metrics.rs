//! IOPF metric families, read from the aggregation maps at scrape time.

use std::sync::{Arc, Mutex};

use iopf_common::iopf::{CODE_REPORTED, CODE_UNRECOVERABLE, Config, Latency, Level, Source, response_label};

use super::maps::{IopfMaps, dev_str};
use crate::metrics::{Family, Kind, Source as MetricSource, counter, family, histogram};
use crate::policy::install::Installed;

pub struct IopfSource {
    pub maps: Arc<Mutex<IopfMaps>>,
    /// Which policy each device is under (labels of the violation counters).
    pub policy: Option<Arc<Mutex<Installed>>>,
}

impl IopfSource {
    pub fn new(maps: Arc<Mutex<IopfMaps>>, policy: Option<Arc<Mutex<Installed>>>) -> Self {
        Self { maps, policy }
    }
}

impl MetricSource for IopfSource {
    fn collect(&self, out: &mut Vec<Family>) {
        let snap = match self.maps.lock().unwrap_or_else(|p| p.into_inner()).snapshot() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("iopf-agent: IOPF maps unreadable: {}", crate::error::chain(&e));
                return;
            }
        };
        let (mut faults, mut responses, mut unrecoverable) = (Vec::new(), Vec::new(), Vec::new());
        for (k, &v) in &snap.counts {
            let dev = dev_str(&k.dev);
            let cfg = Config::from_u8(k.config).label();
            let lvl = Level::from_u8(k.level).label();
            let src = Source::from_u8(k.source).label();
            match k.code {
                CODE_REPORTED => {
                    faults.push(counter(&[("device", &dev), ("config", cfg), ("level", lvl), ("source", src)], v))
                }
                CODE_UNRECOVERABLE => {
                    unrecoverable.push(counter(&[("device", &dev), ("level", lvl), ("source", src)], v))
                }
                code => responses.push(counter(
                    &[
                        ("device", &dev),
                        ("config", cfg),
                        ("level", lvl),
                        ("code", response_label(code)),
                        ("source", src),
                    ],
                    v,
                )),
            }
        }
        out.push(family(
            "iopf_faults_total",
            "Recoverable I/O page faults delivered to a domain, by device, configuration and level.",
            Kind::Counter,
            faults,
        ));
        out.push(family(
            "iopf_responses_total",
            "Page responses by code (none: group freed without a response).",
            Kind::Counter,
            responses,
        ));
        out.push(family(
            "iopf_unrecoverable_faults_total",
            "Unrecoverable IOMMU faults per device (VT-d fault records, iommu:io_page_fault), by the level the hardware reason gives (unknown when the source names none).",
            Kind::Counter,
            unrecoverable,
        ));
        let hists = snap
            .hists
            .iter()
            .map(|(k, h)| {
                let lat = Latency::ALL.iter().find(|l| **l as u8 == k.latency).map(|l| l.label()).unwrap_or("unknown");
                let dev = dev_str(&k.dev);
                let dev = if dev.is_empty() { "unknown".to_owned() } else { dev };
                histogram(&[("device", &dev), ("latency", lat), ("source", Source::from_u8(k.source).label())], h)
            })
            .collect();
        out.push(family(
            "iopf_latency_seconds",
            "IOPF latencies: dispatch (report -> handler), service (report -> response), mm_fix (SVA work: start -> response).",
            Kind::Histogram,
            hists,
        ));
        let installed = self.policy.as_ref().map(|p| p.lock().unwrap_or_else(|e| e.into_inner()));
        let violations = snap
            .policy_violations
            .iter()
            .map(|((dev, source, policy_id, slot), v)| {
                let dev = dev_str(dev);
                // The name the policy had when the violation was counted (ids are never reused).
                let policy = installed.as_ref().and_then(|i| i.ids.name(*policy_id)).unwrap_or("unknown").to_owned();
                let what = iopf_common::policy::VIOLATIONS.get(*slot).map_or("unknown", |(_, n)| n);
                counter(
                    &[
                        ("device", &dev),
                        ("policy", &policy),
                        ("violation", what),
                        ("source", Source::from_u8(*source).label()),
                    ],
                    *v,
                )
            })
            .collect();
        // Faults of a device now under a policy that came before its rule: every fault of
        // the device is either checked or here.
        let mut faults_of: std::collections::BTreeMap<([u8; iopf_common::iopf::DEV_NAME_LEN], u8), u64> =
            std::collections::BTreeMap::new();
        for (k, v) in snap.counts.iter().filter(|(k, _)| matches!(k.code, CODE_REPORTED | CODE_UNRECOVERABLE)) {
            *faults_of.entry((k.dev, k.source)).or_default() += v;
        }
        let mut unscoped = Vec::new();
        let unchecked = faults_of
            .iter()
            .filter_map(|(key, total)| {
                let dev = dev_str(&key.0);
                let under = installed.as_ref()?.policies_of(&dev)?;
                let policy = under.names();
                let checked = snap.checked.get(key).copied().unwrap_or(0);
                let out_of_scope = snap.unscoped.get(key).copied().unwrap_or(0);
                let src = Source::from_u8(key.1).label();
                let labels = [("device", dev.as_str()), ("policy", &policy), ("source", src)];
                if out_of_scope != 0 || under.rules.iter().any(|r| r.pasids.n != 0) {
                    unscoped.push(counter(&labels, out_of_scope));
                }
                Some(counter(&labels, total.saturating_sub(checked).saturating_sub(out_of_scope)))
            })
            .collect();
        drop(installed);
        out.push(family(
            "iopf_policy_unchecked_total",
            "Faults of a device now under a policy that were counted before its rule was installed (not checked).",
            Kind::Counter,
            unchecked,
        ));
        out.push(family(
            "iopf_policy_unscoped_total",
            "Faults of a device under PASID-scoped policies whose PASID (or lack of one) none of them selects: not checked, by design.",
            Kind::Counter,
            unscoped,
        ));
        out.push(family(
            "iopf_policy_violations_total",
            "Faults that broke a policy, by device, by the policy whose rule they broke (its name when they happened) and by violation (level, service_latency, response_code, unrecoverable).",
            Kind::Counter,
            violations,
        ));
        let s = snap.stats;
        out.push(family(
            "iopf_pipeline_total",
            "IOPF pipeline counters by stage.",
            Kind::Counter,
            [
                ("reports", s.reports),
                ("partial", s.partial),
                ("not_page_request", s.not_page_req),
                ("report_errors", s.report_errors),
                ("handled", s.handled),
                ("responses", s.responses),
                ("response_unmatched", s.response_unmatched),
                ("freed_unanswered", s.freed_unanswered),
                ("inflight_full", s.inflight_full),
                ("inflight_spilled", s.inflight_spilled),
                ("inflight_evicted", s.inflight_evicted),
                ("inflight_unaged", s.inflight_unaged),
                ("inflight_superseded", s.inflight_superseded),
                ("double_responses", s.double_responses),
                ("delivered", s.delivered),
                ("handler_unmatched", s.handler_unmatched),
                ("pending_parked", s.pending_parked),
                ("pending_migrated", s.pending_migrated),
                ("devices_overflow", s.devices_overflow),
                ("violations", s.violations),
                ("policy_violations_overflow", s.policy_violations_overflow),
                ("rate_unchecked", s.rate_unchecked),
                ("unrecoverable", s.unrecoverable),
                ("dmar_records_undecoded", s.dmar_records_undecoded),
                ("dmar_scan_truncated", s.dmar_scan_truncated),
            ]
            .iter()
            .map(|(stage, v)| counter(&[("stage", stage)], *v))
            .collect(),
        ));
        out.push(family(
            "iopf_viommu_events_total",
            "iommufd vIOMMU events (vEVENTQ) by type, the virtual device id the record names, and outcome: queued for the VMM, lost (queue full; the kernel flags the next read) or no_queue (no vEVENTQ of that type).",
            Kind::Counter,
            snap.vevents
                .iter()
                .map(|(k, v)| {
                    let id = k.virt_id.to_string();
                    counter(
                        &[
                            ("type", iopf_common::viommu::type_label(k.ty)),
                            ("virt_id", &id),
                            ("outcome", iopf_common::viommu::outcome_label(k.outcome)),
                        ],
                        *v,
                    )
                })
                .collect(),
        ));
        out.push(family(
            "iopf_events_total",
            "Events written to the ring buffer.",
            Kind::Counter,
            vec![counter(&[], s.events)],
        ));
        out.push(family(
            "iopf_events_dropped_total",
            "IOPF events lost because the ring buffer was full.",
            Kind::Counter,
            vec![counter(&[], s.events_dropped)],
        ));
        crate::vtd::metrics::families(&snap, s, out);
        crate::smmu::metrics::families(&snap, s, out);
        crate::amdvi::metrics::families(&snap, s, out);
    }
}
