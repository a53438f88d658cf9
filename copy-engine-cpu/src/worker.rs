//! The worker-thread engine: a software DMA engine. One worker thread per engine copies, strictly
//! in order, from an SPSC descriptor ring that the engine's owner fills, and publishes a completion
//! count that `reap` reads.
//!
//! This module owns the engine's tickets, stats, doorbell and worker lifecycle (start, idle, wake,
//! stop). It must not touch descriptor slots or ring indices except through the crate-private
//! `ring` module, which owns their memory ordering.
//!
//! # Data path
//!
//! - `enqueue` writes one descriptor into the next slot; no atomic, no shared cache line.
//! - `submit` (or an op with [`OpFlags::SUBMIT`]) publishes the producer tail with a Release store.
//! - The worker Acquire-loads the tail, copies each op in order and publishes its completion count
//!   with a Release store after each copy; `reap` Acquire-loads that count, so the copied bytes are
//!   visible to the owner once an op is retired.
//!
//! None of these allocate, lock or make a system call, with one exception: when the
//! [`IdleStrategy`] lets the worker park and it has gone to sleep, `submit` unparks it (one futex
//! wake). Whether it sleeps is an atomic flag that `submit` checks only on engines that may park.
//!
//! # Sleeping without losing a wake-up
//!
//! A Dekker-style handshake, with a SeqCst fence on each side:
//!
//! ```text
//! submit:  tail = written (Release);  fence(SeqCst);  if sleeping { unpark }
//! worker:  sleeping = true;           fence(SeqCst);  if tail == head { park }
//! ```
//!
//! The two fences are totally ordered: if the owner's comes first, the worker's tail load sees the
//! new tail and does not park; if the worker's comes first, the owner sees `sleeping` and unparks
//! it (an unpark before the park makes the park return at once). The park also has a timeout, a
//! safety net that is not needed for correctness.

use core::cell::Cell;
use core::marker::PhantomData;
use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

use copy_engine::{
    check_copy, Capabilities, ControlError, CopyEngine, EngineInfo, EngineStats, EnqueueError, FailedOp, OpFlags,
    Reaped, Ticket,
};

use crate::affinity;
use crate::ring::{self, CachePadded, Consumer, Desc, Producer};

/// Default ring size, the same order as a dmadev channel's.
pub const DEFAULT_RING: usize = 1024;

/// The largest ring a worker engine accepts (descriptors).
pub const MAX_RING: usize = 1 << 20;

/// What the worker thread does when it finds nothing to copy: spin, then yield, then (optionally)
/// sleep until the next doorbell.
///
/// Each "empty poll" is one look at the ring that found nothing. The count restarts whenever the
/// worker finds work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleStrategy {
    /// Empty polls spent spinning (`core::hint::spin_loop`) before the worker starts yielding.
    pub spins: u32,
    /// Empty polls spent with `std::thread::yield_now` after the spins, before the worker parks.
    /// Without `park_timeout` the worker yields forever after its spins and this is not used.
    pub yields: u32,
    /// `Some(timeout)`: after spinning and yielding, the worker parks until `submit` wakes it, or
    /// at most `timeout` (a safety net; wake-ups are not lost without it). `None`: never park;
    /// `submit` then never checks the sleeping flag.
    pub park_timeout: Option<Duration>,
}

impl IdleStrategy {
    /// Never sleeps: spins, then yields forever. Lowest latency; the worker keeps a CPU busy.
    pub const fn busy_poll() -> Self {
        IdleStrategy { spins: 4096, yields: 0, park_timeout: None }
    }

    /// Spins and yields a little, then parks with a 1 ms safety-net timeout. An idle engine costs
    /// (almost) no CPU; the first op after a sleep pays one wake-up.
    pub const fn parking() -> Self {
        IdleStrategy { spins: 1024, yields: 64, park_timeout: Some(Duration::from_millis(1)) }
    }
}

