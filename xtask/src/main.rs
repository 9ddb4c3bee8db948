//! Developer tasks: `cargo xtask run`, `cargo xtask test`.

mod apt;
mod cross;
mod kmod;
mod qemu;
mod vm;

use std::{path::PathBuf, process::Command, time::Duration};

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
    /// Benchmarks (root), by the fixed method of tests/src/bench: host sections, then the
    /// VM's figures (TCG), merged into target/bench/results.json, from which BENCHMARKS.md is
    /// generated.
    Bench {
        /// Host sections to run (repeatable): pagefault, iopf, stream, scrape, footprint.
        /// Default: all.
        #[arg(long = "only")]
        only: Vec<String>,
        /// Skip the VM figures.
        #[arg(long)]
        no_vm: bool,
        /// Only these VM benchmark scenarios (repeatable): bench-pf-fentry, bench-pf-kprobe,
        /// bench-iopf-fentry, bench-iopf-kprobe, bench-walk. Default: all.
        #[arg(long = "vm-scenario")]
        vm_scenarios: Vec<String>,
    },
    /// Rebuild the VM tier's iommufd-mock kernel from Debian's linux-source-6.12 and
    /// ../shared/vm/iopf-kernel.config (about 22 minutes on 2 cores; not run in CI).
    BuildKernel,
    /// The VM tier: boot real kernels under QEMU (TCG) and run the guest scenarios.
    VmTest {
        /// Kernel boot to run (repeatable): iopf-6.12, iopf-7.3, iopf-7.3-vtd,
        /// iopf-7.3-vtd-scalable, iopf-7.3-vtd-first-stage, debian-5.10, debian-6.1,
        /// debian-6.12, debian-7.3, debian-7.3-vtd-scalable, debian-7.3-vtd-first-stage,
        /// debian-6.12-amdvi, debian-7.3-amdvi (QEMU 11's AMD IOMMU), debian-7.3-arm64,
        /// debian-7.3-arm64-s2, debian-6.12-arm64 (arm64 guests: their binaries are
        /// cross-built for aarch64).
        /// Default: all.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Only this scenario of each chosen boot (repeatable); a boot that runs none of
        /// them is skipped. Default: each boot's own list.
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        /// Seconds before a guest is declared hung (a Debian boot runs a dozen scenarios,
        /// each starting the agent under TCG: 5 to 6 minutes on a loaded host).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Skip building (use target/release, and target/aarch64-unknown-linux-gnu/release for
        /// arm64 guests, as they are).
        #[arg(long)]
        no_build: bool,
    },
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
            // Quiet: a rebuild does not replay the eBPF build's log; errors still show.
            sh("build", Command::new("cargo").args(["build", "--release", "--quiet", "-p", "iopf-agent"]))?;
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
            eprintln!("[xtask] iopf-agent: {cmd:?}");
            // The agent replaces this process: its exit status is `./x run`'s, and signals
            // reach it directly.
            use std::os::unix::process::CommandExt as _;
            Err(cmd.exec()).context("starting iopf-agent")
        }
        Cmd::VmTest { kernels, scenarios, timeout, no_build } => {
            vm_test(&kernels, &scenarios, Duration::from_secs(timeout), !no_build)
        }
        Cmd::Bench { only, no_vm, vm_scenarios } => bench(&only, no_vm, &vm_scenarios),
        Cmd::BuildKernel => sh("build kernel", &mut Command::new("scripts/build-iopf-kernel.sh")),
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
            // The parsers of operator input under libFuzzer, 30 s per target.
            sh("fuzz", &mut Command::new("scripts/fuzz.sh"))?;
            // 900 s per guest: debian-7.3 runs 13 scenarios in about 10 minutes on a busy host.
            vm_test(&[], &[], Duration::from_secs(900), true)?;
            eprintln!("[xtask] all test tiers passed");
            Ok(())
        }
    }
}

/// The VM's benchmark scenarios, by boot: each prints its figures as `VMFIGURE {json}`.
const VM_BENCHES: &[(&str, &[&str])] = &[
    ("iopf-6.12", &["bench-pf-fentry", "bench-pf-kprobe", "bench-iopf-fentry", "bench-iopf-kprobe"]),
    ("debian-7.3", &["bench-walk"]),
    ("debian-7.3-vtd-scalable", &["bench-walk"]),
    ("debian-7.3-vtd-first-stage", &["bench-walk"]),
];

