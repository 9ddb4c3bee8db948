//! The AMD-Vi counters as the agent reads them at scrape time, summed over CPUs into the
//! IOPF snapshot.

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use iopf_common::{
    amdvi::{AmdviKey, PprKey, PprResponseKey},
    hist::Histogram,
};

use crate::{
    iopf::maps::{IopfSnapshot, MapsError, sum_per_cpu, take},
    pin::store::MapStore,
};

pub struct AmdviMaps {
    events: PerCpuHashMap<MapData, AmdviKey, u64>,
    ppr: PerCpuHashMap<MapData, PprKey, u64>,
    responses: PerCpuHashMap<MapData, PprResponseKey, u64>,
    response_ns: PerCpuArray<MapData, Histogram>,
}

impl AmdviMaps {
    pub fn take(store: &mut (impl MapStore + ?Sized)) -> Result<Self, MapsError> {
        Ok(Self {
            events: take(store, "AMDVI_COUNTS")?,
            ppr: take(store, "AMDVI_PPR_COUNTS")?,
            responses: take(store, "AMDVI_PPR_RESPONSES")?,
            response_ns: take(store, "AMDVI_PPR_RESPONSE_NS")?,
        })
    }

    pub fn read_into(&self, ncpus: usize, s: &mut IopfSnapshot) -> Result<(), MapsError> {
        sum_per_cpu(&self.events, "AMDVI_COUNTS", ncpus, |k, per_cpu: &[u64]| {
            *s.amdvi.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })?;
        sum_per_cpu(&self.ppr, "AMDVI_PPR_COUNTS", ncpus, |k, per_cpu: &[u64]| {
            *s.amdvi_ppr.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })?;
        sum_per_cpu(&self.responses, "AMDVI_PPR_RESPONSES", ncpus, |k, per_cpu: &[u64]| {
            *s.amdvi_ppr_responses.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })?;
        let name = "AMDVI_PPR_RESPONSE_NS";
        let per_cpu = self.response_ns.get(&0, 0).map_err(|source| MapsError::Map { map: name, source })?;
        for h in per_cpu.iter() {
            s.amdvi_ppr_response_ns.merge(h);
        }
        Ok(())
    }
}
