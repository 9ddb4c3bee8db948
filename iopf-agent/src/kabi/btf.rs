//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux` and split module BTF).
//!
//! It answers what the agent asks of a running kernel: does a function exist, what are its
//! parameters, where is a member inside a struct, what is an enumerator's value. It keeps
//! the BTF bytes as read and an index (each type's offset; named types sorted by
//! the hash of their name) and decodes a type only when asked: vmlinux holds over 100,000
//! types and the agent reads a few dozen, so decoding them all up front cost tens of MiB.
//! Kinds other than the ones those questions need are skipped by size.

use std::sync::Arc;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("BTF too short ({len} bytes) for its header")]
    Truncated { len: usize },
    #[error("bad BTF magic {magic:#06x} (expected 0xeb9f, little-endian)")]
    BadMagic { magic: u16 },
    #[error("BTF section out of bounds: {what} at {offset}+{len} in {total} bytes")]
    OutOfBounds { what: &'static str, offset: usize, len: usize, total: usize },
    #[error("unknown BTF kind {kind} at type id {id}")]
    UnknownKind { kind: u32, id: u32 },
}

pub type TypeId = u32;

/// A member of a struct or union, decoded on demand; `name` borrows the string section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub name: &'a str,
    pub type_id: TypeId,
    /// Offset from the start of the aggregate, in bits.
    pub bit_offset: u32,
    /// Non-zero for bitfields.
    pub bitfield_size: u32,
}

// BTF kinds (include/uapi/linux/btf.h).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const FLOAT: u32 = 16;
const ENUM64: u32 = 19;

/// A type's fixed header (`struct btf_type`) and where its trailing data starts.
#[derive(Clone, Copy, Debug)]
struct Header {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    /// Offset of the trailing data in the types section.
    data: usize,
}

/// Parsed BTF: vmlinux, or a module's split BTF on top of it (its ids and string offsets
/// continue after the base's, and its types may refer to base types).
#[derive(Debug, Clone)]
pub struct Btf {
    base: Option<Arc<Btf>>,
    /// Id of this BTF's first type: 1 for vmlinux (id 0 is `void`), after the base's for
    /// split BTF.
    first_id: u32,
    /// The BTF file's bytes, owned rather than copied: vmlinux's are over 5 MiB.
    data: Vec<u8>,
    /// Where the types and strings sections lie in `data`.
    types_at: std::ops::Range<usize>,
    strings_at: std::ops::Range<usize>,
    /// Offset in the types section of each own type, by id - `first_id`.
    offsets: Vec<u32>,
    /// (hash of the name, id) of each own named type, sorted.
    by_name: Vec<(u64, TypeId)>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// FNV-1a: the name index only needs to spread names, not resist anyone.
fn name_hash(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Bytes of trailing data after the header, by kind.
fn trailing(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        INT | 14 | 17 => 4,               // int encoding; var linkage; decl tag component
        ARRAY => 12,                      // elem, index type, len
        STRUCT | UNION | 15 => vlen * 12, // members; datasec vars
        ENUM | FUNC_PROTO => vlen * 8,    // enumerators; params
        ENUM64 => vlen * 12,
        PTR | FWD | TYPEDEF | 9 | 10 | 11 | FUNC | FLOAT | 18 => 0,
        _ => return None,
    })
}

