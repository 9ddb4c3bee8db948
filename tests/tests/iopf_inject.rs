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
        .filter(|(k, _)| {
            k.code == iopf_common::iopf::CODE_REPORTED && k.config == iopf_common::iopf::Config::FlatSva as u8
        })
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
    // 1 MiB ring, 8-byte record header + 128-byte event = 136 bytes: 7710 records fit (the
    // kernel keeps unread bytes below the ring size), nobody reads.
    let capacity = ((1u64 << 20) - 1) / (8 + size_of::<iopf_common::iopf::Event>() as u64);
    assert_eq!(capacity, 7710);
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

fn one_fault(grpid: u32) -> iopf_common::iopf::Fault {
    let c = globals(false).consts;
    iopf_common::iopf::Fault {
        addr: 0x1234_5000,
        fault_type: c.fault_page_req,
        flags: c.flag_last_page | c.flag_pasid_valid,
        pasid: 3,
        grpid,
        perm: 1,
        _pad: 0,
    }
}

fn dev(name: &str) -> [u8; iopf_common::iopf::DEV_NAME_LEN] {
    iopf_agent::iopf::maps::dev_bytes(name)
}

/// Loads the programs with `g`, runs `steps` through the injector, returns the maps' totals.
fn injected(g: Globals, steps: impl FnOnce(&mut Injector<'_>)) -> iopf_agent::iopf::maps::IopfSnapshot {
    let mut ebpf = loader::load(g).expect("load");
    steps(&mut Injector::new(&mut ebpf).expect("injector"));
    IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap()
}

/// 6.9+ with the free hook: a group handed to user space (iopf_group_dequeue) and answered
/// twice. The user-space part of the service time is its own histogram, the second response
/// is a double response (counted, not timed), and the free ends the group without a `none`.
#[test]
fn dequeue_splits_service_and_a_double_response_is_counted_once() {
    use iopf_common::iopf::{HistKey, InflightKey, Latency, RESP_SUCCESS, Source};
    if !require_root("dequeue_splits_service_and_a_double_response_is_counted_once") {
        return;
    }
    let g = Globals { tuple_keys: false, ..globals(false) };
    let d = dev("0000:00:09.0");
    let key = InflightKey { a: 0x5157_0000_0000_1000, b: 0 };
    let got = injected(g, |inj| {
        inj.keep_until_free(true).unwrap();
        inj.report(&d, &one_fault(7), 1_000, InflightKey::default()).unwrap();
        inj.handler(key, g.consts.dom_nested, false, 3_000).unwrap();
        inj.dequeue(key, 5_000).unwrap();
        inj.response(key, RESP_SUCCESS, 50_000).unwrap();
        inj.response(key, RESP_SUCCESS, 60_000).unwrap();
        inj.free(key, 61_000).unwrap();
    });
    assert_eq!(got.stats.responses, 1);
    assert_eq!(got.stats.double_responses, 1);
    assert_eq!(got.stats.delivered, 1);
    assert_eq!(got.stats.freed_unanswered, 0);
    assert_eq!(got.stats.response_unmatched, 0);
    let src = Source::Simulated as u8;
    let h = |l: Latency| got.hists.get(&HistKey { dev: d, latency: l as u8, source: src, _pad: [0; 6] }).copied();
    let service = h(Latency::Service).expect("service histogram");
    assert_eq!((service.count, service.sum_ns), (1, 49_000));
    let user = h(Latency::User).expect("user histogram");
    assert_eq!((user.count, user.sum_ns), (1, 45_000));
    let answered: u64 = got.counts.iter().filter(|(k, _)| k.code == RESP_SUCCESS).map(|(_, v)| v).sum();
    assert_eq!(answered, 1, "one success counted: {:?}", got.counts);
}

/// Without the free hook (flag off) the first response ends the fault: a second one finds
/// nothing and is unmatched; nothing is timed twice.
#[test]
fn without_the_free_hook_a_second_response_is_unmatched() {
    use iopf_common::iopf::{InflightKey, RESP_SUCCESS};
    if !require_root("without_the_free_hook_a_second_response_is_unmatched") {
        return;
    }
    let g = Globals { tuple_keys: false, ..globals(false) };
    let key = InflightKey { a: 0x5157_0000_0000_2000, b: 0 };
    let got = injected(g, |inj| {
        inj.keep_until_free(false).unwrap();
        inj.report(&dev("0000:00:0a.0"), &one_fault(8), 1_000, InflightKey::default()).unwrap();
        inj.handler(key, g.consts.dom_nested, false, 3_000).unwrap();
        inj.response(key, RESP_SUCCESS, 50_000).unwrap();
        inj.response(key, RESP_SUCCESS, 60_000).unwrap();
    });
    assert_eq!((got.stats.responses, got.stats.response_unmatched, got.stats.double_responses), (1, 1, 0));
}

/// <= 6.8: a report whose device + grpid key is still in flight supersedes it; the old fault
/// is answered `none` and counted, and the new one is matched by its response. The same with
/// compare-and-exchange claims and with the hash claims of a kernel before 5.12.
#[test]
fn tuple_key_reuse_supersedes_the_stale_fault() {
    use iopf_common::iopf::{InflightKey, RESP_NONE, RESP_SUCCESS};
    if !require_root("tuple_key_reuse_supersedes_the_stale_fault") {
        return;
    }
    for exchange in [true, false] {
        let g = Globals { tuple_keys: true, exchange: Some(exchange), ..globals(false) };
        let d = dev("0000:00:0b.0");
        let key = InflightKey { a: 0x5157_0000_0000_3000, b: 9 };
        let got = injected(g, |inj| {
            inj.report(&d, &one_fault(9), 1_000, key).unwrap();
            inj.report(&d, &one_fault(9), 2_000, key).unwrap();
            inj.response(key, RESP_SUCCESS, 9_000).unwrap();
            inj.response(key, RESP_SUCCESS, 9_500).unwrap();
        });
        assert_eq!(got.stats.inflight_superseded, 1, "exchange {exchange}");
        assert_eq!((got.stats.responses, got.stats.response_unmatched), (1, 1), "exchange {exchange}");
        let by_code = |c: u8| got.counts.iter().filter(|(k, _)| k.dev == d && k.code == c).map(|(_, v)| v).sum::<u64>();
        assert_eq!((by_code(RESP_NONE), by_code(RESP_SUCCESS)), (1, 1), "exchange {exchange}");
    }
}

/// A kernel before 5.12 (no BPF compare-and-exchange), which is tuple-keyed: the in-flight
/// programs claim through the hash map, and mixed-10k is counted exactly as elsewhere.
#[test]
fn ten_thousand_faults_counted_exactly_without_exchange() {
    if !require_root("ten_thousand_faults_counted_exactly_without_exchange") {
        return;
    }
    let s = scenario("mixed-10k.yaml");
    let g = Globals { tuple_keys: true, exchange: Some(false), ..globals(false) };
    let plan = model::plan(&s, &g.consts, true);
    let mut ebpf = loader::load(g).expect("load");
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    let got = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    let want =
        model::expected(&plan, model::EventsExpect { all: false, capacity: model::RING_RECORDS }, &model::Rules::new());
    assert_eq!(model::mismatches(&got, &want), Vec::<String>::new());
    assert_eq!(got.counts.len(), want.counts.len(), "same counter series");
    assert_eq!(got.stats.inflight_spilled, 0, "the hash is the store, not a spill");
    assert_eq!(got.stats.inflight_evicted, 0);
}

/// Without compare-and-exchange a fault never answered is ended `none` by a later report on
/// its CPU once it is older than INFLIGHT_MAX_AGE_NS (60 s), not at exactly that age; its late
/// response is then unmatched, and the faults after it are answered as usual.
#[test]
fn without_exchange_an_unanswered_fault_ages_out_at_a_later_report() {
    use iopf_common::iopf::{INFLIGHT_MAX_AGE_NS, InflightKey, RESP_NONE, RESP_SUCCESS};
    if !require_root("without_exchange_an_unanswered_fault_ages_out_at_a_later_report") {
        return;
    }
    // The age ring is per CPU: every test run of this thread on one CPU.
    let _pin = iopf_agent::iopf::inject::PinnedToCpu::current();
    let g = Globals { tuple_keys: true, exchange: Some(false), ..globals(false) };
    let d = dev("0000:00:0c.0");
    let k = |grpid: u64| InflightKey { a: 0x5157_0000_0000_4000, b: grpid };
    let t0 = 1_000;
    // The second report comes when the first fault is exactly 60 s old, then 1 ns later.
    for (later, evicted) in [(t0 + INFLIGHT_MAX_AGE_NS, 0), (t0 + INFLIGHT_MAX_AGE_NS + 1, 1)] {
        let got = injected(g, |inj| {
            inj.report(&d, &one_fault(1), t0, k(1)).unwrap();
            inj.report(&d, &one_fault(2), later, k(2)).unwrap();
            inj.response(k(1), RESP_SUCCESS, later + 1).unwrap();
            inj.response(k(2), RESP_SUCCESS, later + 2).unwrap();
        });
        assert_eq!(got.stats.inflight_evicted, evicted, "second report at {later}");
        assert_eq!((got.stats.responses, got.stats.response_unmatched), (2 - evicted, evicted));
        assert_eq!(got.stats.inflight_unaged, 0);
        let by_code = |c: u8| got.counts.iter().filter(|(k, _)| k.dev == d && k.code == c).map(|(_, v)| v).sum::<u64>();
        assert_eq!((by_code(RESP_NONE), by_code(RESP_SUCCESS)), (evicted, 2 - evicted));
    }
}

/// A violation is counted under the policy whose rule it broke, as named then: a reload
/// that renames the policy starts a new series and leaves the old one as it was.
#[test]
fn violations_keep_the_policy_they_broke_across_a_rename() {
    use iopf_agent::policy::{PolicyIds, PolicySet, SysfsDevice, install::Installed};
    use iopf_common::{iopf::Source, policy::VIOLATION_LEVEL};
    if !require_root("violations_keep_the_policy_they_broke_across_a_rename") {
        return;
    }
    const DEV: &str = "0000:6a:01.0";
    let text = format!(
        "apiVersion: iopf.dev/v1alpha1\nkind: Scenario\nmetadata:\n  name: rename\nspec:\n  devices:\n    - name: \"{DEV}\"\n      faults: 5\n      configuration: nested_parent\n      responses: {{success: 1}}\n      dispatchNs: {{min: 100, max: 100}}\n      serviceNs: {{min: 1000, max: 1000}}\n"
    );
    let s = Scenario::parse("rename.yaml", &text).expect("scenario");
    let policy = |name: &str| {
        format!(
            "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: monitor\n  selector: {{name: \"{DEV}\"}}\n  expect:\n    levels: [first]\n"
        )
    };
    let devices = [SysfsDevice { name: DEV.into(), bus: "simulated".into(), ..SysfsDevice::default() }];
    let g = globals(false);
    let plan = model::plan(&s, &g.consts, g.tuple_keys);
    let mut ebpf = loader::load(g).expect("load");
    let mut maps = IopfMaps::take(&mut ebpf).unwrap();
    let mut ids = PolicyIds::default();
    let mut set = PolicySet::parse("a.yaml".as_ref(), &policy("pinned-a")).unwrap();
    set.assign_ids(&mut ids);
    let resolved = set.resolve_devices(&devices).unwrap();
    let mut installed = Installed::new(&resolved, Source::Simulated as u8, ids);
    installed.reserve(&mut maps, g.dev_slots).unwrap();
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    let mut set = PolicySet::parse("a.yaml".as_ref(), &policy("pinned-b")).unwrap();
    set.assign_ids(&mut installed.ids);
    let resolved = set.resolve_devices(&devices).unwrap();
    assert_eq!(installed.replace(&mut maps, &resolved, g.dev_slots).unwrap(), 1, "the rule's policy id changed");
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    let snap = maps.snapshot().unwrap();
    let level = iopf_common::policy::violation_slot(VIOLATION_LEVEL);
    let mut got: Vec<(String, Option<&str>, usize, u64)> = snap
        .policy_violations
        .iter()
        .map(|((d, _, id, slot), n)| (iopf_agent::iopf::maps::dev_str(d), installed.ids.name(*id), *slot, *n))
        .collect();
    // Ids are name hashes: order by name.
    got.sort();
    assert_eq!(got, [(DEV.to_owned(), Some("pinned-a"), level, 5), (DEV.to_owned(), Some("pinned-b"), level, 5)]);
    assert_eq!(snap.stats.policy_violations_overflow, 0);
}

/// Faults of a device that came before its rule are counted as unchecked, exactly: 5 before
/// the rule, 5 after, and /metrics says 5 unchecked and 5 violations.
#[test]
fn faults_before_the_rule_are_counted_unchecked() {
    use std::sync::{Arc, Mutex};

    use iopf_agent::{
        iopf::metrics::IopfSource,
        metrics::Registry,
        policy::{PolicyIds, PolicySet, Resolved, SysfsDevice, install::Installed},
    };
    use iopf_common::iopf::Source;
    if !require_root("faults_before_the_rule_are_counted_unchecked") {
        return;
    }
    const DEV: &str = "0000:6a:02.0";
    let text = format!(
        "apiVersion: iopf.dev/v1alpha1\nkind: Scenario\nmetadata:\n  name: late\nspec:\n  devices:\n    - name: \"{DEV}\"\n      faults: 5\n      configuration: nested_parent\n      responses: {{success: 1}}\n      dispatchNs: {{min: 100, max: 100}}\n      serviceNs: {{min: 1000, max: 1000}}\n"
    );
    let s = Scenario::parse("late.yaml", &text).expect("scenario");
    let g = globals(false);
    let plan = model::plan(&s, &g.consts, g.tuple_keys);
    let mut ebpf = loader::load(g).expect("load");
    let maps = Arc::new(Mutex::new(IopfMaps::take(&mut ebpf).unwrap()));
    let installed =
        Arc::new(Mutex::new(Installed::new(&Resolved::default(), Source::Simulated as u8, PolicyIds::default())));
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    let policy = format!(
        "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: late\nspec:\n  mode: monitor\n  selector: {{name: \"{DEV}\"}}\n  expect:\n    levels: [first]\n"
    );
    let mut set = PolicySet::parse("p.yaml".as_ref(), &policy).unwrap();
    set.assign_ids(&mut installed.lock().unwrap().ids);
    let dev = [SysfsDevice { name: DEV.into(), bus: "simulated".into(), ..SysfsDevice::default() }];
    let resolved = set.resolve_devices(&dev).unwrap();
    installed.lock().unwrap().replace(&mut maps.lock().unwrap(), &resolved, g.dev_slots).unwrap();
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    let registry = Registry::default();
    registry.add(IopfSource::new(maps, Some(installed)));
    let e = iopf_tests::prom::Exposition::parse(&registry.render());
    let l = [("device", DEV), ("policy", "late"), ("source", "simulated")];
    assert_eq!(e.get("iopf_policy_unchecked_total", &l), Some(5.0));
    assert_eq!(
        e.get("iopf_policy_violations_total", &[("device", DEV), ("policy", "late"), ("violation", "level")]),
        Some(5.0)
    );
}

/// Reloads while faults flow: the rules of every scenario device are rewritten over and over
/// (new policy ids, different rules) as mixed-10k is driven; every counter and histogram is
/// still exactly the model's (rules decide violations, never what is counted).
#[test]
fn totals_stay_exact_across_reloads_under_a_fault_stream() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use iopf_agent::policy::{PolicyIds, PolicySet, SysfsDevice, install::Installed};
    use iopf_common::iopf::Source;
    if !require_root("totals_stay_exact_across_reloads_under_a_fault_stream") {
        return;
    }
    let s = scenario("mixed-10k.yaml");
    let g = globals(false);
    let plan = model::plan(&s, &g.consts, g.tuple_keys);
    let mut ebpf = loader::load(g).expect("load");
    let mut maps = IopfMaps::take(&mut ebpf).unwrap();
    let devices: Vec<SysfsDevice> = s
        .spec
        .devices
        .iter()
        .map(|d| SysfsDevice { name: d.name.clone(), bus: "simulated".into(), ..SysfsDevice::default() })
        .collect();
    let sets: Vec<PolicySet> = ["levels: [first]", "responses: [success]", "maxServiceLatency: 50us"]
        .iter()
        .map(|expect| {
            let text: String = devices
                .iter()
                .enumerate()
                .map(|(i, d)| format!("---\napiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: p{i}-{}\nspec:\n  mode: monitor\n  selector: {{name: \"{}\"}}\n  expect:\n    {expect}\n", expect.len(), d.name))
                .collect();
            PolicySet::parse("r.yaml".as_ref(), &text).unwrap()
        })
        .collect();
    let mut ids = PolicyIds::default();
    let mut first = sets[0].clone();
    first.assign_ids(&mut ids);
    let mut installed = Installed::new(&first.resolve_devices(&devices).unwrap(), Source::Simulated as u8, ids);
    installed.reserve(&mut maps, g.dev_slots).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let reloader = std::thread::spawn(move || {
        let mut n = 0u32;
        while !d2.load(Ordering::Relaxed) {
            let mut set = sets[(n % 3) as usize].clone();
            set.assign_ids(&mut installed.ids);
            let r = set.resolve_devices(&devices).unwrap();
            installed.replace(&mut maps, &r, g.dev_slots).unwrap();
            n += 1;
        }
        (n, maps)
    });
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    done.store(true, Ordering::Relaxed);
    let (reloads, maps) = reloader.join().unwrap();
    println!("{reloads} reloads while {} faults were driven", plan.faults.len());
    assert!(reloads >= 3, "the reloads overlapped the stream: {reloads}");
    let got = maps.snapshot().unwrap();
    let want =
        model::expected(&plan, model::EventsExpect { all: false, capacity: model::RING_RECORDS }, &model::Rules::new());
    assert_eq!(got.counts, want.counts, "counters");
    assert_eq!(got.hists, want.hists, "histograms");
    assert_eq!(
        (got.stats.reports, got.stats.handled, got.stats.responses),
        (want.stats.reports, want.stats.handled, want.stats.responses)
    );
}

