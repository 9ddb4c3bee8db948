//! Per-program statistics the kernel keeps: how often a program was skipped because it was
//! already running on that CPU (`recursion_misses`), and its run count and time when
//! `kernel.bpf_stats_enabled` is on.
//!
//! Why misses matter: on a preemptible kernel an fentry/fexit program can be preempted, and
//! the BPF trampoline skips the same program on that CPU until the first run ends. Two
//! kworkers answering fault groups on one CPU can therefore lose a page response. The kernel
//! counts each skip; exporting it keeps that loss visible. (kprobes run with preemption off
//! and do not skip this way.)

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub recursion_misses: u64,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// A loaded program, held by its own fd so the statistics stay readable.
pub struct Tracked {
    pub name: String,
    fd: OwnedFd,
}

impl Tracked {
    /// Duplicates the fd of program `name` of `ebpf` (None when it is not loaded).
    pub fn of(ebpf: &aya::Ebpf, name: &str) -> Option<Self> {
        let p = ebpf.program(name)?;
        let fd = p.fd().ok()?.as_fd().try_clone_to_owned().ok()?;
        Some(Self { name: name.to_owned(), fd })
    }

    /// A program pinned at `path` (an adopted `--pin` state), opened with BPF_OBJ_GET.
    pub fn from_pin(name: &str, path: &std::path::Path) -> std::io::Result<Self> {
        use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut attr = crate::bpfsys::zeroed_attr();
        attr.__bindgen_anon_4.pathname = c.as_ptr() as u64;
        // SAFETY: BPF_OBJ_GET reads the NUL-terminated path `c`, alive for the call, and
        // returns a new descriptor.
        let fd = unsafe { crate::bpfsys::bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) }?;
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        Ok(Self { name: name.to_owned(), fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } })
    }

    pub fn stats(&self) -> std::io::Result<ProgStats> {
        // SAFETY: bpf_prog_info is a plain C struct; all-zero is valid.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        let mut attr = crate::bpfsys::zeroed_attr();
        attr.info.bpf_fd = self.fd.as_raw_fd() as u32;
        attr.info.info_len = size_of::<bpf_prog_info>() as u32;
        attr.info.info = &raw mut info as u64;
        // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes into `info`, which
        // outlives the call.
        unsafe { crate::bpfsys::bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
        Ok(ProgStats { recursion_misses: info.recursion_misses, run_cnt: info.run_cnt, run_time_ns: info.run_time_ns })
    }
}

/// Every program of `ebpf` that is loaded (attached, or loaded by a probe), for `/metrics`.
pub fn track_loaded(ebpf: &aya::Ebpf) -> Vec<Tracked> {
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
    names.iter().filter_map(|n| Tracked::of(ebpf, n)).collect()
}

/// Who turned the kernel's run-time statistics on (run count and time per program cost a
/// clock read per run, so they are off by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsBy {
    /// `run --bpf-stats`: on while the agent holds the BPF_ENABLE_STATS descriptor; the
    /// kernel turns them off again when the agent exits, unless someone else wants them.
    Agent,
    /// `kernel.bpf_stats_enabled = 1`, set by the administrator.
    Sysctl,
    Off,
}

impl StatsBy {
    pub fn label(self) -> &'static str {
        match self {
            StatsBy::Agent => "agent",
            StatsBy::Sysctl => "sysctl",
            StatsBy::Off => "off",
        }
    }
}

/// Turns the statistics on for this process's lifetime when `want` (the returned descriptor
/// must be kept), and says who has them on.
pub fn enable_stats(want: bool) -> (Option<OwnedFd>, StatsBy) {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1");
    if !want {
        return (None, if sysctl { StatsBy::Sysctl } else { StatsBy::Off });
    }
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => (Some(fd), StatsBy::Agent),
        Err(e) => {
            eprintln!(
                "iopf-agent: WARNING: --bpf-stats: the kernel refused BPF_ENABLE_STATS ({e}): no per-program run counts or times"
            );
            (None, if sysctl { StatsBy::Sysctl } else { StatsBy::Off })
        }
    }
}

/// `iopf_program_misses_total{program}` and, while the statistics are on, run counts and
/// times, read from the kernel at scrape time.
pub struct ProgramSource {
    pub progs: Vec<Tracked>,
    pub stats_by: StatsBy,
    /// Held: the statistics stay on while it is open.
    pub _stats_fd: Option<OwnedFd>,
}

impl crate::metrics::Source for ProgramSource {
    fn collect(&self, out: &mut Vec<crate::metrics::Family>) {
        use crate::metrics::{Kind, counter, family, gauge};
        let stats: Vec<(&str, ProgStats)> =
            self.progs.iter().filter_map(|p| p.stats().ok().map(|s| (p.name.as_str(), s))).collect();
        out.push(family(
            "iopf_program_misses_total",
            "Runs of each loaded program the kernel skipped because the program was already running on that CPU (a preempted fentry/fexit program): events lost at the hook.",
            Kind::Counter,
            stats.iter().map(|(n, s)| counter(&[("program", n)], s.recursion_misses)).collect(),
        ));
        out.push(family(
            "iopf_bpf_stats",
            "1 for who has the kernel's per-program run statistics on: agent (run --bpf-stats), sysctl (kernel.bpf_stats_enabled), or off.",
            Kind::Gauge,
            vec![gauge(&[("enabled_by", self.stats_by.label())], 1.0)],
        ));
        let on = self.stats_by != StatsBy::Off;
        out.push(family(
            "iopf_program_runs_total",
            "Runs of each loaded program counted by the kernel while its statistics are on (iopf_bpf_stats); no series when they are off.",
            Kind::Counter,
            if on { stats.iter().map(|(n, s)| counter(&[("program", n)], s.run_cnt)).collect() } else { Vec::new() },
        ));
        out.push(family(
            "iopf_program_run_seconds_total",
            "Time spent in each loaded program, by the kernel's own accounting, while its statistics are on; divided by iopf_program_runs_total it is the cost per run.",
            Kind::Counter,
            if on {
                stats.iter().map(|(n, s)| gauge(&[("program", n)], s.run_time_ns as f64 * 1e-9)).collect()
            } else {
                Vec::new()
            },
        ));
    }
}
