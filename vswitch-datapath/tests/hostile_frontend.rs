//! A hostile vhost-user frontend against the real `vswitch` process, over its real socket.
//!
//! The switch runs with four ports: `vhost-user:hostile.sock` cross-connected with a traffic
//! source, and a second source cross-connected with `vhost-user:good.sock`, where a well-behaved
//! in-process guest (memfd memory, its rings driven by the test guest) keeps receiving and
//! checking packets. Each scenario attacks the hostile socket with malformed memory tables, ring
//! setups, message framing and descriptors, then checks: the switch is alive, every request that
//! needs an answer got one (or the connection was closed: never silence), the good guest keeps
//! receiving intact packets, and a well-behaved frontend on the hostile socket is served again.

#[path = "common/rawfront.rs"]
mod rawfront;
#[path = "common/testpmd.rs"]
mod testpmd;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rawfront::{req, RawFrontend, NEED_REPLY};
use testpmd::{machine_lock, tail, vswitch_binary, Process, Scratch};
use vmm_sys_util::eventfd::EventFd;
use vswitch_datapath::testguest::{DriverQueue, TestGuest, GUEST_BASE};
use vswitch_datapath::{GuestMemory, GuestRegion, RingFeatures};

const MEM_LEN: usize = 4 << 20;
const QSIZE: u16 = 256;
/// The sources' packet length.
const PKT: usize = 200;
/// virtio-net header (VERSION_1) + packet.
const WRITTEN: u32 = 12 + PKT as u32;

