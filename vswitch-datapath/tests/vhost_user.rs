//! The vhost-user backend with an in-process frontend (rust-vmm `vhost`'s `Frontend`): guest
//! memory is a file that both sides map, ring addresses are the frontend's own user addresses,
//! and the PMD runs on the test thread with a slow engine (completions delayed) so that copies are
//! in flight when the frontend stops its rings or goes away.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use copy_engine::conformance::LazyEngine;
use copy_engine::fault::{FaultConfig, FaultEngine};
use copy_engine::{Channel, CopyEngine, Policy};
use copy_engine_cpu::{WorkerConfig, WorkerEngine};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;
use vswitch_datapath::testguest::{Buf, DriverQueue, TestGuest, GUEST_BASE};
use vswitch_datapath::vhost_user::{DeviceConfig, VhostUserServer};
use vswitch_datapath::{
    GuestMemory, GuestRegion, PacketPool, Pmd, RingFeatures, TrafficConfig, TrafficPort, VhostPort,
};

#[path = "common/rawfront.rs"]
mod rawfront;

use rawfront::{req, RawFrontend};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The tests of this binary run one at a time: the soak counts this process's descriptors and
/// resident memory, which tests running beside it would change.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
const MEM_LEN: usize = 4 << 20;
const QSIZE: u16 = 256;

type SlowEngine = FaultEngine<WorkerEngine>;

fn unique(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("vswitch-vu-{tag}-{}-{n}", std::process::id()))
}

/// The frontend's side: guest memory in a file, the driver side of the rings: queue pair 0 (`rx`,
/// `tx`) and any further pairs (`more`).
struct Guest {
    file: File,
    path: PathBuf,
    g: TestGuest,
    rx: DriverQueue,
    tx: DriverQueue,
    more: Vec<(DriverQueue, DriverQueue)>,
}

impl Guest {
    fn new() -> Guest {
        Guest::with_pairs(1)
    }

    /// A guest with one queue pair whose used idx fields are each on a page of their own (see
    /// [`TestGuest::add_queue_used_idx_apart`]).
    fn with_used_idx_apart() -> Guest {
        let mut guest = Guest::with_pairs(1);
        let feats = RingFeatures::EVENT_IDX | RingFeatures::INDIRECT_DESC;
        guest.rx = guest.g.add_queue_used_idx_apart(QSIZE, feats);
        guest.tx = guest.g.add_queue_used_idx_apart(QSIZE, feats);
        guest
    }

    /// A guest with `pairs` queue pairs.
    fn with_pairs(pairs: usize) -> Guest {
        let path = unique("mem");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(MEM_LEN as u64).unwrap();
        let region = GuestRegion::from_fd(GUEST_BASE, MEM_LEN, std::os::fd::AsFd::as_fd(&file), 0).unwrap();
        let g = TestGuest::from_memory(Arc::new(GuestMemory::new(vec![region]).unwrap()));
        let feats = RingFeatures::EVENT_IDX | RingFeatures::INDIRECT_DESC;
        let rx = g.add_queue(QSIZE, feats);
        let tx = g.add_queue(QSIZE, feats);
        let more = (1..pairs).map(|_| (g.add_queue(QSIZE, feats), g.add_queue(QSIZE, feats))).collect();
        Guest { file, path, g, rx, tx, more }
    }

    /// Every ring, in vring order: RX 0, TX 0, RX 1, TX 1, ...
    fn rings(&self) -> Vec<&DriverQueue> {
        let mut v = vec![&self.rx, &self.tx];
        for (rx, tx) in &self.more {
            v.extend([rx, tx]);
        }
        v
    }

    /// The frontend's user address of `gpa` (its own mapping of the file).
    fn user_addr(&self, gpa: u64) -> u64 {
        self.g.memory().regions()[0].host_addr() as u64 + (gpa - GUEST_BASE)
    }

    /// How many mappings of the memory file this process has (the frontend's, plus the
    /// backend's while it holds the memory table).
    fn mappings(&self) -> usize {
        self.mapping_lines().len()
    }

    /// The `/proc/self/maps` lines of the memory file (address ranges first).
    fn mapping_lines(&self) -> Vec<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let name = self.path.file_name().unwrap().to_str().unwrap().to_owned();
        maps.lines().filter(|l| l.contains(&name)).map(String::from).collect()
    }

    /// Connects and sets up every ring, the way DPDK's virtio-user does.
    fn connect(&self, sock: &PathBuf) -> (Frontend, Vec<EventFd>) {
        let rings = self.rings();
        let mut f = Frontend::connect(sock, rings.len() as u64).expect("connect to the backend");
        f.set_owner().unwrap();
        let offered = f.get_features().unwrap();
        // Everything offered, packed rings only if this guest's rings are packed.
        let packed = self.rx.is_packed();
        f.set_features(if packed { offered } else { offered & !(1 << 34) }).unwrap();
        let pf = f.get_protocol_features().unwrap();
        assert!(pf.contains(VhostUserProtocolFeatures::MQ));
        assert!(pf.contains(VhostUserProtocolFeatures::REPLY_ACK));
        f.set_protocol_features(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK).unwrap();
        // (GET_QUEUE_NUM answers queue *pairs*, as DPDK and QEMU read it; this frontend would read
        // it as queues, so it is not asked here.)
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: GUEST_BASE,
            memory_size: MEM_LEN as u64,
            userspace_addr: self.user_addr(GUEST_BASE),
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        };
        f.set_mem_table(&[region]).unwrap();
        let mut fds = Vec::new();
        for (i, q) in rings.iter().enumerate() {
            let c = q.config();
            f.set_vring_num(i, c.size).unwrap();
            let addrs = VringConfigData {
                queue_max_size: c.size,
                queue_size: c.size,
                flags: 0,
                desc_table_addr: self.user_addr(c.desc_table),
                used_ring_addr: self.user_addr(c.used_ring),
                avail_ring_addr: self.user_addr(c.avail_ring),
                log_addr: None,
            };
            f.set_vring_addr(i, &addrs).unwrap();
            // A packed ring starts at index 0 with wrap counter 1 (bit 15), as virtio-user sends it.
            f.set_vring_base(i, if packed { 0x8000 } else { 0 }).unwrap();
            let (call, kick) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
            f.set_vring_call(i, &call).unwrap();
            f.set_vring_kick(i, &kick).unwrap();
            fds.extend([call, kick]);
        }
        for i in 0..rings.len() {
            f.set_vring_enable(i, true).unwrap();
        }
        (f, fds)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A PMD with a traffic source cross-connected to one unattached vhost port, and its server.
fn switch(delay_polls: u32) -> (Pmd<SlowEngine>, VhostUserServer, PathBuf) {
    let engine = FaultEngine::new(
        WorkerEngine::new(WorkerConfig::default()).unwrap(),
        FaultConfig { delay_polls, ..FaultConfig::default() },
    );
    switch_on(Channel::new(engine, Policy::offload_all()))
}

/// [`switch`] on any copy channel.
fn switch_on<E: CopyEngine>(chan: Channel<E>) -> (Pmd<E>, VhostUserServer, PathBuf) {
    let mut pmd = Pmd::new(chan, PacketPool::new(512, 2048));
    let cfg = TrafficConfig { budget: None, ..TrafficConfig::fixed(1000) };
    let t = pmd.add_port(Box::new(TrafficPort::new("traffic", cfg)));
    let v = pmd.add_port(Box::new(VhostPort::unattached("vhost0")));
    pmd.connect(t, v);
    pmd.connect(v, t);
    let (tx, rx) = mpsc::channel();
    pmd.set_commands(rx);
    let sock = unique("sock");
    let dcfg = DeviceConfig::new("vhost0", v, tx, Duration::from_secs(10));
    let server = VhostUserServer::start(&sock, dcfg).unwrap();
    (pmd, server, sock)
}

fn attached<E: CopyEngine>(pmd: &Pmd<E>) -> bool {
    pmd.port(1).as_any().downcast_ref::<VhostPort>().unwrap().is_attached()
}

/// Runs the PMD until `cond` holds (bounded).
fn run_until<E: CopyEngine>(pmd: &mut Pmd<E>, what: &str, mut cond: impl FnMut(&mut Pmd<E>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond(pmd) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", pmd.port_stats());
        pmd.run_once();
    }
}

