//! Developer tasks: `cargo xtask run`, `cargo xtask test`.

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the agent (release) and run `iopf-agent run`, tracing page faults of all tasks
    /// unless other flags are given. Needs root: re-runs itself under sudo otherwise.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Every test tier: host unit tests, root in-kernel tests, the agent end to end with a
    /// real Prometheus.
    Test,
    /// Regenerate the kernel BTF fixtures (iopf-agent/tests/fixtures/btf) from Debian's 6.1
    /// and 6.12 kernel packages, the iopf test kernel in ../shared/vm and this host. Not run
    /// in CI: the fixtures are committed.
    BtfFixtures,
}

fn sh(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("[xtask] {what}: {cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run { args } => {
            sh("build", Command::new("cargo").args(["build", "--release", "-p", "iopf-agent"]))?;
            let bin = "target/release/iopf-agent";
            let args = if args.is_empty() { vec!["--page-faults".to_owned()] } else { args };
            let mut cmd = if is_root() {
                Command::new(bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg(bin);
                c
            };
            cmd.arg("run").args(&args);
            sh("iopf-agent", &mut cmd)
        }
        Cmd::BtfFixtures => sh("btf fixtures", &mut Command::new("scripts/btf-fixtures.sh")),
        Cmd::Test => {
            if !is_root() && std::env::var("IOPF_SKIP_ROOT_TESTS").as_deref() != Ok("1") {
                bail!(
                    "the root test tiers need root: run `sudo ./x test` (or set IOPF_SKIP_ROOT_TESTS=1 to skip them deliberately)"
                );
            }
            sh("build agent", Command::new("cargo").args(["build", "-p", "iopf-agent", "--bins"]))?;
            // Default members only (iopf-ebpf builds for bpfel, through build.rs). Root tests share the kernel's perf/tracepoint state: run them one at a time so
            // each test's counts are its own.
            sh("tests", Command::new("cargo").args(["test", "--", "--test-threads=1"]))?;
            eprintln!("[xtask] all test tiers passed");
            Ok(())
        }
    }
}
