//! The Arm SMMUv3 family, the agent's half: which programs run and with which offsets
//! (`plan`), the counters read at scrape time (`maps`), the metric families (`metrics`) and
//! the event lines (`ndjson`). The kernel half is `iopf-ebpf/src/smmu/`; the shared layouts
//! are `iopf_common::smmu`.

pub mod maps;
pub mod metrics;
pub mod ndjson;
pub mod plan;
