//! The inventory over synthetic sysfs trees (one per test, removed after) and over this
//! host's real /sys.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use super::*;

/// A synthetic sysfs root under the temp dir, removed on drop. Links are absolute: the code
/// reads only their last component (and, for SMMUv3, the path), as it does in real sysfs.
struct Sysfs(PathBuf);

impl Sysfs {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("iopf-devices-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        Sysfs(root)
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        let path = self.p(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn dir(&self, rel: &str) {
        std::fs::create_dir_all(self.p(rel)).unwrap();
    }

    fn link(&self, rel: &str, target: &Path) {
        let path = self.p(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }

    fn fifo(&self, rel: &str) {
        let path = self.p(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let st = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(st.success());
    }

    /// A PCI function under `devices/pci0000:00`, listed in `bus/pci/devices`; returns its
    /// directory relative to the root.
    fn pci(&self, name: &str, vendor: u16, device: u16, class: u32, config: &[u8]) -> String {
        let rel = format!("devices/pci0000:00/{name}");
        self.write(&format!("{rel}/vendor"), format!("{vendor:#06x}\n"));
        self.write(&format!("{rel}/device"), format!("{device:#06x}\n"));
        self.write(&format!("{rel}/class"), format!("{class:#08x}\n"));
        self.write(&format!("{rel}/config"), config);
        self.link(&format!("bus/pci/devices/{name}"), &self.p(&rel));
        rel
    }

    fn driver(&self, dev: &str, bus: &str, drv: &str) {
        self.dir(&format!("bus/{bus}/drivers/{drv}"));
        self.link(&format!("{dev}/driver"), &self.p(&format!("bus/{bus}/drivers/{drv}")));
    }

    fn group(&self, dev: &str, n: u32, ty: Option<&str>) {
        let g = format!("kernel/iommu_groups/{n}");
        self.dir(&format!("{g}/devices"));
        if let Some(t) = ty {
            self.write(&format!("{g}/type"), format!("{t}\n"));
        }
        self.link(&format!("{dev}/iommu_group"), &self.p(&g));
    }

    /// An IOMMU unit at `dir` (relative), in `class/iommu`, with attribute group `group`.
    fn unit(&self, dir: &str, group: Option<(&str, &[(&str, &str)])>) {
        self.dir(dir);
        if let Some((g, attrs)) = group {
            for (a, v) in attrs {
                self.write(&format!("{dir}/{g}/{a}"), format!("{v}\n"));
            }
        }
        let name = Path::new(dir).file_name().unwrap().to_str().unwrap();
        self.link(&format!("class/iommu/{name}"), &self.p(dir));
    }

    fn intel(&self, name: &str, cap: &str, ecap: &str) -> String {
        let dir = format!("devices/virtual/iommu/{name}");
        self.unit(&dir, Some(("intel-iommu", &[("cap", cap), ("ecap", ecap), ("version", "1:0")])));
        dir
    }

    fn attach(&self, dev: &str, unit_dir: &str) {
        self.link(&format!("{dev}/iommu"), &self.p(unit_dir));
    }

    fn inventory(&self) -> Vec<Device> {
        inventory_with(&self.0, None).unwrap()
    }
}

impl Drop for Sysfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn put16(c: &mut [u8], at: usize, v: u16) {
    c[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(c: &mut [u8], at: usize, v: u32) {
    c[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Extended capability header: id, version 1, next.
fn ext(id: u16, next: u16) -> u32 {
    u32::from(id) | 1 << 16 | u32::from(next) << 20
}

/// A 4 KiB PCIe endpoint config space: PM at 0x40 → PCIe (v2 endpoint) at 0x60; extended
/// ATS at 0x100 → PRI at 0x160 → PASID at `pri_next` (0x200 for the plain chain).
fn config(pri_ctrl: u16, pri_next: u16) -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    put16(&mut c, 0x00, 0x1234);
    put16(&mut c, 0x02, 0x11e8);
    put16(&mut c, 0x06, 0x0010);
    c[0x34] = 0x40;
    c[0x40] = 0x01;
    c[0x41] = 0x60;
    c[0x60] = 0x10;
    c[0x61] = 0x00;
    put16(&mut c, 0x62, 0x0002);
    put32(&mut c, 0x100, ext(0x000f, 0x160));
    // ATS: page-aligned requests, invalidate queue depth 5; enabled, STU 2.
    put16(&mut c, 0x104, 0x0025);
    put16(&mut c, 0x106, 0x8002);
    put32(&mut c, 0x160, ext(0x0013, pri_next));
    put16(&mut c, 0x164, pri_ctrl);
    // PRG Response PASID Required.
    put16(&mut c, 0x166, 0x8000);
    put32(&mut c, 0x168, 512);
    put32(&mut c, 0x16c, 32);
    put32(&mut c, 0x200, ext(0x001b, 0));
    // PASID: width 20, exec and privileged supported; enabled.
    put16(&mut c, 0x204, 20 << 8 | 0x0006);
    put16(&mut c, 0x206, 0x0001);
    c
}

/// VT-d ecap with PRS (29), PASID (40), SMTS (43), SLTS (46); NEST (26), FLTS (47) clear.
const ECAP: &str = "490020000000";
const CAP: &str = "d2008c40660462";

/// The edu device behind dmar0 in group 7 (`ty`), config as given.
fn edu(tag: &str, cfg: &[u8], ty: &str) -> Sysfs {
    let s = Sysfs::new(tag);
    let dev = s.pci("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, cfg);
    s.driver(&dev, "pci", "edu-drv");
    s.group(&dev, 7, Some(ty));
    let unit = s.intel("dmar0", CAP, ECAP);
    s.attach(&dev, &unit);
    s
}

fn report(possible: bool, decided: bool, why: &[&str]) -> FaultReport {
    FaultReport { possible, decided, why: why.iter().map(|s| s.to_string()).collect() }
}

fn text(devs: &[Device]) -> String {
    let mut out = Vec::new();
    render_text(devs, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn dmar0() -> IommuUnit {
    IommuUnit {
        name: "dmar0".into(),
        driver: IommuDriver::IntelIommu,
        cap: Some(CAP.into()),
        ecap: Some(ECAP.into()),
        prs: Some(true),
        pasid: Some(true),
        nested: Some(false),
        scalable: Some(true),
        first_stage: Some(false),
        second_stage: Some(true),
    }
}

#[test]
fn pcie_device_with_ats_pri_pasid_behind_vtd_takes_recoverable_faults() {
    let s = edu("full", &config(0x0001, 0x200), "DMA");
    let devs = s.inventory();
    let want = Device {
        name: "0000:00:03.0".into(),
        bus: "pci".into(),
        vendor_device: Some("1234:11e8".into()),
        class: Some("0x00ff00".into()),
        name_db: None,
        driver: Some("edu-drv".into()),
        iommu_group: Some(7),
        domain_type: Some("DMA".into()),
        iommu: Some(dmar0()),
        config: Some(ConfigSpace {
            config_bytes: 4096,
            ext_caps_visible: true,
            pcie: Some(Pcie { offset: 0x60, version: 2, port_type: 0, port_type_name: "endpoint" }),
            ext_caps: vec![
                ExtCap { offset: 0x100, id: 0x000f, version: 1 },
                ExtCap { offset: 0x160, id: 0x0013, version: 1 },
                ExtCap { offset: 0x200, id: 0x001b, version: 1 },
            ],
            ats: Some(Ats {
                offset: 0x100,
                capability: 0x0025,
                control: 0x8002,
                invalidate_queue_depth: 5,
                page_aligned_request: true,
                enabled: true,
                smallest_translation_unit: 2,
            }),
            pri: Some(Pri {
                offset: 0x160,
                control: 0x0001,
                status: 0x8000,
                enabled: true,
                reset: false,
                response_failure: false,
                unexpected_prg_index: false,
                stopped: false,
                prg_response_pasid_required: true,
                capacity: 512,
                allocation: 32,
            }),
            pasid: Some(Pasid {
                offset: 0x200,
                capability: 0x1406,
                control: 0x0001,
                exec_supported: true,
                privileged_supported: true,
                max_width: 20,
                enabled: true,
                exec_enabled: false,
                privileged_enabled: false,
            }),
            notes: vec![],
        }),
        recoverable: report(true, true, &["PRI enabled (control 0x0001)", "IOMMU dmar0 ecap PRS=1", "domain type DMA"]),
        unrecoverable: report(true, true, &["VT-d fault recording registers (dmar_fault)"]),
    };
    assert_eq!(devs, vec![want]);
    assert_eq!(
        text(&devs),
        "0000:00:03.0  1234:11e8  driver edu-drv  group 7 (DMA)  iommu dmar0 (intel-iommu)
  PCIe:                 endpoint (4096 bytes of config space)
  ATS:                  enabled, STU 2 (16 KiB), invalidate queue depth 5, page-aligned requests
  PRI:                  enabled, 32 of 512 page requests allocated, PRG responses need PASID
  PASID:                enabled, max width 20, exec supported, privileged supported
  recoverable faults:   yes: PRI enabled (control 0x0001); IOMMU dmar0 ecap PRS=1; domain type DMA
  unrecoverable faults: yes: VT-d fault recording registers (dmar_fault)
"
    );
}

#[test]
fn pri_present_but_disabled_blocks_recoverable_faults_only() {
    let s = edu("pri-off", &config(0x0000, 0x200), "DMA-FQ");
    let d = &s.inventory()[0];
    let pri = d.config.as_ref().unwrap().pri.as_ref().unwrap();
    assert_eq!((pri.enabled, pri.control, pri.capacity, pri.allocation), (false, 0, 512, 32));
    assert_eq!(d.recoverable, report(false, true, &["PRI present but not enabled (control 0x0000)"]));
    assert_eq!(d.unrecoverable, report(true, true, &["VT-d fault recording registers (dmar_fault)"]));
    let t = text(std::slice::from_ref(d));
    assert!(
        t.contains("\n  PRI:                  disabled, 32 of 512 page requests allocated, PRG responses need PASID\n")
    );
    assert!(t.contains("\n  recoverable faults:   no: PRI present but not enabled (control 0x0000)\n"), "{t}");
}

#[test]
fn unprivileged_64_byte_view_leaves_recoverable_undecided() {
    let s = edu("64", &config(0x0001, 0x200)[..64], "DMA");
    let d = &s.inventory()[0];
    let c = d.config.as_ref().unwrap();
    assert_eq!((c.config_bytes, c.ext_caps_visible, &c.pcie, &c.pri), (64, false, &None, &None));
    assert_eq!(d.recoverable, report(false, false, &["PCIe extended capabilities not readable (run as root)"]));
    // The IOMMU side does not need config space.
    assert_eq!(d.unrecoverable, report(true, true, &["VT-d fault recording registers (dmar_fault)"]));
    assert_eq!(
        text(std::slice::from_ref(d)),
        "0000:00:03.0  1234:11e8  driver edu-drv  group 7 (DMA)  iommu dmar0 (intel-iommu)
  PCIe extended capabilities: not readable (64 bytes of config space visible; run as root)
  recoverable faults:   unknown: PCIe extended capabilities not readable (run as root)
  unrecoverable faults: yes: VT-d fault recording registers (dmar_fault)
"
    );
}

#[test]
fn looping_extended_list_ends_and_says_so() {
    // PRI's next points back to ATS at 0x100.
    let s = edu("loop", &config(0x0001, 0x100), "DMA");
    let c = s.inventory().remove(0).config.unwrap();
    assert_eq!(c.ext_caps.iter().map(|e| (e.offset, e.id)).collect::<Vec<_>>(), vec![(0x100, 0x000f), (0x160, 0x0013)]);
    assert_eq!(c.notes, vec!["extended capability list loops back to 0x100".to_owned()]);
    assert!(c.ats.is_some() && c.pri.is_some());
    assert_eq!(c.pasid, None);
}

#[test]
fn identity_domains_have_no_faults_blocked_ones_no_page_requests() {
    let s = edu("identity", &config(0x0001, 0x200), "identity");
    let blocked = s.pci("0000:00:04.0", 0x1234, 0x11e8, 0x00ff00, &config(0x0001, 0x200));
    s.group(&blocked, 8, Some("blocked"));
    s.attach(&blocked, "devices/virtual/iommu/dmar0");
    let devs = s.inventory();
    assert_eq!(devs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), vec!["0000:00:03.0", "0000:00:04.0"]);
    let id = "domain type identity: no translation, no faults";
    assert_eq!(devs[0].recoverable, report(false, true, &[id]));
    assert_eq!(devs[0].unrecoverable, report(false, true, &[id]));
    // No kernel driver bound: the default domain may not be the one attached (iommufd, VFIO).
    let user = "group 8's default domain is blocked, but no kernel driver is bound: a user-space owner (iommufd, VFIO) attaches its own domain, not shown in sysfs";
    assert_eq!(devs[1].recoverable, report(false, false, &[user]));
    assert_eq!(devs[1].unrecoverable, report(false, false, &[user]));
    assert_eq!(devs[1].driver, None);
    assert!(
        text(&devs).contains("\n\n0000:00:04.0  1234:11e8  no driver  group 8 (blocked)  iommu dmar0 (intel-iommu)\n")
    );
    // With a kernel driver bound the default domain is the one in use: a decided no.
    s.driver(&blocked, "pci", "edu-drv");
    let devs = s.inventory();
    let bl = "domain type blocked: DMA is refused, no page request is served";
    assert_eq!(devs[1].recoverable, report(false, true, &[bl]));
    let unseen =
        "domain type blocked: DMA is refused; whether the unit records the refusal as a fault is not visible in sysfs";
    assert_eq!(devs[1].unrecoverable, report(false, false, &[unseen]));
}

/// A device in a group whose unit registers nothing in sysfs (the iommufd selftest's mock
/// device): the unit is not seen, so neither answer is decided, and neither is a "no".
#[test]
fn a_grouped_device_without_a_visible_unit_is_undecided_not_refused() {
    let s = Sysfs::new("mock");
    let dev = "devices/iommufd_mock/iommufd_mock0";
    s.dir(dev);
    s.link("bus/iommufd_mock/devices/iommufd_mock0", &s.p(dev));
    s.group(dev, 7, Some("DMA"));
    let devs = s.inventory();
    let unseen = "in IOMMU group 7 but no `iommu` link: the unit translating for it is not visible in sysfs";
    assert_eq!(devs[0].recoverable, report(false, false, &["stall capability not visible in sysfs", unseen]));
    assert_eq!(devs[0].unrecoverable, report(false, false, &[unseen]));
}

#[test]
fn platform_device_with_a_group_behind_smmuv3_is_listed_and_one_without_is_not() {
    let s = Sysfs::new("platform");
    let unit = "devices/platform/arm-smmu-v3.0.auto/iommu/smmu3.0x0000000009050000";
    s.unit(unit, None);
    let dev = "devices/platform/e0000000.dma";
    s.dir(dev);
    s.link("bus/platform/devices/e0000000.dma", &s.p(dev));
    s.driver(dev, "platform", "dw-axi-dmac");
    s.group(dev, 3, Some("DMA"));
    s.attach(dev, unit);
    s.dir("devices/platform/serial8250");
    s.link("bus/platform/devices/serial8250", &s.p("devices/platform/serial8250"));
    // A bus with no device list at all is skipped, not an error.
    s.dir("bus/empty");
    let devs = s.inventory();
    assert_eq!(
        devs,
        vec![Device {
            name: "e0000000.dma".into(),
            bus: "platform".into(),
            vendor_device: None,
            class: None,
            name_db: None,
            driver: Some("dw-axi-dmac".into()),
            iommu_group: Some(3),
            domain_type: Some("DMA".into()),
            iommu: Some(IommuUnit::bare("smmu3.0x0000000009050000".into(), IommuDriver::ArmSmmuV3)),
            config: None,
            recoverable: report(false, false, &["stall capability not visible in sysfs"]),
            unrecoverable: report(true, true, &["SMMUv3 event queue"]),
        }]
    );
    assert_eq!(
        text(&devs),
        "e0000000.dma  platform  driver dw-axi-dmac  group 3 (DMA)  iommu smmu3.0x0000000009050000 (arm-smmu-v3)
  recoverable faults:   unknown: stall capability not visible in sysfs
  unrecoverable faults: yes: SMMUv3 event queue
"
    );
}

#[test]
fn iommu_driver_families_from_sysfs() {
    let s = Sysfs::new("families");
    let cfg = config(0x0001, 0x200);
    let units = [
        ("0000:00:01.0", "devices/pci0000:00/0000:00:00.2/iommu/ivhd0", Some("amd-iommu")),
        // v3 by its parent's name alone.
        ("0000:00:02.0", "devices/platform/arm-smmu-v3.1.auto/iommu/odd-name", None),
        // SMMUv2 names units smmu.<address>: not v3.
        ("0000:00:03.0", "devices/platform/arm-smmu.0.auto/iommu/smmu.0x0000000009050000", None),
        ("0000:00:04.0", "devices/virtual/iommu/dmar1", Some("intel-iommu")),
    ];
    for (i, (name, unit, group)) in units.iter().enumerate() {
        let dev = s.pci(name, 0x1234, 0x11e8, 0x00ff00, &cfg);
        s.group(&dev, i as u32, Some("DMA"));
        // dmar1's ecap has no PRS.
        let attrs: &[(&str, &str)] = if *group == Some("intel-iommu") { &[("ecap", "0")] } else { &[("cap", "0")] };
        s.unit(unit, group.map(|g| (g, attrs)));
        s.attach(&dev, unit);
    }
    let devs = s.inventory();
    let got: Vec<_> = devs.iter().map(|d| d.iommu.as_ref().map(|u| (u.name.as_str(), u.driver))).collect();
    assert_eq!(
        got,
        vec![
            Some(("ivhd0", IommuDriver::AmdIommu)),
            Some(("odd-name", IommuDriver::ArmSmmuV3)),
            Some(("smmu.0x0000000009050000", IommuDriver::Unknown)),
            Some(("dmar1", IommuDriver::IntelIommu)),
        ]
    );
    assert_eq!(
        devs[0].recoverable,
        report(true, true, &["PRI enabled (control 0x0001)", "IOMMU ivhd0 is amd-iommu (PPR log)", "domain type DMA"])
    );
    assert_eq!(devs[0].unrecoverable, report(true, true, &["AMD-Vi event log"]));
    assert_eq!(devs[1].unrecoverable, report(true, true, &["SMMUv3 event queue"]));
    let unknown = "IOMMU smmu.0x0000000009050000: driver not recognised";
    assert_eq!(devs[2].recoverable, report(false, false, &[&format!("{unknown}, page request support unknown")]));
    assert_eq!(devs[2].unrecoverable, report(false, false, &[&format!("{unknown}, fault reporting unknown")]));
    let u = devs[3].iommu.as_ref().unwrap();
    assert_eq!((u.ecap.as_deref(), u.cap.as_deref(), u.prs, u.scalable), (Some("0"), None, Some(false), Some(false)));
    assert_eq!(devs[3].recoverable, report(false, true, &["IOMMU dmar1 ecap PRS=0"]));
}

#[test]
fn what_blocks_recoverable_faults_on_plain_devices() {
    let s = Sysfs::new("plain");
    // Conventional PCI, 256 bytes, as virtio-pci in a VM: capabilities, none PCIe.
    let mut conv = vec![0u8; 256];
    put16(&mut conv, 0x06, 0x0010);
    conv[0x34] = 0x40;
    conv[0x40] = 0x09;
    conv[0x41] = 0x00;
    s.pci("0000:00:01.0", 0x1af4, 0x1041, 0x020000, &conv);
    // PCIe, but only 256 bytes readable (no extended config access), in group 1 without type.
    let short = config(0x0001, 0x200)[..256].to_vec();
    let dev = s.pci("0000:00:02.0", 0x1234, 0x11e8, 0x00ff00, &short);
    s.group(&dev, 1, None);
    s.attach(&dev, &s.intel("dmar0", CAP, ECAP));
    let devs = s.inventory();
    assert_eq!(
        devs[0].recoverable,
        report(
            false,
            true,
            &["conventional PCI (no PCI Express capability): no PRI", "no IOMMU unit attached (no `iommu` link)"]
        )
    );
    assert_eq!(devs[0].unrecoverable, report(false, true, &["no IOMMU translates for this device"]));
    assert_eq!(devs[1].recoverable, report(false, true, &["no extended config space (256 bytes): no PRI"]));
    assert_eq!(devs[1].domain_type, None);
    assert_eq!(devs[1].unrecoverable, report(false, false, &["IOMMU group 1 domain type not readable"]));
    assert_eq!(
        text(&devs),
        "0000:00:01.0  1af4:1041  no driver  no IOMMU group  no IOMMU
  PCIe:                 none: conventional PCI (256 bytes of config space)
  recoverable faults:   no: conventional PCI (no PCI Express capability): no PRI; no IOMMU unit attached (no `iommu` link)
  unrecoverable faults: no: no IOMMU translates for this device

0000:00:02.0  1234:11e8  no driver  group 1  iommu dmar0 (intel-iommu)
  PCIe:                 endpoint; no extended capabilities (256 bytes of config space)
  recoverable faults:   no: no extended config space (256 bytes): no PRI
  unrecoverable faults: unknown: IOMMU group 1 domain type not readable
"
    );
}

const PCI_IDS: &str = "# pci.ids fixture
#\t11e8  commented out
1234  Example Vendor
\t11e8  Edu Device
\t\t1234 0001  Edu subsystem
\t11e9  Other Device
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device
C 02  Network controller
\t00  Ethernet controller
";

#[test]
fn pci_ids_names_vendor_and_device() {
    let s = Sysfs::new("pciids");
    s.write("pci.ids", PCI_IDS);
    let wanted = [(0x1234, 0x11e8), (0x1234, 0x0001), (0x1af4, 0x1041), (0x1af4, 0x0000), (0xffff, 0x11e8)];
    let got = pciids::lookup(&s.p("pci.ids"), &wanted);
    let mut got: Vec<_> = got.into_iter().collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ((0x1234, 0x0001), "Example Vendor".to_owned()),
            ((0x1234, 0x11e8), "Example Vendor Edu Device".to_owned()),
            ((0x1af4, 0x0000), "Red Hat, Inc.".to_owned()),
            ((0x1af4, 0x1041), "Red Hat, Inc. Virtio 1.0 network device".to_owned()),
        ]
    );
    // Absent or not a regular file: no names, no error, no hang.
    assert!(pciids::lookup(&s.p("absent.ids"), &wanted).is_empty());
    s.fifo("fifo.ids");
    assert!(pciids::lookup(&s.p("fifo.ids"), &wanted).is_empty());

    let dev = s.pci("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, &config(0x0001, 0x200));
    s.driver(&dev, "pci", "edu-drv");
    let devs = inventory_with(&s.0, Some(&s.p("pci.ids"))).unwrap();
    assert_eq!(devs[0].name_db.as_deref(), Some("Example Vendor Edu Device"));
    assert!(
        text(&devs).starts_with("0000:00:03.0  1234:11e8 [Example Vendor Edu Device]  driver edu-drv  no IOMMU group")
    );
    let devs = inventory_with(&s.0, Some(&s.p("absent.ids"))).unwrap();
    assert_eq!(devs[0].name_db, None);
}

#[test]
fn fifos_and_oversized_attributes_are_not_read() {
    let s = Sysfs::new("hostile");
    let a = s.pci("0000:00:01.0", 0x1234, 0x11e8, 0x00ff00, &[]);
    std::fs::remove_file(s.p(&format!("{a}/vendor"))).unwrap();
    s.fifo(&format!("{a}/vendor"));
    std::fs::remove_file(s.p(&format!("{a}/config"))).unwrap();
    s.fifo(&format!("{a}/config"));
    s.write(&format!("{a}/class"), vec![b'1'; 5000]);
    s.pci("0000:00:02.0", 0x1234, 0x11e8, 0x00ff00, &vec![0u8; 10_000]);
    let devs = s.inventory();
    assert_eq!((devs[0].vendor_device.as_deref(), devs[0].class.as_deref()), (None, None));
    assert_eq!(devs[0].config, None);
    assert_eq!(
        devs[0].recoverable,
        report(false, true, &["no IOMMU unit attached (no `iommu` link)"]),
        "a definite no outweighs the unreadable config"
    );
    assert!(text(&devs[..1]).contains("\n  config space:         not readable\n"));
    // Read at most 4 KiB of a config file, whatever its size.
    assert_eq!(devs[1].config.as_ref().unwrap().config_bytes, 4096);
    assert_eq!(devs[1].vendor_device.as_deref(), Some("1234:11e8"));
}

#[test]
fn no_bus_directory_is_an_error_naming_it() {
    let s = Sysfs::new("nobus");
    std::fs::remove_dir_all(s.p("bus")).unwrap();
    let e = inventory_with(&s.0, None).unwrap_err();
    assert_eq!(e.to_string(), format!("cannot list `{}`", s.p("bus").display()));
    let src = std::error::Error::source(&e).unwrap().downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(src.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn empty_host_says_so_in_both_formats() {
    let s = Sysfs::new("empty");
    let devs = s.inventory();
    assert_eq!(devs, vec![]);
    let mut out = Vec::new();
    render_text_under(&s.0, &devs, &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), format!("no DMA-capable devices found under {}\n", s.0.display()));
    let mut out = Vec::new();
    render_json(&devs, &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v, serde_json::json!({"schema": "iopf.dev/devices/v1", "devices": []}));
}

#[test]
fn json_is_one_document_with_the_schema() {
    let s = edu("json", &config(0x0001, 0x200), "DMA");
    let devs = s.inventory();
    let mut out = Vec::new();
    render_json(&devs, &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["schema"], SCHEMA);
    let d = &v["devices"][0];
    assert_eq!(v["devices"].as_array().unwrap().len(), 1);
    assert_eq!(d["iommu"]["driver"], "intel-iommu");
    assert_eq!(d["config"]["pri"]["allocation"], 32);
    assert_eq!(d["config"]["pasid"]["max_width"], 20);
    assert_eq!(
        d["recoverable"],
        serde_json::json!({"possible": true, "decided": true, "why": ["PRI enabled (control 0x0001)", "IOMMU dmar0 ecap PRS=1", "domain type DMA"]})
    );
}

/// This host's /sys: every PCI function listed exactly once; without an IOMMU group, no
/// unrecoverable faults.
#[test]
fn real_sysfs() {
    let root = Path::new("/sys");
    let mut listed: Vec<String> = std::fs::read_dir(root.join("bus/pci/devices"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert!(!listed.is_empty(), "this host has PCI devices");
    let devs = inventory(root).unwrap();
    let pci: Vec<String> = devs.iter().filter(|d| d.bus == "pci").map(|d| d.name.clone()).collect();
    assert_eq!(pci, listed);
    for d in &devs {
        assert!(d.iommu_group.is_some() || !d.unrecoverable.possible, "{}: {:?}", d.name, d.unrecoverable);
        if d.bus == "pci" {
            assert!(d.vendor_device.is_some() && d.config.is_some(), "{}", d.name);
        }
    }
    let t = text(&devs);
    for name in &listed {
        assert_eq!(t.lines().filter(|l| l.starts_with(&format!("{name}  "))).count(), 1, "{name} in\n{t}");
    }
    let mut out = Vec::new();
    render_json(&devs, &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["schema"], "iopf.dev/devices/v1");
    assert_eq!(v["devices"].as_array().unwrap().len(), devs.len());
}