#[test]
fn frontend_gone_mid_traffic_no_copy_lands_after_unmap_and_a_new_frontend_gets_traffic() {
    let _serial = serial();
    // Slow enough that copies are still in flight when the control thread has seen the socket
    // close, however late the scheduler runs it.
    let (mut pmd, server, sock) = switch(5000);
    let mut guest = Guest::new();
    for _ in 0..128 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    let (frontend, _fds) = guest.connect(&sock);
    run_until(&mut pmd, "attach and copies in flight", |p| attached(p) && p.channel().in_flight() > 0);
    assert_eq!(guest.mappings(), 2, "frontend and backend both map the guest memory");

    // The frontend goes away while copies into its memory are in flight.
    drop(frontend);
    let mut in_flight_at_detach = 0;
    run_until(&mut pmd, "detach", |p| {
        let attached = attached(p);
        if attached {
            in_flight_at_detach = p.channel().in_flight();
        }
        !attached
    });
    assert!(in_flight_at_detach > 0, "copies were in flight when the detach began");
    assert_eq!(pmd.channel().in_flight(), 0, "the detach drained the channel");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.disconnects() < 1 {
        assert!(Instant::now() < deadline, "control thread did not clean up");
        pmd.run_once();
    }
    assert_eq!(guest.mappings(), 1, "the backend unmapped the guest memory");
    // Nothing writes into the old guest memory any more, though the switch keeps running.
    let before = guest.g.snapshot();
    let until = Instant::now() + Duration::from_millis(100);
    while Instant::now() < until {
        pmd.run_once();
    }
    assert_eq!(guest.g.snapshot(), before, "guest memory changed after the frontend was detached");

    // A new frontend on the same socket: traffic resumes.
    let mut guest2 = Guest::new();
    for _ in 0..64 {
        guest2.rx.post_rx(&guest2.g, 2048, 1);
    }
    let (frontend2, _fds2) = guest2.connect(&sock);
    run_until(&mut pmd, "packets into the new guest", |_| guest2.rx.used_idx(&guest2.g) >= 32);
    let u = guest2.rx.pop_used(&guest2.g).unwrap();
    assert_eq!(u.len, 12 + 1000, "net header + packet");
    assert_eq!(server.connections(), 2);
    drop(frontend2);
    run_until(&mut pmd, "second detach", |p| !attached(p));
    pmd.stop();
    drop(pmd);
    server.stop();
    assert!(!sock.exists(), "socket removed when the server stops");
}

#[test]
fn get_vring_base_drains_in_flight_copies_and_returns_the_next_avail_index() {
    let _serial = serial();
    let (mut pmd, server, sock) = switch(100);
    let mut guest = Guest::new();
    for _ in 0..100 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    let (frontend, _fds) = guest.connect(&sock);
    run_until(&mut pmd, "copies in flight", |p| attached(p) && p.channel().in_flight() > 0);
    // GET_VRING_BASE blocks the frontend until the PMD has detached the pair: ask from a thread.
    let asker = std::thread::spawn(move || {
        let base = frontend.get_vring_base(0).unwrap();
        (frontend, base)
    });
    run_until(&mut pmd, "the GET_VRING_BASE answer", |_| asker.is_finished());
    let (frontend, base) = asker.join().unwrap();
    assert!(!attached(&pmd));
    assert_eq!(pmd.channel().in_flight(), 0);
    // Every chain the backend took is back on the used ring, filled: the answer is the next avail
    // index, and the used index matches it.
    assert!(base > 0 && base <= 100, "base {base}");
    assert_eq!(guest.rx.used_idx(&guest.g) as u32, base, "every taken chain returned before the answer");
    let mut n = 0;
    while let Some(u) = guest.rx.pop_used(&guest.g) {
        assert_eq!(u.len, 12 + 1000);
        n += 1;
    }
    assert_eq!(n, base);
    drop(frontend);
    pmd.stop();
    drop(pmd);
    server.stop();
}

#[test]
fn a_second_server_on_a_live_socket_is_refused_and_a_stale_one_is_replaced() {
    let _serial = serial();
    let (_pmd, server, sock) = switch(0);
    let (tx, _rx) = mpsc::channel();
    let cfg = DeviceConfig::new("dup", 1, tx, Duration::from_secs(1));
    let err = VhostUserServer::start(&sock, cfg.clone()).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    // A stale socket file (nobody listening) is replaced.
    let stale = unique("stale");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    VhostUserServer::start(&stale, cfg.clone()).expect("stale socket replaced").stop();
    // A regular file is never removed.
    let plain = unique("plain");
    std::fs::write(&plain, b"not a socket").unwrap();
    let err = VhostUserServer::start(&plain, cfg).unwrap_err();
    assert!(err.to_string().contains("not a Unix socket"), "{err}");
    assert_eq!(std::fs::read(&plain).unwrap(), b"not a socket");
    std::fs::remove_file(&plain).unwrap();
    server.stop();
}

#[test]
fn a_memory_table_replaced_under_running_queues_detaches_remaps_and_reattaches() {
    let _serial = serial();
    let (mut pmd, server, sock) = switch(50);
    let mut guest = Guest::new();
    for _ in 0..200 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    let (frontend, _fds) = guest.connect(&sock);
    run_until(&mut pmd, "copies in flight", |p| attached(p) && p.channel().in_flight() > 0);
    // The same guest memory again, as a new table (QEMU does this on memory hotplug): the pair is
    // drained and detached, the new table mapped, the old one unmapped, and the pair attached again.
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: GUEST_BASE,
        memory_size: MEM_LEN as u64,
        userspace_addr: guest.user_addr(GUEST_BASE),
        mmap_offset: 0,
        mmap_handle: guest.file.as_raw_fd(),
    };
    let before = guest.mapping_lines();
    // With REPLY_ACK the frontend waits for the backend to have applied the table.
    frontend.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
    let asker = std::thread::spawn(move || {
        frontend.set_mem_table(&[region]).unwrap();
        frontend
    });
    run_until(&mut pmd, "the SET_MEM_TABLE answer", |_| asker.is_finished());
    let frontend = asker.join().unwrap();
    run_until(&mut pmd, "re-attach", |p| attached(p));
    let after = guest.mapping_lines();
    assert_eq!(after.len(), 2, "old table unmapped, new one mapped: {after:?}");
    assert_ne!(before, after, "the backend's mapping is a new one: {before:?} -> {after:?}");
    // New buffers, read through the new table, are filled too: all 250 come back.
    for _ in 0..50 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    run_until(&mut pmd, "traffic on the new table", |_| guest.rx.used_idx(&guest.g) == 250);
    drop(frontend);
    run_until(&mut pmd, "detach", |p| !attached(p));
    pmd.stop();
    drop(pmd);
    server.stop();
}

/// A guest TX chain's bytes: a zeroed 12-byte net header (no offloads), then 60 bytes of `b`.
fn tx_frame(b: u8) -> Vec<u8> {
    let mut f = vec![0; 12];
    f.extend([b; 60]);
    f
}

fn vhost_port(pmd: &Pmd<SlowEngine>) -> &VhostPort {
    pmd.port(1).as_any().downcast_ref::<VhostPort>().unwrap()
}

/// Packets the guest sent on queue pair `pair` that the switch received (its southbound queue).
fn received_on(pmd: &Pmd<SlowEngine>, pair: usize) -> u64 {
    vhost_port(pmd).pair(pair).map_or(0, |(_, s)| s.stats().packets)
}

/// A guest with two queue pairs, each with 64 RX buffers and frames 0..16 posted for TX.
fn two_pairs_posted() -> Guest {
    let mut guest = Guest::with_pairs(2);
    for _ in 0..64 {
        guest.rx.post_rx(&guest.g, 2048, 1);
        guest.more[0].0.post_rx(&guest.g, 2048, 1);
    }
    for i in 0..16u8 {
        guest.tx.post_tx(&guest.g, &tx_frame(i), 1, false);
        guest.more[0].1.post_tx(&guest.g, &tx_frame(i), 1, false);
    }
    guest
}

