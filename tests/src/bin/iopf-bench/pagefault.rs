//! CPU page faults on this host's rung (tracepoint + perf software events, the only one these
//! hosts allow): the whole-process overhead ratio, and the programs' own cost per fault from
//! the kernel's accounting, the agent beside empty programs and bpftrace on the same hooks.

use aya::{
    Ebpf,
    programs::{
        PerfEvent, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    sys::{Stats, enable_stats},
};
use iopf_agent::loader::{self, Globals};
use iopf_tests::{
    bench::{
        figure::{Context, Figure, Target},
        progs::{self, bpf_prog_type, order},
        stats::median_of,
    },
    pages::fault_ns,
};

use iopf_tests::bench::procs::{agent, bpftrace, stop};

/// Fresh pages per repetition, repetitions per condition per round, rounds.
const PAGES: usize = 16_384;
const REPS: usize = 3;
pub const ROUNDS: usize = 15;
/// The rung, forced on the agent so that it runs where the floor does.
const RUNG: &str = "tracepoint";

/// Empty programs on the same hooks as the agent's tracepoint rung.
fn floor() -> Ebpf {
    let mut ebpf = loader::load(Globals::default()).expect("load");
    let tp: &mut TracePoint = ebpf.program_mut("pf_floor_tp").unwrap().try_into().unwrap();
    tp.load().unwrap();
    for n in ["page_fault_user", "page_fault_kernel"] {
        tp.attach("exceptions", n).unwrap();
    }
    let pe: &mut PerfEvent = ebpf.program_mut("pf_floor_perf").unwrap().try_into().unwrap();
    pe.load().unwrap();
    for cpu in aya::util::online_cpus().unwrap() {
        for ev in [SoftwareEvent::PageFaultsMin, SoftwareEvent::PageFaultsMaj] {
            pe.attach(
                PerfEventConfig::Software(ev),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(1),
                false,
            )
            .unwrap();
        }
    }
    ebpf
}

/// A condition's tracer, kept alive while its repetitions run.
enum Tracer {
    None,
    Floor(#[allow(dead_code)] Ebpf),
    Agent(std::process::Child),
    Bpftrace(std::process::Child),
}

const BASE: usize = 0;
const FLOOR: usize = 1;
const AGENT: usize = 2;
const BPFTRACE: usize = 3;

fn start(c: usize) -> Tracer {
    match c {
        FLOOR => Tracer::Floor(floor()),
        AGENT => Tracer::Agent(agent("run", &["--page-faults", "--force-rung", RUNG]).child),
        BPFTRACE => Tracer::Bpftrace(bpftrace()),
        _ => Tracer::None,
    }
}

fn finish(t: Tracer) {
    match t {
        Tracer::Agent(c) | Tracer::Bpftrace(c) => stop(c),
        Tracer::Floor(_) | Tracer::None => {}
    }
}

pub fn run(figures: &mut Vec<Figure>) {
    let ctx = Context::here(RUNG);
    // Whole-process time per fault, BPF statistics off (they add clock reads to every run).
    // Per round and condition: the median of its repetitions (the estimator), and the
    // fastest one (the estimator BENCHMARKS.md used before this method, kept beside it).
    let mut med = [const { Vec::new() }; 4];
    let mut fastest = [const { Vec::new() }; 4];
    for round in 0..ROUNDS {
        eprintln!("[bench] page faults, whole process: round {}/{ROUNDS}", round + 1);
        for c in order::<4>(round) {
            let t = start(c);
            let mut reps: Vec<f64> = (0..REPS).map(|_| fault_ns(PAGES)).collect();
            finish(t);
            fastest[c].push(reps.iter().copied().fold(f64::INFINITY, f64::min));
            med[c].push(median_of(&mut reps));
        }
    }
    let ratio = |v: &[Vec<f64>; 4], c: usize| -> Vec<f64> {
        (0..ROUNDS).map(|r| (v[c][r] - v[BASE][r]) / (v[FLOOR][r] - v[BASE][r])).collect()
    };
    let names = ["base", "empty", "agent", "bpftrace"];
    let whats = [
        "page fault, no tracer",
        "page fault, empty BPF programs on the agent's hooks",
        "page fault, `iopf-agent run --page-faults`",
        "page fault, bpftrace doing the same count + log2 histogram",
    ];
    for c in 0..4 {
        figures.push(Figure::new(&format!("pf_ns_{}", names[c]), "ns/fault", whats[c], med[c].clone(), None, &ctx));
    }
    figures.push(Figure::new(
        "pf_overhead_ratio",
        "ratio",
        "(agent − base) / (empty − base), per round, each condition the median of its repetitions",
        ratio(&med, AGENT),
        Some(Target::AtMost(1.25)),
        &ctx,
    ));
    figures.push(Figure::new(
        "pf_overhead_ratio_fastest_rep",
        "ratio",
        "the same ratio by the previous estimator (each condition's fastest repetition per round), printed beside it",
        ratio(&fastest, AGENT),
        None,
        &ctx,
    ));
    figures.push(Figure::new(
        "pf_overhead_ratio_bpftrace",
        "ratio",
        "(bpftrace − base) / (empty − base), as `pf_overhead_ratio`",
        ratio(&med, BPFTRACE),
        None,
        &ctx,
    ));

    // The programs' own cost per fault, from the kernel's BPF statistics: every program the
    // condition loaded, charged to the runs of its tracepoint (entry) programs.
    let stats_fd = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS (root, 5.8+)");
    let mut per_event = [const { Vec::new() }; 4];
    for round in 0..ROUNDS {
        eprintln!("[bench] page faults, BPF statistics: round {}/{ROUNDS}", round + 1);
        for c in order::<3>(round).map(|i| [FLOOR, AGENT, BPFTRACE][i]) {
            let before_ids = progs::ids();
            let t = start(c);
            let mine = progs::since(&before_ids);
            progs::wait_live(&mine, bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT, 256, || {
                fault_ns(256);
            })
            .expect("tracer live");
            let t0 = progs::totals(&mine);
            for _ in 0..REPS {
                fault_ns(PAGES);
            }
            let t1 = progs::totals(&mine);
            finish(t);
            let (ns, events) = progs::ns_per_event(&t0, &t1, bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT, 1);
            assert!(events >= (REPS * PAGES) as u64, "{} saw {events} faults, fewer than it made", names[c]);
            per_event[c].push(ns);
        }
    }
    drop(stats_fd);
    for c in [FLOOR, AGENT, BPFTRACE] {
        figures.push(Figure::new(
            &format!("pf_bpf_ns_{}", names[c]),
            "ns/fault",
            &format!("BPF run time per fault, kernel statistics: {}", whats[c].trim_start_matches("page fault, ")),
            per_event[c].clone(),
            None,
            &ctx,
        ));
    }
    let over: Vec<f64> = (0..ROUNDS).map(|r| per_event[AGENT][r] / per_event[BPFTRACE][r]).collect();
    figures.push(Figure::new(
        "pf_bpf_ns_agent_over_bpftrace",
        "ratio",
        "`pf_bpf_ns_agent` / `pf_bpf_ns_bpftrace`, per round",
        over,
        Some(Target::AtMost(0.6)),
        &ctx,
    ));
}
