//! Which kinds of fault this kernel can produce at all, with the evidence, in words a kernel
//! engineer recognises. A path that cannot occur is a state of the kernel, not an error.

use serde::Serialize;

use crate::kallsyms::Kallsyms;

#[derive(Debug, Clone, Serialize)]
pub struct FaultPath {
    pub path: &'static str,
    pub possible: bool,
    /// Why, naming the symbols looked up in /proc/kallsyms.
    pub evidence: String,
}

fn has(k: &Kallsyms, s: &str) -> bool {
    k.contains(s)
}

/// Decides each fault path from the kernel's symbols (kallsyms lists every function that
/// was built, including static ones BTF or inlining may hide).
pub fn survey(k: &Kallsyms) -> Vec<FaultPath> {
    let mut out = Vec::new();
    let report = has(k, "iommu_report_device_fault");
    out.push(FaultPath {
        path: "recoverable",
        possible: report,
        evidence: if report && !has(k, "iopf_queue_alloc") {
            "iommu_report_device_fault is built, but no IOPF queue (iopf_queue_alloc is not; it came in 5.13): reports reach only a fault handler a driver registered itself (iommu_register_device_fault_handler)".into()
        } else if report {
            "iommu_report_device_fault is built: PRI page requests and stall events can be reported".into()
        } else {
            "recoverable faults cannot occur: iommu_report_device_fault is not built (CONFIG_IOMMU_IOPF off)".into()
        },
    });
    let sva = has(k, "iommu_sva_iopf_handler") || (has(k, "iommu_sva_handle_iopf") && report);
    let bind = has(k, "iommu_sva_bind_device");
    out.push(FaultPath {
        path: "sva",
        possible: sva && report,
        evidence: match (sva, bind) {
            (true, _) if report => "the SVA fault handler is built (iommu_sva_iopf_handler / iommu_sva_handle_iopf)".into(),
            (true, _) => "the SVA handler is built but nothing reports recoverable faults".into(),
            (false, true) => "SVA faults cannot occur: iommu_sva_bind_device is built but iommu_sva_iopf_handler is not, so binding fails before any fault (Debian/stable 6.12.69+ disables SVA on x86)".into(),
            (false, false) => "SVA faults cannot occur: no SVA code is built (CONFIG_IOMMU_SVA off)".into(),
        },
    });
    let iommufd = has(k, "iommufd_fault_iopf_handler");
    out.push(FaultPath {
        path: "iommufd",
        possible: iommufd && report,
        evidence: if iommufd {
            "iommufd's fault handler is built: user (flat_user) and nested faults reach a fault fd".into()
        } else if has(k, "iommufd_fops_open") || has(k, "iommufd_fops_ioctl") {
            "iommufd is built without IOPF fault objects (older than 6.11): no user/nested recoverable faults".into()
        } else {
            "user and nested recoverable faults cannot occur: iommufd is not built or not loaded (every Debian kernel has CONFIG_IOMMUFD off)".into()
        },
    });
    let dequeue = has(k, "iopf_group_dequeue");
    out.push(FaultPath {
        path: "iommufd_delivery",
        possible: dequeue && iommufd,
        evidence: if dequeue {
            "iopf_group_dequeue is built: iommufd takes each group off the pending list before user space reads it (7.2+, Debian 6.12.115+)".into()
        } else {
            "iopf_group_dequeue is not built (before 7.2 and Debian 6.12.115, or CONFIG_IOMMU_IOPF off): the user-space share of the service time is not measured".into()
        },
    });
    let dmar = has(k, "dmar_fault");
    out.push(FaultPath {
        path: "vtd_unrecoverable",
        possible: dmar,
        evidence: if dmar {
            "dmar_fault is built: VT-d fault records (reason code gives the stage) are read at the interrupt; needs an Intel IOMMU and intel_iommu=on".into()
        } else {
            "VT-d unrecoverable faults cannot occur: dmar_fault is not built (CONFIG_INTEL_IOMMU off)".into()
        },
    });
    let smmu = has(k, "queue_remove_raw");
    out.push(FaultPath {
        path: "smmuv3_unrecoverable",
        possible: smmu,
        evidence: match (smmu, report) {
            (true, true) => "queue_remove_raw is built: every SMMUv3 event record (the S2 bit gives the stage) is read as the driver takes it off the event queue; stall events can also be reported as recoverable faults (iommu_report_device_fault is built)".into(),
            (true, false) => "queue_remove_raw is built: every SMMUv3 event record (the S2 bit gives the stage) is read as the driver takes it off the event queue; no recoverable faults: this kernel is built without IOMMU_IOPF (ARM_SMMU_V3_SVA off), so stall and PRI requests are never reported".into(),
            (false, _) => "SMMUv3 events cannot be read: queue_remove_raw is not built (CONFIG_ARM_SMMU_V3 off, or the driver's module not loaded)".into(),
        },
    });
    let amdvi = has(k, "iommu_poll_events");
    out.push(FaultPath {
        path: "amdvi_unrecoverable",
        possible: amdvi,
        evidence: if amdvi {
            "iommu_poll_events is built: every AMD-Vi event log entry (IO_PAGE_FAULT and the rest; no stage bit) is read as the driver drains the log, including those it reports to nobody (interrupt-request faults)".into()
        } else {
            "AMD-Vi events cannot be read: iommu_poll_events is not built (CONFIG_AMD_IOMMU off)".into()
        },
    });
    let ppr = has(k, "amd_iommu_poll_ppr_log");
    out.push(FaultPath {
        path: "amdvi_page_requests",
        possible: ppr,
        evidence: match (ppr, report) {
            (true, true) => "amd_iommu_poll_ppr_log is built: every AMD-Vi PPR log entry (PCIe PRI page requests) is read as the driver drains the log, the ones it rejects included; valid ones are also reported as recoverable faults (iommu_report_device_fault is built); answers are read at amd_iommu_complete_ppr".into(),
            (true, false) => "amd_iommu_poll_ppr_log is built: every AMD-Vi PPR log entry is read as the driver drains the log; no recoverable faults are reported (IOMMU_IOPF off)".into(),
            (false, _) => "AMD-Vi page requests cannot be read from the PPR log: amd_iommu_poll_ppr_log is not built (CONFIG_AMD_IOMMU off, or a kernel before 6.9, where the drain is inlined)".into(),
        },
    });
    let rif = has(k, "report_iommu_fault");
    out.push(FaultPath {
        path: "report_iommu_fault",
        possible: rif,
        evidence: if rif {
            "report_iommu_fault is built: AMD-Vi, arm-smmu v1/v2 and others report unrecoverable faults through iommu:io_page_fault".into()
        } else {
            "report_iommu_fault is not built (CONFIG_IOMMU_API off)".into()
        },
    });
    out
}
