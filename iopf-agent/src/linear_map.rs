//! The kernel's linear map (`va = pa + base` for RAM), for walks that follow physical
//! addresses on architectures without a direct-map base variable (arm64: the SMMUv3 walk).
//! Taken from /proc/kcore's program headers: the kernel writes one PT_LOAD segment per RAM
//! range with its linear-map address and its physical address, and one for the kernel image
//! (at `_text`, another mapping). Nothing is assumed about the architecture's layout.

use std::{fs::File, os::unix::fs::FileExt as _, path::Path};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinearMapError {
    #[error("cannot read {path} ({why}): run as root on a kernel with CONFIG_PROC_KCORE")]
    Read { path: String, why: String },
    #[error("{path} is not a little-endian ELF64 core")]
    NotElf { path: String },
    #[error("{path} has {phnum} program headers of {phentsize} bytes, more than {MAX_HEADERS} bytes")]
    TooMany { path: String, phnum: u16, phentsize: u16 },
    #[error("{path} lists no RAM segment with a physical address")]
    NoRam { path: String },
    #[error(
        "{path}'s RAM segments map at {offsets} different offsets, not one linear map (the kernel image's is told apart by kallsyms' _text: run as root)"
    )]
    Disagree { path: String, offsets: usize },
}

/// Bound on the program headers read (a segment per RAM range: thousands at most).
const MAX_HEADERS: u64 = 1 << 20;
const PT_LOAD: u32 = 1;
const PHDR_SIZE: usize = 56;

/// `base` such that the kernel reads physical address `pa` of RAM at `pa + base` (wrapping).
/// `text`: kallsyms' `_text`, whose segment is the kernel image's, not the linear map's.
pub fn from_kcore(path: &Path, text: Option<u64>) -> Result<u64, LinearMapError> {
    let p = || path.display().to_string();
    let read = |why: std::io::Error| LinearMapError::Read { path: p(), why: why.to_string() };
    let f = File::open(path).map_err(read)?;
    let mut eh = [0u8; 64];
    f.read_exact_at(&mut eh, 0).map_err(read)?;
    let (phoff, phentsize, phnum) = elf_header(&eh).ok_or_else(|| LinearMapError::NotElf { path: p() })?;
    let len = phentsize as u64 * phnum as u64;
    if len > MAX_HEADERS {
        return Err(LinearMapError::TooMany { path: p(), phnum, phentsize });
    }
    let mut ph = vec![0u8; len as usize];
    f.read_exact_at(&mut ph, phoff).map_err(read)?;
    base(&ph, phentsize as usize, text).map_err(|e| match e {
        Found::None => LinearMapError::NoRam { path: p() },
        Found::Many(offsets) => LinearMapError::Disagree { path: p(), offsets },
    })
}

/// (e_phoff, e_phentsize, e_phnum) of a little-endian ELF64 header.
fn elf_header(h: &[u8; 64]) -> Option<(u64, u16, u16)> {
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let phoff = u64::from_le_bytes(h[0x20..0x28].try_into().ok()?);
    let phentsize = u16::from_le_bytes([h[0x36], h[0x37]]);
    let phnum = u16::from_le_bytes([h[0x38], h[0x39]]);
    (phentsize as usize >= PHDR_SIZE).then_some((phoff, phentsize, phnum))
}

enum Found {
    None,
    Many(usize),
}

/// The one `vaddr - paddr` of the PT_LOAD segments that have a physical address (the
/// others say `paddr = -1`), the kernel image's (containing `text`) left out.
fn base(ph: &[u8], entsize: usize, text: Option<u64>) -> Result<u64, Found> {
    let mut offsets: Vec<u64> = vec![];
    for e in ph.chunks_exact(entsize) {
        let word = |at: usize| u64::from_le_bytes(e[at..at + 8].try_into().unwrap_or_default());
        let kind = u32::from_le_bytes(e[0..4].try_into().unwrap_or_default());
        let (vaddr, paddr, memsz) = (word(0x10), word(0x18), word(0x28));
        if kind != PT_LOAD || paddr == u64::MAX {
            continue;
        }
        if text.is_some_and(|t| t >= vaddr && t - vaddr < memsz) {
            continue;
        }
        let d = vaddr.wrapping_sub(paddr);
        if !offsets.contains(&d) {
            offsets.push(d);
        }
    }
    match offsets[..] {
        [d] => Ok(d),
        [] => Err(Found::None),
        _ => Err(Found::Many(offsets.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phdr(kind: u32, vaddr: u64, paddr: u64, memsz: u64) -> Vec<u8> {
        let mut e = vec![0u8; PHDR_SIZE];
        e[0..4].copy_from_slice(&kind.to_le_bytes());
        e[0x10..0x18].copy_from_slice(&vaddr.to_le_bytes());
        e[0x18..0x20].copy_from_slice(&paddr.to_le_bytes());
        e[0x28..0x30].copy_from_slice(&memsz.to_le_bytes());
        e
    }

    /// A core as arm64's kcore writes one: a note, the kernel image at `_text` (physical
    /// 0x4020_0000), vmalloc (no physical address), two RAM ranges in the linear map.
    fn kcore(text_vaddr: u64) -> Vec<u8> {
        let segs = [
            phdr(4, 0, 0, 0),
            phdr(PT_LOAD, text_vaddr, 0x4020_0000, 0x0200_0000),
            phdr(PT_LOAD, 0xffff_8000_8000_0000, u64::MAX, 1 << 40),
            phdr(PT_LOAD, 0xffff_0000_c000_0000, 0x4000_0000, 0x1000_0000),
            phdr(PT_LOAD, 0xffff_0000_e000_0000, 0x6000_0000, 0x2000_0000),
        ];
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for s in segs {
            f.extend(s);
        }
        f
    }

    fn file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("iopf-kcore-{name}-{}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn the_ram_segments_offset_without_the_kernel_image() {
        const TEXT: u64 = 0xffff_8000_8000_0000 + (1 << 41);
        let p = file("ok", &kcore(TEXT));
        // 0xffff_0000_c000_0000 - 0x4000_0000, the same for both RAM ranges.
        assert_eq!(from_kcore(&p, Some(TEXT + 0x1000)), Ok(0xffff_0000_8000_0000));
        // Without `_text` the image's segment is a second offset: no answer, no guess.
        assert!(matches!(from_kcore(&p, None), Err(LinearMapError::Disagree { offsets: 2, .. })));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn what_is_no_core_says_so() {
        let p = file("zero", &[0u8; 128]);
        assert!(matches!(from_kcore(&p, None), Err(LinearMapError::NotElf { .. })));
        let short = file("short", b"\x7fELF");
        assert!(matches!(from_kcore(&short, None), Err(LinearMapError::Read { .. })));
        let mut only_image = kcore(0xffff_8000_0000_0000);
        only_image.truncate(64 + 3 * PHDR_SIZE);
        only_image[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        let img = file("image", &only_image);
        assert!(matches!(from_kcore(&img, Some(0xffff_8000_0000_0000)), Err(LinearMapError::NoRam { .. })));
        let e = from_kcore(Path::new("/nonexistent/kcore"), None).unwrap_err().to_string();
        assert!(e.starts_with("cannot read /nonexistent/kcore (") && e.ends_with("CONFIG_PROC_KCORE"), "{e}");
        for f in [p, short, img] {
            std::fs::remove_file(f).unwrap();
        }
    }
}
