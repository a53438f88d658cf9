//! The frontend's memory table (`VHOST_USER_SET_MEM_TABLE`): regions mapped from its fds, and the
//! translation of its user virtual addresses to guest-physical addresses.
//!
//! Ring addresses in `SET_VRING_ADDR` are virtual addresses *in the frontend's process* (QEMU's or
//! testpmd's mapping of guest memory), not guest-physical ones, unless the `GPA_ADDRESSES`
//! protocol feature is negotiated (we do not offer it). Each region carries both its
//! `userspace_addr` and its `guest_phys_addr`, so [`AddressMap`] keeps `(user, gpa, len)` per region
//! and translates a ring address before a [`QueueConfig`](crate::QueueConfig) is built; descriptors
//! then carry guest-physical addresses as usual. This module owns no rings.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use super::VhostUserError;
use crate::mem::{GuestMemory, GuestRegion, MemoryConfigError};

/// One region as the frontend describes it: `len` bytes at guest-physical `gpa`, which the
/// frontend's process sees at `user_addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRegion {
    /// The frontend's virtual address of the first byte.
    pub user_addr: u64,
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Translation of frontend user addresses to guest-physical addresses (no mapping behind it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressMap {
    /// Sorted by `user_addr`, non-overlapping, none empty.
    regions: Vec<UserRegion>,
}

impl AddressMap {
    /// Checks the regions (no empty one, no overflow of user or guest ranges, no overlap in user
    /// space) and sorts them.
    pub fn new(mut regions: Vec<UserRegion>) -> Result<Self, VhostUserError> {
        for r in &regions {
            if r.len == 0 || r.user_addr.checked_add(r.len).is_none() || r.gpa.checked_add(r.len).is_none() {
                return Err(VhostUserError::BadRegion(r.user_addr));
            }
        }
        regions.sort_by_key(|r| r.user_addr);
        for w in regions.windows(2) {
            if w[0].user_addr + w[0].len > w[1].user_addr {
                return Err(VhostUserError::BadRegion(w[1].user_addr));
            }
        }
        Ok(AddressMap { regions })
    }

    /// The regions, sorted by user address.
    pub fn regions(&self) -> &[UserRegion] {
        &self.regions
    }

    /// The guest-physical address of the frontend's user address `ua`, if a region holds it.
    pub fn user_to_gpa(&self, ua: u64) -> Option<u64> {
        let i = self.regions.partition_point(|r| r.user_addr <= ua);
        let r = self.regions.get(i.checked_sub(1)?)?;
        let off = ua - r.user_addr;
        (off < r.len).then(|| r.gpa + off)
    }

    /// Like [`user_to_gpa`](Self::user_to_gpa), as a typed error for the control plane.
    pub fn ring_gpa(&self, ua: u64) -> Result<u64, VhostUserError> {
        self.user_to_gpa(ua).ok_or(VhostUserError::UnmappedRing(ua))
    }
}

/// Checks that `file` really backs `len` bytes at `offset` (fstat): a regular file (memfd, tmpfs,
/// hugetlbfs) at least `offset + len` bytes long. A mapping past end-of-file would raise SIGBUS on
/// the first access, in whichever thread touches it.
fn check_backed(r: &UserRegion, offset: u64, file: &File) -> Result<(), VhostUserError> {
    let md = file.metadata().map_err(MemoryConfigError::Map)?;
    let end = offset.checked_add(r.len).ok_or(VhostUserError::BadRegion(r.user_addr))?;
    if !md.file_type().is_file() || end > md.len() {
        return Err(VhostUserError::BeyondFile { gpa: r.gpa, offset, len: r.len, file_len: md.len() });
    }
    Ok(())
}

/// A memory table: the mapped guest memory and the user-address translation.
#[derive(Debug)]
pub struct MemTable {
    map: AddressMap,
    mem: Arc<GuestMemory>,
}

impl MemTable {
    /// Maps each region from its fd (`files[i]` at `mmap_offset[i]`, shared) and builds the table.
    /// `regions` are `(region, mmap_offset)`.
    pub fn map(regions: &[(UserRegion, u64)], files: &[File]) -> Result<Self, VhostUserError> {
        if regions.len() != files.len() {
            return Err(VhostUserError::FdCount { regions: regions.len(), fds: files.len() });
        }
        let map = AddressMap::new(regions.iter().map(|(r, _)| *r).collect())?;
        let mapped = regions
            .iter()
            .zip(files)
            .map(|((r, offset), f)| {
                let len = usize::try_from(r.len).map_err(|_| VhostUserError::BadRegion(r.user_addr))?;
                check_backed(r, *offset, f)?;
                Ok(GuestRegion::from_fd(r.gpa, len, f.as_fd(), *offset)?)
            })
            .collect::<Result<Vec<_>, VhostUserError>>()?;
        Ok(MemTable { map, mem: Arc::new(GuestMemory::new(mapped)?) })
    }

    /// The translation of user addresses.
    pub fn addresses(&self) -> &AddressMap {
        &self.map
    }

    /// The mapped guest memory (shared with the queues built on it).
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(user_addr: u64, gpa: u64, len: u64) -> UserRegion {
        UserRegion { user_addr, gpa, len }
    }

    #[test]
    fn user_addresses_translate_to_guest_physical_per_region() {
        // Two regions whose user addresses are in the opposite order of their guest addresses.
        let m = AddressMap::new(vec![r(0x7f00_0000_0000, 0x1_0000_0000, 0x1000), r(0x7e00_0000_0000, 0, 0x10_0000)])
            .unwrap();
        assert_eq!(m.user_to_gpa(0x7e00_0000_0000), Some(0));
        assert_eq!(m.user_to_gpa(0x7e00_0000_0000 + 0xf_ffff), Some(0xf_ffff));
        assert_eq!(m.user_to_gpa(0x7e00_0000_0000 + 0x10_0000), None, "one past the end");
        assert_eq!(m.user_to_gpa(0x7f00_0000_0000 + 0x123), Some(0x1_0000_0123));
        assert_eq!(m.user_to_gpa(0x7f00_0000_0000 - 1), None, "gap between regions");
        assert_eq!(m.user_to_gpa(0), None, "below every region");
        assert!(matches!(m.ring_gpa(u64::MAX), Err(VhostUserError::UnmappedRing(u64::MAX))));
    }

    #[test]
    fn overlapping_or_overflowing_regions_are_refused() {
        assert!(AddressMap::new(vec![r(0x1000, 0, 0x2000), r(0x2000, 0x10_0000, 0x1000)]).is_err());
        assert!(AddressMap::new(vec![r(u64::MAX - 10, 0, 0x1000)]).is_err());
        assert!(AddressMap::new(vec![r(0x1000, u64::MAX - 10, 0x1000)]).is_err());
        assert!(AddressMap::new(vec![r(0x1000, 0, 0)]).is_err());
        // Adjacent is fine.
        assert!(AddressMap::new(vec![r(0x1000, 0, 0x1000), r(0x2000, 0x10_0000, 0x1000)]).is_ok());
    }

    #[test]
    fn mapped_table_reads_what_the_file_holds_at_translated_addresses() {
        use std::io::{Seek, SeekFrom, Write};
        let path = std::env::temp_dir().join(format!("vswitch-memtable-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(3 * 4096).unwrap();
        f.seek(SeekFrom::Start(4096 + 8)).unwrap();
        f.write_all(b"ring").unwrap();
        // The region starts one page into the file (mmap_offset), at gpa 0x8000.
        let reg = r(0x5555_0000_0000, 0x8000, 2 * 4096);
        let t = MemTable::map(&[(reg, 4096)], &[f]).unwrap();
        let gpa = t.addresses().user_to_gpa(0x5555_0000_0008).unwrap();
        assert_eq!(gpa, 0x8008);
        let mut buf = [0u8; 4];
        t.memory().read(gpa, &mut buf).unwrap();
        assert_eq!(&buf, b"ring");
        assert!(matches!(MemTable::map(&[(reg, 0)], &[]), Err(VhostUserError::FdCount { regions: 1, fds: 0 })));
    }
}
