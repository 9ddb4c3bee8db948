//! Symbols from /proc/kallsyms: a kprobe needs the symbol, not BTF, and the VT-d walk needs
//! the direct map's base address.

use std::io::{BufRead, BufReader, Read};

/// The names in /proc/kallsyms, read once, as sorted 64-bit hashes (SipHash, fixed keys):
/// over 200,000 names as owned strings cost about 15 MiB, and the text itself about 8 MiB
/// held at once; 8 bytes a name is about 1.6 MiB. A false "present" needs a collision with
/// the one name asked about, about 1 in 10^14.
pub struct Kallsyms {
    names: Vec<u64>,
    /// Address of `page_offset_base` (the direct map's base, for the VT-d table walk); only
    /// root sees addresses.
    pub page_offset_base: Option<u64>,
    /// Address of `intel_iommu_ops`, which tells an Intel device's `iommu_device` from
    /// others' (the walk on recoverable reports); a data symbol (CONFIG_KALLSYMS_ALL).
    pub intel_iommu_ops: Option<u64>,
    /// Address of `_text`, the kernel image's start: its /proc/kcore segment is the one not
    /// in the linear map (`linear_map`).
    pub text: Option<u64>,
}

fn symbol_hash(s: &[u8]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// A line longer than this is not a kallsyms line (names are at most 512 bytes); it is
/// skipped rather than buffered whole.
const MAX_LINE: usize = 4096;

impl Kallsyms {
    /// Reads /proc/kallsyms line by line. The kernel takes about 0.1 s to produce it:
    /// `survey` reads it on a thread of its own while the BTF is parsed. An unreadable
    /// file gives no names (every kprobe then plans as unavailable, saying so).
    pub fn read() -> Self {
        match std::fs::File::open("/proc/kallsyms") {
            Ok(f) => Self::from_reader(f),
            Err(_) => Self::from_reader(std::io::empty()),
        }
    }

    /// `address type name [module]` lines.
    pub fn parse(text: &[u8]) -> Self {
        Self::from_reader(text)
    }

    fn from_reader(r: impl Read) -> Self {
        let mut r = BufReader::with_capacity(64 * 1024, r);
        let (mut page_offset_base, mut intel_iommu_ops, mut text) = (None, None, None);
        let mut names = Vec::new();
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            // Bounded: a line (or a file without newlines) past MAX_LINE is cut off and skipped.
            match r.by_ref().take(MAX_LINE as u64).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.len() == MAX_LINE && line.last() != Some(&b'\n') {
                // Drop the rest of an over-long line, unbuffered.
                let _ = r.skip_until(b'\n');
                continue;
            }
            let l = line.strip_suffix(b"\n").unwrap_or(&line);
            let mut it = l.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty());
            let (Some(addr), Some(_), Some(sym)) = (it.next(), it.next(), it.next()) else { continue };
            let address =
                || std::str::from_utf8(addr).ok().and_then(|a| u64::from_str_radix(a, 16).ok()).filter(|a| *a != 0);
            match sym {
                b"page_offset_base" => page_offset_base = address(),
                b"intel_iommu_ops" => intel_iommu_ops = address(),
                b"_text" => text = address(),
                _ => {}
            }
            names.push(symbol_hash(sym));
        }
        names.sort_unstable();
        names.dedup();
        names.shrink_to_fit();
        Kallsyms { names, page_offset_base, intel_iommu_ops, text }
    }

    pub fn contains(&self, s: &str) -> bool {
        self.names.binary_search(&symbol_hash(s.as_bytes())).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::{Kallsyms, MAX_LINE};

    #[test]
    fn names_and_the_direct_map_address() {
        let k = Kallsyms::parse(
            b"ffffffff81000000 T _stext\nffffffff82a1b2c8 D page_offset_base\nffffffffc0001000 t dmar_fault\t[intel_iommu]\n",
        );
        assert!(k.contains("_stext") && k.contains("dmar_fault") && k.contains("page_offset_base"));
        assert!(!k.contains("iommu_sva_iopf_handler") && !k.contains("T"));
        assert_eq!(k.page_offset_base, Some(0xffff_ffff_82a1_b2c8));
        assert_eq!(k.text, None);
        assert_eq!(Kallsyms::parse(b"ffff800080000000 T _text\n").text, Some(0xffff_8000_8000_0000));
        assert_eq!(k.intel_iommu_ops, None);
        let k = Kallsyms::parse(b"ffffffff8264d0a0 R intel_iommu_ops\n");
        assert_eq!((k.intel_iommu_ops, k.page_offset_base), (Some(0xffff_ffff_8264_d0a0), None));
        // Without privileges every address reads 0.
        let k = Kallsyms::parse(b"0000000000000000 D page_offset_base\n0000000000000000 R intel_iommu_ops\n");
        assert_eq!((k.page_offset_base, k.intel_iommu_ops), (None, None));
        assert!(k.contains("page_offset_base"));
    }

    #[test]
    fn an_over_long_line_is_skipped_and_the_next_one_kept() {
        let mut text = b"ffffffff81000000 T ".to_vec();
        text.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE));
        text.extend(b"\nffffffff81000010 T after_it\nffffffff81000020 T last_without_newline");
        let k = Kallsyms::parse(&text);
        assert!(k.contains("after_it") && k.contains("last_without_newline"));
        assert_eq!(k.names.len(), 2);
    }
}
