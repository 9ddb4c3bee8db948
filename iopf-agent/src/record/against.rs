//! `policy check --against FILE POLICY...`: what policies would have flagged in a recording,
//! judged with the same verdict functions the kernel side runs, per recorded event.

use std::{collections::BTreeMap, io::Write as _, path::Path};

use iopf_common::{
    dmar::bdf_name,
    policy::{
        NO_PASID, Rule, VERDICT_CHECKED, VIOLATIONS, fault_pasid, rate_step, verdict_answer, verdict_level,
        verdict_rate, verdict_unrecoverable,
    },
};

use super::{Reader, Record};
use crate::{
    error::AgentError,
    iopf::maps::dev_str,
    policy::{DeviceRule, PolicyIds, PolicySet, SysfsDevice},
};

/// (policy, device, violation) -> count.
pub type Flagged = BTreeMap<(String, String, &'static str), u64>;

/// The verdicts `set` gives the recording's events.
pub fn flag(path: &Path, set: &PolicySet) -> Result<(Flagged, u64), AgentError> {
    let mut reader = Reader::open(path)?;
    let mut records = Vec::new();
    while let Some(r) = reader.next_record()? {
        records.push(r);
    }
    let name = |r: &Record| match r {
        Record::Iopf(e) => dev_str(&e.dev),
        Record::Dmar(e) => dev_str(&bdf_name(e.segment, e.source_id)),
        Record::PageRequest(e) => dev_str(&bdf_name(e.segment, e.source_id)),
        Record::Smmu(e) => dev_str(&e.dev),
        Record::Amdvi(e) => dev_str(&e.dev),
    };
    // The devices the header describes, and any other name in the events (a device that
    // appeared later: only its name is known, and a PCI address says bus pci).
    let mut devices: Vec<SysfsDevice> = reader.header.devices.iter().map(|d| d.sysfs()).collect();
    let mut names: Vec<String> = records.iter().map(name).collect();
    names.sort();
    names.dedup();
    for n in names {
        if !devices.iter().any(|d| d.name == n) {
            let bus = if crate::policy::parse_pci(&n).is_ok() { "pci" } else { "recorded" };
            devices.push(SysfsDevice { name: n, bus: bus.into(), ..SysfsDevice::default() });
        }
    }
    let resolved = set.resolve_devices(&devices)?;
    let flag_pasid_valid = reader.header.consts.flag_pasid_valid;
    // The policy each record falls under, picked by its PASID as the kernel side picks it.
    let under: Vec<Option<&DeviceRule>> = records
        .iter()
        .map(|r| {
            let pasid = match r {
                Record::Iopf(e) => fault_pasid(&e.fault, flag_pasid_valid),
                // As the kernel side: unrecoverable faults are checked as faults without one.
                Record::Dmar(_) | Record::PageRequest(_) | Record::Smmu(_) | Record::Amdvi(_) => NO_PASID,
            };
            resolved.devices.get(&name(r))?.for_pasid(pasid)
        })
        .collect();
    // Rate windows in report order, as the kernel side counts them (events come in answer
    // order): each recorded fault's rate verdict, by record index. One window per device
    // and policy.
    let mut rate = vec![0u32; records.len()];
    let mut order: Vec<(u64, usize)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Record::Iopf(e) => Some((e.report_ns, i)),
            Record::Dmar(_) | Record::PageRequest(_) | Record::Smmu(_) | Record::Amdvi(_) => None,
        })
        .collect();
    order.sort_unstable();
    let mut windows: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for (at, i) in order {
        if let Some(dr) = under[i]
            && dr.rule.max_faults_per_window != 0
        {
            let w = windows.entry((name(&records[i]), dr.policy.as_str())).or_default();
            let (next, n) = rate_step(*w, at);
            *w = next;
            rate[i] = verdict_rate(&dr.rule, n);
        }
    }
    let mut flagged = Flagged::new();
    for (i, r) in records.iter().enumerate() {
        let Some(dr) = under[i] else { continue };
        let rule: &Rule = &dr.rule;
        let v = match r {
            Record::Iopf(e) => verdict_level(rule, e.level) | rate[i] | verdict_answer(rule, e.code, e.service_ns),
            Record::Dmar(e) => verdict_unrecoverable(rule, e.level),
            // A stall the kernel reported is checked at its report (an IOPF record), as the
            // kernel side checks it.
            Record::Smmu(e) if e.reported != 0 => VERDICT_CHECKED,
            Record::Smmu(e) => verdict_unrecoverable(rule, e.level),
            Record::Amdvi(_) => verdict_unrecoverable(rule, iopf_common::iopf::Level::Unknown as u8),
            // The walk's stage against the levels, as the kernel side checks it.
            Record::PageRequest(e) => verdict_level(rule, e.walk.classified_level() as u8),
        };
        if v & !VERDICT_CHECKED == 0 {
            continue;
        }
        for (bit, n) in VIOLATIONS {
            if v & bit != 0 {
                *flagged.entry((dr.policy.clone(), name(r), n)).or_default() += 1;
            }
        }
    }
    Ok((flagged, records.len() as u64))
}

