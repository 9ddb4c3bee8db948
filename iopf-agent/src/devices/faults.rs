//! Whether the kernel can hear about a device's I/O page faults, decided from what sysfs and
//! config space show, with the evidence in short clauses. Three outcomes, never blurred:
//! yes (every condition seen to hold), no (a condition seen to fail), unknown (nothing seen
//! to fail, but something could not be seen; `decided: false`, so it is not a guess shown
//! as a fact).

use serde::Serialize;

use super::{
    iommu::{IommuDriver, IommuUnit},
    pcicfg::ConfigSpace,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultReport {
    pub possible: bool,
    /// False when the answer rests on something not visible (then `possible` is false).
    pub decided: bool,
    /// For yes: the evidence; for no: what fails; for unknown: what could not be seen.
    pub why: Vec<String>,
}

/// What the decisions look at.
pub struct Facts<'a> {
    pub is_pci: bool,
    pub config: Option<&'a ConfigSpace>,
    pub iommu: Option<&'a IommuUnit>,
    pub iommu_group: Option<u32>,
    pub domain_type: Option<&'a str>,
    /// The bound driver, if any.
    pub driver: Option<&'a str>,
}

/// Evidence sorted as it is gathered.
#[derive(Default)]
struct Verdict {
    holds: Vec<String>,
    fails: Vec<String>,
    unseen: Vec<String>,
}

impl Verdict {
    fn finish(self) -> FaultReport {
        if !self.fails.is_empty() {
            FaultReport { possible: false, decided: true, why: self.fails }
        } else if !self.unseen.is_empty() {
            FaultReport { possible: false, decided: false, why: self.unseen }
        } else {
            FaultReport { possible: true, decided: true, why: self.holds }
        }
    }
}

/// A kernel driver other than VFIO's is bound: the device does DMA through the kernel's DMA
/// API, on the group's default domain.
fn default_domain_in_use(f: &Facts) -> bool {
    f.driver.is_some_and(|d| !d.starts_with("vfio"))
}

fn unit_unseen(f: &Facts) -> String {
    format!(
        "in IOMMU group {} but no `iommu` link: the unit translating for it is not visible in sysfs",
        f.iommu_group.unwrap_or_default()
    )
}

/// Page requests can reach the kernel only if the device can send them (PRI enabled), a unit
/// whose driver takes them translates for it, and its domain translates at all.
pub fn recoverable(f: &Facts) -> FaultReport {
    let mut v = Verdict::default();
    device_side(f, &mut v);
    match f.iommu {
        // In a group, something translates for it: a unit that registers no sysfs device
        // (the iommufd selftest's mock) is not seen, not absent.
        None if f.iommu_group.is_some() => v.unseen.push(unit_unseen(f)),
        None => v.fails.push("no IOMMU unit attached (no `iommu` link)".into()),
        Some(u) => match u.driver {
            IommuDriver::IntelIommu => match u.prs {
                Some(true) => v.holds.push(format!("IOMMU {} ecap PRS=1", u.name)),
                Some(false) => v.fails.push(format!("IOMMU {} ecap PRS=0", u.name)),
                None => v.unseen.push(format!("IOMMU {} ecap not readable", u.name)),
            },
            IommuDriver::AmdIommu => v.holds.push(format!("IOMMU {} is amd-iommu (PPR log)", u.name)),
            IommuDriver::ArmSmmuV3 => v.holds.push(format!("IOMMU {} is arm-smmu-v3", u.name)),
            IommuDriver::Unknown => {
                v.unseen.push(format!("IOMMU {}: driver not recognised, page request support unknown", u.name))
            }
        },
    }
    if f.iommu.is_some() {
        domain_side(f, &mut v, false);
    }
    v.finish()
}

fn device_side(f: &Facts, v: &mut Verdict) {
    if !f.is_pci {
        // Platform devices fault through stalls, a firmware property sysfs does not show.
        v.unseen.push("stall capability not visible in sysfs".into());
        return;
    }
    let Some(c) = f.config else {
        v.unseen.push("config space not readable".into());
        return;
    };
    if c.truncated() {
        v.unseen.push("PCIe extended capabilities not readable (run as root)".into());
        return;
    }
    if c.pcie.is_none() {
        v.fails.push("conventional PCI (no PCI Express capability): no PRI".into());
        return;
    }
    if !c.ext_caps_visible {
        v.fails.push(format!("no extended config space ({} bytes): no PRI", c.config_bytes));
        return;
    }
    match &c.pri {
        None => v.fails.push("no PRI capability".into()),
        Some(p) if !p.enabled => v.fails.push(format!("PRI present but not enabled (control {:#06x})", p.control)),
        Some(p) => v.holds.push(format!("PRI enabled (control {:#06x})", p.control)),
    }
}

/// The domain decides whether there is a translation to fault on.
fn domain_side(f: &Facts, v: &mut Verdict, unrecoverable: bool) {
    match (f.iommu_group, f.domain_type) {
        (None, _) => v.unseen.push("no IOMMU group (no `iommu_group` link)".into()),
        (Some(g), None) => v.unseen.push(format!("IOMMU group {g} domain type not readable")),
        // sysfs `type` is the group's default domain. Only while a kernel driver other than
        // VFIO owns the device's DMA is that the domain attached: iommufd and VFIO attach
        // their own (the iommufd mock's group says blocked while its faults are served).
        (Some(g), Some(t @ ("identity" | "blocked"))) if !default_domain_in_use(f) => v.unseen.push(format!(
            "group {g}'s default domain is {t}, but {}: a user-space owner (iommufd, VFIO) attaches its own domain, not shown in sysfs",
            match f.driver {
                None => "no kernel driver is bound".to_owned(),
                Some(d) => format!("it is bound to {d}"),
            }
        )),
        (Some(_), Some("identity")) => v.fails.push("domain type identity: no translation, no faults".into()),
        // A blocked domain serves no page request; whether the refused DMA is recorded as a
        // fault is the unit's business (not decided from sysfs).
        (Some(_), Some("blocked")) if unrecoverable => v.unseen.push(
            "domain type blocked: DMA is refused; whether the unit records the refusal as a fault is not visible in sysfs".into(),
        ),
        (Some(_), Some("blocked")) => v.fails.push("domain type blocked: DMA is refused, no page request is served".into()),
        (Some(_), Some(t)) => v.holds.push(format!("domain type {t}")),
    }
}

/// Translation faults are recorded when a unit translates for the device; how depends on the
/// driver.
pub fn unrecoverable(f: &Facts) -> FaultReport {
    let mut v = Verdict::default();
    let Some(u) = f.iommu else {
        if f.iommu_group.is_some() {
            v.unseen.push(unit_unseen(f));
        } else {
            v.fails.push("no IOMMU translates for this device".into());
        }
        return v.finish();
    };
    domain_side(f, &mut v, true);
    // Only the mechanism is the evidence of a yes; the domain line would repeat the header.
    v.holds.clear();
    match u.driver {
        IommuDriver::IntelIommu => v.holds.push("VT-d fault recording registers (dmar_fault)".into()),
        IommuDriver::AmdIommu => v.holds.push("AMD-Vi event log".into()),
        IommuDriver::ArmSmmuV3 => v.holds.push("SMMUv3 event queue".into()),
        IommuDriver::Unknown => {
            v.unseen.push(format!("IOMMU {}: driver not recognised, fault reporting unknown", u.name))
        }
    }
    v.finish()
}
