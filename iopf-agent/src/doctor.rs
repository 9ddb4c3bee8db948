//! `iopf-agent doctor`: the attach plan and capabilities, for people and for machines.

use serde::Serialize;

use crate::error::chain;

use crate::{
    cli::{DoctorOptions, PlanOptions},
    error::AgentError,
    features::Features,
    hooks::{self, Plan, Rung},
    kabi::{KernelBtf, iopf::IopfAbi},
    loader,
};

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub hooks: Vec<Plan>,
    pub capabilities: Features,
    /// Which kinds of fault this kernel can produce, with the evidence.
    pub fault_paths: Vec<crate::paths::FaultPath>,
    /// The IOPF ABI generation decided from BTF, or why there is none.
    #[serde(serialize_with = "ser_abi")]
    pub iopf_abi: Result<IopfAbi, String>,
}

fn ser_abi<S: serde::Serializer>(abi: &Result<IopfAbi, String>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Status<'a> {
        available: bool,
        #[serde(flatten)]
        abi: Option<&'a IopfAbi>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    }
    Status { available: abi.is_ok(), abi: abi.as_ref().ok(), reason: abi.as_ref().err().map(String::as_str) }
        .serialize(s)
}

/// Loads the object (no globals), probes, plans. Shared by `doctor` and `run`.
pub fn survey(
    opts: &PlanOptions,
    globals: loader::Globals,
) -> Result<(aya::Ebpf, Report, Option<KernelBtf>), AgentError> {
    for name in &opts.require {
        if hooks::hook(name).is_none() {
            return Err(AgentError::UnknownHook(name.clone()));
        }
    }
    // /proc/kallsyms is megabytes, slow to produce: read once, for the programs, the plan
    // and the fault paths, on its own thread while the BTF is parsed.
    let kallsyms = std::thread::spawn(crate::kallsyms::Kallsyms::read);
    let btf = KernelBtf::load(&opts.btf_dir);
    let mut abi = match &btf {
        Ok(b) => IopfAbi::resolve(b.vmlinux()).map_err(|e| e.to_string()),
        Err(e) => Err(chain(e)),
    };
    let kallsyms = kallsyms.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
    if let Ok(a) = &mut abi {
        a.vtd_report = crate::vtd::plan::with_intel_ops(a.vtd_report, kallsyms.intel_iommu_ops);
    }
    let globals = match &abi {
        Ok(a) => globals.with_abi(a),
        Err(_) => globals,
    };
    let globals = match &btf {
        Ok(b) => globals.with_btf(b.vmlinux()),
        Err(_) => globals,
    };
    let smmu = match &btf {
        Ok(b) => crate::smmu::plan::offsets_in(b),
        Err(_) => Err("no kernel BTF"),
    };
    let amdvi = match &btf {
        Ok(b) => crate::amdvi::plan::offsets(b.vmlinux()),
        Err(_) => Err("no kernel BTF"),
    };
    // The linear map is read (from /proc/kcore) only where an SMMUv3 walk could use it.
    let bpf_loop = btf.as_ref().is_ok_and(|b| crate::smmu::plan::has_bpf_loop(b.vmlinux()));
    let linear_map = match &smmu {
        Ok(o) if bpf_loop && o.finds_registers() => {
            crate::linear_map::from_kcore(std::path::Path::new("/proc/kcore"), kallsyms.text).map_err(|e| e.to_string())
        }
        _ => Err("not needed".into()),
    };
    let smmu_unwalked = smmu.as_ref().ok().and_then(|o| crate::smmu::plan::unwalked(o, bpf_loop, linear_map.clone()));
    let globals = loader::Globals {
        page_offset_base: kallsyms.page_offset_base.unwrap_or(0),
        smmu: smmu.unwrap_or(iopf_common::smmu::SmmuOffsets::NONE),
        linear_map: linear_map.unwrap_or(0),
        amdvi: amdvi.unwrap_or(iopf_common::amdvi::AmdviOffsets::NONE),
        ..globals
    };
    let btf = btf.ok();
    // The object has no CO-RE relocations: loading it needs no parse of the kernel's BTF.
    let mut ebpf = loader::load(globals)?;
    let features = Features::probe(&mut ebpf, &opts.btf_dir, btf.as_ref());
    let mut plans =
        hooks::plan_all(btf.as_ref(), &kallsyms, &features, opts.force_rung, abi.as_ref().ok().map(|a| a.tuple_keys));
    if let Ok(a) = &abi {
        crate::vtd::plan::gate_report_walk(&mut plans, a.bpf_loop, a.vtd_report);
    }
    crate::smmu::plan::gate(&mut plans, smmu, smmu_unwalked.as_deref());
    crate::amdvi::plan::gate(&mut plans, amdvi);
    let fault_paths = crate::paths::survey(&kallsyms);
    let report =
        Report { kernel: features.kernel.clone(), hooks: plans, capabilities: features, fault_paths, iopf_abi: abi };
    Ok((ebpf, report, btf))
}

/// Err when a hook the user required cannot attach.
pub fn check_required(opts: &PlanOptions, plans: &[Plan]) -> Result<(), AgentError> {
    for name in &opts.require {
        if let Some(p) = plans.iter().find(|p| p.name == name)
            && p.rung == Rung::Unavailable
        {
            return Err(AgentError::Required { name: name.clone(), reason: p.reason.clone() });
        }
    }
    Ok(())
}

pub fn render_text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "kernel {}", r.kernel);
    let _ = writeln!(s, "capabilities:");
    let c = &r.capabilities;
    for (name, cap) in [
        ("btf", &c.btf),
        ("tracefs", &c.tracefs),
        ("ring_buffer", &c.ring_buffer),
        ("bpf_stats", &c.bpf_stats),
        ("fentry", &c.fentry),
        ("kprobe", &c.kprobe),
        ("preempt_full", &c.preempt_full),
        ("bpf_atomics", &c.bpf_atomics),
    ] {
        let _ = writeln!(s, "  {name:<12} {:<3}  {}", if cap.available { "yes" } else { "no" }, cap.detail);
    }
    match &r.iopf_abi {
        Ok(a) => {
            let _ = writeln!(s, "iopf abi: {}", a.generation.describe());
        }
        Err(e) => {
            let _ = writeln!(s, "iopf abi: none: {e}");
        }
    }
    let _ = writeln!(s, "fault paths:");
    for p in &r.fault_paths {
        let _ = writeln!(s, "  {:<20} {:<3}  {}", p.path, if p.possible { "yes" } else { "no" }, p.evidence);
    }
    let _ = writeln!(s, "hooks:");
    for p in &r.hooks {
        let target = p.target.as_deref().unwrap_or("-");
        let _ = write!(s, "  {:<18} {:<11} {:<32}", p.name, p.rung.as_str(), target);
        if !p.reason.is_empty() {
            let _ = write!(s, " {}", p.reason);
        }
        s.push('\n');
    }
    s
}

pub fn run(opts: DoctorOptions) -> Result<(), AgentError> {
    let (_ebpf, report, _) = survey(&opts.plan, loader::Globals::default())?;
    let text = if opts.json {
        serde_json::to_string_pretty(&report).map_err(std::io::Error::other)? + "\n"
    } else {
        render_text(&report)
    };
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // A reader that stopped reading (`doctor --json | head`) is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r?,
    }
    check_required(&opts.plan, &report.hooks)
}
