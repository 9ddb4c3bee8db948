//! Synthetic faults through the real in-kernel core (BPF_PROG_TEST_RUN on raw-tracepoint
//! programs). Every call runs the same classification, aggregation and event code as the
//! kernel hooks; data is marked simulated.

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use iopf_common::iopf::{DEV_NAME_LEN, Fault, InflightKey};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InjectError {
    #[error("injection program `{0}` missing from the eBPF object")]
    Missing(&'static str),
    #[error("injection program `{prog}` failed")]
    Program { prog: &'static str, source: aya::programs::ProgramError },
    #[error("injection program `{prog}` returned {ret}")]
    Returned { prog: &'static str, ret: u32 },
    #[error("run-time flags unusable")]
    Flags(#[source] crate::iopf::maps::MapsError),
    #[error("test record map unusable")]
    Map(#[source] aya::maps::MapError),
}

/// Byte layout of `IOPF_TEST_REC`.
pub use iopf_common::iopf::test_rec as rec;

const PROGS: [&str; 9] = [
    "inject_report",
    "inject_walked",
    "inject_handler",
    "inject_mm_fix",
    "inject_response",
    "inject_dequeue",
    "inject_free",
    "inject_record",
    "inject_record_handler",
];

pub struct Injector<'a> {
    ebpf: &'a mut Ebpf,
}

impl<'a> Injector<'a> {
    /// Loads the injection programs (they are never attached; test-run only).
    pub fn new(ebpf: &'a mut Ebpf) -> Result<Self, InjectError> {
        for name in PROGS {
            let p: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(InjectError::Missing(name))?
                .try_into()
                .map_err(|source| InjectError::Program { prog: name, source })?;
            if p.fd().is_err() {
                p.load().map_err(|source| InjectError::Program { prog: name, source })?;
            }
        }
        Ok(Self { ebpf })
    }

    fn run(&mut self, prog: &'static str, args: &[u64]) -> Result<(), InjectError> {
        let p: &mut RawTracePoint = self
            .ebpf
            .program_mut(prog)
            .ok_or(InjectError::Missing(prog))?
            .try_into()
            .map_err(|source| InjectError::Program { prog, source })?;
        let mut opts = RawTracePointRunOptions::new();
        opts.args[..args.len()].copy_from_slice(args);
        let r = p.test_run(opts).map_err(|source| InjectError::Program { prog, source })?;
        if r.return_value != 0 {
            return Err(InjectError::Returned { prog, ret: r.return_value });
        }
        Ok(())
    }

    pub fn report(
        &mut self,
        dev: &[u8; DEV_NAME_LEN],
        f: &Fault,
        now: u64,
        tuple_key: InflightKey,
    ) -> Result<(), InjectError> {
        let w = |i: usize| u64::from_le_bytes(dev[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        self.run(
            "inject_report",
            &[
                w(0),
                w(1),
                w(2),
                w(3),
                f.addr,
                f.fault_type as u64 | (f.flags as u64) << 32,
                f.pasid as u64 | (f.grpid as u64) << 32,
                f.perm as u64,
                now,
                tuple_key.a,
                tuple_key.b,
            ],
        )
    }

    /// A walk at report entry found `level` for `f` (as the VT-d report walk notes it).
    pub fn walked(&mut self, f: &Fault, level: iopf_common::iopf::Level) -> Result<(), InjectError> {
        self.run("inject_walked", &[f.addr, f.pasid as u64 | (f.grpid as u64) << 32, level as u64])
    }

    pub fn handler(&mut self, key: InflightKey, dom_type: u32, nest_parent: bool, now: u64) -> Result<(), InjectError> {
        self.run("inject_handler", &[key.a, key.b, dom_type as u64, nest_parent as u64, now])
    }

    pub fn mm_fix(&mut self, key: InflightKey, ns: u64) -> Result<(), InjectError> {
        self.run("inject_mm_fix", &[key.a, key.b, ns])
    }

    pub fn response(&mut self, key: InflightKey, code: u8, now: u64) -> Result<(), InjectError> {
        self.run("inject_response", &[key.a, key.b, code as u64, now])
    }

    /// iommufd takes the group for user space (`iopf_group_dequeue`).
    pub fn dequeue(&mut self, key: InflightKey, now: u64) -> Result<(), InjectError> {
        self.run("inject_dequeue", &[key.a, key.b, now])
    }

    /// Groups stay in flight until freed, as when the agent has the free hook attached.
    pub fn keep_until_free(&mut self, keep: bool) -> Result<(), InjectError> {
        crate::iopf::maps::set_keep_until_free(self.ebpf, keep).map_err(InjectError::Flags)
    }

    pub fn free(&mut self, key: InflightKey, now: u64) -> Result<(), InjectError> {
        self.run("inject_free", &[key.a, key.b, now])
    }

    /// Writes `bytes` (a synthetic device/event/group/domain laid out per the BTF under
    /// test) to kernel memory and runs the report (+ handler) read path over it.
    pub fn record(&mut self, bytes: &[u8; rec::SIZE], now: u64, key: InflightKey) -> Result<(), InjectError> {
        let mut m: Array<&mut MapData, [u8; rec::SIZE]> =
            Array::try_from(self.ebpf.map_mut("IOPF_TEST_REC").ok_or(InjectError::Missing("IOPF_TEST_REC"))?)
                .map_err(InjectError::Map)?;
        m.set(0, bytes, 0).map_err(InjectError::Map)?;
        // Report and handler are two test runs; keep this thread on one CPU between them so
        // the handler finds the report in that CPU's slot (as in the kernel, where both run
        // in the reporting task) whether or not the cross-CPU scan is on.
        let _pin = PinnedToCpu::current();
        self.run("inject_record", &[now, key.a, key.b])?;
        self.run("inject_record_handler", &[now, key.a, key.b])
    }
}

/// Pins the calling thread to the CPU it is on until dropped (then restores its mask).
pub struct PinnedToCpu {
    old: Option<libc::cpu_set_t>,
}

impl PinnedToCpu {
    pub fn current() -> Self {
        // SAFETY: cpu_set_t is plain data; the calls get/set the calling thread's mask (pid 0)
        // with the right size; on failure nothing changes and the guard restores nothing.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old) != 0 {
                return Self { old: None };
            }
            let cpu = libc::sched_getcpu();
            if cpu < 0 {
                return Self { old: None };
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) != 0 {
                return Self { old: None };
            }
            Self { old: Some(old) }
        }
    }
}

impl Drop for PinnedToCpu {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            // SAFETY: restores the mask saved above for the calling thread.
            unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), old) };
        }
    }
}
