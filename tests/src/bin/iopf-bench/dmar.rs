//! The in-kernel cost of one VT-d fault interrupt decoding N pending records (N = 1, 4, 16,
//! 64): the `dmar_fault` programs' decoder run by test-run over a synthetic unit in kernel
//! memory, timed by the kernel's BPF statistics. Every record is counted per device and
//! emitted; the events ring is drained after each interrupt, as the agent drains it. Without
//! the table walk (the unit's root table pointer is 0): the walk is timed in the VM.

use aya::sys::{Stats, enable_stats};
use iopf_agent::{
    iopf::events::Ring,
    loader::{self, Globals},
};
use iopf_common::dmar::DmarEvent;
use iopf_common::walk::Request;
use iopf_tests::{
    bench::{
        figure::{Context, Figure},
        procs,
        progs::{self, order},
    },
    dmar_unit::{DmarUnit, Record, globals, unit},
    walk_mem::{BpfWalk, MODES, nested_read_only_page, read_only_page},
};

use crate::pagefault::ROUNDS;

const SIZES: [usize; 4] = [1, 4, 16, 64];
/// Interrupts per size per round.
const INTERRUPTS: u64 = 500;

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            source_id: 0x1800 + (i % 8) as u16,
            reason: 0x06,
            read: true,
            addr: 0x10_0000 + i as u64 * 0x1000,
            pasid: None,
        })
        .collect()
}

pub fn run(figures: &mut Vec<Figure>) {
    let ctx = Context::here("test_run");
    let _stats = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS (root, 5.8+)");
    let mut ebpf = loader::load(globals(Globals::default())).expect("load");
    let mut events = Ring::<DmarEvent>::take_named(&mut ebpf, "DMAR_EVENTS").unwrap();
    let mut u = DmarUnit::new(&mut ebpf).unwrap();
    let units: Vec<_> = SIZES.iter().map(|&n| unit(&records(n), 0, 0)).collect();
    let mut per = [const { Vec::new() }; 4];
    procs::pin_cpu(0);
    for round in 0..ROUNDS {
        eprintln!("[bench] VT-d record decoding: round {}/{ROUNDS}", round + 1);
        for c in order::<4>(round) {
            u.set(&units[c]).unwrap();
            let (t0, n0) = progs::run_totals(u.ebpf(), "inject_dmar_loop");
            for _ in 0..INTERRUPTS {
                u.run(true).unwrap();
                let got = events.drain().len();
                assert_eq!(got, SIZES[c], "every record of the interrupt emitted");
            }
            let (t1, n1) = progs::run_totals(u.ebpf(), "inject_dmar_loop");
            assert_eq!(n1 - n0, INTERRUPTS);
            per[c].push((t1 - t0) as f64 / INTERRUPTS as f64);
        }
    }
    procs::unpin();
    for (i, n) in SIZES.iter().enumerate() {
        figures.push(Figure::new(
            &format!("dmar_decode_ns_n{n}"),
            "ns/interrupt",
            &format!("one VT-d fault interrupt with {n} pending records: decode, count per device, emit (bpf_loop decoder, BPF run time)"),
            per[i].clone(),
            None,
            &ctx,
        ));
    }
}

/// Walks timed per mode per round.
const WALKS: u64 = 2_000;

/// The eBPF walk to the leaf table (a read of the neighbour of a mapped page), per mode, and
/// the same over nested tables (first stage of the first_stage image, PGTT 3, every table
/// and the output mapped 1:1 in stage 2), interleaved with them.
pub fn walks(figures: &mut Vec<Figure>) {
    let ctx = Context::here("test_run");
    let _stats = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS (root, 5.8+)");
    let mut ebpf = loader::load(Globals::default()).expect("load");
    let mut w = BpfWalk::new(&mut ebpf).unwrap();
    const SID: u16 = 0x0018;
    const RO: u64 = 0x10_0000;
    let mut images: Vec<_> = MODES.iter().map(|m| read_only_page(m, SID, RO)).collect();
    let mut nested = nested_read_only_page(SID, RO);
    nested.map_first_stage_tables();
    nested.map_output();
    images.push((nested.img, nested.rtaddr, nested.page));
    let names = [MODES[0], MODES[1], MODES[2], "nested"];
    // Reads to the leaf table: the structures, then one entry per level (nested: each
    // first-stage level after its table pointer's 4 second-stage reads).
    let reads = [7u8, 8, 9, 5 + 4 * 5];
    let mut per = [const { Vec::new() }; 4];
    procs::pin_cpu(0);
    for round in 0..ROUNDS {
        eprintln!("[bench] VT-d walk: round {}/{ROUNDS}", round + 1);
        for c in order::<4>(round) {
            let (img, rtaddr, _) = &images[c];
            w.set(img).unwrap();
            let rq = Request {
                rtaddr: *rtaddr,
                source_id: SID,
                pasid: 0,
                pasid_present: c > 0,
                addr: RO + 0x1000,
                write: false,
            };
            let (t0, n0) = progs::run_totals(w.ebpf(), "inject_walk");
            for _ in 0..WALKS {
                let found = w.walk(&rq).unwrap();
                assert_eq!((found.level, found.reads), (1, reads[c]), "{}: the walk reaches the leaf table", names[c]);
            }
            let (t1, n1) = progs::run_totals(w.ebpf(), "inject_walk");
            assert_eq!(n1 - n0, WALKS);
            per[c].push((t1 - t0) as f64 / WALKS as f64);
        }
    }
    procs::unpin();
    for (i, m) in names.iter().enumerate() {
        figures.push(Figure::new(
            &format!("walk_native_ns_{m}"),
            "ns/walk",
            &format!(
                "the eBPF walk to the leaf table over fabricated {m} tables in kernel memory ({} reads), BPF run time, native",
                reads[i]
            ),
            per[i].clone(),
            None,
            &ctx,
        ));
    }
}
