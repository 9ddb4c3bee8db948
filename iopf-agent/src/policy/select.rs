//! Selector resolution: the devices sysfs lists under `bus/*/devices/*`, their driver,
//! IOMMU group and PCI IDs, and the policy each of them falls under.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use super::{DevicePolicies, DeviceRule, Policy, PolicyError, Resolved, Selector};

/// What a selector can look at for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysfsDevice {
    /// `dev_name()`: the entry name under `bus/<bus>/devices`.
    pub name: String,
    pub bus: String,
    /// Basename of the `driver` link, when bound.
    pub driver: Option<String>,
    /// Basename of the `iommu_group` link, when the device has one.
    pub iommu_group: Option<u32>,
    /// `vendor` and `device` attributes, PCI devices only.
    pub vendor_device: Option<(u16, u16)>,
}

/// Every device of every bus under `<sysfs_root>/bus`, sorted by bus then name.
///
/// Only the bus and device directories must be readable; a missing or unreadable attribute
/// (a device going away mid-walk, say) leaves that field `None`, which no selector key matches.
pub fn enumerate(sysfs_root: &Path) -> Result<Vec<SysfsDevice>, PolicyError> {
    let buses = sysfs_root.join("bus");
    let mut out = Vec::new();
    for bus in entry_names(&buses)? {
        let dir = buses.join(&bus).join("devices");
        if !dir.is_dir() {
            continue;
        }
        for name in entry_names(&dir)? {
            out.push(read_device(&dir.join(&name), &bus, name));
        }
    }
    Ok(out)
}

/// Entry names of a directory, sorted; names that are not UTF-8 cannot be selected by a
/// YAML string, so they are left out.
fn entry_names(dir: &Path) -> Result<Vec<String>, PolicyError> {
    let read_err = |source| PolicyError::Read { path: dir.display().to_string(), source };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        if let Ok(name) = entry.map_err(read_err)?.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn read_device(dir: &Path, bus: &str, name: String) -> SysfsDevice {
    let vendor_device = if bus == "pci" { pci_ids(dir) } else { None };
    SysfsDevice {
        name,
        bus: bus.to_owned(),
        driver: link_name(&dir.join("driver")),
        iommu_group: link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
        vendor_device,
    }
}

/// Basename of a symlink's target (`driver -> ../../bus/pci/drivers/idxd` gives `idxd`).
fn link_name(link: &Path) -> Option<String> {
    std::fs::read_link(link).ok()?.file_name()?.to_str().map(str::to_owned)
}

fn pci_ids(dir: &Path) -> Option<(u16, u16)> {
    Some((hex_attr(&dir.join("vendor"))?, hex_attr(&dir.join("device"))?))
}

/// A sysfs hex attribute such as `0x8086\n`.
fn hex_attr(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim();
    u16::from_str_radix(t.strip_prefix("0x").unwrap_or(t), 16).ok()
}

impl Selector {
    /// Every key given must match; an absent attribute matches no key that asks for it.
    pub fn matches(&self, d: &SysfsDevice) -> bool {
        self.name.as_ref().is_none_or(|n| *n == d.name)
            && self.pci.as_ref().is_none_or(|a| d.bus == "pci" && *a == d.name)
            && self.vendor_device.is_none_or(|vd| d.vendor_device == Some(vd))
            && self.driver.as_ref().is_none_or(|x| d.driver.as_ref() == Some(x))
            && self.iommu_group.is_none_or(|g| d.iommu_group == Some(g))
    }
}

/// One selector key checked against one device: the key, what the policy asks, what the
/// device has (`None`: it has no such attribute), and whether they match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMatch {
    pub key: &'static str,
    pub want: String,
    pub got: Option<String>,
    pub matches: bool,
}

