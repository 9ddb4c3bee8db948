//! `iopf-agent trace`: live events for people (columns, colour on a terminal) or machines
//! (NDJSON, schema `iopf.dev/trace/v1`), filtered, with wall-clock times.

pub mod clock;
pub mod filter;
pub mod human;
pub mod json;

use iopf_common::{dmar::DmarEvent, iopf::Consts, iopf::Event, vtd_report::ReportWalkEvent};

pub use filter::Filter;

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `run --trace`: the event stream as it always was (no time, no schema field).
    Stream,
    /// `trace --json`.
    Json,
    /// `trace`: aligned columns; `color` for ANSI colours.
    Human { color: bool },
    /// `record`: the records themselves, for the recording file.
    Record,
}

/// What `run` needs to print a trace.
#[derive(Debug, Clone)]
pub struct TraceOutput {
    pub format: Format,
    pub filter: Filter,
    pub clock: clock::WallClock,
    /// Names for the policy ids events carry.
    pub policies: crate::policy::PolicyNames,
}

impl TraceOutput {
    /// The plain event stream of `run --trace`: every event, as before.
    pub fn stream() -> Self {
        TraceOutput {
            format: Format::Stream,
            filter: Filter::default(),
            clock: clock::WallClock::now(),
            policies: crate::policy::PolicyNames::default(),
        }
    }

    pub fn iopf(&self, buf: &mut Vec<u8>, e: &Event, consts: &Consts) {
        if !self.filter.iopf(e) {
            return;
        }
        self.policies.with(e.policy_id, |policy| match self.format {
            Format::Stream => crate::iopf::ndjson::write_event(buf, e, consts, policy),
            Format::Json => json::iopf(buf, e, consts, &self.clock, policy),
            Format::Human { color } => human::iopf(buf, e, consts, &self.clock, color, policy),
            Format::Record => crate::record::file::encode(buf, &crate::record::Record::Iopf(*e)),
        })
    }

    pub fn dmar(&self, buf: &mut Vec<u8>, e: &DmarEvent) {
        if !self.filter.dmar(e) {
            return;
        }
        self.policies.with(e.policy_id, |policy| match self.format {
            Format::Stream => crate::vtd::ndjson::write_dmar(buf, e, policy),
            Format::Json => json::dmar(buf, e, &self.clock, policy),
            Format::Human { color } => human::dmar(buf, e, &self.clock, color, policy),
            Format::Record => crate::record::file::encode(buf, &crate::record::Record::Dmar(*e)),
        })
    }

    pub fn page_request(&self, buf: &mut Vec<u8>, e: &ReportWalkEvent) {
        if !self.filter.page_request(e) {
            return;
        }
        self.policies.with(e.policy_id, |policy| match self.format {
            Format::Stream => crate::vtd::ndjson::write_page_request(buf, e, policy),
            Format::Json => json::page_request(buf, e, &self.clock, policy),
            Format::Human { color } => human::page_request(buf, e, &self.clock, color, policy),
            Format::Record => crate::record::file::encode(buf, &crate::record::Record::PageRequest(*e)),
        })
    }

    /// AMD-Vi event log entries.
    pub fn amdvi(&self, buf: &mut Vec<u8>, e: &iopf_common::amdvi::AmdviEvent) {
        if !self.filter.amdvi(e) {
            return;
        }
        self.policies.with(e.policy_id, |policy| match self.format {
            Format::Stream => crate::amdvi::ndjson::write_amdvi(buf, e, policy),
            Format::Json => json::amdvi(buf, e, &self.clock, policy),
            Format::Human { color } => human::amdvi(buf, e, &self.clock, color, policy),
            Format::Record => crate::record::file::encode(buf, &crate::record::Record::Amdvi(*e)),
        })
    }

    /// SMMUv3 event records.
    pub fn smmu(&self, buf: &mut Vec<u8>, e: &iopf_common::smmu::SmmuEvent) {
        if !self.filter.smmu(e) {
            return;
        }
        self.policies.with(e.policy_id, |policy| match self.format {
            Format::Stream => crate::smmu::ndjson::write_smmu(buf, e, policy),
            Format::Json => json::smmu(buf, e, &self.clock, policy),
            Format::Human { color } => human::smmu(buf, e, &self.clock, color, policy),
            Format::Record => crate::record::file::encode(buf, &crate::record::Record::Smmu(*e)),
        })
    }

    /// The header line of the human format (nothing for the others).
    pub fn header(&self) -> Option<String> {
        matches!(self.format, Format::Human { .. }).then(human::header)
    }
}

/// Names of the set bits of an IOPF `perm` (uapi `IOMMU_FAULT_PERM_*`, unchanged since 5.x).
pub fn perm_names(perm: u32) -> impl Iterator<Item = &'static str> {
    const PERMS: [(u32, &str); 4] = [(1, "read"), (2, "write"), (4, "exec"), (8, "priv")];
    PERMS.into_iter().filter(move |(b, _)| perm & b != 0).map(|(_, n)| n)
}

/// Names of the set bits of an IOPF `flags`, from this kernel's constants.
pub fn flag_names(flags: u32, c: &Consts) -> Vec<&'static str> {
    let known =
        [(c.flag_pasid_valid, "pasid_valid"), (c.flag_last_page, "last_page"), (c.flag_needs_pasid, "needs_pasid")];
    known.into_iter().filter(|(b, _)| *b != 0 && flags & b != 0).map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests;
