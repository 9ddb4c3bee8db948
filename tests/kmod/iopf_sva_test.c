// SPDX-License-Identifier: GPL-2.0
/*
 * iopf_sva_test: a software IOMMU that drives the kernel's real SVA I/O page
 * fault path without IOPF hardware.
 *
 * It registers an IOMMU on a bus of its own, with a blocking default domain,
 * SVA domains whose set_dev_pasid always succeeds, an IOPF queue and a
 * page_response callback that records every response. One device on that bus
 * carries the software-node property "pasid-num-bits". A misc device lets a
 * process bind its mm to that device (iommu_sva_bind_device) and report page
 * requests on it (iommu_report_device_fault). The kernel then runs its own
 * iommu_sva_iopf_handler -> iommu_sva_handle_iopf (a kworker) ->
 * handle_mm_fault -> iopf_group_response -> our page_response.
 *
 * Written for Linux 7.3 (iopf_group.attach_handle, iommu_domain.cookie_type,
 * attach_dev/set_dev_pasid taking the old domain).
 */
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/iommu.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/property.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#include "iopf_sva_test.h"

/*
 * Exported when CONFIG_IOMMUFD_TEST=y, but declared only in
 * drivers/iommu/iommu-priv.h, which an external-module build tree lacks.
 */
int iommu_device_register_bus(struct iommu_device *iommu,
			      const struct iommu_ops *ops,
			      const struct bus_type *bus,
			      struct notifier_block *nb);
void iommu_device_unregister_bus(struct iommu_device *iommu,
				 const struct bus_type *bus,
				 struct notifier_block *nb);
int iommu_mock_device_add(struct device *dev, struct iommu_device *iommu);

#define SVA_PASID_BITS 16

static const struct bus_type sva_bus = {
	.name = "iopf_sva_test",
};

static struct notifier_block sva_bus_nb;
static struct iommu_device sva_iommu;
static struct iopf_queue *sva_queue;
static struct device *sva_dev;

/* ---- one FAULT batch at a time; page_response fills it ---- */

static DEFINE_MUTEX(sva_lock);        /* BIND / FAULT / UNBIND */
static DEFINE_SPINLOCK(batch_lock);   /* the fields below */
static DECLARE_WAIT_QUEUE_HEAD(batch_wq);
static struct iopf_sva_req *batch;    /* NULL when no FAULT is waiting */
static u32 batch_count, batch_answered, batch_pasid;
static u32 stray_responses;

static void sva_page_response(struct device *dev, struct iopf_fault *evt,
			      struct iommu_page_response *msg)
{
	bool matched = false;
	u32 i;

	spin_lock(&batch_lock);
	if (batch && msg->pasid == batch_pasid) {
		for (i = 0; i < batch_count; i++) {
			struct iopf_sva_req *r = &batch[i];

			if (r->grpid != msg->grpid || r->order)
				continue;
			r->code = msg->code;
			r->resp_pasid = msg->pasid;
			r->order = ++batch_answered;
			matched = true;
			break;
		}
	}
	if (!matched)
		stray_responses++;
	spin_unlock(&batch_lock);

	if (matched)
		wake_up(&batch_wq);
	else
		dev_dbg(dev, "response pasid %u grpid %u code %u matched no request\n",
			msg->pasid, msg->grpid, msg->code);
}

/* ---- domains ---- */

static int sva_blocked_attach_dev(struct iommu_domain *domain,
				  struct device *dev, struct iommu_domain *old)
{
	return 0;
}

static int sva_blocked_set_dev_pasid(struct iommu_domain *domain,
				     struct device *dev, ioasid_t pasid,
				     struct iommu_domain *old)
{
	/* Used by the core to take a PASID away again (detach). */
	return 0;
}

static const struct iommu_domain_ops sva_blocked_ops = {
	.attach_dev = sva_blocked_attach_dev,
	.set_dev_pasid = sva_blocked_set_dev_pasid,
};