impl Selector {
    /// Every given key of the selector against `d`, in the file's key order.
    pub fn explain(&self, d: &SysfsDevice) -> Vec<KeyMatch> {
        let mut out = Vec::new();
        let mut key = |key, want: Option<String>, got: Option<String>, matches: bool| {
            if let Some(want) = want {
                out.push(KeyMatch { key, want, got, matches });
            }
        };
        let name = Some(d.name.clone());
        key("name", self.name.clone(), name.clone(), self.name.as_ref().is_none_or(|n| *n == d.name));
        let pci = (d.bus == "pci").then(|| d.name.clone());
        key("pci", self.pci.clone(), pci, self.pci.as_ref().is_none_or(|a| d.bus == "pci" && *a == d.name));
        let vd = |v: (u16, u16)| format!("{:04x}:{:04x}", v.0, v.1);
        key(
            "vendorDevice",
            self.vendor_device.map(vd),
            d.vendor_device.map(vd),
            self.vendor_device.is_none_or(|x| d.vendor_device == Some(x)),
        );
        key(
            "driver",
            self.driver.clone(),
            d.driver.clone(),
            self.driver.as_ref().is_none_or(|x| d.driver.as_ref() == Some(x)),
        );
        key(
            "iommuGroup",
            self.iommu_group.map(|g| g.to_string()),
            d.iommu_group.map(|g| g.to_string()),
            self.iommu_group.is_none_or(|g| d.iommu_group == Some(g)),
        );
        out
    }

    /// The selector in words, for devices that are not there yet.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = &self.name {
            parts.push(format!("named `{n}` (any bus)"));
        }
        if let Some(a) = &self.pci {
            parts.push(format!("at PCI address {a}"));
        }
        if let Some((v, d)) = self.vendor_device {
            parts.push(format!("with PCI ID {v:04x}:{d:04x}"));
        }
        if let Some(x) = &self.driver {
            parts.push(format!("bound to driver `{x}`"));
        }
        if let Some(g) = self.iommu_group {
            parts.push(format!("in IOMMU group {g}"));
        }
        match &self.pasids {
            None => format!("a device {}", parts.join(", ")),
            Some(_) => format!("the faults with a PASID in {} of a device {}", self.pasids_text(), parts.join(", ")),
        }
    }
}

/// The policies of every selected device name. A device may be under several policies when
/// their `pasids` are disjoint; two policies that could both hold one fault of a device, or
/// more of them than the kernel side holds, fail the whole resolution (every such device
/// is reported).
pub(super) fn resolve(policies: &[Policy], devices: &[SysfsDevice]) -> Result<Resolved, PolicyError> {
    let mut owner: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut reported: BTreeSet<(String, String, String)> = BTreeSet::new();
    for p in policies {
        for d in devices.iter().filter(|d| p.selector().matches(d)) {
            admit(owner.entry(&d.name).or_default(), &d.name, p, &mut errors, &mut reported);
        }
    }
    if let Some(e) = PolicyError::from_list(errors) {
        return Err(e);
    }
    let used: BTreeSet<&str> = owner.values().flatten().map(|p| p.name()).collect();
    let unmatched = policies.iter().filter(|p| !used.contains(p.name())).map(|p| p.name().to_owned()).collect();
    let devices = owner
        .into_iter()
        .map(|(dev, ps)| (dev.to_owned(), DevicePolicies { rules: ps.into_iter().map(DeviceRule::of).collect() }))
        .collect();
    Ok(Resolved { devices, unmatched, expected: BTreeSet::new() })
}

/// Puts `p` among device `dev`'s policies unless it clashes with one there (errors pushed,
/// each clash once).
fn admit<'a>(
    under: &mut Vec<&'a Policy>,
    dev: &str,
    p: &'a Policy,
    errors: &mut Vec<PolicyError>,
    reported: &mut BTreeSet<(String, String, String)>,
) {
    // The same name on two buses, both selected by this policy: one device slot.
    if under.iter().any(|q| q.name() == p.name()) {
        return;
    }
    if let Some(q) = under.iter().find(|q| q.selector().pasids_overlap(p.selector())) {
        if reported.insert((dev.to_owned(), q.name().to_owned(), p.name().to_owned())) {
            errors.push(conflict(dev, q, p));
        }
        return;
    }
    if under.len() == iopf_common::policy::RULES_PER_DEVICE {
        if reported.insert((dev.to_owned(), String::new(), String::new())) {
            let mut names: Vec<String> = under.iter().map(|q| q.name().to_owned()).collect();
            names.push(p.name().to_owned());
            errors.push(PolicyError::Crowded { device: dev.to_owned(), policies: names });
        }
        return;
    }
    under.push(p);
}

