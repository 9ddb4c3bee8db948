// SPDX-License-Identifier: GPL-2.0
/*
 * iopf_fault_event_test: drives the <= 6.8 recoverable-fault ABI of a real kernel (built
 * for Debian's 5.10, which has no I/O page fault queue) from user space, so the agent's
 * report and page-response programs see real calls of the real functions:
 *
 *   iommu_report_device_fault(dev, struct iommu_fault_event *)
 *   iommu_page_response(dev, struct iommu_page_response *)
 *
 * At load it registers a device fault handler on one PCI device behind the IOMMU (by
 * default QEMU's edu, 1234:11e8). Commands are written to
 * /sys/module/iopf_fault_event_test/parameters/cmd, one per write:
 *
 *   report FLAGS PASID GRPID ADDR PERM   a page request (FLAGS: IOMMU_FAULT_PAGE_REQUEST_*)
 *   respond FLAGS PASID GRPID CODE       a page response (FLAGS: IOMMU_PAGE_RESP_*)
 *
 * The kernel's return value of the last command is in parameters/last, the number of
 * faults the handler got in parameters/handled. The write itself fails only on a command
 * it cannot parse, so a kernel refusal (VT-d answers -ENODEV for a PASID no mm is bound
 * to, after taking the fault off its pending list) is read, not lost.
 *
 * The module cannot be unloaded: a fault the test leaves unanswered stays on the device's
 * pending list, and the kernel then refuses to unregister the handler, which would be left
 * pointing into freed code.
 */
#include <linux/iommu.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/pci.h>

static unsigned int vendor = 0x1234;
module_param(vendor, uint, 0444);
MODULE_PARM_DESC(vendor, "PCI vendor id of the device to fault on (default QEMU's edu)");
static unsigned int device = 0x11e8;
module_param(device, uint, 0444);
MODULE_PARM_DESC(device, "PCI device id of the device to fault on");

static struct pci_dev *pdev;
static atomic_t handled = ATOMIC_INIT(0);
static int last;
module_param(last, int, 0444);
MODULE_PARM_DESC(last, "the kernel's return value for the last command");

static int fault_handler(struct iommu_fault *fault, void *data)
{
	atomic_inc(&handled);
	return 0;
}

static int get_handled(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&handled));
}

static const struct kernel_param_ops handled_ops = { .get = get_handled };
module_param_cb(handled, &handled_ops, NULL, 0444);
MODULE_PARM_DESC(handled, "faults the registered handler got");

static int do_report(u32 flags, u32 pasid, u32 grpid, u64 addr, u32 perm)
{
	struct iommu_fault_event evt = {};

	evt.fault.type = IOMMU_FAULT_PAGE_REQ;
	evt.fault.prm.flags = flags;
	evt.fault.prm.pasid = pasid;
	evt.fault.prm.grpid = grpid;
	evt.fault.prm.perm = perm;
	evt.fault.prm.addr = addr;
	return iommu_report_device_fault(&pdev->dev, &evt);
}

static int do_respond(u32 flags, u32 pasid, u32 grpid, u32 code)
{
	struct iommu_page_response msg = {
		.argsz = sizeof(msg),
		.version = IOMMU_PAGE_RESP_VERSION_1,
		.flags = flags,
		.pasid = pasid,
		.grpid = grpid,
		.code = code,
	};

	return iommu_page_response(&pdev->dev, &msg);
}

static int set_cmd(const char *val, const struct kernel_param *kp)
{
	u32 flags, pasid, grpid, perm, code;
	unsigned long long addr;

	if (sscanf(val, "report %x %u %u %llx %x", &flags, &pasid, &grpid, &addr, &perm) == 5)
		last = do_report(flags, pasid, grpid, addr, perm);
	else if (sscanf(val, "respond %x %u %u %u", &flags, &pasid, &grpid, &code) == 4)
		last = do_respond(flags, pasid, grpid, code);
	else
		return -EINVAL;
	return 0;
}

static const struct kernel_param_ops cmd_ops = { .set = set_cmd };
module_param_cb(cmd, &cmd_ops, NULL, 0200);
MODULE_PARM_DESC(cmd, "report FLAGS PASID GRPID ADDR PERM | respond FLAGS PASID GRPID CODE");

static int __init fault_event_init(void)
{
	int rc;

	pdev = pci_get_device(vendor, device, NULL);
	if (!pdev) {
		pr_err("iopf_fault_event_test: no PCI device %04x:%04x\n", vendor, device);
		return -ENODEV;
	}
	rc = iommu_register_device_fault_handler(&pdev->dev, fault_handler, NULL);
	if (rc) {
		pr_err("iopf_fault_event_test: %s: fault handler not registered (%d): not behind an IOMMU?\n",
		       pci_name(pdev), rc);
		pci_dev_put(pdev);
		return rc;
	}
	pr_info("iopf_fault_event_test: faulting on %s\n", pci_name(pdev));
	return 0;
}
module_init(fault_event_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Drives iommu_report_device_fault and iommu_page_response for iopf's tests");
