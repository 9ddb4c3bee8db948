//! Tiny BPF programs loaded by raw bpf(2), for the capability probes: they need no object,
//! no map and no parse of the kernel's BTF by aya (the fentry probe's target id comes from
//! our own BTF index, so a kernel without trampolines costs no 10 MiB parse to find out).

use std::os::fd::{FromRawFd as _, OwnedFd};

use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_prog_type};

/// One BPF instruction as the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Insn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

pub const MOV64_K: u8 = 0x07 | 0xb0;
pub const EXIT: u8 = 0x05 | 0x90;

/// `r0 = 0; exit`.
pub const RETURN_ZERO: [Insn; 2] =
    [Insn { code: MOV64_K, regs: 0, off: 0, imm: 0 }, Insn { code: EXIT, regs: 0, off: 0, imm: 0 }];

/// What a program attaches to, when its type needs it at load.
#[derive(Clone, Copy)]
pub struct Attach {
    pub kind: bpf_attach_type,
    /// The target's BTF type id (vmlinux).
    pub btf_id: u32,
}

/// Loads `insns` (GPL). On refusal: the error and ": " + the verifier's last line.
pub fn load(
    prog_type: bpf_prog_type,
    attach: Option<Attach>,
    insns: &[Insn],
) -> Result<OwnedFd, (std::io::Error, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = crate::bpfsys::zeroed_attr();
    // SAFETY: writing plain integers into the PROG_LOAD member of a zeroed union.
    unsafe {
        let a = &mut attr.__bindgen_anon_3;
        a.prog_type = prog_type as u32;
        a.insn_cnt = insns.len() as u32;
        a.insns = insns.as_ptr() as u64;
        a.license = license.as_ptr() as u64;
        a.log_level = 1;
        a.log_size = log.len() as u32;
        a.log_buf = log.as_mut_ptr() as u64;
        if let Some(t) = attach {
            a.expected_attach_type = t.kind as u32;
            a.attach_btf_id = t.btf_id;
        }
    }
    // SAFETY: PROG_LOAD with the attributes above; the instructions, license and log buffer
    // outlive the call, and the log's size is its length.
    match unsafe { crate::bpfsys::bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) } {
        // SAFETY: the call returned this descriptor to us; nothing else holds it.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let text =
                String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(log.len())]).into_owned();
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
            Err((e, if last.is_empty() { last } else { format!(": {last}") }))
        }
    }
}

/// Attaches a loaded tracing (fentry/fexit) program to the target it was loaded for; the
/// link lasts as long as the returned descriptor.
pub fn attach_tracing(prog: &OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let mut attr = crate::bpfsys::zeroed_attr();
    // Null name: the program's own attach target (5.5+).
    attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    // SAFETY: RAW_TRACEPOINT_OPEN with a valid program fd and no name pointer.
    let fd = unsafe { crate::bpfsys::bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr) }?;
    // SAFETY: as in `load`.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
