//! The `iopf-agent` binary: parse flags, run the command, own the exit code.

use iopf_agent::{
    cli, doctor,
    error::{AgentError, chain},
    policy_cmd, run, simulate,
};

fn main() {
    let cmd = cli::parse();
    let res = match cmd {
        cli::Command::Doctor(o) => doctor::run(o),
        cli::Command::Run(o) => block_on(run::run(*o)),
        cli::Command::Simulate(o) => block_on(simulate::run::run(o)),
        cli::Command::Release { device, sysfs_root } => iopf_agent::release::run(&device, &sysfs_root),
        cli::Command::Unpin(dir) => unpin(&dir),
        cli::Command::Devices { json, sysfs_root } => devices(json, &sysfs_root),
        cli::Command::Generated(bytes) => quiet_pipe(std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes)),
        cli::Command::Report { file, html } => iopf_agent::record::report::run(&file, &html),
        cli::Command::Replay { file, format, summary } => iopf_agent::record::replay::run(&file, format, summary),
        cli::Command::ReplayServe(o) => block_on(iopf_agent::record::serve::run(o)),
        cli::Command::PolicyAgainst { file, policies } => exit_with(iopf_agent::record::against::run(&file, &policies)),
        cli::Command::PolicyCheck { paths, host, sysfs_root } => {
            exit_with(policy_cmd::check(&paths, host, &sysfs_root))
        }
        cli::Command::PolicySchema => {
            let text = serde_json::to_string_pretty(&iopf_agent::policy::schema::device_policy()).unwrap_or_default();
            quiet_pipe(std::io::Write::write_all(&mut std::io::stdout().lock(), format!("{text}\n").as_bytes()))
        }
        cli::Command::PolicyExplain { paths, sysfs_root } => exit_with(policy_cmd::explain(&paths, &sysfs_root)),
    };
    if let Err(e) = res {
        eprintln!("iopf-agent: error: {}", chain(&e));
        std::process::exit(e.exit_code());
    }
}

/// `unpin DIR`: says what it detached.
fn unpin(dir: &std::path::Path) -> Result<(), AgentError> {
    let removed = iopf_agent::pin::unpin(dir)?;
    if removed.is_empty() {
        eprintln!("iopf-agent: nothing pinned in {}", dir.display());
    }
    for name in removed {
        eprintln!("iopf-agent: detached and removed {}", dir.join(name).display());
    }
    Ok(())
}

/// `devices`: a closed stdout (`| head`) is not an error.
fn devices(json: bool, root: &std::path::Path) -> Result<(), AgentError> {
    let devs = iopf_agent::devices::inventory(root)?;
    let mut out = std::io::stdout().lock();
    let r = if json {
        iopf_agent::devices::render_json(&devs, &mut out)
    } else {
        iopf_agent::devices::render_text_under(root, &devs, &mut out)
    };
    quiet_pipe(r)
}

/// Writing to a reader that went away ends the command with success.
fn quiet_pipe(r: std::io::Result<()>) -> Result<(), AgentError> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(AgentError::from),
    }
}

/// A command that decides its own exit status.
fn exit_with(r: Result<i32, AgentError>) -> Result<(), AgentError> {
    match r? {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

fn block_on(f: impl Future<Output = Result<(), AgentError>>) -> Result<(), AgentError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(AgentError::from)?.block_on(f)
}
