//! Attaching the IOPF programs to the kernel hooks, on the rung each hook's plan chose.

use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit, KProbe, TracePoint},
};
use thiserror::Error;

use crate::{
    hooks::{HookState, Plan, Rung},
    kabi::{KernelBtf, iopf::IopfAbi},
    pin::How,
};

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("program `{0}` missing from the eBPF object")]
    Missing(&'static str),
    #[error("hook `{hook}`: program `{prog}` could not attach to `{target}`")]
    Program { hook: &'static str, prog: &'static str, target: String, source: Box<aya::programs::ProgramError> },
    #[error("kernel BTF needed for fentry")]
    Btf(#[source] aya::BtfError),
    /// Boxed: it carries paths and aya's errors.
    #[error(transparent)]
    Pin(Box<crate::pin::PinError>),
}

/// Entry and optional exit program for a hook, per rung.
struct Progs {
    /// None: the exit program alone serves the fentry rung.
    fentry: Option<&'static str>,
    fexit: Option<&'static str>,
    kprobe: &'static str,
    kretprobe: Option<&'static str>,
}

/// Why the <= 6.8 per-fault SVA functions get no program.
const PER_FAULT_SVA: &str =
    "<= 6.8: faults are classified and keyed at report; this per-fault SVA function adds nothing";

/// Which programs serve `plan` on this kernel; Err says why none does (e.g. the <= 6.8
/// per-fault SVA function, which the IOPF core does not use on that generation).
fn programs(plan: &Plan, abi: &IopfAbi) -> Result<Progs, &'static str> {
    let Some(target) = plan.target.as_deref() else { return Err("no target") };
    let p = |fentry, fexit, kprobe, kretprobe| Ok(Progs { fentry: Some(fentry), fexit, kprobe, kretprobe });
    match (plan.name, target) {
        ("report", _) if abi.report_returns_int => {
            p("iopf_report_fentry", Some("iopf_report_fexit"), "iopf_report_kprobe", Some("iopf_report_kretprobe"))
        }
        ("report", _) => p("iopf_report_fentry", None, "iopf_report_kprobe", None),
        ("sva_handler", "iommu_sva_iopf_handler") => {
            p("iopf_sva_handler_fentry", None, "iopf_sva_handler_kprobe", None)
        }
        ("iommufd_handler", _) => p("iopf_iommufd_handler_fentry", None, "iopf_iommufd_handler_kprobe", None),
        ("page_response", "iopf_group_response") => {
            p("iopf_group_response_fentry", None, "iopf_group_response_kprobe", None)
        }
        ("page_response", "iommu_page_response") => {
            p("iopf_page_response_fentry", None, "iopf_page_response_kprobe", None)
        }
        ("free_group", _) => p("iopf_free_group_fentry", None, "iopf_free_group_kprobe", None),
        ("dequeue", _) => p("iopf_dequeue_fentry", None, "iopf_dequeue_kprobe", None),
        ("iopf_work", "iommu_sva_handle_iopf") if !abi.work_takes_work_struct => Err(PER_FAULT_SVA),
        ("iopf_work", _) => {
            p("iopf_work_fentry", Some("iopf_work_fexit"), "iopf_work_kprobe", Some("iopf_work_kretprobe"))
        }
        ("viommu_event", _) => p("iopf_viommu_event_fentry", None, "iopf_viommu_event_kprobe", None),
        ("dmar_fault", _) => {
            let (fentry, kprobe) = crate::vtd::plan::dmar_fault_programs(abi.bpf_loop);
            p(fentry, None, kprobe, None)
        }
        // Planned only where it can run (`vtd::plan::gate_report_walk`).
        ("vtd_report_walk", _) => {
            let (fentry, kprobe) = crate::vtd::plan::REPORT_WALK_PROGRAMS;
            p(fentry, None, kprobe, None)
        }
        ("sva_handler", _) => Err(PER_FAULT_SVA),
        _ => Err("no program for this hook"),
    }
}

/// Attaches every IOPF hook whose plan has a rung and records the outcome in its plan
/// (`Plan::settle` / `Plan::unused`), so the plan says what is attached, not what was hoped
/// for. Returns the failures; the caller decides whether one is fatal (the user required it).
/// `mm_fault` is left to page-fault tracing.
/// `kernel_btf`: the kernel's BTF; aya's parse of it is made at the first fentry hook (from
/// sysfs when `None`).
pub fn attach_all(
    ebpf: &mut Ebpf,
    plans: &mut [Plan],
    abi: Option<&IopfAbi>,
    kernel_btf: Option<&KernelBtf>,
    how: How,
) -> Vec<(&'static str, AttachError)> {
    let mut parsed = None;
    let mut failed = Vec::new();
    for plan in plans.iter_mut().filter(|p| p.name != "mm_fault" && p.state == HookState::Planned) {
        match attach_one(ebpf, plan, abi, kernel_btf, &mut parsed, how) {
            Ok(Used::Attached) => plan.settle(Ok(())),
            Ok(Used::Adopted(rung)) => {
                plan.rung = rung;
                plan.settle(Ok(()));
            }
            Ok(Used::NotAdopted) => plan.settle(Err("not attached by the agent whose pinned state was adopted".into())),
            Ok(Used::Not(why)) => plan.unused(why),
            Err(e) => {
                plan.settle(Err(crate::error::chain(&e)));
                failed.push((plan.name, e));
            }
        }
    }
    if let How::Adopt(_) = how {
        // The flag is in the adopted maps, as the pinning agent set it.
        return failed;
    }
    // With the free hook on, a group stays in flight from its first response to its free,
    // so a second response to it is recognised (and not timed twice).
    let keep = plans.iter().any(|p| p.name == "free_group" && p.state == HookState::Attached);
    if let Err(e) = crate::iopf::maps::set_keep_until_free(ebpf, keep) {
        eprintln!("iopf-agent: double responses will not be told apart: {}", crate::error::chain(&e));
    } else if !keep && plans.iter().any(|p| p.name == "page_response" && p.state == HookState::Attached) {
        eprintln!(
            "iopf-agent: free_group is not attached: the first response ends a fault, double responses are counted as unmatched"
        );
    }
    failed
}

