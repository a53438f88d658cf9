//! `vswitch cpu-latency A B`: how long one cache line takes to go from CPU A to CPU B and back.
//!
//! A vhost datapath is a stream of such hand-offs: the guest writes a descriptor, the PMD reads
//! it; the PMD writes a used entry and the packet, the guest reads them. Where the PMD's core and
//! the guest's vCPU share a cache (an L3 complex) a line comes back in well under 100 ns; across
//! complexes or sockets it takes several times that, and every vhost switch slows down with it.
//! On the 2-CPU VMs this project is measured on the figure reads 75-130 ns or 290-450 ns, changing
//! within minutes (the hypervisor moves the vCPUs), and host->guest rates follow it:
//! scripts/peer-bench.sh prints it before and after every run. For an operator it says which PMD
//! core to give a guest: the one with the shortest round trip to the guest's vCPUs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// The line the two threads pass back and forth, alone in its own 128 bytes (two lines: the
/// adjacent-line prefetcher of some CPUs pairs them).
#[repr(align(128))]
struct Line(AtomicU64);

/// What [`measure`] found: the per-run round trips in ns, sorted.
#[derive(Debug)]
pub(crate) struct RoundTrips(Vec<f64>);

impl RoundTrips {
    /// The median run.
    pub(crate) fn median(&self) -> f64 {
        self.0[self.0.len() / 2]
    }
}

impl std::fmt::Display for RoundTrips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} ns per cache-line round trip (median of {} runs; min {:.1}, max {:.1})",
            self.median(),
            self.0.len(),
            self.0[0],
            self.0[self.0.len() - 1]
        )
    }
}

/// Passes one cache line between CPU `a` (this thread, pinned there) and CPU `b` (a helper thread)
/// `trips` times in each of `runs` runs. Spins without `pause`, as a PMD does.
pub(crate) fn measure(a: usize, b: usize, trips: u64, runs: usize) -> Result<RoundTrips, String> {
    if a == b {
        return Err(format!("cpu-latency: CPU {a} twice: give two different CPUs"));
    }
    if trips == 0 || runs == 0 {
        return Err("cpu-latency: --round-trips and --runs must be at least 1".into());
    }
    // The values passed are 2 * total + 2 at most.
    let Some(total) = trips.checked_mul(runs as u64).filter(|t| *t < u64::MAX / 2) else {
        return Err("cpu-latency: --round-trips x --runs is too large".into());
    };
    super::pin_to(a).map_err(|e| format!("cpu-latency: CPU {a}: {e}"))?;
    let line = Arc::new(Line(AtomicU64::new(0)));
    let far = line.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let pong = std::thread::Builder::new()
        .name("cpu-latency".into())
        .spawn(move || {
            let pinned = super::pin_to(b);
            let ok = pinned.is_ok();
            let _ = ready_tx.send(pinned);
            if !ok {
                return;
            }
            // Odd values are pings from `a`, even ones the answers.
            for i in 0..total {
                while far.0.load(Ordering::Acquire) != 2 * i + 1 {}
                far.0.store(2 * i + 2, Ordering::Release);
            }
        })
        .map_err(|e| format!("cpu-latency: cannot start a thread: {e}"))?;
    let helper = ready_rx.recv().map_err(|_| "cpu-latency: the helper thread died".to_string())?;
    helper.map_err(|e| format!("cpu-latency: CPU {b}: {e}"))?;
    let mut per_run = Vec::with_capacity(runs);
    for r in 0..runs as u64 {
        let start = Instant::now();
        for i in r * trips..(r + 1) * trips {
            line.0.store(2 * i + 1, Ordering::Release);
            while line.0.load(Ordering::Acquire) != 2 * i + 2 {}
        }
        per_run.push(start.elapsed().as_nanos() as f64 / trips as f64);
    }
    pong.join().map_err(|_| "cpu-latency: the helper thread panicked".to_string())?;
    per_run.sort_by(f64::total_cmp);
    Ok(RoundTrips(per_run))
}
