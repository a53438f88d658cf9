//! Real-driver interop: DPDK's virtio-user driver (in `dpdk-testpmd`) on both ports of a
//! two-port switch reached over vhost-user, frames checked byte for byte through pcap files.
//!
//! The switch under test is the `vswitch` binary (tests without a suffix use the memcpy engine,
//! `_worker` the worker-thread engine). Each test also has a `_dpdk_vhost` variant that runs the
//! same scenario against DPDK's own vhost back-end (testpmd with two `net_vhost` ports in io
//! mode): the reference that proves the harness itself. Select them all with
//! `cargo test -p vswitch-datapath --test interop_pcap -- interop`.
//!
//! Byte-identity topology (a loop through both directions of the switch):
//!
//! ```text
//!  testpmd A (io, paired)                 switch             testpmd B (io, loop)
//!  in.pcap -> pcap port --> virtio_user0 -> port 0 -> port 1 -> virtio_user1 --+
//!  out.pcap <- pcap port <- virtio_user0 <- port 0 <- port 1 <- virtio_user1 <-+
//! ```
//!
//! The pcap PMD replays `in.pcap` once; the test waits (bounded) until A's pcap port has sent
//! as many frames as the file holds, quits A (which closes `out.pcap`), and compares the files
//! frame by frame: same count, same order, same bytes. A and B hold packets (io retry) rather
//! than drop them on a full ring, and each case keeps its frames within one ring's worth of
//! descriptors, so a correct switch delivers every frame whatever the scheduling.
//!
//! Needs `dpdk-testpmd` (Debian: dpdk-dev) and no hugepages; runs the tests one at a time.
//! Core layout on a 2-core machine: the switch's forwarding thread on CPU 0, the guests'
//! forwarding lcores on CPU 1 (they share it), the guests' idle main lcores on CPU 0.

#[path = "common/pcap.rs"]
mod pcap;
#[path = "common/testpmd.rs"]
mod testpmd;

use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use pcap::{compare_frames, read_pcap, test_frame, write_pcap};
use testpmd::{ForwardMode, Scratch, Switch, SwitchKind, Testpmd, TestpmdConfig, Topology, Vdev};

/// The interop tests start processes pinned to the same CPUs: one at a time, within this test
/// binary (a mutex) and across concurrent test runs on the machine (an flock).
fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    Serial { _file: testpmd::machine_lock("interop", Duration::from_secs(600)), _guard: guard }
}

struct Serial {
    _file: std::fs::File,
    _guard: MutexGuard<'static, ()>,
}

const CMD: Duration = Duration::from_secs(10);
/// Time for the switch to see a freshly started guest's queues before traffic starts.
const SETTLE: Duration = Duration::from_millis(700);

fn vswitch(engine: &str) -> SwitchKind {
    SwitchKind::Vswitch(engine.to_owned())
}

