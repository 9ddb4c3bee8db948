//! What this kernel lets us do, probed once: BTF, tracefs, ring buffers, BPF stats, and
//! whether fentry/fexit trampolines and kprobes actually attach (probed with empty programs,
//! because "present in the config" is not "allowed here": ftrace can be locked down).

use std::path::{Path, PathBuf};

use aya::{Ebpf, maps::MapType, programs::KProbe};
use serde::Serialize;

use crate::kabi::KernelBtf;

/// The function the attach probes use: present on every kernel this tool supports.
const PROBE_TARGET: &str = "handle_mm_fault";

#[derive(Debug, Clone, Serialize)]
pub struct Capability {
    pub available: bool,
    pub detail: String,
}

impl Capability {
    fn yes(detail: impl Into<String>) -> Self {
        Self { available: true, detail: detail.into() }
    }
    fn no(detail: impl Into<String>) -> Self {
        Self { available: false, detail: detail.into() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Features {
    pub kernel: String,
    pub btf: Capability,
    pub tracefs: Capability,
    pub ring_buffer: Capability,
    pub bpf_stats: Capability,
    pub fentry: Capability,
    pub kprobe: Capability,
    /// Whether the kernel can preempt a running fentry/fexit program (full preemption). Then
    /// a second task hitting the same hook on that CPU is skipped by the trampoline
    /// (counted in `iopf_program_misses_total`); kprobes run with preemption off.
    pub preempt_full: Capability,
    /// BPF compare-and-exchange / exchange (5.12+): the in-flight IOPF programs need them;
    /// without them those hooks are unavailable and page faults use the thread-keyed programs.
    pub bpf_atomics: Capability,
    #[serde(skip)]
    pub tracefs_path: Option<PathBuf>,
}

/// Set to `1`, the agent acts as on a kernel whose BPF lacks compare-and-exchange (as 5.10):
/// in-flight faults are claimed through the hash map. It lets that path be tested on any kernel.
pub const ASSUME_NO_EXCHANGE_ENV: &str = "IOPF_ASSUME_NO_EXCHANGE";

/// Whether the kernel's BPF has compare-and-exchange and exchange (Linux 5.12+), probed once
/// before the object is loaded (the answer is one of its load-time constants): a four-
/// instruction socket filter doing one compare-and-exchange on its stack. A kernel without
/// them refuses it ("BPF_XADD uses reserved fields").
pub fn bpf_exchange() -> Capability {
    exchange_probed().0.clone()
}

/// Why this kernel certainly lacks BPF compare-and-exchange (the verifier refused it, or the
/// test switch says so); `None` when it has it or could not be asked (no privilege).
pub fn exchange_absent() -> Option<String> {
    let (c, definite) = exchange_probed();
    (!c.available && *definite).then(|| c.detail.clone())
}

fn exchange_probed() -> &'static (Capability, bool) {
    static ONCE: std::sync::OnceLock<(Capability, bool)> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var(ASSUME_NO_EXCHANGE_ENV).is_ok_and(|v| v == "1") {
            let c = Capability::no(format!(
                "assumed absent ({ASSUME_NO_EXCHANGE_ENV}=1): in-flight faults are claimed through the hash map, as on a kernel before 5.12"
            ));
            return (c, true);
        }
        match probe_exchange() {
            Ok(()) => (Capability::yes("BPF compare-and-exchange and exchange"), true),
            Err((e, _)) if e.raw_os_error() == Some(libc::EPERM) => {
                (Capability::no(format!("not probed: loading a BPF program was refused ({e})")), false)
            }
            Err((e, why)) => (
                Capability::no(format!(
                    "BPF compare-and-exchange refused ({e}{why}): this kernel's BPF lacks the atomics of Linux 5.12"
                )),
                true,
            ),
        }
    })
}

/// Err with the reason when the in-flight IOPF programs cannot run here: without
/// compare-and-exchange they claim faults through the hash map, which needs a tuple-keyed
/// (<= 6.8) ABI; group-keyed kernels (6.9+) all have it.
pub fn require_in_flight(tuple_keys: bool) -> Result<(), crate::error::AgentError> {
    let c = bpf_exchange();
    if c.available || tuple_keys {
        Ok(())
    } else {
        Err(crate::error::AgentError::NoAtomics(format!("{}, and its IOPF ABI keys faults by group", c.detail)))
    }
}

