//! `iopf-agent run`: bind, load, attach, serve.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use iopf_common::{iopf::Source, pagefault::PfMode};

use crate::{
    cli::RunOptions,
    doctor,
    error::AgentError,
    hooks::Rung,
    iopf::maps::IopfMaps,
    loader::Globals,
    metrics::{PageFaultSource, PlanSource, Registry},
    pagefault,
    policy::{
        PolicyIds, PolicySet, Resolved, SYSFS_ROOT,
        action::dispatch::{Dispatcher, Table},
        install::Installed,
        reload::ReloadStatus,
        uevent::Uevents,
        watch::Watcher,
    },
    server,
};

pub async fn run(mut opts: RunOptions) -> Result<(), AgentError> {
    // Flags naming what is not there are usage errors, before anything is bound or loaded.
    opts.selection.check().map_err(AgentError::Usage)?;
    // Bind first (after reading --web-config): a bad config or a busy port fails before
    // anything is loaded into the kernel.
    let listener = match opts.listen {
        Some(a) => Some(server::bind(a, opts.web_config.as_deref()).await?),
        None => None,
    };
    let pf_mode = match (opts.page_faults, opts.selection.is_all()) {
        (false, _) => PfMode::Off,
        (true, true) => PfMode::All,
        (true, false) => PfMode::Selected,
    };
    // Policies are read and resolved before anything is loaded: a bad file changes nothing.
    let mut policies = PolicySet::load(&opts.policies)?;
    let mut ids = PolicyIds::default();
    policies.assign_ids(&mut ids);
    // Events carry policy ids; whoever renders them gets the names (and a reload's new ones).
    let names = crate::policy::PolicyNames::of(&ids);
    if let Some(t) = opts.trace.as_mut() {
        t.policies = names.clone();
    }
    let resolved = policies.resolve(Path::new(SYSFS_ROOT))?;
    // An enforce action this host cannot honour fails the start: never a silent monitor.
    crate::policy::action::preflight::check(&policies, &resolved, Path::new(SYSFS_ROOT))?;
    log_policies(&policies, &resolved);
    let globals = Globals {
        pf_mode,
        events: opts.trace.is_some(),
        dev_slots: opts.dev_slots,
        pf_cgroups: !opts.selection.cgroups.is_empty(),
        ..Globals::default()
    };
    // With --pin: adopt the state a previous agent pinned, or pin this one's. Checked
    // before anything loads: a directory that cannot hold pins changes nothing.
    let pin_root = match &opts.pin {
        Some(dir) => Some(crate::pin::open(dir, pin_fingerprint(&opts, &globals))?),
        None => None,
    };
    let (pin_root, (pins, adopted)) = match pin_root {
        None => (None, (None, None)),
        Some((root, start, removed)) => {
            for r in removed {
                eprintln!(
                    "iopf-agent: removed the pinned state {} ({}): its programs are detached, its counters lost",
                    root.root.join(&r.name).display(),
                    r.why
                );
            }
            let split = match start {
                crate::pin::Start::Fresh(p) => (Some(p), None),
                crate::pin::Start::Adopt(a) => (None, Some(a)),
            };
            (Some(root), split)
        }
    };
    let (mut ebpf, report, btf) = doctor::survey(&opts.plan, globals)?;
    for p in &report.hooks {
        let target = p.target.as_deref().unwrap_or("-");
        let note = if p.reason.is_empty() { String::new() } else { format!(" ({})", p.reason) };
        eprintln!("iopf-agent: hook {}: {} {}{}", p.name, p.rung.as_str(), target, note);
    }
    doctor::check_required(&opts.plan, &report.hooks)?;
    let exchange = report.capabilities.bpf_atomics.available;
    if !exchange {
        let tuple_keys = report.iopf_abi.as_ref().is_ok_and(|a| a.tuple_keys);
        if tuple_keys {
            // Said once: what this mode does differently from the usual one.
            eprintln!(
                "iopf-agent: note: {}: faults in flight are claimed through the hash map, and ones left unanswered for {} s are ended at a later report on the same CPU; fault-rate rules (maxFaultRate) cannot be checked",
                report.capabilities.bpf_atomics.detail,
                iopf_common::iopf::INFLIGHT_MAX_AGE_NS / 1_000_000_000
            );
        } else {
            // Said loudly: recoverable faults happen here and go uncounted.
            eprintln!(
                "iopf-agent: warning: recoverable faults (report, group handlers, responses) are NOT traced on this kernel: {}, and its IOPF ABI keys faults by group; unrecoverable faults and page faults still are",
                report.capabilities.bpf_atomics.detail
            );
        }
    }
    if report.capabilities.preempt_full.available
        && report.hooks.iter().any(|p| {
            p.rung == Rung::Fentry && matches!(p.name, "page_response" | "free_group" | "iopf_work" | "dequeue")
        })
    {
        eprintln!(
            "iopf-agent: warning: {}: page responses answered by concurrent workers can be missed on the fentry rung",
            report.capabilities.preempt_full.detail
        );
    }

    if let Some(p) = &pins {
        p.maps(&ebpf)?;
    }
    let how = match (&pins, &adopted) {
        (Some(p), _) => crate::pin::How::Pin(p),
        (_, Some(a)) => crate::pin::How::Adopt(a),
        _ => crate::pin::How::Own,
    };
    // Maps come from the loaded object, or from the adopted pins (a second handle on the
    // same directory: `how` holds the first).
    let mut adopted_maps = adopted.clone();
    macro_rules! store {
        () => {
            match adopted_maps.as_mut() {
                Some(a) => a as &mut dyn crate::pin::store::MapStore,
                None => &mut ebpf as &mut dyn crate::pin::store::MapStore,
            }
        };
    }

    let registry = Registry::default();
    // Device slots and rules go in before attach, so a policy device's first fault is checked.
    let mut iopf_maps = crate::iopf::maps::IopfMaps::take(store!())?;
    let mut installed = Installed::new(&resolved, Source::Kernel as u8, ids);
    installed.reserve(&mut iopf_maps, opts.dev_slots)?;
    let iopf_maps = Arc::new(Mutex::new(iopf_maps));
    let installed = Arc::new(Mutex::new(installed));
    let abi = report.iopf_abi.as_ref().ok();
    let mut plans = report.hooks.clone();
    for (hook, e) in crate::iopf::attach::attach_all(&mut ebpf, &mut plans, abi, btf.as_ref(), how) {
        // A hook that cannot be pinned would stop with the agent: --pin is refused.
        if opts.plan.require.iter().any(|r| r == hook) || matches!(e, crate::iopf::attach::AttachError::Pin(_)) {
            return Err(e.into());
        }
    }
    let lifecycle = crate::lifecycle::Lifecycle::take(store!(), adopted.is_some(), pin_root.is_some())?;
    if !opts.page_faults
        && let Some(p) = plans.iter_mut().find(|p| p.name == "mm_fault")
    {
        p.unused("page-fault tracing not requested (--page-faults, --pid, --cgroup)");
    }
    registry.add(crate::iopf::metrics::IopfSource::new(iopf_maps.clone(), Some(installed.clone())));
    let dispatcher = if opts.policies.is_empty() {
        None
    } else {
        let d = Dispatcher::start(Table::new(&policies, &resolved), SYSFS_ROOT.into())?;
        registry.add(d.source());
        Some(d)
    };
    // The SIGHUP handler is installed before the agent says it is serving: SIGHUP's default
    // action would end the process.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    match (hup, &dispatcher) {
        (Ok(hup), Some(dispatcher)) => {
            let uevents = match Uevents::open() {
                Ok(u) => Some(u),
                Err(e) => {
                    eprintln!(
                        "iopf-agent: no kernel uevents ({e}): devices that appear later are covered from the next SIGHUP"
                    );
                    None
                }
            };
            let watcher = match Watcher::open(&opts.policies) {
                Ok(w) => Some(w),
                Err(e) => {
                    eprintln!("iopf-agent: policy files not watched ({e}): changes apply at SIGHUP");
                    None
                }
            };
            let status = ReloadStatus::started();
            registry.add(status.clone());
            let keeper = Keeper {
                paths: opts.policies.clone(),
                set: policies,
                slots: opts.dev_slots,
                maps: iopf_maps,
                installed,
                dispatcher: dispatcher.clone(),
                status,
                names: names.clone(),
            };
            tokio::spawn(keeper.run(hup, uevents, watcher));
        }
        (Ok(mut hup), None) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    eprintln!("iopf-agent: SIGHUP: no --policy given, nothing to reload");
                }
            });
        }
        (Err(e), _) => eprintln!("iopf-agent: no SIGHUP handler, policies will not reload: {e}"),
    }
    if opts.page_faults {
        let plan = plans.iter_mut().find(|p| p.name == "mm_fault").expect("mm_fault is a known hook");
        plan.rung = pagefault::attach(&mut ebpf, plan, pagefault::programs(exchange), btf.as_ref(), how)?;
        plan.settle(Ok(()));
        let plan = plan.clone();
        // An adopted state has the selection already (it is part of the fingerprint).
        if adopted.is_none() {
            pagefault::select(&mut ebpf, &opts.selection)?;
        }
        let maps = pagefault::PfMaps::take(store!())?;
        let what = if opts.selection.is_all() {
            "all tasks".to_owned()
        } else {
            format!("pids {:?} cgroups {:?}", opts.selection.pids, opts.selection.cgroups)
        };
        eprintln!("iopf-agent: page-fault tracing on the {} rung for {what}", plan.rung.as_str());
        registry.add(PageFaultSource { maps: Mutex::new(maps), rung: rung_label(plan.rung) });
    }
    log_hooks(&plans);
    let progs = match &adopted {
        Some(a) => a.programs(),
        None => crate::progstats::track_loaded(&ebpf),
    };
    let (stats_fd, stats_by) = crate::progstats::enable_stats(opts.bpf_stats);
    registry.add(crate::progstats::ProgramSource { progs, stats_by, _stats_fd: stats_fd });
    registry.add(crate::mapfill::MapFill::take(store!()));
    let recorded_plan: Vec<crate::record::PlannedHook> = plans.iter().map(crate::record::PlannedHook::of).collect();
    registry.add(PlanSource { kernel: report.kernel.clone(), plans });

    let consts = report.iopf_abi.as_ref().map(|a| a.consts).unwrap_or(crate::kabi::iopf::CURRENT_CONSTS);
    // With a trace every event goes to stdout; with policies the violations go to the action
    // thread. (With neither the rings stay unmapped.) A reader gone (`| head`) ends the run.
    let stdout_closed = Arc::new(tokio::sync::Notify::new());
    if opts.trace.is_some() || dispatcher.is_some() {
        if let Some(h) = opts.trace.as_ref().and_then(|t| t.header()) {
            print!("{h}");
        }
        let reader = crate::iopf::events::EventReader::take(store!())?;
        let dmar = crate::iopf::events::Ring::<iopf_common::dmar::DmarEvent>::take_named(store!(), "DMAR_EVENTS")?;
        let walks = crate::iopf::events::Ring::<iopf_common::vtd_report::ReportWalkEvent>::take_named(
            store!(),
            "VTD_REPORT_EVENTS",
        )?;
        let smmu = crate::iopf::events::Ring::<iopf_common::smmu::SmmuEvent>::take_named(store!(), "SMMU_EVENTS")?;
        let amdvi = crate::iopf::events::Ring::<iopf_common::amdvi::AmdviEvent>::take_named(store!(), "AMDVI_EVENTS")?;
        let sink = match &opts.record {
            Some(path) => {
                let devices = crate::policy::enumerate(Path::new(SYSFS_ROOT))
                    .unwrap_or_default()
                    .iter()
                    .filter(|d| d.bus == "pci" || d.iommu_group.is_some() || d.bus == "iommufd_mock")
                    .map(crate::record::RecordedDevice::of)
                    .collect();
                let mut h = crate::record::Header::new(
                    &report.kernel,
                    "kernel",
                    &consts,
                    recorded_plan,
                    devices,
                    crate::record::Times::Monotonic,
                );
                h.policies = names.pairs();
                let w = crate::record::Writer::create(path, &h)?;
                eprintln!("iopf-agent: recording events to {}", path.display());
                crate::record::Sink::File(w)
            }
            None => crate::record::Sink::Stdout,
        };
        let (sink1, sink2, sink3, sink4, sink5) = (sink.clone(), sink.clone(), sink.clone(), sink.clone(), sink);
        let (trace, d, closed) = (opts.trace.clone(), dispatcher.clone(), stdout_closed.clone());
        // On a thread and runtime of their own: a slow stdout reader blocks these writes, and
        // must not block scrapes, reloads or signals.
        std::thread::Builder::new().name("iopf-events".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return eprintln!("iopf-agent: event stream not started: {e}"),
            };
            let iopf = async {
                let render = |b: &mut Vec<u8>, e: &iopf_common::iopf::Event| {
                    if let Some(t) = &trace {
                        t.iopf(b, e, &consts);
                    }
                    if let Some(v) = d.as_ref().and_then(|_| crate::policy::action::event::from_event(e, &consts)) {
                        d.as_ref().expect("checked").send(v);
                    }
                };
                stream_ended("event stream", reader.stream(move || sink1.clone(), render).await, &closed);
            };
            let vtd = async {
                let render = |b: &mut Vec<u8>, e: &iopf_common::dmar::DmarEvent| {
                    if let Some(t) = &trace {
                        t.dmar(b, e);
                    }
                    if let Some(v) = d.as_ref().and_then(|_| crate::policy::action::event::from_dmar(e)) {
                        d.as_ref().expect("checked").send(v);
                    }
                };
                stream_ended("VT-d fault stream", dmar.stream(move || sink2.clone(), render).await, &closed);
            };
            let page_requests = async {
                let render = |b: &mut Vec<u8>, e: &iopf_common::vtd_report::ReportWalkEvent| {
                    if let Some(t) = &trace {
                        t.page_request(b, e);
                    }
                    if let Some(v) = d.as_ref().and_then(|_| crate::policy::action::event::from_page_request(e)) {
                        d.as_ref().expect("checked").send(v);
                    }
                };
                stream_ended(
                    "VT-d page request walk stream",
                    walks.stream(move || sink3.clone(), render).await,
                    &closed,
                );
            };
            let smmu_events = async {
                let render = |b: &mut Vec<u8>, e: &iopf_common::smmu::SmmuEvent| {
                    if let Some(t) = &trace {
                        t.smmu(b, e);
                    }
                    if let Some(v) = d.as_ref().and_then(|_| crate::policy::action::event::from_smmu(e)) {
                        d.as_ref().expect("checked").send(v);
                    }
                };
                stream_ended("SMMUv3 event stream", smmu.stream(move || sink4.clone(), render).await, &closed);
            };
            let amdvi_events = async {
                let render = |b: &mut Vec<u8>, e: &iopf_common::amdvi::AmdviEvent| {
                    if let Some(t) = &trace {
                        t.amdvi(b, e);
                    }
                    if let Some(v) = d.as_ref().and_then(|_| crate::policy::action::event::from_amdvi(e)) {
                        d.as_ref().expect("checked").send(v);
                    }
                };
                stream_ended("AMD-Vi event stream", amdvi.stream(move || sink5.clone(), render).await, &closed);
            };
            rt.block_on(async { tokio::join!(iopf, vtd, page_requests, smmu_events, amdvi_events) });
        })?;
    }
    match (pins, &adopted) {
        (Some(p), _) => {
            let dir = p.complete(&mut ebpf)?;
            eprintln!(
                "iopf-agent: pinned in {}: the programs stay attached and counting when this agent stops; `run --pin` with the same settings adopts them, `iopf-agent unpin {}` detaches them",
                dir.display(),
                pin_root.as_ref().map(|r| r.root.display().to_string()).unwrap_or_default()
            );
        }
        (None, Some(a)) => eprintln!(
            "iopf-agent: adopted the pinned state in {} (restart {}): its programs stayed attached, the counters continue (counting since {} s ago)",
            a.dir().display(),
            lifecycle.restarts(),
            crate::lifecycle::now().saturating_sub(lifecycle.counting_since())
        ),
        (None, None) => {}
    }
    registry.add(lifecycle);
    // Attached, fds held: keep only what bpf() on those fds needs.
    match crate::privs::drop_after_attach() {
        Ok(kept) => eprintln!("iopf-agent: capabilities after attach: {kept}"),
        Err(e) => eprintln!("iopf-agent: WARNING: capabilities NOT dropped after attach: {e}"),
    }
    // Parsed BTF is only needed to plan and attach: free it and hand the heap back to the
    // system, so the resident agent stays small.
    drop(btf);
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let duration = opts.duration;
    let closed = stdout_closed.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {},
            _ = closed.notified() => {},
            _ = async { tokio::time::sleep(duration.expect("guarded")).await }, if duration.is_some() => {},
        }
    };
    match listener {
        Some(listener) => {
            eprintln!("iopf-agent: serving metrics on {}", listener.describe()?);
            server::serve(listener, registry, stop).await?;
        }
        None => {
            eprintln!("iopf-agent: tracing");
            stop.await;
        }
    }
    match &pin_root {
        Some(r) => eprintln!(
            "iopf-agent: stopped; the programs stay attached (pinned in {}; `iopf-agent unpin {0}` detaches them)",
            r.root.display()
        ),
        None => eprintln!("iopf-agent: stopped"),
    }
    drop(ebpf);
    Ok(())
}

