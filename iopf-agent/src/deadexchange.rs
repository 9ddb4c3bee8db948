//! The eBPF object for a kernel whose BPF lacks compare-and-exchange (before 5.12). Its
//! verifier refuses an exchange instruction anywhere in a program, before it follows a single
//! path ("BPF_STX uses reserved fields"), even in code it would never reach. With the
//! `EXCHANGE` constant at 0 every exchange sits in such code, so each one is replaced by a
//! call of helper 0 (`BPF_FUNC_unspec`): it passes the first pass and the control-flow check
//! (a call falls through, so the code after it stays reachable, unlike a jump to itself),
//! and is refused ("unknown func") should a path ever reach it. Nothing else changes.

use object::{Object as _, ObjectSection as _, SectionFlags, elf::SHF_EXECINSTR};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PatchError {
    #[error("the eBPF object is not a readable ELF file")]
    Elf(#[source] object::Error),
    #[error("section `{0}` of the eBPF object lies outside the file")]
    Section(String),
}

/// BPF_STX | BPF_ATOMIC | size: word and double word.
const ATOMIC_W: u8 = 0x03 | 0xc0;
const ATOMIC_DW: u8 = 0x03 | 0xc0 | 0x18;
/// BPF_ADD, the one atomic operation before 5.12 (without BPF_FETCH).
const ATOMIC_ADD: i32 = 0x00;
/// BPF_LD | BPF_IMM | BPF_DW: a 16-byte instruction.
const LD_IMM64: u8 = 0x18;
/// `call 0`: BPF_JMP | BPF_CALL of helper 0, which no program type provides.
const CALL_UNSPEC: [u8; 8] = [0x85, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];

/// A copy of `elf` with every atomic instruction other than a plain add replaced by `call 0`,
/// in 8-byte-aligned storage (the ELF reader needs aligned headers); and how many it replaced.
pub fn without_exchange(elf: &[u8]) -> Result<(Vec<u64>, usize), PatchError> {
    let mut words = vec![0u64; elf.len().div_ceil(8)];
    // SAFETY: `words` owns at least `elf.len()` initialised bytes; u8 has no alignment need.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), elf.len()) };
    bytes.copy_from_slice(elf);
    let mut code = Vec::new();
    {
        let file = object::File::parse(&*bytes).map_err(PatchError::Elf)?;
        for s in file.sections() {
            let exec = matches!(s.flags(), SectionFlags::Elf { sh_flags, .. } if sh_flags.0 & SHF_EXECINSTR.0 != 0);
            if !exec {
                continue;
            }
            let name = s.name().unwrap_or("?").to_owned();
            let Some((off, len)) = s.file_range() else { continue };
            let (off, len) = (off as usize, len as usize);
            if off.checked_add(len).is_none_or(|end| end > bytes.len()) {
                return Err(PatchError::Section(name));
            }
            code.push((off, len));
        }
    }
    let mut replaced = 0;
    for (off, len) in code {
        replaced += patch_section(&mut bytes[off..off + len]);
    }
    Ok((words, replaced))
}

/// Rewrites one section's instructions in place; returns how many it replaced.
fn patch_section(insns: &mut [u8]) -> usize {
    let mut replaced = 0;
    let mut i = 0;
    while i + 8 <= insns.len() {
        let code = insns[i];
        let imm = i32::from_le_bytes([insns[i + 4], insns[i + 5], insns[i + 6], insns[i + 7]]);
        if (code == ATOMIC_W || code == ATOMIC_DW) && imm != ATOMIC_ADD {
            insns[i..i + 8].copy_from_slice(&CALL_UNSPEC);
            replaced += 1;
        }
        // The second half of a 64-bit load is data, not an instruction.
        i += if code == LD_IMM64 { 16 } else { 8 };
    }
    replaced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, regs: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = regs;
        b[2..4].copy_from_slice(&off.to_le_bytes());
        b[4..8].copy_from_slice(&imm.to_le_bytes());
        b
    }

    #[test]
    fn exchanges_become_a_call_of_no_helper_and_nothing_else_changes() {
        let cmpxchg = insn(ATOMIC_DW, 0x1a, -8, 0xf1);
        let xchg = insn(ATOMIC_DW, 0x21, 0, 0xe1);
        let fetch_add_w = insn(ATOMIC_W, 0x21, 4, 0x01);
        let add = insn(ATOMIC_DW, 0x21, 0, ATOMIC_ADD);
        // A 64-bit load whose second half happens to look like a compare-and-exchange.
        let ld = insn(LD_IMM64, 0x01, 0, 7);
        let mov = insn(0xb7, 0, 0, 0);
        let sec: Vec<[u8; 8]> = vec![mov, cmpxchg, add, ld, cmpxchg, xchg, fetch_add_w, mov];
        let mut bytes: Vec<u8> = sec.iter().flatten().copied().collect();
        assert_eq!(patch_section(&mut bytes), 3);
        let want: Vec<[u8; 8]> = vec![mov, CALL_UNSPEC, add, ld, cmpxchg, CALL_UNSPEC, CALL_UNSPEC, mov];
        let got: Vec<[u8; 8]> = bytes.chunks(8).map(|c| c.try_into().unwrap()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_shipped_object_loses_its_exchanges_only() {
        let obj = crate::loader::object();
        let (words, n) = without_exchange(obj).expect("patch");
        // SAFETY: `words` holds at least obj.len() bytes.
        let patched = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), obj.len()) };
        let changed = obj.chunks(8).zip(patched.chunks(8)).filter(|(a, b)| a != b).count();
        assert!(n > 0, "the object has exchanges to replace");
        assert_eq!(changed, n, "one 8-byte instruction per replacement, nothing else");
        assert!(patched.chunks(8).filter(|c| *c == CALL_UNSPEC).count() >= n);
    }
}
