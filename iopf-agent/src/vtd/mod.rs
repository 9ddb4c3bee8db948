//! The Intel VT-d family, the agent's half: which programs run (`plan`), the maps read at
//! scrape time (`maps`), the metric families (`metrics`) and the event lines (`ndjson`). The
//! kernel half is `iopf-ebpf/src/vtd/`; the shared layouts are `iopf_common::{dmar, walk}`.

pub mod maps;
pub mod metrics;
pub mod ndjson;
pub mod plan;
