//! Can this host honour an enforce policy's actions? Checked before anything is loaded (and
//! before a reload is accepted), so an enforce policy never silently acts as monitor.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use super::{Action, pci};
use crate::policy::{Mode, PolicyError, PolicySet, Resolved};

/// Every reason an enforce action could not act here, all at once; `Ok` when none.
///
/// - `exec`: the program exists, is a regular file and executable.
/// - `isolate`: each device the policy selects now is a PCI function whose config space
///   this process can open for writing (and, with `unbindDriver`, whose driver's `unbind`).
pub fn check(set: &PolicySet, resolved: &Resolved, sysfs_root: &Path) -> Result<(), PolicyError> {
    let errors: Vec<PolicyError> = problems(set, resolved, sysfs_root)
        .into_iter()
        .map(|(policy, at, message)| PolicyError::Action { policy, at, message })
        .collect();
    match PolicyError::from_list(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `(policy, policy location, message)` per problem.
pub fn problems(set: &PolicySet, resolved: &Resolved, sysfs_root: &Path) -> Vec<(String, String, String)> {
    let mut out = kernel_problems(set);
    for p in set.policies().iter().filter(|p| p.mode() == Mode::Enforce) {
        let mut say = |m: String| out.push((p.name().to_owned(), p.location(), m));
        for a in p.actions() {
            match a {
                Action::Exec(e) => {
                    if let Err(m) = executable(Path::new(&e.command[0])) {
                        say(format!("exec: {m}"));
                    }
                }
                Action::Isolate(i) => {
                    // A device not present yet is checked when it appears.
                    let present =
                        resolved.devices.iter().filter(|(d, r)| r.has(p.name()) && !resolved.expected.contains(*d));
                    for dev in present.map(|(d, _)| d) {
                        if let Err(m) = isolatable(sysfs_root, dev, i.unbind_driver) {
                            say(format!("isolate: device `{dev}` {m}"));
                        }
                    }
                }
                Action::Log | Action::Alert => {}
            }
        }
    }
    out
}

/// What no policy can ask of this kernel, whatever its mode: a fault rate is counted in one
/// window word per device moved on by compare-and-exchange, which a kernel before 5.12 lacks.
pub fn kernel_problems(set: &PolicySet) -> Vec<(String, String, String)> {
    let Some(why) = crate::features::exchange_absent() else { return Vec::new() };
    set.policies()
        .iter()
        .filter(|p| p.rule().max_faults_per_window != 0)
        .map(|p| {
            let m = format!(
                "expect.maxFaultRate cannot be checked on this kernel: {why}; remove maxFaultRate, or run where BPF has compare-and-exchange (Linux 5.12+)"
            );
            (p.name().to_owned(), p.location(), m)
        })
        .collect()
}

/// `kernel_problems` as one error (`Ok` when none).
pub fn check_kernel(set: &PolicySet) -> Result<(), PolicyError> {
    let errors: Vec<PolicyError> = kernel_problems(set)
        .into_iter()
        .map(|(policy, at, message)| PolicyError::Action { policy, at, message })
        .collect();
    match PolicyError::from_list(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn executable(prog: &Path) -> Result<(), String> {
    let md = std::fs::metadata(prog).map_err(|e| format!("`{}`: {e}", prog.display()))?;
    if !md.is_file() {
        return Err(format!("`{}` is not a regular file", prog.display()));
    }
    if md.permissions().mode() & 0o111 == 0 {
        return Err(format!("`{}` is not executable", prog.display()));
    }
    Ok(())
}

fn isolatable(sysfs_root: &Path, dev: &str, unbind: bool) -> Result<(), String> {
    let dir = pci::device_dir(sysfs_root, dev);
    if !dir.exists() {
        return Err("is not a PCI device: isolate clears Bus Master Enable in PCI config space".into());
    }
    pci::writable(&dir.join("config")).map_err(|e| format!("cannot be isolated here: {e} (needs root)"))?;
    if unbind && pci::driver(&dir).is_some() {
        pci::writable(&dir.join("driver/unbind")).map_err(|e| format!("cannot have its driver unbound: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::{SysfsDevice, tests::TempDir};

    fn enforce(name: &str, selector: &str, actions: &str) -> String {
        format!(
            "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: enforce\n  selector: {selector}\n  expect:\n    unrecoverable: none\n  actions: {actions}\n"
        )
    }

    fn dev(name: &str, bus: &str) -> SysfsDevice {
        SysfsDevice { name: name.into(), bus: bus.into(), ..SysfsDevice::default() }
    }

    #[test]
    fn every_unhonourable_enforce_action_is_reported() {
        let t = TempDir::new("preflight");
        // A PCI function with config space, and a platform device.
        t.write("bus/pci/devices/0000:00:03.0/config", "");
        std::fs::create_dir_all(t.0.join("bus/platform/devices/dmar0")).unwrap();
        let script = t.write("notify.sh", "#!/bin/sh\n");
        let text = [
            enforce("edu", "{pci: \"0000:00:03.0\"}", "[isolate: {}]"),
            enforce("plat", "{name: dmar0}", "[log, isolate: {}]"),
            enforce("cmd", "{name: gone}", &format!("[exec: {{command: [\"{}\"]}}]", script.display())),
        ]
        .join("---\n");
        let set = PolicySet::parse(&PathBuf::from("p.yaml"), &text).unwrap();
        let resolved = set.resolve_devices(&[dev("0000:00:03.0", "pci"), dev("dmar0", "platform")]).unwrap();
        let got = check(&set, &resolved, &t.0).unwrap_err().to_string();
        assert_eq!(
            got,
            format!(
                "p.yaml:15:9: policy `plat`: isolate: device `dmar0` is not a PCI device: isolate clears Bus Master Enable in PCI config space\n\
                 p.yaml:26:9: policy `cmd`: exec: `{}` is not executable",
                script.display()
            )
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let set = PolicySet::parse(&PathBuf::from("p.yaml"), &text.replace("{name: dmar0}", "{name: none}")).unwrap();
        let resolved = set.resolve_devices(&[dev("0000:00:03.0", "pci"), dev("dmar0", "platform")]).unwrap();
        check(&set, &resolved, &t.0).unwrap();
    }

    #[test]
    fn monitor_mode_needs_nothing_of_the_host() {
        let text = enforce("m", "{name: dmar0}", "[isolate: {unbindDriver: true}, exec: {command: [/nonexistent]}]")
            .replace("mode: enforce", "mode: monitor");
        let set = PolicySet::parse(&PathBuf::from("p.yaml"), &text).unwrap();
        let resolved = set.resolve_devices(&[dev("dmar0", "platform")]).unwrap();
        check(&set, &resolved, Path::new("/nonexistent")).unwrap();
    }
}
