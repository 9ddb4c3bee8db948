//! The figures taken inside a VM guest (TCG): the programs' own cost per event from the
//! kernel's BPF statistics, on the fentry and kprobe rungs the host does not allow, for CPU
//! page faults and for IOPF (an iommufd mock storm), the agent beside empty programs and
//! bpftrace doing the same measurement. Each condition's programs are the ones that appeared
//! since it started; rounds interleave the conditions, the order flipping each round.

use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit, KProbe},
    sys::{Stats, enable_stats},
};
use iopf_agent::loader::{self, Globals};

use super::{
    figure::{Context, Figure, Target},
    procs::{agent, bpftrace_with, status_mib, stop},
    progs::{self, bpf_prog_type, order},
};
use crate::{
    iommufd::{MockIopf, PERM_READ, RESP_SUCCESS},
    pages::fault_ns,
};

pub const ROUNDS: usize = 15;
const PAGES: usize = 4096;
/// Mock faults per condition per round: 15 rounds make a storm of 10,500 per condition.
const IOPF_FAULTS: u32 = 700;

fn ctx(rung: &str) -> Context {
    Context::here(rung)
}

/// Empty programs at both ends of handle_mm_fault on `rung`.
fn floor(rung: &str) -> Result<Ebpf, String> {
    let mut ebpf = loader::load(Globals::default()).map_err(|e| format!("load: {e}"))?;
    let err = |e: aya::programs::ProgramError| format!("floor on {rung}: {e}");
    if rung == "fentry" {
        let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
        let p: &mut FEntry = ebpf.program_mut("pf_floor_fentry").unwrap().try_into().map_err(err)?;
        p.load("handle_mm_fault", &btf).map_err(err)?;
        p.attach().map_err(err)?;
        let p: &mut FExit = ebpf.program_mut("pf_floor_fexit").unwrap().try_into().map_err(err)?;
        p.load("handle_mm_fault", &btf).map_err(err)?;
        p.attach().map_err(err)?;
    } else {
        for name in ["pf_floor_kprobe", "pf_floor_kretprobe"] {
            let p: &mut KProbe = ebpf.program_mut(name).unwrap().try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.attach("handle_mm_fault", 0).map_err(err)?;
        }
    }
    Ok(ebpf)
}

/// bpftrace doing what `--page-faults` does on `rung`: count and log2 histogram of
/// handle_mm_fault's time (bpftrace 0.17 names fentry `kfunc`).
fn pf_script(rung: &str) -> String {
    let (entry, exit) = if rung == "fentry" { ("kfunc", "kretfunc") } else { ("kprobe", "kretprobe") };
    format!(
        "{entry}:handle_mm_fault {{ @start[tid] = nsecs; }} \
         {exit}:handle_mm_fault /@start[tid]/ {{ @count++; @lat = hist(nsecs - @start[tid]); delete(@start[tid]); }}"
    )
}

