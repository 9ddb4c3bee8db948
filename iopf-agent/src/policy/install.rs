//! Installing resolved policies into the kernel side: device slots (`IOPF_DEV_IDS`) and their
//! rules (`IOPF_POLICY`). The kernel hands out a slot at a device's first fault; devices the
//! policies name get theirs before attach, so their first fault is already checked.

use std::collections::BTreeMap;

use iopf_common::{iopf::DevKey, policy::DeviceRules};
use thiserror::Error;

use super::{DevicePolicies, PolicyIds, Resolved};
use crate::iopf::maps::{IopfMaps, MapsError, dev_bytes, dev_str};

#[derive(Debug, Error)]
pub enum InstallError {
    #[error(
        "the policies select {wanted} devices without a device slot but only {free} of {slots} slots are free; raise --max-devices"
    )]
    Slots { wanted: usize, free: u32, slots: u32 },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// What the kernel should hold (device -> policy and rule) and what it holds (slot -> rule).
#[derive(Debug, Default)]
pub struct Installed {
    /// The ids the policies' violations are counted under, for the whole run.
    pub ids: PolicyIds,
    source: u8,
    wanted: BTreeMap<String, DevicePolicies>,
    rules: BTreeMap<u32, DeviceRules>,
}

impl Installed {
    /// Rules for `resolved`'s devices, as seen with `source` (kernel or simulated).
    pub fn new(resolved: &Resolved, source: u8, ids: PolicyIds) -> Self {
        let mut i = Installed { source, ids, ..Self::default() };
        i.want(resolved);
        i
    }

    fn want(&mut self, resolved: &Resolved) {
        self.wanted = resolved.devices.clone();
    }

    fn key(&self, dev: &str) -> DevKey {
        DevKey { dev: dev_bytes(dev), source: self.source, _pad: [0; 7] }
    }

    /// Gives every wanted device without a slot one now, with its rule, so its first fault
    /// is checked; all or none (the room is checked first). Safe while the programs run.
    /// Returns how many device rules were written.
    pub fn reserve(&mut self, maps: &mut IopfMaps, slots: u32) -> Result<usize, InstallError> {
        let have: Vec<DevKey> = maps.devices()?.into_values().collect();
        let missing: Vec<(DevKey, DeviceRules)> =
            self.wanted.iter().map(|(d, p)| (self.key(d), p.compile())).filter(|(k, _)| !have.contains(k)).collect();
        let free = maps.free_top_slots(slots)?;
        if missing.len() > free as usize {
            return Err(InstallError::Slots { wanted: missing.len(), free, slots });
        }
        for (k, r) in &missing {
            match maps.reserve_top(k, r, slots)? {
                // reserve_top wrote the rule (before the name): remember it, so sync does not
                // write it again.
                Some(slot) => {
                    self.rules.insert(slot, *r);
                }
                None => return Err(InstallError::Slots { wanted: missing.len(), free: 0, slots }),
            }
        }
        Ok(missing.len() + self.sync(maps)?)
    }

    /// Replaces the wanted rules (a reload): devices newly selected get their slot and rule
    /// now, the rest are rewritten where they changed.
    pub fn replace(&mut self, maps: &mut IopfMaps, resolved: &Resolved, slots: u32) -> Result<usize, InstallError> {
        let before = std::mem::take(&mut self.wanted);
        self.want(resolved);
        let r = self.reserve(maps, slots);
        if matches!(r, Err(InstallError::Slots { .. })) {
            // Nothing was written: the previous set stays in force.
            self.wanted = before;
        }
        r
    }

    /// Writes the rule of every slot whose device's wanted rule differs from what is
    /// installed (devices no policy selects any more get the empty rule). Returns how many
    /// slots changed.
    pub fn sync(&mut self, maps: &mut IopfMaps) -> Result<usize, MapsError> {
        let mut changed = 0;
        for (slot, k) in maps.devices()? {
            if k.source != self.source || slot == iopf_common::iopf::DEV_SLOT_OVERFLOW {
                continue;
            }
            let dev = dev_str(&k.dev);
            let want = self.wanted.get(&dev).map_or(DeviceRules::NONE, DevicePolicies::compile);
            if self.rules.get(&slot).copied().unwrap_or(DeviceRules::NONE) != want {
                maps.set_rule(slot, &want)?;
                self.rules.insert(slot, want);
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// True when `resolved` selects the same devices with the same rules as are wanted now.
    pub fn selects_same(&self, resolved: &Resolved) -> bool {
        resolved.devices == self.wanted
    }

    /// The policies in force for device `dev`, if any.
    pub fn policies_of(&self, dev: &str) -> Option<&DevicePolicies> {
        self.wanted.get(dev)
    }

    /// The policies in force for device `dev`, comma-separated, if any.
    pub fn policy_of(&self, dev: &str) -> Option<String> {
        self.wanted.get(dev).map(DevicePolicies::names)
    }
}
