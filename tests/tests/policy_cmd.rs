//! `policy check` and `policy explain` as a user runs them: no privileges, nothing loaded,
//! every error of every file at once; the host checks against a synthetic sysfs.

use std::path::PathBuf;

use iopf_tests::agent::run_to_end;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("iopf-policy-cmd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
    fn s(&self, rel: &str) -> String {
        self.0.join(rel).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn policy(name: &str, mode: &str, selector: &str, tail: &str) -> String {
    format!(
        "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: {mode}\n  selector: {selector}\n  expect:\n    unrecoverable: none\n{tail}"
    )
}

/// A sysfs with one PCI function (vendor:device 1234:11e8, driver virtio-pci, group 7,
/// config space) and one platform device.
fn sysfs(d: &Dir) -> String {
    let dev = "sys/bus/pci/devices/0000:00:03.0";
    d.write(&format!("{dev}/vendor"), "0x1234\n");
    d.write(&format!("{dev}/device"), "0x11e8\n");
    d.write(&format!("{dev}/config"), &"\0".repeat(64));
    std::fs::create_dir_all(d.0.join("sys/bus/pci/drivers/virtio-pci")).unwrap();
    std::fs::create_dir_all(d.0.join("sys/kernel/iommu_groups/7")).unwrap();
    std::os::unix::fs::symlink("../../drivers/virtio-pci", d.0.join(format!("{dev}/driver"))).unwrap();
    std::os::unix::fs::symlink("../../../../kernel/iommu_groups/7", d.0.join(format!("{dev}/iommu_group"))).unwrap();
    std::fs::create_dir_all(d.0.join("sys/bus/platform/devices/dmar0")).unwrap();
    d.s("sys")
}

#[test]
fn check_reports_every_error_of_every_file_and_exits_1() {
    let d = Dir::new("errors");
    d.write(
        "a.yaml",
        "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: a\nspec:\n  moed: monitor\n  selector: {drivr: idxd}\n  expect: {levels: [frist]}\n",
    );
    d.write("b.yaml", &policy("b", "enforce", "{driver: idxd}", "  actions: [exec: {command: [run.sh]}]\n"));
    d.write("c.yaml", &policy("c", "monitor", "{driver: vfio-pci}", ""));
    let (code, out, err) = run_to_end(&["policy", "check", &d.s("")]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(out, "");
    let (a, b) = (d.s("a.yaml"), d.s("b.yaml"));
    let want = [
        format!("{a}:6:3: spec: `mode` is missing"),
        format!(
            "{a}:6:3: spec.moed: unknown key: did you mean `mode`? expected one of mode, selector, expect, actions"
        ),
        format!("{a}:7:13: spec.selector: needs at least one of name, pci, vendorDevice, driver, iommuGroup"),
        format!(
            "{a}:7:14: spec.selector.drivr: unknown key: did you mean `driver`? expected one of name, pci, vendorDevice, driver, iommuGroup, pasids"
        ),
        format!("{a}:8:21: spec.expect.levels[0]: `frist` is not one of unknown, first, second: did you mean `first`?"),
        format!(
            "{b}:10:30: spec.actions[0].exec.command[0]: `run.sh` is not an absolute path (no PATH lookup, no shell)"
        ),
        "6 errors".to_owned(),
    ];
    assert_eq!(err.lines().collect::<Vec<_>>(), want, "{err}");
}

#[test]
fn check_of_good_files_lists_them_and_exits_0() {
    let d = Dir::new("good");
    let p = d.write("p.yaml", &policy("edu", "enforce", "{pci: \"0000:00:03.0\"}", "  actions: [log, isolate]\n"));
    let (code, out, err) = run_to_end(&["policy", "check", p.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!(
            "{}:4:9: edu (enforce): a device at PCI address 0000:00:03.0; actions [log, isolate]\nok: 1 policies\n",
            p.display()
        )
    );
}

#[test]
fn check_host_refuses_enforce_actions_this_host_cannot_honour() {
    let d = Dir::new("host");
    let root = sysfs(&d);
    let p = d.write(
        "p.yaml",
        &[
            policy("plat", "enforce", "{name: dmar0}", "  actions: [isolate]\n"),
            policy("cmd", "enforce", "{driver: virtio-pci}", "  actions: [exec: {command: [/nonexistent/notify]}]\n"),
        ]
        .join("---\n"),
    );
    let ps = p.display().to_string();
    let (code, _, err) = run_to_end(&["policy", "check", "--host", "--sysfs-root", &root, &ps]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "{ps}:4:9: policy `plat`: isolate: device `dmar0` is not a PCI device: isolate clears Bus Master Enable in PCI config space\n\
             {ps}:15:9: policy `cmd`: exec: `/nonexistent/notify`: No such file or directory (os error 2)\n2 errors\n"
        )
    );
    // Without --host the same files are valid.
    let (code, _, err) = run_to_end(&["policy", "check", &ps]);
    assert_eq!(code, Some(0), "{err}");
    // The PCI function with config space can be isolated.
    let ok = d.write("ok.yaml", &policy("edu", "enforce", "{pci: \"0000:00:03.0\"}", "  actions: [isolate]\n"));
    let (code, out, err) = run_to_end(&["policy", "check", "--host", "--sysfs-root", &root, ok.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.ends_with("ok: 1 policies (and this host can honour them)\n"), "{out}");
}

#[test]
fn explain_shows_each_key_match_and_near_misses() {
    let d = Dir::new("explain");
    let root = sysfs(&d);
    let p = d.write(
        "p.yaml",
        &[
            policy("edu", "enforce", "{vendorDevice: \"1234:11e8\", iommuGroup: 7}", "  actions: [isolate]\n"),
            policy("typo", "monitor", "{pci: \"0000:00:03.0\", driver: virtio_pci}", ""),
        ]
        .join("---\n"),
    );
    let ps = p.display().to_string();
    let (code, out, err) = run_to_end(&["policy", "explain", "--sysfs-root", &root, &ps]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!(
            "policy edu ({ps}:4:9, enforce: isolate act)\n\
             \x20 selects a device with PCI ID 1234:11e8, in IOMMU group 7\n\
             \x20 + 0000:00:03.0 (bus pci): vendorDevice=1234:11e8 matches, iommuGroup=7 matches\n\
             policy typo ({ps}:15:9, monitor)\n\
             \x20 selects a device at PCI address 0000:00:03.0, bound to driver `virtio_pci`\n\
             \x20 no device of this host now\n\
             \x20 - 0000:00:03.0 (bus pci) is not selected: driver=virtio_pci (device: virtio-pci)\n"
        )
    );
}

#[test]
fn run_with_an_enforce_action_it_cannot_honour_fails_before_loading() {
    let d = Dir::new("run");
    let p = d.write(
        "p.yaml",
        &policy("cmd", "enforce", "{name: nothing-here}", "  actions: [exec: {command: [/nonexistent/notify]}]\n"),
    );
    let (code, _, err) = run_to_end(&["run", "--listen", "127.0.0.1:0", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err,
        format!(
            "iopf-agent: error: {}:4:9: policy `cmd`: exec: `/nonexistent/notify`: No such file or directory (os error 2)\n",
            p.display()
        )
    );
}