fn memfd(len: u64) -> File {
    // SAFETY: memfd_create with a NUL-terminated name; the new fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c"vs-hostile".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

/// A guest whose memory is a memfd, with one queue pair.
struct Guest {
    file: File,
    g: TestGuest,
    rx: DriverQueue,
    tx: DriverQueue,
}

impl Guest {
    fn new() -> Guest {
        let file = memfd(MEM_LEN as u64);
        let region = GuestRegion::from_fd(GUEST_BASE, MEM_LEN, file.as_fd(), 0).unwrap();
        let g = TestGuest::from_memory(Arc::new(GuestMemory::new(vec![region]).unwrap()));
        let feats = RingFeatures::EVENT_IDX | RingFeatures::INDIRECT_DESC;
        let rx = g.add_queue(QSIZE, feats);
        let tx = g.add_queue(QSIZE, feats);
        Guest { file, g, rx, tx }
    }

    fn user_addr(&self, gpa: u64) -> u64 {
        self.g.memory().regions()[0].host_addr() as u64 + (gpa - GUEST_BASE)
    }

    fn region(&self) -> (u64, u64, u64, u64) {
        (GUEST_BASE, MEM_LEN as u64, self.user_addr(GUEST_BASE), 0)
    }

    fn ring_addr(&self, q: &DriverQueue, index: u32) -> Vec<u8> {
        let c = q.config();
        rawfront::vring_addr(
            index,
            self.user_addr(c.desc_table),
            self.user_addr(c.used_ring),
            self.user_addr(c.avail_ring),
        )
    }

    /// A well-behaved frontend's whole setup (DPDK virtio-user's order), every step acked.
    fn connect(&self, sock: &Path) -> (RawFrontend, Vec<EventFd>) {
        let mut f = RawFrontend::connect(sock);
        // Split rings: everything offered but packed rings.
        let offered = f.call(req::GET_FEATURES, 0, &[], &[]).u64() & !rawfront::RING_PACKED;
        f.send(req::SET_PROTOCOL_FEATURES, 0, &rawfront::u64_body(rawfront::PF_MQ_REPLY_ACK), &[]).unwrap();
        assert!(f.acked(req::SET_OWNER, &[], &[]));
        assert!(f.acked(req::SET_FEATURES, &rawfront::u64_body(offered), &[]));
        assert!(f.acked(req::SET_MEM_TABLE, &rawfront::mem_table(&[self.region()]), &[self.file.as_raw_fd()]));
        let mut fds = Vec::new();
        for (i, q) in [&self.rx, &self.tx].into_iter().enumerate() {
            let i32_ = i as u32;
            assert!(f.acked(req::SET_VRING_NUM, &rawfront::state(i32_, QSIZE.into()), &[]));
            assert!(f.acked(req::SET_VRING_BASE, &rawfront::state(i32_, 0), &[]));
            assert!(f.acked(req::SET_VRING_ADDR, &self.ring_addr(q, i32_), &[]));
            let (kick, call) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
            assert!(f.acked(req::SET_VRING_CALL, &rawfront::u64_body(i as u64), &[call.as_raw_fd()]));
            assert!(f.acked(req::SET_VRING_KICK, &rawfront::u64_body(i as u64), &[kick.as_raw_fd()]));
            assert!(f.acked(req::SET_VRING_ENABLE, &rawfront::state(i32_, 1), &[]));
            fds.extend([kick, call]);
        }
        (f, fds)
    }
}

/// The good guest's receiver: a thread that takes every used RX buffer, checks the packet (its
/// length and the source's Ethernet/IPv4/UDP header), and posts the buffer again.
struct Receiver {
    stop: Arc<AtomicBool>,
    good: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
    _front: RawFrontend,
    _fds: Vec<EventFd>,
}

impl Receiver {
    fn start(mut guest: Guest, sock: &Path) -> Receiver {
        for _ in 0..128 {
            guest.rx.post_rx(&guest.g, 2048, 1);
        }
        let (front, fds) = guest.connect(sock);
        let (stop, good) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let thread = std::thread::spawn({
            let (stop, good) = (stop.clone(), good.clone());
            move || {
                let Guest { g, mut rx, .. } = guest;
                let mut reference: Option<Vec<u8>> = None;
                while !stop.load(Ordering::Acquire) {
                    let Some(u) = rx.pop_used(&g) else {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    };
                    if u.len != WRITTEN {
                        return Err(format!("used length {} (expected {WRITTEN})", u.len));
                    }
                    let bytes = rx.read_written(&g, u.id as u16, u.len as usize);
                    let hdr = &bytes[12..12 + 42];
                    if hdr[12..14] != [0x08, 0x00] || hdr[14 + 12..14 + 16] != [198, 18, 0, 1] {
                        return Err(format!("not the source's packet: {hdr:02x?}"));
                    }
                    match &reference {
                        None => reference = Some(hdr.to_vec()),
                        Some(r) if r[..] != hdr[..] => return Err(format!("header changed: {hdr:02x?}")),
                        Some(_) => {}
                    }
                    let bufs = rx.buffers(u.id as u16).to_vec();
                    rx.add_chain(&g, &bufs);
                    good.fetch_add(1, Ordering::AcqRel);
                }
                Ok(())
            }
        });
        Receiver { stop, good, thread: Some(thread), _front: front, _fds: fds }
    }

    /// Waits until `n` more intact packets arrived.
    fn expect_more(&mut self, n: u64, what: &str) {
        let start = self.good.load(Ordering::Acquire);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.good.load(Ordering::Acquire) < start + n {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let r = self.thread.take().unwrap().join().unwrap();
                panic!("the good guest stopped after {what}: {r:?}");
            }
            assert!(Instant::now() < deadline, "the good guest got no traffic after {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.unwrap().unwrap();
            }
        }
    }
}

struct Fixture {
    switch: Process,
    hostile: std::path::PathBuf,
    good: Receiver,
    _scratch: Scratch,
    _lock: File,
}

impl Fixture {
    fn start() -> Fixture {
        Self::with_engine("worker")
    }

