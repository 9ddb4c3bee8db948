//! Command-line flags, parsed in one place and turned into plain option structs.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{hooks::Rung, server::DEFAULT_LISTEN};

#[derive(Debug, Parser)]
#[command(name = "iopf-agent", version, about = "eBPF agent for the Linux IOMMU I/O page fault path")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RungArg {
    Fentry,
    Kprobe,
    Tracepoint,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Pin every hook to this attach rung (to exercise lower rungs on capable kernels).
    #[arg(long, value_enum)]
    force_rung: Option<RungArg>,
    /// Fail (exit 4) unless this hook can attach; repeatable. `doctor` lists hook names.
    #[arg(long = "require", value_name = "HOOK")]
    require: Vec<String>,
    /// Directory holding kernel BTF (vmlinux and modules).
    #[arg(long, default_value = crate::kabi::DEFAULT_BTF_DIR, hide = true)]
    btf_dir: PathBuf,
}

/// What `trace` and `record` take besides their own flags.
#[derive(Debug, clap::Args)]
struct Live {
    /// Stop after this long (e.g. 30s).
    #[arg(long, value_parser = parse_duration_arg)]
    duration: Option<u64>,
    /// DevicePolicy files or directories to check the faults against (their verdicts go
    /// with the events); repeatable.
    #[arg(long = "policy", value_name = "PATH")]
    policies: Vec<PathBuf>,
    /// Also serve metrics here.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TLS and basic auth for the endpoint: a web config file in the Prometheus
    /// exporters' format (tls_server_config, basic_auth_users; see examples/web-config.yml).
    #[arg(long, value_name = "FILE", requires = "listen")]
    web_config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Load and attach the programs and serve Prometheus metrics until SIGINT/SIGTERM.
    Run {
        /// Address for /metrics (loopback by default; port 0 picks a free port).
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// TLS and basic auth for the endpoint: a web config file in the Prometheus
        /// exporters' format (tls_server_config, basic_auth_users; see examples/web-config.yml).
        #[arg(long, value_name = "FILE")]
        web_config: Option<PathBuf>,
        /// Measure CPU page-fault count and latency (all tasks unless --pid/--cgroup select).
        #[arg(long)]
        page_faults: bool,
        /// Stream every answered IOPF fault as an NDJSON event on stdout.
        #[arg(long)]
        trace: bool,
        /// DevicePolicy file or directory (every *.yaml in it); repeatable. SIGHUP reloads
        /// them; a set with errors is refused and the last good one stays in force.
        #[arg(long = "policy", value_name = "PATH")]
        policies: Vec<PathBuf>,
        /// Devices with their own counters, histograms and rule; later ones are counted
        /// together as device "other".
        #[arg(long, default_value_t = iopf_common::iopf::DEV_SLOTS_DEFAULT - 1,
              value_parser = clap::value_parser!(u32).range(1..=65535))]
        max_devices: u32,
        /// Trace page faults of this process id; repeatable; implies --page-faults.
        #[arg(long = "pid", value_name = "PID")]
        pids: Vec<u32>,
        /// Trace page faults of tasks in this cgroup v2 directory or below it; repeatable;
        /// implies --page-faults.
        #[arg(long = "cgroup", value_name = "PATH")]
        cgroups: Vec<PathBuf>,
        /// Pin the programs, links and maps in this bpffs directory: they stay attached and
        /// counting while the agent is down, and the next `run --pin` with the same settings
        /// adopts them (counters continue). `iopf-agent unpin DIR` detaches them.
        #[arg(long, value_name = "DIR")]
        pin: Option<PathBuf>,
        /// Turn on the kernel's per-program run count and time while the agent runs
        /// (iopf_program_runs_total, iopf_program_run_seconds_total); costs a clock read per
        /// program run. Off again when the agent exits.
        #[arg(long)]
        bpf_stats: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Detach and remove the programs and maps a `run --pin DIR` left pinned.
    Unpin {
        /// The directory given to `run --pin`.
        dir: PathBuf,
    },
    /// Drive a scenario of synthetic faults through the in-kernel programs
    /// (BPF_PROG_TEST_RUN), print the expected totals, check the kernel's counters against
    /// them, and with --listen serve the resulting (source="simulated") metrics.
    Simulate {
        /// Scenario file (YAML; see examples/scenarios/).
        #[arg(long)]
        scenario: PathBuf,
        /// Serve the metrics here until SIGINT/SIGTERM.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// TLS and basic auth for the endpoint: a web config file in the Prometheus
        /// exporters' format (tls_server_config, basic_auth_users; see examples/web-config.yml).
        #[arg(long, value_name = "FILE", requires = "listen")]
        web_config: Option<PathBuf>,
        /// DevicePolicy file or directory to check the scenario's faults against (by device
        /// name); repeatable.
        #[arg(long = "policy", value_name = "PATH")]
        policies: Vec<PathBuf>,
        /// Print every answered fault as an NDJSON event on stdout.
        #[arg(long)]
        trace: bool,
        /// Write every answered fault to this recording (as `record` does).
        #[arg(long, value_name = "FILE", conflicts_with = "trace")]
        record: Option<PathBuf>,
        #[arg(long, default_value = crate::kabi::DEFAULT_BTF_DIR, hide = true)]
        btf_dir: PathBuf,
    },
    /// Load and attach like `run`, and print live events: aligned columns (colour on a
    /// terminal) or --json lines (schema iopf.dev/trace/v1). Filters combine with AND; a
    /// repeated filter matches any of its values.
    Trace {
        /// NDJSON, one event per line (schema iopf.dev/trace/v1).
        #[arg(long)]
        json: bool,
        /// No ANSI colours even on a terminal.
        #[arg(long)]
        no_color: bool,
        /// Only this device (dev_name, e.g. 0000:00:03.0); repeatable.
        #[arg(long = "device", value_name = "NAME")]
        devices: Vec<String>,
        /// Only this PASID; repeatable.
        #[arg(long = "pasid", value_name = "PASID")]
        pasids: Vec<u32>,
        /// Only faults classified at this level; repeatable.
        #[arg(long = "level", value_parser = ["first", "second", "unknown"])]
        levels: Vec<String>,
        /// Only this configuration; repeatable.
        #[arg(long = "config", value_parser = ["flat_kernel", "flat_user", "flat_sva", "nested", "nested_parent", "unknown"])]
        configs: Vec<String>,
        /// Only this response; repeatable.
        #[arg(long = "response", value_parser = ["success", "invalid", "failure", "none"])]
        responses: Vec<String>,
        /// Only faults answered at least this late (e.g. 50us, 2ms).
        #[arg(long, value_parser = parse_duration_arg)]
        min_latency: Option<u64>,
        /// Only this kind of event; repeatable.
        #[arg(long = "kind", value_parser = ["iopf", "dmar", "walk", "smmu", "amdvi"])]
        kinds: Vec<String>,
        /// Only events that break a policy.
        #[arg(long)]
        violations: bool,
        #[command(flatten)]
        live: Live,
        #[arg(long, default_value_t = iopf_common::iopf::DEV_SLOTS_DEFAULT - 1,
              value_parser = clap::value_parser!(u32).range(1..=65535))]
        max_devices: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Load and attach like `run`, and write every event to FILE (compact, versioned, with a
    /// header: kernel, agent version, attach plan) until SIGINT/SIGTERM or --duration.
    Record {
        file: PathBuf,
        #[command(flatten)]
        live: Live,
        #[command(flatten)]
        common: Common,
    },
    /// Print a recording's events (columns, or --json) and a summary per device; or, with
    /// --listen, drive its IOPF events again through the in-kernel programs (as root, like
    /// simulate) and serve their metrics until SIGINT/SIGTERM.
    Replay {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        no_color: bool,
        /// Only the summary.
        #[arg(long)]
        summary: bool,
        /// Serve the replay's metrics here (counts, latency histograms, violations).
        #[arg(long, conflicts_with_all = ["json", "no_color", "summary"])]
        listen: Option<SocketAddr>,
        /// TLS and basic auth for the endpoint (as for run).
        #[arg(long, value_name = "FILE", requires = "listen")]
        web_config: Option<PathBuf>,
        /// DevicePolicy files or directories to check the replayed faults against in the
        /// kernel (selectors see the devices the recording's header lists); repeatable.
        #[arg(long = "policy", value_name = "PATH", requires = "listen")]
        policies: Vec<PathBuf>,
        #[arg(long, default_value = crate::kabi::DEFAULT_BTF_DIR, hide = true)]
        btf_dir: PathBuf,
    },
    /// Write one self-contained HTML page (inline SVG, readable offline) of a recording.
    Report {
        file: PathBuf,
        /// Where the page goes.
        #[arg(long, value_name = "OUT")]
        html: PathBuf,
    },
    /// DMA-capable devices of this host from sysfs and PCI config space: IDs, driver, IOMMU
    /// group and domain type, IOMMU unit, ATS/PRI/PASID, and whether faults can be reported.
    Devices {
        /// One JSON document (schema iopf.dev/devices/v1).
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = crate::policy::SYSFS_ROOT, hide = true)]
        sysfs_root: PathBuf,
    },
    /// Check policy files, or explain what they select on this host (no privileges, nothing
    /// loaded).
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) for this command line.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from the same definitions as --help.
    Man,
    /// Undo a policy's `isolate`: set Bus Master Enable of a PCI device again.
    Release {
        /// PCI address, SSSS:BB:DD.F.
        device: String,
        #[arg(long, default_value = crate::policy::SYSFS_ROOT, hide = true)]
        sysfs_root: PathBuf,
    },
    /// Print the attach plan for every known hook and the kernel's capabilities.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Validate DevicePolicy files and directories: every error of every file, as
    /// file:line:column: field: message; exit 1 on any.
    Check {
        /// Also resolve the selectors against this host's devices (two policies on one
        /// device) and check that enforce actions can be honoured here.
        #[arg(long)]
        host: bool,
        /// Instead, what the policies would have flagged in this recording (`record`).
        #[arg(long, value_name = "RECORDING", conflicts_with = "host")]
        against: Option<PathBuf>,
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[arg(long, default_value = crate::policy::SYSFS_ROOT, hide = true)]
        sysfs_root: PathBuf,
    },
    /// Print the JSON Schema (draft 2020-12) of a DevicePolicy document.
    Schema,
    /// Which devices of this host each policy selects and why, near misses, and what it
    /// would select if a device appeared.
    Explain {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[arg(long, default_value = crate::policy::SYSFS_ROOT, hide = true)]
        sysfs_root: PathBuf,
    },
}