/// Loads the probe; on refusal, the error and ": " + the verifier's last line.
fn probe_exchange() -> Result<(), (std::io::Error, String)> {
    use crate::rawprog::{EXIT, Insn, MOV64_K};
    const ST_MEM_DW: u8 = 0x02 | 0x60 | 0x18;
    const STX_ATOMIC_DW: u8 = 0x03 | 0xc0 | 0x18;
    const CMPXCHG: i32 = 0xf0 | 0x01;
    const R10: u8 = 10;
    let insns = [
        Insn { code: ST_MEM_DW, regs: R10, off: -8, imm: 0 }, // *(u64 *)(r10 - 8) = 0
        Insn { code: MOV64_K, regs: 0, off: 0, imm: 0 },      // r0 = 0
        Insn { code: MOV64_K, regs: 1, off: 0, imm: 1 },      // r1 = 1
        Insn { code: STX_ATOMIC_DW, regs: R10 | 1 << 4, off: -8, imm: CMPXCHG }, // r0 = cmpxchg(r10 - 8, r0, r1)
        Insn { code: MOV64_K, regs: 0, off: 0, imm: 0 },      // r0 = 0
        Insn { code: EXIT, regs: 0, off: 0, imm: 0 },
    ];
    crate::rawprog::load(aya_obj::generated::bpf_prog_type::BPF_PROG_TYPE_SOCKET_FILTER, None, &insns).map(drop)
}

/// The preemption model: the live one from debugfs where the kernel can switch it
/// (PREEMPT_DYNAMIC), else the one the kernel was built with, from its build banner.
fn preemption() -> Capability {
    if let Ok(s) = std::fs::read_to_string("/sys/kernel/debug/sched/preempt") {
        // "none voluntary (full) lazy": the current model is in parentheses.
        let cur = s.split_whitespace().find(|w| w.starts_with('(')).map(|w| w.trim_matches(|c| c == '(' || c == ')'));
        return match cur {
            Some(m @ ("full" | "lazy")) => Capability::yes(format!(
                "preemption model {m} (debugfs): a preempted fentry program is skipped by the next task on its CPU; the skips are counted (iopf_program_misses_total); --force-rung kprobe avoids them"
            )),
            Some(m) => Capability::no(format!("preemption model {m} (debugfs): BPF programs are not preempted")),
            None => Capability::no(format!("unreadable preemption model {s:?}")),
        };
    }
    parse_build_preemption(&std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default())
}

