//! CPU page-fault tracing: attach on the rung the plan chose, select tasks, read the counts.

use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{
        FEntry, FExit, KProbe, PerfEvent, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use iopf_common::{
    hist::Histogram,
    pagefault::{PfCpu, PfStats},
};
use thiserror::Error;

use crate::pin::How;

use crate::hooks::{Plan, Rung};

#[derive(Debug, Error)]
pub enum PageFaultError {
    #[error("page-fault tracing is unavailable on this kernel: {0}")]
    Unavailable(String),
    /// Every rung was refused for want of privilege, not of a kernel feature.
    #[error(
        "page-fault tracing is not permitted to this process: {0} (the kernel has the hooks but refused them with EPERM: this process lacks a privilege the kernel asks for here, root or CAP_SYS_ADMIN beside CAP_BPF and CAP_PERFMON depending on the kernel and its lockdown; tracepoints also need tracefs)"
    )]
    NotPermitted(String),
    #[error("program `{prog}` could not be loaded or attached to `{target}`")]
    Attach { prog: &'static str, target: String, source: aya::programs::ProgramError },
    #[error("map `{0}` missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map `{map}` could not be used")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("cgroup `{path}` cannot be selected")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("cannot list online CPUs: {0}")]
    Cpus(String),
    #[error("kernel BTF needed for fentry")]
    Btf(#[source] aya::BtfError),
    /// Boxed: it carries paths and aya's errors.
    #[error(transparent)]
    Pin(Box<crate::pin::PinError>),
}

impl From<crate::pin::PinError> for PageFaultError {
    fn from(e: crate::pin::PinError) -> Self {
        PageFaultError::Pin(Box::new(e))
    }
}

/// Which tasks are measured.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub pids: Vec<u32>,
    pub cgroups: Vec<PathBuf>,
}

impl Selection {
    pub fn is_all(&self) -> bool {
        self.pids.is_empty() && self.cgroups.is_empty()
    }

    /// Checks what the flags name before anything is loaded: each cgroup a cgroup v2
    /// directory, each process alive. The message says which and how to fix it.
    pub fn check(&self) -> Result<(), String> {
        const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
        for path in &self.cgroups {
            let md = std::fs::metadata(path).map_err(|e| format!("--cgroup `{}`: {e}", path.display()))?;
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
            // SAFETY: statfs on a NUL-terminated path into a struct we own.
            let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
            let on_v2 = unsafe { libc::statfs(c.as_ptr(), &mut fs) } == 0 && fs.f_type as i64 == CGROUP2_SUPER_MAGIC;
            if !md.is_dir() || !on_v2 {
                return Err(format!(
                    "--cgroup `{}` is not a cgroup v2 directory (give one under /sys/fs/cgroup)",
                    path.display()
                ));
            }
        }
        for pid in &self.pids {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(format!("--pid {pid}: no such process"));
            }
        }
        Ok(())
    }
}

/// One snapshot of the page-fault maps, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PfSnapshot {
    pub stats: PfStats,
    pub hist: [Histogram; 2],
}

/// The per-CPU map the scrape path reads, taken out of the object so it can be shared.
pub struct PfMaps {
    cpu: PerCpuArray<MapData, PfCpu>,
}

impl PfMaps {
    pub fn take(store: &mut (impl crate::pin::store::MapStore + ?Sized)) -> Result<Self, PageFaultError> {
        let map = store.take_map("PF_CPU").ok_or(PageFaultError::MissingMap("PF_CPU"))?;
        let cpu = PerCpuArray::try_from(map).map_err(|source| PageFaultError::Map { map: "PF_CPU", source })?;
        Ok(Self { cpu })
    }

    pub fn snapshot(&self) -> Result<PfSnapshot, PageFaultError> {
        let mut snap = PfSnapshot::default();
        let per_cpu = self.cpu.get(&0, 0).map_err(|source| PageFaultError::Map { map: "PF_CPU", source })?;
        for c in per_cpu.iter() {
            snap.stats.merge(&c.stats);
            for (sum, h) in snap.hist.iter_mut().zip(c.hist.iter()) {
                sum.merge(h);
            }
        }
        Ok(snap)
    }
}

/// Adds processes and cgroups to the in-kernel selection (mode `Selected`).
pub fn select(ebpf: &mut Ebpf, sel: &Selection) -> Result<(), PageFaultError> {
    if !sel.pids.is_empty() {
        let mut tgids: HashMap<_, u32, u8> =
            HashMap::try_from(ebpf.map_mut("PF_TGIDS").ok_or(PageFaultError::MissingMap("PF_TGIDS"))?)
                .map_err(|source| PageFaultError::Map { map: "PF_TGIDS", source })?;
        for pid in &sel.pids {
            tgids.insert(pid, &1, 0).map_err(|source| PageFaultError::Map { map: "PF_TGIDS", source })?;
        }
    }
    if !sel.cgroups.is_empty() {
        let mut cgroups: HashMap<_, u64, u8> =
            HashMap::try_from(ebpf.map_mut("PF_CGROUPS").ok_or(PageFaultError::MissingMap("PF_CGROUPS"))?)
                .map_err(|source| PageFaultError::Map { map: "PF_CGROUPS", source })?;
        for path in &sel.cgroups {
            // A cgroup v2 id is the inode number of its directory.
            let ino =
                std::fs::metadata(path).map_err(|source| PageFaultError::Cgroup { path: path.clone(), source })?.ino();
            cgroups.insert(&ino, &1, 0).map_err(|source| PageFaultError::Map { map: "PF_CGROUPS", source })?;
        }
    }
    Ok(())
}

