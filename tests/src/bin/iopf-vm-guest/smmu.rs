//! Arm SMMUv3 scenarios (arm64 guests: QEMU's virt machine with `iommu=smmuv3`). edu's DMA
//! domain maps nothing: each DMA raises one F_TRANSLATION event record, which the driver
//! takes off the event queue through `queue_remove_raw`.

use std::time::Duration;

use iopf_tests::{
    edu::{Access, Edu},
    prom::{Exposition, http_get},
    vfio::VfioDevice,
};

use crate::{Args, check, dmas_under, event_addrs, monitor_policy, start_agent, start_on_rung};

/// Runs `body` with edu in a DMA domain that maps nothing. That is the kernel's default DMA
/// domain where the kernel gave edu one with no driver bound (an IOMMU group). Where it did
/// not (Debian's 6.12: the SMMU's stream for a device is set up when a driver binds), it is
/// an empty VFIO type1 container's domain, and edu goes back to no driver afterwards.
/// `body` is told which: a default domain no driver used has never mapped anything; the
/// container's domain holds tables (seen: the walk stops at table level 2 or 1 there).
fn with_edu<T>(body: impl FnOnce(&Edu, bool) -> Result<T, String>) -> Result<T, String> {
    let bdf = Edu::find()?;
    if std::path::Path::new(&format!("/sys/bus/pci/devices/{bdf}/iommu_group")).exists() {
        println!("  {bdf}: in its IOMMU group's default DMA domain, no driver bound");
        return body(&Edu::open()?, true);
    }
    println!("  {bdf}: no IOMMU group without a driver; given to vfio-pci, in an empty type1 container");
    let dev = VfioDevice::open(&bdf)?;
    let out = Edu::open_vfio(&dev).and_then(|edu| body(&edu, false));
    let released = dev.release();
    let out = out?;
    released.map(|()| out)
}

/// The stage the harness set QEMU's SMMUv3 to translate at (kernel command line
/// `iopf_smmu_stage=2`, from the kernel's spec in xtask; else 1): a fact about the machine
/// the test states, not one the agent decides.
fn stage() -> u8 {
    if std::env::var("iopf_smmu_stage").is_ok_and(|v| v == "2") { 2 } else { 1 }
}

const POLICY: &str = "edu-stage2-pinned";

/// The StreamID of a PCI function behind QEMU virt's SMMUv3: its requester id (bus << 8 |
/// devfn), which the machine's IORT / device tree maps one to one.
pub fn stream_id(bdf: &str) -> Result<u32, String> {
    let bad = || format!("unreadable PCI address {bdf}");
    let (_, rest) = bdf.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
    let n = |s: &str| u32::from_str_radix(s, 16).map_err(|_| bad());
    Ok(n(bus)? << 8 | n(dev)? << 3 | n(func)?)
}

