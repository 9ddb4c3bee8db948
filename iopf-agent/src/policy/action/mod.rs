//! What a policy does about a violation: `log`, `alert`, `exec` and `isolate`.
//!
//! `exec` and `isolate` act only in enforce mode; in monitor mode they log what they would
//! have done. Parsing and validation are here (no privileges needed), the host checks that
//! an enforce action can be honoured in `preflight`, the acting in `dispatch`.

pub mod dispatch;
pub mod event;
pub mod pci;
pub mod preflight;
mod raw;

use std::time::Duration;

pub(super) use raw::{NAMES, compile_actions};

/// One action of a policy, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// One line on stderr per violation (the default when a policy lists no actions).
    Log,
    /// A `policy_alert` NDJSON line on stdout and `iopf_policy_alerts_total`.
    Alert,
    /// Runs a command (no shell) with the violation as JSON on stdin.
    Exec(Exec),
    /// Stops the device's DMA: clears Bus Master Enable in its PCI command register.
    Isolate(Isolate),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// `argv`, the program an absolute path.
    pub command: Vec<String>,
    /// The command is killed (SIGKILL) when it runs longer.
    pub timeout: Duration,
    /// Runs beyond this many per minute (per policy) are skipped and counted.
    pub max_per_minute: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolate {
    /// After clearing Bus Master Enable, also unbind the device's driver.
    pub unbind_driver: bool,
}

impl Action {
    /// Its name in YAML and in metric labels.
    pub const fn label(&self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Alert => "alert",
            Action::Exec(_) => "exec",
            Action::Isolate(_) => "isolate",
        }
    }

    /// Whether it changes anything outside the agent (acts only in enforce mode).
    pub const fn acts(&self) -> bool {
        matches!(self, Action::Exec(_) | Action::Isolate(_))
    }
}

/// Defaults and limits of `exec` (documented in the README).
pub const EXEC_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
pub const EXEC_TIMEOUT_MAX: Duration = Duration::from_secs(300);
pub const EXEC_RATE_DEFAULT: u32 = 10;
pub const EXEC_RATE_MAX: u32 = 600;
/// Longest argument and most arguments of an `exec` command.
pub const EXEC_ARG_MAX: usize = 4096;
pub const EXEC_ARGS_MAX: usize = 64;