#[test]
fn two_queue_pairs_carry_traffic_and_get_vring_base_on_pair_1_drains_only_it() {
    let _serial = serial();
    let (mut pmd, server, sock) = switch(100);
    let mut guest = two_pairs_posted();
    let (mut frontend, _fds) = guest.connect(&sock);
    // GET_QUEUE_NUM answers queue pairs: 4 by default.
    assert_eq!(frontend.get_queue_num().unwrap(), 4);
    run_until(&mut pmd, "both pairs attached", |p| vhost_port(p).attached_pairs() == [0, 1]);
    // The traffic source's packets differ in their first bytes: their flows spread over both
    // pairs. What the guest sent on both pairs arrives.
    run_until(&mut pmd, "traffic on both pairs", |p| {
        guest.rx.used_idx(&guest.g) >= 8
            && guest.more[0].0.used_idx(&guest.g) >= 8
            && received_on(p, 0) == 16
            && received_on(p, 1) == 16
    });
    assert_eq!(guest.tx.used_idx(&guest.g), 16);
    assert_eq!(guest.more[0].1.used_idx(&guest.g), 16);
    // More buffers on both pairs, and copies into them in flight.
    for _ in 0..32 {
        guest.rx.post_rx(&guest.g, 2048, 1);
        guest.more[0].0.post_rx(&guest.g, 2048, 1);
    }
    run_until(&mut pmd, "copies in flight", |p| p.channel().in_flight() > 0);

    // The frontend stops pair 1 (vrings 2 and 3) while copies are in flight: only pair 1 detaches,
    // drained.
    let asker = std::thread::spawn(move || {
        let rx_base = frontend.get_vring_base(2).unwrap();
        let tx_base = frontend.get_vring_base(3).unwrap();
        (frontend, rx_base, tx_base)
    });
    run_until(&mut pmd, "the GET_VRING_BASE answers", |_| asker.is_finished());
    let (frontend, rx_base, tx_base) = asker.join().unwrap();
    assert_eq!(vhost_port(&pmd).attached_pairs(), [0], "pair 0 stays attached");
    assert!((8..=96).contains(&rx_base), "rx base {rx_base}");
    let (rx1, tx1) = &mut guest.more[0];
    assert_eq!(rx1.used_idx(&guest.g) as u32, rx_base, "every taken chain of pair 1 returned before the answer");
    assert_eq!(tx_base, 16);
    let mut n = 0;
    while let Some(u) = rx1.pop_used(&guest.g) {
        assert_eq!(u.len, 12 + 1000);
        n += 1;
    }
    assert_eq!(n, rx_base);

    // Pair 0 keeps flowing (every flow now goes to it); pair 1's rings are left alone.
    let pair0_before = guest.rx.used_idx(&guest.g);
    for _ in 0..32 {
        guest.rx.post_rx(&guest.g, 2048, 1);
        rx1.post_rx(&guest.g, 2048, 1);
    }
    tx1.post_tx(&guest.g, &tx_frame(7), 1, false);
    guest.tx.post_tx(&guest.g, &tx_frame(9), 1, false);
    run_until(&mut pmd, "pair 0 fills its new buffers", |p| {
        guest.rx.used_idx(&guest.g) == 128 && received_on(p, 0) == 17
    });
    assert!(guest.rx.used_idx(&guest.g) > pair0_before);
    let (rx1, tx1) = &guest.more[0];
    assert_eq!(rx1.used_idx(&guest.g) as u32, rx_base, "nothing reaches a stopped pair");
    assert_eq!(tx1.used_idx(&guest.g), 16, "nothing is taken from a stopped pair");
    assert_eq!(vhost_port(&pmd).queue_stats().1.packets, 33, "southbound over both pairs");

    drop(frontend);
    run_until(&mut pmd, "detach", |p| !attached(p));
    pmd.stop();
    drop(pmd);
    server.stop();
}

/// Two PMDs, pair 0 of the port on one and pair 1 on the other (a shard each): the device
/// attaches each pair on the PMD that owns it, GET_VRING_BASE on pair 1 detaches only the other
/// PMD's shard, and the frontend going away detaches both. Each shard's flag in the shared set
/// follows its attach and detach. Both PMDs carry the guest's traffic.
#[test]
fn each_queue_pair_attaches_and_detaches_on_the_pmd_that_owns_it() {
    use vswitch_datapath::switch::vhost_port::ShardSet;
    use vswitch_datapath::vhost_user::Shard;
    let _serial = serial();
    let set = ShardSet::new(2);
    let mut pmds: Vec<Pmd<WorkerEngine>> = Vec::new();
    let mut txs = Vec::new();
    for k in 0..2 {
        let chan = Channel::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), Policy::offload_all());
        let mut pmd = Pmd::new(chan, PacketPool::new(512, 2048));
        let cfg = TrafficConfig { budget: None, ..TrafficConfig::fixed(1000) };
        let t = pmd.add_port(Box::new(TrafficPort::new("traffic", cfg)));
        let v = pmd.add_port(Box::new(VhostPort::shard("vhost0", set.clone(), k).with_assigned_pairs(vec![k])));
        pmd.connect(t, v);
        pmd.connect(v, t);
        let (tx, rx) = mpsc::channel();
        pmd.set_commands(rx);
        txs.push(tx);
        pmds.push(pmd);
    }
    let sock = unique("shards");
    let mut dcfg = DeviceConfig::new("vhost0", 1, txs[0].clone(), Duration::from_secs(10));
    dcfg.shards = vec![Shard { pmd: txs[1].clone(), port: 1 }];
    dcfg.pair_shard = vec![0, 1];
    let server = VhostUserServer::start(&sock, dcfg).unwrap();
    let shard = |pmd: &Pmd<WorkerEngine>| pmd.port(1).as_any().downcast_ref::<VhostPort>().unwrap().attached_pairs();
    let received = |pmd: &Pmd<WorkerEngine>| pmd.port(1).stats().rx_packets;
    let run = |pmds: &mut [Pmd<WorkerEngine>], what: &str, cond: &mut dyn FnMut(&[Pmd<WorkerEngine>]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(pmds) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            for p in pmds.iter_mut() {
                p.run_once();
            }
        }
    };
    let guest = two_pairs_posted();
    let (frontend, _fds) = guest.connect(&sock);
    run(&mut pmds, "each pair on its PMD", &mut |p| shard(&p[0]) == [0] && shard(&p[1]) == [1]);
    assert!(set.is_up(0) && set.is_up(1));
    // Each PMD received its pair's 16 frames and sent into its pair's RX queue only.
    run(&mut pmds, "traffic on both PMDs", &mut |p| {
        received(&p[0]) == 16
            && received(&p[1]) == 16
            && guest.rx.used_idx(&guest.g) >= 8
            && guest.more[0].0.used_idx(&guest.g) >= 8
    });
    assert_eq!((guest.tx.used_idx(&guest.g), guest.more[0].1.used_idx(&guest.g)), (16, 16));
    // The frontend stops pair 1: only PMD 1's shard detaches.
    let asker = std::thread::spawn(move || {
        let bases = (frontend.get_vring_base(2).unwrap(), frontend.get_vring_base(3).unwrap());
        (frontend, bases)
    });
    run(&mut pmds, "the GET_VRING_BASE answers", &mut |_| asker.is_finished());
    let (frontend, (_, tx_base)) = asker.join().unwrap();
    assert_eq!(tx_base, 16, "pair 1's TX ring stopped where PMD 1 left it");
    assert_eq!((shard(&pmds[0]), shard(&pmds[1])), (vec![0], vec![]), "pair 0 stays on PMD 0");
    assert!(set.is_up(0) && !set.is_up(1), "PMD 1's shard is down");
    // The frontend goes away: a device-wide detach reaches both PMDs.
    drop(frontend);
    run(&mut pmds, "every shard detached", &mut |p| shard(&p[0]).is_empty() && shard(&p[1]).is_empty());
    assert!(!set.is_up(0) && !set.is_up(1));
    for p in &mut pmds {
        p.stop();
    }
    drop(pmds);
    server.stop();
}

/// What a raw frontend needs to set up a guest's rings: the memory region and each ring's size
/// and user addresses (computed on the test thread, used on the frontend's).
#[derive(Clone, Debug)]
struct Plan {
    fd: i32,
    region: (u64, u64, u64, u64),
    rings: Vec<(u16, u64, u64, u64)>,
}

