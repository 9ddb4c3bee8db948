//! AMD-Vi scenarios (QEMU 11's `amd-iommu,dma-remap=on` on q35). edu, with no driver bound,
//! sits in the kernel's default DMA domain, which maps nothing for it: each DMA makes QEMU log
//! IO_PAGE_FAULT entries in the unit's event log, which the driver drains in
//! `iommu_poll_events`. QEMU sets the I (interrupt request) flag and no address, so the
//! driver takes them for interrupt faults and reports them to nobody (no
//! `iommu:io_page_fault`): only the log has them.

use iopf_tests::{
    edu::{Access, Edu},
    prom::Exposition,
};

use crate::{Args, check, dmas_under, monitor_policy, start_on_rung};

const POLICY: &str = "edu-no-unrecoverable";

/// Lines the driver logged for IO_PAGE_FAULT entries of `bdf`.
fn dmesg_page_faults(bdf: &str) -> Result<usize, String> {
    let out = std::process::Command::new("dmesg").output().map_err(|e| format!("dmesg: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(bdf) && l.contains("Event logged [IO_PAGE_FAULT"))
        .count())
}

/// edu DMAs to unmapped IOVAs under an agent on the `rung` tracing `amdvi_evtlog`, with a
/// policy forbidding unrecoverable faults on edu. QEMU 11 writes one IO_PAGE_FAULT entry per
/// DMA (seen here with Debian's 6.12; the driver logs as many), each with edu's DeviceID, domain 0, address 0, and in the flags its own access
/// flags (read 1, write 2: the specification's GN and NX bits) beside I: 0x0009 for a read,
/// 0x000a for a write, exactly as the driver logs them. The agent reports each, named
/// after edu, with no stage (the entry has none), counted, and flagged by the policy. The
/// PPR log and response hooks attach on the same rung and count nothing.
pub fn amdvi_edu(a: &Args, rung: &str) -> Result<(), String> {
    let dmas =
        [(0x123000u64, Access::Read), (0x456000, Access::Write), (0x789000, Access::Read), (0xabc000, Access::Write)];
    let edu = Edu::open()?;
    let devid = crate::smmu::stream_id(&edu.bdf)?;
    let policy = monitor_policy(POLICY, &edu.bdf, &["unrecoverable: none"])?;
    let logged_before = dmesg_page_faults(&edu.bdf)?;
    let ppr = ["--require", "amdvi_pprlog", "--require", "amdvi_ppr_response"];
    let agent = start_on_rung(a, "amdvi_evtlog", rung, &[&["--policy", policy.as_str()][..], &ppr].concat())?;
    // The PPR hooks load and attach on the same rung (their decoding is the root tier's
    // `amdvi_decode`: QEMU's amd-iommu has no PPR log, so none runs here).
    for hook in ["amdvi_pprlog", "amdvi_ppr_response"] {
        crate::attached_on(&agent, hook, rung)?;
    }
    let (body, events) = dmas_under(agent, &edu, &dmas, "amdvi_event")?;
    let logged = dmesg_page_faults(&edu.bdf)? - logged_before;
    println!("  {} DMAs: agent emitted {} AMD-Vi entries; the driver logged {logged}", dmas.len(), events.len());
    check(events.len() == dmas.len(), format!("{} amdvi events, want {}", events.len(), dmas.len()))?;
    for (i, v) in events.iter().enumerate() {
        println!("  amdvi event: {v}");
        let read = dmas[i].1 == Access::Read;
        let (flags, names) = if read { ("0x0009", ["gn", "i"]) } else { ("0x000a", ["nx", "i"]) };
        let want = serde_json::json!({
            "kind": "amdvi_event", "device": edu.bdf, "devid": format!("{devid:#06x}"), "segment": 0,
            "event": "0x2", "event_name": "IO_PAGE_FAULT", "domain": "0x0000", "addr": "0x0", "flags": flags,
            "flag_names": names, "access": "read", "level": "unknown", "method": "none",
            "violations": ["unrecoverable"], "policy": POLICY,
        });
        for (k, w) in want.as_object().into_iter().flatten() {
            check(&v[k] == w, format!("{k}: {} want {w} in {v}", v[k]))?;
        }
    }
    let e = Exposition::parse(&body);
    for (flags, n) in [("gn+i", 2.0), ("nx+i", 2.0)] {
        let labels =
            [("device", edu.bdf.as_str()), ("event", "0x2"), ("event_name", "IO_PAGE_FAULT"), ("flags", flags)];
        let got = e.get("iopf_amdvi_events_total", &labels);
        check(got == Some(n), format!("iopf_amdvi_events_total{labels:?} = {got:?}, want {n}"))?;
    }
    check(
        !body.contains("iopf_amdvi_page_requests_total{") && !body.contains("iopf_amdvi_ppr_responses_total{"),
        "PPR series without a PPR log".to_string(),
    )?;
    for lost in
        ["iopf_amdvi_events_dropped_total", "iopf_amdvi_entries_undecoded_total", "iopf_amdvi_ppr_undecoded_total"]
    {
        let got = e.get(lost, &[]);
        check(got == Some(0.0), format!("{lost} = {got:?}, want 0"))?;
    }
    let viol = e.get(
        "iopf_policy_violations_total",
        &[("device", edu.bdf.as_str()), ("policy", POLICY), ("violation", "unrecoverable")],
    );
    check(viol == Some(4.0), format!("unrecoverable violations {viol:?}, want 4"))?;
    // Each counted once: the driver reports these to nobody, so iommu:io_page_fault (whose
    // hook counts into the same family) adds none.
    let unrec: f64 = e.sum("iopf_unrecoverable_faults_total", &[("device", edu.bdf.as_str())]);
    check(unrec == 4.0, format!("iopf_unrecoverable_faults_total {unrec} for edu, want 4"))?;
    check(logged == events.len(), format!("the driver logged {logged}, the agent emitted {}", events.len()))?;
    Ok(())
}

/// AMD-Vi entries in a recording: `record` across a read and a write, then `replay --json`
/// gives the two entries as `trace` did, and `policy check --against` counts both as
/// unrecoverable faults edu's policy forbids.
pub fn amdvi_record(a: &Args) -> Result<(), String> {
    let edu = Edu::open()?;
    let dmas = [(0x321000, Access::Read), (0x654000, Access::Write)];
    let (ours, text) = crate::record_replay(a, &edu, "amdvi_evtlog", &dmas, "edu-quiet")?;
    check(ours.len() == 2, format!("replayed {} edu entries, want 2: {ours:?}", ours.len()))?;
    for (v, flags) in ours.iter().zip(["0x0009", "0x000a"]) {
        check(
            v["kind"] == "amdvi_event" && v["event_name"] == "IO_PAGE_FAULT" && v["flags"] == flags,
            format!("replayed {v}, want IO_PAGE_FAULT with flags {flags}"),
        )?;
    }
    check(
        text == format!("edu-quiet {} unrecoverable 2\n2 violations in 2 recorded events\n", edu.bdf),
        format!("against: {text}"),
    )
}
