//! The dirty-page log of live migration (vhost-user spec, "Migration"; `VHOST_F_LOG_ALL` with
//! the `LOG_SHMFD` protocol feature): a bitmap shared with the frontend, one bit per 4 KiB page of
//! guest-physical memory, that the device sets for every page it writes, so the frontend sends
//! those pages again.
//!
//! Marks are made where a write becomes the guest's, not where it is started: a copy engine may
//! still be writing a page when the copy is enqueued, and a page marked then could be sent (and
//! its bit cleared) before the data lands. The split ring marks by construction
//! ([`SplitQueue::set_dirty_log`](crate::SplitQueue::set_dirty_log)): `push_used(head, len)` marks
//! the first `len` bytes of the writable buffers of chain `head` (virtio's own definition of what
//! the device wrote, recorded from the chain's descriptors when `pop` took it), and every
//! used-ring store marks its page, whatever engine, fallback or retry wrote the bytes. Logging
//! starts only on a queue with nothing in flight, so no chain's buffers go unrecorded. This module
//! owns the bitmap only.

use std::io;
use std::os::fd::BorrowedFd;

use crate::mem::access::Mapping;

/// Bytes of guest memory per log bit.
pub const LOG_PAGE: u64 = 4096;

/// A dirty-page bitmap.
#[derive(Debug)]
pub struct DirtyLog {
    map: Mapping,
}

impl DirtyLog {
    /// Maps the frontend's log: `size` bytes of `fd` at `offset` (SET_LOG_BASE).
    pub fn from_fd(fd: BorrowedFd<'_>, offset: u64, size: usize) -> io::Result<Self> {
        Ok(DirtyLog { map: Mapping::from_fd(fd, offset, size)? })
    }

    /// A zeroed log covering `pages` pages, in anonymous memory (tests).
    pub fn anonymous(pages: u64) -> io::Result<Self> {
        let bytes = usize::try_from(pages.div_ceil(8).max(1))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "log too large"))?;
        Ok(DirtyLog { map: Mapping::anonymous(bytes, false)? })
    }

    /// Pages the log covers.
    pub fn pages(&self) -> u64 {
        self.map.len() as u64 * 8
    }

    /// Marks every page of `gpa .. gpa + len` (pages beyond the log are ignored: the frontend
    /// sized it for the memory it migrates).
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        for page in first..=last.min(self.pages().saturating_sub(1)) {
            self.map.fetch_or_u8((page / 8) as usize, 1 << (page % 8));
        }
    }

    /// Whether the page holding `gpa` is marked.
    pub fn is_marked(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE;
        self.map.load_u8((page / 8) as usize).is_some_and(|b| b & (1 << (page % 8)) != 0)
    }

    /// Takes every mark: clears the log and returns the pages that were marked, ascending, each
    /// byte swapped atomically, as a frontend's log sync does (QEMU's `vhost_dev_sync_region`): a
    /// page marked while it runs is either returned or stays marked for the next take. Tests use
    /// it to play the frontend of a live migration.
    pub fn take_marked(&self) -> Vec<u64> {
        let mut pages = Vec::new();
        for i in 0..self.map.len() {
            let b = self.map.swap_u8(i, 0).unwrap_or(0);
            pages.extend((0..8).filter(|bit| b & (1 << bit) != 0).map(|bit| i as u64 * 8 + bit));
        }
        pages
    }

    /// Clears the log (tests; the frontend clears it itself).
    pub fn clear(&self) {
        for i in 0..self.map.len() {
            let _ = self.map.write_array(i, [0u8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_cover_every_page_a_range_touches_and_nothing_else() {
        let log = DirtyLog::anonymous(64).unwrap();
        log.mark(4095, 2);
        assert!(log.is_marked(0) && log.is_marked(4096));
        assert!(!log.is_marked(8192));
        log.mark(10 * 4096, 1);
        assert!(log.is_marked(10 * 4096 + 4095) && !log.is_marked(9 * 4096) && !log.is_marked(11 * 4096));
        log.mark(u64::MAX - 5, 100); // beyond the log: ignored, no overflow
        log.mark(20 * 4096, 0);
        assert!(!log.is_marked(20 * 4096));
        assert_eq!(log.take_marked(), vec![0, 1, 10]);
        assert!(log.take_marked().is_empty() && !log.is_marked(0), "taking the marks clears them");
        log.mark(63 * 4096, 1);
        log.clear();
        assert!(!log.is_marked(63 * 4096));
    }
}
