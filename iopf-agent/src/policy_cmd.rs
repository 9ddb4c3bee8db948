//! `iopf-agent policy check` and `policy explain`: policy files judged without loading any
//! program, and (explain, `check --host`) against this host's devices.

use std::{io::Write as _, path::PathBuf};

use crate::{
    error::AgentError,
    policy::{Mode, PolicySet, SysfsDevice, action::preflight, enumerate},
};

/// Validates `paths`; every error of every file on stderr. With `host`, also resolves the
/// selectors against `sysfs_root` (two policies on one device) and checks that enforce
/// actions can be honoured here. Exit status 1 on any error.
pub fn check(paths: &[PathBuf], host: bool, sysfs_root: &std::path::Path) -> Result<i32, AgentError> {
    let set = match PolicySet::load(paths) {
        Ok(set) => set,
        Err(e) => return Ok(report_errors(&e)),
    };
    if host {
        let resolved = match set.resolve(sysfs_root) {
            Ok(r) => r,
            Err(e) => return Ok(report_errors(&e)),
        };
        if let Err(e) = preflight::check(&set, &resolved, sysfs_root) {
            return Ok(report_errors(&e));
        }
    }
    let mut out = std::io::stdout().lock();
    for p in set.policies() {
        let actions: Vec<&str> = p.actions().iter().map(|a| a.label()).collect();
        let _ = writeln!(
            out,
            "{}: {} ({}): {}; actions [{}]",
            p.location(),
            p.name(),
            p.mode().label(),
            p.selector().describe(),
            actions.join(", ")
        );
    }
    let what = if host { " (and this host can honour them)" } else { "" };
    let _ = writeln!(out, "ok: {} policies{what}", set.policies().len());
    Ok(0)
}

fn report_errors(e: &crate::policy::PolicyError) -> i32 {
    let errors = e.errors();
    let mut err = std::io::stderr().lock();
    for e in &errors {
        let _ = writeln!(err, "{e}");
    }
    let _ = writeln!(err, "{} error{}", errors.len(), if errors.len() == 1 { "" } else { "s" });
    1
}

/// For each policy: the devices of this host it selects, each key's match, the devices it
/// misses by one key, and what it would select if a device appeared.
pub fn explain(paths: &[PathBuf], sysfs_root: &std::path::Path) -> Result<i32, AgentError> {
    let set = match PolicySet::load(paths) {
        Ok(set) => set,
        Err(e) => return Ok(report_errors(&e)),
    };
    let devices = enumerate(sysfs_root)?;
    let resolved = set.resolve_devices(&devices);
    let mut out = std::io::stdout().lock();
    for p in set.policies() {
        let acting: Vec<&str> = p.actions().iter().filter(|a| a.acts()).map(|a| a.label()).collect();
        let mode = match (p.mode(), acting.is_empty()) {
            (Mode::Enforce, false) => format!("enforce: {} act", acting.join(", ")),
            (Mode::Monitor, false) => format!("monitor: {} would only be logged", acting.join(", ")),
            (m, true) => m.label().to_owned(),
        };
        let _ = writeln!(out, "policy {} ({}, {mode})", p.name(), p.location());
        let _ = writeln!(out, "  selects {}", p.selector().describe());
        let mut selected = 0;
        let mut near: Vec<(&SysfsDevice, String)> = Vec::new();
        for d in &devices {
            let keys = p.selector().explain(d);
            let failed: Vec<_> = keys.iter().filter(|k| !k.matches).collect();
            let shown = |k: &crate::policy::KeyMatch| {
                format!("{}={} (device: {})", k.key, k.want, k.got.as_deref().unwrap_or("none"))
            };
            match failed.as_slice() {
                [] => {
                    selected += 1;
                    let why: Vec<String> = keys.iter().map(|k| format!("{}={} matches", k.key, k.want)).collect();
                    let _ = writeln!(out, "  + {} (bus {}): {}", d.name, d.bus, why.join(", "));
                }
                // One key short, and not just the name: worth showing (a typo in a driver name).
                [k] if keys.len() > 1 => near.push((d, shown(k))),
                _ => {}
            }
        }
        if selected == 0 {
            let _ = writeln!(out, "  no device of this host now");
        }
        for (d, why) in near {
            let _ = writeln!(out, "  - {} (bus {}) is not selected: {why}", d.name, d.bus);
        }
    }
    if let Err(e) = resolved {
        // Conflicts: the agent would refuse this set here.
        let _ = writeln!(out, "the agent would refuse these policies on this host:");
        for e in e.errors() {
            let _ = writeln!(out, "  {e}");
        }
        return Ok(1);
    }
    Ok(0)
}
