//! `replay FILE --listen ADDR`: a recording's IOPF events driven again through the in-kernel
//! programs by test runs (the `simulate` injection path), then served as metrics: the same
//! counts and latency histograms, and with `--policy` violations checked in the kernel.

use std::path::PathBuf;

use iopf_common::iopf::{CODE_REPORTED, CountKey, Source};

use super::{Reader, Record};
use crate::{
    error::AgentError,
    iopf::{inject::Injector, maps::IopfMaps},
    loader,
    policy::{PolicyIds, PolicySet, SysfsDevice, install::Installed},
    server,
    simulate::{
        drive::drive,
        model,
        run::{injection_globals, serve_injected},
    },
};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub file: PathBuf,
    pub listen: std::net::SocketAddr,
    pub web_config: Option<PathBuf>,
    pub policies: Vec<PathBuf>,
    pub btf_dir: PathBuf,
}

pub async fn run(o: ServeOptions) -> Result<(), AgentError> {
    let mut reader = Reader::open(&o.file)?;
    let mut events = Vec::new();
    let mut dmar = 0u64;
    while let Some(r) = reader.next_record()? {
        match r {
            Record::Iopf(e) => events.push(e),
            // Unrecoverable records have no in-kernel program to replay through.
            Record::Dmar(_) | Record::Smmu(_) | Record::Amdvi(_) => dmar += 1,
            // Walks of the faults of the IOPF records: nothing to replay on their own.
            Record::PageRequest(_) => {}
        }
    }
    let h = reader.header.clone();
    // Policies judge the devices as they were when the recording started.
    let devices: Vec<SysfsDevice> = h.devices.iter().map(|d| d.sysfs()).collect();
    let mut set = PolicySet::load(&o.policies)?;
    let mut ids = PolicyIds::default();
    set.assign_ids(&mut ids);
    let resolved = set.resolve_devices(&devices)?;
    crate::policy::action::preflight::check_kernel(&set)?;
    let listener = server::bind(o.listen, o.web_config.as_deref()).await?;
    let mut globals = injection_globals(&o.btf_dir, false);
    let (plan, skipped) =
        model::plan_of_events(&events, h.consts.flag_pasid_valid, &globals.consts, globals.tuple_keys);
    let mut names: Vec<[u8; iopf_common::iopf::DEV_NAME_LEN]> = plan.faults.iter().map(|f| f.dev).collect();
    names.sort_unstable();
    names.dedup();
    globals.dev_slots = globals.dev_slots.max(names.len() as u32 + devices.len() as u32 + 1);
    let mut ebpf = loader::load(globals)?;
    crate::features::require_in_flight(globals.tuple_keys)?;
    let mut maps = IopfMaps::take(&mut ebpf)?;
    let mut installed = Installed::new(&resolved, Source::Simulated as u8, ids);
    installed.reserve(&mut maps, globals.dev_slots)?;
    drive(&mut Injector::new(&mut ebpf)?, &plan)?;
    let got = maps.snapshot()?;
    let differ = differences(&events, &got.counts);
    eprintln!(
        "iopf-agent: replayed {} of {} recorded IOPF events through the in-kernel programs ({skipped} with an unknown configuration cannot be given a domain; {dmar} VT-d, SMMUv3 and AMD-Vi records are not replayed)",
        plan.faults.len(),
        events.len()
    );
    if differ.is_empty() {
        eprintln!("iopf-agent: replayed counts match the recording's (device, configuration, level, response)");
    }
    for d in &differ {
        eprintln!("iopf-agent: replayed count differs from the recording: {d}");
    }
    serve_injected(listener, maps, installed).await
}

/// Series where the kernel's counts after the replay differ from what the recording's
/// events say (each event: one report and one answer under its configuration and level).
fn differences(events: &[iopf_common::iopf::Event], got: &std::collections::BTreeMap<CountKey, u64>) -> Vec<String> {
    let mut want: std::collections::BTreeMap<CountKey, u64> = Default::default();
    for e in events.iter().filter(|e| e.config != iopf_common::iopf::Config::Unknown as u8) {
        let k = |code| CountKey {
            dev: e.dev,
            config: e.config,
            level: e.level,
            code,
            source: Source::Simulated as u8,
            _pad: 0,
        };
        *want.entry(k(CODE_REPORTED)).or_default() += 1;
        *want.entry(k(e.code)).or_default() += 1;
    }
    let mut out = Vec::new();
    for (k, w) in &want {
        let g = got.get(k).copied().unwrap_or(0);
        if g != *w {
            out.push(format!(
                "{} {:?}/{:?} code {}: {g}, recorded {w}",
                crate::iopf::maps::dev_str(&k.dev),
                k.config,
                k.level,
                k.code
            ));
        }
    }
    for (k, g) in got.iter().filter(|(k, _)| !want.contains_key(k)) {
        out.push(format!(
            "{} {:?}/{:?} code {}: {g}, recorded 0",
            crate::iopf::maps::dev_str(&k.dev),
            k.config,
            k.level,
            k.code
        ));
    }
    out
}