enum Tracer {
    Floor(#[allow(dead_code)] Ebpf),
    Process(std::process::Child),
}

impl Tracer {
    fn stop(self) {
        if let Self::Process(c) = self {
            stop(c);
        }
    }
}

/// The programs' run time per CPU page fault on `rung`: empty, agent, bpftrace.
pub fn pf_figures(rung: &str) -> Result<Vec<Figure>, String> {
    let ty = if rung == "fentry" { bpf_prog_type::BPF_PROG_TYPE_TRACING } else { bpf_prog_type::BPF_PROG_TYPE_KPROBE };
    let _stats = enable_stats(Stats::RunTime).map_err(|e| format!("BPF_ENABLE_STATS: {e}"))?;
    let mut per = [const { Vec::new() }; 3];
    // The agent's startup high-water mark on this rung (fentry loads need aya's parse of
    // the kernel's BTF; the host's tracepoint rung does not).
    let mut hwm = Vec::new();
    let script = pf_script(rung);
    for round in 0..ROUNDS {
        eprintln!("[vm-bench] page faults on {rung}: round {}/{ROUNDS}", round + 1);
        for c in order::<3>(round) {
            let before = progs::ids();
            let t = match c {
                0 => Tracer::Floor(floor(rung)?),
                1 => Tracer::Process(
                    agent("run", &["--page-faults", "--force-rung", rung, "--require", "mm_fault"]).child,
                ),
                _ => Tracer::Process(bpftrace_with(&script)),
            };
            let mine = progs::since(&before);
            // A burst of 256 faults must run entry and exit of each: 512 runs.
            progs::wait_live(&mine, ty, 512, || {
                fault_ns(256);
            })?;
            let t0 = progs::totals(&mine);
            fault_ns(PAGES);
            fault_ns(PAGES);
            let t1 = progs::totals(&mine);
            if let Tracer::Process(child) = &t
                && c == 1
            {
                hwm.push(status_mib(child.id(), "VmHWM:"));
            }
            t.stop();
            // Entry and exit programs share the type: two runs per fault.
            let (ns, faults) = progs::ns_per_event(&t0, &t1, ty, 2);
            if faults < 2 * PAGES as u64 {
                return Err(format!(
                    "condition {c} on {rung}: {faults} faults seen, fewer than the {} made",
                    2 * PAGES
                ));
            }
            per[c].push(ns);
        }
    }
    let c = ctx(rung);
    let names = ["empty", "agent", "bpftrace"];
    let whats = ["empty programs", "`iopf-agent run --page-faults`", "bpftrace, same count + log2 histogram"];
    let mut out: Vec<Figure> = (0..3)
        .map(|i| {
            Figure::new(
                &format!("pf_bpf_ns_{}_{rung}", names[i]),
                "ns/fault",
                &format!("BPF run time per CPU page fault (TCG), {}, on handle_mm_fault", whats[i]),
                per[i].clone(),
                None,
                &c,
            )
        })
        .collect();
    out.push(Figure::new(
        &format!("rss_peak_mib_{rung}"),
        "MiB",
        &format!(
            "high-water mark of the agent's RSS (VmHWM) in the guest after startup and the fault bursts, `run --page-faults --force-rung {rung}`"
        ),
        hwm,
        Some(Target::AtMost(20.0)),
        &c,
    ));
    let ratio = (0..ROUNDS).map(|r| per[1][r] / per[2][r]).collect();
    out.push(Figure::new(
        &format!("pf_bpf_ns_agent_over_bpftrace_{rung}"),
        "ratio",
        "per round, agent / bpftrace (TCG)",
        ratio,
        Some(Target::AtMost(0.6)),
        &c,
    ));
    Ok(out)
}

/// bpftrace doing what the agent does per IOPF on the 6.9-6.14 ABI (iopf-6.12): count,
/// and log2 histograms of dispatch (report → iommufd handler) and service (report → page
/// response), keyed as the agent keys them (device + group id at the report, then the group).
const IOPF_SCRIPT: &str = "\
kprobe:iommu_report_device_fault { $f = (struct iopf_fault *)arg1; @rep[arg0, $f->fault.prm.grpid] = nsecs; @reports = count(); } \
kprobe:iommufd_fault_iopf_handler { $g = (struct iopf_group *)arg0; $d = (uint64)$g->fault_param->dev; $id = $g->last_fault.fault.prm.grpid; \
  $t = @rep[$d, $id]; if ($t) { @dispatch = hist(nsecs - $t); @svc[arg0] = $t; delete(@rep[$d, $id]); } } \
kprobe:iopf_group_response { $t = @svc[arg0]; if ($t) { @service = hist(nsecs - $t); @codes[arg1] = count(); delete(@svc[arg0]); } }";

/// Every IOPF program's run time per mock fault: the agent on `rung` beside bpftrace
/// (kprobes), in one run.
pub fn iopf_figures(rung: &str) -> Result<Vec<Figure>, String> {
    let _stats = enable_stats(Stats::RunTime).map_err(|e| format!("BPF_ENABLE_STATS: {e}"))?;
    let mut mock = MockIopf::new()?;
    let mut per = [const { Vec::new() }; 2];
    let mut grpid = 0u32;
    for round in 0..ROUNDS {
        eprintln!("[vm-bench] IOPF storm, agent on {rung}: round {}/{ROUNDS}", round + 1);
        for c in order::<2>(round) {
            let before = progs::ids();
            let t = match c {
                0 => {
                    agent(
                        "run",
                        &[
                            "--force-rung",
                            rung,
                            "--require",
                            "report",
                            "--require",
                            "iommufd_handler",
                            "--require",
                            "page_response",
                        ],
                    )
                    .child
                }
                _ => bpftrace_with(IOPF_SCRIPT),
            };
            let mine = progs::since(&before);
            if c == 1 {
                // bpftrace's three kprobes each run once per fault.
                let mut one = || {
                    grpid = (grpid + 1) & 0x1ff;
                    let _ = mock
                        .trigger(0, grpid, PERM_READ, 0xbeef_0000)
                        .and_then(|_| mock.read_fault())
                        .and_then(|f| mock.respond(f.cookie, RESP_SUCCESS));
                };
                progs::wait_live(&mine, bpf_prog_type::BPF_PROG_TYPE_KPROBE, 3, &mut one)?;
            }
            let t0 = progs::totals(&mine);
            for i in 0..IOPF_FAULTS {
                grpid = (grpid + 1) & 0x1ff;
                mock.trigger(0, grpid, PERM_READ, 0xbeef_0000 + u64::from(i) * 0x1000)?;
                let f = mock.read_fault()?;
                mock.respond(f.cookie, RESP_SUCCESS)?;
            }
            let t1 = progs::totals(&mine);
            stop(t);
            let ns: u128 = t1.iter().map(|a| a.2 - t0.iter().find(|b| b.0 == a.0).map_or(0, |b| b.2)).sum();
            if round == ROUNDS - 1 {
                // Where the time goes, per program (the last round), for the analysis.
                for p in &mine {
                    let (Some(a), Some(b)) = (t1.iter().find(|x| x.0 == p.id()), t0.iter().find(|x| x.0 == p.id()))
                    else {
                        continue;
                    };
                    let name = p.name_as_str().unwrap_or("?");
                    let per = (a.2 - b.2) as f64 / f64::from(IOPF_FAULTS);
                    eprintln!("[vm-bench] condition {c}: {name}: {} runs, {per:.0} ns per fault", a.3 - b.3);
                }
            }
            if t1.iter().all(|a| a.3 == t0.iter().find(|b| b.0 == a.0).map_or(0, |b| b.3)) {
                return Err(format!("condition {c}: no program ran during {IOPF_FAULTS} mock faults"));
            }
            per[c].push(ns as f64 / f64::from(IOPF_FAULTS));
        }
    }
    let c = ctx(rung);
    let mut out = vec![
        Figure::new(
            &format!("iopf_bpf_ns_agent_{rung}"),
            "ns/fault",
            &format!("every agent IOPF program's run time per iommufd mock fault (TCG), {rung} rung"),
            per[0].clone(),
            None,
            &c,
        ),
        Figure::new(
            &format!("iopf_bpf_ns_bpftrace_kprobe_beside_{rung}"),
            "ns/fault",
            "bpftrace's run time per mock fault (TCG; count + dispatch and service histograms on kprobes)",
            per[1].clone(),
            None,
            &ctx("kprobe"),
        ),
    ];
    let ratio = (0..ROUNDS).map(|r| per[0][r] / per[1][r]).collect();
    out.push(Figure::new(
        &format!("iopf_bpf_ns_agent_{rung}_over_bpftrace_kprobe"),
        "ratio",
        "per round, agent / bpftrace (TCG)",
        ratio,
        if rung == "fentry" { Some(Target::AtMost(0.5)) } else { None },
        &c,
    ));
    Ok(out)
}