impl Btf {
    /// Parses standalone BTF (vmlinux).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        Self::index(data.to_vec(), None, 1)
    }

    /// Parses standalone BTF, keeping `data` itself rather than a copy.
    pub fn from_vec(data: Vec<u8>) -> Result<Self, BtfError> {
        Self::index(data, None, 1)
    }

    /// The BTF file's bytes, as given.
    pub fn raw(&self) -> &[u8] {
        &self.data
    }

    fn types(&self) -> &[u8] {
        &self.data[self.types_at.clone()]
    }

    fn strings(&self) -> &[u8] {
        &self.data[self.strings_at.clone()]
    }

    /// Parses a module's split BTF on top of `base` (vmlinux).
    pub fn parse_split(data: &[u8], base: Arc<Btf>) -> Result<Self, BtfError> {
        let first = base.first_id + base.offsets.len() as u32;
        Self::index(data.to_vec(), Some(base), first)
    }

    fn index(data: Vec<u8>, base: Option<Arc<Btf>>, first_id: u32) -> Result<Self, BtfError> {
        if data.len() < 24 {
            return Err(BtfError::Truncated { len: data.len() });
        }
        let magic = u16_at(&data, 0);
        if magic != 0xeb9f {
            return Err(BtfError::BadMagic { magic });
        }
        let hdr_len = u32_at(&data, 4) as usize;
        let section = |what, off: usize, len: usize| {
            let start = hdr_len.saturating_add(off);
            if start.saturating_add(len) > data.len() {
                Err(BtfError::OutOfBounds { what, offset: start, len, total: data.len() })
            } else {
                Ok(start..start + len)
            }
        };
        let types_at = section("types", u32_at(&data, 8) as usize, u32_at(&data, 12) as usize)?;
        let strings_at = section("strings", u32_at(&data, 16) as usize, u32_at(&data, 20) as usize)?;
        let mut btf = Btf { base, first_id, data, types_at, strings_at, offsets: Vec::new(), by_name: Vec::new() };
        let (mut offsets, mut by_name) = (Vec::new(), Vec::new());
        let types = btf.types();
        let mut o = 0usize;
        while o + 12 <= types.len() {
            let id = first_id + offsets.len() as u32;
            let info = u32_at(types, o + 4);
            let kind = (info >> 24) & 0x1f;
            let len = trailing(kind, (info & 0xffff) as usize).ok_or(BtfError::UnknownKind { kind, id })?;
            if o + 12 + len > types.len() {
                return Err(BtfError::OutOfBounds { what: "type", offset: o + 12, len, total: types.len() });
            }
            let name = btf.str_at(u32_at(types, o));
            if !name.is_empty() {
                by_name.push((name_hash(name.as_bytes()), id));
            }
            offsets.push(o as u32);
            o += 12 + len;
        }
        by_name.sort_unstable();
        offsets.shrink_to_fit();
        by_name.shrink_to_fit();
        (btf.offsets, btf.by_name) = (offsets, by_name);
        Ok(btf)
    }

    /// A name at a string offset (split BTF's offsets continue after the base's strings).
    fn str_at(&self, off: u32) -> &str {
        let base_len = self.base.as_ref().map_or(0, |b| b.strings().len());
        let off = off as usize;
        let (table, off) = match &self.base {
            Some(b) if off < base_len => (b.strings(), off),
            _ => (self.strings(), off - base_len),
        };
        table
            .get(off..)
            .and_then(|s| s.split(|&c| c == 0).next())
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("")
    }

    /// The BTF that defines `id` and the header of that type.
    fn header(&self, id: TypeId) -> Option<(&Btf, Header)> {
        match id.checked_sub(self.first_id) {
            Some(i) => {
                let o = *self.offsets.get(i as usize)? as usize;
                let t = self.types();
                let info = u32_at(t, o + 4);
                let h = Header {
                    name_off: u32_at(t, o),
                    kind: (info >> 24) & 0x1f,
                    vlen: (info & 0xffff) as usize,
                    kind_flag: info >> 31 == 1,
                    size_or_type: u32_at(t, o + 8),
                    data: o + 12,
                };
                Some((self, h))
            }
            None => self.base.as_ref()?.header(id),
        }
    }

    /// The type's name (empty for anonymous types and `void`).
    fn name_of(&self, id: TypeId) -> &str {
        self.header(id).map_or("", |(b, h)| b.str_at(h.name_off))
    }

    /// Number of types this BTF itself defines.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Ids of the named types, own first, then the base's.
    fn named<'a>(&'a self, name: &'a str) -> Box<dyn Iterator<Item = TypeId> + 'a> {
        let h = name_hash(name.as_bytes());
        let start = self.by_name.partition_point(|&(k, _)| k < h);
        let own = self.by_name[start..]
            .iter()
            .take_while(move |&&(k, _)| k == h)
            .map(|&(_, id)| id)
            .filter(move |&id| self.name_of(id) == name);
        match &self.base {
            Some(b) => Box::new(own.chain(b.named(name))),
            None => Box::new(own),
        }
    }

    fn members_of(&self, id: TypeId) -> Option<(u32, Vec<Member<'_>>)> {
        let (b, h) = self.header(id)?;
        if h.kind != STRUCT && h.kind != UNION {
            return None;
        }
        let members = (0..h.vlen)
            .map(|i| {
                let m = h.data + i * 12;
                let raw = u32_at(b.types(), m + 8);
                let (bit_offset, bitfield_size) = if h.kind_flag { (raw & 0xff_ffff, raw >> 24) } else { (raw, 0) };
                Member {
                    name: self.str_at(u32_at(b.types(), m)),
                    type_id: u32_at(b.types(), m + 4),
                    bit_offset,
                    bitfield_size,
                }
            })
            .collect();
        Some((h.size_or_type, members))
    }

    /// The function's prototype: return type and named parameters.
    pub fn func<'a>(&'a self, name: &'a str) -> Option<(TypeId, Vec<(&'a str, TypeId)>)> {
        self.named(name).find_map(|id| {
            let (_, f) = self.header(id)?;
            if f.kind != FUNC {
                return None;
            }
            let (b, p) = self.header(f.size_or_type)?;
            if p.kind != FUNC_PROTO {
                return None;
            }
            let params = (0..p.vlen)
                .map(|i| {
                    let o = p.data + i * 8;
                    (self.str_at(u32_at(b.types(), o)), u32_at(b.types(), o + 4))
                })
                .collect();
            Some((p.size_or_type, params))
        })
    }

    /// The type id of function `name` (what an fentry program's load names as its target).
    pub fn func_id(&self, name: &str) -> Option<TypeId> {
        self.named(name).find(|&id| self.header(id).is_some_and(|(_, h)| h.kind == FUNC))
    }

    pub fn has_func(&self, name: &str) -> bool {
        self.func(name).is_some()
    }

    /// The struct (not a forward declaration) with this name: size and members.
    pub fn struct_members<'a>(&'a self, name: &'a str) -> Option<(u32, Vec<Member<'a>>)> {
        self.named(name)
            .find(|&id| self.header(id).is_some_and(|(_, h)| h.kind == STRUCT))
            .and_then(|id| self.members_of(id))
    }

    pub fn has_struct(&self, name: &str) -> bool {
        self.struct_members(name).is_some()
    }

    /// Byte offset and type of `member` inside struct `name`, searching anonymous
    /// struct/union members the way C does.
    pub fn member(&self, name: &str, member: &str) -> Option<(u32, TypeId)> {
        let (_, members) = self.struct_members(name)?;
        self.find_member(&members, member, 0, 0)
    }

    /// As `member`, in the struct named `name` that has member `marker`: some names are
    /// defined by two drivers (Arm's SMMU v1/v2 and v3 drivers each define `struct
    /// arm_smmu_device`), and the first of them need not be the one meant.
    pub fn member_where(&self, name: &str, marker: &str, member: &str) -> Option<(u32, TypeId)> {
        self.named(name)
            .filter(|&id| self.header(id).is_some_and(|(_, h)| h.kind == STRUCT))
            .filter_map(|id| self.members_of(id))
            .find(|(_, members)| self.find_member(members, marker, 0, 0).is_some())
            .and_then(|(_, members)| self.find_member(&members, member, 0, 0))
    }

    fn find_member(&self, members: &[Member<'_>], want: &str, base_bits: u32, depth: u32) -> Option<(u32, TypeId)> {
        for m in members {
            let bits = base_bits + m.bit_offset;
            if m.name == want {
                return Some((bits / 8, m.type_id));
            }
            if m.name.is_empty()
                && depth < 16
                && let Some((_, inner)) = self.members_of(self.strip(m.type_id))
                && let Some(found) = self.find_member(&inner, want, bits, depth + 1)
            {
                return Some(found);
            }
        }
        None
    }

    /// Follows typedefs and modifiers to the underlying type id.
    pub fn strip(&self, mut id: TypeId) -> TypeId {
        for _ in 0..32 {
            match self.header(id) {
                Some((_, h)) if matches!(h.kind, TYPEDEF | 9 | 10 | 11 | 18) => id = h.size_or_type,
                _ => break,
            }
        }
        id
    }

    /// Size in bytes of a type, following typedefs and modifiers.
    pub fn size_of(&self, id: TypeId) -> Option<u32> {
        let (b, h) = self.header(self.strip(id))?;
        match h.kind {
            INT | FLOAT | ENUM | ENUM64 | STRUCT | UNION => Some(h.size_or_type),
            PTR => Some(8),
            ARRAY => {
                let (elem, len) = (u32_at(b.types(), h.data), u32_at(b.types(), h.data + 8));
                Some(self.size_of(elem)? * len)
            }
            _ => None,
        }
    }

    /// The name of the struct a (possibly const/typedef'd) pointer points to.
    pub fn pointee_struct(&self, id: TypeId) -> Option<&str> {
        let (_, p) = self.header(self.strip(id))?;
        if p.kind != PTR {
            return None;
        }
        let target = self.strip(p.size_or_type);
        let (_, t) = self.header(target)?;
        matches!(t.kind, STRUCT | FWD).then(|| self.name_of(target))
    }

    /// Value of an enumerator, searched across all enums (own first, then the base's).
    pub fn enumerator(&self, name: &str) -> Option<i64> {
        (0..self.offsets.len() as u32)
            .find_map(|i| {
                let (b, h) = self.header(self.first_id + i)?;
                let (step, wide) = match h.kind {
                    ENUM => (8, false),
                    ENUM64 => (12, true),
                    _ => return None,
                };
                (0..h.vlen).find_map(|j| {
                    let e = h.data + j * step;
                    if self.str_at(u32_at(b.types(), e)) != name {
                        return None;
                    }
                    let lo = u32_at(b.types(), e + 4);
                    Some(if wide {
                        (lo as u64 | (u32_at(b.types(), e + 8) as u64) << 32) as i64
                    } else if h.kind_flag {
                        lo as i32 as i64
                    } else {
                        lo as i64
                    })
                })
            })
            .or_else(|| self.base.as_ref()?.enumerator(name))
    }

    /// True when this BTF (not its base) defines function `name`.
    pub fn defines_func(&self, name: &str) -> bool {
        let h = name_hash(name.as_bytes());
        let start = self.by_name.partition_point(|&(k, _)| k < h);
        self.by_name[start..]
            .iter()
            .take_while(|&&(k, _)| k == h)
            .any(|&(_, id)| self.name_of(id) == name && self.header(id).is_some_and(|(_, t)| t.kind == FUNC))
    }

    /// True when the return type of function `name` is `void`.
    pub fn func_returns_void(&self, name: &str) -> Option<bool> {
        self.func(name).map(|(ret, _)| ret == 0)
    }
}