    fn with_engine(engine: &str) -> Fixture {
        let lock = machine_lock("interop", Duration::from_secs(600));
        let scratch = Scratch::new("hostile");
        let (hostile, good) = (scratch.path("hostile.sock"), scratch.path("good.sock"));
        let mut cmd = Command::new(vswitch_binary().expect("the vswitch binary"));
        cmd.args(["--engine", engine, "--stats-interval", "0"]);
        cmd.arg("--port").arg(format!("vhost-user:{}", hostile.display()));
        cmd.args(["--port", &format!("source:{PKT}"), "--port", &format!("source:{PKT}")]);
        cmd.arg("--port").arg(format!("vhost-user:{}", good.display()));
        let switch = Process::spawn("vswitch", cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(hostile.exists() && good.exists()) {
            assert!(Instant::now() < deadline, "the switch did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut good = Receiver::start(Guest::new(), &good);
        good.expect_more(1000, "start");
        Fixture { switch, hostile, good, _scratch: scratch, _lock: lock }
    }

    /// After an attack: the switch lives, the good guest keeps receiving intact packets.
    fn check(&mut self, what: &str) {
        if !self.switch.is_running() {
            panic!("the switch died after {what}:\n{}", tail(&self.switch.output(), 4000));
        }
        self.good.expect_more(500, what);
    }

    /// A well-behaved frontend on the hostile socket is served: packets fill its RX ring.
    fn hostile_socket_serves_a_good_frontend(&mut self, what: &str) {
        let mut guest = Guest::new();
        for _ in 0..64 {
            guest.rx.post_rx(&guest.g, 2048, 1);
        }
        // The switch may still be cleaning up the previous connection: the new one waits in the
        // listen queue until then.
        let (front, _fds) = guest.connect(&self.hostile);
        let deadline = Instant::now() + Duration::from_secs(20);
        while guest.rx.used_idx(&guest.g) < 64 {
            assert!(Instant::now() < deadline, "no traffic for a good frontend on the hostile socket after {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let u = guest.rx.pop_used(&guest.g).unwrap();
        assert_eq!(u.len, WRITTEN);
        drop(front);
        self.check(what);
    }
}

/// Sends `request` with NEED_REPLY and expects a refusal (REPLY_ACK 1) on a connection that stays
/// usable (GET_FEATURES is still answered).
fn refused(f: &mut RawFrontend, request: u32, body: &[u8], fds: &[RawFd], what: &str) {
    assert!(!f.acked(request, body, fds), "{what} was accepted");
    assert_ne!(f.call(req::GET_FEATURES, 0, &[], &[]).u64(), 0, "the connection works after {what}");
}

/// A frontend that has acked the features and protocol features (REPLY_ACK).
fn negotiated(sock: &Path) -> RawFrontend {
    let mut f = RawFrontend::connect(sock);
    // Split rings: everything offered but packed rings.
    let offered = f.call(req::GET_FEATURES, 0, &[], &[]).u64() & !rawfront::RING_PACKED;
    f.send(req::SET_PROTOCOL_FEATURES, 0, &rawfront::u64_body(rawfront::PF_MQ_REPLY_ACK), &[]).unwrap();
    assert!(f.acked(req::SET_FEATURES, &rawfront::u64_body(offered), &[]));
    f
}

#[test]
fn hostile_memory_tables_are_refused_and_the_switch_serves_everyone_else() {
    let mut fx = Fixture::start();
    let mut f = negotiated(&fx.hostile);
    let m = memfd(1 << 20);
    let fd = m.as_raw_fd();
    let ua = 0x7f00_0000_0000u64;
    let cases: Vec<(&str, Vec<u8>, Vec<RawFd>)> = vec![
        (
            "overlapping regions",
            rawfront::mem_table(&[(0, 1 << 20, ua, 0), (1 << 30, 1 << 20, ua + 4096, 0)]),
            vec![fd, fd],
        ),
        ("a region of size 0", rawfront::mem_table(&[(0, 0, ua, 0)]), vec![fd]),
        ("an offset past the end of the fd", rawfront::mem_table(&[(0, 4096, ua, 2 << 20)]), vec![fd]),
        ("a region larger than its memfd", rawfront::mem_table(&[(0, 16 << 20, ua, 0)]), vec![fd]),
        ("an fd that cannot be mapped (a socket)", rawfront::mem_table(&[(0, 4096, ua, 0)]), vec![f_sock()]),
        ("an fd that cannot be mapped (an eventfd)", rawfront::mem_table(&[(0, 4096, ua, 0)]), vec![event_fd()]),
        ("more regions than allowed", rawfront::mem_table(&[(0, 4096, ua, 0); 9]), vec![fd; 9]),
        ("fewer fds than regions", rawfront::mem_table(&[(0, 4096, ua, 0), (8192, 4096, ua + 8192, 0)]), vec![fd]),
        ("no region at all", rawfront::mem_table(&[]), vec![]),
        ("a truncated table", rawfront::mem_table(&[(0, 4096, ua, 0)])[..30].to_vec(), vec![fd]),
        ("guest ranges that overflow", rawfront::mem_table(&[(u64::MAX - 100, 4096, ua, 0)]), vec![fd]),
    ];
    for (what, body, fds) in &cases {
        refused(&mut f, req::SET_MEM_TABLE, body, fds, what);
    }
    drop(f);
    fx.check("bad memory tables");
    fx.hostile_socket_serves_a_good_frontend("bad memory tables");
}

fn f_sock() -> RawFd {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    std::mem::forget(b);
    let fd = a.as_raw_fd();
    std::mem::forget(a);
    fd
}

fn event_fd() -> RawFd {
    let e = EventFd::new(0).unwrap();
    let fd = e.as_raw_fd();
    std::mem::forget(e);
    fd
}

#[test]
fn hostile_ring_setups_are_refused_or_break_only_that_port() {
    let mut fx = Fixture::start();
    let guest = Guest::new();
    let mut f = negotiated(&fx.hostile);
    assert!(f.acked(req::SET_MEM_TABLE, &rawfront::mem_table(&[guest.region()]), &[guest.file.as_raw_fd()]));
    for num in [0u32, 3, 100, 65536, 1 << 20] {
        refused(&mut f, req::SET_VRING_NUM, &rawfront::state(0, num), &[], &format!("vring num {num}"));
    }
    for index in [2u32 * 4, 200, u32::MAX] {
        refused(&mut f, req::SET_VRING_NUM, &rawfront::state(index, 256), &[], &format!("vring index {index}"));
        refused(&mut f, req::SET_VRING_ENABLE, &rawfront::state(index, 1), &[], &format!("enable vring {index}"));
    }
    refused(&mut f, req::SET_VRING_ENABLE, &rawfront::state(0, 2), &[], "SET_VRING_ENABLE 2");
    refused(&mut f, req::SET_VRING_BASE, &rawfront::state(0, 70000), &[], "vring base above 16 bits");
    // Vring fds: the memfd itself as a call fd (the switch would write eventfd counters into the
    // guest's memory), an fd where "no fd" is flagged, none where one is announced.
    let before = std::fs::read(format!("/proc/self/fd/{}", guest.file.as_raw_fd())).unwrap();
    refused(&mut f, req::SET_VRING_CALL, &rawfront::u64_body(0), &[guest.file.as_raw_fd()], "a memfd as call fd");
    refused(&mut f, req::SET_VRING_KICK, &rawfront::u64_body(1), &[guest.file.as_raw_fd()], "a memfd as kick fd");
    refused(&mut f, req::SET_VRING_CALL, &rawfront::u64_body(0x100), &[event_fd()], "an fd with the no-fd flag");
    refused(&mut f, req::SET_VRING_CALL, &rawfront::u64_body(0), &[], "no fd without the no-fd flag");
    refused(&mut f, req::SET_VRING_ERR, &rawfront::u64_body(0x200), &[], "reserved bits in a vring fd message");
    // Rings outside guest memory or misaligned: accepted as addresses, but the pair never starts
    // (the kick that would start it is refused) and nothing is written.
    assert!(f.acked(req::SET_VRING_NUM, &rawfront::state(0, 256), &[]));
    assert!(f.acked(req::SET_VRING_NUM, &rawfront::state(1, 256), &[]));
    let outside = rawfront::vring_addr(0, 0x1000, 0x2000, 0x3000);
    assert!(f.acked(req::SET_VRING_ADDR, &outside, &[]));
    let c = guest.tx.config();
    let misaligned = rawfront::vring_addr(
        1,
        guest.user_addr(c.desc_table) + 1,
        guest.user_addr(c.used_ring) + 1,
        guest.user_addr(c.avail_ring) + 1,
    );
    assert!(f.acked(req::SET_VRING_ADDR, &misaligned, &[]));
    for i in 0..2 {
        assert!(f.acked(req::SET_VRING_ENABLE, &rawfront::state(i, 1), &[]));
    }
    let kicks = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
    assert!(f.acked(req::SET_VRING_KICK, &rawfront::u64_body(0), &[kicks[0].as_raw_fd()]));
    assert!(
        !f.acked(req::SET_VRING_KICK, &rawfront::u64_body(1), &[kicks[1].as_raw_fd()]),
        "a ring outside memory started"
    );
    let after = std::fs::read(format!("/proc/self/fd/{}", guest.file.as_raw_fd())).unwrap();
    assert!(before == after, "the switch wrote into guest memory it was never given a buffer in");
    drop(f);
    fx.check("bad ring setups");
    fx.hostile_socket_serves_a_good_frontend("bad ring setups");
}

#[test]
fn requests_that_need_a_reply_get_one_or_the_connection_is_closed_never_silence() {
    let mut fx = Fixture::start();
    let quiet = Duration::from_secs(5);
    // GET_VRING_BASE for a vring beyond the port's queues: no honest answer, so the connection
    // closes (before, the frontend waited forever).
    let mut f = negotiated(&fx.hostile);
    f.send(req::GET_VRING_BASE, 0, &rawfront::state(200, 0), &[]).unwrap();
    assert!(f.closed_by_peer(quiet), "GET_VRING_BASE beyond the queues: no reply and no close");
    drop(f);
    // SET_LOG_BASE without LOG_SHMFD negotiated (the frontend expects no reply, and the log
    // must be a shared fd): closed.
    let mut f = negotiated(&fx.hostile);
    f.send(req::SET_LOG_BASE, 0, &[0u8; 16], &[memfd(4096).as_raw_fd()]).unwrap();
    assert!(f.closed_by_peer(quiet), "SET_LOG_BASE: no reply and no close");
    drop(f);
    // GET_FEATURES with a payload: a malformed request with a reply of its own: closed.
    let mut f = RawFrontend::connect(&fx.hostile);
    f.send(req::GET_FEATURES, 0, &[1, 2, 3], &[]).unwrap();
    assert!(f.closed_by_peer(quiet), "malformed GET_FEATURES: no reply and no close");
    drop(f);
    // Unknown request types and wrong sizes with NEED_REPLY: a nack, and the connection goes on.
    let mut f = negotiated(&fx.hostile);
    refused(&mut f, 99, &[0; 8], &[], "request 99");
    refused(&mut f, 0, &[], &[], "request 0");
    refused(&mut f, req::SET_FEATURES, &[0; 4], &[], "SET_FEATURES of 4 bytes");
    refused(&mut f, req::SET_VRING_NUM, &[0; 12], &[], "SET_VRING_NUM of 12 bytes");
    refused(&mut f, req::SET_OWNER, &[], &[event_fd()], "an fd on SET_OWNER");
    refused(&mut f, req::SET_FEATURES, &rawfront::u64_body(1 << 0), &[], "features that were not offered");
    // A header announcing more than 4 KiB cannot be skipped: the connection closes.
    let mut bad = req::SET_FEATURES.to_ne_bytes().to_vec();
    bad.extend_from_slice(&(1u32 | NEED_REPLY).to_ne_bytes());
    bad.extend_from_slice(&0x10_0000u32.to_ne_bytes());
    f.send_bytes(&bad, &[]).unwrap();
    assert!(f.closed_by_peer(quiet), "an oversized header: no close");
    drop(f);
    // A reply flag on a request, or a bad version: closed.
    let mut f = RawFrontend::connect(&fx.hostile);
    f.send(req::GET_FEATURES, rawfront::REPLY, &[], &[]).unwrap();
    assert!(f.closed_by_peer(quiet), "a request marked as a reply: no close");
    drop(f);
    fx.check("requests that need replies");
    fx.hostile_socket_serves_a_good_frontend("requests that need replies");
}

#[test]
fn a_flooding_or_idle_frontend_costs_only_its_own_port() {
    let mut fx = Fixture::start();
    let mut f = negotiated(&fx.hostile);
    // 20,000 requests as fast as the socket takes them (no reply asked), then one that needs an
    // answer: it is answered, in order.
    for i in 0..20_000u32 {
        f.send(req::SET_VRING_ENABLE, 0, &rawfront::state(i % 8, i % 2), &[]).unwrap();
    }
    assert_ne!(f.call(req::GET_FEATURES, 0, &[], &[]).u64(), 0, "answered after the flood");
    fx.check("a flood of requests");
    // Idle with the socket open: the switch goes on serving the others.
    std::thread::sleep(Duration::from_secs(2));
    fx.check("an idle frontend");
    drop(f);
    // Half a header, then gone.
    let mut f = RawFrontend::connect(&fx.hostile);
    f.send_bytes(&[1, 0, 0], &[]).unwrap();
    drop(f);
    fx.check("a frontend gone mid-header");
    fx.hostile_socket_serves_a_good_frontend("a flood and an idle frontend");
}

#[test]
fn a_guest_that_truncates_its_memory_under_traffic_loses_only_its_own_port() {
    let mut fx = Fixture::start();
    let mut guest = Guest::new();
    for _ in 0..128 {
        guest.rx.post_rx(&guest.g, 2048, 1);
    }
    let (front, _fds) = guest.connect(&fx.hostile);
    let deadline = Instant::now() + Duration::from_secs(20);
    while guest.rx.used_idx(&guest.g) < 32 {
        assert!(Instant::now() < deadline, "no traffic into the hostile guest");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The frontend shrinks its memory while the switch copies into it (SIGBUS for whoever
    // touches the pages past the new end).
    guest.file.set_len(4096).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    fx.check("a truncated memory file");
    drop(front);
    fx.hostile_socket_serves_a_good_frontend("a truncated memory file");
}

/// The switch process's resident set (KiB) and open descriptors.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (rss, std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count())
}

/// How many mappings of our guests' memfds the switch holds.
fn guest_mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap().lines().filter(|l| l.contains("vs-hostile")).count()
}

/// `cycles` connect / traffic / disconnect cycles on the hostile socket: every cycle's packets
/// intact, no write into a guest's memory after the switch unmapped it, the switch's RSS and
/// descriptor count flat.
fn soak(engine: &str, cycles: usize) {
    let mut fx = Fixture::with_engine(engine);
    let pid = fx.switch.pid().unwrap();
    let baseline_maps = guest_mappings(pid);
    let mut first = None;
    for cycle in 0..cycles {
        let mut guest = Guest::new();
        for _ in 0..32 {
            guest.rx.post_rx(&guest.g, 2048, 1);
        }
        let (front, fds) = guest.connect(&fx.hostile);
        let deadline = Instant::now() + Duration::from_secs(20);
        while guest.rx.used_idx(&guest.g) < 32 {
            assert!(Instant::now() < deadline, "cycle {cycle}: no traffic");
            std::thread::sleep(Duration::from_micros(200));
        }
        while let Some(u) = guest.rx.pop_used(&guest.g) {
            assert_eq!(u.len, WRITTEN, "cycle {cycle}");
            let b = guest.rx.read_written(&guest.g, u.id as u16, u.len as usize);
            assert_eq!(&b[12 + 12..12 + 14], &[0x08, 0x00], "cycle {cycle}: not the source's packet");
        }
        // More buffers, so copies may be in flight when the frontend goes.
        for _ in 0..32 {
            guest.rx.post_rx(&guest.g, 2048, 1);
        }
        drop(front);
        drop(fds);
        let deadline = Instant::now() + Duration::from_secs(20);
        while guest_mappings(pid) > baseline_maps {
            assert!(Instant::now() < deadline, "cycle {cycle}: the switch kept the guest memory mapped");
            std::thread::sleep(Duration::from_micros(200));
        }
        let before = guest.g.snapshot();
        std::thread::sleep(Duration::from_millis(2));
        assert!(guest.g.snapshot() == before, "cycle {cycle}: guest memory written after the switch unmapped it");
        if cycle == 10 {
            first = Some(rss_and_fds(pid));
        }
    }
    let last = rss_and_fds(pid);
    let first = first.unwrap();
    eprintln!(
        "soak {engine}: {cycles} cycles, switch RSS {} -> {} KiB, fds {} -> {}",
        first.0, last.0, first.1, last.1
    );
    assert_eq!(first.1, last.1, "the switch's open descriptors grew");
    assert!(last.0 < first.0 + 16 * 1024, "the switch's RSS grew from {} to {} KiB", first.0, last.0);
    fx.check("the soak");
}

#[test]
fn soak_1000_reconnects_on_the_memcpy_engine_keep_rss_and_fds_flat() {
    soak("memcpy", 1000);
}

#[test]
fn soak_1000_reconnects_on_the_worker_engine_keep_rss_and_fds_flat() {
    soak("worker", 1000);
}
