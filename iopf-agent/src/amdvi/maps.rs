//! The AMD-Vi counters as the agent reads them at scrape time, summed over CPUs into the
//! IOPF snapshot.

use aya::maps::{MapData, PerCpuHashMap};
use iopf_common::amdvi::AmdviKey;

use crate::{
    iopf::maps::{IopfSnapshot, MapsError, sum_per_cpu, take},
    pin::store::MapStore,
};

pub struct AmdviMaps {
    events: PerCpuHashMap<MapData, AmdviKey, u64>,
}

impl AmdviMaps {
    pub fn take(store: &mut (impl MapStore + ?Sized)) -> Result<Self, MapsError> {
        Ok(Self { events: take(store, "AMDVI_COUNTS")? })
    }

    pub fn read_into(&self, ncpus: usize, s: &mut IopfSnapshot) -> Result<(), MapsError> {
        sum_per_cpu(&self.events, "AMDVI_COUNTS", ncpus, |k, per_cpu: &[u64]| {
            *s.amdvi.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })
    }
}
