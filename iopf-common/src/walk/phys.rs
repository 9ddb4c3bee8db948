//! Test memory for the walks (VT-d and SMMUv3): sparse physical memory, pages handed out
//! one after another, reads of the `fail` page failing.

extern crate std;

use std::collections::HashMap;

use super::Mem;

#[derive(Default)]
pub struct Phys {
    pub q: HashMap<u64, u64>,
    pub fail: Option<u64>,
    next_page: u64,
}

impl Mem for Phys {
    fn read(&mut self, pa: u64) -> Option<u64> {
        if self.fail == Some(pa & !0xfff) {
            return None;
        }
        Some(self.q.get(&pa).copied().unwrap_or(0))
    }
}

impl Phys {
    pub fn new() -> Self {
        Self { next_page: 0x10_0000, ..Default::default() }
    }
    pub fn page(&mut self) -> u64 {
        self.next_page += 0x1000;
        self.next_page
    }
    pub fn set(&mut self, pa: u64, v: u64) {
        self.q.insert(pa, v);
    }
}
