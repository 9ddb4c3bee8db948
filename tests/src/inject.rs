//! A synthetic unit in one map value, run over by a family's injection programs
//! (`BPF_PROG_TEST_RUN`): one program writes the value's kernel address into a map, so the
//! test can write absolute pointers into the value; another runs the family's decoder over
//! the value exactly as its hook would.

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _},
};

/// The names of a family's injection programs and maps.
pub struct Names {
    /// Writes the value's kernel address into `base_map`.
    pub base_prog: &'static str,
    /// Runs the decoder over the value.
    pub run_prog: &'static str,
    pub value_map: &'static str,
    pub base_map: &'static str,
}

/// The loaded injection programs of one family over a value of `N` bytes.
pub struct Injected<'a, const N: usize> {
    ebpf: &'a mut Ebpf,
    names: Names,
    /// The value's kernel address.
    pub base: u64,
}

impl<'a, const N: usize> Injected<'a, N> {
    /// Loads the programs of `ebpf` and reads the value's address.
    pub fn new(ebpf: &'a mut Ebpf, names: Names) -> Result<Self, String> {
        for name in [names.base_prog, names.run_prog] {
            let p: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(format!("{name} missing"))?
                .try_into()
                .map_err(|e| format!("{name}: {e}"))?;
            if p.fd().is_err() {
                p.load().map_err(|e| format!("load {name}: {e}"))?;
            }
        }
        let mut me = Self { ebpf, names, base: 0 };
        me.run_prog(me.names.base_prog)?;
        let map = me.names.base_map;
        let m: Array<&MapData, u64> =
            Array::try_from(me.ebpf.map(map).ok_or(format!("{map} missing"))?).map_err(|e| e.to_string())?;
        me.base = m.get(&0, 0).map_err(|e| e.to_string())?;
        if me.base == 0 {
            return Err(format!("{} gave no address", me.names.base_prog));
        }
        Ok(me)
    }

    fn run_prog(&mut self, name: &str) -> Result<(), String> {
        let p: &mut RawTracePoint =
            self.ebpf.program_mut(name).ok_or(format!("{name} missing"))?.try_into().map_err(|e| format!("{e}"))?;
        if p.fd().is_err() {
            p.load().map_err(|e| format!("load {name}: {e}"))?;
        }
        p.test_run(RawTracePointRunOptions::new()).map(drop).map_err(|e| format!("test run {name}: {e}"))
    }

    /// Writes `value` and runs the decoder over it once.
    pub fn run(&mut self, value: &[u8; N]) -> Result<(), String> {
        self.run_as(self.names.run_prog, value)
    }

    /// Writes `value` and runs the family's program `prog` over it once (a family with more
    /// than one hook over the same unit).
    pub fn run_as(&mut self, prog: &str, value: &[u8; N]) -> Result<(), String> {
        let map = self.names.value_map;
        let mut m: Array<&mut MapData, [u8; N]> =
            Array::try_from(self.ebpf.map_mut(map).ok_or(format!("{map} missing"))?).map_err(|e| e.to_string())?;
        m.set(0, value, 0).map_err(|e| e.to_string())?;
        self.run_prog(prog)
    }
}
