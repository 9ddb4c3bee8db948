//! The running kernel's ABI as its BTF describes it: which functions exist (in vmlinux or a
//! module), their signatures, struct layouts. Kernel-version differences are decided here and
//! nowhere else, from BTF shape rather than version numbers.

pub mod btf;
pub mod iopf;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use thiserror::Error;

pub use btf::Btf;

pub const DEFAULT_BTF_DIR: &str = "/sys/kernel/btf";

#[derive(Debug, Error)]
pub enum KabiError {
    #[error("kernel BTF `{path}` is not readable: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("kernel BTF `{path}` cannot be parsed")]
    Parse { path: PathBuf, source: btf::BtfError },
}

/// True when BPF programs may read another CPU's slot of a per-CPU map
/// (`bpf_map_lookup_percpu_elem`, 5.19+): the page-fault exit path then finds the entry of a
/// thread that migrated while it slept inside its fault.
pub fn has_percpu_lookup(vmlinux: &Btf) -> bool {
    vmlinux.enumerator("BPF_FUNC_map_lookup_percpu_elem").is_some()
}

/// Where a kernel function lives: vmlinux or a module (whose BTF an fentry attach needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FuncSite {
    Vmlinux,
    Module(String),
}

/// vmlinux BTF plus the split BTF of loaded modules, parsed on demand; and aya's parse of
/// the same bytes (what fentry programs' loads need), made at most once, from the bytes our
/// index holds, and only when a fentry program is loaded: aya keeps 72 bytes per type
/// (about 12 MiB for vmlinux), which a kernel whose hooks go on kprobes or tracepoints
/// never needs.
pub struct KernelBtf {
    dir: PathBuf,
    vmlinux: Arc<Btf>,
    /// Only for the running kernel's own BTF (`DEFAULT_BTF_DIR`): programs are loaded into it.
    running: bool,
    aya: std::sync::OnceLock<Option<aya::Btf>>,
}

impl KernelBtf {
    /// Reads `/sys/kernel/btf/vmlinux` (or `dir/vmlinux`).
    pub fn load(dir: &Path) -> Result<Self, KabiError> {
        let path = dir.join("vmlinux");
        let data = std::fs::read(&path).map_err(|source| KabiError::Read { path: path.clone(), source })?;
        let vmlinux = Btf::from_vec(data).map_err(|source| KabiError::Parse { path, source })?;
        let running = dir == Path::new(DEFAULT_BTF_DIR);
        Ok(Self { dir: dir.to_owned(), vmlinux: Arc::new(vmlinux), running, aya: std::sync::OnceLock::new() })
    }

    /// From an in-memory vmlinux BTF (fixtures); no modules.
    pub fn from_vmlinux(vmlinux: Btf) -> Self {
        Self { dir: PathBuf::new(), vmlinux: Arc::new(vmlinux), running: false, aya: std::sync::OnceLock::new() }
    }

    pub fn vmlinux(&self) -> &Btf {
        &self.vmlinux
    }

    /// aya's parse of the running kernel's vmlinux BTF (made on the first call), when that
    /// is what was read.
    pub fn aya(&self) -> Option<&aya::Btf> {
        if !self.running {
            return None;
        }
        self.aya.get_or_init(|| aya::Btf::parse(self.vmlinux.raw(), aya::Endianness::default()).ok()).as_ref()
    }

    /// The split BTF of loaded module `name` (`dir/name`), where it is loaded and readable.
    pub fn module(&self, name: &str) -> Option<Btf> {
        let data = std::fs::read(self.dir.join(name)).ok()?;
        Btf::parse_split(&data, self.vmlinux.clone()).ok()
    }

    /// Finds function `name` in vmlinux, then in loaded modules (`hint` first when given).
    pub fn find_func(&self, name: &str, module_hint: Option<&str>) -> Option<FuncSite> {
        if self.vmlinux.has_func(name) {
            return Some(FuncSite::Vmlinux);
        }
        let mut modules: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != "vmlinux")
            .collect();
        modules.sort_by_key(|m| Some(m.as_str()) != module_hint);
        for m in modules {
            let Ok(data) = std::fs::read(self.dir.join(&m)) else {
                continue;
            };
            let Ok(split) = Btf::parse_split(&data, self.vmlinux.clone()) else {
                continue;
            };
            if split.defines_func(name) {
                return Some(FuncSite::Module(m));
            }
        }
        None
    }
}
