// SPDX-License-Identifier: GPL-2.0
/*
 * iopf_vtd_report_test: reports I/O page requests for a real PCI device, so
 * that the kernel's own iommu_report_device_fault() runs for a device that a
 * real (here: QEMU's emulated Intel VT-d) IOMMU translates.
 *
 * The device is QEMU's edu (1234:11e8). An eBPF program attached to
 * iommu_report_device_fault sees that device and can walk the translation
 * tables the IOMMU driver set up for it. No domain of edu handles page
 * requests, so the kernel answers each one INVALID and the call fails
 * (-EINVAL); the module only hands that return back. Nothing is bound to edu and nothing is kept between calls:
 * each ioctl looks the device up, uses it and drops the reference.
 *
 * Written for Linux 7.3 (struct iopf_fault, int iommu_report_device_fault).
 */
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/iommu.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "iopf_vtd_report_test.h"

static_assert(sizeof(struct iopf_vtd_report) == 32);
static_assert(sizeof(struct iopf_vtd_devname) == 32);

#define VTD_PERM_ALL (IOPF_VTD_PERM_READ | IOPF_VTD_PERM_WRITE | \
		      IOPF_VTD_PERM_EXEC | IOPF_VTD_PERM_PRIV)

/*
 * The edu device with a reference held, or an ERR_PTR: -ENODEV without one,
 * -ENXIO when it sits in no IOMMU group (iommu_report_device_fault needs the
 * group and the device's IOMMU ops). Release with vtd_put_edu().
 */
static struct pci_dev *vtd_get_edu(struct iommu_group **group)
{
	struct pci_dev *pdev;

	pdev = pci_get_device(IOPF_VTD_EDU_VENDOR, IOPF_VTD_EDU_DEVICE, NULL);
	if (!pdev)
		return ERR_PTR(-ENODEV);
	*group = iommu_group_get(&pdev->dev);
	if (!*group || !pdev->dev.iommu) {
		iommu_group_put(*group); /* NULL-safe */
		pci_dev_put(pdev);
		return ERR_PTR(-ENXIO);
	}
	return pdev;
}

static void vtd_put_edu(struct pci_dev *pdev, struct iommu_group *group)
{
	iommu_group_put(group);
	pci_dev_put(pdev);
}

static long vtd_ioc_report(void __user *arg)
{
	struct iopf_vtd_report req;
	struct iopf_fault evt;
	struct iommu_group *group;
	struct pci_dev *pdev;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if ((req.flags & ~(u32)IOPF_VTD_FLAG_PASID_VALID) ||
	    (req.perm & ~(u32)VTD_PERM_ALL) || req.pad)
		return -EINVAL;

	pdev = vtd_get_edu(&group);
	if (IS_ERR(pdev))
		return PTR_ERR(pdev);

	memset(&evt, 0, sizeof(evt));
	evt.fault.type = IOMMU_FAULT_PAGE_REQ;
	evt.fault.prm.flags = IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE;
	if (req.flags & IOPF_VTD_FLAG_PASID_VALID) {
		evt.fault.prm.flags |= IOMMU_FAULT_PAGE_REQUEST_PASID_VALID;
		evt.fault.prm.pasid = req.pasid;
	}
	evt.fault.prm.grpid = req.grpid;
	evt.fault.prm.perm = req.perm;
	evt.fault.prm.addr = req.addr;

	req.ret = iommu_report_device_fault(&pdev->dev, &evt);
	pci_dbg(pdev, "reported addr %#llx flags %#x pasid %u perm %#x grpid %u: %d\n",
		req.addr, evt.fault.prm.flags, evt.fault.prm.pasid,
		req.perm, req.grpid, req.ret);
	vtd_put_edu(pdev, group);

	if (copy_to_user(arg, &req, sizeof(req)))
		return -EFAULT;
	return 0;
}

static long vtd_ioc_devname(void __user *arg)
{
	struct iopf_vtd_devname out = {};
	struct iommu_group *group;
	struct pci_dev *pdev;

	pdev = vtd_get_edu(&group);
	if (IS_ERR(pdev))
		return PTR_ERR(pdev);
	strscpy(out.name, pci_name(pdev), sizeof(out.name));
	vtd_put_edu(pdev, group);

	if (copy_to_user(arg, &out, sizeof(out)))
		return -EFAULT;
	return 0;
}

static long vtd_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case IOPF_VTD_REPORT:
		return vtd_ioc_report(uarg);
	case IOPF_VTD_DEVNAME:
		return vtd_ioc_devname(uarg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations vtd_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = vtd_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice vtd_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = IOPF_VTD_DEV_NAME,
	.fops = &vtd_fops,
	.mode = 0600,
};

static int __init vtd_init(void)
{
	int rc = misc_register(&vtd_misc);

	if (rc)
		return rc;
	pr_info("iopf_vtd_report_test: /dev/%s ready\n", IOPF_VTD_DEV_NAME);
	return 0;
}

static void __exit vtd_exit(void)
{
	misc_deregister(&vtd_misc);
}

module_init(vtd_init);
module_exit(vtd_exit);

MODULE_DESCRIPTION("Reports I/O page requests for the QEMU edu device to iommu_report_device_fault (test only)");
MODULE_LICENSE("GPL");