static struct iommu_domain sva_blocked_domain = {
	.type = IOMMU_DOMAIN_BLOCKED,
	.ops = &sva_blocked_ops,
};

static int sva_domain_set_dev_pasid(struct iommu_domain *domain,
				    struct device *dev, ioasid_t pasid,
				    struct iommu_domain *old)
{
	/* Nothing to program: the "hardware" walks nothing. */
	return 0;
}

static void sva_domain_free(struct iommu_domain *domain)
{
	kfree(domain);
}

static const struct iommu_domain_ops sva_domain_ops = {
	.set_dev_pasid = sva_domain_set_dev_pasid,
	.free = sva_domain_free,
};

static struct iommu_domain *sva_domain_alloc_sva(struct device *dev,
						 struct mm_struct *mm)
{
	struct iommu_domain *domain = kzalloc(sizeof(*domain), GFP_KERNEL);

	if (!domain)
		return ERR_PTR(-ENOMEM);
	/* The core sets type, cookie_type, mm, owner and iopf_handler. */
	domain->ops = &sva_domain_ops;
	return domain;
}

/* ---- the IOMMU ---- */

static struct iommu_device *sva_probe_device(struct device *dev)
{
	if (dev->bus != &sva_bus)
		return ERR_PTR(-ENODEV);
	return &sva_iommu;
}

static const struct iommu_ops sva_ops = {
	/*
	 * .owner stays NULL on purpose: a probed device would otherwise pin
	 * this module (try_module_get at probe) and rmmod could never succeed.
	 * The module exit removes the device before the code goes away.
	 */
	.probe_device = sva_probe_device,
	.device_group = generic_single_device_group,
	.domain_alloc_sva = sva_domain_alloc_sva,
	.page_response = sva_page_response,
	.default_domain = &sva_blocked_domain,
	.blocked_domain = &sva_blocked_domain,
	.release_domain = &sva_blocked_domain,
};

static void sva_dev_release(struct device *dev)
{
	kfree(dev);
}

static int sva_add_device(void)
{
	const struct property_entry props[] = {
		PROPERTY_ENTRY_U32("pasid-num-bits", SVA_PASID_BITS),
		{}
	};
	struct iommu_group *group;
	struct device *dev;
	int rc;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	device_initialize(dev);
	dev->release = sva_dev_release;
	dev->bus = &sva_bus;
	rc = dev_set_name(dev, "iopf_sva_test0");
	if (rc)
		goto err_put;
	rc = device_create_managed_software_node(dev, props, NULL);
	if (rc)
		goto err_put;
	/* Binds the device to our IOMMU's fwnode, then device_add() probes it. */
	rc = iommu_mock_device_add(dev, &sva_iommu);
	if (rc)
		goto err_put;

	group = iommu_group_get(dev);
	if (!group) {
		dev_err(dev, "not probed by the software IOMMU\n");
		rc = -ENODEV;
		goto err_del;
	}
	iommu_group_put(group);

	rc = iopf_queue_add_device(sva_queue, dev);
	if (rc)
		goto err_del;
	sva_dev = dev;
	return 0;

err_del:
	device_del(dev);
err_put:
	put_device(dev);
	return rc;
}

/* ---- the misc device ---- */

struct sva_file {
	struct iommu_sva *handle; /* under sva_lock */
};

static int sva_open(struct inode *inode, struct file *file)
{
	struct sva_file *f = kzalloc(sizeof(*f), GFP_KERNEL);

	if (!f)
		return -ENOMEM;
	file->private_data = f;
	return 0;
}

/* Caller holds sva_lock. */
static void sva_unbind_locked(struct sva_file *f)
{
	/* No request may still be queued against this PASID. */
	iopf_queue_flush_dev(sva_dev);
	iommu_sva_unbind_device(f->handle);
	f->handle = NULL;
}

static int sva_release(struct inode *inode, struct file *file)
{
	struct sva_file *f = file->private_data;

	mutex_lock(&sva_lock);
	if (f->handle)
		sva_unbind_locked(f);
	mutex_unlock(&sva_lock);
	kfree(f);
	return 0;
}