enum Used {
    Attached,
    Not(&'static str),
    /// Adopting: the pinned state has this hook attached on this rung.
    Adopted(Rung),
    /// Adopting: the pinned state does not have this hook.
    NotAdopted,
}

/// Test hook (`IOPF_TEST_BREAK_HOOK=io_page_fault`): attach that hook's program to a
/// tracepoint that does not exist, so the kernel refuses it and the failure path runs for
/// real (metrics, alert).
fn broken_for_test(hook: &str) -> bool {
    std::env::var("IOPF_TEST_BREAK_HOOK").is_ok_and(|v| v.split(',').any(|h| h == hook))
}

fn attach_one(
    ebpf: &mut Ebpf,
    plan: &Plan,
    abi: Option<&IopfAbi>,
    kernel_btf: Option<&KernelBtf>,
    parsed: &mut Option<Btf>,
    how: How,
) -> Result<Used, AttachError> {
    let adopted = |hook: &str| how.adopted(hook).map(|r| r.map_or(Used::NotAdopted, Used::Adopted));
    {
        let err = |prog: &'static str, target: &str| {
            let target = target.to_owned();
            let hook = plan.name;
            move |source| AttachError::Program { hook, prog, target, source: Box::new(source) }
        };
        if plan.name == "io_page_fault" && plan.rung == Rung::Tracepoint {
            if let Some(u) = adopted(plan.name) {
                return Ok(u);
            }
            let p: &mut TracePoint = prog(ebpf, "iopf_io_page_fault")?;
            p.load().map_err(err("iopf_io_page_fault", "iommu:io_page_fault"))?;
            let name = if broken_for_test(plan.name) { "iopf_test_absent" } else { "io_page_fault" };
            let id = p.attach("iommu", name).map_err(err("iopf_io_page_fault", &format!("iommu:{name}")))?;
            how.keep(p, "iopf_io_page_fault", id).map_err(|e| AttachError::Pin(Box::new(e)))?;
            how.attached(plan.name, plan.rung).map_err(|e| AttachError::Pin(Box::new(e)))?;
            return Ok(Used::Attached);
        }
        let progs = match (plan.name, abi) {
            // SMMUv3 event records need no IOPF ABI: a kernel without IOPF still has them.
            ("smmu_evtq", _) => {
                // The walk's programs where the kernel can load them (`bpf_loop`).
                let bpf_loop = kernel_btf.is_some_and(|k| crate::smmu::plan::has_bpf_loop(k.vmlinux()));
                let (fexit, kprobe, kretprobe) = crate::smmu::plan::programs(bpf_loop);
                Progs { fentry: None, fexit: Some(fexit), kprobe, kretprobe: Some(kretprobe) }
            }
            // Nor do AMD-Vi event log entries, PPR log entries and their answers.
            (name, _) if let Some((fentry, kprobe)) = crate::amdvi::plan::programs(name) => {
                Progs { fentry: Some(fentry), fexit: None, kprobe, kretprobe: None }
            }
            (_, None) => return Ok(Used::Not("no IOPF ABI in kernel BTF")),
            (_, Some(abi)) => match programs(plan, abi) {
                Ok(p) => p,
                Err(why) => return Ok(Used::Not(why)),
            },
        };
        if matches!(plan.rung, Rung::Fentry | Rung::Kprobe)
            && let Some(u) = adopted(plan.name)
        {
            return Ok(u);
        }
        let target = plan.target.clone().unwrap_or_default();
        match plan.rung {
            Rung::Fentry => {
                let btf = match kernel_btf.and_then(KernelBtf::aya) {
                    Some(b) => b,
                    None => {
                        if parsed.is_none() {
                            *parsed = Some(Btf::from_sys_fs().map_err(AttachError::Btf)?);
                        }
                        parsed.as_ref().expect("set above")
                    }
                };
                if let Some(f) = progs.fentry {
                    let p: &mut FEntry = prog(ebpf, f)?;
                    p.load(&target, btf).map_err(err(f, &target))?;
                    let id = p.attach().map_err(err(f, &target))?;
                    how.keep(p, f, id).map_err(|e| AttachError::Pin(Box::new(e)))?;
                }
                if let Some(x) = progs.fexit {
                    let p: &mut FExit = prog(ebpf, x)?;
                    p.load(&target, btf).map_err(err(x, &target))?;
                    let id = p.attach().map_err(err(x, &target))?;
                    how.keep(p, x, id).map_err(|e| AttachError::Pin(Box::new(e)))?;
                }
            }
            Rung::Kprobe => {
                for name in [Some(progs.kprobe), progs.kretprobe].into_iter().flatten() {
                    let p: &mut KProbe = prog(ebpf, name)?;
                    p.load().map_err(err(name, &target))?;
                    let id = p.attach(&target, 0).map_err(err(name, &target))?;
                    how.keep(p, name, id).map_err(|e| AttachError::Pin(Box::new(e)))?;
                }
            }
            Rung::Tracepoint | Rung::Unavailable => return Ok(Used::Not("no program for this rung")),
        }
        how.attached(plan.name, plan.rung).map_err(|e| AttachError::Pin(Box::new(e)))?;
        Ok(Used::Attached)
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
