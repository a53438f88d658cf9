//! How a queue interrupts its guest: an eventfd (vhost-user's call fd), or a counter for
//! in-process guests.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;

/// Where a queue's "used buffers" interrupts go.
#[derive(Debug, Default)]
pub enum Notifier {
    /// No interrupt line (an in-process guest that polls); notifications are only counted.
    #[default]
    Polling,
    /// An eventfd: each notification adds 1 to it (vhost-user SET_VRING_CALL).
    EventFd(File),
}

impl Notifier {
    /// A notifier writing to an eventfd.
    pub fn eventfd(fd: OwnedFd) -> Self {
        Notifier::EventFd(File::from(fd))
    }

    /// Sends one interrupt. An eventfd write only fails when the counter would overflow, in which
    /// case the guest has an interrupt pending anyway.
    pub fn notify(&mut self) {
        if let Notifier::EventFd(f) = self {
            let _ = f.write(&1u64.to_ne_bytes());
        }
    }
}