/// What a pinned state must match to be adopted: the agent, its eBPF object, and every
/// setting baked into the loaded programs or their maps.
fn pin_fingerprint(opts: &RunOptions, g: &Globals) -> u64 {
    let settings = format!(
        "{:?} events={} slots={} cgroups={} {:?} {:?} {:?} break={:?}",
        g.pf_mode,
        g.events,
        g.dev_slots,
        g.pf_cgroups,
        opts.selection,
        opts.plan.force_rung,
        opts.plan.btf_dir,
        std::env::var("IOPF_TEST_BREAK_HOOK").ok(),
    );
    crate::pin::fnv1a64(&[env!("CARGO_PKG_VERSION").as_bytes(), crate::loader::object(), settings.as_bytes()])
}

fn log_policies(set: &PolicySet, resolved: &Resolved) {
    for p in set.policies() {
        let devs: Vec<String> = resolved
            .devices
            .iter()
            .filter(|(_, r)| r.has(p.name()))
            .map(|(d, _)| if resolved.expected.contains(d) { format!("{d} (not present yet)") } else { d.clone() })
            .collect();
        let actions: Vec<&str> = p.actions().iter().map(|a| a.label()).collect();
        let acting: Vec<&str> = p.actions().iter().filter(|a| a.acts()).map(|a| a.label()).collect();
        let note = match p.mode() {
            crate::policy::Mode::Enforce if !acting.is_empty() => format!("; ENFORCING: {} act", acting.join(", ")),
            crate::policy::Mode::Monitor if !acting.is_empty() => {
                format!("; monitor mode: {} only log what they would do", acting.join(", "))
            }
            _ => String::new(),
        };
        let pasids = match p.selector().pasids {
            Some(_) => format!(", PASIDs [{}]", p.selector().pasids_text()),
            None => String::new(),
        };
        eprintln!(
            "iopf-agent: policy {} ({}, {}): devices [{}]{pasids}, actions [{}]{note}",
            p.name(),
            p.mode().label(),
            p.location(),
            devs.join(", "),
            actions.join(", ")
        );
    }
    for p in &resolved.unmatched {
        eprintln!("iopf-agent: policy {p} selects no device present now");
    }
}

