//! The native in-kernel cost of one IOPF: a whole fault through the real adapters, each step
//! a program run by `BPF_PROG_TEST_RUN` over a synthetic kernel record placed in kernel
//! memory (device, report event, group, attach handle, domain as Debian 6.12's BTF lays them
//! out), timed by the kernel's BPF statistics. With the in-flight table empty, half full and
//! 90 % full, so that probe collisions are in the figure.

use aya::{
    Ebpf,
    programs::{SocketFilter, TestRun as _, TestRunOptions},
    sys::{Stats, enable_stats},
};
use iopf_agent::{
    iopf::{inject::Injector, maps::IopfMaps},
    kabi::iopf::IopfAbi,
    loader::{self, Globals},
};
use iopf_common::iopf::{INFLIGHT_SLOTS, InflightKey, RESP_SUCCESS};
use iopf_tests::{
    bench::{
        figure::{Context, Figure, Target},
        progs::{self, order},
    },
    records::{Request, fault_record, fixture, rec},
};

use iopf_tests::bench::procs;

use crate::pagefault::ROUNDS;

/// Faults measured per condition per round.
const FAULTS: u64 = 4_000;
/// The steps of one fault, each a program: report and group handler through the adapters
/// (reading the record), then the page response and the group's free.
const STEPS: [&str; 4] = ["inject_record", "inject_record_handler", "inject_response", "inject_free"];

struct Table {
    ebpf: Ebpf,
    /// Faults put in flight before measuring, never answered.
    filled: u64,
    next: u64,
    now: u64,
}

fn key(n: u64) -> InflightKey {
    // A `struct iopf_group *` stand-in: 6.9+ keys in-flight faults by group.
    InflightKey { a: 0xffff_8880_0000_0000 | n << 6, b: 0 }
}

impl Table {
    fn new(abi: &IopfAbi, record: &[u8; rec::SIZE], fill_pct: u64) -> Self {
        let mut ebpf = loader::load(Globals::default().with_abi(abi)).expect("load");
        let filled = INFLIGHT_SLOTS as u64 * fill_pct / 100;
        let mut inj = Injector::new(&mut ebpf).expect("injector");
        inj.keep_until_free(true).unwrap();
        for n in 0..filled {
            inj.record(record, 1_000 + n, key(n)).expect("prefill");
        }
        Self { ebpf, filled, next: filled, now: 1_000 + filled }
    }

    fn run_times(&self) -> u128 {
        STEPS.iter().map(|p| progs::run_totals(&self.ebpf, p).0).sum()
    }

    /// `FAULTS` whole faults; their programs' run time per fault.
    fn measure(&mut self, record: &[u8; rec::SIZE]) -> f64 {
        let t0 = self.run_times();
        let mut inj = Injector::new(&mut self.ebpf).expect("injector");
        for _ in 0..FAULTS {
            let k = key(self.next);
            inj.record(record, self.now, k).expect("report + handler");
            inj.response(k, RESP_SUCCESS, self.now + 5_000).expect("response");
            inj.free(k, self.now + 6_000).expect("free");
            self.next += 1;
            self.now += 10_000;
        }
        (self.run_times() - t0) as f64 / FAULTS as f64
    }
}

pub fn run(figures: &mut Vec<Figure>) {
    let ctx = Context::here("test_run");
    let btf = fixture("debian-6.12");
    let abi = IopfAbi::resolve(&btf).expect("debian-6.12 IOPF ABI");
    let record = fault_record(
        &abi,
        abi.consts.dom_sva,
        &Request { device: "0000:6a:01.0", pasid: 0x2a, grpid: 0x1ff, perm: 0b11, addr: 0x7f3a_dead_b000 },
    );
    let fills = [0u64, 50, 90];
    let stats_fd = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS (root, 5.8+)");
    let mut tables: Vec<Table> = fills.iter().map(|&f| Table::new(&abi, &record, f)).collect();
    // The accounting's own cost: an empty program, run and timed the same way.
    let mut floor = loader::load(Globals::default()).expect("load");
    let empty: &mut SocketFilter = floor.program_mut("bench_empty").unwrap().try_into().unwrap();
    empty.load().unwrap();
    let mut per_fault = [const { Vec::new() }; 3];
    let mut empty_ns = Vec::new();
    procs::pin_cpu(0);
    for round in 0..ROUNDS {
        eprintln!("[bench] in-kernel IOPF cost: round {}/{ROUNDS}", round + 1);
        for c in order::<3>(round) {
            per_fault[c].push(tables[c].measure(&record));
        }
        let (t0, n0) = progs::run_totals(&floor, "bench_empty");
        let p: &SocketFilter = floor.program("bench_empty").unwrap().try_into().unwrap();
        let packet = [0u8; 64];
        for _ in 0..FAULTS {
            p.test_run(TestRunOptions { data_in: Some(&packet), ..TestRunOptions::new() }).unwrap();
        }
        let (t1, n1) = progs::run_totals(&floor, "bench_empty");
        empty_ns.push((t1 - t0) as f64 / (n1 - n0) as f64);
    }
    procs::unpin();
    drop(stats_fd);
    for (t, fill) in tables.iter_mut().zip(fills) {
        let snap = IopfMaps::take(&mut t.ebpf).unwrap().snapshot().unwrap();
        let measured = FAULTS * ROUNDS as u64;
        assert_eq!(snap.stats.responses, measured, "fill {fill}%: every measured fault answered");
        assert_eq!(snap.stats.freed_unanswered, 0, "fill {fill}%: nothing freed unanswered");
        // Where the time goes, per step (run time / run count over the whole run).
        let steps: Vec<String> = STEPS
            .iter()
            .map(|p| {
                let (ns, runs) = progs::run_totals(&t.ebpf, p);
                format!("{p} {:.0}", ns as f64 / runs.max(1) as f64)
            })
            .collect();
        eprintln!(
            "[bench] fill {fill}% ({} in flight): inflight_full {}, spilled {}, evicted {}; ns per run: {}",
            t.filled,
            snap.stats.inflight_full,
            snap.stats.inflight_spilled,
            snap.stats.inflight_evicted,
            steps.join(", ")
        );
    }
    let what = |fill: u64| {
        format!(
            "one whole IOPF through the adapters (report, group handler, response, free: 4 programs), BPF run time, in-flight table {fill} % full"
        )
    };
    let targets = [Some(Target::AtMost(300.0)), None, Some(Target::AtMost(400.0))];
    for (i, name) in ["iopf_core_ns", "iopf_core_ns_fill50", "iopf_core_ns_fill90"].iter().enumerate() {
        figures.push(Figure::new(name, "ns/fault", &what(fills[i]), per_fault[i].clone(), targets[i], &ctx));
    }
    figures.push(Figure::new(
        "bpf_accounting_floor_ns",
        "ns/run",
        "an empty program's run time as the same statistics account it (included once in each of the 4 steps of `iopf_core_ns`)",
        empty_ns,
        None,
        &ctx,
    ));
}
