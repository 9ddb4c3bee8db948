//! Every kernel hook the project knows, and the attach ladder that picks a rung for each one
//! on the running kernel: fentry/fexit, then kprobe/kretprobe, then a tracepoint stand-in where
//! one exists, else "unavailable" with the reason.

use serde::Serialize;

use crate::{
    features::Features,
    kabi::{FuncSite, KernelBtf},
    kallsyms::Kallsyms,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Rung {
    Fentry,
    Kprobe,
    Tracepoint,
    Unavailable,
}

impl Rung {
    pub const ALL: [Rung; 4] = [Rung::Fentry, Rung::Kprobe, Rung::Tracepoint, Rung::Unavailable];

    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Fentry => "fentry",
            Rung::Kprobe => "kprobe",
            Rung::Tracepoint => "tracepoint",
            Rung::Unavailable => "unavailable",
        }
    }
}

/// What a hook attaches to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Kernel functions, first present wins (generations of the same hook point).
    Functions {
        candidates: &'static [&'static str],
        /// The module that defines them when they are not built in.
        module: Option<&'static str>,
        /// Tracepoint stand-in when neither fentry nor kprobe can attach: (category, name).
        tracepoint: Option<(&'static str, &'static str)>,
        /// What the absence of every candidate most likely means.
        missing: &'static str,
    },
    Tracepoint {
        category: &'static str,
        name: &'static str,
        missing: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Hook {
    pub name: &'static str,
    pub why: &'static str,
    pub target: Target,
    /// Its programs track faults in flight, which takes BPF compare-and-exchange (5.12+) where
    /// faults are keyed by group (6.9+). Where they are keyed by device and group id (<= 6.8,
    /// the only ABIs of kernels without it) hash claims serve instead. The others use atomic
    /// adds and hash inserts only, which every supported kernel has.
    pub exchange: bool,
}

pub const HOOKS: &[Hook] = &[
    Hook {
        name: "report",
        why: "every recoverable fault enters here",
        target: Target::Functions {
            candidates: &["iommu_report_device_fault"],
            module: None,
            tracepoint: None,
            missing: "CONFIG_IOMMU_IOPF off?",
        },
        exchange: true,
    },
    Hook {
        name: "sva_handler",
        why: "SVA group handler: domain -> configuration and level",
        target: Target::Functions {
            candidates: &["iommu_sva_iopf_handler", "iommu_sva_handle_iopf"],
            module: None,
            tracepoint: None,
            missing: "CONFIG_IOMMU_SVA off?",
        },
        exchange: true,
    },
    Hook {
        name: "iommufd_handler",
        why: "iommufd (user/nested) group handler",
        target: Target::Functions {
            candidates: &["iommufd_fault_iopf_handler"],
            module: Some("iommufd"),
            tracepoint: None,
            missing: "iommufd not loaded or older than 6.11?",
        },
        exchange: true,
    },
    Hook {
        name: "page_response",
        why: "response code and report -> response latency",
        target: Target::Functions {
            candidates: &["iopf_group_response", "iommu_page_response"],
            module: None,
            tracepoint: None,
            missing: "CONFIG_IOMMU_IOPF off?",
        },
        exchange: true,
    },
    Hook {
        name: "dequeue",
        why: "iommufd hands the group to user space: splits service time into kernel and user (7.2+, Debian 6.12.115+)",
        target: Target::Functions {
            candidates: &["iopf_group_dequeue"],
            module: None,
            tracepoint: None,
            missing: "before 7.2 / Debian 6.12.115, or CONFIG_IOMMU_IOPF off",
        },
        exchange: true,
    },
    Hook {
        name: "free_group",
        why: "end of a fault group's life: in-flight cleanup",
        target: Target::Functions {
            candidates: &["iopf_free_group"],
            module: None,
            tracepoint: None,
            missing: "CONFIG_IOMMU_IOPF off, or a kernel before 6.9?",
        },
        exchange: true,
    },
    Hook {
        name: "iopf_work",
        why: "the SVA work function: from its start to its page response is the mm fix time",
        target: Target::Functions {
            // The work function of each generation: 6.7/6.8 `iopf_handler`, <= 6.6
            // `iopf_handle_group`, 6.9+ `iommu_sva_handle_iopf`. Before 6.9 that last name is
            // the per-fault SVA function, so the older work functions come first.
            candidates: &["iopf_handler", "iopf_handle_group", "iommu_sva_handle_iopf"],
            module: None,
            tracepoint: None,
            missing: "CONFIG_IOMMU_SVA off?",
        },
        exchange: true,
    },
    Hook {
        name: "mm_fault",
        why: "CPU page-fault count and latency (page-fault mode only; IOPF capture never hooks it)",
        target: Target::Functions {
            candidates: &["handle_mm_fault"],
            module: None,
            tracepoint: Some(("exceptions", "page_fault_user")),
            missing: "no handle_mm_fault?",
        },
        exchange: false,
    },
    Hook {
        name: "io_page_fault",
        why: "unrecoverable faults via report_iommu_fault (AMD, arm-smmu v1/v2, others)",
        target: Target::Tracepoint { category: "iommu", name: "io_page_fault", missing: "CONFIG_IOMMU_API off?" },
        exchange: false,
    },
    Hook {
        name: "viommu_event",
        why: "vIOMMU events (iommufd vEVENTQ, 6.15+): a guest stage-1 fault forwarded to its VMM; queued, lost or unreceived",
        target: Target::Functions {
            candidates: &["iommufd_viommu_report_event"],
            module: Some("iommufd"),
            tracepoint: None,
            missing: "iommufd older than 6.15, not built or not loaded",
        },
        exchange: false,
    },
    Hook {
        name: "dmar_fault",
        why: "unrecoverable Intel VT-d faults: reason code gives the level",
        target: Target::Functions {
            candidates: &["dmar_fault"],
            module: None,
            tracepoint: None,
            missing: "CONFIG_INTEL_IOMMU off?",
        },
        exchange: false,
    },
    Hook {
        name: "smmu_evtq",
        why: "Arm SMMUv3 faults: every event record as the driver takes it off the event queue; the S2 bit gives the stage (of a stall's report too)",
        target: Target::Functions {
            candidates: &["queue_remove_raw"],
            module: Some("arm_smmu_v3"),
            tracepoint: None,
            missing: "CONFIG_ARM_SMMU_V3 off, or its driver not loaded",
        },
        exchange: false,
    },
    Hook {
        name: "amdvi_evtlog",
        why: "unrecoverable AMD-Vi faults: every event log entry as the driver drains the log (no stage bit)",
        target: Target::Functions {
            candidates: &["iommu_poll_events"],
            module: None,
            tracepoint: None,
            missing: "CONFIG_AMD_IOMMU off?",
        },
        exchange: false,
    },
    Hook {
        name: "amdvi_pprlog",
        why: "AMD-Vi peripheral page requests (PCIe PRI): every PPR log entry as the driver drains the log, including those it rejects before reporting",
        target: Target::Functions {
            candidates: &["amd_iommu_poll_ppr_log"],
            module: None,
            tracepoint: None,
            missing: "CONFIG_AMD_IOMMU off, or a kernel before 6.9, where the PPR log drain is inlined",
        },
        exchange: false,
    },
    Hook {
        name: "amdvi_ppr_response",
        why: "AMD-Vi answers to page requests (COMPLETE_PPR), the driver's own rejections included: code, and time from the PPR log",
        target: Target::Functions {
            candidates: &["amd_iommu_complete_ppr"],
            module: None,
            tracepoint: None,
            missing: "CONFIG_AMD_IOMMU off?",
        },
        exchange: false,
    },
    Hook {
        name: "vtd_report_walk",
        why: "recoverable faults of Intel devices: our walk of the unit's tables gives the stage and level",
        target: Target::Functions {
            candidates: &["iommu_report_device_fault"],
            module: None,
            tracepoint: None,
            missing: "CONFIG_IOMMU_IOPF off?",
        },
        exchange: false,
    },
];

pub fn hook(name: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.name == name)
}