/// From the build banner (`uname -v`), e.g. `#1 SMP PREEMPT_DYNAMIC ...` or `#1 SMP PREEMPT ...`.
pub fn parse_build_preemption(banner: &str) -> Capability {
    let words: Vec<&str> = banner.split_whitespace().collect();
    if words.iter().any(|w| *w == "PREEMPT_RT" || *w == "PREEMPT") {
        Capability::yes(
            "built with full preemption (kernel banner): a preempted fentry program is skipped by the next task on its CPU; the skips are counted (iopf_program_misses_total); --force-rung kprobe avoids them",
        )
    } else if words.contains(&"PREEMPT_DYNAMIC") {
        Capability::no(
            "PREEMPT_DYNAMIC, the boot-time model is not readable here (mount debugfs to see it): under `full` a preempted fentry program is skipped by the next task on its CPU, and the skips are counted (iopf_program_misses_total)",
        )
    } else {
        Capability::no("built without full preemption (kernel banner): BPF programs are not preempted")
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

impl Features {
    /// Probes everything. `ebpf` is the loaded object holding the `probe_*` programs; the
    /// probes attach for an instant and detach.
    /// `kernel_btf`: the kernel's BTF, for the fentry probe's target.
    pub fn probe(ebpf: &mut Ebpf, btf_dir: &Path, kernel_btf: Option<&KernelBtf>) -> Self {
        let btf = match std::fs::metadata(btf_dir.join("vmlinux")) {
            Ok(m) => Capability::yes(format!("{} ({} KiB)", btf_dir.join("vmlinux").display(), m.len() / 1024)),
            Err(e) => {
                Capability::no(format!("{}: {e} (needs CONFIG_DEBUG_INFO_BTF=y)", btf_dir.join("vmlinux").display()))
            }
        };
        let (tracefs, tracefs_path) = tracefs();
        let ring_buffer = match aya::sys::is_map_supported(MapType::RingBuf) {
            Ok(true) => Capability::yes("BPF_MAP_TYPE_RINGBUF"),
            Ok(false) => Capability::no("BPF_MAP_TYPE_RINGBUF not supported (kernel < 5.8)"),
            Err(e) => Capability::no(format!("probe failed: {e}")),
        };
        let bpf_stats = match std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled") {
            Ok(v) if v.trim() == "1" => Capability::yes("kernel.bpf_stats_enabled=1 (per-program run time counted)"),
            Ok(_) => Capability::no("kernel.bpf_stats_enabled=0 (enable with sysctl to see per-program run time)"),
            Err(e) => Capability::no(format!("kernel.bpf_stats_enabled unreadable: {e}")),
        };
        let fentry = probe_fentry(kernel_btf);
        let kprobe = probe_kprobe(ebpf);
        let preempt_full = preemption();
        let bpf_atomics = bpf_exchange();
        Features {
            kernel: kernel_release(),
            btf,
            tracefs,
            ring_buffer,
            bpf_stats,
            fentry,
            kprobe,
            preempt_full,
            bpf_atomics,
            tracefs_path,
        }
    }
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted (we are root).
fn tracefs() -> (Capability, Option<PathBuf>) {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return (Capability::yes(p), Some(p.into()));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null as tracefs takes none.
    let rc = unsafe { libc::mount(c"nodev".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        (Capability::yes("/sys/kernel/tracing (mounted by iopf-agent)"), Some("/sys/kernel/tracing".into()))
    } else {
        let e = std::io::Error::last_os_error();
        (Capability::no(format!("tracefs not mounted and mounting it failed: {e}")), None)
    }
}

/// An empty fentry program loaded and attached to `PROBE_TARGET` for an instant, by raw
/// bpf(2) with the target's id from our BTF index.
fn probe_fentry(kernel_btf: Option<&KernelBtf>) -> Capability {
    use aya_obj::generated::{bpf_attach_type, bpf_prog_type};
    let Some(btf) = kernel_btf else { return Capability::no("no kernel BTF") };
    let Some(id) = btf.vmlinux().func_id(PROBE_TARGET) else {
        return Capability::no(format!("{PROBE_TARGET} is not a function in the kernel's BTF"));
    };
    let attach = crate::rawprog::Attach { kind: bpf_attach_type::BPF_TRACE_FENTRY, btf_id: id };
    let prog =
        match crate::rawprog::load(bpf_prog_type::BPF_PROG_TYPE_TRACING, Some(attach), &crate::rawprog::RETURN_ZERO) {
            Ok(p) => p,
            Err((e, why)) => return Capability::no(format!("fentry load refused: {e}{why}")),
        };
    match crate::rawprog::attach_tracing(&prog) {
        // The link and the program go when their descriptors drop.
        Ok(_link) => Capability::yes(format!("trampoline attach to {PROBE_TARGET} works")),
        Err(e) => Capability::no(format!("fentry attach refused: {e} (BPF trampolines/ftrace blocked)")),
    }
}

fn probe_kprobe(ebpf: &mut Ebpf) -> Capability {
    if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        return Capability::no("no kprobe PMU (/sys/bus/event_source/devices/kprobe): kernel without CONFIG_KPROBES");
    }
    let Some(prog) = ebpf.program_mut("probe_kprobe") else {
        return Capability::no("probe program missing from the object");
    };
    let prog: &mut KProbe = match prog.try_into() {
        Ok(p) => p,
        Err(e) => return Capability::no(format!("probe program: {e}")),
    };
    if let Err(e) = prog.load() {
        return Capability::no(format!("kprobe load refused: {}", crate::error::chain(&e)));
    }
    let res = match prog.attach(PROBE_TARGET, 0) {
        Ok(link) => {
            let _ = prog.detach(link);
            Capability::yes(format!("kprobe attach to {PROBE_TARGET} works"))
        }
        Err(e) => Capability::no(format!("kprobe attach refused: {}", crate::error::chain(&e))),
    };
    let _ = prog.unload();
    res
}

#[cfg(test)]
mod preempt_tests {
    use super::parse_build_preemption;

    #[test]
    fn banner_words_decide_the_model() {
        assert!(parse_build_preemption("#1 SMP PREEMPT Tue Dec  1 10:00:00 UTC 2026").available);
        assert!(parse_build_preemption("#1 SMP PREEMPT_RT Tue Dec  1").available);
        assert!(!parse_build_preemption("#1 SMP PREEMPT_DYNAMIC Debian 7.3.4-1").available);
        assert!(!parse_build_preemption("#1 SMP Debian 5.10.0-46").available);
    }
}
