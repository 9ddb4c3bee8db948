//! Which events `trace` shows: every given criterion must hold.

use iopf_common::{
    dmar::{DmarEvent, bdf_name},
    iopf::{Config, Event, Level, response_label},
    vtd_report::ReportWalkEvent,
};

use crate::iopf::maps::dev_str;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Iopf,
    Dmar,
    /// Walked page requests of Intel devices (`vtd_page_request`).
    PageRequest,
    /// Arm SMMUv3 event records (`smmu_event`).
    Smmu,
    /// AMD-Vi event log entries (`amdvi_event`).
    Amdvi,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub devices: Vec<String>,
    pub pasids: Vec<u32>,
    /// Level labels (`first`, `second`, `unknown`).
    pub levels: Vec<String>,
    /// Configuration labels (`flat_kernel`, `nested`, ...).
    pub configs: Vec<String>,
    /// Response labels (`success`, `invalid`, `failure`, `none`).
    pub responses: Vec<String>,
    /// Service time at least this (recoverable faults; DMAR records have none and are
    /// left out when it is set).
    pub min_latency_ns: Option<u64>,
    pub kinds: Vec<Kind>,
    /// Only events that violate a policy.
    pub violations_only: bool,
}

fn any_or<T: PartialEq>(wanted: &[T], got: &T) -> bool {
    wanted.is_empty() || wanted.contains(got)
}

impl Filter {
    pub fn iopf(&self, e: &Event) -> bool {
        any_or(&self.kinds, &Kind::Iopf)
            && any_or(&self.devices, &dev_str(&e.dev))
            && any_or(&self.pasids, &e.fault.pasid)
            && any_or(&self.levels, &Level::from_u8(e.level).label().to_owned())
            && any_or(&self.configs, &Config::from_u8(e.config).label().to_owned())
            && any_or(&self.responses, &response_label(e.code).to_owned())
            && self.min_latency_ns.is_none_or(|m| e.service_ns >= m)
            && (!self.violations_only || e.verdict & !iopf_common::policy::VERDICT_CHECKED != 0)
    }

    pub fn dmar(&self, e: &DmarEvent) -> bool {
        let pasid_ok = self.pasids.is_empty() || (e.pasid_present != 0 && self.pasids.contains(&e.pasid));
        any_or(&self.kinds, &Kind::Dmar)
            && any_or(&self.devices, &dev_str(&bdf_name(e.segment, e.source_id)))
            && pasid_ok
            && any_or(&self.levels, &Level::from_u8(e.level).label().to_owned())
            // DMAR records have no configuration, response or service time.
            && self.configs.is_empty()
            && self.responses.is_empty()
            && self.min_latency_ns.is_none()
            && (!self.violations_only || e.verdict & !iopf_common::policy::VERDICT_CHECKED != 0)
    }

    pub fn amdvi(&self, e: &iopf_common::amdvi::AmdviEvent) -> bool {
        any_or(&self.kinds, &Kind::Amdvi)
            && any_or(&self.devices, &dev_str(&e.dev))
            // Entries carry no PASID we report, no stage (always `unknown`), configuration,
            // response or service time.
            && self.pasids.is_empty()
            && any_or(&self.levels, &Level::Unknown.label().to_owned())
            && self.configs.is_empty()
            && self.responses.is_empty()
            && self.min_latency_ns.is_none()
            && (!self.violations_only || e.verdict & !iopf_common::policy::VERDICT_CHECKED != 0)
    }

    pub fn smmu(&self, e: &iopf_common::smmu::SmmuEvent) -> bool {
        let pasid_ok =
            self.pasids.is_empty() || (e.flags & iopf_common::smmu::FLAG_SSV != 0 && self.pasids.contains(&e.ssid));
        any_or(&self.kinds, &Kind::Smmu)
            && any_or(&self.devices, &dev_str(&e.dev))
            && pasid_ok
            && any_or(&self.levels, &Level::from_u8(e.level).label().to_owned())
            // Event records have no configuration, response or service time.
            && self.configs.is_empty()
            && self.responses.is_empty()
            && self.min_latency_ns.is_none()
            && (!self.violations_only || e.verdict & !iopf_common::policy::VERDICT_CHECKED != 0)
    }

    pub fn page_request(&self, e: &ReportWalkEvent) -> bool {
        let pasid_ok = self.pasids.is_empty() || (e.pasid_present != 0 && self.pasids.contains(&e.pasid));
        let level = e.walk.classified_level();
        any_or(&self.kinds, &Kind::PageRequest)
            && any_or(&self.devices, &dev_str(&bdf_name(e.segment, e.source_id)))
            && pasid_ok
            && any_or(&self.levels, &level.label().to_owned())
            // A walk has no configuration, response or service time: those are its fault's
            // IOPF event's. Its verdict is its stage's against the device's levels.
            && self.configs.is_empty()
            && self.responses.is_empty()
            && self.min_latency_ns.is_none()
            && (!self.violations_only || e.verdict & !iopf_common::policy::VERDICT_CHECKED != 0)
    }
}
