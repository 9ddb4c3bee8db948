//! The VT-d maps as the agent reads them at scrape time: decoded records per (segment,
//! source id, reason, access, level), walked page requests per (segment, source id,
//! outcome), and the walks' cost, each summed over CPUs into the IOPF snapshot.

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use iopf_common::{dmar::DmarKey, hist::Histogram, vtd_report::ReportWalkKey};

use crate::{
    iopf::maps::{IopfSnapshot, MapsError, sum_per_cpu, take},
    pin::store::MapStore,
};

pub struct VtdMaps {
    dmar: PerCpuHashMap<MapData, DmarKey, u64>,
    walk_ns: PerCpuArray<MapData, Histogram>,
    report_walks: PerCpuHashMap<MapData, ReportWalkKey, u64>,
    report_walk_ns: PerCpuArray<MapData, Histogram>,
}

impl VtdMaps {
    pub fn take(store: &mut (impl MapStore + ?Sized)) -> Result<Self, MapsError> {
        Ok(Self {
            dmar: take(store, "DMAR_COUNTS")?,
            walk_ns: take(store, "DMAR_WALK_NS")?,
            report_walks: take(store, "VTD_REPORT_WALKS")?,
            report_walk_ns: take(store, "VTD_REPORT_WALK_NS")?,
        })
    }

    pub fn read_into(&self, ncpus: usize, s: &mut IopfSnapshot) -> Result<(), MapsError> {
        sum_per_cpu(&self.dmar, "DMAR_COUNTS", ncpus, |k, per_cpu: &[u64]| {
            *s.dmar.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })?;
        sum_per_cpu(&self.report_walks, "VTD_REPORT_WALKS", ncpus, |k, per_cpu: &[u64]| {
            *s.page_request_walks.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })?;
        for (map, name, into) in [
            (&self.walk_ns, "DMAR_WALK_NS", &mut s.walk_ns),
            (&self.report_walk_ns, "VTD_REPORT_WALK_NS", &mut s.page_request_walk_ns),
        ] {
            let per_cpu = map.get(&0, 0).map_err(|source| MapsError::Map { map: name, source })?;
            for h in per_cpu.iter() {
                into.merge(h);
            }
        }
        Ok(())
    }
}
