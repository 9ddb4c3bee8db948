//! The `iopf-agent` binary: parse flags, run the command, own the exit code.

use iopf_agent::{cli, doctor, error::chain, run};

fn main() {
    let cmd = cli::parse();
    let res = match cmd {
        cli::Command::Doctor(o) => doctor::run(o),
        cli::Command::Run(o) => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(run::run(o)),
            Err(e) => Err(e.into()),
        },
    };
    if let Err(e) = res {
        eprintln!("iopf-agent: error: {}", chain(&e));
        std::process::exit(e.exit_code());
    }
}
