//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux` and split module BTF).
//!
//! It answers what the agent asks of a running kernel: does a function exist, what are its
//! parameters, where is a member inside a struct, what is an enumerator's value. Only the
//! parts of the format those questions need are decoded; other kinds are skipped by size.

use std::{collections::HashMap, sync::Arc};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub type_id: TypeId,
    /// Offset from the start of the aggregate, in bits.
    pub bit_offset: u32,
    /// Non-zero for bitfields.
    pub bitfield_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Int {
        size: u32,
    },
    Ptr {
        target: TypeId,
    },
    Array {
        elem: TypeId,
        len: u32,
    },
    Struct {
        size: u32,
        members: Vec<Member>,
    },
    Union {
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        size: u32,
        values: Vec<(String, i64)>,
    },
    Fwd,
    Typedef {
        target: TypeId,
    },
    /// const, volatile, restrict and type tags: transparent for layout.
    Modifier {
        target: TypeId,
    },
    Func {
        proto: TypeId,
    },
    FuncProto {
        ret: TypeId,
        params: Vec<(String, TypeId)>,
    },
    Var,
    Datasec,
    Float {
        size: u32,
    },
    DeclTag,
}

#[derive(Debug, Clone)]
pub struct Type {
    pub name: String,
    pub kind: Kind,
}