/// Options shared by the commands, free of argument-parser types.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub force_rung: Option<Rung>,
    pub require: Vec<String>,
    pub btf_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// None: no metrics endpoint (`trace` without --listen).
    pub listen: Option<SocketAddr>,
    /// `--web-config`: TLS and basic auth for the endpoint.
    pub web_config: Option<PathBuf>,
    pub trace: Option<crate::trace::TraceOutput>,
    /// Stop after this long (`trace --duration`).
    pub duration: Option<std::time::Duration>,
    /// Write the events to this recording instead of stdout (`record`).
    pub record: Option<PathBuf>,
    pub policies: Vec<PathBuf>,
    /// Device slots including the "other" slot 0.
    pub dev_slots: u32,
    pub page_faults: bool,
    pub selection: crate::pagefault::Selection,
    pub plan: PlanOptions,
    /// `--pin DIR` (bpffs).
    pub pin: Option<PathBuf>,
    /// `--bpf-stats`.
    pub bpf_stats: bool,
}

#[derive(Debug, Clone)]
pub struct DoctorOptions {
    pub json: bool,
    pub plan: PlanOptions,
}

#[derive(Debug)]
pub enum Command {
    Simulate(crate::simulate::run::SimulateOptions),
    Run(Box<RunOptions>),
    Doctor(DoctorOptions),
    Release {
        device: String,
        sysfs_root: PathBuf,
    },
    Unpin(PathBuf),
    PolicyCheck {
        paths: Vec<PathBuf>,
        host: bool,
        sysfs_root: PathBuf,
    },
    Devices {
        json: bool,
        sysfs_root: PathBuf,
    },
    /// Completions or the man page, already rendered.
    Generated(Vec<u8>),
    Replay {
        file: PathBuf,
        format: crate::trace::Format,
        summary: bool,
    },
    ReplayServe(crate::record::serve::ServeOptions),
    Report {
        file: PathBuf,
        html: PathBuf,
    },
    PolicyAgainst {
        file: PathBuf,
        policies: Vec<PathBuf>,
    },
    PolicyExplain {
        paths: Vec<PathBuf>,
        sysfs_root: PathBuf,
    },
    PolicySchema,
}

