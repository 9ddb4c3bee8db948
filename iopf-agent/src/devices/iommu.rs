//! The IOMMU unit that translates for a device (its `iommu` link), which driver runs it, and
//! for VT-d what its capability registers say. The driver family is decided from what
//! sysfs shows, never from the host's CPU vendor: a VM can have any of them.

use std::path::Path;

use serde::Serialize;

use super::sysfs;

/// Which IOMMU driver registered the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IommuDriver {
    #[serde(rename = "intel-iommu")]
    IntelIommu,
    #[serde(rename = "amd-iommu")]
    AmdIommu,
    #[serde(rename = "arm-smmu-v3")]
    ArmSmmuV3,
    #[serde(rename = "unknown")]
    Unknown,
}

impl IommuDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            IommuDriver::IntelIommu => "intel-iommu",
            IommuDriver::AmdIommu => "amd-iommu",
            IommuDriver::ArmSmmuV3 => "arm-smmu-v3",
            IommuDriver::Unknown => "unknown",
        }
    }
}

/// One IOMMU unit. The register fields are intel-iommu's only; `None` elsewhere or when the
/// register could not be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IommuUnit {
    /// `dmar0`, `ivhd0`, `smmu3.0x0000000009050000`.
    pub name: String,
    pub driver: IommuDriver,
    /// Capability Register, as sysfs prints it (hex).
    pub cap: Option<String>,
    /// Extended Capability Register, as sysfs prints it (hex).
    pub ecap: Option<String>,
    /// ecap PRS, bit 29: page requests supported.
    pub prs: Option<bool>,
    /// ecap PASID, bit 40.
    pub pasid: Option<bool>,
    /// ecap NEST, bit 26: nested translation.
    pub nested: Option<bool>,
    /// ecap SMTS, bit 43: scalable mode.
    pub scalable: Option<bool>,
    /// ecap FLTS, bit 47: first-stage translation.
    pub first_stage: Option<bool>,
    /// ecap SLTS, bit 46: second-stage translation.
    pub second_stage: Option<bool>,
}

impl IommuUnit {
    /// A unit known by name and driver only, no register read.
    pub fn bare(name: String, driver: IommuDriver) -> Self {
        IommuUnit {
            name,
            driver,
            cap: None,
            ecap: None,
            prs: None,
            pasid: None,
            nested: None,
            scalable: None,
            first_stage: None,
            second_stage: None,
        }
    }
}

/// VT-d Extended Capability Register bits (the kernel's `ecap_prs()` and neighbours in
/// drivers/iommu/intel/iommu.h).
const ECAP_NEST: u32 = 26;
const ECAP_PRS: u32 = 29;
const ECAP_PASID: u32 = 40;
const ECAP_SMTS: u32 = 43;
const ECAP_SLTS: u32 = 46;
const ECAP_FLTS: u32 = 47;

/// The unit behind `<dev>/iommu`, `None` when the device has no such link.
pub fn unit(sysfs_root: &Path, dev_dir: &Path) -> Option<IommuUnit> {
    let link = sysfs::link_target(&dev_dir.join("iommu"))?;
    let name = link.file_name()?.to_str()?.to_owned();
    let class_dir = sysfs_root.join("class/iommu").join(&name);
    let driver = driver_of(&name, &link, &class_dir);
    let mut u = IommuUnit::bare(name, driver);
    if driver == IommuDriver::IntelIommu {
        u.cap = sysfs::read_text(&class_dir.join("intel-iommu/cap"));
        u.ecap = sysfs::read_text(&class_dir.join("intel-iommu/ecap"));
        if let Some(e) = u.ecap.as_deref().and_then(sysfs::parse_hex) {
            let bit = |n: u32| Some(e >> n & 1 == 1);
            u.prs = bit(ECAP_PRS);
            u.pasid = bit(ECAP_PASID);
            u.nested = bit(ECAP_NEST);
            u.scalable = bit(ECAP_SMTS);
            u.first_stage = bit(ECAP_FLTS);
            u.second_stage = bit(ECAP_SLTS);
        }
    }
    Some(u)
}

/// intel-iommu and amd-iommu give their units a named attribute group; arm-smmu-v3 names
/// units `smmu3.<address>` (SMMUv2 and qcom use `smmu.<address>`, which is not v3) and sits
/// under an `arm-smmu-v3` platform device.
fn driver_of(name: &str, link: &Path, class_dir: &Path) -> IommuDriver {
    let is_dir = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_dir());
    if is_dir(&class_dir.join("intel-iommu")) {
        return IommuDriver::IntelIommu;
    }
    if is_dir(&class_dir.join("amd-iommu")) {
        return IommuDriver::AmdIommu;
    }
    let under_v3 = |p: &Path| p.to_string_lossy().contains("arm-smmu-v3");
    let class_link = sysfs::link_target(class_dir);
    if name.starts_with("smmu3.") || under_v3(link) || class_link.as_deref().is_some_and(under_v3) {
        return IommuDriver::ArmSmmuV3;
    }
    IommuDriver::Unknown
}
