//! The KeyPackage directory (RFC 9750 §4): each device uploads batches; each KeyPackage is handed out once, except
//! the device's last-resort one, which may repeat when nothing else is left; expired ones are refused at upload and
//! skipped and purged later. A KeyPackage once seen can never be uploaded again, so a handed-out one cannot come
//! back.

use crate::header::KeyPackageInfo;
use crate::DsError;
use std::collections::{BTreeMap, HashSet, VecDeque};

/// A device: `(user id, device id)`.
pub type Device = (String, String);

/// Limits of the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryLimits {
    /// Most KeyPackages in one upload.
    pub max_batch: usize,
    /// Most unused KeyPackages a device may hold.
    pub max_per_device: usize,
}

impl Default for DirectoryLimits {
    fn default() -> Self {
        Self { max_batch: 100, max_per_device: 200 }
    }
}

/// One KeyPackage the directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKeyPackage {
    /// Its parsed facts.
    pub info: KeyPackageInfo,
    /// The TLS-encoded KeyPackage message.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct DeviceKeys {
    fresh: VecDeque<StoredKeyPackage>,
    last_resort: Option<StoredKeyPackage>,
}

/// The directory.
#[derive(Debug, Default)]
pub struct KeyPackageDirectory {
    limits: DirectoryLimits,
    devices: BTreeMap<Device, DeviceKeys>,
    /// Every reference ever accepted (a KeyPackage is single-use for its whole life).
    seen: HashSet<Vec<u8>>,
}