impl Guest {
    fn plan(&self) -> Plan {
        let rings = self
            .rings()
            .iter()
            .map(|q| {
                let c = q.config();
                (c.size, self.user_addr(c.desc_table), self.user_addr(c.used_ring), self.user_addr(c.avail_ring))
            })
            .collect();
        Plan { fd: self.file.as_raw_fd(), region: (GUEST_BASE, MEM_LEN as u64, self.user_addr(GUEST_BASE), 0), rings }
    }
}

/// Runs `f` (a frontend's requests, which may wait for the PMD to detach queues) on another
/// thread while the PMD runs here.
fn with_pmd<T: Send, E: CopyEngine>(pmd: &mut Pmd<E>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(f);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !h.is_finished() {
            assert!(Instant::now() < deadline, "the frontend's requests did not finish");
            pmd.run_once();
        }
        h.join().unwrap()
    })
}

/// The device start half of QEMU's sequence (`vhost_dev_start`): features, memory table, then per
/// ring num, base, addresses, kick, call. Every request asks for a REPLY_ACK, which must be 0.
fn qemu_dev_start(f: &mut RawFrontend, plan: &Plan, features: u64, base: &[u32]) -> Vec<EventFd> {
    assert!(f.acked(req::SET_FEATURES, &rawfront::u64_body(features), &[]));
    assert!(f.acked(req::SET_MEM_TABLE, &rawfront::mem_table(&[plan.region]), &[plan.fd]));
    let mut fds = Vec::new();
    for (i, &(size, desc, used, avail)) in plan.rings.iter().enumerate() {
        let i32_ = i as u32;
        assert!(f.acked(req::SET_VRING_NUM, &rawfront::state(i32_, size.into()), &[]));
        assert!(f.acked(req::SET_VRING_BASE, &rawfront::state(i32_, base[i]), &[]));
        assert!(f.acked(req::SET_VRING_ADDR, &rawfront::vring_addr(i32_, desc, used, avail), &[]));
        let (kick, call) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
        assert!(f.acked(req::SET_VRING_KICK, &rawfront::u64_body(i as u64), &[kick.as_raw_fd()]));
        assert!(f.acked(req::SET_VRING_CALL, &rawfront::u64_body(i as u64), &[call.as_raw_fd()]));
        fds.extend([kick, call]);
    }
    fds
}

/// QEMU 7.2's connection and first start for a single queue pair, as its trace shows: protocol
/// features first, `SET_VRING_ENABLE 1` for both rings at virtio-net reset, which comes *before*
/// `SET_FEATURES`, and no enable after the device start. Returns the offered features.
fn qemu72_connect(f: &mut RawFrontend, plan: &Plan) -> (u64, Vec<EventFd>) {
    // Split rings: everything offered but packed rings (QEMU without `packed=on`).
    let offered = f.call(req::GET_FEATURES, 0, &[], &[]).u64() & !rawfront::RING_PACKED;
    assert_ne!(offered & rawfront::PROTOCOL_FEATURES, 0);
    let pf = f.call(req::GET_PROTOCOL_FEATURES, 0, &[], &[]).u64();
    assert_eq!(pf & rawfront::PF_MQ_REPLY_ACK, rawfront::PF_MQ_REPLY_ACK);
    f.send(req::SET_PROTOCOL_FEATURES, 0, &rawfront::u64_body(rawfront::PF_MQ_REPLY_ACK), &[]).unwrap();
    assert_eq!(f.call(req::GET_QUEUE_NUM, 0, &[], &[]).u64(), 4);
    assert!(f.acked(req::SET_OWNER, &[], &[]));
    for i in 0..2 {
        assert!(f.acked(req::SET_VRING_ENABLE, &rawfront::state(i, 1), &[]), "enable before SET_FEATURES accepted");
    }
    let fds = qemu_dev_start(f, plan, offered, &[0, 0]);
    (offered, fds)
}

#[test]
fn rings_enabled_before_set_features_start_once_features_are_acked() {
    let _serial = serial();
    // QEMU 7.2 with one queue pair: the order the vhost crate's handler refused.
    let (mut pmd, server, sock) = switch(0);
    let mut guest = Guest::new();
    for _ in 0..64 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    guest.tx.post_tx(&guest.g, &tx_frame(3), 1, false);
    let plan = guest.plan();
    let (mut f, _fds) = with_pmd(&mut pmd, || {
        let mut f = RawFrontend::connect(&sock);
        let (_, fds) = qemu72_connect(&mut f, &plan);
        (f, fds)
    });
    // (Counted at the port: the pair is attached twice, at the kick and again at the call fd.)
    run_until(&mut pmd, "traffic both ways", |p| {
        guest.rx.used_idx(&guest.g) >= 32 && p.port_stats()[1].1.rx_packets == 1
    });
    assert_eq!(guest.rx.pop_used(&guest.g).unwrap().len, 12 + 1000);
    assert_eq!(guest.tx.used_idx(&guest.g), 1);
    drop(f.send(req::RESET_OWNER, 0, &[], &[]));
    drop(f);
    pmd.stop();
    drop(pmd);
    server.stop();
}

#[test]
fn stop_by_disable_then_get_vring_base_and_a_restart_resume_where_the_rings_stopped() {
    let _serial = serial();
    // QEMU 7.2+ stops a device with SET_VRING_ENABLE 0, then GET_VRING_BASE, per ring (guest
    // driver reload, reboot); the next start sends SET_FEATURES again (the same features), the
    // memory table again, the bases it got, and enables the rings again.
    let (mut pmd, server, sock) = switch(50);
    let mut guest = Guest::new();
    let plan = guest.plan();
    let (mut f, offered, _fds) = with_pmd(&mut pmd, || {
        let mut f = RawFrontend::connect(&sock);
        let (offered, fds) = qemu72_connect(&mut f, &plan);
        (f, offered, fds)
    });
    // Buffers only now, so that however slowly the frontend's thread ran, copies are in flight.
    for _ in 0..100 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    run_until(&mut pmd, "copies in flight", |p| attached(p) && p.channel().in_flight() > 0);
    let bases = with_pmd(&mut pmd, || {
        for i in 0..2 {
            assert!(f.acked(req::SET_VRING_ENABLE, &rawfront::state(i, 0), &[]));
        }
        (0..2).map(|i| f.call(req::GET_VRING_BASE, 0, &rawfront::state(i, 0), &[]).payload).collect::<Vec<_>>()
    });
    assert!(!attached(&pmd), "disabled rings are not served");
    assert_eq!(pmd.channel().in_flight(), 0, "stopping drained every copy");
    let rx_base = u32::from_ne_bytes(bases[0][4..8].try_into().unwrap());
    assert_eq!(u32::from_ne_bytes(bases[0][..4].try_into().unwrap()), 0, "the answer names its vring");
    assert!(rx_base > 0 && rx_base <= 100, "rx base {rx_base}");
    assert_eq!(guest.rx.used_idx(&guest.g) as u32, rx_base, "every taken chain returned before the answer");
    // Stopped: nothing is written while the frontend restarts.
    let before = guest.g.snapshot();
    for _ in 0..1000 {
        pmd.run_once();
    }
    assert_eq!(guest.g.snapshot(), before, "a stopped device wrote guest memory");

    let _fds2 = with_pmd(&mut pmd, || {
        let fds = qemu_dev_start(&mut f, &plan, offered, &[rx_base, 0]);
        for i in 0..2 {
            assert!(f.acked(req::SET_VRING_ENABLE, &rawfront::state(i, 1), &[]));
        }
        fds
    });
    run_until(&mut pmd, "the rest of the buffers filled", |_| guest.rx.used_idx(&guest.g) == 100);
    let mut n = 0;
    while let Some(u) = guest.rx.pop_used(&guest.g) {
        assert_eq!(u.len, 12 + 1000);
        n += 1;
    }
    assert_eq!(n, 100, "each buffer used once, none skipped");
    drop(f);
    run_until(&mut pmd, "detach", |p| !attached(p));
    pmd.stop();
    drop(pmd);
    server.stop();
}