/// `maxFaultRate: 10` in fixed 1-second windows of the report clock: 25 faults 10 ms apart in
/// second 5, then 8 in second 6, then 12 more in second 6 a little later. Worked out by hand:
/// second 5 has 25 (15 over), second 6 has 20 (10 over): 25 violations, and each over-rate
/// fault is exactly the 11th and later of its second.
#[test]
fn fault_rate_is_counted_per_aligned_second_exactly() {
    use iopf_agent::policy::{PolicyIds, PolicySet, SysfsDevice, install::Installed};
    use iopf_common::{iopf::Source, policy::VIOLATION_RATE};
    if !require_root("fault_rate_is_counted_per_aligned_second_exactly") {
        return;
    }
    const DEV: &str = "0000:6a:04.0";
    let text = format!(
        "apiVersion: iopf.dev/v1alpha1\nkind: Scenario\nmetadata:\n  name: rate\nspec:\n  devices:\n    - name: \"{DEV}\"\n      faults: 45\n      configuration: nested\n      responses: {{success: 1}}\n      dispatchNs: {{min: 100, max: 100}}\n      serviceNs: {{min: 1000, max: 1000}}\n"
    );
    let s = Scenario::parse("rate.yaml", &text).expect("scenario");
    let g = globals(true);
    let mut plan = model::plan(&s, &g.consts, g.tuple_keys);
    let times: Vec<u64> = (0..25u64)
        .map(|i| 5_000_000_000 + i * 10_000_000)
        .chain((0..8u64).map(|i| 6_000_000_000 + i * 1_000))
        .chain((0..12u64).map(|i| 6_900_000_000 + i * 1_000))
        .collect();
    for (f, at) in plan.faults.iter_mut().zip(&times) {
        let shift = |t: u64| t - f.report_ns + at;
        f.handler_ns = shift(f.handler_ns);
        f.response = f.response.map(|(c, t)| (c, shift(t)));
        f.report_ns = *at;
    }
    let policy = format!(
        "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: rate\nspec:\n  mode: monitor\n  selector: {{name: \"{DEV}\"}}\n  expect:\n    maxFaultRate: 10\n"
    );
    let devices = [SysfsDevice { name: DEV.into(), bus: "simulated".into(), ..SysfsDevice::default() }];
    let mut ebpf = loader::load(g).expect("load");
    let mut maps = IopfMaps::take(&mut ebpf).unwrap();
    let mut reader = EventReader::take(&mut ebpf).unwrap();
    let mut ids = PolicyIds::default();
    let mut set = PolicySet::parse("r.yaml".as_ref(), &policy).unwrap();
    set.assign_ids(&mut ids);
    let resolved = set.resolve_devices(&devices).unwrap();
    let mut installed = Installed::new(&resolved, Source::Simulated as u8, ids);
    installed.reserve(&mut maps, g.dev_slots).unwrap();
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    let snap = maps.snapshot().unwrap();
    let slot = iopf_common::policy::violation_slot(VIOLATION_RATE);
    let per_policy: u64 = snap.policy_violations.iter().filter(|((_, _, _, s), _)| *s == slot).map(|(_, n)| *n).sum();
    assert_eq!(per_policy, 25);
    assert_eq!(snap.violations.iter().filter(|((_, _, s), _)| *s == slot).map(|(_, n)| *n).sum::<u64>(), 25);
    assert_eq!(snap.stats.rate_unchecked, 0);
    // Which faults: the events carry their verdicts, in answer order = report order here.
    let flagged: Vec<u64> =
        reader.drain().iter().filter(|e| e.verdict & VIOLATION_RATE != 0).map(|e| e.report_ns).collect();
    let want: Vec<u64> = times[10..25].iter().chain(&times[35..45]).copied().collect();
    assert_eq!(flagged, want);
}