impl From<Common> for PlanOptions {
    fn from(c: Common) -> Self {
        PlanOptions {
            force_rung: c.force_rung.map(|r| match r {
                RungArg::Fentry => Rung::Fentry,
                RungArg::Kprobe => Rung::Kprobe,
                RungArg::Tracepoint => Rung::Tracepoint,
            }),
            require: c.require,
            btf_dir: c.btf_dir,
        }
    }
}

/// `--json`, else columns, coloured only on a terminal and without `--no-color`.
fn output_format(json: bool, no_color: bool) -> crate::trace::Format {
    use std::io::IsTerminal as _;
    if json {
        crate::trace::Format::Json
    } else {
        crate::trace::Format::Human { color: !no_color && std::io::stdout().is_terminal() }
    }
}

/// `50us`, `2ms`, `30s` as nanoseconds (the policy files' duration form).
fn parse_duration_arg(s: &str) -> Result<u64, String> {
    crate::policy::parse_duration(s)
}

/// Parses `std::env::args`; on bad flags clap prints one message and exits 2.
pub fn parse() -> Command {
    match Cli::parse().cmd {
        Cmd::Run {
            listen,
            web_config,
            page_faults,
            trace,
            policies,
            max_devices,
            pids,
            cgroups,
            pin,
            bpf_stats,
            common,
        } => Command::Run(Box::new(RunOptions {
            listen: Some(listen),
            web_config,
            trace: trace.then(crate::trace::TraceOutput::stream),
            duration: None,
            record: None,
            policies,
            dev_slots: max_devices + 1,
            page_faults: page_faults || !pids.is_empty() || !cgroups.is_empty(),
            selection: crate::pagefault::Selection { pids, cgroups },
            plan: common.into(),
            pin,
            bpf_stats,
        })),
        Cmd::Unpin { dir } => Command::Unpin(dir),
        Cmd::Simulate { scenario, listen, web_config, trace, record, btf_dir, policies } => {
            Command::Simulate(crate::simulate::run::SimulateOptions {
                scenario,
                listen,
                web_config,
                trace,
                record,
                btf_dir,
                policies,
            })
        }
        Cmd::Release { device, sysfs_root } => Command::Release { device, sysfs_root },
        Cmd::Devices { json, sysfs_root } => Command::Devices { json, sysfs_root },
        Cmd::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "iopf-agent", &mut out);
            Command::Generated(out)
        }
        Cmd::Man => {
            let mut out = Vec::new();
            let _ = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out);
            Command::Generated(out)
        }
        Cmd::Replay { file, listen: Some(listen), web_config, policies, btf_dir, .. } => {
            Command::ReplayServe(crate::record::serve::ServeOptions { file, listen, web_config, policies, btf_dir })
        }
        Cmd::Replay { file, json, no_color, summary, .. } => {
            let format = output_format(json, no_color);
            Command::Replay { file, format, summary }
        }
        Cmd::Report { file, html } => Command::Report { file, html },
        Cmd::Record { file, live: Live { duration, policies, listen, web_config }, common } => {
            Command::Run(Box::new(RunOptions {
                listen,
                web_config,
                trace: Some(crate::trace::TraceOutput {
                    format: crate::trace::Format::Record,
                    filter: crate::trace::Filter::default(),
                    clock: crate::trace::clock::WallClock::now(),
                    policies: crate::policy::PolicyNames::default(),
                }),
                duration: duration.map(std::time::Duration::from_nanos),
                record: Some(file),
                policies,
                dev_slots: iopf_common::iopf::DEV_SLOTS_DEFAULT,
                page_faults: false,
                selection: crate::pagefault::Selection { pids: Vec::new(), cgroups: Vec::new() },
                plan: common.into(),
                pin: None,
                bpf_stats: false,
            }))
        }
        Cmd::Trace {
            json,
            no_color,
            devices,
            pasids,
            levels,
            configs,
            responses,
            min_latency,
            kinds,
            violations,
            live: Live { duration, policies, listen, web_config },
            max_devices,
            common,
        } => {
            let format = output_format(json, no_color);
            let kinds = kinds
                .iter()
                .map(|k| match k.as_str() {
                    "iopf" => crate::trace::filter::Kind::Iopf,
                    "walk" => crate::trace::filter::Kind::PageRequest,
                    "smmu" => crate::trace::filter::Kind::Smmu,
                    "amdvi" => crate::trace::filter::Kind::Amdvi,
                    _ => crate::trace::filter::Kind::Dmar,
                })
                .collect();
            let filter = crate::trace::Filter {
                devices,
                pasids,
                levels,
                configs,
                responses,
                min_latency_ns: min_latency,
                kinds,
                violations_only: violations,
            };
            Command::Run(Box::new(RunOptions {
                listen,
                web_config,
                trace: Some(crate::trace::TraceOutput {
                    format,
                    filter,
                    clock: crate::trace::clock::WallClock::now(),
                    policies: crate::policy::PolicyNames::default(),
                }),
                duration: duration.map(std::time::Duration::from_nanos),
                record: None,
                policies,
                dev_slots: max_devices + 1,
                page_faults: false,
                selection: crate::pagefault::Selection { pids: Vec::new(), cgroups: Vec::new() },
                plan: common.into(),
                pin: None,
                bpf_stats: false,
            }))
        }
        Cmd::Policy { cmd: PolicyCmd::Check { against: Some(file), paths, .. } } => {
            Command::PolicyAgainst { file, policies: paths }
        }
        Cmd::Policy { cmd: PolicyCmd::Check { host, paths, sysfs_root, against: None } } => {
            Command::PolicyCheck { paths, host, sysfs_root }
        }
        Cmd::Policy { cmd: PolicyCmd::Explain { paths, sysfs_root } } => Command::PolicyExplain { paths, sysfs_root },
        Cmd::Policy { cmd: PolicyCmd::Schema } => Command::PolicySchema,
        Cmd::Doctor { json, common } => Command::Doctor(DoctorOptions { json, plan: common.into() }),
    }
}
