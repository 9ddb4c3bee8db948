//! Where the agent's map handles come from: the object it just loaded, or a pinned state it
//! adopts. The readers (`IopfMaps`, the rings, the page-fault maps) take their maps through
//! this, so they work the same on both.

use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData};

use crate::hooks::Rung;

/// A source of maps by name; each map can be taken once.
pub trait MapStore {
    fn take_map(&mut self, name: &str) -> Option<Map>;
}

impl MapStore for aya::Ebpf {
    fn take_map(&mut self, name: &str) -> Option<Map> {
        aya::Ebpf::take_map(self, name)
    }
}

/// A complete pinned state, adopted: its programs are attached and counting already.
#[derive(Clone)]
pub struct Adopted {
    dir: PathBuf,
}

impl Adopted {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rung `hook` was attached on by the agent that pinned this state, if it was.
    pub fn hook(&self, hook: &str) -> Option<Rung> {
        let prefix = format!("{hook}=");
        let entries = std::fs::read_dir(self.dir.join("hooks")).ok()?;
        entries.flatten().find_map(|e| {
            let name = e.file_name();
            let rung = name.to_str()?.strip_prefix(&prefix)?.to_owned();
            Rung::ALL.into_iter().find(|r| r.as_str() == rung)
        })
    }

    /// The pinned programs, by name, for their statistics.
    pub fn programs(&self) -> Vec<crate::progstats::Tracked> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("progs")) else { return Vec::new() };
        let mut out: Vec<_> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                crate::progstats::Tracked::from_pin(&name, &e.path()).ok()
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A pinned map, opened by path.
    pub fn open_map(&self, name: &str) -> Result<Map, super::PinError> {
        let path = self.dir.join("maps").join(name);
        let err = |e| super::PinError::Adopt { what: format!("map {name}"), path: path.clone(), source: Box::new(e) };
        Map::from_map_data(MapData::from_pin(&path).map_err(err)?).map_err(err)
    }
}

impl MapStore for Adopted {
    fn take_map(&mut self, name: &str) -> Option<Map> {
        // The caller only learns "missing": say why here.
        self.open_map(name).map_err(|e| eprintln!("iopf-agent: {}", crate::error::chain(&e))).ok()
    }
}