/// Where a hook stands: planned by the ladder, then what the attach attempt made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookState {
    /// A rung was chosen; nothing attached yet (`doctor`, or before `run` attaches).
    Planned,
    /// Attached on `rung`.
    Attached,
    /// A rung was chosen but attaching failed; `rung` is then `unavailable` and `reason` says why.
    Failed,
    /// The kernel offers no rung for it; `reason` says why.
    Absent,
    /// The kernel has it, but this run does not use it; `reason` says why.
    Unused,
}

impl HookState {
    pub const ALL: [HookState; 5] =
        [HookState::Planned, HookState::Attached, HookState::Failed, HookState::Absent, HookState::Unused];

    pub fn as_str(self) -> &'static str {
        match self {
            HookState::Planned => "planned",
            HookState::Attached => "attached",
            HookState::Failed => "failed",
            HookState::Absent => "absent",
            HookState::Unused => "unused",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: &'static str,
    pub rung: Rung,
    pub state: HookState,
    /// Function or `category:name` the rung attaches to.
    pub target: Option<String>,
    /// Module defining the function, when not vmlinux.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Why this rung and not a higher one (or why unavailable); empty on the top rung.
    pub reason: String,
}

fn tracepoint_exists(features: &Features, category: &str, name: &str) -> bool {
    features.tracefs_path.as_deref().is_some_and(|p| p.join("events").join(category).join(name).is_dir())
}

/// Hooks that several tasks (kworkers, user-space threads answering faults) can run at once
/// on one CPU, where losing a run loses a fault's answer.
const CONCURRENT_HOOKS: [&str; 4] = ["page_response", "free_group", "iopf_work", "dequeue"];

/// On a fully preemptible kernel, concurrent hooks go on kprobes when kprobes work and no rung
/// was forced: a preempted fentry program makes the trampoline skip that program for the
/// next task on the CPU (counted in recursion_misses), while a kprobe handler runs with
/// preemption off. These hooks fire once per fault group, so the kprobe's extra cost is small.
fn prefer_kprobe(hook: &Hook, kallsyms: &Kallsyms, features: &Features, force: Option<Rung>) -> bool {
    let Target::Functions { candidates, .. } = hook.target else { return false };
    force.is_none()
        && features.preempt_full.available
        && features.kprobe.available
        && CONCURRENT_HOOKS.contains(&hook.name)
        && candidates.iter().any(|c| kallsyms.contains(c))
}

/// Decides the rung for `hook`. `force` pins a rung (testing lower rungs on capable kernels):
/// when the forced rung cannot run, the hook is unavailable with that reason.
/// `tuple_keys`: the kernel's IOPF ABI keys faults by device and group id (`None`: unknown).
pub fn plan(
    hook: &Hook,
    btf: Option<&KernelBtf>,
    kallsyms: &Kallsyms,
    features: &Features,
    force: Option<Rung>,
    tuple_keys: Option<bool>,
) -> Plan {
    let mut p = plan_rung(hook, btf, kallsyms, features, force, tuple_keys);
    p.state = if p.rung == Rung::Unavailable { HookState::Absent } else { HookState::Planned };
    p
}

fn plan_rung(
    hook: &Hook,
    btf: Option<&KernelBtf>,
    kallsyms: &Kallsyms,
    features: &Features,
    force: Option<Rung>,
    tuple_keys: Option<bool>,
) -> Plan {
    let mut p = Plan {
        name: hook.name,
        rung: Rung::Unavailable,
        state: HookState::Absent,
        target: None,
        module: None,
        reason: String::new(),
    };
    let allowed = |r: Rung| force.is_none_or(|f| f == r);
    let mut why: Vec<String> = Vec::new();
    if hook.exchange && !features.bpf_atomics.available && tuple_keys != Some(true) {
        let abi = match tuple_keys {
            Some(_) => "this kernel's IOPF ABI keys faults by group",
            None => "this kernel's IOPF ABI is unknown",
        };
        p.reason = format!(
            "needs BPF compare-and-exchange to track faults in flight (Linux 5.12+), as {abi}: {}",
            features.bpf_atomics.detail
        );
        return p;
    }
    match hook.target {
        Target::Tracepoint { category, name, missing } => {
            if !features.tracefs.available {
                why.push(format!("tracefs: {}", features.tracefs.detail));
            } else if !tracepoint_exists(features, category, name) {
                why.push(format!("tracepoint {category}:{name} not in this kernel ({missing})"));
            } else if allowed(Rung::Tracepoint) {
                p.rung = Rung::Tracepoint;
                p.target = Some(format!("{category}:{name}"));
                return p;
            } else {
                why.push("tracepoint rung not allowed by --force-rung".into());
            }
        }
        Target::Functions { candidates, module, tracepoint, missing } => {
            // fentry: the function must be in vmlinux or module BTF, and trampolines allowed.
            let in_btf = btf.and_then(|b| candidates.iter().find_map(|c| Some((*c, b.find_func(c, module)?))));
            match (&in_btf, btf) {
                (_, None) => why.push("fentry: no kernel BTF".into()),
                (None, Some(_)) => why.push(format!("{}: not in kernel BTF ({missing})", candidates.join("/"))),
                (Some(_), _) if !features.fentry.available => why.push(format!("fentry: {}", features.fentry.detail)),
                (Some(_), _) if prefer_kprobe(hook, kallsyms, features, force) => why.push(
                    "fentry: full preemption here, and concurrent workers run this hook: a preempted fentry program is skipped for the next worker, a kprobe is not".into(),
                ),
                (Some(_), _) if !allowed(Rung::Fentry) => why.push("fentry: not allowed by --force-rung".into()),
                (Some((f, site)), _) => {
                    p.rung = Rung::Fentry;
                    p.target = Some((*f).to_owned());
                    if let FuncSite::Module(m) = site {
                        p.module = Some(m.clone());
                    }
                    p.reason = why.join("; ");
                    return p;
                }
            }
            // kprobe: the symbol must be in kallsyms and kprobes must attach.
            let in_kallsyms = candidates.iter().find(|c| kallsyms.contains(c));
            match in_kallsyms {
                None if in_btf.is_some() => why.push("kprobe: symbol not in /proc/kallsyms".into()),
                None => {}
                Some(_) if !features.kprobe.available => why.push(format!("kprobe: {}", features.kprobe.detail)),
                Some(_) if !allowed(Rung::Kprobe) => why.push("kprobe: not allowed by --force-rung".into()),
                Some(f) => {
                    p.rung = Rung::Kprobe;
                    p.target = Some((*f).to_owned());
                    p.reason = why.join("; ");
                    return p;
                }
            }
            if let Some((category, name)) = tracepoint {
                if !tracepoint_exists(features, category, name) {
                    why.push(format!("tracepoint {category}:{name} not available"));
                } else if !allowed(Rung::Tracepoint) {
                    why.push("tracepoint: not allowed by --force-rung".into());
                } else {
                    p.rung = Rung::Tracepoint;
                    p.target = Some(format!("{category}:{name}"));
                    p.reason = why.join("; ");
                    return p;
                }
            }
        }
    }
    p.reason = why.join("; ");
    p
}

impl Plan {
    /// Records the outcome of attaching this hook.
    pub fn settle(&mut self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.state = HookState::Attached,
            Err(why) => {
                self.state = HookState::Failed;
                self.reason = format!("{} attach failed: {why}", self.rung.as_str());
                self.rung = Rung::Unavailable;
            }
        }
    }

    /// Takes the hook off the plan: the kernel has its function, but what the programs read
    /// is not there (`why`).
    pub fn take_off(&mut self, why: &str) {
        self.rung = Rung::Unavailable;
        self.state = HookState::Absent;
        self.target = None;
        self.reason = why.to_owned();
    }

    /// Adds what the hook will not do here to its reason.
    pub fn note(&mut self, what: &str) {
        self.reason = if self.reason.is_empty() { what.to_owned() } else { format!("{}; {what}", self.reason) };
    }

    /// Marks a planned hook as not used by this run, with the reason.
    pub fn unused(&mut self, why: &str) {
        if self.state == HookState::Planned {
            self.state = HookState::Unused;
            self.reason = why.to_owned();
        }
    }
}

/// Plans every known hook.
pub fn plan_all(
    btf: Option<&KernelBtf>,
    kallsyms: &Kallsyms,
    features: &Features,
    force: Option<Rung>,
    tuple_keys: Option<bool>,
) -> Vec<Plan> {
    HOOKS.iter().map(|h| plan(h, btf, kallsyms, features, force, tuple_keys)).collect()
}
