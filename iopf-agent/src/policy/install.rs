//! Installing resolved policies into the kernel side: device slots (`IOPF_DEV_IDS`) and their
//! rules (`IOPF_POLICY`). The kernel hands out a slot at a device's first fault; devices the
//! policies name get theirs before attach, so their first fault is already checked.

use std::collections::BTreeMap;

use iopf_common::{iopf::DevKey, policy::Rule};
use thiserror::Error;

use super::Resolved;
use crate::iopf::maps::{IopfMaps, MapsError, dev_bytes, dev_str};

#[derive(Debug, Error)]
pub enum InstallError {
    #[error(
        "the policies select {wanted} devices but only {free} device slots are free (of {slots}); raise --max-devices"
    )]
    Slots { wanted: usize, free: u32, slots: u32 },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// What the kernel should hold (device -> policy and rule) and what it holds (slot -> rule).
#[derive(Debug, Default)]
pub struct Installed {
    source: u8,
    wanted: BTreeMap<String, (String, Rule)>,
    rules: BTreeMap<u32, Rule>,
    names: BTreeMap<u32, String>,
}

impl Installed {
    /// Rules for `resolved`'s devices, as seen with `source` (kernel or simulated).
    pub fn new(resolved: &Resolved, source: u8) -> Self {
        let mut i = Installed { source, ..Self::default() };
        i.want(resolved);
        i
    }

    fn want(&mut self, resolved: &Resolved) {
        self.wanted = resolved.devices.iter().map(|(dev, r)| (dev.clone(), (r.policy.clone(), r.rule))).collect();
    }

    fn key(&self, dev: &str) -> DevKey {
        DevKey { dev: dev_bytes(dev), source: self.source, _pad: [0; 7] }
    }

    /// Before attach: gives every wanted device without a slot the next free ones, all or
    /// none, then installs the rules.
    pub fn reserve(&mut self, maps: &mut IopfMaps, slots: u32) -> Result<(), InstallError> {
        let have = maps.devices()?;
        let named: Vec<DevKey> = have.values().copied().collect();
        let missing: Vec<DevKey> = self.wanted.keys().map(|d| self.key(d)).filter(|k| !named.contains(k)).collect();
        let first = maps.next_slot()?.max(have.keys().max().map_or(1, |m| m + 1));
        let free = slots.saturating_sub(first);
        if missing.len() > free as usize {
            return Err(InstallError::Slots { wanted: missing.len(), free, slots });
        }
        if !missing.is_empty() {
            maps.reserve_slots(first, &missing)?;
        }
        self.sync(maps)?;
        Ok(())
    }

    /// Replaces the wanted rules (a reload) and installs them.
    pub fn replace(&mut self, maps: &mut IopfMaps, resolved: &Resolved) -> Result<usize, MapsError> {
        self.want(resolved);
        self.sync(maps)
    }

    /// Writes the rule of every slot whose device's wanted rule differs from what is
    /// installed (devices no policy selects any more get the empty rule). Returns how many
    /// slots changed. Devices without a slot yet get theirs at their first fault; the next
    /// sync installs their rule.
    pub fn sync(&mut self, maps: &mut IopfMaps) -> Result<usize, MapsError> {
        let mut changed = 0;
        for (slot, k) in maps.devices()? {
            if k.source != self.source || slot == iopf_common::iopf::DEV_SLOT_OVERFLOW {
                continue;
            }
            let dev = dev_str(&k.dev);
            let want = self.wanted.get(&dev).map_or(Rule::NONE, |(_, r)| *r);
            if self.rules.get(&slot).copied().unwrap_or(Rule::NONE) != want {
                maps.set_rule(slot, &want)?;
                self.rules.insert(slot, want);
                changed += 1;
            }
            self.names.insert(slot, dev);
        }
        Ok(changed)
    }

    /// The policy in force for device `dev`, if any.
    pub fn policy_of(&self, dev: &str) -> Option<&str> {
        self.wanted.get(dev).map(|(p, _)| p.as_str())
    }

    /// Wanted devices that have no slot yet (no fault seen, not reserved).
    pub fn pending(&self) -> usize {
        self.wanted.keys().filter(|d| !self.names.values().any(|n| n == *d)).count()
    }
}
