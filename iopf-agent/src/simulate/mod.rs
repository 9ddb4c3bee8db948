//! `iopf-agent simulate`: drive a scenario of synthetic faults through the real in-kernel
//! programs (BPF_PROG_TEST_RUN), compare the kernel's counters with the scenario's
//! expectation, and optionally serve the resulting metrics.

pub mod drive;
pub mod model;
pub mod run;
pub mod scenario;
