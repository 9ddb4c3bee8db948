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
        cli::Command::Run(o) => block_on(run::run(o)),
        cli::Command::Simulate(o) => block_on(simulate::run::run(o)),
        cli::Command::Release { device, sysfs_root } => iopf_agent::release::run(&device, &sysfs_root),
        cli::Command::PolicyCheck { paths, host, sysfs_root } => {
            exit_with(policy_cmd::check(&paths, host, &sysfs_root))
        }
        cli::Command::PolicyExplain { paths, sysfs_root } => exit_with(policy_cmd::explain(&paths, &sysfs_root)),
    };
    if let Err(e) = res {
        eprintln!("iopf-agent: error: {}", chain(&e));
        std::process::exit(e.exit_code());
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