impl Selector {
    /// The one device name this selector can match, when it names it exactly (only `name`
    /// and/or `pci`, equal when both): known before the device exists.
    pub fn exact_name(&self) -> Option<&str> {
        let only_names = self.vendor_device.is_none() && self.driver.is_none() && self.iommu_group.is_none();
        match (&self.name, &self.pci) {
            _ if !only_names => None,
            (Some(n), None) => Some(n),
            (None, Some(a)) => Some(a),
            (Some(n), Some(a)) if n == a => Some(n),
            _ => None,
        }
    }
}

/// Adds the devices exactly named by a selector that are not present now (on any bus), so
/// that a device faulting within milliseconds of appearing is already checked. Clashes are
/// judged as for present devices.
pub(super) fn add_expected(policies: &[Policy], present: &[SysfsDevice], r: &mut Resolved) -> Result<(), PolicyError> {
    let mut owner: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut reported = BTreeSet::new();
    for p in policies {
        let Some(name) = p.selector().exact_name() else { continue };
        if present.iter().any(|d| d.name == name) {
            continue;
        }
        admit(owner.entry(name).or_default(), name, p, &mut errors, &mut reported);
    }
    if let Some(e) = PolicyError::from_list(errors) {
        return Err(e);
    }
    for (name, ps) in owner {
        r.expected.insert(name.to_owned());
        r.devices.insert(name.to_owned(), DevicePolicies { rules: ps.into_iter().map(DeviceRule::of).collect() });
    }
    Ok(())
}