/// Keeps the installed rules in step with the policy files (SIGHUP) and with the devices
/// present (kernel uevents).
struct Keeper {
    paths: Vec<PathBuf>,
    set: PolicySet,
    slots: u32,
    maps: Arc<Mutex<IopfMaps>>,
    installed: Arc<Mutex<Installed>>,
    dispatcher: Dispatcher,
    status: ReloadStatus,
    names: crate::policy::PolicyNames,
}

impl Keeper {
    async fn run(
        mut self,
        mut hup: tokio::signal::unix::Signal,
        mut uevents: Option<Uevents>,
        mut watcher: Option<Watcher>,
    ) {
        loop {
            let reload = tokio::select! {
                r = hup.recv() => match r {
                    Some(()) => Some("SIGHUP"),
                    None => return,
                },
                r = async { watcher.as_mut().map(|w| w.changed()).expect("guarded").await }, if watcher.is_some() => {
                    match r {
                        Ok(()) => Some("policy files changed"),
                        Err(e) => {
                            eprintln!("iopf-agent: policy files no longer watched ({e}): changes apply at SIGHUP");
                            watcher = None;
                            None
                        }
                    }
                }
                r = async { uevents.as_mut().map(|u| u.changed()).expect("guarded").await }, if uevents.is_some() => {
                    if let Err(e) = r {
                        eprintln!("iopf-agent: kernel uevents stopped ({e}): devices that appear later are covered from the next SIGHUP");
                        uevents = None;
                    }
                    self.devices_changed();
                    None
                }
            };
            if let Some(why) = reload {
                eprintln!("iopf-agent: {why}: reloading policies");
                let accepted = self.reload();
                self.status.record(accepted);
            }
        }
    }

