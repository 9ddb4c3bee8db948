//! Attaching the IOPF programs to the kernel hooks, on the rung each hook's plan chose.

use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit, KProbe, TracePoint},
};
use thiserror::Error;

use crate::{
    hooks::{Plan, Rung},
    kabi::iopf::IopfAbi,
};

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("program `{0}` missing from the eBPF object")]
    Missing(&'static str),
    #[error("hook `{hook}`: program `{prog}` could not attach to `{target}`")]
    Program { hook: &'static str, prog: &'static str, target: String, source: Box<aya::programs::ProgramError> },
    #[error("kernel BTF needed for fentry")]
    Btf(#[source] aya::BtfError),
}

/// Entry and optional exit program for a hook, per rung.
struct Progs {
    fentry: &'static str,
    fexit: Option<&'static str>,
    kprobe: &'static str,
    kretprobe: Option<&'static str>,
}

/// Which programs serve `plan` on this kernel; `None` when the planned target is not one the
/// IOPF core uses on this generation (e.g. the <= 6.8 per-fault SVA function).
fn programs(plan: &Plan, abi: &IopfAbi) -> Option<Progs> {
    let target = plan.target.as_deref()?;
    let p = |fentry, fexit, kprobe, kretprobe| Some(Progs { fentry, fexit, kprobe, kretprobe });
    match (plan.name, target) {
        ("report", _) if abi.report_returns_int => {
            p("iopf_report_fentry", Some("iopf_report_fexit"), "iopf_report_kprobe", Some("iopf_report_kretprobe"))
        }
        ("report", _) => p("iopf_report_fentry", None, "iopf_report_kprobe", None),
        ("sva_handler", "iommu_sva_iopf_handler") | ("iommufd_handler", _) => {
            p("iopf_handler_fentry", None, "iopf_handler_kprobe", None)
        }
        ("page_response", "iopf_group_response") => {
            p("iopf_group_response_fentry", None, "iopf_group_response_kprobe", None)
        }
        ("page_response", "iommu_page_response") => {
            p("iopf_page_response_fentry", None, "iopf_page_response_kprobe", None)
        }
        ("free_group", _) => p("iopf_free_group_fentry", None, "iopf_free_group_kprobe", None),
        ("iopf_work", "iommu_sva_handle_iopf") if !abi.work_takes_work_struct => None,
        ("iopf_work", _) => {
            p("iopf_work_fentry", Some("iopf_work_fexit"), "iopf_work_kprobe", Some("iopf_work_kretprobe"))
        }
        ("dmar_fault", _) => p("iopf_dmar_fault_fentry", None, "iopf_dmar_fault_kprobe", None),
        _ => None,
    }
}

/// Attaches every IOPF hook whose plan has a rung. Returns, per hook, what was attached or
/// why it failed; the caller decides whether a failure is fatal (the user required it).
pub fn attach_all(
    ebpf: &mut Ebpf,
    plans: &[Plan],
    abi: Option<&IopfAbi>,
) -> Vec<(&'static str, Result<String, AttachError>)> {
    let mut btf = None;
    plans.iter().filter_map(|plan| attach_one(ebpf, plan, abi, &mut btf).transpose().map(|r| (plan.name, r))).collect()
}

fn attach_one(
    ebpf: &mut Ebpf,
    plan: &Plan,
    abi: Option<&IopfAbi>,
    btf: &mut Option<Btf>,
) -> Result<Option<String>, AttachError> {
    {
        let err = |prog: &'static str, target: &str| {
            let target = target.to_owned();
            let hook = plan.name;
            move |source| AttachError::Program { hook, prog, target, source: Box::new(source) }
        };
        if plan.name == "io_page_fault" && plan.rung == Rung::Tracepoint {
            let p: &mut TracePoint = prog(ebpf, "iopf_io_page_fault")?;
            p.load().map_err(err("iopf_io_page_fault", "iommu:io_page_fault"))?;
            p.attach("iommu", "io_page_fault").map_err(err("iopf_io_page_fault", "iommu:io_page_fault"))?;
            return Ok(Some("tracepoint iommu:io_page_fault".to_owned()));
        }
        let Some(abi) = abi else { return Ok(None) };
        let Some(progs) = programs(plan, abi) else { return Ok(None) };
        let target = plan.target.clone().unwrap_or_default();
        match plan.rung {
            Rung::Fentry => {
                if btf.is_none() {
                    *btf = Some(Btf::from_sys_fs().map_err(AttachError::Btf)?);
                }
                let btf = btf.as_ref().expect("set above");
                let p: &mut FEntry = prog(ebpf, progs.fentry)?;
                p.load(&target, btf).map_err(err(progs.fentry, &target))?;
                p.attach().map_err(err(progs.fentry, &target))?;
                if let Some(x) = progs.fexit {
                    let p: &mut FExit = prog(ebpf, x)?;
                    p.load(&target, btf).map_err(err(x, &target))?;
                    p.attach().map_err(err(x, &target))?;
                }
            }
            Rung::Kprobe => {
                for name in [Some(progs.kprobe), progs.kretprobe].into_iter().flatten() {
                    let p: &mut KProbe = prog(ebpf, name)?;
                    p.load().map_err(err(name, &target))?;
                    p.attach(&target, 0).map_err(err(name, &target))?;
                }
            }
            Rung::Tracepoint | Rung::Unavailable => return Ok(None),
        }
        Ok(Some(format!("{} {target}", plan.rung.as_str())))
    }
}

fn prog<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, AttachError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name).ok_or(AttachError::Missing(name))?.try_into().map_err(|source| AttachError::Program {
        hook: "-",
        prog: name,
        target: String::new(),
        source: Box::new(source),
    })
}