fn bench(only: &[String], no_vm: bool, vm_only: &[String]) -> anyhow::Result<()> {
    sh("build", Command::new("cargo").args(["build", "--release", "-p", "iopf-agent", "-p", "iopf-tests", "--bins"]))?;
    let bench = repo_root().join("target/release/iopf-bench");
    sh("bench", Command::new(&bench).args(only))?;
    if !no_vm {
        for (kernel, scenarios) in VM_BENCHES {
            let scenarios: Vec<&str> =
                scenarios.iter().copied().filter(|s| vm_only.is_empty() || vm_only.iter().any(|o| o == s)).collect();
            if scenarios.is_empty() {
                continue;
            }
            let spec = vm::KERNELS.iter().find(|k| k.name == *kernel).expect("known kernel");
            let out = vm::run_kernel(&repo_root(), spec, Some(&scenarios), Duration::from_secs(1800))?;
            for (name, r) in &out.results {
                if let Err(why) = r {
                    bail!("VM benchmark {kernel}/{name} failed: {why}");
                }
            }
            let console = repo_root().join("target/vm").join(kernel).join("console.log");
            let text = std::fs::read_to_string(&console)?;
            let lines: String =
                text.lines().filter_map(|l| l.split_once("VMFIGURE ").map(|x| format!("{}\n", x.1))).collect();
            let file = repo_root().join("target/bench").join(format!("vm-{kernel}.jsonl"));
            std::fs::write(&file, lines)?;
            sh("merge VM figures", Command::new(&bench).arg("merge").arg(&file))?;
        }
    }
    sh("BENCHMARKS.md", Command::new(&bench).arg("report"))
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the repository").to_path_buf()
}

fn vm_test(kernels: &[String], only: &[String], timeout: Duration, build: bool) -> anyhow::Result<()> {
    let repo = repo_root();
    for k in kernels {
        if !vm::KERNELS.iter().any(|s| s.name == k) {
            bail!(
                "unknown kernel `{k}` (known: {})",
                vm::KERNELS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let chosen = |s: &vm::KernelSpec| -> Vec<&'static str> {
        s.scenarios.iter().copied().filter(|n| only.is_empty() || only.iter().any(|o| o == n)).collect()
    };
    let specs: Vec<&vm::KernelSpec> = vm::KERNELS
        .iter()
        .filter(|s| kernels.is_empty() || kernels.iter().any(|k| k == s.name))
        .filter(|s| !chosen(s).is_empty())
        .collect();
    if specs.is_empty() {
        bail!("no chosen boot runs scenario {}", only.join(", "));
    }
    // Each architecture's binaries, for the guests that run them: the host's (x86 guests see
    // target/release over 9p), cross-built ones for the others.
    if build && specs.iter().any(|s| s.arch.cross_target().is_none()) {
        sh(
            "build for the guest",
            Command::new("cargo").args(["build", "--release", "-p", "iopf-agent", "-p", "iopf-tests", "--bins"]),
        )?;
    }
    if build {
        let mut targets: Vec<&str> = specs.iter().filter_map(|s| s.arch.cross_target()).collect();
        targets.sort();
        targets.dedup();
        for t in targets {
            cross::build(&repo, t)?;
        }
    }
    // The test modules for the custom 7.3 kernel (seconds, from ../shared/vm's build tree):
    // its iopf-7.3* specs load them.
    if build && (kernels.is_empty() || kernels.iter().any(|k| k.starts_with("iopf-7.3"))) {
        sh("build the SVA test module", &mut Command::new(repo.join("scripts/build-sva-kmod.sh")))?;
    }
    // Each TCG guest runs on one core (-smp 1): boot two at a time (IOPF_VM_JOBS to change it).
    let jobs = std::env::var("IOPF_VM_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
        .unwrap_or(2)
        .clamp(1, specs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let counts = std::sync::Mutex::new((0, 0));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while let Some(spec) = specs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                    let outcome = match vm::run_kernel(&repo, spec, Some(&chosen(spec)), timeout) {
                        Ok(o) => o,
                        Err(e) => {
                            vm::Outcome { kernel: spec.name, results: vec![("setup".into(), Err(format!("{e:#}")))] }
                        }
                    };
                    // One kernel's lines together, whichever guest finishes first.
                    let mut counts = counts.lock().expect("no panics while printing");
                    for (name, r) in &outcome.results {
                        match r {
                            Ok(detail) => {
                                counts.0 += 1;
                                println!("vm-test {}/{name} ... ok ({detail})", outcome.kernel);
                            }
                            Err(why) => {
                                counts.1 += 1;
                                println!("vm-test {}/{name} ... FAILED: {why}", outcome.kernel);
                            }
                        }
                    }
                }
            });
        }
    });
    let (passed, failed) = counts.into_inner().expect("no panics while printing");
    println!("vm-test: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("VM tier failed");
    }
    Ok(())
}
