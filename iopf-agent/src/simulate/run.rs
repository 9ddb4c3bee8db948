//! The `simulate` command.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use std::io::Write as _;

use super::{drive::drive_with, model, scenario::Scenario};
use crate::{
    error::AgentError,
    iopf::{
        events::EventReader,
        inject::Injector,
        maps::{IopfMaps, dev_bytes, dev_str},
        metrics::IopfSource,
        ndjson::write_event,
    },
    kabi::{
        KernelBtf,
        iopf::{CURRENT_CONSTS, IopfAbi},
    },
    loader::{self, Globals},
    metrics::Registry,
    policy::{PolicySet, SysfsDevice, install::Installed},
    server,
};
use iopf_common::iopf::Source;

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub scenario: PathBuf,
    pub listen: Option<std::net::SocketAddr>,
    /// `--web-config`: TLS and basic auth for the endpoint.
    pub web_config: Option<PathBuf>,
    /// Print every event as NDJSON on stdout (the totals table then goes to stderr).
    pub trace: bool,
    /// Write every answered fault to this recording.
    pub record: Option<PathBuf>,
    pub btf_dir: PathBuf,
    /// `DevicePolicy` files or directories, checked against the scenario's devices (by name).
    pub policies: Vec<PathBuf>,
}

/// `uname -r`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Globals for driving faults through the programs by test runs: the running kernel's
/// constants when it has an IOPF ABI, else the newest generation's.
pub fn injection_globals(btf_dir: &std::path::Path, events: bool) -> Globals {
    let btf = KernelBtf::load(btf_dir).ok();
    let abi = btf.as_ref().and_then(|b| IopfAbi::resolve(b.vmlinux()).ok());
    let base = Globals { events, ..Globals::default() };
    let globals = match &abi {
        Some(a) => base.with_abi(a),
        None => Globals { consts: CURRENT_CONSTS, ..base },
    };
    // Report and handler are separate test runs: the scan finds a report left on another
    // CPU's slot when this thread migrated in between.
    match &btf {
        Some(b) => globals.with_btf(b.vmlinux()),
        None => globals,
    }
}

/// Plans at least this large print their progress.
const PROGRESS_FROM: usize = 1_000_000;

