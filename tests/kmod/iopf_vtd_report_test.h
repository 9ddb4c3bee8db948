/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Userspace interface of iopf_vtd_report_test.ko: /dev/iopf_vtd_report.
 *
 * IOPF_VTD_REPORT hands one page request for the QEMU edu device (PCI
 * 1234:11e8) to the kernel's iommu_report_device_fault() and returns what that
 * returned; IOPF_VTD_DEVNAME gives the PCI name of the device. Both fail with
 * ENODEV when no edu device exists, and with ENXIO when edu is in no IOMMU
 * group (no IOMMU translates it: nothing to report against). Calls are not
 * serialised; each finds the device anew.
 *
 * Mirrored by tests/src/vtd_report.rs (keep both in sync).
 */
#ifndef IOPF_VTD_REPORT_TEST_H
#define IOPF_VTD_REPORT_TEST_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define IOPF_VTD_DEV_NAME "iopf_vtd_report"

/* The device faulted on: QEMU's edu. */
#define IOPF_VTD_EDU_VENDOR 0x1234
#define IOPF_VTD_EDU_DEVICE 0x11e8

/* flags */
#define IOPF_VTD_FLAG_PASID_VALID (1 << 0)

/* perm bits, the kernel's IOMMU_FAULT_PERM_* values. */
#define IOPF_VTD_PERM_READ (1 << 0)
#define IOPF_VTD_PERM_WRITE (1 << 1)
#define IOPF_VTD_PERM_EXEC (1 << 2)
#define IOPF_VTD_PERM_PRIV (1 << 3)

/*
 * REPORT (in/out): one page request (LAST_PAGE, plus PASID_VALID when
 * flags says so) for the edu device. 32 bytes.
 */
struct iopf_vtd_report {
	__u64 addr;  /* in: faulting address (IOVA, or an address of the PASID's space) */
	__u32 pasid; /* in: used when IOPF_VTD_FLAG_PASID_VALID is set */
	__u32 flags; /* in: IOPF_VTD_FLAG_* */
	__u32 perm;  /* in: IOPF_VTD_PERM_* */
	__u32 grpid; /* in: page request group id */
	__s32 ret;   /* out: return of iommu_report_device_fault() */
	__u32 pad;   /* must be 0 */
};

/* DEVNAME (out): dev_name() of the edu device, NUL-terminated. 32 bytes. */
struct iopf_vtd_devname {
	char name[32];
};

#define IOPF_VTD_IOC_MAGIC 0xB6
#define IOPF_VTD_REPORT _IOWR(IOPF_VTD_IOC_MAGIC, 1, struct iopf_vtd_report)
#define IOPF_VTD_DEVNAME _IOR(IOPF_VTD_IOC_MAGIC, 2, struct iopf_vtd_devname)

#endif /* IOPF_VTD_REPORT_TEST_H */
