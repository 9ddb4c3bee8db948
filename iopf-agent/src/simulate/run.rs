//! The `simulate` command.

use std::{path::PathBuf, sync::Mutex};

use std::io::Write as _;

use super::{
    drive::{drive, drive_with},
    model,
    scenario::Scenario,
};
use crate::{
    error::AgentError,
    iopf::{
        events::EventReader,
        inject::Injector,
        maps::{IopfMaps, dev_str},
        metrics::IopfSource,
        ndjson::write_event,
    },
    kabi::{
        KernelBtf,
        iopf::{CURRENT_CONSTS, IopfAbi},
    },
    loader::{self, Globals},
    metrics::Registry,
    server,
};

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub scenario: PathBuf,
    pub listen: Option<std::net::SocketAddr>,
    /// Print every event as NDJSON on stdout (the totals table then goes to stderr).
    pub trace: bool,
    pub btf_dir: PathBuf,
}

pub async fn run(opts: SimulateOptions) -> Result<(), AgentError> {
    let scenario = Scenario::load(&opts.scenario)?;
    let listener = match opts.listen {
        Some(a) => Some(server::bind(a).await?),
        None => None,
    };
    // The running kernel's constants when it has an IOPF ABI, else the newest generation's.
    let btf = KernelBtf::load(&opts.btf_dir).ok();
    let abi = btf.as_ref().and_then(|b| IopfAbi::resolve(b.vmlinux()).ok());
    let base = Globals { events: opts.trace, ..Globals::default() };
    let mut globals = match &abi {
        Some(a) => base.with_abi(a),
        None => Globals { consts: CURRENT_CONSTS, ..base },
    };
    // Report and handler are separate test runs: the scan finds a report left on another
    // CPU's slot when this thread migrated in between.
    if let Some(b) = &btf {
        globals = globals.with_btf(b.vmlinux());
    }
    drop(btf);
    let plan = model::plan(&scenario, &globals.consts);
    let mut ebpf = loader::load(globals)?;
    if opts.trace {
        let mut reader = EventReader::take(&mut ebpf)?;
        let consts = globals.consts;
        let mut out = std::io::stdout().lock();
        let mut buf = Vec::new();
        let render = |b: &mut Vec<u8>, e: &iopf_common::iopf::Event| write_event(b, e, &consts);
        // Drain after every window so the ring never fills.
        drive_with(&mut Injector::new(&mut ebpf)?, &plan, || {
            let _ = reader.pump(&mut buf, &mut out, &render);
        })?;
    } else {
        drive(&mut Injector::new(&mut ebpf)?, &plan)?;
    }
    let maps = IopfMaps::take(&mut ebpf)?;
    let got = maps.snapshot()?;
    let answered = plan.faults.iter().filter(|f| f.response.is_some()).count() as u64;
    let want = model::expected(&plan, opts.trace.then_some(answered));
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
    let matches = got == want;
    let _ = writeln!(
        table,
        "kernel counters and histograms {} the expected totals",
        if matches { "match" } else { "DO NOT match" }
    );
    if !matches {
        return Err(AgentError::SimulationMismatch);
    }
    if let Some(listener) = listener {
        let registry = Registry::default();
        registry.add(IopfSource { maps: Mutex::new(maps) });
        let addr = listener.local_addr()?;
        eprintln!("iopf-agent: serving metrics on http://{addr}/metrics");
        server::serve(listener, registry, crate::run::shutdown_signal()).await?;
        eprintln!("iopf-agent: stopped");
    }
    Ok(())
}