pub async fn run(opts: SimulateOptions) -> Result<(), AgentError> {
    let scenario = Scenario::load(&opts.scenario)?;
    // Scenario devices exist nowhere in sysfs: only `name` selectors can match them.
    let devices: Vec<SysfsDevice> = scenario
        .spec
        .devices
        .iter()
        .map(|d| SysfsDevice {
            name: d.name.clone(),
            bus: d.bus.clone(),
            driver: d.driver.clone(),
            iommu_group: d.iommu_group,
            vendor_device: d.vendor_device.as_deref().and_then(|v| crate::policy::parse_vendor_device(v).ok()),
        })
        .collect();
    let mut set = PolicySet::load(&opts.policies)?;
    let mut ids = crate::policy::PolicyIds::default();
    set.assign_ids(&mut ids);
    let resolved = set.resolve_devices(&devices)?;
    crate::policy::action::preflight::check_kernel(&set)?;
    // Simulated devices share names with nothing real: acting on them would touch the host.
    for p in set.policies().iter().filter(|p| p.mode() == crate::policy::Mode::Enforce) {
        let acting: Vec<&str> = p.actions().iter().filter(|a| a.acts()).map(|a| a.label()).collect();
        if !acting.is_empty() {
            eprintln!(
                "iopf-agent: simulate runs no actions: policy {} is enforce, but its {} are NOT run (violations are checked and counted only)",
                p.name(),
                acting.join(", ")
            );
        }
    }
    for p in &resolved.unmatched {
        eprintln!("iopf-agent: policy {p} selects no device of the scenario");
    }
    let rules: model::Rules = resolved.devices.iter().map(|(d, r)| (dev_bytes(d), r.compile())).collect();
    // What the scenario's author says each selected device must violate: the expectation the
    // kernel's counts are held against (not computed by the verdict code under test).
    let mut declared = model::Declared::new();
    for (i, d) in scenario.spec.devices.iter().enumerate() {
        let Some(r) = resolved.devices.get(&d.name) else { continue };
        match d.expect_violations {
            Some(e) => {
                declared.insert(dev_bytes(&d.name), e.by_slot());
            }
            None => {
                return Err(crate::simulate::scenario::ScenarioError::Invalid {
                    path: opts.scenario.display().to_string(),
                    field: format!("spec.devices[{i}].expectViolations"),
                    message: format!(
                        "`{}` is selected by policy `{}`: declare the violations it must count (e.g. expectViolations: {{level: 40}}; absent kinds are 0)",
                        d.name,
                        r.names()
                    ),
                }
                .into());
            }
        }
    }
    let listener = match opts.listen {
        Some(a) => Some(server::bind(a, opts.web_config.as_deref()).await?),
        None => None,
    };
    let all_events = opts.trace || opts.record.is_some();
    let mut globals = injection_globals(&opts.btf_dir, all_events);
    let plan = model::plan(&scenario, &globals.consts, globals.tuple_keys);
    if globals.tuple_keys {
        eprintln!(
            "iopf-agent: this kernel's IOPF ABI is <= 6.8: faults are keyed by device + grpid and classified at report (PASID -> flat_sva, else unknown), as its hooks would"
        );
    }
    // A slot for every scenario device (and the overflow slot), whatever their number.
    globals.dev_slots = globals.dev_slots.max(devices.len() as u32 + 1);
    let mut ebpf = loader::load(globals)?;
    crate::features::require_in_flight(globals.tuple_keys)?;
    let mut maps = IopfMaps::take(&mut ebpf)?;
    let mut installed = Installed::new(&resolved, Source::Simulated as u8, ids);
    installed.reserve(&mut maps, globals.dev_slots)?;
    if let Some(path) = &opts.record {
        let mut reader = EventReader::take(&mut ebpf)?;
        let recorded = devices.iter().map(crate::record::RecordedDevice::of).collect();
        let mut h = crate::record::Header::new(
            &kernel_release(),
            "simulated",
            &globals.consts,
            Vec::new(),
            recorded,
            crate::record::Times::FromStart,
        );
        h.policies = crate::policy::PolicyNames::of(&installed.ids).pairs();
        let mut out = crate::record::Writer::create(path, &h)?;
        let mut buf = Vec::new();
        let render = |b: &mut Vec<u8>, e: &iopf_common::iopf::Event| {
            crate::record::file::encode(b, &crate::record::Record::Iopf(*e))
        };
        let mut failed = None;
        drive_with(&mut Injector::new(&mut ebpf)?, &plan, || {
            if let Err(e) = reader.pump(&mut buf, &mut out, &render) {
                failed.get_or_insert(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(AgentError::Io(e));
        }
        std::io::Write::flush(&mut out)?;
    } else if opts.trace {
        let mut reader = EventReader::take(&mut ebpf)?;
        let consts = globals.consts;
        let mut out = std::io::stdout().lock();
        let mut buf = Vec::new();
        let names = crate::policy::PolicyNames::of(&installed.ids);
        let render = |b: &mut Vec<u8>, e: &iopf_common::iopf::Event| {
            names.with(e.policy_id, |policy| write_event(b, e, &consts, policy))
        };
        // Drain after every window so the ring never fills.
        drive_with(&mut Injector::new(&mut ebpf)?, &plan, || {
            let _ = reader.pump(&mut buf, &mut out, &render);
        })?;
    } else {
        // Long runs say how far they are, every tenth (stderr: stdout carries the table).
        let (total, step) = (plan.faults.len(), (plan.faults.len() / 10).max(1));
        let (mut done, mut next) = (0usize, step);
        let window = plan.window.max(1);
        drive_with(&mut Injector::new(&mut ebpf)?, &plan, || {
            done = (done + window).min(total);
            if total >= PROGRESS_FROM && done >= next {
                eprintln!("iopf-agent: simulate: {done} of {total} faults driven");
                next += step;
            }
        })?;
    }
    let got = maps.snapshot()?;
    // Traced runs drain the ring after every window; otherwise only violations are written
    // and nobody reads them here.
    let capacity = if all_events { u64::MAX } else { model::RING_RECORDS };
    let mut want = model::expected(&plan, model::EventsExpect { all: all_events, capacity }, &rules);
    if !rules.is_empty() {
        want.violations = model::declared_violations(&declared);
    }
    // The table goes where it does not mix with NDJSON.
    let mut table: Box<dyn std::io::Write> =
        if opts.trace { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };

    let _ = writeln!(
        table,
        "scenario {} ({} faults, simulated through the in-kernel programs)",
        scenario.metadata.name,
        plan.faults.len()
    );
    let _ = writeln!(
        table,
        "{:<20} {:<12} {:<8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "device", "config", "level", "faults", "success", "invalid", "failure", "none"
    );
    let mut rows: std::collections::BTreeMap<(String, &str, &str), [u64; 5]> = Default::default();
    for (k, v) in &want.counts {
        let row = rows
            .entry((
                dev_str(&k.dev),
                iopf_common::iopf::Config::from_u8(k.config).label(),
                iopf_common::iopf::Level::from_u8(k.level).label(),
            ))
            .or_default();
        let col = match k.code {
            iopf_common::iopf::CODE_REPORTED => 0,
            c => 1 + c.min(3) as usize,
        };
        row[col] += v;
    }
    for ((dev, cfg, lvl), r) in &rows {
        let _ =
            writeln!(table, "{dev:<20} {cfg:<12} {lvl:<8} {:>8} {:>8} {:>8} {:>8} {:>8}", r[0], r[1], r[2], r[3], r[4]);
    }
    if !rules.is_empty() {
        // One column per violation kind (`policy::VIOLATIONS`).
        let mut head = format!("{:<20}", "device");
        for (_, n) in iopf_common::policy::VIOLATIONS {
            head += &format!(" {n:>15}");
        }
        let _ = writeln!(table, "{head}");
        let mut by_dev: std::collections::BTreeMap<String, [u64; iopf_common::policy::VIOLATIONS.len()]> =
            Default::default();
        for (&(dev, _, slot), &n) in &want.violations {
            if let Some(c) = by_dev.entry(dev_str(&dev)).or_default().get_mut(slot) {
                *c += n;
            }
        }
        for (dev, v) in &by_dev {
            let mut line = format!("{dev:<20}");
            for n in v {
                line += &format!(" {n:>15}");
            }
            let _ = writeln!(table, "{line}");
        }
        let _ = writeln!(table, "faults violating a policy: {}", want.stats.violations);
        let unscoped: u64 = got.unscoped.values().sum();
        if unscoped != 0 {
            let _ = writeln!(
                table,
                "faults outside every PASID scope of their device's policies (not checked): {unscoped}"
            );
        }
    }
    let differ = model::mismatches(&got, &want);
    let matches = differ.is_empty();
    if got.stats.pending_migrated + got.stats.pending_parked > 0 {
        let _ = writeln!(
            table,
            "slow paths taken (scheduler-dependent, not compared): {} parked, {} migrated",
            got.stats.pending_parked, got.stats.pending_migrated
        );
    }
    for d in differ.iter().take(20) {
        let _ = writeln!(table, "mismatch: {d}");
    }
    if differ.len() > 20 {
        let _ = writeln!(table, "mismatch: … and {} more", differ.len() - 20);
    }
    let _ = writeln!(
        table,
        "kernel counters and histograms {} the expected totals",
        if matches { "match" } else { "DO NOT match" }
    );
    if !matches {
        return Err(AgentError::SimulationMismatch);
    }
    if let Some(listener) = listener {
        serve_injected(listener, maps, installed).await?;
    }
    Ok(())
}

/// Serves the metrics of faults driven by test runs (simulate, replay) until SIGINT/SIGTERM.
pub async fn serve_injected(
    listener: server::Listener,
    maps: IopfMaps,
    installed: Installed,
) -> Result<(), AgentError> {
    let registry = Registry::default();
    registry.add(IopfSource::new(Arc::new(Mutex::new(maps)), Some(Arc::new(Mutex::new(installed)))));
    eprintln!("iopf-agent: serving metrics on {}", listener.describe()?);
    server::serve(listener, registry, crate::run::shutdown_signal()).await?;
    eprintln!("iopf-agent: stopped");
    Ok(())
}