#[test]
fn repeated_set_features_with_the_same_features_does_not_stop_running_rings() {
    let _serial = serial();
    let (mut pmd, server, sock) = switch(0);
    let mut guest = Guest::new();
    for _ in 0..16 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    let plan = guest.plan();
    let (mut f, offered, _fds) = with_pmd(&mut pmd, || {
        let mut f = RawFrontend::connect(&sock);
        let (offered, fds) = qemu72_connect(&mut f, &plan);
        (f, offered, fds)
    });
    run_until(&mut pmd, "attach", |p| attached(p));
    let attaches = vhost_port(&pmd).attaches();
    for _ in 0..3 {
        // Answered without waiting for the PMD: nothing was detached.
        assert!(f.acked(req::SET_FEATURES, &rawfront::u64_body(offered), &[]));
    }
    assert!(attached(&pmd));
    assert_eq!(vhost_port(&pmd).attaches(), attaches, "the pair was never detached and attached again");
    for _ in 0..16 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    run_until(&mut pmd, "traffic goes on", |_| guest.rx.used_idx(&guest.g) == 32);
    drop(f);
    run_until(&mut pmd, "detach", |p| !attached(p));
    pmd.stop();
    drop(pmd);
    server.stop();
}

#[test]
fn reset_device_forgets_the_rings_and_a_reinitialised_device_gets_traffic() {
    let _serial = serial();
    for reset in [req::RESET_DEVICE, req::RESET_OWNER] {
        let (mut pmd, server, sock) = switch(50);
        let mut guest = Guest::new();
        for _ in 0..64 {
            guest.rx.post_rx(&guest.g, 2048, 1);
        }
        let plan = guest.plan();
        let (mut f, offered, _fds) = with_pmd(&mut pmd, || {
            let mut f = RawFrontend::connect(&sock);
            let (offered, fds) = qemu72_connect(&mut f, &plan);
            (f, offered, fds)
        });
        run_until(&mut pmd, "the first buffers filled", |_| guest.rx.used_idx(&guest.g) == 64);
        for _ in 0..64 {
            guest.rx.post_rx(&guest.g, 2048, 1);
        }
        run_until(&mut pmd, "copies in flight", |p| attached(p) && p.channel().in_flight() > 0);
        with_pmd(&mut pmd, || assert!(f.acked(reset, &[], &[]), "reset acked"));
        assert!(!attached(&pmd), "reset detached the pair");
        assert_eq!(pmd.channel().in_flight(), 0, "reset retired every copy before unmapping");
        assert_eq!(guest.mappings(), 1, "reset unmapped the memory table");
        // The driver starts over on fresh rings; the protocol features (REPLY_ACK) still hold.
        let mut guest2 = Guest::new();
        for _ in 0..32 {
            guest2.rx.post_rx(&guest2.g, 2048, 1);
        }
        let plan2 = guest2.plan();
        let _fds2 = with_pmd(&mut pmd, || {
            let fds = qemu_dev_start(&mut f, &plan2, offered, &[0, 0]);
            for i in 0..2 {
                assert!(f.acked(req::SET_VRING_ENABLE, &rawfront::state(i, 1), &[]));
            }
            fds
        });
        run_until(&mut pmd, "traffic after the reset", |_| guest2.rx.used_idx(&guest2.g) == 32);
        drop(f);
        run_until(&mut pmd, "detach", |p| !attached(p));
        pmd.stop();
        drop(pmd);
        server.stop();
    }
}

#[test]
fn a_guest_memory_file_truncated_under_traffic_breaks_only_that_port_and_the_switch_lives_on() {
    let _serial = serial();
    // The frontend shrinks its memory file while the switch is copying into it: the next access
    // past the end of file would be a SIGBUS that kills the switch. The pages are replaced by
    // zero pages, the port's queues break with MemoryLost, and a new frontend is served.
    let (mut pmd, server, sock) = switch(20);
    let mut guest = Guest::new();
    for _ in 0..200 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    let (frontend, _fds) = guest.connect(&sock);
    run_until(&mut pmd, "traffic", |p| attached(p) && guest.rx.used_idx(&guest.g) >= 16);
    guest.file.set_len(0).unwrap();
    run_until(&mut pmd, "the port's queues break", |p| {
        matches!(
            vhost_port(p).last_error(),
            Some(vswitch_datapath::VhostError::Ring(vswitch_datapath::VirtqError::MemoryLost))
        )
    });
    for _ in 0..1000 {
        pmd.run_once();
    }
    assert!(pmd.port_stats()[0].1.rx_packets > 0, "the switch keeps running");
    drop(frontend);
    run_until(&mut pmd, "detach", |p| !attached(p));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.disconnects() < 1 {
        assert!(Instant::now() < deadline, "control thread did not clean up");
        pmd.run_once();
    }
    // A new frontend with intact memory gets traffic on the same port.
    let mut guest2 = Guest::new();
    for _ in 0..32 {
        guest2.rx.post_rx(&guest2.g, 2048, 1);
    }
    let (frontend2, _fds2) = guest2.connect(&sock);
    run_until(&mut pmd, "traffic into the new guest", |_| guest2.rx.used_idx(&guest2.g) == 32);
    assert_eq!(guest2.rx.pop_used(&guest2.g).unwrap().len, 12 + 1000);
    drop(frontend2);
    run_until(&mut pmd, "second detach", |p| !attached(p));
    pmd.stop();
    drop(pmd);
    server.stop();
}

/// This process's resident set (KiB) and open descriptors.
fn own_rss_and_fds() -> (u64, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (rss, std::fs::read_dir("/proc/self/fd").unwrap().count())
}

#[test]
fn soak_1000_reconnects_with_copies_in_flight_on_the_delayed_worker_engine() {
    let _serial = serial();
    // The worker engine behind the fault wrapper (completions delayed): each cycle the frontend
    // leaves with copies in flight. No copy lands after the unmap, every cycle's packets are
    // intact, and the switch side's (this process's) RSS and descriptors stay flat.
    let (mut pmd, server, sock) = switch(30);
    let mut first = None;
    let mut with_copies_in_flight = 0;
    for cycle in 0..1000 {
        if cycle == 10 {
            first = Some(own_rss_and_fds());
        }
        let mut guest = Guest::new();
        for _ in 0..48 {
            guest.rx.post_rx(&guest.g, 2048, 1);
        }
        let (frontend, fds) = guest.connect(&sock);
        run_until(&mut pmd, "traffic", |_| guest.rx.used_idx(&guest.g) >= 16);
        while let Some(u) = guest.rx.pop_used(&guest.g) {
            assert_eq!(u.len, 12 + 1000, "cycle {cycle}");
        }
        drop(frontend);
        drop(fds);
        let mut in_flight = false;
        run_until(&mut pmd, "detach", |p| {
            in_flight |= attached(p) && p.channel().in_flight() > 0;
            !attached(p)
        });
        with_copies_in_flight += usize::from(in_flight);
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.disconnects() < cycle + 1 {
            assert!(Instant::now() < deadline, "cycle {cycle}: control thread did not clean up");
            pmd.run_once();
        }
        assert_eq!(guest.mappings(), 1, "cycle {cycle}: the backend still maps the guest memory");
        let before = guest.g.snapshot();
        for _ in 0..200 {
            pmd.run_once();
        }
        assert!(guest.g.snapshot() == before, "cycle {cycle}: guest memory changed after the unmap");
    }
    let (first, last) = (first.unwrap(), own_rss_and_fds());
    eprintln!(
        "soak delayed worker: 1000 cycles ({with_copies_in_flight} left with copies in flight), \
         RSS {} -> {} KiB, fds {} -> {}",
        first.0, last.0, first.1, last.1
    );
    assert!(with_copies_in_flight > 0, "copies were in flight at some detach");
    assert_eq!(first.1, last.1, "open descriptors grew");
    assert!(last.0 < first.0 + 16 * 1024, "RSS grew from {} to {} KiB", first.0, last.0);
    pmd.stop();
    drop(pmd);
    server.stop();
}