impl KeyPackageDirectory {
    /// An empty directory.
    pub fn new(limits: DirectoryLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// Stores a batch for `device`, all or nothing: refused when over the batch or device limit, when one is expired
    /// (at `now`, unix seconds) or was uploaded before (here or in this batch). A last-resort KeyPackage replaces the
    /// device's previous one. Returns how many unused ones the device now holds.
    pub fn upload(&mut self, device: &Device, batch: Vec<StoredKeyPackage>, now: u64) -> Result<usize, DsError> {
        if batch.len() > self.limits.max_batch {
            return Err(DsError::BatchTooLarge { size: batch.len(), max: self.limits.max_batch });
        }
        let mut refs = HashSet::new();
        for kp in &batch {
            if !kp.info.valid_at(now) {
                return Err(DsError::KeyPackageExpired);
            }
            if self.seen.contains(&kp.info.reference) || !refs.insert(kp.info.reference.clone()) {
                return Err(DsError::KeyPackageReused);
            }
        }
        let held = self.devices.get(device).map_or(0, |d| d.fresh.len());
        let fresh_new = batch.iter().filter(|k| !k.info.last_resort).count();
        if held + fresh_new > self.limits.max_per_device {
            return Err(DsError::BatchTooLarge { size: held + fresh_new, max: self.limits.max_per_device });
        }
        let keys = self.devices.entry(device.clone()).or_default();
        for kp in batch {
            self.seen.insert(kp.info.reference.clone());
            if kp.info.last_resort {
                keys.last_resort = Some(kp);
            } else {
                keys.fresh.push_back(kp);
            }
        }
        Ok(keys.fresh.len())
    }

    /// Hands out one KeyPackage of `device` valid at `now`: the oldest unused one (removed for good), else the
    /// last-resort one (kept). Expired ones met on the way are dropped.
    pub fn claim(&mut self, device: &Device, now: u64) -> Result<StoredKeyPackage, DsError> {
        let keys = self.devices.get_mut(device).ok_or(DsError::NoKeyPackage)?;
        while let Some(kp) = keys.fresh.pop_front() {
            if kp.info.valid_at(now) {
                return Ok(kp);
            }
        }
        match &keys.last_resort {
            Some(kp) if kp.info.valid_at(now) => Ok(kp.clone()),
            _ => Err(DsError::NoKeyPackage),
        }
    }

    /// The directory's limits.
    pub fn limits(&self) -> DirectoryLimits {
        self.limits
    }

    /// Unused KeyPackages `device` holds (last resort not counted).
    pub fn available(&self, device: &Device) -> usize {
        self.devices.get(device).map_or(0, |d| d.fresh.len())
    }

    /// Drops every KeyPackage expired at `now`; returns how many.
    pub fn purge_expired(&mut self, now: u64) -> usize {
        let mut n = 0;
        for keys in self.devices.values_mut() {
            let before = keys.fresh.len();
            keys.fresh.retain(|k| k.info.valid_at(now));
            n += before - keys.fresh.len();
            if keys.last_resort.as_ref().is_some_and(|k| !k.info.valid_at(now)) {
                keys.last_resort = None;
                n += 1;
            }
        }
        self.devices.retain(|_, k| !k.fresh.is_empty() || k.last_resort.is_some());
        n
    }

    /// Puts back a KeyPackage the store kept (a restarted server); no limit applies, it was checked at upload.
    pub fn restore(&mut self, device: &Device, kp: StoredKeyPackage) {
        self.seen.insert(kp.info.reference.clone());
        let keys = self.devices.entry(device.clone()).or_default();
        if kp.info.last_resort {
            keys.last_resort = Some(kp);
        } else {
            keys.fresh.push_back(kp);
        }
    }

    /// Remembers a reference that was accepted before (handed out since), so it can never be uploaded again.
    pub fn remember(&mut self, reference: Vec<u8>) {
        self.seen.insert(reference);
    }

    /// Forgets a device's KeyPackages (the device was removed or its account erased).
    pub fn forget(&mut self, device: &Device) {
        self.devices.remove(device);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kp(r: u8, not_after: u64, last_resort: bool) -> StoredKeyPackage {
        StoredKeyPackage {
            info: KeyPackageInfo { reference: vec![r], not_before: 0, not_after, last_resort },
            bytes: vec![r, r],
        }
    }

    fn dev(u: &str) -> Device {
        (u.to_owned(), "d".to_owned())
    }

    #[test]
    fn each_key_package_goes_once_and_the_last_resort_repeats() {
        let mut d = KeyPackageDirectory::new(DirectoryLimits::default());
        let a = dev("a");
        assert_eq!(d.upload(&a, vec![kp(1, 100, false), kp(2, 100, false), kp(9, 100, true)], 10).unwrap(), 2);
        assert_eq!(d.claim(&a, 10).unwrap().info.reference, vec![1]);
        assert_eq!(d.claim(&a, 10).unwrap().info.reference, vec![2]);
        assert_eq!(d.claim(&a, 10).unwrap().info.reference, vec![9], "last resort");
        assert_eq!(d.claim(&a, 10).unwrap().info.reference, vec![9], "last resort again");
        assert_eq!(d.upload(&a, vec![kp(1, 100, false)], 10), Err(DsError::KeyPackageReused), "never back");
        assert_eq!(d.claim(&dev("nobody"), 10), Err(DsError::NoKeyPackage));
    }

    #[test]
    fn bad_batches_change_nothing() {
        let mut d = KeyPackageDirectory::new(DirectoryLimits { max_batch: 3, max_per_device: 4 });
        let a = dev("a");
        let four = (1..=4).map(|r| kp(r, 100, false)).collect();
        assert_eq!(d.upload(&a, four, 10), Err(DsError::BatchTooLarge { size: 4, max: 3 }));
        assert_eq!(d.upload(&a, vec![kp(1, 100, false), kp(2, 5, false)], 10), Err(DsError::KeyPackageExpired));
        assert_eq!(d.upload(&a, vec![kp(1, 100, false), kp(1, 100, false)], 10), Err(DsError::KeyPackageReused));
        assert_eq!(d.available(&a), 0, "all or nothing");
        d.upload(&a, vec![kp(1, 100, false), kp(2, 100, false), kp(3, 100, false)], 10).unwrap();
        assert_eq!(
            d.upload(&a, vec![kp(4, 100, false), kp(5, 100, false)], 10),
            Err(DsError::BatchTooLarge { size: 5, max: 4 })
        );
        assert_eq!(d.available(&a), 3);
    }

    #[test]
    fn expired_ones_are_skipped_and_purged() {
        let mut d = KeyPackageDirectory::new(DirectoryLimits::default());
        let a = dev("a");
        d.upload(&a, vec![kp(1, 20, false), kp(2, 100, false), kp(3, 30, true)], 10).unwrap();
        assert_eq!(d.claim(&a, 50).unwrap().info.reference, vec![2], "1 expired on the way");
        assert_eq!(d.claim(&a, 50), Err(DsError::NoKeyPackage), "the last resort expired too");
        let b = dev("b");
        d.upload(&b, vec![kp(4, 20, false), kp(5, 100, false)], 10).unwrap();
        assert_eq!(d.purge_expired(50), 2, "b's 4 and a's last resort");
        assert_eq!(d.available(&b), 1);
    }
}