fn ok<T>(r: Result<T, testpmd::HarnessError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Starts a switch, failing the test with the reason if it cannot (e.g. no vswitch binary).
fn start_switch(kind: SwitchKind, scratch: &Scratch) -> Switch {
    Switch::start(kind.clone(), scratch).unwrap_or_else(|e| panic!("cannot start the switch under test {kind:?}: {e}"))
}

/// Makes forwarding (in the configured mode) wait up to 10 s for ring space instead of dropping.
fn hold_on_full_ring(t: &mut Testpmd) {
    let mode = t.config().forward_mode.as_str();
    ok(t.command(&format!("set fwd {mode} retry"), CMD));
    ok(t.command("set burst tx delay 100 retry 100000", CMD));
}

/// One byte-identity case: the frames and how each guest's driver is configured.
struct PcapCase {
    /// Frame lengths (without FCS), repeated in this order.
    sizes: &'static [usize],
    /// How many frames in all.
    count: usize,
    /// `mrg_rxbuf` on both virtio-user ports.
    mergeable: bool,
    /// Guest A's mbuf data room (the pcap side builds chains when a frame does not fit).
    a_mbuf_size: Option<u32>,
    /// Rx scatter on guest A's virtio port (set per port: the pcap PMD has no scatter).
    a_scatter: bool,
    /// Guest B's mbuf data room.
    b_mbuf_size: Option<u32>,
    /// Rx scatter on guest B.
    b_scatter: bool,
    /// `--max-pkt-len` on both guests.
    max_pkt_len: Option<u32>,
    /// Packed virtqueues (`packed_vq=1`) on both virtio-user ports.
    packed: bool,
}

impl PcapCase {
    fn frames(&self) -> Vec<Vec<u8>> {
        (0..self.count).map(|i| test_frame(i as u32, self.sizes[i % self.sizes.len()])).collect()
    }
}

/// 64 B to 1518 B frames, no mergeable buffers: every frame fits one RX buffer.
const SMALL_AND_LARGE: PcapCase = PcapCase {
    sizes: &[64, 1518, 60, 128, 1000, 1514, 256],
    count: 200,
    mergeable: false,
    a_mbuf_size: None,
    a_scatter: false,
    b_mbuf_size: None,
    b_scatter: false,
    max_pkt_len: None,
    packed: false,
};

/// 9000 B jumbo frames with mergeable RX buffers: B's 2 KB buffers take 5 per frame (the switch
/// spreads each frame over several guest buffers northbound, and B sends each back as a
/// multi-segment chain southbound); A has 10 KB buffers.
const MERGEABLE_JUMBO: PcapCase = PcapCase {
    sizes: &[9000, 64, 1518, 4000],
    count: 48,
    mergeable: true,
    a_mbuf_size: Some(10240),
    a_scatter: false,
    b_mbuf_size: None,
    b_scatter: true,
    max_pkt_len: Some(9018),
    packed: false,
};

/// Small mbufs on both guests: every frame above ~900 B is a multi-segment chain on both TX
/// sides (A: built by the pcap PMD; B: received scattered) and is reassembled from several
/// mergeable buffers on both RX sides.
const MULTI_SEGMENT: PcapCase = PcapCase {
    sizes: &[1518, 64, 4000, 600, 2500],
    count: 40,
    mergeable: true,
    a_mbuf_size: Some(1024),
    a_scatter: true,
    b_mbuf_size: Some(1024),
    b_scatter: true,
    max_pkt_len: Some(9018),
    packed: false,
};

/// The cases again with packed virtqueues on both guests (VIRTIO 1.1, `packed_vq=1`).
const PACKED_SMALL_AND_LARGE: PcapCase = PcapCase { packed: true, ..SMALL_AND_LARGE };
const PACKED_MERGEABLE_JUMBO: PcapCase = PcapCase { packed: true, ..MERGEABLE_JUMBO };
const PACKED_MULTI_SEGMENT: PcapCase = PcapCase { packed: true, ..MULTI_SEGMENT };

/// Both guests of a traced switch acked VIRTIO_F_RING_PACKED: the frames really went over packed
/// rings.
fn assert_packed_negotiated(sw: &Switch) {
    let acked = sw.acked_features();
    assert!(acked.len() >= 2, "both guests negotiated: {acked:x?}");
    assert!(acked.iter().all(|f| f & (1 << 34) != 0), "every guest acked VIRTIO_F_RING_PACKED: {acked:x?}");
}

/// Sends `case`'s frames A -> switch -> B -> switch -> A and compares in.pcap with out.pcap.
fn pcap_round_trip(kind: SwitchKind, case: &PcapCase) {
    if let Err(diff) = pcap_loop(kind.clone(), case, ForwardMode::Io) {
        panic!("{kind:?}: in.pcap and out.pcap differ: {diff}");
    }
}

/// The loop of [`pcap_round_trip`] with guest B in `b_mode`; every frame must come back (else
/// it panics), the result says whether they came back unchanged.
fn pcap_loop(kind: SwitchKind, case: &PcapCase, b_mode: ForwardMode) -> Result<(), String> {
    let _serial = serial();
    let scratch = Scratch::new("interop");
    let frames = case.frames();
    let (in_pcap, out_pcap) = (scratch.path("in.pcap"), scratch.path("out.pcap"));
    write_pcap(&in_pcap, &frames).expect("write in.pcap");

    let traced = case.packed && matches!(kind, SwitchKind::Vswitch(_));
    let mut sw = Switch::start_traced(kind.clone(), &scratch, traced)
        .unwrap_or_else(|e| panic!("cannot start the switch under test {kind:?}: {e}"));

    // Guest B: io, each packet back out of the port it came in on.
    let mut b_cfg = TestpmdConfig::guest("guest-b")
        .vdev(Vdev::virtio_user(sw.socket(1), case.mergeable).packed_if(case.packed))
        .topology(Topology::Loop)
        .mode(b_mode)
        .interactive();
    b_cfg.mbuf_size = case.b_mbuf_size;
    b_cfg.enable_scatter = case.b_scatter;
    b_cfg.max_pkt_len = case.max_pkt_len;
    b_cfg.tx_offloads = Some(0x8000); // MULTI_SEGS
    let mut b = ok(Testpmd::spawn(&b_cfg));
    hold_on_full_ring(&mut b);
    ok(b.command("start", CMD));

    // Guest A: port 0 virtio-user, port 1 pcap, io paired.
    let mut a_cfg = TestpmdConfig::guest("guest-a")
        .vdev(Vdev::virtio_user(sw.socket(0), case.mergeable).packed_if(case.packed))
        .vdev(Vdev::pcap(&in_pcap, &out_pcap))
        .interactive();
    a_cfg.mbuf_size = case.a_mbuf_size;
    a_cfg.max_pkt_len = case.max_pkt_len;
    a_cfg.no_flush_rx = true;
    a_cfg.disable_device_start = case.a_scatter;
    // No MULTI_SEGS TX offload here: the pcap PMD does not advertise it (it copes anyway).
    let mut a = ok(Testpmd::spawn(&a_cfg));
    if case.a_scatter {
        ok(a.command("port config 0 rx_offload scatter on", CMD));
        let out = ok(a.command("port start all", CMD));
        assert!(!out.contains("Fail"), "guest A: port start failed:\n{out}");
    }
    hold_on_full_ring(&mut a);
    thread::sleep(SETTLE);
    sw.assert_running();
    ok(a.command("start", CMD));

    let n = frames.len() as u64;
    let waited = a.wait_stats(1, Duration::from_secs(20), "every frame back in out.pcap", |s| s.tx_packets >= n);
    if let Err(e) = waited {
        let b_stats = b.port_stats(0).ok();
        let a_virtio = a.port_stats(0).ok();
        panic!(
            "{e}\nguest A virtio port: {a_virtio:?}\nguest B: {b_stats:?}\nswitch output:\n{}",
            testpmd::tail(&sw.output(), 3000)
        );
    }
    // Nothing more should trickle in.
    thread::sleep(Duration::from_millis(300));
    ok(a.command("stop", CMD));
    a.quit(Duration::from_secs(10));
    sw.assert_running();

    let received = read_pcap(&out_pcap).unwrap_or_else(|e| panic!("out.pcap: {e}"));
    b.quit(Duration::from_secs(10));
    if traced {
        assert_packed_negotiated(&sw);
    }
    compare_frames(&frames, &received)
}

/// Guest on `tx_sock` sends `segs`-segment packets (txonly), guest on `rx_sock` receives
/// (rxonly); checks every received packet has the sent length, returns how many arrived.
fn one_way_multi_segment(sw: &mut Switch, tx_port: usize, rx_port: usize, segs: &[u32]) -> u64 {
    let mut rx_cfg = TestpmdConfig::guest(&format!("rx{rx_port}"))
        .vdev(Vdev::virtio_user(sw.socket(rx_port), true))
        .mode(ForwardMode::RxOnly)
        .interactive();
    rx_cfg.max_pkt_len = Some(9018);
    rx_cfg.enable_scatter = true;
    let mut rx = ok(Testpmd::spawn(&rx_cfg));
    ok(rx.command("start", CMD));

    let mut tx_cfg = TestpmdConfig::guest(&format!("tx{tx_port}"))
        .vdev(Vdev::virtio_user(sw.socket(tx_port), true))
        .mode(ForwardMode::TxOnly)
        .txpkts(segs)
        .interactive();
    tx_cfg.tx_offloads = Some(0x8000);
    tx_cfg.max_pkt_len = Some(9018);
    tx_cfg.enable_scatter = true;
    let mut tx = ok(Testpmd::spawn(&tx_cfg));
    thread::sleep(SETTLE);
    ok(tx.command("start", CMD));
    ok(rx.wait_stats(0, Duration::from_secs(15), "2000 packets", |s| s.rx_packets >= 2000));
    ok(tx.command("stop", CMD));
    let sent = ok(tx.port_stats(0));
    thread::sleep(Duration::from_millis(500));
    let got = ok(rx.port_stats(0));
    tx.quit(Duration::from_secs(5));
    rx.quit(Duration::from_secs(5));
    sw.assert_running();

    assert!(sent.tx_packets > 0 && sent.tx_bytes % sent.tx_packets == 0, "tx stats {sent:?}");
    let len = sent.tx_bytes / sent.tx_packets;
    let total: u64 = segs.iter().map(|&s| s as u64).sum();
    assert!(len == total || len + 4 == total, "sent {len} B packets for --txpkts {segs:?}");
    assert!(got.rx_packets <= sent.tx_packets, "received more than sent: {got:?} {sent:?}");
    assert_eq!(got.rx_bytes, got.rx_packets * len, "port {tx_port} -> {rx_port}: {got:?}");
    assert_eq!(got.rx_errors, 0, "port {tx_port} -> {rx_port}: {got:?}");
    got.rx_packets
}

/// Multi-segment TX chains (`--txpkts` split) through the switch, both directions.
fn txonly_multi_segment_both_directions(kind: SwitchKind) {
    let _serial = serial();
    let scratch = Scratch::new("interop");
    let mut sw = start_switch(kind, &scratch);
    let segs = [600, 600, 318];
    one_way_multi_segment(&mut sw, 0, 1, &segs);
    one_way_multi_segment(&mut sw, 1, 0, &[64, 1000, 2000, 936]);
}

/// A sender and then a receiver guest are SIGKILLed mid-traffic and restarted on the same
/// sockets; the switch keeps running and carries traffic again each time. `packed`: both guests
/// use packed virtqueues.
fn killed_guest_is_served_again(kind: SwitchKind, packed: bool) {
    let _serial = serial();
    let scratch = Scratch::new("interop");
    let traced = packed && matches!(kind, SwitchKind::Vswitch(_));
    let mut sw = Switch::start_traced(kind.clone(), &scratch, traced)
        .unwrap_or_else(|e| panic!("cannot start the switch under test {kind:?}: {e}"));

    let rx_cfg = TestpmdConfig::guest("rx")
        .vdev(Vdev::virtio_user(sw.socket(1), true).packed_if(packed))
        .mode(ForwardMode::RxOnly)
        .interactive();
    let tx_cfg = TestpmdConfig::guest("tx")
        .vdev(Vdev::virtio_user(sw.socket(0), true).packed_if(packed))
        .mode(ForwardMode::TxOnly)
        .txpkts(&[64])
        .interactive();
    let start = |cfg: &TestpmdConfig| {
        let mut t = ok(Testpmd::spawn(cfg));
        thread::sleep(SETTLE);
        ok(t.command("start", CMD));
        t
    };
    let flowing = Duration::from_secs(10);

    let mut rx = start(&rx_cfg);
    let mut tx = start(&tx_cfg);
    ok(rx.wait_stats(0, flowing, "traffic before the kill", |s| s.rx_packets >= 1000));

    // The sender dies mid-traffic, with descriptors in flight.
    tx.kill();
    thread::sleep(Duration::from_millis(500));
    sw.assert_running();
    let before = ok(rx.port_stats(0)).rx_packets;
    let mut tx = start(&tx_cfg);
    ok(rx.wait_stats(0, flowing, "traffic after the sender's restart", |s| s.rx_packets >= before + 1000));

    // The receiver dies mid-traffic, with RX buffers posted.
    rx.kill();
    thread::sleep(Duration::from_millis(500));
    sw.assert_running();
    let mut rx = start(&rx_cfg);
    ok(rx.wait_stats(0, flowing, "traffic after the receiver's restart", |s| s.rx_packets >= 1000));

    // Both die at once.
    tx.kill();
    rx.kill();
    thread::sleep(Duration::from_millis(500));
    sw.assert_running();
    let mut rx = start(&rx_cfg);
    let mut tx = start(&tx_cfg);
    ok(rx.wait_stats(0, flowing, "traffic after both restarted", |s| s.rx_packets >= 1000));
    ok(tx.command("stop", CMD));
    tx.quit(Duration::from_secs(5));
    rx.quit(Duration::from_secs(5));
    sw.assert_running();
    if traced {
        assert_packed_negotiated(&sw);
    }
}

// ---- against DPDK's vhost back-end (the reference; proves the harness) ----

/// The comparison is not vacuous: a guest that swaps MAC addresses is caught.
#[test]
fn interop_pcap_comparison_catches_a_modified_frame_dpdk_vhost() {
    let diff = pcap_loop(SwitchKind::DpdkVhost, &SMALL_AND_LARGE, ForwardMode::MacSwap)
        .expect_err("B swapped every frame's MAC addresses, yet out.pcap equals in.pcap");
    assert!(diff.starts_with("frame 0 differs"), "{diff}");
}

#[test]
fn interop_pcap_small_and_large_frames_are_byte_identical_dpdk_vhost() {
    pcap_round_trip(SwitchKind::DpdkVhost, &SMALL_AND_LARGE);
}

#[test]
fn interop_pcap_mergeable_jumbo_frames_are_byte_identical_dpdk_vhost() {
    pcap_round_trip(SwitchKind::DpdkVhost, &MERGEABLE_JUMBO);
}

#[test]
fn interop_pcap_multi_segment_frames_are_byte_identical_dpdk_vhost() {
    pcap_round_trip(SwitchKind::DpdkVhost, &MULTI_SEGMENT);
}

#[test]
fn interop_txonly_multi_segment_packets_arrive_whole_dpdk_vhost() {
    txonly_multi_segment_both_directions(SwitchKind::DpdkVhost);
}

#[test]
fn interop_testpmd_killed_mid_traffic_is_served_again_dpdk_vhost() {
    killed_guest_is_served_again(SwitchKind::DpdkVhost, false);
}

// ---- against the vswitch binary ----

#[test]
fn interop_pcap_small_and_large_frames_are_byte_identical() {
    pcap_round_trip(vswitch("memcpy"), &SMALL_AND_LARGE);
}

#[test]
fn interop_pcap_mergeable_jumbo_frames_are_byte_identical() {
    pcap_round_trip(vswitch("memcpy"), &MERGEABLE_JUMBO);
}

#[test]
fn interop_pcap_multi_segment_frames_are_byte_identical() {
    pcap_round_trip(vswitch("memcpy"), &MULTI_SEGMENT);
}

#[test]
fn interop_pcap_small_and_large_frames_are_byte_identical_worker() {
    pcap_round_trip(vswitch("worker"), &SMALL_AND_LARGE);
}

#[test]
fn interop_pcap_mergeable_jumbo_frames_are_byte_identical_worker() {
    pcap_round_trip(vswitch("worker"), &MERGEABLE_JUMBO);
}

#[test]
fn interop_pcap_multi_segment_frames_are_byte_identical_worker() {
    pcap_round_trip(vswitch("worker"), &MULTI_SEGMENT);
}

#[test]
fn interop_txonly_multi_segment_packets_arrive_whole() {
    txonly_multi_segment_both_directions(vswitch("memcpy"));
}

#[test]
fn interop_testpmd_killed_mid_traffic_is_served_again() {
    killed_guest_is_served_again(vswitch("memcpy"), false);
}

#[test]
fn interop_testpmd_killed_mid_traffic_is_served_again_worker() {
    killed_guest_is_served_again(vswitch("worker"), false);
}

// ---- packed virtqueues (VIRTIO 1.1): `packed_vq=1` on both guests ----

#[test]
fn interop_pcap_packed_small_and_large_frames_are_byte_identical_dpdk_vhost() {
    pcap_round_trip(SwitchKind::DpdkVhost, &PACKED_SMALL_AND_LARGE);
}

#[test]
fn interop_pcap_packed_small_and_large_frames_are_byte_identical() {
    pcap_round_trip(vswitch("memcpy"), &PACKED_SMALL_AND_LARGE);
}

#[test]
fn interop_pcap_packed_mergeable_jumbo_frames_are_byte_identical_worker() {
    pcap_round_trip(vswitch("worker"), &PACKED_MERGEABLE_JUMBO);
}

#[test]
fn interop_pcap_packed_multi_segment_frames_are_byte_identical_worker() {
    pcap_round_trip(vswitch("worker"), &PACKED_MULTI_SEGMENT);
}

#[test]
fn interop_testpmd_packed_killed_mid_traffic_is_served_again_worker() {
    killed_guest_is_served_again(vswitch("worker"), true);
}

#[test]
fn interop_pcap_packed_mergeable_jumbo_frames_are_byte_identical_dpdk_vhost() {
    pcap_round_trip(SwitchKind::DpdkVhost, &PACKED_MERGEABLE_JUMBO);
}