static long sva_ioc_bind(struct sva_file *f, void __user *arg)
{
	struct iopf_sva_bind out = {};
	struct iommu_sva *handle;

	if (f->handle)
		return -EBUSY;
	if (!current->mm)
		return -EINVAL;
	handle = iommu_sva_bind_device(sva_dev, current->mm);
	if (IS_ERR(handle))
		return PTR_ERR(handle);
	out.pasid = iommu_sva_get_pasid(handle);
	out.max_pasids = sva_dev->iommu->max_pasids;
	if (out.pasid == IOMMU_PASID_INVALID) {
		iommu_sva_unbind_device(handle);
		return -ENOSPC;
	}
	if (copy_to_user(arg, &out, sizeof(out))) {
		iommu_sva_unbind_device(handle);
		return -EFAULT;
	}
	f->handle = handle;
	return 0;
}

static long sva_ioc_fault(struct sva_file *f, void __user *arg)
{
	struct iopf_sva_fault hdr;
	struct iopf_sva_req *reqs;
	u32 pasid, i, j, answered;
	unsigned long timeout;
	size_t bytes;
	long left;
	int ret = 0;

	if (!f->handle)
		return -ENOTCONN;
	if (copy_from_user(&hdr, arg, sizeof(hdr)))
		return -EFAULT;
	if (!hdr.count || hdr.count > IOPF_SVA_MAX_REQS ||
	    hdr.timeout_ms > IOPF_SVA_MAX_TIMEOUT_MS)
		return -EINVAL;
	timeout = msecs_to_jiffies(hdr.timeout_ms ?: IOPF_SVA_DEFAULT_TIMEOUT_MS);
	bytes = array_size(hdr.count, sizeof(*reqs));
	reqs = memdup_user(u64_to_user_ptr(hdr.reqs), bytes);
	if (IS_ERR(reqs))
		return PTR_ERR(reqs);
	for (i = 0; i < hdr.count; i++) {
		if (reqs[i].perm & ~(u32)(IOPF_SVA_PERM_READ | IOPF_SVA_PERM_WRITE |
					 IOPF_SVA_PERM_EXEC | IOPF_SVA_PERM_PRIV)) {
			ret = -EINVAL;
			goto out_free;
		}
		for (j = 0; j < i; j++)
			if (reqs[j].grpid == reqs[i].grpid) {
				ret = -EINVAL;
				goto out_free;
			}
		reqs[i].report_ret = 0;
		reqs[i].code = IOPF_SVA_RESP_NONE;
		reqs[i].resp_pasid = 0;
		reqs[i].order = 0;
	}
	pasid = iommu_sva_get_pasid(f->handle);

	spin_lock(&batch_lock);
	batch = reqs;
	batch_count = hdr.count;
	batch_answered = 0;
	batch_pasid = pasid;
	spin_unlock(&batch_lock);

	for (i = 0; i < hdr.count; i++) {
		struct iopf_fault evt = {
			.fault = {
				.type = IOMMU_FAULT_PAGE_REQ,
				.prm = {
					.flags = IOMMU_FAULT_PAGE_REQUEST_PASID_VALID |
						 IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE,
					.pasid = pasid,
					.grpid = reqs[i].grpid,
					.perm = reqs[i].perm,
					.addr = reqs[i].addr,
				},
			},
		};
		int rc = iommu_report_device_fault(sva_dev, &evt);

		spin_lock(&batch_lock);
		reqs[i].report_ret = rc;
		spin_unlock(&batch_lock);
	}

	left = wait_event_interruptible_timeout(batch_wq,
			READ_ONCE(batch_answered) >= hdr.count, timeout);

	/* Detach the batch: later responses count as stray. */
	spin_lock(&batch_lock);
	batch = NULL;
	answered = batch_answered;
	hdr.answered = answered;
	hdr.stray = stray_responses;
	spin_unlock(&batch_lock);

	if (answered < hdr.count)
		ret = left < 0 ? -EINTR : -ETIMEDOUT;
	if (copy_to_user(u64_to_user_ptr(hdr.reqs), reqs, bytes) ||
	    copy_to_user(arg, &hdr, sizeof(hdr)))
		ret = -EFAULT;
out_free:
	kfree(reqs);
	return ret;
}

