//! Root tier: the page-fault programs attached on this kernel's rung count a child's faults.

use iopf_agent::{
    cli::PlanOptions,
    doctor,
    hooks::Rung,
    loader::Globals,
    pagefault::{self, PfMaps, Programs, SLOT_PROGRAMS, Selection, TID_PROGRAMS},
};
use iopf_common::pagefault::PfMode;
use iopf_tests::{require_root, workload::TouchPages};

/// Pages the child touches.
const PAGES: usize = 16_384;
/// Faults the child may take beyond its pages between "go" and "done": the first touch of
/// a few code, stack and stdio pages (seen: 1 to 6). The bound is generous but far below
/// anything a double count or a lost pairing would produce.
const SLACK: u64 = 64;

/// Loads and attaches the page-fault programs `progs` on this kernel's rung, tracing only `child`.
fn trace_child(child: &TouchPages, progs: &Programs) -> (aya::Ebpf, PfMaps) {
    let opts = PlanOptions { force_rung: None, require: vec![], btf_dir: "/sys/kernel/btf".into() };
    let (mut ebpf, report, _) =
        doctor::survey(&opts, Globals { pf_mode: PfMode::Selected, ..Globals::default() }).expect("load object");
    let plan = report.hooks.iter().find(|p| p.name == "mm_fault").expect("mm_fault planned").clone();
    assert_ne!(plan.rung, Rung::Unavailable, "page-fault hook unavailable here: {}", plan.reason);
    eprintln!("page-fault rung: {} ({})", plan.rung.as_str(), plan.target.as_deref().unwrap_or("-"));
    pagefault::attach(&mut ebpf, &plan, progs, None, iopf_agent::pin::How::Own).expect("attach");
    pagefault::select(&mut ebpf, &Selection { pids: vec![child.pid()], cgroups: vec![] }).expect("select");
    let maps = PfMaps::take(&mut ebpf).expect("maps");
    let before = maps.snapshot().expect("snapshot");
    assert_eq!(before.stats.faults, [0, 0], "nothing counted before the child runs");
    (ebpf, maps)
}

#[test]
fn counts_a_childs_page_faults_exactly() {
    if !require_root("counts_a_childs_page_faults_exactly") {
        return;
    }
    counts_exactly(&SLOT_PROGRAMS);
}

/// The programs for kernels without BPF compare-and-exchange (entries hashed by thread) count
/// the same faults exactly; on such a kernel (5.10) the VM tier checks them again.
#[test]
fn thread_keyed_programs_count_a_childs_page_faults_exactly() {
    if !require_root("thread_keyed_programs_count_a_childs_page_faults_exactly") {
        return;
    }
    counts_exactly(&TID_PROGRAMS);
}

fn counts_exactly(progs: &Programs) {
    let mut child = TouchPages::spawn(env!("CARGO_BIN_EXE_touch-pages"), PAGES);
    let (_ebpf, maps) = trace_child(&child, progs);
    child.touch();
    let snap = maps.snapshot().expect("snapshot");
    child.finish();

    let minor = snap.stats.faults[0];
    let major = snap.stats.faults[1];
    eprintln!("child faults: minor {minor} major {major}; stats {:?}", snap.stats);
    assert_eq!(major, 0, "fresh anonymous pages never fault major");
    assert!(
        (PAGES as u64..=PAGES as u64 + SLACK).contains(&minor),
        "expected {PAGES}..={} minor faults, counted {minor}",
        PAGES as u64 + SLACK
    );
    assert_eq!(snap.stats.exit_unmatched, 0, "every completion had its entry");
    assert_eq!(snap.stats.migrated, 0, "the child's threads stay put");
    for k in 0..2 {
        let h = &snap.hist[k];
        assert_eq!(h.count, snap.stats.faults[k], "histogram {k} holds one sample per counted fault");
        assert_eq!(h.buckets.iter().sum::<u64>(), h.count, "bucket sum equals count");
    }
    assert!(snap.hist[0].sum_ns > 0, "latencies were measured");
}

/// Faults that sleep in the kernel (userfaultfd) take the slow paths: one is parked when
/// another thread faults on its CPU, one completes on another CPU than it started on. Both are
/// still matched to their entries and timed.
#[test]
fn sleeping_faults_stay_matched_when_parked_or_migrated() {
    if !require_root("sleeping_faults_stay_matched_when_parked_or_migrated") {
        return;
    }
    const FRESH: usize = 1024;
    let mut child = TouchPages::spawn(env!("CARGO_BIN_EXE_sleepy-faults"), FRESH);
    let (_ebpf, maps) = trace_child(&child, &SLOT_PROGRAMS);
    child.touch();
    let snap = maps.snapshot().expect("snapshot");
    child.finish();
    eprintln!("sleepy-faults: {:?}", snap.stats);

    // Whether a fault retried after sleeping counts as major depends on the kernel (6.18
    // counts it minor): the kinds are summed.
    let total = snap.stats.faults[0] + snap.stats.faults[1];
    let want = FRESH as u64 + 2;
    assert!((want..=want + SLACK).contains(&total), "expected {want}..={} faults, counted {total}", want + SLACK);
    assert_eq!(snap.stats.parked, 1, "thread A's entry was parked when thread B faulted on CPU 0");
    assert_eq!(snap.stats.migrated, 1, "thread C's entry was claimed from CPU 0's slot on CPU 1");
    assert_eq!(snap.stats.exit_unmatched, 0, "every completion had its entry");
    assert_eq!(snap.stats.entry_unmatched, 0, "every entry completed");
    // Each sleeping fault was held for 100 ms > 2^26 ns: exactly two samples sit at or above
    // bucket 27; nothing else in the child takes that long.
    let slow: u64 = snap.hist.iter().map(|h| h.buckets[27..].iter().sum::<u64>()).sum();
    assert_eq!(slow, 2, "both sleeping faults timed across their sleep: {:?}", snap.hist);
    for k in 0..2 {
        assert_eq!(snap.hist[k].count, snap.stats.faults[k], "histogram {k} holds one sample per counted fault");
    }
}
