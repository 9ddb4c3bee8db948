//! The agent's top-level error, its exit codes, and one-line error chains.

use thiserror::Error;

use crate::{loader::LoadError, pagefault::PageFaultError, server::ServeError};

/// Exit codes (documented in README.md):
/// 0 ok, 1 runtime failure, 2 bad usage, 3 not privileged, 4 the kernel cannot do what was
/// asked (missing feature, program refused, required hook unavailable), 5 listen address
/// unusable.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    PageFault(#[from] PageFaultError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("unknown hook `{0}` (known hooks: {known})", known = crate::hooks::HOOKS.iter().map(|h| h.name).collect::<Vec<_>>().join(", "))]
    UnknownHook(String),
    #[error("required hook `{name}` cannot attach: {reason}")]
    Required { name: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Scenario(#[from] crate::simulate::scenario::ScenarioError),
    #[error("injecting faults failed")]
    Inject(#[from] crate::iopf::inject::InjectError),
    #[error("reading IOPF maps failed")]
    Maps(#[from] crate::iopf::maps::MapsError),
    /// Boxed: it carries the program, hook and target names.
    #[error("attaching IOPF hooks failed")]
    Attach(#[source] Box<crate::iopf::attach::AttachError>),
    /// Boxed: the policy error carries every problem of a load.
    #[error(transparent)]
    Policy(Box<crate::policy::PolicyError>),
    #[error("installing policies failed")]
    Install(#[from] crate::policy::install::InstallError),
    #[error("the kernel's counters differ from the scenario's expected totals")]
    SimulationMismatch,
    /// Flags that name something that is not there (checked before anything loads).
    #[error("{0}")]
    Usage(String),
    #[error("`{0}` is not a PCI device (no /sys/bus/pci/devices/{0}); give its address as SSSS:BB:DD.F")]
    NotPci(String),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error(transparent)]
    Devices(#[from] crate::devices::DevicesError),
    #[error(transparent)]
    Pci(#[from] crate::policy::action::pci::PciError),
    #[error("this kernel cannot run the in-flight IOPF programs: {0} (`iopf-agent doctor` shows what it has)")]
    NoAtomics(String),
    /// Boxed: it carries paths and aya's errors.
    #[error(transparent)]
    Pin(Box<crate::pin::PinError>),
}

impl From<crate::pin::PinError> for AgentError {
    fn from(e: crate::pin::PinError) -> Self {
        AgentError::Pin(Box::new(e))
    }
}

impl From<crate::iopf::attach::AttachError> for AgentError {
    fn from(e: crate::iopf::attach::AttachError) -> Self {
        AgentError::Attach(Box::new(e))
    }
}

impl From<crate::policy::PolicyError> for AgentError {
    fn from(e: crate::policy::PolicyError) -> Self {
        AgentError::Policy(Box::new(e))
    }
}

impl AgentError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Load(LoadError::NotPrivileged) => 3,
            AgentError::Load(LoadError::Refused(_) | LoadError::Patch(_)) => 4,
            AgentError::Load(LoadError::Shared { .. }) => 1,
            AgentError::PageFault(crate::pagefault::PageFaultError::NotPermitted(_)) => 3,
            AgentError::PageFault(_) | AgentError::Required { .. } => 4,
            AgentError::Serve(ServeError::InUse { .. } | ServeError::Bind { .. }) => 5,
            AgentError::Serve(ServeError::WebConfig(_)) => 2,
            AgentError::UnknownHook(_) | AgentError::Scenario(_) | AgentError::Policy(_) => 2,
            AgentError::Install(crate::policy::install::InstallError::Slots { .. }) => 2,
            AgentError::Install(_) => 1,
            AgentError::Inject(_) | AgentError::Attach(_) | AgentError::NoAtomics(_) => 4,
            AgentError::Maps(_) | AgentError::SimulationMismatch => 1,
            AgentError::Serve(ServeError::Serve(_)) | AgentError::Io(_) => 1,
            AgentError::NotPci(_) | AgentError::Usage(_) => 2,
            AgentError::Pci(crate::policy::action::pci::PciError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                3
            }
            AgentError::Pci(_) | AgentError::Devices(_) => 1,
            // A directory that cannot hold pins, or is in use: the flag's value is wrong.
            AgentError::Pin(e) => match **e {
                crate::pin::PinError::NotBpffs(_) | crate::pin::PinError::InUse(_) => 2,
                crate::pin::PinError::Unpinnable { .. } => 4,
                _ => 1,
            },
            AgentError::Record(crate::record::RecordError::Io { .. }) => 1,
            // A file that is not a readable recording is bad input.
            AgentError::Record(_) => 2,
        }
    }
}

/// "outer: inner: innermost" for any error with sources.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    // aya appends the verifier log, which can run to megabytes: keep its last lines, where
    // the verdict is, so the error stays one readable line. A load refused before the
    // verifier ran leaves the log empty.
    match s.split_once("Verifier output:") {
        None => s,
        Some((head, log)) => {
            let head = head.trim_end().trim_end_matches('.');
            let lines: Vec<&str> = log.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            // The verdict is the line before the statistics ("verification time", "stack
            // depth", "processed N insns"), which a refusal ends with too: keep it and them.
            // With IOPF_VERIFIER_LOG=debug the full log is there: keep a few lines more.
            let stats = lines.iter().rev().take_while(|l| is_stats_line(l)).count();
            let reason = if std::env::var("IOPF_VERIFIER_LOG").as_deref() == Ok("debug") { 9 } else { 1 };
            let keep = stats + reason;
            match &lines[lines.len().saturating_sub(keep)..] {
                [] => head.to_owned(),
                tail => format!("{head}; verifier: {}", tail.join(" | ")),
            }
        }
    }
}

/// The statistics lines a verifier log ends with, whether the load passed or not.
fn is_stats_line(l: &str) -> bool {
    l.starts_with("verification time") || l.starts_with("stack depth") || l.starts_with("processed ")
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("program `p` failed. Verifier output: {0}")]
    struct Refusal(String);

    #[test]
    fn a_refusal_keeps_the_verdict_and_the_statistics() {
        let log = "0: (b7) r0 = 0\n1: (95) exit\nBPF_STX uses reserved fields\nverification time 877 usec\nstack depth 0+0\nprocessed 0 insns (limit 1000000) max_states_per_insn 0\n";
        assert_eq!(
            super::chain(&Refusal(log.into())),
            "program `p` failed; verifier: BPF_STX uses reserved fields | verification time 877 usec | stack depth 0+0 | processed 0 insns (limit 1000000) max_states_per_insn 0"
        );
        // A log without statistics: its last line.
        assert_eq!(super::chain(&Refusal("a\nb\n".into())), "program `p` failed; verifier: b");
    }
}