static long sva_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct sva_file *f = file->private_data;
	void __user *uarg = (void __user *)arg;
	long ret;

	if (mutex_lock_interruptible(&sva_lock))
		return -EINTR;
	switch (cmd) {
	case IOPF_SVA_IOC_BIND:
		ret = sva_ioc_bind(f, uarg);
		break;
	case IOPF_SVA_IOC_FAULT:
		ret = sva_ioc_fault(f, uarg);
		break;
	case IOPF_SVA_IOC_UNBIND:
		if (f->handle) {
			sva_unbind_locked(f);
			ret = 0;
		} else {
			ret = -ENOTCONN;
		}
		break;
	default:
		ret = -ENOTTY;
	}
	mutex_unlock(&sva_lock);
	return ret;
}

static const struct file_operations sva_fops = {
	.owner = THIS_MODULE,
	.open = sva_open,
	.release = sva_release,
	.unlocked_ioctl = sva_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice sva_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = IOPF_SVA_DEV_NAME,
	.fops = &sva_fops,
	.mode = 0600,
};

/* ---- load / unload ---- */

static int __init sva_init(void)
{
	int rc;

	rc = bus_register(&sva_bus);
	if (rc)
		return rc;

	sva_queue = iopf_queue_alloc("iopf-sva-test");
	if (!sva_queue) {
		rc = -ENOMEM;
		goto err_bus;
	}

	sva_iommu.max_pasids = 1U << SVA_PASID_BITS;
	/* sysfs first: probing links the device to iommu->dev. */
	rc = iommu_device_sysfs_add(&sva_iommu, NULL, NULL, "iopf-sva-iommu");
	if (rc)
		goto err_queue;
	rc = iommu_device_register_bus(&sva_iommu, &sva_ops, &sva_bus,
				       &sva_bus_nb);
	if (rc)
		goto err_sysfs;

	rc = sva_add_device();
	if (rc)
		goto err_iommu;

	rc = misc_register(&sva_misc);
	if (rc)
		goto err_dev;

	pr_info("iopf_sva_test: /dev/%s ready, %s max_pasids %u\n",
		IOPF_SVA_DEV_NAME, dev_name(sva_dev), sva_dev->iommu->max_pasids);
	return 0;

err_dev:
	iopf_queue_remove_device(sva_queue, sva_dev);
	device_unregister(sva_dev);
	sva_dev = NULL;
err_iommu:
	iommu_device_unregister_bus(&sva_iommu, &sva_bus, &sva_bus_nb);
err_sysfs:
	iommu_device_sysfs_remove(&sva_iommu);
err_queue:
	iopf_queue_free(sva_queue);
err_bus:
	bus_unregister(&sva_bus);
	return rc;
}

static void __exit sva_exit(void)
{
	/* No file is open any more (each holds a module reference): no bond. */
	misc_deregister(&sva_misc);
	iopf_queue_remove_device(sva_queue, sva_dev);
	device_unregister(sva_dev); /* iommu_release_device via the notifier */
	sva_dev = NULL;
	iommu_device_unregister_bus(&sva_iommu, &sva_bus, &sva_bus_nb);
	iommu_device_sysfs_remove(&sva_iommu);
	iopf_queue_free(sva_queue); /* flushes and destroys the workqueue */
	bus_unregister(&sva_bus);
	pr_info("iopf_sva_test: unloaded, %u stray responses\n", stray_responses);
}

module_init(sva_init);
module_exit(sva_exit);

MODULE_DESCRIPTION("Software IOMMU driving the kernel's SVA I/O page fault path (test only)");
MODULE_LICENSE("GPL");
