//! The switch: what a PMD thread owns and runs.
//!
//! - [`pool`]: packet buffers (a preallocated pool with headroom; `unsafe`, as is [`xring`]).
//! - [`port`]: the [`Port`](port::Port) trait (`rx_burst` / `tx_burst` / `poll`) and its counters.
//! - [`vhost_port`]: a guest's queue pairs as one port, and the commands a control plane sends
//!   the PMD about them.
//! - [`null_port`]: benchmark end points (a counting sink, a header-only source).
//! - [`mac_table`], [`l2`]: MAC learning and L2 forwarding (learn, look up, flood).
//! - [`pmd`]: the PMD loop (receive, forward, submit, reap).
//! - [`xring`], [`cross_port`]: the lock-free ring a frame crosses from one PMD thread to
//!   another on, and its two ends as ports.
//! - [`control`]: the control socket (JSON lines), answered by the PMD between bursts.
//!
//! This module must not know vhost-user sockets: the control plane reaches it through
//! [`PortCommand`](vhost_port::PortCommand)s only.

pub mod control;
pub mod cross_port;
pub mod l2;
pub mod mac_table;
pub mod null_port;
pub mod pmd;
#[allow(unsafe_code)]
pub mod pool;
pub mod port;
pub mod vhost_port;
pub mod xring;