    /// SIGHUP: the files again, all or nothing. A set with errors, or one that needs more
    /// device slots than are free, leaves the last good one in force.
    fn reload(&mut self) -> bool {
        let root = Path::new(SYSFS_ROOT);
        let loaded = PolicySet::load(&self.paths).and_then(|mut set| {
            let mut installed = self.installed.lock().unwrap_or_else(|e| e.into_inner());
            set.assign_ids(&mut installed.ids);
            self.names.learn(&installed.ids);
            drop(installed);
            let r = set.resolve(root)?;
            crate::policy::action::preflight::check(&set, &r, root)?;
            Ok((set, r))
        });
        let (set, resolved) = match loaded {
            Ok(v) => v,
            Err(e) => {
                eprintln!("iopf-agent: policy reload refused, the previous policies stay in force:\n{e}");
                return false;
            }
        };
        match self.install(&resolved) {
            Ok(n) => {
                log_policies(&set, &resolved);
                eprintln!("iopf-agent: policies reloaded: {} policies, {n} device rules changed", set.policies().len());
                self.dispatcher.replace(Table::new(&set, &resolved));
                self.set = set;
                true
            }
            Err(e) => {
                eprintln!(
                    "iopf-agent: policy reload refused, the previous policies stay in force: {}",
                    crate::error::chain(&e)
                );
                false
            }
        }
    }

