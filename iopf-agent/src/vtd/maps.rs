//! The VT-d maps as the agent reads them at scrape time: decoded records per (segment,
//! source id, reason, access, level), and the walk's cost, each summed over CPUs into the
//! IOPF snapshot.

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use iopf_common::{dmar::DmarKey, hist::Histogram};

use crate::{
    iopf::maps::{IopfSnapshot, MapsError, sum_per_cpu, take},
    pin::store::MapStore,
};

pub struct VtdMaps {
    dmar: PerCpuHashMap<MapData, DmarKey, u64>,
    walk_ns: PerCpuArray<MapData, Histogram>,
}

impl VtdMaps {
    pub fn take(store: &mut (impl MapStore + ?Sized)) -> Result<Self, MapsError> {
        Ok(Self { dmar: take(store, "DMAR_COUNTS")?, walk_ns: take(store, "DMAR_WALK_NS")? })
    }

    pub fn read_into(&self, ncpus: usize, s: &mut IopfSnapshot) -> Result<(), MapsError> {
        sum_per_cpu(&self.dmar, "DMAR_COUNTS", ncpus, |k, per_cpu: &[u64]| {
            *s.dmar.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })?;
        let per_cpu = self.walk_ns.get(&0, 0).map_err(|source| MapsError::Map { map: "DMAR_WALK_NS", source })?;
        for h in per_cpu.iter() {
            s.walk_ns.merge(h);
        }
        Ok(())
    }
}