#[test]
fn dirty_logging_marks_the_pages_the_switch_writes_and_stops_when_log_all_is_cleared() {
    let _serial = serial();
    use std::os::unix::fs::FileExt;
    const LOG_ALL: u64 = 1 << 26;
    const LOG_SHMFD: u64 = 1 << 1;
    let (mut pmd, server, sock) = switch(10);
    let mut guest = Guest::new();
    let plan = guest.plan();
    // The log covers the guest-physical range of the memory: one bit per 4 KiB page.
    let log_len = ((GUEST_BASE + MEM_LEN as u64) / 4096).div_ceil(8);
    let log = tempfile_like(log_len);
    let (mut f, offered, _fds) = with_pmd(&mut pmd, || {
        let mut f = RawFrontend::connect(&sock);
        // Split rings: everything offered but packed rings (QEMU without `packed=on`).
        let offered = f.call(req::GET_FEATURES, 0, &[], &[]).u64() & !rawfront::RING_PACKED;
        assert_ne!(offered & LOG_ALL, 0, "VHOST_F_LOG_ALL offered");
        let pf = f.call(req::GET_PROTOCOL_FEATURES, 0, &[], &[]).u64();
        assert_ne!(pf & LOG_SHMFD, 0, "LOG_SHMFD offered");
        f.send(req::SET_PROTOCOL_FEATURES, 0, &rawfront::u64_body(rawfront::PF_MQ_REPLY_ACK | LOG_SHMFD), &[]).unwrap();
        let fds = qemu_dev_start(&mut f, &plan, offered, &[0, 0]);
        for i in 0..2 {
            assert!(f.acked(req::SET_VRING_ENABLE, &rawfront::state(i, 1), &[]));
        }
        // Migration starts: the log, then LOG_ALL.
        let mut body = log_len.to_ne_bytes().to_vec();
        body.extend_from_slice(&0u64.to_ne_bytes());
        let r = f.call(req::SET_LOG_BASE, 0, &body, &[log.as_raw_fd()]);
        assert!(r.payload.is_empty(), "SET_LOG_BASE is answered once the log is mapped");
        assert!(f.acked(req::SET_FEATURES, &rawfront::u64_body(offered), &[]));
        (f, offered, fds)
    });
    // Buffers posted once logging is on: whatever the switch writes now must be in the log.
    for _ in 0..32 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    run_until(&mut pmd, "traffic into the logging guest", |_| guest.rx.used_idx(&guest.g) == 32);
    let marked = |gpa: u64| {
        let page = gpa / 4096;
        let mut b = [0u8];
        log.read_exact_at(&mut b, page / 8).unwrap();
        b[0] & (1 << (page % 8)) != 0
    };
    while let Some(u) = guest.rx.pop_used(&guest.g) {
        for b in guest.rx.buffers(u.id as u16) {
            assert!(marked(b.gpa) && marked(b.gpa + u.len as u64 - 1), "RX buffer {:#x} not logged", b.gpa);
        }
    }
    assert!(marked(guest.rx.config().used_ring), "used ring logged");
    // Migration done (or cancelled): LOG_ALL cleared; the pages written from now on are not logged.
    with_pmd(&mut pmd, || assert!(f.acked(req::SET_FEATURES, &rawfront::u64_body(offered & !LOG_ALL), &[])));
    log.write_all_at(&vec![0u8; log_len as usize], 0).unwrap();
    for _ in 0..16 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    run_until(&mut pmd, "traffic after logging stopped", |_| guest.rx.used_idx(&guest.g) == 48);
    let mut b = vec![0u8; log_len as usize];
    log.read_exact_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0), "pages logged after LOG_ALL was cleared");
    drop(f);
    run_until(&mut pmd, "detach", |p| !attached(p));
    pmd.stop();
    drop(pmd);
    server.stop();
}

impl Guest {
    /// A guest whose memory is `image` (what a migration moved) and whose driver state is `rx` and
    /// `tx` (the source's, which lives in the guest's memory in a real guest).
    fn from_image(image: &[u8], rx: DriverQueue, tx: DriverQueue) -> Guest {
        use std::os::unix::fs::FileExt;
        let path = unique("mem");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.write_all_at(image, 0).unwrap();
        let region = GuestRegion::from_fd(GUEST_BASE, MEM_LEN, std::os::fd::AsFd::as_fd(&file), 0).unwrap();
        let g = TestGuest::from_memory(Arc::new(GuestMemory::new(vec![region]).unwrap()));
        Guest { file, path, g, rx, tx, more: Vec::new() }
    }
}