/// Lines the kernel's driver logged for F_TRANSLATION events (it rate-limits them).
fn dmesg_translation_events() -> Result<usize, String> {
    let out = std::process::Command::new("dmesg").output().map_err(|e| format!("dmesg: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("event 0x10 received")).count())
}

/// edu DMAs to unmapped IOVAs under an agent on the `rung` tracing `smmu_evtq`, with the
/// "stage 2 pinned" policy (`levels: [first]`, `unrecoverable: none`) on edu. Each DMA gives
/// one event record, exactly as the SMMUv3 architecture encodes it: event 0x10, StreamID,
/// class IN, RnW from the direction, the IOVA, and, where stage 1 translates, S2 clear and
/// no IPA; where stage 2 alone translates, S2 set and the IPA (the IOVA itself). The agent
/// reports it at level `first` or `second` by method `hardware`, counts it under edu's name
/// (from the unit's stream tree), and flags it as an unrecoverable fault the policy forbids,
/// and at stage 2 also as a level violation.
pub fn smmu_edu(a: &Args, rung: &str) -> Result<(), String> {
    with_edu(|edu, never_mapped| smmu_edu_on(a, rung, edu, never_mapped))
}

fn smmu_edu_on(a: &Args, rung: &str, edu: &Edu, never_mapped: bool) -> Result<(), String> {
    let dmas =
        [(0x123000u64, Access::Read), (0x456000, Access::Write), (0x789000, Access::Read), (0xabc000, Access::Write)];
    let sid = stream_id(&edu.bdf)?;
    let policy = monitor_policy(POLICY, &edu.bdf, &["levels: [first]", "unrecoverable: none"])?;
    let logged_before = dmesg_translation_events()?;
    let agent = start_on_rung(a, "smmu_evtq", rung, &["--policy", &policy])?;
    let (body, events) = dmas_under(agent, edu, &dmas, "smmu_event")?;
    let logged = dmesg_translation_events()? - logged_before;
    println!("  {} DMAs: agent emitted {} SMMUv3 event records; the kernel logged {logged}", dmas.len(), events.len());
    check(events.len() == dmas.len(), format!("{} smmu events, want {}", events.len(), dmas.len()))?;
    let s2 = stage() == 2;
    println!("  SMMUv3 translating at stage {}", stage());
    for (v, (iova, acc)) in events.iter().zip(dmas) {
        println!("  smmu event: {v}");
        let read = acc == Access::Read;
        // EVTQ_0: StreamID in bits 63:32, event id in 7:0. EVTQ_1: CLASS (41:40) = IN (0b10),
        // RnW (bit 35), S2 (bit 39). EVTQ_2: the input address. EVTQ_3: the IPA, at stage 2
        // only (stage 2 alone: the input address is the IPA).
        let ipa = if s2 { iova } else { 0 };
        let raw = [
            format!("{:#018x}", (u64::from(sid) << 32) | 0x10),
            format!("{:#018x}", (0b10u64 << 40) | if read { 1 << 35 } else { 0 } | if s2 { 1 << 39 } else { 0 }),
            format!("{iova:#018x}"),
            format!("{ipa:#018x}"),
        ];
        let flags: Vec<&str> = [(read, "rnw"), (s2, "s2")].iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        let violations = if s2 { vec!["level", "unrecoverable"] } else { vec!["unrecoverable"] };
        let want = serde_json::json!({
            "kind": "smmu_event", "device": edu.bdf, "sid": format!("{sid:#x}"), "event": "0x10",
            "event_name": "F_TRANSLATION", "class": "in", "access": if read { "read" } else { "write" },
            "addr": format!("{iova:#x}"), "ipa": format!("{ipa:#x}"), "ssv": false, "ssid": 0, "stall": false,
            "stag": 0, "flags": flags, "level": if s2 { "second" } else { "first" }, "method": "hardware",
            "violations": violations, "policy": POLICY, "raw": raw,
        });
        for (k, w) in want.as_object().into_iter().flatten() {
            check(&v[k] == w, format!("{k}: {} want {w} in {v}", v[k]))?;
        }
        // Our walk of the unit's tables: the IOVA is not mapped at the stage that translates,
        // which agrees with the S2 bit. QEMU's SMMUv3 offers a two-level stream table, which
        // Linux takes: the level-1 descriptor, then STE dword 0, then the CD's dwords 0 and 1
        // (stage 1) or STE dwords 2 and 3 (stage 2), then one entry per LPAE level from level
        // 0 (a 48-bit input at stage 1, QEMU's 44-bit IPA at stage 2) down to the empty one:
        // 9 - table level reads either way. A default domain that never mapped anything
        // stops at its top table (table level 4, LPAE level 0).
        let w = &v["walk"];
        let level = if s2 { "second" } else { "first" };
        check(
            w["method"] == "walk" && w["result"] == "not_present" && w["level"] == level && w["disagrees"] == false,
            format!("walk {w}, want not_present at {level}, agreeing with the S2 bit"),
        )?;
        let (tl, reads) = (w["table_level"].as_u64().unwrap_or(0), w["reads"].as_u64().unwrap_or(0));
        check((1..=4).contains(&tl) && reads == 9 - tl, format!("walk {w}: {reads} reads to table level {tl}"))?;
        check(!never_mapped || tl == 4, format!("walk {w}: the domain maps nothing, want table level 4"))?;
        check(w["entry"] == "0x0" && w["permission"] == false, format!("walk {w}: the empty entry"))?;
    }
    let e = Exposition::parse(&body);
    let sid_label = format!("{sid:#x}");
    let level = if s2 { "second" } else { "first" };
    for (access, n) in [("read", 2.0), ("write", 2.0)] {
        let labels = [
            ("device", edu.bdf.as_str()),
            ("sid", sid_label.as_str()),
            ("event", "0x10"),
            ("class", "in"),
            ("access", access),
            ("level", level),
        ];
        let got = e.get("iopf_smmu_events_total", &labels);
        check(got == Some(n), format!("iopf_smmu_events_total{labels:?} = {got:?}, want {n}"))?;
    }
    let total: f64 = e.samples.iter().filter(|s| s.name == "iopf_smmu_events_total").map(|s| s.value).sum();
    check(total == dmas.len() as f64, format!("{total} SMMU events counted in all, want {}", dmas.len()))?;
    for lost in ["iopf_smmu_events_dropped_total", "iopf_smmu_streams_unnamed_total"] {
        let got = e.get(lost, &[]);
        check(got == Some(0.0), format!("{lost} = {got:?}, want 0"))?;
    }
    let disagree = e.get("iopf_classification_disagreements_total", &[("methods", "hardware_walk")]);
    check(disagree == Some(0.0), format!("hardware_walk disagreements {disagree:?}, want 0"))?;
    let walks = e.get("iopf_walk_seconds_count", &[("source", "smmuv3")]);
    check(walks == Some(dmas.len() as f64), format!("smmuv3 walks {walks:?}, want {}", dmas.len()))?;
    let unrec: f64 = e.sum("iopf_unrecoverable_faults_total", &[("device", edu.bdf.as_str())]);
    check(unrec == dmas.len() as f64, format!("iopf_unrecoverable_faults_total {unrec} for edu, want {}", dmas.len()))?;
    let viol = |v: &str| {
        e.get("iopf_policy_violations_total", &[("device", edu.bdf.as_str()), ("policy", POLICY), ("violation", v)])
            .unwrap_or(0.0)
    };
    check(viol("unrecoverable") == dmas.len() as f64, format!("unrecoverable violations {}", viol("unrecoverable")))?;
    let want_level = if s2 { dmas.len() as f64 } else { 0.0 };
    check(viol("level") == want_level, format!("level violations {}, want {want_level}", viol("level")))?;
    Ok(())
}

const BURST: u64 = 32;
const BURST_BASE: u64 = 0x100_0000;

/// A burst of edu DMA faults (one every ~100 ms, edu's timer): the driver rate-limits its log
/// of event records (10 per 5 s), the agent counts and emits every one. Prints both numbers.
pub fn smmu_burst(a: &Args) -> Result<(), String> {
    with_edu(|edu, _| smmu_burst_on(a, edu))
}

fn smmu_burst_on(a: &Args, edu: &Edu) -> Result<(), String> {
    let logged_before = dmesg_translation_events()?;
    let agent = start_agent(a, &["--trace", "--require", "smmu_evtq"])?;
    for i in 0..BURST {
        edu.dma(BURST_BASE + i * 0x1000, if i % 2 == 0 { Access::Read } else { Access::Write })?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, body) = http_get(agent.addr, "/metrics").map_err(|e| format!("scrape: {e}"))?;
    let lines = agent.stop();
    let logged = dmesg_translation_events()? - logged_before;
    let e = Exposition::parse(&body);
    let counted: f64 = e.sum("iopf_smmu_events_total", &[("device", edu.bdf.as_str())]);
    let addrs = event_addrs(&lines, "smmu_event", &edu.bdf);
    let want: Vec<u64> = (0..BURST).map(|i| BURST_BASE + i * 0x1000).collect();
    println!(
        "  burst of {BURST} DMA faults: agent counted {counted} and emitted {}; the kernel logged {logged}",
        addrs.len()
    );
    let dropped = e.get("iopf_smmu_events_dropped_total", &[]);
    check(dropped == Some(0.0), format!("iopf_smmu_events_dropped_total {dropped:?}, want 0"))?;
    check(counted == BURST as f64, format!("agent counted {counted} SMMU events for {}, want {BURST}", edu.bdf))?;
    check(addrs == want, format!("event addresses {addrs:x?}, want {want:x?}"))?;
    // Else this shows nothing the kernel's own log does not.
    check(logged < BURST as usize, format!("the kernel logged all {logged} events: no rate limiting seen"))?;
    Ok(())
}

/// SMMUv3 records in a recording: `record` across a read and a write, then `replay --json`
/// gives the two records as `trace` did, and `policy check --against` counts both as
/// unrecoverable faults edu's policy forbids.
pub fn smmu_record(a: &Args) -> Result<(), String> {
    with_edu(|edu, _| {
        let dmas = [(0x321000, Access::Read), (0x654000, Access::Write)];
        let (ours, text) = crate::record_replay(a, edu, "smmu_evtq", &dmas, "edu-quiet")?;
        check(ours.len() == 2, format!("replayed {} edu records, want 2: {ours:?}", ours.len()))?;
        let level = if stage() == 2 { "second" } else { "first" };
        for (v, (iova, acc)) in ours.iter().zip(dmas) {
            let access = if acc == Access::Read { "read" } else { "write" };
            check(
                v["kind"] == "smmu_event"
                    && v["event_name"] == "F_TRANSLATION"
                    && v["addr"] == format!("{iova:#x}")
                    && v["access"] == access
                    && v["level"] == level,
                format!("replayed {v}, want F_TRANSLATION {access} {iova:#x} at {level}"),
            )?;
        }
        check(
            text == format!("edu-quiet {} unrecoverable 2\n2 violations in 2 recorded events\n", edu.bdf),
            format!("against: {text}"),
        )
    })
}

/// `doctor` on a kernel with the SMMUv3 driver: the unrecoverable SMMUv3 path is possible,
/// and where the kernel has no IOPF (no `iommu_report_device_fault`) it says recoverable
/// faults cannot be seen, naming why.
pub fn doctor_smmu(doctor: &serde_json::Value, syms: &std::collections::HashSet<String>) -> Result<(), String> {
    let path = |n: &str| doctor["fault_paths"].as_array().and_then(|a| a.iter().find(|p| p["path"] == n)).cloned();
    let smmu = path("smmuv3_unrecoverable").ok_or("fault path smmuv3_unrecoverable missing")?;
    let has = syms.contains("queue_remove_raw");
    println!("  doctor: path smmuv3_unrecoverable possible={} ({})", smmu["possible"], smmu["evidence"]);
    check(smmu["possible"] == has, format!("smmuv3_unrecoverable {smmu}, kallsyms says {has}"))?;
    if has && !syms.contains("iommu_report_device_fault") {
        let ev = smmu["evidence"].as_str().unwrap_or("");
        check(ev.contains("no recoverable faults") && ev.contains("IOMMU_IOPF"), format!("evidence: {ev}"))?;
    }
    // Every arm64 kernel of the tier has bpf_loop, the unit's registers in BTF and
    // /proc/kcore: the records are walked, so the hook's plan names no reason they are not.
    if has {
        let hook = doctor["hooks"].as_array().and_then(|a| a.iter().find(|h| h["name"] == "smmu_evtq")).cloned();
        let reason = hook.as_ref().and_then(|h| h["reason"].as_str()).unwrap_or("");
        println!("  doctor: smmu_evtq {}", hook.as_ref().map(|h| h.to_string()).unwrap_or_default());
        check(!reason.contains("not walked"), format!("smmu_evtq: {reason}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_ids_are_requester_ids() {
        assert_eq!(super::stream_id("0000:00:01.0"), Ok(0x8));
        assert_eq!(super::stream_id("0000:02:1f.7"), Ok(0x2ff));
        assert!(super::stream_id("00:01.0").is_err());
    }
}