    /// A device came, went, or changed driver: the same policies, resolved again.
    fn devices_changed(&mut self) {
        let resolved = match self.set.resolve(Path::new(SYSFS_ROOT)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("iopf-agent: policies not re-resolved after a device change: {e}");
                return;
            }
        };
        if self.installed.lock().unwrap_or_else(|e| e.into_inner()).selects_same(&resolved) {
            return;
        }
        match self.install(&resolved) {
            Ok(n) => {
                log_policies(&self.set, &resolved);
                eprintln!("iopf-agent: policy devices changed: {n} device rules changed");
                // A device that arrived cannot be refused: its faults are checked and
                // counted, and what its enforce actions cannot do here is said now.
                for (policy, at, m) in
                    crate::policy::action::preflight::problems(&self.set, &resolved, Path::new(SYSFS_ROOT))
                {
                    eprintln!(
                        "iopf-agent: WARNING: {at}: policy `{policy}`: {m}: its violations are counted but this action will fail"
                    );
                }
                self.dispatcher.replace(Table::new(&self.set, &resolved));
            }
            Err(e) => eprintln!("iopf-agent: policy devices changed but not installed: {}", crate::error::chain(&e)),
        }
    }

    fn install(&self, resolved: &Resolved) -> Result<usize, crate::policy::install::InstallError> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let mut inst = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        inst.replace(&mut maps, resolved, self.slots)
    }
}