/// A live migration played against the switch the way QEMU 7.2 drives it, without QEMU, on a
/// channel whose copies land late (so that copies are in flight at log syncs and when the rings
/// stop): the destination's memory, built as QEMU builds it (every page once, then the
/// pages the dirty log names at each sync, then once more after `GET_VRING_BASE`), must equal the
/// source's byte for byte, and the destination's rings must go on where the source's stopped.
/// The guest writes nothing while the migration runs, so every change is the switch's and no page
/// is sent for another reason: a write the log missed, or marked before it landed, or made after
/// the rings stopped, leaves a page that differs.
fn live_migration<E: CopyEngine>(chan: Channel<E>) {
    let _serial = serial();
    use std::collections::HashSet;
    use vswitch_datapath::DirtyLog;
    const LOG_ALL: u64 = 1 << 26;
    const LOG_SHMFD: u64 = 1 << 1;
    const PAGE: usize = 4096;
    let (mut pmd, server, sock) = switch_on(chan);
    // Each used idx on a page of its own: a store to it that is not marked is a page that differs.
    let mut src = Guest::with_used_idx_apart();
    let plan = src.plan();
    let log_len = ((GUEST_BASE + MEM_LEN as u64) / PAGE as u64).div_ceil(8);
    let log_file = tempfile_like(log_len);
    let log = DirtyLog::from_fd(std::os::fd::AsFd::as_fd(&log_file), 0, log_len as usize).unwrap();
    // The source connects as QEMU 7.2 does (LOG_SHMFD offered and acked) and runs.
    let (mut a, offered, _fds_a) = with_pmd(&mut pmd, || {
        let mut f = RawFrontend::connect(&sock);
        // Split rings: everything offered but packed rings (QEMU without `packed=on`).
        let offered = f.call(req::GET_FEATURES, 0, &[], &[]).u64() & !rawfront::RING_PACKED;
        assert_ne!(offered & LOG_ALL, 0);
        let pf = f.call(req::GET_PROTOCOL_FEATURES, 0, &[], &[]).u64();
        assert_ne!(pf & LOG_SHMFD, 0);
        let acked = rawfront::PF_MQ_REPLY_ACK | LOG_SHMFD;
        f.send(req::SET_PROTOCOL_FEATURES, 0, &rawfront::u64_body(acked), &[]).unwrap();
        assert!(f.acked(req::SET_OWNER, &[], &[]));
        for i in 0..2 {
            assert!(f.acked(req::SET_VRING_ENABLE, &rawfront::state(i, 1), &[]));
        }
        let fds = qemu_dev_start(&mut f, &plan, offered & !LOG_ALL, &[0, 0]);
        (f, offered & !LOG_ALL, fds)
    });
    let mut heads = HashSet::new();
    for _ in 0..16 {
        heads.insert(src.rx.post_rx(&src.g, 2048, 1));
    }
    run_until(&mut pmd, "traffic into the source", |_| src.rx.used_idx(&src.g) == 16);
    // The destination's QEMU connects while the source runs (it starts with -incoming).
    let mut b = RawFrontend::connect(&sock);
    assert_eq!(b.call(req::GET_FEATURES, 0, &[], &[]).u64() & !LOG_ALL & !rawfront::RING_PACKED, offered);
    b.send(req::SET_PROTOCOL_FEATURES, 0, &rawfront::u64_body(rawfront::PF_MQ_REPLY_ACK), &[]).unwrap();
    assert!(b.acked(req::SET_OWNER, &[], &[]));
    for i in 0..2 {
        assert!(b.acked(req::SET_VRING_ENABLE, &rawfront::state(i, 1), &[]));
    }
    // Migration starts (vhost_migration_log): the log, LOG_ALL, the rings' addresses with the
    // log flag and the used rings' guest addresses.
    let logged_addrs: Vec<Vec<u8>> = [&src.rx, &src.tx]
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let c = q.config();
            let (d, u, av) = (src.user_addr(c.desc_table), src.user_addr(c.used_ring), src.user_addr(c.avail_ring));
            rawfront::vring_addr_logged(i as u32, d, u, av, c.used_ring)
        })
        .collect();
    with_pmd(&mut pmd, || {
        let mut body = log_len.to_ne_bytes().to_vec();
        body.extend_from_slice(&0u64.to_ne_bytes());
        assert!(a.call(req::SET_LOG_BASE, 0, &body, &[log_file.as_raw_fd()]).payload.is_empty());
        assert!(a.acked(req::SET_FEATURES, &rawfront::u64_body(offered | LOG_ALL), &[]));
        for addr in &logged_addrs {
            assert!(a.acked(req::SET_VRING_ADDR, addr, &[]));
        }
    });
    // The guest's last writes before the first pass: more RX buffers and TX frames than the
    // switch will use before the rings stop.
    for _ in 0..200 {
        heads.insert(src.rx.post_rx(&src.g, 2048, 1));
    }
    let mut tx_heads = HashSet::new();
    for i in 0..100u8 {
        tx_heads.insert(src.tx.post_tx(&src.g, &tx_frame(i), 1 + i as usize % 2, i % 3 == 0));
    }
    // Memory the guest will post on the destination (its allocator does not move with it).
    let spare_rx: Vec<u64> = (0..32).map(|_| src.g.alloc(2048, 8)).collect();
    let spare_tx: Vec<u64> = (0..16).map(|_| src.g.alloc(128, 8)).collect();
    // The first pass sends every page. Then QEMU's migration thread syncs, beside the running
    // switch: each sync takes the log and sends the pages it names, as they are at that moment.
    let mem = src.g.memory().clone();
    let image = std::sync::Mutex::new(src.g.read(GUEST_BASE, MEM_LEN));
    let sync = || {
        let pages: Vec<u64> = log.take_marked().into_iter().filter(|&p| p * PAGE as u64 >= GUEST_BASE).collect();
        let mut image = image.lock().unwrap();
        for &p in &pages {
            let at = (p * PAGE as u64 - GUEST_BASE) as usize;
            mem.read(p * PAGE as u64, &mut image[at..at + PAGE]).unwrap();
        }
        pages.len()
    };
    let (stop, syncs) = (std::sync::atomic::AtomicBool::new(false), std::sync::atomic::AtomicUsize::new(0));
    let mut syncs_in_flight = 0;
    let sent_iterating = std::thread::scope(|s| {
        let migration = s.spawn(|| {
            let mut sent = 0;
            while !stop.load(Ordering::Acquire) {
                sent += sync();
                syncs.fetch_add(1, Ordering::AcqRel);
            }
            sent
        });
        // Whatever happens here (a failed assertion too), the migration thread stops.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _stop = Stop(&stop);
        // Stop with copies in flight, after syncs that ran while copies were in flight.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(syncs_in_flight >= 20 && pmd.channel().in_flight() > 0) {
            assert!(
                Instant::now() < deadline,
                "migration traffic stalled ({syncs_in_flight} syncs with copies in flight, {} in flight): {:?}",
                pmd.channel().in_flight(),
                pmd.port_stats()
            );
            pmd.run_once();
            // At least one whole sync between two polls (more may run during one).
            let before = syncs.load(Ordering::Acquire);
            while syncs.load(Ordering::Acquire) < before + 2 && Instant::now() < deadline {
                std::hint::spin_loop();
            }
            syncs_in_flight += usize::from(pmd.channel().in_flight() > 0);
        }
        drop(_stop);
        migration.join().unwrap()
    });
    let syncs = syncs.into_inner();
    // The source stops (vhost_dev_stop: GET_VRING_BASE per ring, then the last sync of the log).
    let bases = with_pmd(&mut pmd, || {
        (0..2)
            .map(|i| {
                let r = a.call(req::GET_VRING_BASE, 0, &rawfront::state(i, 0), &[]);
                u32::from_ne_bytes(r.payload[4..8].try_into().unwrap())
            })
            .collect::<Vec<_>>()
    });
    assert!(!attached(&pmd));
    let sent = sent_iterating + sync();
    let image = image.into_inner().unwrap();
    let (rx_used, tx_used) = (src.rx.used_idx(&src.g), src.tx.used_idx(&src.g));
    assert_eq!((bases[0], bases[1]), (u32::from(rx_used), u32::from(tx_used)), "every chain taken was returned");
    let now = src.g.read(GUEST_BASE, MEM_LEN);
    let differ: Vec<u64> = (0..MEM_LEN / PAGE)
        .filter(|&p| now[p * PAGE..][..PAGE] != image[p * PAGE..][..PAGE])
        .map(|p| GUEST_BASE + (p * PAGE) as u64)
        .collect();
    assert!(differ.is_empty(), "pages the switch wrote that the log did not bring over: {differ:x?}");
    eprintln!(
        "migration: {syncs} log syncs ({syncs_in_flight} with copies in flight), {sent} pages sent again, \
         stopped at RX {rx_used} TX {tx_used}"
    );
    // The destination starts on the migrated memory from the bases the source answered; the
    // driver state is the source's (a real guest carries it in its memory).
    let mut dst = Guest::from_image(&image, src.rx.clone(), src.tx.clone());
    let dst_plan = dst.plan();
    let _fds_b = with_pmd(&mut pmd, || qemu_dev_start(&mut b, &dst_plan, offered, &bases));
    drop(a);
    // Every RX buffer and TX frame the guest posted comes back exactly once, across both hosts:
    // what the source left, then what the guest posts once it runs on the destination.
    run_until(&mut pmd, "the destination uses what the source left", |_| {
        dst.rx.used_idx(&dst.g) == 216 && dst.tx.used_idx(&dst.g) == 100
    });
    let check_used = |dst: &mut Guest, heads: &mut HashSet<u16>, tx_heads: &mut HashSet<u16>| {
        for (q, posted, what) in [(&mut dst.rx, &mut *heads, "RX"), (&mut dst.tx, &mut *tx_heads, "TX")] {
            while let Some(u) = q.pop_used(&dst.g) {
                assert!(posted.remove(&(u.id as u16)), "{what} used id {} is not a head in flight", u.id);
            }
            assert!(posted.is_empty(), "{what} chains never returned: {posted:?}");
        }
    };
    check_used(&mut dst, &mut heads, &mut tx_heads);
    for &gpa in &spare_rx {
        heads.insert(dst.rx.add_chain(&dst.g, &[Buf { gpa, len: 2048, writable: true }]));
    }
    for (i, &gpa) in spare_tx.iter().enumerate() {
        let f = tx_frame(i as u8);
        tx_heads.insert(dst.tx.post_tx_at(&dst.g, &[(gpa, f.len() as u32)], &f));
    }
    run_until(&mut pmd, "traffic goes on on the destination", |_| {
        dst.rx.used_idx(&dst.g) == 216 + 32 && dst.tx.used_idx(&dst.g) == 100 + 16
    });
    check_used(&mut dst, &mut heads, &mut tx_heads);
    drop(b);
    run_until(&mut pmd, "detach", |p| !attached(p));
    pmd.stop();
    drop(pmd);
    server.stop();
}

#[test]
fn a_live_migration_moves_every_byte_the_switch_wrote_with_copies_landing_at_reap_time() {
    // Copies land only when reaped, a few per poll: a mark made before its copy landed is taken
    // by a sync that sends the page without the bytes.
    live_migration(Channel::new(LazyEngine::new(64, 4), Policy::offload_all()));
}

#[test]
fn a_live_migration_moves_every_byte_the_switch_wrote_on_a_delayed_worker_engine() {
    let engine = FaultEngine::new(
        WorkerEngine::new(WorkerConfig::default()).unwrap(),
        FaultConfig { delay_polls: 20, ..FaultConfig::default() },
    );
    live_migration(Channel::new(engine, Policy::offload_all()));
}

/// An unlinked temporary file of `len` zero bytes.
fn tempfile_like(len: u64) -> File {
    let path = unique("log");
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f.set_len(len).unwrap();
    f
}

