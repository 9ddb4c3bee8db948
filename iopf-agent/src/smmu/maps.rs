//! The SMMUv3 counters as the agent reads them at scrape time, summed over CPUs into the
//! IOPF snapshot.

use aya::maps::{MapData, PerCpuHashMap};
use iopf_common::smmu::SmmuKey;

use crate::{
    iopf::maps::{IopfSnapshot, MapsError, sum_per_cpu, take},
    pin::store::MapStore,
};

pub struct SmmuMaps {
    events: PerCpuHashMap<MapData, SmmuKey, u64>,
}

impl SmmuMaps {
    pub fn take(store: &mut (impl MapStore + ?Sized)) -> Result<Self, MapsError> {
        Ok(Self { events: take(store, "SMMU_COUNTS")? })
    }

    pub fn read_into(&self, ncpus: usize, s: &mut IopfSnapshot) -> Result<(), MapsError> {
        sum_per_cpu(&self.events, "SMMU_COUNTS", ncpus, |k, per_cpu: &[u64]| {
            *s.smmu.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })
    }
}