/// Parsed BTF: vmlinux, or a module's split BTF on top of it (its ids and string offsets
/// continue after the base's, and its types may refer to base types).
#[derive(Debug, Clone)]
pub struct Btf {
    base: Option<Arc<Btf>>,
    /// Id of `types[0]`: 0 for vmlinux (id 0 is `void`), base length for split BTF.
    first_id: u32,
    types: Vec<Type>,
    /// name -> ids, for this BTF's own named types.
    by_name: HashMap<String, Vec<TypeId>>,
    strings: Vec<u8>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl Btf {
    /// Parses standalone BTF (vmlinux).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let mut btf = Btf {
            base: None,
            first_id: 0,
            types: vec![Type { name: String::new(), kind: Kind::Int { size: 0 } }],
            by_name: HashMap::new(),
            strings: Vec::new(),
        };
        btf.add(data)?;
        Ok(btf)
    }

    /// Parses a module's split BTF on top of `base` (vmlinux).
    pub fn parse_split(data: &[u8], base: Arc<Btf>) -> Result<Self, BtfError> {
        let mut btf = Btf {
            first_id: base.first_id + base.types.len() as u32,
            base: Some(base),
            types: Vec::new(),
            by_name: HashMap::new(),
            strings: Vec::new(),
        };
        btf.add(data)?;
        Ok(btf)
    }

    fn base_strings(&self) -> &[u8] {
        self.base.as_ref().map(|b| b.strings.as_slice()).unwrap_or(&[])
    }

    fn add(&mut self, data: &[u8]) -> Result<(), BtfError> {
        if data.len() < 24 {
            return Err(BtfError::Truncated { len: data.len() });
        }
        let magic = u16_at(data, 0);
        if magic != 0xeb9f {
            return Err(BtfError::BadMagic { magic });
        }
        let hdr_len = u32_at(data, 4) as usize;
        let section = |what, off: usize, len: usize| {
            let start = hdr_len + off;
            if start + len > data.len() {
                Err(BtfError::OutOfBounds { what, offset: start, len, total: data.len() })
            } else {
                Ok(&data[start..start + len])
            }
        };
        let types = section("types", u32_at(data, 8) as usize, u32_at(data, 12) as usize)?;
        let strs = section("strings", u32_at(data, 16) as usize, u32_at(data, 20) as usize)?;
        // Split BTF string offsets continue after the base's.
        let base_strs = self.base_strings();
        let str_at = |off: u32| -> String {
            let off = off as usize;
            let (table, off) = if off < base_strs.len() { (base_strs, off) } else { (strs, off - base_strs.len()) };
            table
                .get(off..)
                .and_then(|s| s.split(|&c| c == 0).next())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default()
        };
        let mut new = Vec::new();
        let mut o = 0usize;
        let first_id = self.first_id + self.types.len() as u32;
        while o + 12 <= types.len() {
            let id = first_id + new.len() as u32;
            let name = str_at(u32_at(types, o));
            let info = u32_at(types, o + 4);
            let size_or_type = u32_at(types, o + 8);
            let vlen = (info & 0xffff) as usize;
            let kind_no = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            o += 12;
            let need = |o: usize, n: usize| -> Result<(), BtfError> {
                if o + n > types.len() {
                    Err(BtfError::OutOfBounds { what: "type", offset: o, len: n, total: types.len() })
                } else {
                    Ok(())
                }
            };
            let kind = match kind_no {
                1 => {
                    need(o, 4)?;
                    o += 4;
                    Kind::Int { size: size_or_type }
                }
                2 => Kind::Ptr { target: size_or_type },
                3 => {
                    need(o, 12)?;
                    let k = Kind::Array { elem: u32_at(types, o), len: u32_at(types, o + 8) };
                    o += 12;
                    k
                }
                4 | 5 => {
                    need(o, vlen * 12)?;
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = o + i * 12;
                        let raw = u32_at(types, m + 8);
                        let (bit_offset, bitfield_size) =
                            if kind_flag { (raw & 0xff_ffff, raw >> 24) } else { (raw, 0) };
                        members.push(Member {
                            name: str_at(u32_at(types, m)),
                            type_id: u32_at(types, m + 4),
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    o += vlen * 12;
                    if kind_no == 4 {
                        Kind::Struct { size: size_or_type, members }
                    } else {
                        Kind::Union { size: size_or_type, members }
                    }
                }
                6 => {
                    need(o, vlen * 8)?;
                    let values = (0..vlen)
                        .map(|i| {
                            let e = o + i * 8;
                            let v = u32_at(types, e + 4);
                            let v = if kind_flag { v as i32 as i64 } else { v as i64 };
                            (str_at(u32_at(types, e)), v)
                        })
                        .collect();
                    o += vlen * 8;
                    Kind::Enum { size: size_or_type, values }
                }
                7 => Kind::Fwd,
                8 => Kind::Typedef { target: size_or_type },
                9 | 10 | 11 | 18 => Kind::Modifier { target: size_or_type },
                12 => Kind::Func { proto: size_or_type },
                13 => {
                    need(o, vlen * 8)?;
                    let params = (0..vlen)
                        .map(|i| {
                            let p = o + i * 8;
                            (str_at(u32_at(types, p)), u32_at(types, p + 4))
                        })
                        .collect();
                    o += vlen * 8;
                    Kind::FuncProto { ret: size_or_type, params }
                }
                14 => {
                    need(o, 4)?;
                    o += 4;
                    Kind::Var
                }
                15 => {
                    need(o, vlen * 12)?;
                    o += vlen * 12;
                    Kind::Datasec
                }
                16 => Kind::Float { size: size_or_type },
                17 => {
                    need(o, 4)?;
                    o += 4;
                    Kind::DeclTag
                }
                19 => {
                    need(o, vlen * 12)?;
                    let values = (0..vlen)
                        .map(|i| {
                            let e = o + i * 12;
                            let v = (u32_at(types, e + 4) as u64) | ((u32_at(types, e + 8) as u64) << 32);
                            (str_at(u32_at(types, e)), v as i64)
                        })
                        .collect();
                    o += vlen * 12;
                    Kind::Enum { size: size_or_type, values }
                }
                k => return Err(BtfError::UnknownKind { kind: k, id }),
            };
            new.push(Type { name, kind });
        }
        for (i, t) in new.into_iter().enumerate() {
            let id = first_id + i as u32;
            if !t.name.is_empty() {
                self.by_name.entry(t.name.clone()).or_default().push(id);
            }
            self.types.push(t);
        }
        self.strings = strs.to_vec();
        Ok(())
    }

    pub fn get(&self, id: TypeId) -> Option<&Type> {
        match id.checked_sub(self.first_id) {
            Some(i) => self.types.get(i as usize),
            None => self.base.as_ref()?.get(id),
        }
    }

    /// Number of types this BTF itself defines.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Named types, own first, then the base's.
    fn named<'a>(&'a self, name: &'a str) -> Box<dyn Iterator<Item = (TypeId, &'a Type)> + 'a> {
        let own = self.by_name.get(name).into_iter().flatten().filter_map(move |&id| Some((id, self.get(id)?)));
        match &self.base {
            Some(b) => Box::new(own.chain(b.named(name))),
            None => Box::new(own),
        }
    }

    /// The function's prototype: return type and named parameters.
    pub fn func<'a>(&'a self, name: &'a str) -> Option<(TypeId, &'a [(String, TypeId)])> {
        self.named(name).find_map(|(_, t)| match t.kind {
            Kind::Func { proto } => match &self.get(proto)?.kind {
                Kind::FuncProto { ret, params } => Some((*ret, params.as_slice())),
                _ => None,
            },
            _ => None,
        })
    }

    pub fn has_func(&self, name: &str) -> bool {
        self.func(name).is_some()
    }

    /// The struct (not a forward declaration) with this name.
    pub fn struct_members<'a>(&'a self, name: &'a str) -> Option<(u32, &'a [Member])> {
        self.named(name).find_map(|(_, t)| match &t.kind {
            Kind::Struct { size, members } => Some((*size, members.as_slice())),
            _ => None,
        })
    }

    pub fn has_struct(&self, name: &str) -> bool {
        self.struct_members(name).is_some()
    }

    /// Byte offset and type of `member` inside struct `name`, searching anonymous
    /// struct/union members the way C does.
    pub fn member(&self, name: &str, member: &str) -> Option<(u32, TypeId)> {
        let (_, members) = self.struct_members(name)?;
        self.find_member(members, member, 0)
    }

    fn find_member(&self, members: &[Member], want: &str, base_bits: u32) -> Option<(u32, TypeId)> {
        for m in members {
            let bits = base_bits + m.bit_offset;
            if m.name == want {
                return Some((bits / 8, m.type_id));
            }
            if m.name.is_empty()
                && let Kind::Struct { members: inner, .. } | Kind::Union { members: inner, .. } =
                    &self.get(self.strip(m.type_id))?.kind
                && let Some(found) = self.find_member(inner, want, bits)
            {
                return Some(found);
            }
        }
        None
    }

    /// Follows typedefs and modifiers to the underlying type id.
    pub fn strip(&self, mut id: TypeId) -> TypeId {
        for _ in 0..32 {
            match self.get(id).map(|t| &t.kind) {
                Some(Kind::Typedef { target } | Kind::Modifier { target }) => id = *target,
                _ => break,
            }
        }
        id
    }

    /// Size in bytes of a type, following typedefs and modifiers.
    pub fn size_of(&self, id: TypeId) -> Option<u32> {
        match &self.get(self.strip(id))?.kind {
            Kind::Int { size } | Kind::Float { size } | Kind::Enum { size, .. } => Some(*size),
            Kind::Struct { size, .. } | Kind::Union { size, .. } => Some(*size),
            Kind::Ptr { .. } => Some(8),
            Kind::Array { elem, len } => Some(self.size_of(*elem)? * len),
            _ => None,
        }
    }

    /// The name of the struct a (possibly const/typedef'd) pointer points to.
    pub fn pointee_struct(&self, id: TypeId) -> Option<&str> {
        match &self.get(self.strip(id))?.kind {
            Kind::Ptr { target } => {
                let t = self.get(self.strip(*target))?;
                matches!(t.kind, Kind::Struct { .. } | Kind::Fwd).then_some(t.name.as_str())
            }
            _ => None,
        }
    }

    /// Value of an enumerator, searched across all enums.
    pub fn enumerator(&self, name: &str) -> Option<i64> {
        self.types
            .iter()
            .find_map(|t| match &t.kind {
                Kind::Enum { values, .. } => values.iter().find(|(n, _)| n == name).map(|(_, v)| *v),
                _ => None,
            })
            .or_else(|| self.base.as_ref()?.enumerator(name))
    }

    /// True when this BTF (not its base) defines function `name`.
    pub fn defines_func(&self, name: &str) -> bool {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .any(|&id| matches!(self.get(id).map(|t| &t.kind), Some(Kind::Func { .. })))
    }

    /// True when the return type of function `name` is `void`.
    pub fn func_returns_void(&self, name: &str) -> Option<bool> {
        self.func(name).map(|(ret, _)| ret == 0)
    }
}