/// A ring reader stopped: a closed stdout ends the run quietly (exit 0, like `| head`
/// expects); anything else is said.
fn stream_ended(what: &str, r: std::io::Result<()>, closed: &tokio::sync::Notify) {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => closed.notify_one(),
        Err(e) => eprintln!("iopf-agent: {what} stopped: {e}"),
        Ok(()) => {}
    }
}

fn rung_label(r: Rung) -> &'static str {
    r.as_str()
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process still ends on the default SIGTERM action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// One line per hook: what is attached, what failed and why, what this run leaves unused.
fn log_hooks(plans: &[crate::hooks::Plan]) {
    use crate::hooks::HookState;
    for p in plans {
        let target = p.target.as_deref().unwrap_or("-");
        match p.state {
            HookState::Attached => eprintln!("iopf-agent: attached {}: {} {target}", p.name, p.rung.as_str()),
            HookState::Failed => eprintln!("iopf-agent: failed {}: {}", p.name, p.reason),
            HookState::Unused => eprintln!("iopf-agent: unused {}: {target} ({})", p.name, p.reason),
            HookState::Absent => eprintln!("iopf-agent: absent {}: {}", p.name, p.reason),
            HookState::Planned => {
                eprintln!("iopf-agent: planned {}: {} {target} (not attached)", p.name, p.rung.as_str())
            }
        }
    }
}