/// PASID-scoped policies on one device, checked in the kernel: PASIDs 0 (none), 5, 70, 100
/// in turn over 40 faults (10 each, all in one rate window). `sva-low` holds PASIDs 1-64
/// (service latency 500 ns: every one of its faults takes 1000 ns; at most 4 faults a second),
/// `sva-high` PASID 100 (only `invalid` answers: every one is `success`; at most 4 a second).
/// Worked out by hand: sva-low 10 latency + 6 rate, sva-high 10 code + 6 rate (each policy
/// has its own window: one shared per device would flag other faults), 20 faults checked and
/// 20 (PASIDs none and 70) out of every scope, none late.
#[test]
fn pasid_scoped_policies_check_only_their_pasids_exactly() {
    use std::sync::{Arc, Mutex};

    use iopf_agent::{
        iopf::metrics::IopfSource,
        metrics::Registry,
        policy::{PolicyIds, PolicySet, SysfsDevice, install::Installed},
    };
    use iopf_common::{
        iopf::Source,
        policy::{VIOLATION_CODE, VIOLATION_LATENCY, VIOLATION_RATE, violation_slot},
    };
    if !require_root("pasid_scoped_policies_check_only_their_pasids_exactly") {
        return;
    }
    const DEV: &str = "0000:6a:05.0";
    let text = format!(
        "apiVersion: iopf.dev/v1alpha1\nkind: Scenario\nmetadata:\n  name: pasids\nspec:\n  devices:\n    - name: \"{DEV}\"\n      faults: 40\n      configuration: flat_sva\n      pasids: [0, 5, 70, 100]\n      responses: {{success: 1}}\n      dispatchNs: {{min: 100, max: 100}}\n      serviceNs: {{min: 1000, max: 1000}}\n"
    );
    let s = Scenario::parse("pasids.yaml", &text).expect("scenario");
    let g = globals(true);
    let plan = model::plan(&s, &g.consts, g.tuple_keys);
    let doc = |name: &str, pasids: &str, expect: &str| {
        format!(
            "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: monitor\n  selector: {{name: \"{DEV}\", pasids: {pasids}}}\n  expect:\n{expect}"
        )
    };
    let policies = [
        doc("sva-low", "[1-64]", "    maxServiceLatency: 500ns\n    maxFaultRate: 4\n"),
        doc("sva-high", "[100]", "    responses: [invalid]\n    maxFaultRate: 4\n"),
    ]
    .join("---\n");
    let devices = [SysfsDevice { name: DEV.into(), bus: "simulated".into(), ..SysfsDevice::default() }];
    let mut ebpf = loader::load(g).expect("load");
    let maps = Arc::new(Mutex::new(IopfMaps::take(&mut ebpf).unwrap()));
    let mut reader = EventReader::take(&mut ebpf).unwrap();
    let mut ids = PolicyIds::default();
    let mut set = PolicySet::parse("p.yaml".as_ref(), &policies).unwrap();
    set.assign_ids(&mut ids);
    let resolved = set.resolve_devices(&devices).unwrap();
    let mut installed = Installed::new(&resolved, Source::Simulated as u8, ids.clone());
    installed.reserve(&mut maps.lock().unwrap(), g.dev_slots).unwrap();
    drive(&mut Injector::new(&mut ebpf).expect("injector"), &plan).expect("drive");
    let snap = maps.lock().unwrap().snapshot().unwrap();
    let mut per_policy: Vec<(String, usize, u64)> = snap
        .policy_violations
        .iter()
        .map(|((_, _, id, slot), n)| (ids.name(*id).unwrap_or("?").to_owned(), *slot, *n))
        .collect();
    per_policy.sort();
    let (lat, code, rate) =
        (violation_slot(VIOLATION_LATENCY), violation_slot(VIOLATION_CODE), violation_slot(VIOLATION_RATE));
    let mut want = vec![
        ("sva-high".to_owned(), code, 10),
        ("sva-high".to_owned(), rate, 6),
        ("sva-low".to_owned(), lat, 10),
        ("sva-low".to_owned(), rate, 6),
    ];
    want.sort();
    assert_eq!(per_policy, want);
    let key = (iopf_agent::iopf::maps::dev_bytes(DEV), Source::Simulated as u8);
    assert_eq!((snap.checked.get(&key), snap.unscoped.get(&key)), (Some(&20), Some(&20)));
    assert_eq!(snap.stats.rate_unchecked, 0);
    // The flagged faults: every fault of PASIDs 5 and 100, none of 0 or 70; the rate
    // violations are the 5th to 10th of each PASID.
    let events = reader.drain();
    let flagged: Vec<u32> = events.iter().filter(|e| e.verdict > 1).map(|e| e.fault.pasid).collect();
    assert_eq!(flagged.len(), 20);
    // Each event names the policy of its PASID, taken in the kernel; none for the others.
    let id = |name: &str| set.policies().iter().find(|p| p.name() == name).unwrap().rule().policy_id;
    let by_pasid: std::collections::BTreeMap<(u32, u32), usize> = events.iter().fold(Default::default(), |mut m, e| {
        *m.entry((e.fault.pasid, e.policy_id)).or_default() += 1;
        m
    });
    let want: std::collections::BTreeMap<(u32, u32), usize> =
        [((0, 0), 10), ((5, id("sva-low")), 10), ((70, 0), 10), ((100, id("sva-high")), 10)].into();
    assert_eq!(by_pasid, want);
    assert_eq!((flagged.iter().filter(|p| **p == 5).count(), flagged.iter().filter(|p| **p == 100).count()), (10, 10));
    let over: Vec<(u32, u64)> =
        events.iter().filter(|e| e.verdict & VIOLATION_RATE != 0).map(|e| (e.fault.pasid, e.report_ns)).collect();
    let nth = |pasid: u32, from: usize| -> Vec<(u32, u64)> {
        plan.faults.iter().filter(|f| f.fault.pasid == pasid).skip(from).map(|f| (pasid, f.report_ns)).collect()
    };
    let mut want_over = [nth(5, 4), nth(100, 4)].concat();
    want_over.sort_by_key(|(_, t)| *t);
    let mut over_sorted = over.clone();
    over_sorted.sort_by_key(|(_, t)| *t);
    assert_eq!(over_sorted, want_over);
    // And /metrics: none late, 20 out of scope, under both names.
    let registry = Registry::default();
    registry.add(IopfSource::new(maps, Some(Arc::new(Mutex::new(installed)))));
    let e = iopf_tests::prom::Exposition::parse(&registry.render());
    let l = [("device", DEV), ("policy", "sva-low,sva-high"), ("source", "simulated")];
    assert_eq!(e.get("iopf_policy_unscoped_total", &l), Some(20.0));
    assert_eq!(e.get("iopf_policy_unchecked_total", &l), Some(0.0));
    assert_eq!(
        e.get("iopf_policy_violations_total", &[("device", DEV), ("policy", "sva-high"), ("violation", "fault_rate")]),
        Some(6.0)
    );
}

