//! The DMA-capable devices of a host, read from sysfs: for each, its IOMMU group and domain
//! type, the IOMMU unit translating for it, its PCIe ATS/PRI/PASID state, and whether its
//! I/O page faults can reach the kernel, recoverable or not, with the evidence.
//!
//! Every bus under `<root>/bus/*/devices/*` is looked at; a device is kept if it is PCI or
//! has an `iommu_group` link, so the list stays about devices that do DMA through an IOMMU
//! (or could). The sysfs root is a parameter so tests run on a synthetic tree.

mod faults;
mod iommu;
mod pcicfg;
mod pciids;
mod render;
mod sysfs;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

pub use faults::FaultReport;
pub use iommu::{IommuDriver, IommuUnit};
pub use pcicfg::{Ats, ConfigSpace, ExtCap, Pasid, Pcie, Pri};
pub use pciids::DEFAULT_PATHS as PCI_IDS_PATHS;
pub use render::{SCHEMA, render_json, render_text, render_text_under};

#[derive(Debug, Error)]
pub enum DevicesError {
    /// Without `<root>/bus` there is nothing to list: not sysfs, or not mounted.
    #[error("cannot list `{}`", path.display())]
    Bus { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    /// The sysfs entry name, `0000:00:03.0`.
    pub name: String,
    /// `pci`, `platform`, ...
    pub bus: String,
    /// PCI vendor:device, `1234:11e8`.
    pub vendor_device: Option<String>,
    /// PCI class code, `0x010802`.
    pub class: Option<String>,
    /// Vendor and device name from pci.ids, when installed and listed.
    pub name_db: Option<String>,
    /// The bound driver.
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// The group's domain type: `DMA`, `DMA-FQ`, `identity`, `blocked`, `unmanaged`.
    pub domain_type: Option<String>,
    pub iommu: Option<IommuUnit>,
    /// PCI config space as read; `None` for non-PCI devices or no readable `config`.
    pub config: Option<ConfigSpace>,
    pub recoverable: FaultReport,
    pub unrecoverable: FaultReport,
}

/// The inventory under `sysfs_root`, sorted by bus then name, with names from the first
/// pci.ids found at [`PCI_IDS_PATHS`].
pub fn inventory(sysfs_root: &Path) -> Result<Vec<Device>, DevicesError> {
    inventory_with(sysfs_root, pciids::default_path().as_deref())
}

/// [`inventory`] with the pci.ids file given (`None`: no names).
pub fn inventory_with(sysfs_root: &Path, pci_ids: Option<&Path>) -> Result<Vec<Device>, DevicesError> {
    let bus_dir = sysfs_root.join("bus");
    let buses = sysfs::list_dir(&bus_dir).map_err(|source| DevicesError::Bus { path: bus_dir.clone(), source })?;
    let mut devs = Vec::new();
    let mut ids = Vec::new();
    for bus in buses {
        // A bus without a readable device list has no devices we can describe.
        let list = bus_dir.join(&bus).join("devices");
        let Ok(names) = sysfs::list_dir(&list) else { continue };
        for name in names {
            let dir = list.join(&name);
            let is_pci = bus == "pci";
            if !is_pci && sysfs::link_target(&dir.join("iommu_group")).is_none() {
                continue;
            }
            let (dev, id) = device(sysfs_root, &bus, name, &dir, is_pci);
            ids.push(id);
            devs.push(dev);
        }
    }
    if let Some(path) = pci_ids {
        let wanted: Vec<(u16, u16)> = ids.iter().flatten().copied().collect();
        let names = pciids::lookup(path, &wanted);
        for (dev, id) in devs.iter_mut().zip(&ids) {
            dev.name_db = id.and_then(|id| names.get(&id).cloned());
        }
    }
    devs.sort_by(|a, b| (&a.bus, &a.name).cmp(&(&b.bus, &b.name)));
    Ok(devs)
}

/// One device, and its PCI IDs for the name lookup.
fn device(root: &Path, bus: &str, name: String, dir: &Path, is_pci: bool) -> (Device, Option<(u16, u16)>) {
    let hex = |attr: &str| sysfs::read_text(&dir.join(attr)).as_deref().and_then(sysfs::parse_hex);
    let (mut id, mut class, mut config) = (None, None, None);
    if is_pci {
        id = match (hex("vendor"), hex("device")) {
            (Some(v), Some(d)) => u16::try_from(v).ok().zip(u16::try_from(d).ok()),
            _ => None,
        };
        class = hex("class").filter(|c| *c <= 0xff_ffff).map(|c| format!("{c:#08x}"));
        config = pcicfg::read(dir);
    }
    let iommu_group = sysfs::link_name(&dir.join("iommu_group")).and_then(|g| g.parse::<u32>().ok());
    let domain_type =
        iommu_group.and_then(|g| sysfs::read_text(&root.join("kernel/iommu_groups").join(g.to_string()).join("type")));
    let iommu = iommu::unit(root, dir);
    let driver = sysfs::link_name(&dir.join("driver"));
    let facts = faults::Facts {
        is_pci,
        config: config.as_ref(),
        iommu: iommu.as_ref(),
        iommu_group,
        domain_type: domain_type.as_deref(),
        driver: driver.as_deref(),
    };
    let (recoverable, unrecoverable) = (faults::recoverable(&facts), faults::unrecoverable(&facts));
    let dev = Device {
        name,
        bus: bus.to_owned(),
        vendor_device: id.map(|(v, d)| format!("{v:04x}:{d:04x}")),
        class,
        name_db: None,
        driver,
        iommu_group,
        domain_type,
        iommu,
        config,
        recoverable,
        unrecoverable,
    };
    (dev, id)
}
