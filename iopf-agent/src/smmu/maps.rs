//! The SMMUv3 counters as the agent reads them at scrape time, summed over CPUs into the
//! IOPF snapshot.

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use iopf_common::{hist::Histogram, smmu::SmmuKey};

use crate::{
    iopf::maps::{IopfSnapshot, MapsError, sum_per_cpu, take},
    pin::store::MapStore,
};

pub struct SmmuMaps {
    events: PerCpuHashMap<MapData, SmmuKey, u64>,
    walk_ns: PerCpuArray<MapData, Histogram>,
}

impl SmmuMaps {
    pub fn take(store: &mut (impl MapStore + ?Sized)) -> Result<Self, MapsError> {
        Ok(Self { events: take(store, "SMMU_COUNTS")?, walk_ns: take(store, "SMMU_WALK_NS")? })
    }

    pub fn read_into(&self, ncpus: usize, s: &mut IopfSnapshot) -> Result<(), MapsError> {
        sum_per_cpu(&self.events, "SMMU_COUNTS", ncpus, |k, per_cpu: &[u64]| {
            *s.smmu.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })?;
        let per_cpu = self.walk_ns.get(&0, 0).map_err(|source| MapsError::Map { map: "SMMU_WALK_NS", source })?;
        for h in per_cpu.iter() {
            s.smmu_walk_ns.merge(h);
        }
        Ok(())
    }
}