/// Hand-made BTF for tests: raw blobs, and a module's split BTF of plain structs.
#[cfg(test)]
pub(crate) mod encode {
    use super::{Btf, STRUCT};

    /// A BTF blob from raw type records and a string table.
    pub fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let t: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut b = Vec::new();
        b.extend_from_slice(&0xeb9fu16.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        b
    }

    pub const fn info(kind: u32, vlen: u32, flag: bool) -> u32 {
        (flag as u32) << 31 | kind << 24 | vlen
    }

    /// A struct to encode: name, size, members as (name, byte offset).
    pub type Struct<'a> = (&'a str, u32, &'a [(&'a str, u32)]);

    /// A module's split BTF on `base` holding `structs`; members are typed void (only their
    /// offsets are read).
    pub fn split_structs(base: &Btf, structs: &[Struct<'_>]) -> Vec<u8> {
        let first_str = base.strings_at.len() as u32;
        let mut strings = Vec::new();
        let mut name = |n: &str| {
            let at = first_str + strings.len() as u32;
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
            at
        };
        let mut types = Vec::new();
        for (s, size, members) in structs {
            types.extend([name(s), info(STRUCT, members.len() as u32, false), *size]);
            for (m, off) in *members {
                types.extend([name(m), 0, off * 8]);
            }
        }
        blob(&types, &strings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::encode::{blob, info};

    #[test]
    fn members_enums_funcs_and_anonymous_unions() {
        // strings: 1 "int", 5 "s", 7 "a", 9 "b", 11 "E", 13 "X", 15 "f", 17 "p", 19 "c"
        let strings = b"\0int\0s\0a\0b\0E\0X\0f\0p\0c\0";
        let types = [
            1,
            info(INT, 0, false),
            4,
            32, // 1: int
            0,
            info(UNION, 1, false),
            8,
            19,
            1,
            0, // 2: union { int c; }
            5,
            info(STRUCT, 3, false),
            16,
            7,
            1,
            0,
            9,
            1,
            32,
            0,
            2,
            64, // 3: struct s { a; b; union }
            11,
            info(ENUM, 1, true),
            4,
            13,
            (-3i32) as u32, // 4: enum E { X = -3 }
            0,
            info(PTR, 0, false),
            3, // 5: struct s *
            0,
            info(FUNC_PROTO, 1, false),
            1,
            17,
            5, // 6: int (struct s *p)
            15,
            info(FUNC, 0, false),
            6, // 7: f
        ];
        let btf = Btf::parse(&blob(&types, strings)).unwrap();
        assert_eq!(btf.len(), 7);
        assert_eq!(btf.member("s", "b"), Some((4, 1)));
        assert_eq!(btf.member("s", "c"), Some((8, 1)), "through the anonymous union");
        assert_eq!(btf.member("s", "z"), None);
        assert_eq!(btf.size_of(3), Some(16));
        assert_eq!(btf.enumerator("X"), Some(-3));
        let (ret, params) = btf.func("f").unwrap();
        assert_eq!((ret, params), (1, vec![("p", 5)]));
        assert_eq!(btf.pointee_struct(5), Some("s"));
        assert!(btf.defines_func("f") && !btf.defines_func("s"));
        assert!(btf.has_struct("s") && !btf.has_struct("E"));
        assert_eq!((btf.func_id("f"), btf.func_id("s")), (Some(7), None));
    }

    #[test]
    fn a_name_two_structs_share_is_told_apart_by_a_member() {
        // strings: 1 "int", 5 "dev", 9 "base", 14 "evtq", 19 "streams"
        let strings = b"\0int\0dev\0base\0evtq\0streams\0";
        let types = [
            1,
            info(INT, 0, false),
            4,
            32, // 1: int
            5,
            info(STRUCT, 1, false),
            4,
            9,
            1,
            0, // 2: struct dev { int base; } (the first one named dev)
            5,
            info(STRUCT, 3, false),
            12,
            9,
            1,
            0,
            14,
            1,
            32,
            19,
            1,
            64, // 3: struct dev { int base; int evtq; int streams; }
        ];
        let btf = Btf::parse(&blob(&types, strings)).unwrap();
        assert_eq!(btf.member("dev", "streams"), None, "member() reads the first struct only");
        assert_eq!(btf.member_where("dev", "evtq", "streams"), Some((8, 1)));
        assert_eq!(btf.member_where("dev", "evtq", "base"), Some((0, 1)));
        assert_eq!(btf.member_where("dev", "nothing", "base"), None);
    }

    #[test]
    fn split_btf_continues_ids_and_strings() {
        let base = Arc::new(Btf::parse(&blob(&[1, info(INT, 0, false), 4, 32], b"\0int\0")).unwrap());
        // Split strings start at the base's length (5): 5 "m", 7 "g".
        let split_types = [0, info(FUNC_PROTO, 1, false), 0, 5, 1, 7, info(FUNC, 0, false), 2];
        let split = Btf::parse_split(&blob(&split_types, b"m\0g\0"), base).unwrap();
        assert!(split.defines_func("g"));
        assert_eq!(split.func("g").unwrap().1, vec![("m", 1)]);
        assert_eq!(split.size_of(1), Some(4), "base type through the split");
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(matches!(Btf::parse(&[0; 8]), Err(BtfError::Truncated { len: 8 })));
        assert!(matches!(
            Btf::parse(&blob(&[0, info(30, 0, false), 0], b"\0")),
            Err(BtfError::UnknownKind { kind: 30, id: 1 })
        ));
        assert!(matches!(Btf::parse(&blob(&[0, info(STRUCT, 5, false), 0], b"\0")), Err(BtfError::OutOfBounds { .. })));
    }
}