impl Default for IdleStrategy {
    /// [`IdleStrategy::parking`].
    fn default() -> Self {
        Self::parking()
    }
}

/// How to build a [`WorkerEngine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Ops that can be enqueued and not yet retired; rounded up to a power of two, 1 to
    /// [`MAX_RING`].
    pub ring_size: usize,
    /// What the worker does when idle.
    pub idle: IdleStrategy,
    /// Pin the worker thread to this CPU (`sched_setaffinity`); `None` leaves it to the scheduler.
    pub pin_cpu: Option<usize>,
}

impl Default for WorkerConfig {
    /// A [`DEFAULT_RING`]-descriptor ring, [`IdleStrategy::parking`], no pinning.
    fn default() -> Self {
        WorkerConfig { ring_size: DEFAULT_RING, idle: IdleStrategy::default(), pin_cpu: None }
    }
}

/// State shared between the engine and its worker besides the ring: the sleep/stop handshake.
#[derive(Debug, Default)]
struct Control {
    /// The worker is about to park or parked; `submit` must unpark it.
    sleeping: AtomicBool,
    /// The engine is being dropped: finish what is published, then exit.
    stop: AtomicBool,
    /// Times the worker has parked (diagnostics).
    sleeps: AtomicU64,
}

/// An asynchronous CPU copy engine: a worker thread copies from an SPSC descriptor ring.
///
/// Copies complete in submission order, so [`OpFlags::FENCE`] is honoured trivially. The worker
/// never fails an op. Dropping the engine submits whatever was enqueued, waits for every op in
/// flight to finish and joins the worker: after `drop` returns, no copy is in flight and no thread
/// is left.
///
/// The engine is `Send` (it may move to its PMD thread) but not `Sync`, like every channel.
#[derive(Debug)]
pub struct WorkerEngine {
    info: EngineInfo,
    producer: Producer,
    /// Tickets below this are retired; never above the worker's completion count.
    retired: u64,
    stats: EngineStats,
    /// The idle strategy lets the worker park, so `submit` must check whether it sleeps.
    may_park: bool,
    /// Times `submit` unparked the worker.
    wakeups: u64,
    control: Arc<CachePadded<Control>>,
    /// The worker, to unpark it.
    thread: Thread,
    /// The worker, to join it on drop (`None` once joined).
    worker: Option<JoinHandle<()>>,
    /// A channel belongs to one thread: not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

impl WorkerEngine {
    /// Starts an engine and its worker thread.
    ///
    /// # Errors
    ///
    /// [`ControlError::InvalidConfig`] for a ring size of 0 or above [`MAX_RING`], or a CPU number
    /// no `cpu_set_t` can hold; [`ControlError::Thread`] when the thread cannot be spawned or
    /// pinned (e.g. the CPU is offline or outside this process's affinity mask).
    pub fn new(cfg: WorkerConfig) -> Result<Self, ControlError> {
        if cfg.ring_size == 0 || cfg.ring_size > MAX_RING {
            return Err(ControlError::InvalidConfig(format!(
                "worker ring_size {} not in 1..={MAX_RING}",
                cfg.ring_size
            )));
        }
        if let Some(cpu) = cfg.pin_cpu {
            if cpu >= affinity::MAX_CPUS {
                return Err(ControlError::InvalidConfig(format!(
                    "worker pin_cpu {cpu} not below {}",
                    affinity::MAX_CPUS
                )));
            }
        }
        let capacity = cfg.ring_size.next_power_of_two();
        let (producer, consumer) = ring::ring(capacity);
        let control = Arc::new(CachePadded(Control::default()));

        // The worker reports whether pinning worked before it touches the ring.
        let (started_tx, started_rx) = mpsc::sync_channel::<std::io::Result<()>>(1);
        let worker_control = Arc::clone(&control);
        let idle = cfg.idle;
        let pin_cpu = cfg.pin_cpu;
        let worker = thread::Builder::new().name("copy-worker".into()).spawn(move || {
            let pinned = pin_cpu.map_or(Ok(()), affinity::pin_current_thread);
            let ok = pinned.is_ok();
            // The constructor is waiting; if it is gone there is nobody to work for either.
            if started_tx.send(pinned).is_err() || !ok {
                return;
            }
            run_worker(consumer, &worker_control, idle);
        })?;
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = worker.join();
                return Err(ControlError::Thread(e));
            }
            Err(_) => {
                let _ = worker.join();
                return Err(ControlError::Thread(std::io::Error::other("worker thread exited while starting")));
            }
        }