fn conflict(device: &str, first: &Policy, second: &Policy) -> PolicyError {
    let (a, b) = (first.selector(), second.selector());
    let why = if a.pasids.is_none() && b.pasids.is_none() {
        String::new()
    } else {
        format!(
            "; their PASIDs overlap (`{}`: {}, `{}`: {}): give each a `pasids` selector disjoint from the other's",
            first.name(),
            a.pasids_text(),
            second.name(),
            b.pasids_text()
        )
    };
    PolicyError::Conflict(Box::new(super::Conflict {
        device: device.to_owned(),
        first: first.name().to_owned(),
        first_at: first.location(),
        second: second.name().to_owned(),
        second_at: second.location(),
        why,
    }))
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::symlink, path::PathBuf};

    use iopf_common::policy::{RULE_ACTIVE, RULE_ENFORCE, Rule};

    use super::super::{
        PolicySet,
        tests::{TempDir, policy},
    };
    use super::*;

    /// A PCI device laid out as sysfs does: the real directory under `devices/`, a link to
    /// it under `bus/pci/devices/`, and `driver`/`iommu_group` links inside it.
    fn pci(root: &Path, name: &str, ids: Option<(&str, &str)>, driver: Option<&str>, group: Option<u32>) {
        let real = root.join("devices/pci0000:00").join(name);
        std::fs::create_dir_all(&real).unwrap();
        if let Some((vendor, device)) = ids {
            std::fs::write(real.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(real.join("device"), format!("{device}\n")).unwrap();
        }
        links(&real, driver.map(|d| format!("../../../bus/pci/drivers/{d}")), group);
        let bus = root.join("bus/pci/devices");
        std::fs::create_dir_all(&bus).unwrap();
        symlink(format!("../../../devices/pci0000:00/{name}"), bus.join(name)).unwrap();
    }

    /// A device of another bus, as a plain directory (enumeration must not need the links).
    fn other(root: &Path, bus: &str, name: &str, driver: Option<&str>, group: Option<u32>) -> PathBuf {
        let dir = root.join("bus").join(bus).join("devices").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        links(&dir, driver.map(|d| format!("../../../../bus/{bus}/drivers/{d}")), group);
        dir
    }

    fn links(dev: &Path, driver: Option<String>, group: Option<u32>) {
        if let Some(d) = driver {
            symlink(d, dev.join("driver")).unwrap();
        }
        if let Some(g) = group {
            symlink(format!("../../../kernel/iommu_groups/{g}"), dev.join("iommu_group")).unwrap();
        }
    }

    fn tree() -> TempDir {
        let t = TempDir::new("sysfs");
        let r = &t.0;
        pci(r, "0000:6a:01.0", Some(("0x8086", "0x0b25")), Some("idxd"), Some(12));
        pci(r, "0000:6a:02.0", Some(("0x8086", "0x0b25")), Some("vfio-pci"), Some(13));
        pci(r, "0000:00:02.0", Some(("0x8086", "0x9a49")), Some("i915"), Some(0));
        // Unreadable IDs and no links: every attribute absent.
        pci(r, "0000:00:1f.3", Some(("garbage", "0x1234")), None, None);
        other(r, "iommufd_mock", "iommufd_mock0", None, Some(20));
        // A non-PCI device with a PCI-looking name, and vendor files that must be ignored.
        let p = other(r, "platform", "0000:6a:03.0", Some("serial8250"), None);
        std::fs::write(p.join("vendor"), "0x8086\n").unwrap();
        std::fs::write(p.join("device"), "0x0b25\n").unwrap();
        // A bus without a devices directory is skipped.
        std::fs::create_dir_all(r.join("bus/empty")).unwrap();
        t
    }

    fn dev(
        bus: &str,
        name: &str,
        driver: Option<&str>,
        iommu_group: Option<u32>,
        vendor_device: Option<(u16, u16)>,
    ) -> SysfsDevice {
        SysfsDevice { name: name.into(), bus: bus.into(), driver: driver.map(Into::into), iommu_group, vendor_device }
    }

    fn set(docs: &[String]) -> PolicySet {
        PolicySet::parse(Path::new("p.yaml"), &docs.join("---\n")).unwrap()
    }

    #[test]
    fn enumerate_reads_links_and_ids() {
        let t = tree();
        let got = enumerate(&t.0).unwrap();
        let want = [
            dev("iommufd_mock", "iommufd_mock0", None, Some(20), None),
            dev("pci", "0000:00:02.0", Some("i915"), Some(0), Some((0x8086, 0x9a49))),
            dev("pci", "0000:00:1f.3", None, None, None),
            dev("pci", "0000:6a:01.0", Some("idxd"), Some(12), Some((0x8086, 0x0b25))),
            dev("pci", "0000:6a:02.0", Some("vfio-pci"), Some(13), Some((0x8086, 0x0b25))),
            dev("platform", "0000:6a:03.0", Some("serial8250"), None, None),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn missing_sysfs_is_an_error() {
        let t = TempDir::new("nosys");
        let e = enumerate(&t.0.join("nope")).unwrap_err().to_string();
        assert_eq!(e, format!("{}/nope/bus: cannot read: No such file or directory (os error 2)", t.0.display()));
    }

    #[test]
    fn selector_keys_are_anded() {
        let d = dev("pci", "0000:6a:01.0", Some("idxd"), Some(12), Some((0x8086, 0x0b25)));
        let s = |f: fn(&mut Selector)| {
            let mut s = Selector::default();
            f(&mut s);
            s.matches(&d)
        };
        assert!(s(|s| s.pci = Some("0000:6a:01.0".into())));
        assert!(s(|s| {
            s.driver = Some("idxd".into());
            s.iommu_group = Some(12);
            s.vendor_device = Some((0x8086, 0x0b25));
        }));
        assert!(!s(|s| {
            s.driver = Some("idxd".into());
            s.iommu_group = Some(13);
        }));
        assert!(!s(|s| s.vendor_device = Some((0x8086, 0x0b26))));
        let bare = dev("pci", "0000:00:1f.3", None, None, None);
        let by_driver = Selector { driver: Some("idxd".into()), ..Selector::default() };
        assert!(!by_driver.matches(&bare));
    }

    #[test]
    fn resolves_devices_and_lists_unmatched() {
        let t = tree();
        let policies = set(&[
            policy("dsa", "{vendorDevice: \"8086:0b25\", driver: idxd}"),
            policy("vfio", "{driver: vfio-pci, iommuGroup: 13}").replace("mode: monitor", "mode: enforce"),
            policy("mock", "{name: iommufd_mock0}"),
            // The platform device has this name but is not on bus pci.
            policy("pci-only", "{pci: \"0000:6a:03.0\"}"),
            policy("nvme", "{driver: nvme}"),
            policy("platform", "{name: \"0000:6a:03.0\"}"),
        ]);
        let r = policies.resolve(&t.0).unwrap();
        let rule = |flags, policy_id| Rule { flags, forbidden_levels: 0b100, policy_id, ..Rule::NONE };
        let want: BTreeMap<String, DevicePolicies> = [
            ("0000:6a:01.0", "dsa", rule(RULE_ACTIVE, 1)),
            ("0000:6a:02.0", "vfio", rule(RULE_ACTIVE | RULE_ENFORCE, 2)),
            ("iommufd_mock0", "mock", rule(RULE_ACTIVE, 3)),
            ("0000:6a:03.0", "platform", rule(RULE_ACTIVE, 6)),
        ]
        .into_iter()
        .map(|(d, p, rule)| {
            let r = DeviceRule { policy: p.to_owned(), rule, pasids: iopf_common::policy::PasidSet::ALL };
            (d.to_owned(), DevicePolicies { rules: vec![r] })
        })
        .collect();
        assert_eq!(r.devices, want);
        assert_eq!(r.unmatched, ["pci-only", "nvme"]);
    }

    #[test]
    fn devices_named_exactly_get_their_rule_before_they_appear() {
        let t = tree();
        let policies = set(&[
            policy("later", "{name: iommufd_mock7}"),
            policy("later-pci", "{pci: \"0000:7f:00.0\", name: \"0000:7f:00.0\"}"),
            // Not exact: a driver can only be matched once the device is there.
            policy("later-driver", "{pci: \"0000:7e:00.0\", driver: idxd}"),
        ]);
        let r = policies.resolve(&t.0).unwrap();
        let got: Vec<(&str, String)> = r.devices.iter().map(|(d, r)| (d.as_str(), r.names())).collect();
        assert_eq!(got, [("0000:7f:00.0", "later-pci".into()), ("iommufd_mock7", "later".into())]);
        assert_eq!(r.expected.iter().map(String::as_str).collect::<Vec<_>>(), ["0000:7f:00.0", "iommufd_mock7"]);
        assert_eq!(r.unmatched, ["later", "later-pci", "later-driver"]);
        // The pure resolution (simulate's) adds none.
        assert!(policies.resolve_devices(&enumerate(&t.0).unwrap()).unwrap().devices.is_empty());
        let e = set(&[policy("one", "{name: x7}"), policy("two", "{name: x7}")]).resolve(&t.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "device `x7` is selected by two policies: `one` (p.yaml:4:9) and `two` (p.yaml:14:9)"
        );
    }

    #[test]
    fn one_policy_may_select_many_devices() {
        let t = tree();
        let r = set(&[policy("intel", "{vendorDevice: \"8086:0b25\"}")]).resolve(&t.0).unwrap();
        let names: Vec<_> = r.devices.keys().map(String::as_str).collect();
        assert_eq!(names, ["0000:6a:01.0", "0000:6a:02.0"]);
        assert!(r.unmatched.is_empty());
    }

    #[test]
    fn device_selected_twice_is_a_conflict() {
        let t = tree();
        let policies = set(&[
            policy("by-id", "{vendorDevice: \"8086:0b25\"}"),
            policy("by-group", "{iommuGroup: 12}"),
            policy("by-driver", "{driver: idxd}"),
        ]);
        let e = policies.resolve(&t.0).unwrap_err();
        let lines: Vec<String> = e.errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "device `0000:6a:01.0` is selected by two policies: `by-id` (p.yaml:4:9) and `by-group` (p.yaml:14:9)",
                "device `0000:6a:01.0` is selected by two policies: `by-id` (p.yaml:4:9) and `by-driver` (p.yaml:24:9)",
            ]
        );
    }

    /// A policy with a `pasids` selector (a one-line flow sequence).
    fn scoped(name: &str, selector: &str, pasids: &str) -> String {
        policy(name, &selector.replacen('}', &format!(", pasids: {pasids}}}"), 1))
    }

    #[test]
    fn disjoint_pasid_policies_share_a_device_and_compile_in_load_order() {
        use iopf_common::policy::{NO_PASID, PasidSet};
        let t = tree();
        let policies = set(&[
            scoped("sva-low", "{pci: \"0000:6a:01.0\"}", "[1-64, 100]"),
            scoped("sva-high", "{driver: idxd}", "[\"0x1000-0x1fff\", 65]"),
        ]);
        let r = policies.resolve(&t.0).unwrap();
        let d = &r.devices["0000:6a:01.0"];
        assert_eq!(d.names(), "sva-low,sva-high");
        let k = d.compile();
        let set = |ranges: &[[u32; 2]]| {
            let mut s = PasidSet { n: ranges.len() as u32, ..PasidSet::ALL };
            s.ranges[..ranges.len()].copy_from_slice(ranges);
            s
        };
        // 64 and 65 touch: one range. Hex is read as hex.
        assert_eq!(k.sets[0], set(&[[1, 64], [100, 100]]));
        assert_eq!(k.sets[1], set(&[[65, 65], [0x1000, 0x1fff]]));
        assert_eq!((k.rules[0].policy_id, k.rules[1].policy_id, k.rules[2].flags), (1, 2, 0));
        let pick = |p: u32| d.for_pasid(p).map(|r| r.policy.as_str());
        assert_eq!(
            [0, 1, 64, 65, 99, 100, 0x1000, 0x2000, NO_PASID].map(pick),
            [
                None,
                Some("sva-low"),
                Some("sva-low"),
                Some("sva-high"),
                None,
                Some("sva-low"),
                Some("sva-high"),
                None,
                None
            ]
        );
    }

    #[test]
    fn overlapping_pasids_and_crowded_devices_are_refused() {
        let t = tree();
        let e = set(&[
            scoped("a", "{pci: \"0000:6a:01.0\"}", "[1-64]"),
            scoped("b", "{driver: idxd}", "[64-70]"),
            policy("c", "{iommuGroup: 12}"),
        ])
        .resolve(&t.0)
        .unwrap_err();
        let lines: Vec<String> = e.errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "device `0000:6a:01.0` is selected by two policies: `a` (p.yaml:4:9) and `b` (p.yaml:14:9); their PASIDs overlap (`a`: 1-64, `b`: 64-70): give each a `pasids` selector disjoint from the other's",
                "device `0000:6a:01.0` is selected by two policies: `a` (p.yaml:4:9) and `c` (p.yaml:24:9); their PASIDs overlap (`a`: 1-64, `c`: all): give each a `pasids` selector disjoint from the other's",
            ]
        );
        let five: Vec<String> =
            (0..5).map(|i| scoped(&format!("p{i}"), "{pci: \"0000:6a:01.0\"}", &format!("[{}]", i + 1))).collect();
        assert_eq!(
            set(&five).resolve(&t.0).unwrap_err().to_string(),
            "device `0000:6a:01.0` is selected by 5 policies (p0, p1, p2, p3, p4); at most 4 per device, each for its own PASIDs"
        );
        // Devices not present yet are judged the same way.
        let e = set(&[scoped("px", "{name: gone0}", "[5]"), scoped("py", "{name: gone0}", "[5]")])
            .resolve(&t.0)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "device `gone0` is selected by two policies: `px` (p.yaml:4:9) and `py` (p.yaml:14:9); their PASIDs overlap (`px`: 5, `py`: 5): give each a `pasids` selector disjoint from the other's"
        );
        let r =
            set(&[scoped("px", "{name: gone0}", "[5]"), scoped("py", "{name: gone0}", "[6]")]).resolve(&t.0).unwrap();
        assert_eq!((r.devices["gone0"].names(), r.expected.contains("gone0")), ("px,py".into(), true));
    }

    #[test]
    fn same_name_on_two_buses_is_one_device() {
        let t = tree();
        other(&t.0, "faux", "0000:6a:01.0", None, Some(12));
        let r = set(&[policy("group", "{iommuGroup: 12}")]).resolve(&t.0).unwrap();
        assert_eq!(r.devices.keys().collect::<Vec<_>>(), ["0000:6a:01.0"]);
    }
}
