//! The AMD-Vi family, the agent's half: which programs run and with which offsets (`plan`),
//! the counters read at scrape time (`maps`), the metric families (`metrics`) and the event
//! lines (`ndjson`). The kernel half is `iopf-ebpf/src/amdvi/`; the shared layouts are
//! `iopf_common::amdvi`.

pub mod maps;
pub mod metrics;
pub mod ndjson;
pub mod plan;