        Ok(WorkerEngine {
            info: EngineInfo {
                name: "worker".into(),
                capabilities: Capabilities::MEM_TO_MEM
                    | Capabilities::SVA
                    | Capabilities::FENCE
                    | Capabilities::OFFLOAD,
                ring_size: capacity,
                max_len: usize::MAX >> 1,
            },
            producer,
            retired: 0,
            stats: EngineStats::default(),
            may_park: cfg.idle.park_timeout.is_some(),
            wakeups: 0,
            control,
            thread: worker.thread().clone(),
            worker: Some(worker),
            _not_sync: PhantomData,
        })
    }

    /// Times the worker thread has gone to sleep (parked) so far.
    pub fn worker_sleeps(&self) -> u64 {
        self.control.sleeps.load(Ordering::Relaxed)
    }

    /// Times `submit` found the worker asleep and unparked it (the data path's only system call).
    pub fn wakeups(&self) -> u64 {
        self.wakeups
    }

    /// Unparks the worker if it sleeps. The fence pairs with the worker's in [`run_worker`]; see
    /// the module docs.
    #[inline]
    fn wake_worker(&mut self) {
        if !self.may_park {
            return;
        }
        fence(Ordering::SeqCst);
        if self.control.sleeping.load(Ordering::Relaxed) && self.control.sleeping.swap(false, Ordering::Relaxed) {
            self.thread.unpark();
            self.wakeups += 1;
        }
    }
}

impl CopyEngine for WorkerEngine {
    #[inline]
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    #[inline]
    fn burst_capacity(&self) -> usize {
        self.info.ring_size - (self.producer.written() - self.retired) as usize
    }

    #[inline]
    unsafe fn enqueue(
        &mut self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        flags: OpFlags,
    ) -> Result<Ticket, EnqueueError> {
        check_copy(src, dst, len, self.info.max_len)?;
        let ticket = self.producer.written();
        // Unretired ops hold their slots: the worker may still be copying the oldest one.
        if ticket - self.retired >= self.info.ring_size as u64 || self.producer.push(Desc { src, dst, len }).is_err() {
            self.stats.ring_full += 1;
            return Err(EnqueueError::RingFull);
        }
        self.stats.on_enqueue(len);
        if flags.contains(OpFlags::SUBMIT) {
            self.submit();
        }
        Ok(Ticket::new(ticket))
    }

    #[inline]
    fn submit(&mut self) {
        if self.producer.publish() {
            self.stats.submits += 1;
            self.wake_worker();
        }
    }

    #[inline]
    fn reap(&mut self, max: usize, _failed: &mut [FailedOp]) -> Reaped {
        // The CPU worker never fails an op, so `_failed` is never written and every completed op
        // may be retired whatever its length.
        let want = max as u64;
        let mut done = self.producer.cached_done();
        if done - self.retired < want && done < self.producer.published() {
            done = self.producer.load_done();
        }
        let n = (done - self.retired).min(want);
        self.retired += n;
        self.stats.on_reap(n as usize, 0);
        Reaped { retired: n as usize, failed: 0 }
    }

    #[inline]
    fn next_ticket(&self) -> Ticket {
        Ticket::new(self.producer.written())
    }

