//! `iopf-agent run`: bind, load, attach, serve.

use std::sync::Mutex;

use iopf_common::pagefault::PfMode;

use crate::{
    cli::RunOptions,
    doctor,
    error::AgentError,
    hooks::Rung,
    loader::Globals,
    metrics::{PageFaultSource, PlanSource, Registry},
    pagefault, server,
};

pub async fn run(opts: RunOptions) -> Result<(), AgentError> {
    // Bind first: a busy port fails before anything is loaded into the kernel.
    let listener = server::bind(opts.listen).await?;
    let pf_mode = match (opts.page_faults, opts.selection.is_all()) {
        (false, _) => PfMode::Off,
        (true, true) => PfMode::All,
        (true, false) => PfMode::Selected,
    };
    let (mut ebpf, report, btf) =
        doctor::survey(&opts.plan, Globals { pf_mode, events: opts.trace, ..Globals::default() })?;
    for p in &report.hooks {
        let target = p.target.as_deref().unwrap_or("-");
        let note = if p.reason.is_empty() { String::new() } else { format!(" ({})", p.reason) };
        eprintln!("iopf-agent: hook {}: {} {}{}", p.name, p.rung.as_str(), target, note);
    }
    doctor::check_required(&opts.plan, &report.hooks)?;

    let registry = Registry::default();
    let abi = report.iopf_abi.as_ref().ok();
    for (hook, res) in crate::iopf::attach::attach_all(&mut ebpf, &report.hooks, abi) {
        match res {
            Ok(what) => eprintln!("iopf-agent: attached {hook}: {what}"),
            Err(e) if opts.plan.require.iter().any(|r| r == hook) => return Err(e.into()),
            Err(e) => eprintln!("iopf-agent: skipped {hook}: {}", crate::error::chain(&e)),
        }
    }
    let iopf_maps = crate::iopf::maps::IopfMaps::take(&mut ebpf)?;
    registry.add(crate::iopf::metrics::IopfSource { maps: Mutex::new(iopf_maps) });
    if opts.page_faults {
        let plan = report.hooks.iter().find(|p| p.name == "mm_fault").cloned().expect("mm_fault is a known hook");
        pagefault::attach(&mut ebpf, &plan)?;
        pagefault::select(&mut ebpf, &opts.selection)?;
        let maps = pagefault::PfMaps::take(&mut ebpf)?;
        let what = if opts.selection.is_all() {
            "all tasks".to_owned()
        } else {
            format!("pids {:?} cgroups {:?}", opts.selection.pids, opts.selection.cgroups)
        };
        eprintln!("iopf-agent: page-fault tracing on the {} rung for {what}", plan.rung.as_str());
        registry.add(PageFaultSource { maps: Mutex::new(maps), rung: rung_label(plan.rung) });
    }
    registry.add(PlanSource { kernel: report.kernel.clone(), plans: report.hooks.clone() });

    if opts.trace {
        let reader = crate::iopf::events::EventReader::take(&mut ebpf)?;
        let consts = report.iopf_abi.as_ref().map(|a| a.consts).unwrap_or(crate::kabi::iopf::CURRENT_CONSTS);
        tokio::spawn(async move {
            if let Err(e) = reader.stream_ndjson(|b, e| crate::iopf::ndjson::write_event(b, e, &consts)).await {
                eprintln!("iopf-agent: event stream stopped: {e}");
            }
        });
        let dmar = crate::iopf::events::Ring::<iopf_common::dmar::DmarEvent>::take_named(&mut ebpf, "DMAR_EVENTS")?;
        tokio::spawn(async move {
            if let Err(e) = dmar.stream_ndjson(crate::iopf::ndjson::write_dmar).await {
                eprintln!("iopf-agent: VT-d fault stream stopped: {e}");
            }
        });
    }
    // Parsed BTF is only needed to plan and attach: free it and hand the heap back to the
    // system, so the resident agent stays small.
    drop(btf);
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let addr = listener.local_addr()?;
    eprintln!("iopf-agent: serving metrics on http://{addr}/metrics");
    server::serve(listener, registry, shutdown_signal()).await?;
    eprintln!("iopf-agent: stopped");
    drop(ebpf);
    Ok(())
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
