//! Root tier: the page-fault programs attached on this kernel's rung count a child's faults.

use iopf_agent::{
    cli::PlanOptions,
    doctor,
    hooks::Rung,
    loader::Globals,
    pagefault::{self, PfMaps, Selection},
};
use iopf_common::pagefault::PfMode;
use iopf_tests::{require_root, workload::TouchPages};

/// Pages the child touches.
const PAGES: usize = 16_384;
/// Faults the child may take beyond its pages between "go" and "done": the first touch of
/// a few code, stack and stdio pages (seen: 1 to 6). The bound is generous but far below
/// anything a double count or a lost pairing would produce.
const SLACK: u64 = 64;

#[test]
fn counts_a_childs_page_faults_exactly() {
    if !require_root("counts_a_childs_page_faults_exactly") {
        return;
    }
    let opts = PlanOptions { force_rung: None, require: vec![], btf_dir: "/sys/kernel/btf".into() };
    let (mut ebpf, report, _) =
        doctor::survey(&opts, Globals { pf_mode: PfMode::Selected, ..Globals::default() }).expect("load object");
    let plan = report.hooks.iter().find(|p| p.name == "mm_fault").expect("mm_fault planned").clone();
    assert_ne!(plan.rung, Rung::Unavailable, "page-fault hook unavailable here: {}", plan.reason);
    eprintln!("page-fault rung: {} ({})", plan.rung.as_str(), plan.target.as_deref().unwrap_or("-"));

    let mut child = TouchPages::spawn(env!("CARGO_BIN_EXE_touch-pages"), PAGES);
    pagefault::attach(&mut ebpf, &plan).expect("attach");
    pagefault::select(&mut ebpf, &Selection { pids: vec![child.pid()], cgroups: vec![] }).expect("select");
    let maps = PfMaps::take(&mut ebpf).expect("maps");
    let before = maps.snapshot().expect("snapshot");
    assert_eq!(before.stats.faults, [0, 0], "nothing counted before the child runs");

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
    assert_eq!(snap.stats.inflight_full, 0);
    for k in 0..2 {
        let h = &snap.hist[k];
        assert_eq!(h.count, snap.stats.faults[k], "histogram {k} holds one sample per counted fault");
        assert_eq!(h.buckets.iter().sum::<u64>(), h.count, "bucket sum equals count");
    }
    assert!(snap.hist[0].sum_ns > 0, "latencies were measured");
}