pub fn run(path: &Path, policies: &[std::path::PathBuf]) -> Result<i32, AgentError> {
    let mut set = match PolicySet::load(policies) {
        Ok(s) => s,
        Err(e) => {
            for e in e.errors() {
                eprintln!("{e}");
            }
            return Ok(1);
        }
    };
    set.assign_ids(&mut PolicyIds::default());
    let (flagged, n) = flag(path, &set)?;
    let mut out = std::io::stdout().lock();
    for ((policy, dev, what), count) in &flagged {
        let _ = writeln!(out, "{policy} {dev} {what} {count}");
    }
    let total: u64 = flagged.values().sum();
    let _ = writeln!(out, "{total} violations in {n} recorded events");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use iopf_common::smmu::{FLAG_RNW, FLAG_STALL, SmmuEvent};

    use super::*;
    use crate::record::file::{Header, Times, encode, preamble};

    /// SMMUv3 records under `unrecoverable: none`: a plain translation fault and a stall the
    /// kernel did not report are unrecoverable faults the policy forbids; a stall the kernel
    /// reported (its report is the fault) is not.
    #[test]
    fn a_reported_stall_is_no_unrecoverable_fault() {
        let dir = std::env::temp_dir().join(format!("iopf-against-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("p.yaml");
        std::fs::write(
            &policy,
            "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: quiet\nspec:\n  mode: monitor\n  selector:\n    pci: \"0000:00:01.0\"\n  expect:\n    unrecoverable: none\n",
        )
        .unwrap();
        // SAFETY: plain integers and byte arrays: all-zero is valid.
        let mut e: SmmuEvent = unsafe { std::mem::zeroed() };
        e.dev[..12].copy_from_slice(b"0000:00:01.0");
        e.id = 0x10;
        e.level = iopf_common::iopf::Level::First as u8;
        e.flags = FLAG_RNW;
        let stall = SmmuEvent { flags: FLAG_RNW | FLAG_STALL, stag: 3, ..e };
        let reported = SmmuEvent { reported: 1, ..stall };
        let h = Header::new("k", "kernel", &crate::kabi::iopf::CURRENT_CONSTS, vec![], vec![], Times::Monotonic);
        let mut out = preamble(&h);
        for r in [e, stall, reported] {
            encode(&mut out, &Record::Smmu(r));
        }
        let rec = dir.join("r.iopf");
        std::fs::write(&rec, out).unwrap();
        let mut set = PolicySet::load(&[policy]).map_err(|e| e.errors().len()).unwrap();
        set.assign_ids(&mut PolicyIds::default());
        let (flagged, n) = flag(&rec, &set).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(n, 3);
        let want: Flagged = [(("quiet".to_owned(), "0000:00:01.0".to_owned(), "unrecoverable"), 2)].into();
        assert_eq!(flagged, want);
    }
}