fn attach_err(
    prog: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(aya::programs::ProgramError) -> PageFaultError {
    let target = target.into();
    move |source| PageFaultError::Attach { prog, target, source }
}

fn prog<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, PageFaultError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| PageFaultError::Unavailable(format!("program `{name}` missing from the object")))?;
    p.try_into().map_err(attach_err(name, name))
}

/// The page-fault programs of one entry store (see the eBPF side's module comment).
pub struct Programs {
    pub tp_entry: &'static str,
    pub perf_minor: &'static str,
    pub perf_major: &'static str,
    pub fentry: &'static str,
    pub fexit: &'static str,
    pub kprobe: &'static str,
    pub kretprobe: &'static str,
}

/// Per-CPU slots claimed with compare-and-exchange (5.12+): no hash operation per fault.
pub const SLOT_PROGRAMS: Programs = Programs {
    tp_entry: "pf_tp_entry",
    perf_minor: "pf_perf_exit_minor",
    perf_major: "pf_perf_exit_major",
    fentry: "pf_fentry",
    fexit: "pf_fexit",
    kprobe: "pf_kprobe",
    kretprobe: "pf_kretprobe",
};

/// Entries in a hash keyed by thread: for kernels whose BPF lacks compare-and-exchange.
pub const TID_PROGRAMS: Programs = Programs {
    tp_entry: "pf_tp_entry_tid",
    perf_minor: "pf_perf_exit_minor_tid",
    perf_major: "pf_perf_exit_major_tid",
    fentry: "pf_fentry_tid",
    fexit: "pf_fexit_tid",
    kprobe: "pf_kprobe_tid",
    kretprobe: "pf_kretprobe_tid",
};

/// The programs for a kernel with (`true`) or without BPF compare-and-exchange.
pub fn programs(exchange: bool) -> &'static Programs {
    if exchange { &SLOT_PROGRAMS } else { &TID_PROGRAMS }
}

/// Attaches the page-fault programs `progs` on the planned rung. Links live as long as `ebpf`,
/// or are pinned or adopted (`how`). Returns the rung attached (an adopted state's).
/// `kernel_btf`: the kernel's BTF; fentry needs aya's parse of it (from sysfs when `None`).
pub fn attach(
    ebpf: &mut Ebpf,
    plan: &Plan,
    progs: &Programs,
    kernel_btf: Option<&crate::kabi::KernelBtf>,
    how: How,
) -> Result<Rung, PageFaultError> {
    if let Some(adopted) = how.adopted(plan.name) {
        return adopted.ok_or_else(|| {
            PageFaultError::Unavailable("the agent whose pinned state was adopted did not trace page faults".into())
        });
    }
    let target = plan.target.clone().unwrap_or_default();
    match plan.rung {
        // EPERM in the reasons: the kernel has the feature, this process may not use it.
        Rung::Unavailable if plan.reason.contains("Operation not permitted") => {
            return Err(PageFaultError::NotPermitted(plan.reason.clone()));
        }
        Rung::Unavailable => return Err(PageFaultError::Unavailable(plan.reason.clone())),
        Rung::Fentry => {
            let parsed;
            let btf = match kernel_btf.and_then(crate::kabi::KernelBtf::aya) {
                Some(b) => b,
                None => {
                    parsed = Btf::from_sys_fs().map_err(PageFaultError::Btf)?;
                    &parsed
                }
            };
            let p: &mut FEntry = prog(ebpf, progs.fentry)?;
            p.load(&target, btf).map_err(attach_err(progs.fentry, &target))?;
            let id = p.attach().map_err(attach_err(progs.fentry, &target))?;
            how.keep(p, progs.fentry, id)?;
            let p: &mut FExit = prog(ebpf, progs.fexit)?;
            p.load(&target, btf).map_err(attach_err(progs.fexit, &target))?;
            let id = p.attach().map_err(attach_err(progs.fexit, &target))?;
            how.keep(p, progs.fexit, id)?;
        }
        Rung::Kprobe => {
            for name in [progs.kprobe, progs.kretprobe] {
                let p: &mut KProbe = prog(ebpf, name)?;
                p.load().map_err(attach_err(name, &target))?;
                let id = p.attach(&target, 0).map_err(attach_err(name, &target))?;
                how.keep(p, name, id)?;
            }
        }
        Rung::Tracepoint => {
            // Entry: user- and kernel-mode faults (a kernel-mode fault on a user address,
            // e.g. copy_to_user into a fresh page, completes through the same perf event).
            let p: &mut TracePoint = prog(ebpf, progs.tp_entry)?;
            p.load().map_err(attach_err(progs.tp_entry, "exceptions"))?;
            for name in ["page_fault_user", "page_fault_kernel"] {
                let id =
                    p.attach("exceptions", name).map_err(attach_err(progs.tp_entry, format!("exceptions:{name}")))?;
                how.keep(p, progs.tp_entry, id)?;
            }
            let cpus = aya::util::online_cpus().map_err(|(what, e)| PageFaultError::Cpus(format!("{what}: {e}")))?;
            for (name, ev) in
                [(progs.perf_minor, SoftwareEvent::PageFaultsMin), (progs.perf_major, SoftwareEvent::PageFaultsMaj)]
            {
                let p: &mut PerfEvent = prog(ebpf, name)?;
                p.load().map_err(attach_err(name, format!("{ev:?}")))?;
                for &cpu in &cpus {
                    let id = p
                        .attach(
                            PerfEventConfig::Software(ev),
                            PerfEventScope::AllProcessesOneCpu { cpu },
                            SamplePolicy::Period(1),
                            false,
                        )
                        .map_err(attach_err(name, format!("{ev:?} on cpu {cpu}")))?;
                    how.keep(p, name, id)?;
                }
            }
        }
    }
    how.attached(plan.name, plan.rung)?;
    Ok(plan.rung)
}
