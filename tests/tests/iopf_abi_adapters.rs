//! Root tier: each ABI generation's adapter reads a fault laid out as that generation's BTF
//! says, placed in kernel memory, through the same offsets path the real hooks use.

use iopf_agent::{
    iopf::{events::EventReader, inject::Injector, maps::dev_bytes},
    kabi::iopf::IopfAbi,
    loader::{self, Globals},
};
use iopf_common::iopf::{Config, InflightKey, Level, Method, RESP_INVALID, RESP_SUCCESS, Source};
use iopf_tests::{
    records::{Request, fault_record, fixture, rec},
    require_root,
};

const NAME: &str = "0000:6a:01.0";
const PASID: u32 = 0x2a;
const GRPID: u32 = 0x1ff;
const PERM: u32 = 0b11;
const ADDR: u64 = 0x7f3a_dead_b000;

/// Synthetic device, report event and (6.9+) group/handle/domain, as `abi` lays them out.
fn record(abi: &IopfAbi, dom_type: u32) -> Box<[u8; rec::SIZE]> {
    fault_record(abi, dom_type, &Request { device: NAME, pasid: PASID, grpid: GRPID, perm: PERM, addr: ADDR })
}

/// Runs one fault through the adapter of `fixture` and returns the event it produced.
fn one_fault(fixture_name: &str) -> (IopfAbi, iopf_common::iopf::Event) {
    let btf = fixture(fixture_name);
    let abi = IopfAbi::resolve(&btf).expect("abi");
    let mut ebpf = loader::load(Globals { events: true, ..Globals::default() }.with_abi(&abi)).expect("load");
    let mut events = EventReader::take(&mut ebpf).unwrap();
    let mut inj = Injector::new(&mut ebpf).unwrap();
    let dev_ptr = 0xffff_8880_1234_5000; // stands for the `struct device *` of the report
    let group = InflightKey { a: 0xffff_8880_4321_0000, b: 0 };
    let bytes = record(&abi, abi.consts.dom_nested);
    if abi.tuple_keys {
        inj.record(&bytes, 1_000, InflightKey { a: dev_ptr, b: 0 }).unwrap();
        // <= 6.8 response: key = device + grpid + pasid (PASID_VALID and NEEDS_PASID set).
        let key = InflightKey { a: dev_ptr, b: GRPID as u64 | (PASID as u64) << 32 };
        inj.response(key, RESP_SUCCESS, 6_000).unwrap();
    } else {
        inj.record(&bytes, 1_000, group).unwrap();
        inj.response(group, RESP_INVALID, 6_000).unwrap();
    }
    let evs = events.drain();
    assert_eq!(evs.len(), 1, "{fixture_name}: one event");
    (abi, evs[0])
}

fn assert_fault_fields(abi: &IopfAbi, e: &iopf_common::iopf::Event) {
    assert_eq!(e.dev, dev_bytes(NAME), "dev_name() through kobj.name");
    assert_eq!(e.fault.fault_type, abi.consts.fault_page_req);
    assert_eq!((e.fault.pasid, e.fault.grpid, e.fault.perm, e.fault.addr), (PASID, GRPID, PERM, ADDR));
    assert_eq!(e.service_ns, 5_000);
    assert_eq!(e.source, Source::Simulated as u8);
}

#[test]
fn debian_6_1_fault_event_adapter() {
    if !require_root("debian_6_1_fault_event_adapter") {
        return;
    }
    let (abi, e) = one_fault("debian-6.1");
    assert_fault_fields(&abi, &e);
    assert_eq!(e.code, RESP_SUCCESS);
    // <= 6.8: a PASID fault reaching the core is taken for SVA, first level: no domain is
    // read, so the method says heuristic.
    assert_eq!((e.config, e.level, e.method), (Config::FlatSva as u8, Level::First as u8, Method::Heuristic as u8));
}

#[test]
fn debian_6_12_attach_handle_adapter() {
    if !require_root("debian_6_12_attach_handle_adapter") {
        return;
    }
    let (abi, e) = one_fault("debian-6.12");
    assert_fault_fields(&abi, &e);
    assert_eq!(e.code, RESP_INVALID);
    // group->attach_handle->domain->type == NESTED.
    assert_eq!((e.config, e.level, e.method), (Config::Nested as u8, Level::First as u8, Method::Domain as u8));
}

#[test]
fn iopf_test_kernel_adapter() {
    if !require_root("iopf_test_kernel_adapter") {
        return;
    }
    let (abi, e) = one_fault("iopf-6.12");
    assert_fault_fields(&abi, &e);
    assert_eq!((e.config, e.level), (Config::Nested as u8, Level::First as u8));
}

/// 6.9/6.10 (`iopf_group.domain`, one hop): no Debian kernel of that range to capture, so the
/// 6.12 layout is rewritten to 6.9's `struct iopf_group { iopf_fault last_fault; list_head
/// faults @64; list_head pending_node @80; work_struct work @96; iommu_domain *domain @128; … }`.
#[test]
fn group_domain_one_hop_adapter() {
    if !require_root("group_domain_one_hop_adapter") {
        return;
    }
    let btf = fixture("debian-6.12");
    let mut abi = IopfAbi::resolve(&btf).expect("abi");
    abi.generation = iopf_agent::kabi::iopf::Generation::GroupDomain;
    abi.offsets.group_domain_hop1 = 128;
    abi.offsets.group_domain_hop2 = iopf_common::iopf::Offsets::ABSENT;
    abi.offsets.group_work = 96;
    let mut ebpf = loader::load(Globals { events: true, ..Globals::default() }.with_abi(&abi)).expect("load");
    let mut events = EventReader::take(&mut ebpf).unwrap();
    let mut inj = Injector::new(&mut ebpf).unwrap();
    let group = InflightKey { a: 0xffff_8880_4321_0000, b: 0 };
    inj.record(&record(&abi, abi.consts.dom_sva), 1_000, group).unwrap();
    inj.response(group, RESP_SUCCESS, 6_000).unwrap();
    let evs = events.drain();
    assert_eq!(evs.len(), 1);
    assert_fault_fields(&abi, &evs[0]);
    assert_eq!((evs[0].config, evs[0].level), (Config::FlatSva as u8, Level::First as u8));
}