/// The walk at report and the domain type at the group handler classify one recoverable
/// fault: a different stage is one disagreement, the same stage or an unknown one none, and
/// a walk of another fault (an earlier report of the task whose handler never ran) is not
/// compared.
#[test]
fn domain_and_walk_disagreements_are_counted_exactly() {
    use iopf_common::iopf::{InflightKey, Level};
    if !require_root("domain_and_walk_disagreements_are_counted_exactly") {
        return;
    }
    let g = Globals { tuple_keys: false, ..globals(false) };
    let c = g.consts;
    let paging_user = c.dom_paging;
    // (walked level, walked fault's grpid, domain type, nest parent) -> disagreements.
    let cases = [
        (Level::Second, 21, c.dom_nested, false, 1), // nested domain says first; stage 2 missing
        (Level::First, 21, c.dom_nested, false, 0),
        (Level::Second, 21, paging_user, true, 0), // nest parent: second by both
        (Level::First, 21, paging_user, true, 1),
        (Level::Second, 21, c.dom_sva, false, 1),
        (Level::Second, 21, paging_user, false, 0), // single-stage user domain: unknown by type
        (Level::Second, 22, c.dom_nested, false, 0), // another fault's walk
    ];
    for (walked, walked_grpid, dom_type, nest_parent, want) in cases {
        let key = InflightKey { a: 0x5157_0000_0000_7000, b: 0 };
        let got = injected(g, |inj| {
            inj.report(&dev("0000:00:0c.0"), &one_fault(21), 1_000, InflightKey::default()).unwrap();
            inj.walked(&one_fault(walked_grpid), walked).unwrap();
            inj.handler(key, dom_type, nest_parent, 3_000).unwrap();
        });
        assert_eq!(got.stats.handled, 1, "{walked:?} {dom_type:#x} {nest_parent}");
        assert_eq!(
            got.stats.domain_walk_disagreements, want,
            "walked {walked:?} (grpid {walked_grpid}), domain {dom_type:#x}, nest parent {nest_parent}"
        );
        assert_eq!(got.stats.walk_disagreements, 0);
    }
}
