//! Root tier: the IOPF programs' per-CPU counters stay exact when a program in hard-IRQ
//! context updates the same counters on the same CPU, in the middle of theirs (as
//! `dmar_fault` can inside an fentry program). A perf cpu-clock program (hrtimer, hard IRQ)
//! bumps `reports`, `handled` and `responses` while 10,400 synthetic faults run through the
//! real programs on that CPU; a plain read-modify-write would lose the increments of
//! whichever side was interrupted.

use aya::{
    maps::PerCpuArray,
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use iopf_agent::{
    iopf::{inject::Injector, maps::IopfMaps},
    kabi::{
        KernelBtf,
        iopf::{CURRENT_CONSTS, IopfAbi},
    },
    loader::{self, Globals},
    simulate::{drive::drive, model, scenario::Scenario},
};
use iopf_tests::require_root;

/// CPU the faults and the interrupting program share.
const CPU: u32 = 0;
/// cpu-clock period: one hard-IRQ program run per 20 us of CPU time.
const PERIOD_NS: u64 = 20_000;
/// Passes of the scenario (10,400 faults each).
const PASSES: usize = 3;

fn pin_to(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set), 0, "pin to CPU {cpu}");
    }
}

#[test]
fn counters_stay_exact_under_a_hard_irq_program_on_the_same_cpu() {
    if !require_root("counters_stay_exact_under_a_hard_irq_program_on_the_same_cpu") {
        return;
    }
    pin_to(CPU);
    let path = format!("{}/../examples/scenarios/mixed-10k.yaml", env!("CARGO_MANIFEST_DIR"));
    let s = Scenario::load(std::path::Path::new(&path)).expect("scenario");
    let btf = KernelBtf::load("/sys/kernel/btf".as_ref()).expect("kernel BTF");
    let g = match IopfAbi::resolve(btf.vmlinux()) {
        Ok(abi) => Globals::default().with_abi(&abi),
        Err(_) => Globals { consts: CURRENT_CONSTS, ..Globals::default() },
    };
    let plan = model::plan(&s, &g.consts, g.tuple_keys);
    let mut ebpf = loader::load(g).expect("load");

    let p: &mut PerfEvent = ebpf.program_mut("nest_probe_perf").expect("nest program").try_into().expect("perf");
    p.load().expect("load nest program");
    let link = p
        .attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu: CPU },
            SamplePolicy::Period(PERIOD_NS),
            false,
        )
        .expect("attach the cpu-clock program");
    let mut want =
        model::expected(&plan, model::EventsExpect { all: false, capacity: model::RING_RECORDS }, &model::Rules::new());
    assert_eq!((want.stats.events, want.stats.events_dropped), (0, 0), "no events without rules or tracing");
    let mut drive_all = || {
        for pass in 0..PASSES {
            let mut inj = Injector::new(&mut ebpf).expect("injector");
            drive(&mut inj, &plan).unwrap_or_else(|e| panic!("pass {pass}: {e}"));
        }
    };
    drive_all();
    let p: &mut PerfEvent = ebpf.program_mut("nest_probe_perf").unwrap().try_into().unwrap();
    p.detach(link).expect("detach");

    let runs: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map("NEST_RUNS").expect("NEST_RUNS")).unwrap();
    let runs: u64 = runs.get(&0, 0).unwrap().iter().sum();
    let got = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    eprintln!("cpu-clock program runs on CPU {CPU}: {runs}; stats {:?}", got.stats);
    assert!(runs >= 100, "the hard-IRQ program ran {runs} times: too few to interleave");
    // The scenario's totals, PASSES times, plus one per interrupting run on each bumped counter.
    let n = PASSES as u64;
    let one = want.stats;
    want.stats.reports = one.reports * n + runs;
    want.stats.handled = one.handled * n + runs;
    want.stats.responses = one.responses * n + runs;
    want.stats.freed_unanswered = one.freed_unanswered * n;
    want.stats.violations = one.violations * n;
    for v in want.counts.values_mut() {
        *v *= n;
    }
    for h in want.hists.values_mut() {
        let one = *h;
        for _ in 1..n {
            h.merge(&one);
        }
    }
    assert_eq!(model::mismatches(&got, &want), Vec::<String>::new());
}