#[test]
fn a_migration_destination_is_served_while_the_source_runs_and_keeps_the_port_when_the_source_leaves() {
    let _serial = serial();
    // Live migration on one host: the destination's QEMU connects to the same socket and is
    // answered while the source still runs; the source stops its rings, the destination starts
    // its own where they stopped, and the source leaving does not touch the destination's pairs.
    let (mut pmd, server, sock) = switch(20);
    let mut src = Guest::new();
    for _ in 0..40 {
        src.rx.post_rx(&src.g, 2048, 1);
    }
    let src_plan = src.plan();
    let (mut a, offered, _fds_a) = with_pmd(&mut pmd, || {
        let mut f = RawFrontend::connect(&sock);
        let (offered, fds) = qemu72_connect(&mut f, &src_plan);
        (f, offered, fds)
    });
    // Attached too: the buffers were posted before the connection, so they may fill while the
    // rings are still being set up, with the last re-attach not yet applied.
    run_until(&mut pmd, "traffic into the source", |p| attached(p) && src.rx.used_idx(&src.g) >= 20);
    // The destination connects and negotiates while the source is attached and running.
    let mut b = RawFrontend::connect(&sock);
    assert_eq!(b.call(req::GET_FEATURES, 0, &[], &[]).u64() & !rawfront::RING_PACKED, offered);
    b.send(req::SET_PROTOCOL_FEATURES, 0, &rawfront::u64_body(rawfront::PF_MQ_REPLY_ACK), &[]).unwrap();
    assert!(b.acked(req::SET_OWNER, &[], &[]));
    assert!(attached(&pmd), "the source still runs");
    // The source stops (end of migration): its rings' next avail indexes go to the destination.
    let bases = with_pmd(&mut pmd, || {
        (0..2)
            .map(|i| {
                u32::from_ne_bytes(
                    a.call(req::GET_VRING_BASE, 0, &rawfront::state(i, 0), &[]).payload[4..8].try_into().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    });
    assert!(!attached(&pmd));
    let used_by_src = src.rx.used_idx(&src.g) as u32;
    assert_eq!(bases[0], used_by_src, "every chain the source's rings gave was returned");
    // The destination's guest memory holds the same rings state (QEMU migrated it): here a
    // fresh guest that starts at the source's avail index.
    let mut dst = Guest::new();
    dst.rx.start_at(&dst.g, bases[0] as u16);
    dst.tx.start_at(&dst.g, bases[1] as u16);
    for _ in 0..32 {
        dst.rx.post_rx(&dst.g, 2048, 1);
    }
    let dst_plan = dst.plan();
    let _fds_b = with_pmd(&mut pmd, || {
        let fds = qemu_dev_start(&mut b, &dst_plan, offered, &bases);
        for i in 0..2 {
            assert!(b.acked(req::SET_VRING_ENABLE, &rawfront::state(i, 1), &[]));
        }
        fds
    });
    run_until(&mut pmd, "traffic into the destination", |_| {
        dst.rx.used_idx(&dst.g) == (bases[0] as u16).wrapping_add(32)
    });
    // The source's QEMU exits: the destination keeps the port.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.disconnects() < 1 {
        assert!(Instant::now() < deadline, "the source's connection was not cleaned up");
        pmd.run_once();
    }
    assert!(attached(&pmd), "the source leaving detached the destination's pairs");
    for _ in 0..16 {
        dst.rx.post_rx(&dst.g, 2048, 1);
    }
    run_until(&mut pmd, "traffic goes on", |_| dst.rx.used_idx(&dst.g) == (bases[0] as u16).wrapping_add(48));
    drop(b);
    run_until(&mut pmd, "detach", |p| !attached(p));
    pmd.stop();
    drop(pmd);
    server.stop();
}

impl Guest {
    /// A guest with one queue pair of packed rings (it acks VIRTIO_F_RING_PACKED, and with every
    /// other offered feature VIRTIO_F_IN_ORDER: its TX buffers come back a batch per used
    /// descriptor, which its driver walks).
    fn packed() -> Guest {
        let mut guest = Guest::with_pairs(1);
        let feats =
            RingFeatures::PACKED | RingFeatures::EVENT_IDX | RingFeatures::INDIRECT_DESC | RingFeatures::IN_ORDER;
        guest.rx = guest.g.add_queue(QSIZE, feats);
        guest.tx = guest.g.add_queue(QSIZE, feats);
        guest
    }
}

/// Takes every used RX entry of `rx`, checks its length, and posts a fresh buffer for each.
/// Returns how many it took.
fn recycle_rx(guest: &mut Guest) -> u32 {
    let mut n = 0;
    while let Some(u) = guest.rx.pop_used(&guest.g) {
        assert_eq!(u.len, 12 + 1000, "net header + packet");
        guest.rx.post_rx(&guest.g, 2048, 1);
        n += 1;
    }
    n
}

/// A packed ring's position (index, wrap counter in bit 15) after `n` single-slot chains on a
/// ring of `QSIZE` that started at index 0, wrap counter 1.
fn packed_position(n: u32) -> u32 {
    let wrap = (n / QSIZE as u32) % 2 == 0;
    (n % QSIZE as u32) | if wrap { 0x8000 } else { 0 }
}

/// VIRTIO_F_RING_PACKED over vhost-user: packed rings carry traffic both ways across the end of the
/// ring; GET_VRING_BASE drains them and answers the avail position with its wrap counter in bit 15
/// and the used position (the same, drained) in bits 16..32; a restart with those bases resumes
/// exactly there, with the wrap counter the ring stopped at.
#[test]
fn packed_rings_carry_traffic_and_vring_bases_carry_the_wrap_counter() {
    let _serial = serial();
    let (mut pmd, server, sock) = switch(100);
    let mut guest = Guest::packed();
    for _ in 0..64 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    for i in 0..16u8 {
        guest.tx.post_tx(&guest.g, &tx_frame(i), 1, false);
    }
    let (frontend, fds) = guest.connect(&sock);
    run_until(&mut pmd, "packed pair attached", |p| attached(p));
    let port = vhost_port(&pmd);
    assert!(port.north().queue().is_packed() && port.south().queue().is_packed(), "packed rings negotiated");
    // More than a whole ring's worth of RX chains: both wrap counters flip.
    let mut received = 0;
    run_until(&mut pmd, "traffic across the end of the ring", |p| {
        received += recycle_rx(&mut guest);
        received > 300 && received_on(p, 0) == 16
    });
    let tx_used: Vec<_> = std::iter::from_fn(|| guest.tx.pop_used(&guest.g)).collect();
    assert_eq!(tx_used.len(), 16, "every TX chain returned");
    run_until(&mut pmd, "copies in flight", |p| p.channel().in_flight() > 0);

    let asker = std::thread::spawn(move || {
        let rx = frontend.get_vring_base(0).unwrap();
        let tx = frontend.get_vring_base(1).unwrap();
        (frontend, rx, tx)
    });
    run_until(&mut pmd, "the GET_VRING_BASE answers", |_| asker.is_finished());
    let (frontend, rx_base, tx_base) = asker.join().unwrap();
    assert!(!attached(&pmd));
    assert_eq!(pmd.channel().in_flight(), 0);
    // Every chain taken is used: the driver's count says where the ring stopped. (The buffers
    // are posted again, ahead of that position, for the restart.)
    received += recycle_rx(&mut guest);
    let at = packed_position(received);
    assert_eq!(rx_base, at | at << 16, "avail and used positions with their wrap counters ({received} chains)");
    assert_eq!(tx_base, 0x8010 | 0x8010 << 16, "16 TX chains, first pass");

    // Restart where the rings stopped (the avail half, as DPDK's virtio-user sends it; this
    // frontend sends 16 bits), then more traffic.
    frontend.set_vring_base(0, rx_base as u16).unwrap();
    frontend.set_vring_base(1, tx_base as u16).unwrap();
    frontend.set_vring_kick(0, &fds[1]).unwrap();
    frontend.set_vring_kick(1, &fds[3]).unwrap();
    run_until(&mut pmd, "reattached", |p| attached(p));
    guest.tx.post_tx(&guest.g, &tx_frame(99), 1, false);
    let mut more = 0;
    run_until(&mut pmd, "traffic after the restart", |p| {
        more += recycle_rx(&mut guest);
        more >= 64 && received_on(p, 0) == 1
    });
    assert!(!vhost_port(&pmd).north().queue().is_broken());
    drop(frontend);
    run_until(&mut pmd, "detach", |p| !attached(p));
    pmd.stop();
    drop(pmd);
    server.stop();
}
