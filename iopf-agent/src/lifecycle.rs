//! When this agent started, since when its counters count, and how often an agent was
//! restarted on them. Kept in `IOPF_FLAGS`, so with `run --pin` they outlive the process the
//! way the counters do: a restart shows as a new start time over unbroken counters, and
//! without `--pin` as a new start time and new "counting since" (the counters began again).

use std::time::{SystemTime, UNIX_EPOCH};

use aya::maps::{Array, MapData};
use iopf_common::iopf::{FLAG_COUNTING_SINCE, FLAG_RESTARTS};

use crate::{
    iopf::maps::MapsError,
    metrics::{Family, Kind, Source, counter, family, gauge},
    pin::store::MapStore,
};

pub struct Lifecycle {
    flags: Array<MapData, u64>,
    started: u64,
    pinned: bool,
}

/// Unix time, seconds.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Lifecycle {
    /// Takes `IOPF_FLAGS` from `store`. `adopted`: the maps are a pinned state an earlier agent
    /// made (its start counts one restart); else they are new and count from now. `pinned`:
    /// this run pins or adopted its state.
    pub fn take(store: &mut (impl MapStore + ?Sized), adopted: bool, pinned: bool) -> Result<Self, MapsError> {
        let map = store.take_map("IOPF_FLAGS").ok_or(MapsError::Missing("IOPF_FLAGS"))?;
        let err = |source| MapsError::Map { map: "IOPF_FLAGS", source };
        let mut flags: Array<MapData, u64> = Array::try_from(map).map_err(err)?;
        let started = now();
        if adopted {
            let n = flags.get(&FLAG_RESTARTS, 0).map_err(err)?;
            flags.set(FLAG_RESTARTS, &(n + 1), 0).map_err(err)?;
        } else {
            flags.set(FLAG_COUNTING_SINCE, &started, 0).map_err(err)?;
        }
        Ok(Self { flags, started, pinned })
    }

    pub fn restarts(&self) -> u64 {
        self.flags.get(&FLAG_RESTARTS, 0).unwrap_or(0)
    }

    pub fn counting_since(&self) -> u64 {
        self.flags.get(&FLAG_COUNTING_SINCE, 0).unwrap_or(0)
    }
}

impl Source for Lifecycle {
    fn collect(&self, out: &mut Vec<Family>) {
        out.push(family(
            "iopf_agent_start_time_seconds",
            "Unix time this agent process started.",
            Kind::Gauge,
            vec![gauge(&[], self.started as f64)],
        ));
        out.push(family(
            "iopf_agent_counting_since_seconds",
            "Unix time the kernel-side counters began: this process's start, or with --pin the first start of the agent whose pinned state was adopted (restarts in between lost nothing).",
            Kind::Gauge,
            vec![gauge(&[], self.counting_since() as f64)],
        ));
        out.push(family(
            "iopf_agent_restarts_total",
            "Agents that adopted the pinned state after the one that made it (--pin); 0 without --pin.",
            Kind::Counter,
            vec![counter(&[], self.restarts())],
        ));
        out.push(family(
            "iopf_agent_pinned",
            "1 when the programs and maps are pinned (--pin): they stay attached and counting while the agent is down.",
            Kind::Gauge,
            vec![gauge(&[], if self.pinned { 1.0 } else { 0.0 })],
        ));
    }
}
