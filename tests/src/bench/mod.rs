//! The benchmarks' fixed method, shared by the host bench and the VM guest: per-round values,
//! their summary (median, bootstrap interval, range), the verdict against a target, and the
//! results file BENCHMARKS.md is generated from.

pub mod figure;
pub mod pinned;
pub mod procs;
pub mod progs;
pub mod report;
pub mod stats;
pub mod vm;
