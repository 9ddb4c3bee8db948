/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Userspace interface of iopf_sva_test.ko: /dev/iopf_sva_test.
 *
 * One open file holds at most one SVA bond (the caller's mm). All calls are
 * serialised inside the module; every failure is an errno, and FAULT waits at
 * most timeout_ms for the page responses.
 *
 * Mirrored by tests/src/sva.rs (keep both in sync).
 */
#ifndef IOPF_SVA_TEST_H
#define IOPF_SVA_TEST_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define IOPF_SVA_DEV_NAME "iopf_sva_test"

/* Largest FAULT batch, and the FAULT wait bounds. */
#define IOPF_SVA_MAX_REQS 512
#define IOPF_SVA_DEFAULT_TIMEOUT_MS 5000
#define IOPF_SVA_MAX_TIMEOUT_MS 60000

/* perm bits, the kernel's IOMMU_FAULT_PERM_* values. */
#define IOPF_SVA_PERM_READ (1 << 0)
#define IOPF_SVA_PERM_WRITE (1 << 1)
#define IOPF_SVA_PERM_EXEC (1 << 2)
#define IOPF_SVA_PERM_PRIV (1 << 3)

/* code: the kernel's enum iommu_page_response_code, or NONE. */
#define IOPF_SVA_RESP_SUCCESS 0
#define IOPF_SVA_RESP_INVALID 1
#define IOPF_SVA_RESP_FAILURE 2
#define IOPF_SVA_RESP_NONE 0xffffffffu /* no response within the timeout */

/* BIND (out): iommu_sva_bind_device(dev, current->mm). 8 bytes. */
struct iopf_sva_bind {
	__u32 pasid;
	__u32 max_pasids; /* dev->iommu->max_pasids, for information */
};

/* One page request of a FAULT batch. 32 bytes. */
struct iopf_sva_req {
	__u64 addr;       /* in: address in the bound mm */
	__u32 perm;       /* in: IOPF_SVA_PERM_* */
	__u32 grpid;      /* in: page request group id, unique within a batch */
	__s32 report_ret; /* out: return of iommu_report_device_fault() */
	__u32 code;       /* out: code given to ops->page_response, or RESP_NONE */
	__u32 resp_pasid; /* out: pasid given to ops->page_response */
	__u32 order;      /* out: 1-based arrival rank of the response, 0 if none */
};

/*
 * FAULT (in/out): reports `count` page requests, each its own group
 * (PASID_VALID | LAST_PAGE, the bound PASID), then waits until all `count`
 * responses have come through ops->page_response or timeout_ms has passed.
 * The request array is written back in both cases; the ioctl then fails with
 * ETIMEDOUT (or EINTR on a signal) when answered < count. 24 bytes.
 */
struct iopf_sva_fault {
	__u64 reqs;        /* in: user pointer to `count` struct iopf_sva_req */
	__u32 count;       /* in: 1..IOPF_SVA_MAX_REQS */
	__u32 timeout_ms;  /* in: 0 = IOPF_SVA_DEFAULT_TIMEOUT_MS */
	__u32 answered;    /* out: responses matched to this batch */
	__u32 stray;       /* out: responses seen since load that matched no batch */
};

#define IOPF_SVA_IOC_MAGIC 0xB5
#define IOPF_SVA_IOC_BIND _IOR(IOPF_SVA_IOC_MAGIC, 1, struct iopf_sva_bind)
#define IOPF_SVA_IOC_FAULT _IOWR(IOPF_SVA_IOC_MAGIC, 2, struct iopf_sva_fault)
#define IOPF_SVA_IOC_UNBIND _IO(IOPF_SVA_IOC_MAGIC, 3)

#endif /* IOPF_SVA_TEST_H */