    #[inline]
    fn retired(&self) -> Ticket {
        Ticket::new(self.retired)
    }

    fn stats(&self) -> EngineStats {
        self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = EngineStats::default();
    }
}

impl Drop for WorkerEngine {
    /// Submits everything enqueued, lets the worker finish every op in flight, and joins it.
    fn drop(&mut self) {
        self.producer.publish();
        // Release: the worker's Acquire load of `stop` makes the tail just published visible to
        // its last look at the ring.
        self.control.stop.store(true, Ordering::Release);
        if let Some(worker) = self.worker.take() {
            worker.thread().unpark();
            // The worker cannot panic (it only copies); if it did, it has stopped copying anyway.
            let _ = worker.join();
        }
    }
}

/// The worker thread: copies published descriptors in order until the engine stops it and nothing
/// published is left.
fn run_worker(mut ring: Consumer, control: &Control, idle: IdleStrategy) {
    let mut empty: u32 = 0;
    loop {
        if let Some(d) = ring.pop() {
            if d.len != 0 {
                // SAFETY: `CopyEngine::enqueue`'s contract: `src` is valid for reads and `dst` for
                // writes of `len` bytes, and nothing else writes `src` or accesses `dst`, until the
                // op is retired, which happens only after `complete` below (or after the engine's
                // drop has joined this thread). `check_copy` proved them non-null and disjoint.
                unsafe { core::ptr::copy_nonoverlapping(d.src, d.dst, d.len) };
            }
            ring.complete();
            empty = 0;
            continue;
        }
        if control.stop.load(Ordering::Acquire) {
            // The engine published its last tail before raising `stop`: one more look sees it.
            if !ring.has_published() {
                return;
            }
            continue;
        }
        empty = empty.saturating_add(1);
        if empty <= idle.spins {
            core::hint::spin_loop();
            continue;
        }
        match idle.park_timeout {
            Some(timeout) if empty - idle.spins > idle.yields => {
                control.sleeping.store(true, Ordering::Relaxed);
                // Pairs with the fence in `WorkerEngine::wake_worker` (see the module docs): after
                // it, either this thread sees the new tail or `submit` sees `sleeping`.
                fence(Ordering::SeqCst);
                if ring.has_published() || control.stop.load(Ordering::Relaxed) {
                    control.sleeping.store(false, Ordering::Relaxed);
                    continue;
                }
                control.sleeps.fetch_add(1, Ordering::Relaxed);
                thread::park_timeout(timeout);
                control.sleeping.store(false, Ordering::Relaxed);
            }
            _ => thread::yield_now(),
        }
    }
}

/// Compile-time proof that [`WorkerEngine`] is not `Sync`: if it were, both impls of
/// `AmbiguousIfSync` would apply and the type inference below would be ambiguous.
const _: () = {
    trait AmbiguousIfSync<A> {
        fn some_item() {}
    }
    impl<T: ?Sized> AmbiguousIfSync<()> for T {}
    #[allow(dead_code)]
    struct IsSync;
    impl<T: ?Sized + Sync> AmbiguousIfSync<IsSync> for T {}
    let _ = <WorkerEngine as AmbiguousIfSync<_>>::some_item;
};

