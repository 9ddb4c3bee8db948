//! IOPF capture in userspace: reading the aggregation maps, injecting synthetic faults,
//! reading events, attaching the real hooks.

pub mod attach;
pub mod batch;
pub mod events;
pub mod inject;
pub mod maps;
pub mod metrics;
pub mod ndjson;
