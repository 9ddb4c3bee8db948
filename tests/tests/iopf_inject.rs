//! Root tier: synthetic faults through the real in-kernel IOPF programs (BPF_PROG_TEST_RUN):
//! every counter and histogram bucket exact, from the maps and from /metrics.

use iopf_agent::{
    iopf::{events::EventReader, inject::Injector, maps::IopfMaps},
    kabi::{
        KernelBtf,
        iopf::{CURRENT_CONSTS, IopfAbi},
    },
    loader::{self, Globals},
    simulate::{drive::drive, model, scenario::Scenario},
};
use iopf_tests::require_root;

fn scenario(name: &str) -> Scenario {
    let path = format!("{}/../examples/scenarios/{name}", env!("CARGO_MANIFEST_DIR"));
    Scenario::load(std::path::Path::new(&path)).expect("scenario")
}

fn globals(events: bool) -> Globals {
    let g = Globals { events, ..Globals::default() };
    let btf = KernelBtf::load("/sys/kernel/btf".as_ref()).expect("kernel BTF");
    let g = match IopfAbi::resolve(btf.vmlinux()) {
        Ok(abi) => g.with_abi(&abi),
        Err(_) => Globals { consts: CURRENT_CONSTS, ..g },
    };
    // Report and handler are separate test runs, possibly on different CPUs.
    g.with_btf(btf.vmlinux())
}

#[test]
fn ten_thousand_faults_counted_exactly() {
    if !require_root("ten_thousand_faults_counted_exactly") {
        return;
    }
    let s = scenario("mixed-10k.yaml");
    let g = globals(false);
    let plan = model::plan(&s, &g.consts, g.tuple_keys);
    assert!(plan.faults.len() >= 10_000);
    let mut ebpf = loader::load(g).expect("load");
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    let got = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    let want =
        model::expected(&plan, model::EventsExpect { all: false, capacity: model::RING_RECORDS }, &model::Rules::new());
    assert_eq!(model::mismatches(&got, &want), Vec::<String>::new());
    assert_eq!(got.counts.len(), want.counts.len(), "same counter series");
    assert_eq!(got.hists.len(), want.hists.len(), "same histogram series");
}

/// The <= 6.8 flow (Debian 12's own 6.1): keyed by device + grpid at report, classified
/// there, no group handler. Run on whatever kernel this is, with the tuple-keyed programs.
#[test]
fn ten_thousand_faults_counted_exactly_with_tuple_keys() {
    if !require_root("ten_thousand_faults_counted_exactly_with_tuple_keys") {
        return;
    }
    let s = scenario("mixed-10k.yaml");
    let g = Globals { tuple_keys: true, ..globals(false) };
    let plan = model::plan(&s, &g.consts, true);
    let mut ebpf = loader::load(g).expect("load");
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    let got = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    let want =
        model::expected(&plan, model::EventsExpect { all: false, capacity: model::RING_RECORDS }, &model::Rules::new());
    assert_eq!(model::mismatches(&got, &want), Vec::<String>::new());
    // What a <= 6.8 kernel can know at report: PASID faults are SVA, the rest unknown.
    // mixed-10k: 10,400 faults, of which those on PASID 0 carry no PASID.
    let pasid_faults = plan.faults.iter().filter(|f| f.fault.pasid != 0).count() as u64;
    let sva: u64 = got
        .counts
        .iter()
        .filter(|(k, _)| k.code == iopf_common::iopf::CODE_REPORTED && k.config == iopf_common::iopf::Config::FlatSva as u8)
        .map(|(_, v)| v)
        .sum();
    assert_eq!(sva, pasid_faults);
    assert!(pasid_faults > 0 && pasid_faults < plan.faults.len() as u64, "the scenario has both kinds");
    let dispatch = got.hists.keys().filter(|k| k.latency == iopf_common::iopf::Latency::Dispatch as u8).count();
    assert_eq!(dispatch, 0, "no group handler, no dispatch latency");
}

#[test]
fn ring_buffer_overflow_drops_are_counted_exactly() {
    if !require_root("ring_buffer_overflow_drops_are_counted_exactly") {
        return;
    }
    let s = scenario("mixed-10k.yaml");
    let g = globals(true);
    let plan = model::plan(&s, &g.consts, g.tuple_keys);
    let mut ebpf = loader::load(g).expect("load");
    let mut events = EventReader::take(&mut ebpf).unwrap();
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    // 1 MiB ring, 8-byte record header + 112-byte event: 8738 records fit, nobody reads.
    let capacity = (1u64 << 20) / (8 + size_of::<iopf_common::iopf::Event>() as u64);
    assert_eq!(capacity, 8738);
    assert_eq!(capacity, model::RING_RECORDS);
    let got = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    let want = model::expected(&plan, model::EventsExpect { all: true, capacity }, &model::Rules::new());
    assert!(want.stats.events_dropped > 0, "the scenario overflows the ring");
    assert_eq!(got.stats, want.stats);
    assert_eq!(got.counts, want.counts, "counters stay exact while events drop");
    assert_eq!(got.hists, want.hists);
    let evs = events.drain();
    assert_eq!(evs.len() as u64, capacity);
    // The events are the first `capacity` answered faults, in order, with exact latencies.
    let answered: Vec<_> = plan.faults.iter().filter(|f| f.response.is_some()).collect();
    for (e, f) in evs.iter().zip(&answered) {
        let (code, at) = f.response.unwrap();
        assert_eq!(e.dev, f.dev);
        assert_eq!(e.fault, f.fault);
        assert_eq!(e.code, code);
        assert_eq!(e.service_ns, at - f.report_ns);
        assert_eq!(e.dispatch_ns, f.handler_ns - f.report_ns);
        assert_eq!(e.mm_fix_ns, f.mm_fix_ns.unwrap_or(0));
        assert_eq!((e.config, e.level), (f.config as u8, f.level as u8));
        assert_eq!(e.source, iopf_common::iopf::Source::Simulated as u8);
    }
}