/// Compile-time proof that [`WorkerEngine`] is `Send`.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<WorkerEngine>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> WorkerConfig {
        WorkerConfig { idle: IdleStrategy::busy_poll(), ..WorkerConfig::default() }
    }

    fn wait_retired(e: &mut WorkerEngine, upto: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while e.retired().get() < upto {
            e.reap(usize::MAX, &mut []);
            assert!(std::time::Instant::now() < deadline, "op never completed (lost wake-up?)");
            thread::yield_now();
        }
    }

    #[test]
    fn drop_waits_for_copies_in_flight_and_joins_the_worker() {
        const OPS: usize = 64;
        const LEN: usize = 256 * 1024;
        let src: Vec<u8> = (0..OPS * LEN).map(|i| (i * 7 + i / 4093) as u8).collect();
        let mut dst = vec![0u8; OPS * LEN];
        let mut e = WorkerEngine::new(WorkerConfig { ring_size: OPS, ..busy() }).unwrap();
        let control = Arc::clone(&e.control);
        for k in 0..OPS {
            // SAFETY: both buffers outlive the engine, which is dropped below before they are read.
            unsafe {
                e.enqueue(src.as_ptr().add(k * LEN), dst.as_mut_ptr().add(k * LEN), LEN, OpFlags::empty()).unwrap();
            }
            if k == OPS / 2 {
                e.submit(); // half in flight, half enqueued but never submitted
            }
        }
        assert_eq!(Arc::strong_count(&control), 3, "this test, the engine and the worker");
        drop(e);
        assert_eq!(Arc::strong_count(&control), 1, "the engine is gone and the worker has exited");
        assert!(src == dst, "every op finished before drop returned");
    }

    #[test]
    fn submit_wakes_a_sleeping_worker() {
        let idle = IdleStrategy { spins: 0, yields: 0, park_timeout: Some(Duration::from_secs(60)) };
        let mut e = WorkerEngine::new(WorkerConfig { idle, ..WorkerConfig::default() }).unwrap();
        let src = [5u8; 64];
        let mut dst = [0u8; 64];
        for round in 0..20u64 {
            // Let the worker fall asleep: it parks with a 60 s timeout, so only `submit` wakes it.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !e.control.sleeping.load(Ordering::SeqCst) {
                assert!(std::time::Instant::now() < deadline, "worker never went to sleep");
                thread::yield_now();
            }
            // SAFETY: the buffers outlive the op, which is retired before the next round.
            unsafe { e.enqueue(src.as_ptr(), dst.as_mut_ptr(), 64, OpFlags::SUBMIT).unwrap() };
            wait_retired(&mut e, round + 1);
        }
        assert_eq!(dst, src);
        assert!(e.wakeups() >= 1, "submit unparked the worker");
        assert!(e.worker_sleeps() >= 1);
    }

    #[test]
    fn busy_polling_engine_never_checks_the_sleeping_flag() {
        let mut e = WorkerEngine::new(busy()).unwrap();
        assert!(!e.may_park);
        let src = [1u8; 8];
        let mut dst = [0u8; 8];
        // SAFETY: the buffers outlive the op, which is retired below.
        unsafe { e.enqueue(src.as_ptr(), dst.as_mut_ptr(), 8, OpFlags::SUBMIT).unwrap() };
        wait_retired(&mut e, 1);
        assert_eq!(dst, src);
        assert_eq!((e.wakeups(), e.worker_sleeps()), (0, 0));
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn worker_pins_to_an_allowed_cpu() {
        let cpu = affinity::allowed_cpus()[0];
        let mut e = WorkerEngine::new(WorkerConfig { pin_cpu: Some(cpu), ..WorkerConfig::default() }).unwrap();
        let src = [9u8; 32];
        let mut dst = [0u8; 32];
        // SAFETY: the buffers outlive the op, which is retired below.
        unsafe { e.enqueue(src.as_ptr(), dst.as_mut_ptr(), 32, OpFlags::SUBMIT).unwrap() };
        wait_retired(&mut e, 1);
        assert_eq!(dst, src);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn pinning_to_a_cpu_outside_the_mask_is_an_error_not_a_panic() {
        let allowed = affinity::allowed_cpus();
        let Some(cpu) = (0..affinity::MAX_CPUS).rev().find(|c| !allowed.contains(c)) else {
            return; // every possible CPU is allowed: nothing to refuse
        };
        let err = WorkerEngine::new(WorkerConfig { pin_cpu: Some(cpu), ..WorkerConfig::default() }).unwrap_err();
        assert!(matches!(err, ControlError::Thread(_)), "{err:?}");
    }
}
